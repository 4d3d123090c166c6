"""One shard's durable store: a raw-mode rocksdict database, epoch-fenced.

Recovery contract
    A batch is durable once :meth:`ShardStore.commit` returns: it is one atomic
    ``WriteBatch`` written with ``sync=True`` (one fsync for the whole batch). A
    crash before that leaves none of the batch; after it, all of it. Reopening
    replays the WAL, so nothing acknowledged is lost.

Fencing (see docs/operations-notes.md for the measurements behind it)
    Three layers, from strongest to cheapest:

    1. **RocksDB's LOCK file.** RocksDB takes a POSIX ``fcntl`` write lock on
       ``<dir>/LOCK``; a second read-write open from any process fails at once
       (``Resource temporarily unavailable``), and a SIGSTOPped holder keeps the
       lock. The OS drops it when the holder dies, even by SIGKILL. So a live
       zombie and a new owner can never have the database open together.
    2. **Takeover kills a verified zombie.** :meth:`ShardStore.open` finds the
       lock holder with ``F_GETLK``; if it is the owner recorded in ``OWNER`` (same
       host and boot, same PID *and* process start time, so a recycled PID is
       never hit) it is sent SIGKILL, which also ends a stopped process, and the
       open waits for the lock to be released. Any other holder is reported as
       :class:`StoreLocked`, never killed.
    3. **Epochs.** Ownership epochs only grow. ``EPOCH`` (a small file beside the
       database, replaced atomically) and ``m/epoch`` (inside it) are raised to
       the new owner's epoch before it serves; an older epoch is refused with
       :class:`StaleEpoch`. Every commit re-reads ``EPOCH`` from disk and the
       in-database ``m/epoch`` and refuses if either differs from the writer's.
       The file is the part that matters: a RocksDB instance never sees another
       instance's writes, so the in-database key alone could not catch a
       second writer if the lock were ever lost (a deleted LOCK file, a
       filesystem without working locks).

Replication (``storage.mode = "replicated"``)
    :meth:`ShardStore.commit` is the one place every write of a unit goes
    through, whatever its engine (account shard, rating partition, claims). A
    :class:`Batch` therefore keeps the list of its puts and deletes beside the
    ``WriteBatch`` (RocksDB's batch cannot be read back), and a store with a
    :class:`Replicator` hands that list, with the commit number as its sequence
    number, to the replicator right after the local synced write, under
    :attr:`ShardStore.commit_lock` so batches reach it in commit order. The
    replicator (``actors.replication``) ships it to the followers; the host
    answers a call only once the batches it committed are acknowledged by the
    unit's in-sync set. The follower side is :mod:`actors.store.replica`.

Write log (for auditors)
    Every commit also counts itself: ``m/commits`` is the number of batches ever
    committed, and ``m/wlog/<epoch>`` holds the first and last commit number of
    each owner epoch. Fencing is right exactly when, in commit order, epochs
    never go back: an auditor checks that the epochs' commit ranges are
    disjoint and ordered like the epochs (:func:`read_write_log`). Two small
    rows per batch, rewritten in place.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import structlog
from rocksdict import AccessType, Checkpoint, Options, Rdict, WriteBatch, WriteOptions

from actors.shard.keys import ACCOUNT_PREFIX
from actors.store.codec import (
    COMMITS_KEY,
    EPOCH_KEY,
    META_PREFIX,
    WRITE_LOG_PREFIX,
    decode_u64,
    encode_u64,
)
from actors.store.fencing import (
    EPOCH_FILE,
    OWNER_FILE,
    FenceLock,
    OwnerRecord,
    StaleEpoch,
    StorageError,
    StoreClosed,
    StoreLocked,
    fence_holder,
    held_paths,
    lock_holder_pid,
    read_fence_epoch,
    write_atomic,
)
from billing.invariant import invariant

__all__ = [
    "STORE_LOST",
    "Batch",
    "LruCache",
    "OwnerRecord",
    "ReadableStore",
    "Replicator",
    "ShardStore",
    "StaleEpoch",
    "StorageError",
    "StorageFailed",
    "StoreClosed",
    "StoreLocked",
    "lock_holder_pid",
    "read_fence_epoch",
    "read_write_log",
]


log = structlog.get_logger("petribill.storage")


class StorageFailed(StorageError):
    """A commit failed in RocksDB (disk full, I/O error): nothing of it is acknowledged.

    The store is closed; its owner reopens it with ``resume=True`` once the
    cause is gone. Whether the failed batch reached the WAL is unknown, so its
    operations must be retried with their idempotency keys, never assumed lost.
    """

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(f"{path}: write failed: {detail}")
        self.path, self.detail = path, detail

    def __reduce__(self) -> tuple[type[StorageFailed], tuple[Path, str]]:
        return (StorageFailed, (self.path, self.detail))


#: What a unit's operation raises when its store is no longer this owner's or no longer
#: writable (fenced by a takeover, closed, a failed commit): never retried inside one
#: call, always raised to the caller, whichever part of a grouped call met it.
STORE_LOST: tuple[type[Exception], ...] = (StaleEpoch, StoreClosed, StorageFailed)


#: One write of a batch as it is replicated: ``(key, value)``, or ``(key, None)`` to delete.
Write = tuple[bytes, bytes | None]


@dataclass(slots=True)
class Batch:
    """Puts and deletes committed together by :meth:`ShardStore.commit` (single use).

    ``writes`` lists them in order as well: a ``WriteBatch`` cannot be read back,
    and a replicated store ships exactly these to its followers.
    """

    _wb: WriteBatch = field(default_factory=lambda: WriteBatch(raw_mode=True))
    _cached: dict[bytes, bytes | None] = field(default_factory=dict)
    writes: list[Write] = field(default_factory=list)
    records: int = 0
    committed: bool = False

    def put(self, key: bytes, value: bytes) -> None:
        invariant(not key.startswith(META_PREFIX), f"batch may not write metadata {key!r}")
        self._wb.put(key, value)
        self.writes.append((key, value))
        self.records += 1
        if key.startswith(ACCOUNT_PREFIX):
            self._cached[key] = value

    def put_data(self, key: bytes, value: bytes) -> None:
        """:meth:`put` of a key the caller built under a data prefix (a ledger ``l/`` or
        mark ``i/`` key: neither metadata nor an account row), without the checks; for
        rows written once per record."""
        self._wb.put(key, value)
        self.writes.append((key, value))
        self.records += 1

    def delete(self, key: bytes) -> None:
        invariant(not key.startswith(META_PREFIX), f"batch may not delete metadata {key!r}")
        self._wb.delete(key)
        self.writes.append((key, None))
        self.records += 1
        if key.startswith(ACCOUNT_PREFIX):
            self._cached[key] = None


class Replicator(Protocol):
    """Where a replicated store hands each committed batch (``actors.replication``)."""

    def replicate(self, seq: int, epoch: int, writes: list[Write]) -> None:
        """Ship the batch committed locally as number ``seq`` at ``epoch`` to the
        followers. Called under :attr:`ShardStore.commit_lock`, in commit order; it
        never raises for a follower's failure (the host's acknowledgement check does)."""
        ...


K = TypeVar("K")
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """A bounded least-recently-used map (``entries_max`` 0 disables it)."""

    def __init__(self, entries_max: int) -> None:
        self._entries_max = entries_max
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        if self._entries_max <= 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self._entries_max:
            self._data.popitem(last=False)

    def put_many(self, items: Iterable[tuple[K, V]]) -> None:
        """:meth:`put` of each pair, in order (the newest last)."""
        entries_max = self._entries_max
        if entries_max <= 0:
            return
        data = self._data
        move = data.move_to_end
        for key, value in items:
            data[key] = value
            move(key)
        while len(data) > entries_max:
            data.popitem(last=False)

    def pop(self, key: K) -> None:
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class ReadableStore:
    """The reads of a unit's database, whoever opened it: the owner's
    :class:`ShardStore`, or a read-only view of it (``actors.store.secondary``).
    A subclass gives :meth:`_live`, the open database."""

    def _live(self) -> Rdict:
        raise NotImplementedError

    def get_data(self, key: bytes) -> bytes | None:
        """The stored value of ``key``, read from the database (no cache lookup)."""
        value: bytes | None = self._live().get(key)
        return value

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        """:meth:`get_data` of many keys at once (one RocksDB multi-get), in order."""
        if not keys:
            return []
        wanted: list[Any] = list(keys)  # rocksdict's stub types a list of keys loosely
        values: list[bytes | None] = self._live().get(wanted)  # type: ignore[assignment]
        return values

    def scan(
        self, start: bytes, end: bytes | None = None, *, limit: int | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """Rows with ``start <= key < end`` in key order (``end=None``: to the last key)."""
        it = self._live().iter()
        it.seek(start)
        count = 0
        while it.valid() and (limit is None or count < limit):
            key: bytes = it.key()
            if end is not None and key >= end:
                return
            yield key, it.value()
            count += 1
            it.next()

    def scan_prefix(
        self, prefix: bytes, *, limit: int | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """Rows whose key starts with ``prefix``, in key order."""
        for key, value in self.scan(prefix, limit=limit):
            if not key.startswith(prefix):
                return
            yield key, value


class ShardStore(ReadableStore):
    """The database of one shard, opened as its owner at one epoch.

    Not thread-safe: the owning actor serialises calls. Account rows (``a/``) go
    through a bounded read cache that commits keep coherent.
    """

    def __init__(self, path: Path, db: Rdict, epoch: int, cache_entries_max: int) -> None:
        self.path, self.epoch = path, epoch
        self._db: Rdict | None = db
        self._wo = WriteOptions()
        self._wo.sync = True
        self.cache: LruCache[bytes, bytes] = LruCache(cache_entries_max)
        raw = db.get(COMMITS_KEY)
        self._commits = decode_u64(raw) if raw is not None else 0
        self._wlog_key = WRITE_LOG_PREFIX + encode_u64(epoch)
        self._wlog_first = self._commits + 1
        # Serialises commits: claims commit beside the unit's own calls (their own lock),
        # and a replicated unit's batches must be numbered and shipped in one order.
        self.commit_lock: threading.Lock | threading.RLock = threading.Lock()
        self.replicator: Replicator | None = None

    @classmethod
    def open(
        cls,
        path: Path | str,
        *,
        epoch: int,
        fence: bool = True,
        fence_timeout_s: float = 5.0,
        cache_entries_max: int = 100_000,
        resume: bool = False,
    ) -> ShardStore:
        """Open (creating if needed) as owner at ``epoch`` and raise the shard's epoch to it.

        Raises :class:`StaleEpoch` if the shard's epoch is already >= ``epoch``, and
        :class:`StoreLocked` if another process holds the database and is not (or,
        with ``fence=False``, may not be) killed as the recorded old owner.

        ``resume``: open again as the *current* owner after :class:`StorageFailed`
        (the epoch stays; it must still be the shard's epoch, or :class:`StaleEpoch`).
        """
        invariant(epoch > 0, f"epoch must be positive, got {epoch}")
        path = Path(path).resolve()
        if path in held_paths():
            raise StoreLocked(path, os.getpid(), "already open in this process")
        path.mkdir(parents=True, exist_ok=True)
        with FenceLock(path, fence_timeout_s):
            stored = read_fence_epoch(path)
            if stored > epoch or (stored == epoch) != resume:
                raise StaleEpoch(path, mine=epoch, stored=stored)
            if not resume:
                # Raise the fence before touching the database, so a writer that
                # still holds it (lock lost) is refused at its next commit.
                write_atomic(path / EPOCH_FILE, encode_u64(epoch))
                fence_holder(path, kill=fence, timeout_s=fence_timeout_s)
            db = cls._open_db(path)
            held_paths().add(path)
            try:
                raw = db.get(EPOCH_KEY)
                in_db = decode_u64(raw) if raw is not None else 0
                if in_db > epoch or (in_db == epoch) != resume:
                    raise StaleEpoch(path, mine=epoch, stored=in_db)
                store = cls(path, db, epoch, cache_entries_max)
                if not resume:
                    wb = WriteBatch(raw_mode=True)
                    wb.put(EPOCH_KEY, encode_u64(epoch))
                    db.write(wb, store._wo)
                    owner = OwnerRecord.of_this_process(epoch)
                    write_atomic(path / OWNER_FILE, json.dumps(asdict(owner)).encode())
            except BaseException:
                held_paths().discard(path)
                db.close()
                raise
        return store

    @staticmethod
    def _open_db(path: Path) -> Rdict:
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        try:
            return Rdict(str(path), options=options, access_type=AccessType.read_write())
        except Exception as exc:
            if "LOCK" in str(exc):
                raise StoreLocked(path, lock_holder_pid(path), str(exc)) from exc
            raise

    def _live(self) -> Rdict:
        if self._db is None:
            raise StoreClosed(f"{self.path}: store is closed")
        return self._db

    def commit(self, batch: Batch) -> None:
        """Write ``batch`` atomically with one synced WAL write, if we still own the shard.

        Raises :class:`StaleEpoch` (and closes the store) if the shard has been
        taken over since this store was opened; nothing of the batch is written.
        """
        with self.commit_lock:
            self._commit(batch)

    @property
    def commits(self) -> int:
        """Batches ever committed to this unit: the sequence number of the last one."""
        return self._commits

    def _commit(self, batch: Batch) -> None:
        db = self._live()
        invariant(not batch.committed, "a Batch is consumed by its commit")
        fenced = read_fence_epoch(self.path)
        raw = db.get(EPOCH_KEY)
        in_db = decode_u64(raw) if raw is not None else 0
        if fenced != self.epoch or in_db != self.epoch:
            self.close()
            raise StaleEpoch(self.path, mine=self.epoch, stored=max(fenced, in_db))
        batch.committed = True
        commit = self._commits + 1
        count = encode_u64(commit)
        wlog = encode_u64(self._wlog_first) + encode_u64(commit)
        batch._wb.put(COMMITS_KEY, count)
        batch._wb.put(self._wlog_key, wlog)
        try:
            db.write(batch._wb, self._wo)
        except Exception as exc:
            # RocksDB refuses every write after a failed one (disk full, I/O
            # error) until it is reopened; the batch may or may not be in the
            # WAL. Give the database up: the owner reopens it (``resume``) and
            # rebuilds its state from what is durable.
            self._abandon()
            raise StorageFailed(self.path, str(exc)) from exc
        self._commits = commit
        for key, value in batch._cached.items():
            if value is None:
                self.cache.pop(key)
            else:
                self.cache.put(key, value)
        if self.replicator is not None:
            # The commit count and write log travel with the batch: a follower's copy
            # is then the primary's key for key (all but m/epoch, which is per copy).
            writes = batch.writes
            writes.append((COMMITS_KEY, count))
            writes.append((self._wlog_key, wlog))
            self.replicator.replicate(commit, self.epoch, writes)

    def checkpoint(self, target: Path) -> int:
        """A RocksDB checkpoint of the unit in ``target`` (a new folder) at a batch
        boundary; returns the number of batches it holds. Hard links to the immutable
        files plus a copy of the manifest, so it is quick on one filesystem."""
        with self.commit_lock:
            Checkpoint(self._live()).create_checkpoint(str(target))
            return self._commits

    def write_log(self) -> dict[int, tuple[int, int]]:
        """``epoch -> (first, last)`` commit numbers of each epoch that wrote here."""
        return read_write_log(self._live())

    def get(self, key: bytes) -> bytes | None:
        """The stored value of ``key``; account rows are served from the LRU cache."""
        db = self._live()
        if key.startswith(ACCOUNT_PREFIX):
            hit = self.cache.get(key)
            if hit is not None:
                return hit
            value: bytes | None = db.get(key)
            if value is not None:
                self.cache.put(key, value)
            return value
        result: bytes | None = db.get(key)
        return result

    def _abandon(self) -> None:
        """Drop a database that failed a write (its close may fail the same way)."""
        db, self._db = self._db, None
        self.cache.clear()
        held_paths().discard(self.path)
        if db is not None:
            try:
                db.close()
            except Exception as exc:  # a memtable flush on a full disk: the WAL has it
                log.warning("store_close_failed", path=str(self.path), error=str(exc))

    def close(self) -> None:
        """Release the database (and its LOCK); idempotent."""
        if self._db is not None:
            self._db.close()
            self._db = None
            self.cache.clear()
            held_paths().discard(self.path)

    def __enter__(self) -> ShardStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_write_log(db: Rdict) -> dict[int, tuple[int, int]]:
    """``epoch -> (first, last)`` commit numbers of each owner epoch that wrote, from an
    open database (see "Write log" above)."""
    log: dict[int, tuple[int, int]] = {}
    it = db.iter()
    it.seek(WRITE_LOG_PREFIX)
    while it.valid():
        key: bytes = it.key()
        if not key.startswith(WRITE_LOG_PREFIX):
            break
        value: bytes = it.value()
        log[decode_u64(key[len(WRITE_LOG_PREFIX) :])] = (
            decode_u64(value[:8]),
            decode_u64(value[8:16]),
        )
        it.next()
    return log
