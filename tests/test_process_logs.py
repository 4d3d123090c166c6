"""Errors an operator can find (issue 15, item 7): JSON lines per process in <data>/logs.

An INTERNAL answer quotes an error id; the gateway's log file has a JSON line
with that id and the exception, without local variables, so a request's
contents are never in the log. (Before: a box-drawn traceback with the
request's fields, in a Ray worker file under a temp dir.)
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import grpc
import pytest
import structlog
from petribill.v1 import accounts_pb2, accounts_pb2_grpc, common_pb2
from test_gateway_support import running_gateways

from cluster.logging import LOG_FILE_BYTES_MAX, configure_logging, log_file, process_logging

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("restore_logging")]


def _events(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_an_internal_answer_names_an_error_id_found_in_the_gateway_log(tmp_path: Path) -> None:
    """The id of the INTERNAL answer is in <data>/logs/gateway-*.log; the request is not."""
    secret = "request-secret-7f3a"
    configure_logging("INFO", log_dir=tmp_path / "logs", process="gateway-n0")
    with (
        running_gateways() as (_loop, backend, gateways),
        grpc.insecure_channel(gateways[0].address) as channel,
    ):
        backend.failures["top_up"] = [ZeroDivisionError("a bug")]
        with pytest.raises(grpc.RpcError) as failed:
            accounts_pb2_grpc.AccountServiceStub(channel).TopUp(
                accounts_pb2.TopUpRequest(
                    request_id=secret,
                    account_id="a1",
                    amount=common_pb2.Money(micros=5, currency="EUR"),
                ),
                timeout=10,
            )
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    match = re.search(r"internal error ([0-9a-f]{12})", failed.value.details())
    assert match is not None
    path = log_file(tmp_path / "logs", "gateway-n0")
    text = path.read_text()
    (event,) = [e for e in _events(path) if e.get("error_id") == match.group(1)]
    assert event["event"] == "rpc_internal_error" and event["level"] == "error"
    assert event["process"] == "gateway-n0" and "ZeroDivisionError" in json.dumps(event)
    assert secret not in text  # no locals, no request in the log
    assert "gateway_started" in text  # the process's other events are there too


def test_standard_library_records_are_json_lines_too(tmp_path: Path) -> None:
    """Libraries logging through `logging` (gRPC, asyncio) land in the same file as JSON."""
    configure_logging("INFO", log_dir=tmp_path / "logs", process="host-n1")
    logging.getLogger("grpc.somewhere").warning("a library warning %d", 7)
    (event,) = _events(log_file(tmp_path / "logs", "host-n1"))
    assert event["event"] == "a library warning 7" and event["logger"] == "grpc.somewhere"
    assert event["level"] == "warning" and event["process"] == "host-n1"


def test_process_logging_is_the_data_folders_logs(tmp_path: Path) -> None:
    """The set-up an actor's constructor gets writes <data>/logs/<process>.log, rotated."""
    setup = process_logging({"data_dir": str(tmp_path)}, "coordinator")
    setup()
    structlog.get_logger().info("assign", shard="acct-00")
    path = tmp_path / "logs" / "coordinator.log"
    (event,) = _events(path)
    assert event["event"] == "assign" and event["shard"] == "acct-00"
    handler = next(h for h in logging.getLogger().handlers if hasattr(h, "maxBytes"))
    assert handler.maxBytes == LOG_FILE_BYTES_MAX  # type: ignore[attr-defined]
