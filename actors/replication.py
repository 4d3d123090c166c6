"""The primary side of a replicated unit: ship every committed batch to the followers,
catch new or lagging followers up, and say which batches are acknowledged.

The guarantee (docs/architecture.md, "Replication")
    A host answers a call on a replicated unit only once every batch the call
    committed (and every batch before it) is durable on the primary and on
    every follower of the unit's *wait set*, and the wait set holds at least
    ``min_in_sync - 1`` followers of the in-sync set (ISR) the coordinator
    persisted. The wait set is the persisted ISR plus the followers that have
    caught up since (Kafka's "maximal ISR", KIP-497): a follower is counted
    from the moment the primary has seen it apply every batch, before the
    coordinator persists its ``join_isr``, so the persisted ISR is always a
    subset of the followers the primary waits for. A member of the persisted
    ISR (or one the coordinator pinned on its way in) leaves the wait set only
    when the coordinator says so (``set_followers``, after a persisted
    ``shrink_isr``); the primary may drop an unpinned follower outside the ISR
    itself, since nobody would promote it.

    So an acknowledged batch is on every in-sync copy, and on at least
    ``min_in_sync`` copies in all. With the defaults (RF 2, ``min_in_sync`` 2)
    it is on two nodes' disks: losing any one node, disk included, leaves a
    copy that has it, and only such a copy is ever promoted (``promote`` takes
    an in-sync follower). The price is availability: while a unit's ISR is
    below ``min_in_sync - 1`` (its follower died, a new one is catching up) its
    calls are refused with a retryable error (UNAVAILABLE), never acknowledged
    on one copy.

Shipping
    :meth:`Replicator.replicate` runs inside ``ShardStore.commit`` under the
    store's commit lock, right after the local synced write: one call per
    follower (``replica_apply``), all at once, with the batch's writes encoded
    once. A follower that fails (an error, or no answer in ``ack_timeout_s``) is
    retried at most every ``retry_s`` from the batches kept in memory
    (unacknowledged ones only, bounded by ``retain_bytes_max``); until then the
    unit's calls are refused, and the coordinator, reading :meth:`report`,
    shrinks the ISR once the failure outlasts its written bound or the
    follower's node is dead.

Catching up (one thread per follower that is not streaming)
    Attach (the follower raises its fence to our epoch and says where it
    stands); if its history is a prefix of ours and the kept batches reach back
    to it, send it those; otherwise send a RocksDB checkpoint of the unit
    (hard links in our node folder, sent in chunks, installed whole by the
    follower) and then the batches since. The last stretch is shipped under the
    commit lock, after which the follower streams with every commit.
"""

from __future__ import annotations

import collections
import itertools
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import structlog

from actors import metrics
from actors.store.replica import (
    CHUNK_BYTES,
    CopyState,
    ReplicaError,
    ReplicaFenced,
    ReplicaGap,
    ReplicaNotAttached,
    checkpoint_files,
    encode_writes,
    is_prefix,
)
from actors.store.storage import ShardStore, Write

__all__ = [
    "CATCHING_UP",
    "IN_SYNC",
    "PeerUnreachable",
    "Peers",
    "ReplicationSettings",
    "Replicator",
]

log = structlog.get_logger("petribill.replication")

IN_SYNC: Final = "in_sync"
CATCHING_UP: Final = "catching_up"

# A follower's link: attached and caught up (every commit ships to it), or not yet.
_STREAMING: Final = "streaming"
_NEW: Final = "new"
_COPYING: Final = "copying"
# The tail shipped under the commit lock when a catch-up ends is at most this long;
# longer tails are shipped without the lock first (commits go on meanwhile).
_TAIL_UNDER_LOCK_MAX: Final = 32
_CATCH_UP_RETRY_S: Final = 0.5
_TRANSFER_TIMEOUT_S: Final = 60.0


class PeerUnreachable(Exception):
    """Raised by :class:`Peers` when a node's host cannot be reached or did not answer in
    time; the batch is not acknowledged by that follower."""


class Peers(Protocol):
    """How a host reaches other nodes' hosts: Ray actor calls, or plain calls in one
    process (``actors.remote.RayPeers``, ``actors.local.LocalPeers``)."""

    def call(self, node: str, method: str, *args: Any, timeout_s: float) -> Any:
        """``method(*args)`` on ``node``'s host; raises :class:`PeerUnreachable` or the
        host's own exception."""
        ...

    def call_all(
        self, calls: Sequence[tuple[str, str, tuple[Any, ...]]], *, timeout_s: float
    ) -> list[Any]:
        """Several calls at once; per call its answer or the exception it raised."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicationSettings:
    """``[storage]`` settings of a replicated unit's primary."""

    min_in_sync: int = 2
    ack_timeout_s: float = 2.0
    retry_s: float = 0.5
    retain_bytes_max: int = 64 * 1024 * 1024

    @staticmethod
    def of(settings: dict[str, Any]) -> ReplicationSettings:
        return ReplicationSettings(
            min_in_sync=int(settings.get("min_in_sync", 2)),
            ack_timeout_s=float(settings.get("replica_ack_timeout_s", 2.0)),
        )


@dataclass(slots=True)
class _Follower:
    node: str
    in_isr: bool = False
    pinned: bool = False
    caught_up: bool = False
    link: str = _NEW
    acked: int = 0
    failed_at: float | None = None
    error: str = ""
    next_try: float = 0.0
    need_from: int | None = None  # a catch-up needs the kept batches from here on
    worker: threading.Thread | None = None

    def waited_for(self) -> bool:
        """In the wait set: acknowledgements wait for this follower."""
        return self.in_isr or self.pinned or self.caught_up


class Replicator:
    """Replication of one unit whose primary this host is, at one epoch."""

    def __init__(
        self,
        *,
        unit_id: str,
        store: ShardStore,
        peers: Peers,
        settings: ReplicationSettings,
        checkpoint_dir: Path,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.unit_id = unit_id
        self.epoch = store.epoch
        self._store = store
        self._peers = peers
        self._settings = settings
        self._checkpoints = checkpoint_dir
        self._clock = clock
        self._lock = threading.Lock()
        self._followers: dict[str, _Follower] = {}
        # Nothing counts as acknowledged until the in-sync set has it: a new primary's
        # history (promoted from a follower) is on no other copy until one attaches.
        self._hw = 0
        self._kept: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._kept_bytes = 0
        self._fenced: ReplicaFenced | None = None
        self._closed = False
        self._tokens = itertools.count(1)
        # Re-entrant: a catch-up takes a checkpoint (which takes it) while holding it.
        self._commit_lock = threading.RLock()
        self.attach(store)

    def attach(self, store: ShardStore) -> None:
        """Serve ``store`` (the unit reopened at the same epoch after a failed write)."""
        if store.epoch != self.epoch:
            raise ValueError(f"{self.unit_id}: store at epoch {store.epoch}, not {self.epoch}")
        self._store = store
        store.commit_lock = self._commit_lock
        store.replicator = self

    @property
    def commit_lock(self) -> Any:
        return self._commit_lock

    # -- the commit path ------------------------------------------------------------

    def replicate(self, seq: int, epoch: int, writes: list[Write]) -> None:
        payload = encode_writes(writes)
        with self._lock:
            self._kept[seq] = payload
            self._kept_bytes += len(payload)
            # Only followers that have every batch before this one and are not failing:
            # a failing one is resent what it lacks by its own thread (_worker_loop), so
            # a commit never waits longer than one acknowledgement timeout.
            fresh = [
                f
                for f in self._followers.values()
                if f.link == _STREAMING and f.failed_at is None and f.acked == seq - 1
            ]
        self._ship_each(fresh, seq, payload)
        with self._lock:
            self._advance()
            self._trim()

    def _ship_each(self, followers: list[_Follower], seq: int, payload: bytes) -> None:
        """The batch to each follower at once: one call per follower."""
        if not followers:
            return
        calls = [
            (f.node, "replica_apply", (self.unit_id, self.epoch, seq, payload)) for f in followers
        ]
        began = time.monotonic()
        answers = self._peers.call_all(calls, timeout_s=self._settings.ack_timeout_s)
        metrics.replication(time.monotonic() - began)
        for follower, answer in zip(followers, answers, strict=True):
            self._note(follower, answer)

    def _note(self, follower: _Follower, answer: Any) -> None:
        """Record a follower's answer to a batch: its applied count, or its failure."""
        with self._lock:
            if isinstance(answer, BaseException):
                self._failed(follower, answer)
            else:
                follower.acked = max(follower.acked, int(answer))
                if follower.failed_at is not None:
                    log.info("replica_recovered", unit=self.unit_id, node=follower.node)
                follower.failed_at, follower.error = None, ""

    def _failed(self, follower: _Follower, error: BaseException) -> None:
        now = self._clock()
        if follower.failed_at is None:
            follower.failed_at = now
            log.warning(
                "replica_failed",
                unit=self.unit_id,
                node=follower.node,
                error=f"{type(error).__name__}: {error}",
            )
        follower.error = f"{type(error).__name__}: {error}"
        follower.next_try = now + self._settings.retry_s
        if isinstance(error, ReplicaFenced):
            # The follower knows a newer primary: we are an old one. Nothing more of
            # ours may ever be acknowledged.
            self._fenced = error
        if isinstance(error, ReplicaGap | ReplicaNotAttached):
            follower.link = _NEW  # attach again (its host restarted, or it lost batches)
        if not (follower.in_isr or follower.pinned):
            # Nobody would promote it: stop waiting for it, catch it up again.
            follower.caught_up = False
            follower.link = _NEW
        self._start_worker(follower)

    def _resend(self, follower: _Follower, upto: int) -> None:
        """Ship a failed follower what it lacks, from the kept batches, in order."""
        for seq in range(follower.acked + 1, upto + 1):
            payload = self._kept.get(seq)
            if payload is None:
                with self._lock:
                    follower.link = _NEW
                    self._start_worker(follower)
                return
            try:
                answer = self._apply_on(follower, seq, payload)
            except Exception as exc:
                self._note(follower, exc)
                return
            self._note(follower, answer)

    def _advance(self) -> None:
        """Move the acknowledged mark (the caller holds ``_lock``)."""
        commits = self._store.commits
        waited = [f for f in self._followers.values() if f.waited_for()]
        isr = sum(1 for f in waited if f.in_isr)
        if 1 + isr < self._settings.min_in_sync:
            return
        mark = min([commits, *(f.acked if f.link == _STREAMING else 0 for f in waited)])
        if mark > self._hw:
            self._hw = mark

    def _trim(self) -> None:
        """Forget kept batches every follower has (or that no catch-up needs), and the
        oldest past the byte bound (a follower lacking them gets a checkpoint)."""
        floor = self._store.commits
        for follower in self._followers.values():
            if follower.link == _STREAMING:
                floor = min(floor, follower.acked)
            elif follower.need_from is not None:
                floor = min(floor, follower.need_from - 1)
        kept = self._kept
        while kept and (
            next(iter(kept)) <= floor or self._kept_bytes > self._settings.retain_bytes_max
        ):
            _, payload = kept.popitem(last=False)
            self._kept_bytes -= len(payload)

    # -- what the host asks -----------------------------------------------------------

    def acknowledged(self, seq: int) -> str | None:
        """``None`` once batch ``seq`` (and every one before) is acknowledged; otherwise
        why not. Waits only for a batch being shipped by another call (at most about one
        acknowledgement timeout); a known failure is answered at once, so a unit whose
        follower fails refuses its calls quickly instead of holding the host's threads."""
        if self._fenced is None and self._hw >= seq:
            return None
        with self._lock:
            self._advance()
            if self._fenced is None and self._hw >= seq:
                return None
            if self._blocked():
                return self._why_not()
        # Nothing is known to fail: the batch is still being shipped. Wait for that
        # commit to finish (it holds the commit lock while it ships).
        if self.commit_lock.acquire(timeout=2 * self._settings.ack_timeout_s):
            self.commit_lock.release()
        with self._lock:
            self._advance()
            if self._fenced is None and self._hw >= seq:
                return None
            return self._why_not()

    def _blocked(self) -> bool:
        """(The caller holds ``_lock``.) Whether acknowledgements wait for something that
        is known not to come soon: fenced, the ISR too small, a waited-for follower
        failing or not streaming."""
        if self._fenced is not None:
            return True
        waited = [f for f in self._followers.values() if f.waited_for()]
        if 1 + sum(1 for f in waited if f.in_isr) < self._settings.min_in_sync:
            return True
        return any(f.failed_at is not None or f.link != _STREAMING for f in waited)

    def _why_not(self) -> str:
        if self._fenced is not None:
            return f"fenced: {self._fenced}"
        isr = sorted(f.node for f in self._followers.values() if f.in_isr)
        if 1 + len(isr) < self._settings.min_in_sync:
            return (
                f"in-sync set {isr} plus the primary is below min_in_sync "
                f"{self._settings.min_in_sync}: waiting for a follower to catch up"
            )
        lagging = [
            f"{f.node} ({f.error or f.link})"
            for f in self._followers.values()
            if f.waited_for() and (f.link != _STREAMING or f.failed_at is not None)
        ]
        return f"waiting for followers {', '.join(lagging) or '?'}"

    @property
    def fenced(self) -> bool:
        return self._fenced is not None

    def writable(self) -> str | None:
        """Why a write would not be acknowledged now (``None``: it would be, as far as
        is known): checked before a call does any work, and after it."""
        with self._lock:
            if self._blocked():
                return self._why_not()
        return self.acknowledged(self._store.commits)

    def set_followers(self, followers: dict[str, str]) -> None:
        """The coordinator's word: ``node -> in_sync | catching_up`` (persisted before)."""
        # Not under the commit lock: the coordinator's call must not wait behind a batch
        # being shipped. A batch in flight is counted against the followers as they are
        # when its answers come back (_advance), which is safe either way: a follower
        # leaves the wait set only after its shrink_isr was persisted.
        with self._lock:
            for node in [n for n in self._followers if n not in followers]:
                del self._followers[node]  # its worker sees it gone and ends
            for node, state in followers.items():
                follower = self._followers.get(node)
                if follower is None:
                    follower = self._followers[node] = _Follower(node)
                follower.in_isr = state == IN_SYNC
                follower.pinned = False
                if not follower.in_isr and follower.failed_at is not None:
                    follower.caught_up = False
                    follower.link = _NEW
                self._start_worker(follower)
            self._advance()

    def pin(self, node: str) -> bool:
        """Keep a caught-up follower in the wait set until the coordinator says otherwise
        (it is about to persist its ``join_isr``); False if it is not caught up now."""
        with self._lock:
            follower = self._followers.get(node)
            ok = (
                follower is not None
                and follower.link == _STREAMING
                and follower.failed_at is None
                and follower.acked >= self._store.commits
            )
            if ok:
                assert follower is not None
                follower.pinned = follower.caught_up = True
            return ok

    def report(self) -> dict[str, Any]:
        """Where replication stands, for the coordinator and ``status``."""
        now = self._clock()
        with self._lock:
            commits = self._store.commits
            return {
                "epoch": self.epoch,
                "commits": commits,
                "acknowledged": self._hw,
                "writable": self._fenced is None
                and 1 + sum(1 for f in self._followers.values() if f.in_isr)
                >= self._settings.min_in_sync,
                "fenced": self._fenced is not None,
                "followers": {
                    f.node: {
                        "isr": f.in_isr,
                        "pinned": f.pinned,
                        "caught_up": f.caught_up and f.link == _STREAMING,
                        "link": f.link,
                        "acked": f.acked,
                        "lag": commits - f.acked,
                        "failed_s": None if f.failed_at is None else round(now - f.failed_at, 3),
                        "error": f.error,
                    }
                    for f in self._followers.values()
                },
            }

    def close(self) -> None:
        """Stop catching followers up (the unit is closed or handed over)."""
        with self._lock:
            self._closed = True
            self._followers.clear()
            self._kept.clear()
            self._kept_bytes = 0

    # -- catching a follower up -----------------------------------------------------------

    def _start_worker(self, follower: _Follower) -> None:
        """(The caller holds ``_lock``.) A thread for ``follower`` if it needs one (it is
        not streaming, or it failed) and has none."""
        if self._closed or (follower.link == _STREAMING and follower.failed_at is None):
            return
        if follower.worker is not None and follower.worker.is_alive():
            return
        follower.worker = threading.Thread(
            target=self._worker_loop,
            args=(follower,),
            name=f"replica-{self.unit_id}-{follower.node}",
            daemon=True,
        )
        follower.worker.start()

    def _current(self, follower: _Follower) -> bool:
        with self._lock:
            return not self._closed and self._followers.get(follower.node) is follower

    def _worker_loop(self, follower: _Follower) -> None:
        """Until the follower streams without failing: resend what a failed one lacks
        (every ``retry_s``, whether or not calls come), or catch it up."""
        while self._current(follower) and self._fenced is None:
            if follower.link == _STREAMING:
                if follower.failed_at is None:
                    return
                time.sleep(max(follower.next_try - self._clock(), 0.01))
                with self.commit_lock:
                    if follower.link == _STREAMING and follower.failed_at is not None:
                        self._resend(follower, self._store.commits)
                        with self._lock:
                            self._advance()
                continue
            try:
                if self._catch_up(follower):
                    return
            except Exception as exc:
                with self._lock:
                    follower.link = _NEW
                    follower.need_from = None
                    follower.error = f"{type(exc).__name__}: {exc}"
                    if isinstance(exc, ReplicaFenced):
                        self._fenced = exc
                log.info(
                    "catch_up_retry",
                    unit=self.unit_id,
                    node=follower.node,
                    error=follower.error,
                )
                time.sleep(_CATCH_UP_RETRY_S)

    def _catch_up(self, follower: _Follower) -> bool:
        """One attempt; True once the follower streams."""
        node = follower.node
        state: CopyState = self._peers.call(
            node, "replica_attach", self.unit_id, self.epoch, timeout_s=_TRANSFER_TIMEOUT_S
        )
        with self.commit_lock:
            ours = self._store.write_log()
            prefix = is_prefix(ours, applied=state.applied, last_epoch=state.last_epoch)
            reachable = state.applied >= self._store.commits or (state.applied + 1 in self._kept)
            with self._lock:
                follower.link = _COPYING
                follower.need_from = state.applied + 1
        applied = state.applied
        if not (prefix and reachable and state.applied <= self._store.commits):
            applied = self._send_checkpoint(follower)
        log.info("catch_up", unit=self.unit_id, node=node, from_seq=applied, prefix=prefix)
        while True:
            if not self._current(follower):
                return True
            with self.commit_lock:
                commits = self._store.commits
                if commits - applied <= _TAIL_UNDER_LOCK_MAX:
                    applied = self._send_tail(follower, applied, commits)
                    with self._lock:
                        follower.acked = applied
                        follower.link = _STREAMING
                        follower.caught_up = True
                        follower.failed_at, follower.error = None, ""
                        follower.need_from = None
                        self._advance()
                        self._trim()
                    log.info("caught_up", unit=self.unit_id, node=node, seq=applied)
                    return True
            applied = self._send_tail(follower, applied, commits)

    def _apply_on(self, follower: _Follower, seq: int, payload: bytes) -> Any:
        """Batch ``seq`` applied on ``follower``'s copy (its answer: the last applied)."""
        return self._peers.call(
            follower.node, "replica_apply", self.unit_id, self.epoch, seq, payload,
            timeout_s=self._settings.ack_timeout_s,
        )  # fmt: skip

    def _send_tail(self, follower: _Follower, applied: int, upto: int) -> int:
        for seq in range(applied + 1, upto + 1):
            payload = self._kept.get(seq)
            if payload is None:
                raise ReplicaError(f"{self.unit_id}: batch {seq} no longer kept; checkpoint again")
            applied = int(self._apply_on(follower, seq, payload))
            with self._lock:
                follower.need_from = applied + 1
        return applied

    def _send_checkpoint(self, follower: _Follower) -> int:
        """Send a checkpoint of the unit to the follower; returns the batches it holds."""
        token = f"{self.epoch}.{next(self._tokens)}.{int(time.time() * 1000)}"
        folder = self._checkpoints / f"{self.unit_id}.{follower.node}.{token}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        with self.commit_lock:
            seq = self._store.checkpoint(folder)
            with self._lock:
                follower.need_from = seq + 1
        try:
            sent = 0
            for name, size in checkpoint_files(folder):
                with open(folder / name, "rb") as handle:
                    offset = 0
                    while True:
                        data = handle.read(CHUNK_BYTES)
                        if not data and offset > 0:
                            break
                        self._peers.call(
                            follower.node,
                            "replica_stage",
                            self.unit_id,
                            self.epoch,
                            token,
                            name,
                            offset,
                            data,
                            timeout_s=_TRANSFER_TIMEOUT_S,
                        )
                        offset += len(data)
                        sent += len(data)
                        if offset >= size:
                            break
            self._peers.call(
                follower.node,
                "replica_install",
                self.unit_id,
                self.epoch,
                token,
                seq,
                timeout_s=_TRANSFER_TIMEOUT_S,
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        log.info("checkpoint_sent", unit=self.unit_id, node=follower.node, seq=seq, bytes=sent)
        return seq
