"""Claims of a column batch store what the per-record claim store stores, in either encoding.

``claim_columns`` writes a batch's claim rows with Arrow string kernels, or row
by row with ``json.dumps`` for a few rows. Both must give the value
``ClaimStore`` writes for the same record (``[[content values], account_id]``,
read back with ``json.loads``), including for strings that need JSON escapes,
and the same keys; and a column claim must be seen by the per-record claim
store (same id and content: ``SAME``; other content: ``CONFLICT``).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.partition import claim_columns
from actors.partition.claim_columns import CONFLICT, NEW, claim_batch, claim_rows
from actors.partition.claims import Claim, ClaimOutcome, ClaimStore
from actors.store.storage import ShardStore
from billing.columns import records_to_batch
from billing.records import CONTENT_FIELDS, Service, UsageRecord

_TEXT = st.text(alphabet=st.sampled_from('ab"\\\x01é€:9'), min_size=1, max_size=6)


@st.composite
def _records(draw: st.DrawFn) -> list[UsageRecord]:
    n = draw(st.integers(1, 70))
    return [
        UsageRecord(
            record_id=f"x:{i}",
            service=draw(st.sampled_from(list(Service))),
            served_msisdn=draw(st.sampled_from(["4915100000001", "4930123456"])),
            record_opening_time_s=draw(st.integers(946_684_800, 4_102_444_799)),
            called_number=draw(st.none() | _TEXT),
            duration_s=draw(st.integers(0, 10**6)),
            sms_count=draw(st.integers(0, 3)),
            uplink_bytes=draw(st.integers(0, 10**9)),
            downlink_bytes=draw(st.integers(0, 10**9)),
            rating_group=draw(st.none() | st.integers(0, 2**31)),
            content_item_id=draw(st.none() | _TEXT),
            roaming=draw(st.booleans()),
        )
        for i in range(n)
    ]


def _per_record_value(record: UsageRecord, account_id: str) -> list[object]:
    content = [getattr(getattr(record, f), "value", getattr(record, f)) for f in CONTENT_FIELDS]
    return [content, account_id]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(records=_records(), small=st.sampled_from([0, 10_000]))
def test_both_encodings_store_the_per_record_value(
    records: list[UsageRecord], small: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kernel and row-by-row encodings give the per-record claim row and key of each record."""
    monkeypatch.setattr(claim_columns, "SMALL_ROWS", small)
    accounts = [f"acc-{i % 3}" for i in range(len(records))]
    batch = claim_batch(records_to_batch(records), pa.array(accounts))
    values = claim_columns._stored_rows(batch)
    assert [json.loads(v) for v in values] == [
        _per_record_value(r, a) for r, a in zip(records, accounts, strict=True)
    ]
    keys = claim_columns._keys(batch.column("record_id"))
    assert keys == [b"i/" + r.record_id.encode() for r in records]


def test_column_claims_meet_per_record_claims(tmp_path: Path) -> None:
    """An id claimed as columns is SAME for the per-record store with its content, a
    CONFLICT with other content; and the other way round."""
    store = ShardStore.open(tmp_path / "part-0", epoch=1)
    try:
        claims = ClaimStore(store)
        first = UsageRecord(
            record_id="x:1", service=Service.SMS, served_msisdn="4915100000001",
            record_opening_time_s=1_793_700_000, called_number="4930123456", sms_count=1,
        )  # fmt: skip
        other = UsageRecord(
            record_id="x:2", service=Service.SMS, served_msisdn="4915100000001",
            record_opening_time_s=1_793_700_000, called_number="4930123456", sms_count=1,
        )  # fmt: skip
        answer = claim_rows(store, claim_batch(records_to_batch([first]), pa.array(["a"])))
        assert answer.column("outcome").to_pylist() == [NEW]
        again = claims.claim([Claim("x:1", first.content_key(), "a")])
        assert again[0].outcome is ClaimOutcome.SAME
        changed = replace(first, sms_count=2)
        clash = claims.claim([Claim("x:1", changed.content_key(), "a")])
        assert clash[0].outcome is ClaimOutcome.CONFLICT
        claims.claim([Claim("x:2", other.content_key(), "a")])
        moved = replace(other, called_number="4930999999")
        back = claim_rows(store, claim_batch(records_to_batch([moved]), pa.array(["a"])))
        assert back.column("outcome").to_pylist() == [CONFLICT]
    finally:
        store.close()
