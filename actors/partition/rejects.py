"""The reject store of a rating partition: every record not charged, with its reason.

Nothing is dropped silently: a record that cannot be read, rated
or charged is stored here with a reason a person can act on and, for readable
records, can be reprocessed once the cause is fixed (the missing account was
created, the tariff now has the destination, the balance was topped up).

Kinds of entry (:class:`RejectKind`), keyed so a re-rejection replaces rather
than piles up:

- ``record`` — a readable record that was rejected (unknown account, no plan,
  no destination, a shard refusal such as ``rejected_offline``...), keyed by
  ``record_id``; reprocessable.
- ``conflict`` — a record whose id was already used with other content, keyed
  by ``record_id``; a person decides which is right.
- ``line`` — a line a reader could not parse, keyed by file and line number;
  it holds the raw text so it can be fixed and submitted again.

**Bound.** The store holds at most ``entries_max`` entries. When a new entry
does not fit, :meth:`Staging.put` refuses it and the partition answers that
record ``resource_exhausted`` (retryable, not counted, not acknowledged as
rejected): back-pressure rather than loss. Replacing an existing entry always
fits. Operators drain the store by reprocessing or discarding entries.

An in-memory index of the stored keys (loaded at open by a key scan) makes
the bound and "is this record in the store?" free of reads on the hot path.
Changes are staged into the caller's :class:`~actors.store.storage.Batch` and
applied to the index only after the commit succeeded.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Final

from actors.partition.codec import REJECT_PREFIX, json_bytes, record_from_json, record_to_json
from actors.store.codec import encode_u64
from actors.store.storage import Batch, ShardStore
from billing.records import UsageRecord

__all__ = ["RejectEntry", "RejectKind", "RejectStore", "Staging"]


class RejectKind(enum.StrEnum):
    """What was rejected: a readable record, a conflicting record, or an unreadable line."""

    RECORD = "R"
    CONFLICT = "C"
    LINE = "L"


def store_key(kind: RejectKind, key: str, line: int | None = None) -> bytes:
    """The row key of an entry; a line entry's ``key`` is its file, ``line`` its number."""
    body = key.encode("utf-8")
    if kind is RejectKind.LINE:
        return REJECT_PREFIX + b"L/" + body + b"\x00" + encode_u64(line or 0)
    return REJECT_PREFIX + kind.value.encode() + b"/" + body


_RECORD_HEAD: Final = REJECT_PREFIX + RejectKind.RECORD.value.encode() + b"/"


def _record_id(row: bytes) -> str | None:
    """The record id of a ``RECORD`` entry's row key; ``None`` for other kinds."""
    return row[len(_RECORD_HEAD) :].decode() if row.startswith(_RECORD_HEAD) else None


@dataclass(frozen=True, slots=True, kw_only=True)
class RejectEntry:
    """One stored reject.

    ``reason`` is machine-readable: a ``RejectReason`` value (``malformed``,
    ``unknown_account``, ``no_destination``...), a shard refusal
    (``rejected_offline``, ``account_closed``...) or, for conflicts,
    ``exists_with_different_content``. ``code`` is finer: the reader's
    ``RejectCode`` of a line, or the field that differs in a conflict.
    ``source_id`` is the collection source whose counters counted it.
    """

    kind: RejectKind
    record_id: str | None
    reason: str
    detail: str
    at_s: int
    record: UsageRecord | None = None
    code: str | None = None
    source_file: str | None = None
    source_line: int | None = None
    source_id: str | None = None
    raw: str | None = None

    @property
    def key(self) -> str:
        """The entry's id for people: the record id, or ``<file>:<line>`` for a line."""
        if self.kind is RejectKind.LINE:
            return f"{self.source_file}:{self.source_line}"
        return self.record_id or ""

    def store_key(self) -> bytes:
        if self.kind is RejectKind.LINE:
            return store_key(self.kind, self.source_file or "", self.source_line)
        return store_key(self.kind, self.record_id or "")

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "record_id": self.record_id,
            "reason": self.reason,
            "detail": self.detail,
            "at_s": self.at_s,
            "record": None if self.record is None else record_to_json(self.record),
            "code": self.code,
            "source_file": self.source_file,
            "source_line": self.source_line,
            "source_id": self.source_id,
            "raw": self.raw,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RejectEntry:
        values = dict(data)
        values["kind"] = RejectKind(values["kind"])
        if values["record"] is not None:
            values["record"] = record_from_json(values["record"])
        return cls(**values)


@dataclass(slots=True)
class Staging:
    """Reject-store changes of one partition batch, applied to the index after commit."""

    store: RejectStore
    puts: dict[bytes, RejectEntry] = field(default_factory=dict)
    deletes: set[bytes] = field(default_factory=set)
    added: int = 0  # staged puts of keys not stored yet

    def put(self, entry: RejectEntry) -> bool:
        """Stage ``entry``; ``False`` (nothing staged) when the store has no room for it."""
        key = entry.store_key()
        if key not in self.puts:
            if not self.store.has_key(key):
                if self.store.size_after(self.added + 1, self.deletes) > self.store.entries_max:
                    return False
                self.added += 1
            self.deletes.discard(key)
        self.puts[key] = entry
        return True

    def delete(self, kind: RejectKind, key: str, line: int | None = None) -> None:
        """Stage removing an entry (no-op if it is neither stored nor staged)."""
        row = store_key(kind, key, line)
        if self.puts.pop(row, None) is not None and not self.store.has_key(row):
            self.added -= 1
        if self.store.has_key(row):
            self.deletes.add(row)

    def write(self, batch: Batch) -> None:
        for key, entry in self.puts.items():
            batch.put(key, json_bytes(entry.to_json()))
        for key in self.deletes:
            batch.delete(key)


class RejectStore:
    """The ``r/`` rows of one partition's store, bounded by ``entries_max``."""

    def __init__(self, store: ShardStore, *, entries_max: int) -> None:
        self._store = store
        self.entries_max = entries_max
        self._keys: set[bytes] = {key for key, _ in store.scan_prefix(REJECT_PREFIX)}
        # The record ids of RECORD entries: the per-record "is it stored?" test of a batch.
        self._records: set[str] = {
            rid for key in self._keys if (rid := _record_id(key)) is not None
        }

    def __len__(self) -> int:
        return len(self._keys)

    def has_key(self, row: bytes) -> bool:
        return row in self._keys

    def has(self, kind: RejectKind, key: str) -> bool:
        if kind is RejectKind.RECORD:
            return key in self._records
        return store_key(kind, key) in self._keys

    def records(self) -> AbstractSet[str]:
        """The record ids stored as ``RECORD`` rejects (a live view: read, never change)."""
        return self._records

    def size_after(self, new_puts: int, deletes: set[bytes]) -> int:
        """Entries after adding ``new_puts`` keys not yet stored and removing ``deletes``."""
        return len(self._keys) + new_puts - len(deletes)

    def stage(self) -> Staging:
        return Staging(self)

    def applied(self, staging: Staging) -> None:
        """Bring the index up to date after ``staging``'s batch was committed."""
        self._keys.update(staging.puts)
        self._keys.difference_update(staging.deletes)
        for key in staging.puts:
            if (rid := _record_id(key)) is not None:
                self._records.add(rid)
        for key in staging.deletes:
            if (rid := _record_id(key)) is not None:
                self._records.discard(rid)

    def get(self, kind: RejectKind, key: str, line: int | None = None) -> RejectEntry | None:
        raw = self._store.get(store_key(kind, key, line))
        return None if raw is None else RejectEntry.from_json(json.loads(raw))

    def list(
        self,
        limit: int,
        *,
        reason: str | None = None,
        kind: RejectKind | None = None,
        after: bytes | None = None,
    ) -> list[RejectEntry]:
        """Up to ``limit`` entries in key order (kind, then key), optionally of one
        ``reason`` / ``kind``, starting after the row key ``after`` (for paging)."""
        prefix = REJECT_PREFIX if kind is None else REJECT_PREFIX + kind.value.encode() + b"/"
        start = prefix if after is None else after + b"\x00"
        out: list[RejectEntry] = []
        for row, raw in self._store.scan(start):
            if not row.startswith(prefix) or len(out) >= limit:
                break
            entry = RejectEntry.from_json(json.loads(raw))
            if reason is None or entry.reason == reason:
                out.append(entry)
        return out

    def counts_by_reason(self) -> dict[str, int]:
        """How many entries there are per reason (a full scan: for operators, not hot paths)."""
        counts: dict[str, int] = {}
        for _, raw in self._store.scan_prefix(REJECT_PREFIX):
            reason = json.loads(raw)["reason"]
            counts[reason] = counts.get(reason, 0) + 1
        return counts
