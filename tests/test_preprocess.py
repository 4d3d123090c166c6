"""Preprocessing: duplicates and conflicts by record_id in a bounded window, and reconciliation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.invariant import InvariantViolation
from billing.preprocess import (
    CONTENT_FIELDS,
    Conflict,
    Duplicate,
    DuplicateWindow,
    Reconciliation,
    remove_duplicates,
)
from billing.readers import Reject, RejectCode
from billing.records import Service, UsageRecord


def call(record_id: str, duration_s: int = 60, **extra: object) -> UsageRecord:
    return UsageRecord(
        record_id=record_id,
        service=Service.VOICE,
        served_msisdn="4915100000001",
        record_opening_time_s=1_793_696_400,
        called_number="49302123456",
        duration_s=duration_s,
        **extra,  # type: ignore[arg-type]
    )


def test_content_fields_name_the_content_key() -> None:
    """CONTENT_FIELDS lists, in order, the attributes that make up UsageRecord.content_key()."""
    record = call("a:1")
    assert tuple(getattr(record, name) for name in CONTENT_FIELDS) == record.content_key()


def test_same_id_same_content_is_a_duplicate_even_from_another_file() -> None:
    """A resend with the same content is a duplicate of the first, whatever its provenance."""
    window = DuplicateWindow(10)
    first = call("a:1", source_file="x.csv", source_line=2)
    again = call("a:1", source_file="y.csv", source_line=9)
    assert window.check(first) is first
    verdict = window.check(again)
    assert verdict == Duplicate(record=again, first=first)
    assert isinstance(verdict, Duplicate)
    assert verdict.message == "duplicate of record_id 'a:1' at x.csv:2"


def test_same_id_other_content_is_a_conflict_naming_the_fields() -> None:
    """A reused id with other content is a conflict that names every differing field."""
    window = DuplicateWindow(10)
    first = call("a:1", source_file="x.csv", source_line=2)
    window.check(first)
    other = call("a:1", duration_s=61, roaming=True)
    verdict = window.check(other)
    assert isinstance(verdict, Conflict)
    assert verdict.fields == ("duration_s", "roaming")
    assert verdict.first is first
    assert "seen at x.csv:2 with different duration_s, roaming" in verdict.message


def test_window_forgets_the_oldest_ids_beyond_its_capacity() -> None:
    """Only the last `capacity` distinct ids are remembered; memory stays bounded."""
    window = DuplicateWindow(3)
    for n in range(5):
        window.check(call(f"a:{n}"))
    assert len(window) == 3
    assert isinstance(window.check(call("a:4")), Duplicate)
    assert isinstance(window.check(call("a:2")), Duplicate)
    # a:0 and a:1 fell out of the window, so they pass as new records.
    assert window.check(call("a:0")) == call("a:0")
    assert len(window) == 3


def test_a_repeat_does_not_refresh_an_ids_place() -> None:
    """The window reaches back exactly `capacity` first sightings, repeats notwithstanding."""
    window = DuplicateWindow(2)
    window.check(call("a:1"))
    window.check(call("a:2"))
    window.check(call("a:1"))  # a duplicate: not moved to the front
    window.check(call("a:3"))  # evicts a:1
    assert window.check(call("a:1")) == call("a:1")


def test_capacity_must_be_positive() -> None:
    """A window of no records is a programming error."""
    with pytest.raises(InvariantViolation):
        DuplicateWindow(0)


def test_remove_duplicates_keeps_order_and_passes_rejects_through() -> None:
    """Every input gives one output in order; reader rejects are passed on untouched."""
    reject = Reject(source_file="f", line=3, code=RejectCode.BAD_VALUE, message="line 3: x", raw="")
    items = [call("a:1"), reject, call("a:1"), call("a:2"), call("a:1", duration_s=5)]
    out = list(remove_duplicates(items, capacity=10))
    assert [type(item).__name__ for item in out] == [
        "UsageRecord",
        "Reject",
        "Duplicate",
        "UsageRecord",
        "Conflict",
    ]
    assert out[1] is reject


def test_reconciliation_balances_when_everything_is_settled() -> None:
    """received = rated + rejected + duplicates once each record has an outcome."""
    counts = Reconciliation().add(received=5)
    assert counts.pending == 5 and not counts.is_balanced()
    counts = counts.add(rated=3).add(rejected=1).add(duplicates=1)
    assert counts.is_balanced()
    assert counts.as_dict() == {"received": 5, "rated": 3, "rejected": 1, "duplicates": 1}
    assert counts + counts == Reconciliation(received=10, rated=6, rejected=2, duplicates=2)


def test_reconciliation_refuses_impossible_counts() -> None:
    """More settled than received, or a negative count, is a bug and is refused."""
    with pytest.raises(InvariantViolation):
        Reconciliation().add(rated=1)
    with pytest.raises(InvariantViolation):
        Reconciliation(received=-1)


@given(
    ids=st.lists(st.integers(0, 30), max_size=200),
    variants=st.lists(st.integers(0, 1), max_size=200),
    capacity=st.integers(1, 40),
)
def test_outcomes_always_reconcile(ids: list[int], variants: list[int], capacity: int) -> None:
    """Whatever the stream, new + duplicates + conflicts equals records received."""
    records = [
        call(f"a:{n}", duration_s=60 + (variants[i] if i < len(variants) else 0))
        for i, n in enumerate(ids)
    ]
    counts = Reconciliation()
    seen_new: set[str] = set()
    for item in remove_duplicates(records, capacity=capacity):
        if isinstance(item, UsageRecord):
            counts = counts.add(received=1, rated=1)
            seen_new.add(item.record_id)
        elif isinstance(item, Duplicate):
            counts = counts.add(received=1, duplicates=1)
            assert item.first.content_key() == item.record.content_key()
        else:
            counts = counts.add(received=1, rejected=1)
            assert item.first.content_key() != item.record.content_key()
    assert counts.is_balanced() and counts.received == len(records)
    if capacity >= 31:
        # The window holds every id: each id is new exactly once.
        assert counts.rated == len(set(ids))
