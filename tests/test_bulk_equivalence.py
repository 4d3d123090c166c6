"""The bulk path (SubmitUsageColumns) equals the per-record path (SubmitUsage), record for record.

Each example starts two fresh in-process clusters (real RocksDB in temp
folders, the real backend behind a real gRPC gateway, one injected clock),
opens the same accounts on both, and sends the same batches of records: to
one as protobuf messages, to the other as Arrow columns. Afterwards the two
clusters must agree on everything a client or an auditor can see: every
record's result, every account's balance, usage lines and notifications, the
reject store, and the reconciliation counters. The records mix what the paths
must treat alike: duplicates and conflicts inside one batch and across
batches, unknown numbers, malformed rows (missing, foreign, out-of-range and
badly written fields), numbers to normalise, sponsored lines (a catalogue
sponsor and a per-number sponsor rule), and a prepaid balance running out.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from google.protobuf.json_format import MessageToDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from petribill.v1 import usage_pb2
from test_gateway_support import T_NOV, TARIFFS, LoopThread

from actors.clock import ManualClock
from actors.routing import partition_of
from cluster.client import PetribillClient
from cluster.deploy.inprocess import InProcessCluster
from cluster.gateway.server import Gateway
from cluster.wire_columns import COLUMN_KINDS

pytestmark = pytest.mark.timeout(900)

START = T_NOV - 5 * 86_400
PARTITIONS = 2
ACCOUNTS = ("short", "rich", "firm", "family", "parent", "sponsor-streamflix")
NUMBERS = ("4915100000001", "4915100000002", "4915100000003", "4915100000004", "4915100000005")
UNKNOWN = ("4915199999998", "4915199999997")  # one on each partition
IDS = tuple(f"m:{i}" for i in range(14))
WRITTEN = {  # the same numbers as a client may write them (normalised by both paths)
    "4915100000001": ("+4915100000001", "0049 151 00000001", "015100000001"),
    "4915100000004": ("+49 151-00000004",),
}
CALLED = ("4930123456", "447700900123", "+44 7700 900123", "0301234567", "12", "abc")
ITEMS = ("game-coins-500", "news-day-pass", "no-such-item", "bad item")
_TYPES = {"text": pa.string(), "int": pa.int64(), "bool": pa.bool_()}
SCHEMA = pa.schema([(name, _TYPES[kind]) for name, kind in COLUMN_KINDS.items()][:12])


def _open_accounts(client: PetribillClient) -> None:
    """Six accounts: a prepaid one that runs out, a rich prepaid, a postpaid firm with a
    small credit limit, a family whose child's SMS a parent sponsors, and the catalogue's
    sponsor of zero-rated video."""
    n1, n2, n3, n4, n5 = NUMBERS
    create = client.create_account
    create("short", "prepaid", msisdns=[n1], start_s=START, request_id="c-short")
    client.top_up("short", "0.40", request_id="t-short")
    create("rich", "prepaid", msisdns=[n2], start_s=START, request_id="c-rich")
    client.top_up("rich", "40", request_id="t-rich")
    create(
        "firm", "postpaid", plan_id="business", msisdns=[n3], credit_limit="1.50",
        start_s=START, request_id="c-firm",
    )  # fmt: skip
    create("family", "prepaid", msisdns=[n4, n5], start_s=START, request_id="c-family")
    client.top_up("family", "5", request_id="t-family")
    create("parent", "postpaid", plan_id="business", start_s=START, request_id="c-parent")
    create("sponsor-streamflix", "postpaid", plan_id="business", start_s=START, request_id="c-sf")
    client.add_sponsor_rule(
        "family", "parent", rule_id="kid-sms", msisdn=n5, usage_classes=["sms.*"],
        start_s=START, request_id="r-kid",
    )  # fmt: skip


@contextmanager
def _served(folder: Path, loop: LoopThread) -> Iterator[PetribillClient]:
    """A fresh in-process cluster behind a gateway, on the test's clock, with the accounts."""
    clock = ManualClock(T_NOV + 3 * 86_400)
    cluster = InProcessCluster(
        folder, TARIFFS, shards=3, partitions=PARTITIONS, clock=clock, duties=False
    ).start()
    gateway = Gateway(cluster.backend(), "127.0.0.1", 0)
    try:
        loop.run(gateway.start())
        with PetribillClient([gateway.address], timeout_s=60) as client:
            _open_accounts(client)
            yield client
    finally:
        loop.run(gateway.stop(0.2))
        cluster.close()


# -- records --------------------------------------------------------------------------------


def _rarely(draw: st.DrawFn, odds: int) -> bool:
    """True about once in ``odds`` draws."""
    return draw(st.integers(1, odds)) == 1


@st.composite
def _record(draw: st.DrawFn) -> dict[str, Any]:
    """One record as a client sends it: mostly well-formed, some malformed or oddly written."""
    number = draw(st.sampled_from(UNKNOWN if _rarely(draw, 8) else NUMBERS))
    if number in WRITTEN and draw(st.booleans()):
        number = draw(st.sampled_from(WRITTEN[number]))
    services = ["voice", "sms", "sms", "data", "content"]
    service = None if _rarely(draw, 25) else draw(st.sampled_from(services))
    bad_id = _rarely(draw, 20)
    row: dict[str, Any] = {
        "record_id": draw(st.sampled_from(["", "no-colon", "x" * 130] if bad_id else IDS)),
        "service": service,
        "served_msisdn": number,
        "record_opening_time_s": T_NOV + draw(st.integers(0, 3 * 86_400)),
    }
    if service in ("voice", "sms"):
        row["called_number"] = draw(st.sampled_from(CALLED if _rarely(draw, 6) else CALLED[:2]))
    if service == "voice":
        row["duration_s"] = draw(
            st.sampled_from([-5, 10**7]) if _rarely(draw, 20) else st.integers(0, 900)
        )
    if service == "sms":
        row["sms_count"] = draw(st.sampled_from([0, 1, 1, 2] + [300] * _rarely(draw, 10)))
    if service == "data":
        row["uplink_bytes"] = draw(st.integers(0, 5_000_000))
        row["downlink_bytes"] = -1 if _rarely(draw, 20) else draw(st.integers(0, 50_000_000))
        row["rating_group"] = draw(
            st.sampled_from([10, 20, 20, None] + [2**40] * _rarely(draw, 10))
        )
    if service == "content":
        row["content_item_id"] = draw(st.sampled_from(ITEMS if _rarely(draw, 5) else ITEMS[:2]))
    if _rarely(draw, 12):  # a field of another service, or a time out of range
        row.update(draw(st.sampled_from([
            {"sms_count": 3}, {"uplink_bytes": 7}, {"rating_group": 0}, {"content_item_id": "x"},
            {"called_number": "4930123456"}, {"record_opening_time_s": 12}, {"duration_s": 0},
            {"roaming": True}, {"content_item_id": None, "called_number": None},
        ])))  # fmt: skip
    return row


def _partition(row: dict[str, Any]) -> str:
    """The partition a record is sent to (its number's; a number a reader would refuse
    counts as its own)."""
    written = str(row["served_msisdn"])
    canonical = next((n for n, forms in WRITTEN.items() if written in forms), written)
    return partition_of(canonical, PARTITIONS)


@st.composite
def _batches(draw: st.DrawFn) -> list[list[dict[str, Any]]]:
    """One to three batches; some records are exact resends of earlier ones.

    Inside one batch an id is only sent for numbers of one partition: two partitions
    claim a batch's ids concurrently, so which of two such records claims the id first
    is a race in both paths (across batches the order is the batches')."""
    sent: list[dict[str, Any]] = []
    batches = []
    for _ in range(draw(st.integers(1, 3))):
        batch: list[dict[str, Any]] = []
        first: dict[str, dict[str, Any]] = {}
        for _ in range(draw(st.integers(1, 24))):
            if sent and _rarely(draw, 5):
                row = dict(draw(st.sampled_from(sent)))
            else:
                row = draw(_record())
            earlier = first.setdefault(row["record_id"], row)
            if _partition(earlier) != _partition(row):
                row["served_msisdn"] = earlier["served_msisdn"]
            batch.append(row)
            sent.append(row)
        batches.append(batch)
    return batches


# -- what the two clusters must agree on ------------------------------------------------------


def _proto_results(response: usage_pb2.SubmitUsageResponse) -> list[tuple[Any, ...]]:
    return [
        (
            r.record_id,
            usage_pb2.RecordStatus.Name(r.status).removeprefix("RECORD_STATUS_").lower(),
            r.reason,
            r.detail,
            r.amount.micros,
            r.amount.currency,
            r.charged_account_id,
            r.billed_units,
            r.bundle_units,
            r.replay,
        )
        for r in response.results
    ]


def _column_results(table: pa.Table) -> list[tuple[Any, ...]]:
    names = (
        "record_id", "status", "reason", "detail", "amount", "currency", "charged_account_id",
        "billed_units", "bundle_units", "replay",
    )  # fmt: skip
    return [tuple(row[n] for n in names) for row in table.to_pylist()]


def _state(client: PetribillClient) -> dict[str, Any]:
    """Everything an operator or a customer can read back, as plain values."""

    def plain(message: Any) -> Any:
        return MessageToDict(message, preserving_proto_field_name=True)

    usage = {a: [plain(x) for x in client.iter_usage(a)] for a in ACCOUNTS}
    # The catalogue sponsor's lines come from both partitions, which settle a batch
    # concurrently: the order they reach its shard is a race in either path.
    usage["sponsor-streamflix"].sort(key=lambda line: line["record_id"])
    return {
        "balances": {a: plain(client.get_balance(a)) for a in ACCOUNTS},
        "usage": usage,
        "notifications": {a: plain(client.list_notifications(a)) for a in ACCOUNTS},
        "rejects": [plain(r) for r in client.iter_rejects()],
        "reconcile": plain(client.reconcile()),
    }


def _difference(expected: Any, got: Any, where: str = "") -> str:
    """Where two states first differ, for the failure message."""
    if isinstance(expected, dict) and isinstance(got, dict):
        for key in sorted(set(expected) | set(got)):
            if expected.get(key) != got.get(key):
                return _difference(expected.get(key), got.get(key), f"{where}.{key}")
    if isinstance(expected, list) and isinstance(got, list) and len(expected) == len(got):
        for i, (e, g) in enumerate(zip(expected, got, strict=True)):
            if e != g:
                return _difference(e, g, f"{where}[{i}]")
    return f"{where}: per-record {expected!r}, bulk {got!r}"


def _send_both(
    per_record: PetribillClient, bulk: PetribillClient, batches: list[list[dict[str, Any]]]
) -> None:
    for batch in batches:
        expected = _proto_results(per_record.submit_usage(batch))
        columns = pa.Table.from_pylist(batch, schema=SCHEMA)
        got = _column_results(bulk.submit_usage_columns(columns))
        assert got == expected, "\n".join(
            f"{i}: {e}\n   {g}"
            for i, (e, g) in enumerate(zip(expected, got, strict=True))
            if e != g
        )


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(batches=_batches())
def test_bulk_path_equals_per_record_path(
    tmp_path_factory: pytest.TempPathFactory, batches: list[list[dict[str, Any]]]
) -> None:
    """The same batches through SubmitUsage and SubmitUsageColumns, on two fresh clusters,
    give the same results, balances, usage lines, notifications, rejects and counters."""
    loop = LoopThread()
    try:
        with ExitStack() as stack:
            per_record = stack.enter_context(_served(tmp_path_factory.mktemp("one"), loop))
            bulk = stack.enter_context(_served(tmp_path_factory.mktemp("bulk"), loop))
            _send_both(per_record, bulk, batches)
            expected, got = _state(per_record), _state(bulk)
            assert got == expected, _difference(expected, got)
    finally:
        loop.close()
