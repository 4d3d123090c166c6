"""Preprocessing between reading and rating: duplicate removal, and reconciliation counts.

Duplicates are found by ``record_id`` within a bounded window of recently
seen ids. A record whose id was seen with the same content
(:meth:`UsageRecord.content_key`) is a *duplicate* and is dropped from rating
but counted; one whose id was seen with different content is a *conflict*:
the two cannot both be right, so it is reported, never silently merged.

The window only catches duplicates close together in one stream. Exactly-once
charging does not rest on it: the account shard keeps durable idempotency
marks per ``record_id``. The window saves the work of rating repeats early.

:class:`Reconciliation` is the revenue-assurance count every stage keeps:
everything received is, in the end, rated, rejected or a duplicate.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from typing import Final, TypeVar

from billing.invariant import invariant
from billing.records import CONTENT_FIELDS, UsageRecord

__all__ = [
    "CONTENT_FIELDS",
    "DEFAULT_WINDOW_RECORDS",
    "Conflict",
    "Duplicate",
    "DuplicateWindow",
    "Reconciliation",
    "differing_fields",
    "remove_duplicates",
]

# About 300 to 400 bytes per remembered record: 100 000 ids cost some 40 MB.
DEFAULT_WINDOW_RECORDS: Final = 100_000


def _where(record: UsageRecord) -> str:
    if record.source_file is None:
        return "earlier in the stream"
    return f"at {record.source_file}:{record.source_line}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Duplicate:
    """``record`` repeats ``first``: same id, same content. Counted, not rated."""

    record: UsageRecord
    first: UsageRecord

    @property
    def message(self) -> str:
        return f"duplicate of record_id {self.record.record_id!r} {_where(self.first)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Conflict:
    """``record`` reuses the id of ``first`` with different content; ``fields`` differ.

    A conflict is counted as rejected: neither rating it nor dropping it as a
    duplicate would be safe until a person decides which record is right.
    """

    record: UsageRecord
    first: UsageRecord
    fields: tuple[str, ...]

    @property
    def message(self) -> str:
        return (
            f"record_id {self.record.record_id!r} was seen {_where(self.first)} "
            f"with different {', '.join(self.fields)}"
        )


def differing_fields(record: UsageRecord, first: UsageRecord) -> tuple[str, ...]:
    """The names of the content fields in which ``record`` and ``first`` differ."""
    names = tuple(name for name in CONTENT_FIELDS if getattr(record, name) != getattr(first, name))
    # content_key() may grow a field before CONTENT_FIELDS learns its name.
    return names or ("content",)


class DuplicateWindow:
    """Remembers the first record of the last ``capacity`` distinct ids, oldest out first.

    A repeat does not refresh an id's place: the window covers the ids first
    seen most recently, so its reach in a stream is exactly ``capacity``
    distinct ids. Memory is bounded by ``capacity`` records.
    """

    __slots__ = ("_capacity", "_seen")

    def __init__(self, capacity: int = DEFAULT_WINDOW_RECORDS) -> None:
        invariant(capacity >= 1, f"window capacity must be at least 1, got {capacity}")
        self._capacity = capacity
        self._seen: OrderedDict[str, UsageRecord] = OrderedDict()

    @property
    def capacity(self) -> int:
        return self._capacity

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, record: UsageRecord) -> UsageRecord | Duplicate | Conflict:
        """Return ``record`` when its id is new to the window, else what it repeats."""
        first = self._seen.get(record.record_id)
        if first is not None:
            if first.content_key() == record.content_key():
                return Duplicate(record=record, first=first)
            return Conflict(record=record, first=first, fields=differing_fields(record, first))
        self._seen[record.record_id] = record
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        invariant(len(self._seen) <= self._capacity, "duplicate window exceeds its capacity")
        return record


_Other = TypeVar("_Other")


def remove_duplicates(
    items: Iterable[UsageRecord | _Other],
    *,
    capacity: int = DEFAULT_WINDOW_RECORDS,
) -> Iterator[UsageRecord | Duplicate | Conflict | _Other]:
    """Mark repeated records of a stream; anything else (e.g. reader rejects) passes through.

    Order is kept, and every input gives exactly one output, so a caller can
    count each outcome for :class:`Reconciliation`.
    """
    window = DuplicateWindow(capacity)
    for item in items:
        yield window.check(item) if isinstance(item, UsageRecord) else item


@dataclass(frozen=True, slots=True, kw_only=True)
class Reconciliation:
    """Counts of records through a stage: ``received == rated + rejected + duplicates`` when done.

    Conflicts and reader rejects count as rejected. While work is in flight
    ``pending`` is positive; it is never negative.
    """

    received: int = 0
    rated: int = 0
    rejected: int = 0
    duplicates: int = 0

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            invariant(value >= 0, f"{field.name} must not be negative, got {value}")
        invariant(
            self.settled <= self.received,
            f"more records settled ({self.settled}) than received ({self.received})",
        )

    @property
    def settled(self) -> int:
        return self.rated + self.rejected + self.duplicates

    @property
    def pending(self) -> int:
        return self.received - self.settled

    def is_balanced(self) -> bool:
        """True when every received record is rated, rejected or a duplicate."""
        return self.pending == 0

    def add(
        self, *, received: int = 0, rated: int = 0, rejected: int = 0, duplicates: int = 0
    ) -> Reconciliation:
        return Reconciliation(
            received=self.received + received,
            rated=self.rated + rated,
            rejected=self.rejected + rejected,
            duplicates=self.duplicates + duplicates,
        )

    def __add__(self, other: Reconciliation) -> Reconciliation:
        return self.add(
            received=other.received,
            rated=other.rated,
            rejected=other.rejected,
            duplicates=other.duplicates,
        )

    def as_dict(self) -> dict[str, int]:
        return {
            "received": self.received,
            "rated": self.rated,
            "rejected": self.rejected,
            "duplicates": self.duplicates,
        }
