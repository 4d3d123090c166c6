"""The audit log: JSON lines per process, written whatever the log level, listed with filters."""

from __future__ import annotations

import json
import logging
import stat
from datetime import UTC, datetime
from pathlib import Path

import grpc
import structlog

from cluster.security.audit import AuditLog, read_events
from cluster.security.auth import Principal, authenticate, bearer_metadata
from cluster.security.roles import Role
from cluster.security.tokens import TokenStore, create_token


class Clock:
    """Wall-clock seconds that the test sets."""

    def __init__(self, now_s: float) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


T0 = datetime(2026, 5, 1, 9, 0, tzinfo=UTC).timestamp()
BILLING = Principal(token_id="0123456789ab", role=Role.BILLING)
OPERATOR = Principal(token_id="ba9876543210", role=Role.OPERATOR)


def test_an_event_names_the_token_id_and_never_the_token(tmp_path: Path) -> None:
    """An audited call written by an authenticated principal holds its token id and role,
    not the bearer token nor its secret; the file is private to its owner."""
    tokens = tmp_path / "tokens.jsonl"
    issued = create_token(tokens, role=Role.BILLING)
    principal = authenticate(bearer_metadata(issued.bearer), TokenStore(tokens))
    audit = AuditLog(tmp_path / "audit", clock=Clock(T0), process="node1:42")
    audit.record(
        rpc="Pay",
        outcome=grpc.StatusCode.OK,
        principal=principal,
        account_id="a-1",
        request_id="pay-7",
    )
    audit.close()
    text = audit.path.read_text()
    assert issued.bearer.rsplit("_", 1)[1] not in text
    assert json.loads(text) == {
        "event": "audit",
        "rpc": "Pay",
        "outcome": "OK",
        "token_id": issued.record.token_id,
        "role": "billing",
        "account_id": "a-1",
        "request_id": "pay-7",
        "detail": None,
        "ts": "2026-05-01T09:00:00.000000Z",
        "process": "node1:42",
    }
    assert stat.S_IMODE(audit.path.stat().st_mode) == 0o600


def test_events_are_written_even_when_the_process_logs_only_errors(tmp_path: Path) -> None:
    """The process's log level (here ERROR) never filters the audit."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    try:
        audit = AuditLog(tmp_path, clock=Clock(T0))
        audit.record(rpc="Drain", outcome="OK", principal=OPERATOR)
        audit.close()
        assert [e.rpc for e in read_events(tmp_path)] == ["Drain"]
    finally:
        structlog.configure(**saved)


def test_listing_filters_by_account_rpc_and_time_across_processes(tmp_path: Path) -> None:
    """Two processes' files are listed as one, oldest first, filtered by account, RPC, since;
    a refused unauthenticated call is listed with no token."""
    clock_a, clock_b = Clock(T0), Clock(T0 + 0.5)
    a = AuditLog(tmp_path, clock=clock_a, process="node1:1")
    b = AuditLog(tmp_path, clock=clock_b, process="node2:2")
    a.record(rpc="Pay", outcome="OK", principal=BILLING, account_id="a-1", request_id="p1")
    b.record(rpc="TopUp", outcome="PERMISSION_DENIED", principal=BILLING, account_id="a-1")
    clock_a.now_s += 60
    a.record(rpc="Pay", outcome="FAILED_PRECONDITION", principal=BILLING, account_id="a-2")
    clock_b.now_s += 120
    b.record(rpc="Backup", outcome="UNAUTHENTICATED", principal=None)
    a.close()
    b.close()
    every = read_events(tmp_path)
    assert [(e.rpc, e.process) for e in every] == [
        ("Pay", "node1:1"),
        ("TopUp", "node2:2"),
        ("Pay", "node1:1"),
        ("Backup", "node2:2"),
    ]
    assert every[-1].token_id is None and every[-1].role is None
    assert [e.outcome for e in read_events(tmp_path, account_id="a-1")] == [
        "OK",
        "PERMISSION_DENIED",
    ]
    assert [e.account_id for e in read_events(tmp_path, rpc="Pay")] == ["a-1", "a-2"]
    since = datetime.fromtimestamp(T0 + 60, UTC)
    assert [e.rpc for e in read_events(tmp_path, since=since)] == ["Pay", "Backup"]
    assert [e.rpc for e in read_events(tmp_path, limit=1)] == ["Backup"]


def test_files_roll_over_and_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    """Past its size bound a process starts its next file; a half-written line (a crash) is
    skipped, and every complete event is still listed."""
    clock = Clock(T0)
    audit = AuditLog(tmp_path, file_bytes_max=400, clock=clock, process="n:1")
    for index in range(6):
        clock.now_s += 1
        audit.record(rpc="Pay", outcome="OK", principal=BILLING, request_id=f"p{index}")
    audit.close()
    files = sorted(tmp_path.glob("audit-*.jsonl"))
    assert len(files) >= 2
    assert all(f.stat().st_size <= 400 for f in files)
    with open(files[-1], "a") as handle:
        handle.write('{"event": "audit", "rpc": "Pa')
    assert [e.request_id for e in read_events(tmp_path)] == [f"p{i}" for i in range(6)]


def test_two_writers_of_one_process_started_in_one_second_write_apart(tmp_path: Path) -> None:
    """A gateway started again in the same process and second (after a failed bind) takes
    the next file name instead of failing; both logs' events are listed."""
    first = AuditLog(tmp_path, clock=lambda: 1_800_000_000.0, process="host:1")
    second = AuditLog(tmp_path, clock=lambda: 1_800_000_000.0, process="host:1")
    assert first.path != second.path
    first.record(rpc="AccountService.TopUp", outcome="OK", principal=None, request_id="a")
    second.record(rpc="AccountService.TopUp", outcome="OK", principal=None, request_id="b")
    first.close()
    second.close()
    assert sorted(e.request_id for e in read_events(tmp_path)) == ["a", "b"]


def test_a_line_is_one_json_object_in_the_documented_order_and_time_format(
    tmp_path: Path,
) -> None:
    """The raw line is exactly the documented one (and what structlog rendered before): keys
    in order, the time in UTC to the microsecond with a ``Z``, ended by a newline."""
    audit = AuditLog(tmp_path, clock=Clock(T0 + 0.25), process="node1:42")
    audit.record(rpc="Pay", outcome=grpc.StatusCode.OK, principal=BILLING, request_id="pay-7")
    audit.close()
    assert audit.path.read_text() == (
        '{"rpc": "Pay", "outcome": "OK", "token_id": "0123456789ab", "role": "billing", '
        '"account_id": null, "request_id": "pay-7", "detail": null, "event": "audit", '
        '"ts": "2026-05-01T09:00:00.250000Z", "process": "node1:42"}\n'
    )
