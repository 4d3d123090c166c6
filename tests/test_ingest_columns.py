"""`petribill ingest` on the bulk path reports exactly what the per-record path reports.

Two fresh in-process clusters (real RocksDB, real gateway on loopback, one
clock) load the sample subscribers; one ingests the sample CDR files plus a
file of bad lines record by record (``StreamUsage``), the other as Arrow
columns (``SubmitUsageColumns``). Their file reports (counts, amounts, and every
reject line with its file, line, reason and detail), their reject stores
(raw text and code of each unreadable line) and balances must be equal; a
second ingest of the same file is all duplicates. One difference is meant: a record
the cluster rejects keeps its file and line in the reject store on the bulk path.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict
from test_gateway_support import T_NOV, TARIFFS, LoopThread

from actors.clock import ManualClock
from cluster.cli.ingest import account_specs, create_accounts, ingest_file
from cluster.client import PetribillClient
from cluster.deploy.inprocess import InProcessCluster
from cluster.gateway.server import Gateway

pytestmark = pytest.mark.timeout(600)

SAMPLES = Path(__file__).resolve().parent.parent / "conf" / "samples"
BAD_LINES = b"""record_id,service,served_msisdn,record_opening_time,called_number,duration_s
bad:1,voice,4915100000001,2026-11-03T10:00:00Z,4930123456,-5
bad:2,voice,4915100000001,1793700000,4930123456,60,extra
bad:3,video,4915100000001,1793700000,,
"bad:4",voice,+49 151 00000001,1793700000,4930123456,30

bad:5,voice,4915100000001,\xff,4930123456,30
bad:6,voice,4999999999999,1793700000,4930123456,30
"""


@contextmanager
def _served(folder: Path, loop: LoopThread) -> Iterator[PetribillClient]:
    """A fresh in-process cluster behind a gateway, with the sample subscribers loaded."""
    # One partition: an account whose numbers live on two partitions is charged by both
    # concurrently, so which of its records crosses a limit first would be a race.
    cluster = InProcessCluster(
        folder, TARIFFS, partitions=1, clock=ManualClock(T_NOV + 20 * 86_400), duties=False
    ).start()
    gateway = Gateway(cluster.backend(), "127.0.0.1", 0)
    try:
        loop.run(gateway.start())
        with PetribillClient([gateway.address], timeout_s=60) as client:
            create_accounts(client, account_specs(SAMPLES / "subscribers.toml"))
            yield client
    finally:
        loop.run(gateway.stop(0.2))
        cluster.close()


def _files(folder: Path) -> list[Path]:
    bad = folder / "bad.csv"
    bad.write_bytes(BAD_LINES)
    return [*sorted(SAMPLES.glob("*.csv")), *sorted(SAMPLES.glob("*.jsonl")), bad]


def _seen(client: PetribillClient) -> dict[str, Any]:
    def plain(message: Any) -> Any:
        return MessageToDict(message, preserving_proto_field_name=True)

    specs = account_specs(SAMPLES / "subscribers.toml")
    return {
        "rejects": sorted(
            (plain(r) for r in client.iter_rejects()), key=lambda r: sorted(r.items())
        ),
        "balances": {s.account_id: plain(client.get_balance(s.account_id)) for s in specs},
    }


def _is_record(reject: dict[str, Any]) -> bool:
    """Is ``reject`` a record the cluster rejected (its JSON), not a line a reader refused?"""
    try:
        record = json.loads(reject.get("record", {}).get("json", ""))
    except ValueError:
        return False
    return isinstance(record, dict) and "source_line" in record


def _unnamed(rejects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rejects of records as the per-record path stores them: without the file and
    line the bulk path keeps with each (provenance does not cross SubmitUsage)."""
    out = []
    for reject in rejects:
        if _is_record(reject):
            reject = {k: v for k, v in reject.items() if k not in ("source_file", "source_line")}
            record = json.loads(reject["record"]["json"])
            record.update(source_file=None, source_line=None)
            reject["record"] = {"json": json.dumps(record, sort_keys=True)}
        out.append(reject)
    return sorted(out, key=lambda r: sorted(r.items()))


def test_bulk_ingest_reports_as_per_record_ingest(tmp_path: Path) -> None:
    """Same reports, reject lines, reject store and balances on both paths; a second
    ingest is all duplicates."""
    files = _files(tmp_path)
    loop = LoopThread()
    try:
        with ExitStack() as stack:
            one = stack.enter_context(_served(tmp_path / "one", loop))
            bulk = stack.enter_context(_served(tmp_path / "bulk", loop))
            for path in files:
                expected = ingest_file(one, path, batch_records=7, columnar=False).to_json()
                got = ingest_file(bulk, path, batch_records=7).to_json()
                assert got == expected, path
                assert got["balanced"], got
            seen_one, seen_bulk = _seen(one), _seen(bulk)
            stored = [r for r in seen_bulk["rejects"] if _is_record(r)]
            assert stored and all(r["source_file"] and r["source_line"] for r in stored)
            seen_bulk["rejects"] = _unnamed(seen_bulk["rejects"])
            assert seen_bulk == seen_one
            bad = ingest_file(bulk, files[-1], batch_records=3).to_json()
            assert [(r["line"], r["stage"]) for r in bad["rejects"]] == [
                (2, "reader"), (3, "reader"), (4, "reader"), (7, "reader"), (8, "cluster"),
            ]  # fmt: skip
            again = ingest_file(bulk, files[0]).to_json()
            assert again["rated"] == 0
            assert again["duplicates"] == again["lines"] - again["rejected_by_reader"] > 0
    finally:
        loop.close()
