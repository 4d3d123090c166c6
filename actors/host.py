"""UnitHost: serves the units (account shards, rating partitions) placed on one node.

One host per node keeps the process count low (a Ray worker is ~87 MiB and a
call ~2 ms, see docs/operations-notes.md): a partition charges a shard on the
same host by a plain method call, and a shard elsewhere through the router
(:mod:`actors.router`, one call per batch). Every call into a unit is an
operation (:mod:`actors.op`): ``run(unit, epoch, op)``. The class is plain
Python; ``actors/remote.py`` applies ``ray.remote``.

Recovery contract
    Durable: everything a unit committed (see the engines). Nothing in the host
    itself is durable; it is rebuilt from the coordinator's placement.
    ``open_unit(unit, epoch)`` is idempotent and fences: the unit's store is
    opened at ``epoch``, which must be above the stored epoch (a verified
    zombie owner on this machine is killed first). Every call names the epoch
    the caller routes by; a host that does not serve the unit at exactly that
    epoch raises :class:`StaleRoute`, and the caller refreshes its routes and
    retries. The store re-checks the epoch on each commit, so even a host that
    still believes it owns a unit cannot write after a takeover.

Where a host keeps its units (``storage.mode``)
    ``local`` and ``shared``: ``<data_dir>/units/<unit>/`` (one node, or a volume
    every node mounts). ``replicated``: ``<data_dir>/nodes/<node>/units/<unit>/``,
    the node's own folder; the host refuses any path outside it (it never opens
    another node's data), and besides its primaries it keeps *follower copies*
    (:mod:`actors.store.replica`) that the units' primaries on other nodes write
    through the ``replica_*`` methods. A primary's commits are shipped to its
    followers by a :class:`~actors.replication.Replicator`; a call on a replicated
    unit is answered only once its batches are acknowledged by the unit's in-sync
    set, and otherwise refused with :class:`NotReplicated` (the caller retries).

Never recreated empty
    A unit the coordinator has assigned before (``epoch > 1``) is opened only
    from a folder that holds its database and its ``EPOCH`` file. If either is
    missing the host does not create a new, empty database: it refuses
    (:class:`UnitMissing`), logs ``unit_data_missing`` at error level, counts it
    (``petribill_units_missing_total``), and answers every later call on the unit
    with :class:`UnitLost`, which the gateway turns into UNAVAILABLE naming the
    unit as lost.

Thread model
    The Ray actor runs with several threads (partitions call shards on other
    hosts, which may call back); each unit has its own lock, always taken in
    the order partition before shard, so calls never deadlock.

    Operations marked ``read`` (an account shard's account, usage, invoice and
    notification queries) go through :meth:`UnitHost.read` and do not take the
    unit's lock, so they never wait behind a write batch. Such a query reads
    only committed state (the engine promises it; see ``actors.shard.queries``).
    A unit's engine is closed only once the queries running on it have ended
    (:class:`_ReadGate`).
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import structlog

from actors import metrics
from actors.host_many import run_many
from actors.op import Op
from actors.partition.ops import Reprocess, Submit
from actors.replication import Peers, ReplicationSettings, Replicator
from actors.routing import shard_of, unit_kind
from actors.shard.ops import AckForwards, ApplyForwards, ChargeBatch, PendingForwards
from actors.shard.outbox import Forward
from actors.store.backup import (
    RestoreRefused,
    UnitBackup,
    backup_target,
    checkpoint_unit,
    flush_in_background,
    stage_restore,
)
from actors.store.control_copy import ControlCopy, read_copy, save_copy
from actors.store.fencing import EPOCH_FILE, StaleEpoch, StoreClosed, read_fence_epoch
from actors.store.files import write_atomic
from actors.store.replica import (
    CopyState,
    FollowerCopy,
    ReplicaError,
    ReplicaFenced,
    ReplicaNotAttached,
    stored_epoch,
)
from actors.store.storage import ShardStore, StorageFailed
from billing.invariant import invariant

if TYPE_CHECKING:
    from actors.router import UnitRouter

__all__ = [
    "MODES",
    "EngineFactory",
    "NotReplicated",
    "StaleRoute",
    "UnitHost",
    "UnitLost",
    "UnitMissing",
]

#: Storage modes (``[storage] mode``): where units live and how many copies they have.
MODES = ("local", "shared", "replicated")

R = TypeVar("R")

log = structlog.get_logger("petribill.host")

RESUME_EVERY_S = 0.5  # how often a unit whose disk failed a write is tried again
# A query reads a few rows; one still running after this long is stuck, and the
# unit is closed anyway (the query then fails and its caller retries).
_READ_DRAIN_TIMEOUT_S = 5.0


class StaleRoute(Exception):
    """Raised when a call names a unit this host does not serve at the given epoch.

    The caller refreshes its routes from the coordinator and retries; a client
    sees at most UNAVAILABLE.
    """

    def __init__(self, unit_id: str, epoch: int, serving: int | None) -> None:
        super().__init__(f"{unit_id}: called at epoch {epoch}, host serves {serving}")
        self.unit_id = unit_id
        self.epoch = epoch
        self.serving = serving

    def __reduce__(self) -> tuple[type[StaleRoute], tuple[str, int, int | None]]:
        # Crosses process boundaries inside Ray's task errors: rebuild from fields.
        return (StaleRoute, (self.unit_id, self.epoch, self.serving))


class NotReplicated(StaleRoute):
    """Raised when a call's batches are committed on the primary but not (yet)
    acknowledged by the unit's in-sync set (a follower failed and the coordinator
    has not shrunk the set yet, or the set is below ``min_in_sync``). Nothing of
    the call is acknowledged; the caller retries with the same ids (a retry is
    answered as a replay once the batches are acknowledged)."""

    def __init__(self, unit_id: str, epoch: int, reason: str) -> None:
        Exception.__init__(self, f"{unit_id}: not acknowledged by its in-sync set: {reason}")
        self.unit_id, self.epoch, self.serving, self.reason = unit_id, epoch, epoch, reason

    def __reduce__(self) -> tuple[Any, tuple[str, int, str]]:  # type: ignore[override]
        return (NotReplicated, (self.unit_id, self.epoch, self.reason))


class UnitMissing(Exception):
    """Raised by :meth:`UnitHost.open_unit` when a unit that was assigned before has no
    database or no ``EPOCH`` file in its folder: it is never recreated empty."""

    def __init__(self, unit_id: str, path: str, detail: str) -> None:
        super().__init__(f"{unit_id}: data missing at {path}: {detail}; not opened empty")
        self.unit_id, self.path, self.detail = unit_id, path, detail

    def __reduce__(self) -> tuple[type[UnitMissing], tuple[str, str, str]]:
        return (UnitMissing, (self.unit_id, self.path, self.detail))


class UnitLost(Exception):
    """Raised on a call to a unit whose data is gone (see :class:`UnitMissing`); the
    gateway answers UNAVAILABLE naming the unit as lost until an operator restores it."""

    def __init__(self, unit_id: str, detail: str) -> None:
        super().__init__(f"unit {unit_id} is lost: {detail}")
        self.unit_id, self.detail = unit_id, detail

    def __reduce__(self) -> tuple[type[UnitLost], tuple[str, str]]:
        return (UnitLost, (self.unit_id, self.detail))


class Engine(Protocol):
    @property
    def store(self) -> ShardStore: ...

    def close(self) -> None: ...


class EngineFactory(Protocol):
    """Opens the engine of ``unit_id`` stored at ``path`` as owner at ``epoch``; with
    ``resume``, again as its current owner after a failed write (``StorageFailed``)."""

    def __call__(
        self, unit_id: str, path: Path, epoch: int, /, *, resume: bool = False
    ) -> Engine: ...


# How long a call to a unit on another host may take, retries across takeovers included.
_REMOTE_TIMEOUT_S = 30.0


class _ReadGate:
    """Counts lock-free queries in flight on one unit, so that its engine is closed
    only after they end (a closed RocksDB must not be read)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._closed = False

    def enter(self) -> bool:
        """Start a query; ``False`` once the unit is closing."""
        with self._cond:
            if self._closed:
                return False
            self._active += 1
            return True

    def leave(self) -> None:
        with self._cond:
            self._active -= 1
            if self._active == 0:
                self._cond.notify_all()

    def close(self, timeout_s: float = _READ_DRAIN_TIMEOUT_S) -> None:
        """Refuse new queries and wait (bounded) for the running ones to end."""
        with self._cond:
            self._closed = True
            drained = self._cond.wait_for(lambda: self._active == 0, timeout_s)
        if not drained:
            log.warning("reads_not_drained", active=self._active, timeout_s=timeout_s)


@dataclass(slots=True)
class _Unit:
    epoch: int
    engine: Any
    lock: threading.Lock
    gate: _ReadGate = field(default_factory=_ReadGate)
    replicator: Replicator | None = None

    def close(self) -> None:
        """Close the engine once no query reads it; the caller holds ``lock``."""
        self.gate.close()
        if self.replicator is not None:
            self.replicator.close()
        self.engine.close()


@dataclass(slots=True)
class _Copy:
    """A follower copy this host keeps, with the lock serialising its writers."""

    copy: FollowerCopy
    lock: threading.Lock = field(default_factory=threading.Lock)


class UnitHost:
    """The units of one node; see the module docstring for the contract."""

    def __init__(
        self,
        *,
        node: str,
        data_dir: str,
        shards: int,
        factory: EngineFactory,
        router: UnitRouter | None = None,
        backup_root: str | None = None,
        mode: str = "local",
        peers: Peers | None = None,
        replication: ReplicationSettings | None = None,
    ) -> None:
        invariant(mode in MODES, f"storage mode must be one of {MODES}, got {mode!r}")
        invariant(mode != "replicated" or peers is not None, "replicated mode needs peers")
        self.node = node
        self.mode = mode
        self._shards = shards
        self._data_dir = Path(data_dir)
        # Everything this host writes lives below its root: the node's own folder when
        # replicated (no node reads another's), the shared data folder otherwise.
        self._root = (
            (self._data_dir / "nodes" / node).resolve()
            if mode == "replicated"
            else self._data_dir.resolve()
        )
        self._peers = peers
        self._replication = replication or ReplicationSettings()
        self._copies: dict[str, _Copy] = {}
        self._copies_guard = threading.Lock()
        self._missing: dict[str, str] = {}  # unit -> why its data is gone
        # Backups go only below this folder ([security] backup_root; DATA/backups).
        self._backup_root = Path(backup_root) if backup_root else self._data_dir / "backups"
        self._factory = factory
        self._router = router
        self._units: dict[str, _Unit] = {}
        # Units whose store failed a write (disk full): unit -> (epoch, next try).
        self._failed: dict[str, tuple[int, float]] = {}
        # Their replicators (followers, unacknowledged batches), for the reopened store.
        self._resumed_replicators: dict[str, Replicator] = {}
        self._guard = threading.Lock()
        # Long-lived engines keep large caches; a young-generation threshold
        # sized for batches of thousands of objects keeps the collector from
        # dominating the hot path (measured in bench/rating.py).
        gc.freeze()
        gc.set_threshold(100_000, 50, 100)

    # -- placement (called by the coordinator) -----------------------------

    def ping(self) -> str:
        return self.node

    def pid(self) -> int:
        """This host's process id (chaos tests pause or kill exactly this process)."""
        return os.getpid()

    @property
    def root(self) -> Path:
        """The folder this host keeps everything in (its node folder when replicated)."""
        return self._root

    def unit_path(self, unit_id: str) -> Path:
        """Where the unit's database (primary or follower copy) lives on this node."""
        return self._below_root(self._root / "units" / unit_id)

    def _below_root(self, path: Path) -> Path:
        # A host never opens another node's folder: every path it uses is checked here.
        resolved = path.resolve()
        invariant(
            resolved.is_relative_to(self._root),
            f"{self.node}: {resolved} is outside this node's folder {self._root}",
        )
        return resolved

    def units(self) -> dict[str, int]:
        """Unit id -> epoch of every unit this host serves (or owns while its disk fails)."""
        with self._guard:
            owned = {unit_id: epoch for unit_id, (epoch, _) in self._failed.items()}
            return owned | {unit_id: unit.epoch for unit_id, unit in self._units.items()}

    def open_unit(self, unit_id: str, epoch: int) -> None:
        """Serve ``unit_id`` at ``epoch``; idempotent for the same epoch."""
        with self._guard:
            current = self._units.get(unit_id)
            if current is not None and current.epoch == epoch:
                return
            failed = self._failed.pop(unit_id, None)
            if failed is not None and failed[0] == epoch:
                self._failed[unit_id] = failed  # still ours: reopened by the next call
                return
            if current is not None:
                with current.lock:
                    current.close()
                del self._units[unit_id]
            self._close_copy(unit_id)  # a follower promoted: its copy becomes the unit
            path = self.unit_path(unit_id)
            self._check_present(unit_id, path, epoch)
            path.parent.mkdir(parents=True, exist_ok=True)
            engine = self._factory(unit_id, path, epoch)
            if self.mode != "replicated":
                self._mark_created(unit_id)
            unit = _Unit(epoch=epoch, engine=engine, lock=threading.Lock())
            if self.mode == "replicated":
                unit.replicator = self._replicator(unit_id, engine)
            self._units[unit_id] = unit
            self._missing.pop(unit_id, None)
        log.info("unit_opened", shard=unit_id, node=self.node, epoch=epoch)

    def _replicator(self, unit_id: str, engine: Any) -> Replicator:
        assert self._peers is not None
        return Replicator(
            unit_id=unit_id,
            store=engine.store,
            peers=self._peers,
            settings=self._replication,
            checkpoint_dir=self._below_root(self._root / "checkpoints"),
        )

    def _created_marker(self, unit_id: str) -> Path:
        return self._below_root(self._root / "created-units" / unit_id)

    def _mark_created(self, unit_id: str) -> None:
        """Note beside the units' folders (local, shared) that ``unit_id`` exists: a
        unit folder that goes missing later is then told from one never created."""
        marker = self._created_marker(unit_id)
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(marker, b"")

    def _check_present(self, unit_id: str, path: Path, epoch: int) -> None:
        """Refuse to open a unit that was assigned before (``epoch > 1``) whose database
        or epoch file is gone: opening it would create it empty.

        Replicated, a unit above its first epoch is only ever placed where a copy of it
        is (a promoted follower, a restored primary). Local or shared, a unit assigned
        at epoch 1 may have been failed over before any node opened it (its node missed
        pings while starting): with no database and no created-marker it was never
        created, and this open creates it."""
        if epoch <= 1:
            return  # the first assignment creates the unit
        if not (path / "CURRENT").exists():
            if self.mode != "replicated" and not self._created_marker(unit_id).exists():
                return
            detail = "the unit's database is missing"
        elif not (path / EPOCH_FILE).exists() and not stored_epoch(path):
            # A restored backup has no EPOCH file beside it but carries its epoch
            # inside (m/epoch); a folder with neither was never a unit's.
            detail = "the unit's EPOCH file is missing"
        else:
            return
        self._missing[unit_id] = detail
        log.error(
            "unit_data_missing",
            shard=unit_id,
            node=self.node,
            epoch=epoch,
            path=str(path),
            detail=detail,
        )
        metrics.unit_missing(unit_id)
        raise UnitMissing(unit_id, str(path), detail)

    def close_unit(self, unit_id: str) -> None:
        """Stop serving ``unit_id`` (drain, migration); idempotent."""
        with self._guard:
            unit = self._units.pop(unit_id, None)
            self._failed.pop(unit_id, None)
            self._missing.pop(unit_id, None)
        if unit is not None:
            with unit.lock:
                unit.close()
            log.info("unit_closed", shard=unit_id, node=self.node, epoch=unit.epoch)

    def _drop(self, unit_id: str, unit: _Unit) -> None:
        with self._guard:
            if self._units.get(unit_id) is unit:
                del self._units[unit_id]
        with contextlib.suppress(Exception):
            unit.close()
        log.warning("unit_dropped", shard=unit_id, node=self.node, epoch=unit.epoch)

    def close_all(self) -> None:
        for unit_id in list(self.units()):
            self.close_unit(unit_id)
        with self._copies_guard:
            for unit_id in list(self._copies):
                self._close_copy(unit_id)

    # -- data plane --------------------------------------------------------

    def _unit(self, unit_id: str, epoch: int) -> _Unit:
        missing = self._missing.get(unit_id)
        if missing is not None:
            raise UnitLost(unit_id, missing)
        unit = self._units.get(unit_id)
        if unit is None and unit_id in self._failed:
            unit = self._resume(unit_id, epoch)
        if unit is None or unit.epoch != epoch:
            raise StaleRoute(unit_id, epoch, None if unit is None else unit.epoch)
        return unit

    def _resume(self, unit_id: str, epoch: int) -> _Unit | None:
        """Reopen a unit whose store failed a write, at its epoch, from what is durable;
        None while that still fails (tried at most every ``RESUME_EVERY_S``)."""
        with self._guard:
            failed = self._failed.get(unit_id)
            if failed is None or failed[0] != epoch or time.monotonic() < failed[1]:
                return self._units.get(unit_id)
            path = self.unit_path(unit_id)
            try:
                engine = self._factory(unit_id, path, epoch, resume=True)
            except StaleEpoch:
                del self._failed[unit_id]  # taken over meanwhile: not ours any more
                return None
            except Exception as exc:  # still failing (the disk is still full)
                self._failed[unit_id] = (epoch, time.monotonic() + RESUME_EVERY_S)
                log.warning("unit_resume_failed", shard=unit_id, epoch=epoch, error=str(exc))
                return None
            del self._failed[unit_id]
            unit = self._units[unit_id] = _Unit(epoch=epoch, engine=engine, lock=threading.Lock())
            replicator = self._resumed_replicators.pop(unit_id, None)
            if replicator is not None:
                replicator.attach(engine.store)  # the same followers, batches and marks
                unit.replicator = replicator
        log.info("unit_resumed", shard=unit_id, node=self.node, epoch=epoch)
        return unit

    def run(self, unit_id: str, epoch: int, op: Op[R]) -> R:
        """Run one operation on a unit under its lock (or, for one the engine serialises
        itself, without it: see ``Op.serialised``).

        An operation of a partition that charges shards reaches them through this
        host (:meth:`charge`, :meth:`fan_out`); the sponsor charges a shard's batch
        leaves in its outbox are delivered once the batch is committed.
        """
        if op.read or not op.serialised:
            return self._unlocked(unit_id, epoch, op)
        began = time.monotonic()
        unit = self._unit(unit_id, epoch)
        kind = unit_kind(unit_id)
        if op.kind != kind:
            raise TypeError(f"{op.name} is an operation of a {op.kind} unit, not of {unit_id}")
        with unit.lock:
            # Re-check under the lock: a takeover may have closed the unit.
            if self._units.get(unit_id) is not unit:
                raise StaleRoute(unit_id, epoch, None)
            self._check_replicated(unit_id, epoch, unit)
            answer = self._apply(unit_id, epoch, unit, op)
            self._check_replicated(unit_id, epoch, unit)
            if isinstance(op, Submit | Reprocess):
                metrics.partition_counters(unit_id, unit.engine)
        metrics.unit_call(kind, op.name, time.monotonic() - began)
        forwards: list[Forward] = getattr(answer, "forwards", None) or []
        if forwards:
            self._deliver(unit_id, epoch, forwards, getattr(op, "at_s", 0))
        return answer

    def run_many(self, calls: Sequence[tuple[str, int, Op[Any]]]) -> list[Any]:
        """Several calls in one (a gateway's coalesced requests: ``actors.host_many``), each
        as :meth:`run` would run it; per call its answer or the exception it raised."""
        return run_many(self.run, calls, busy=self._busy)

    def _busy(self, unit_id: str) -> bool:
        """Whether another call holds ``unit_id``'s lock now (``run_many`` then waits for it
        on a thread of its own, not in the batch's)."""
        unit = self._units.get(unit_id)
        return unit is not None and unit.lock.locked()

    def read(self, unit_id: str, epoch: int, op: Op[R]) -> R:
        """Run a query of committed state without waiting for the unit's lock.

        Only operations marked ``read`` (or not ``serialised``) run so; any other is
        run by :meth:`run`, under the lock. A write batch in flight does not delay
        the query, which sees the state committed before it.
        """
        if not op.read and op.serialised:
            return self.run(unit_id, epoch, op)
        return self._unlocked(unit_id, epoch, op)

    def _unlocked(self, unit_id: str, epoch: int, op: Op[R]) -> R:
        unit = self._unit(unit_id, epoch)
        if op.kind != unit_kind(unit_id):
            raise TypeError(f"{op.name} is an operation of a {op.kind} unit, not of {unit_id}")
        if not unit.gate.enter():
            raise StaleRoute(unit_id, epoch, None)  # closing: a takeover or a drain
        try:
            if op.read:
                # A query reads committed state; on a replicated unit that may include a
                # batch whose acknowledgement is still under way (docs/architecture.md).
                return self._apply(unit_id, epoch, unit, op)
            self._check_replicated(unit_id, epoch, unit)
            answer = self._apply(unit_id, epoch, unit, op)
            self._check_replicated(unit_id, epoch, unit)
            return answer
        finally:
            unit.gate.leave()

    def _check_replicated(self, unit_id: str, epoch: int, unit: _Unit) -> None:
        """Before a call: refuse at once what could not be acknowledged now. After it:
        answer only once every batch committed so far is acknowledged by the unit's
        in-sync set (a replay's answer included: it reads what earlier calls wrote)."""
        replicator = unit.replicator
        if replicator is None:
            return
        reason = replicator.writable()
        if reason is None:
            return
        if replicator.fenced:
            # A follower knows a newer primary: this host is an old one (paused, or
            # cut off) and must stop serving the unit.
            self._drop(unit_id, unit)
        raise NotReplicated(unit_id, epoch, reason)

    def _apply(self, unit_id: str, epoch: int, unit: _Unit, op: Op[R]) -> R:
        """``op`` on the unit's engine; a store lost or failed under it becomes StaleRoute."""
        try:
            return op.apply(unit.engine, self)
        except (StaleEpoch, StoreClosed) as exc:
            # The store was taken over under us: this host no longer owns the
            # unit. Stop serving it and tell the caller to follow the new route.
            self._drop(unit_id, unit)
            raise StaleRoute(unit_id, epoch, None) from exc
        except StorageFailed as exc:
            # A write failed (disk full): nothing of the call is acknowledged.
            # The engine's memory may be ahead of the disk, so it is dropped;
            # the unit is reopened from disk once writes work again, and the
            # caller retries (with the same ids) until then.
            replicator, unit.replicator = unit.replicator, None
            self._drop(unit_id, unit)
            with self._guard:
                self._failed[unit_id] = (epoch, time.monotonic() + RESUME_EVERY_S)
                if replicator is not None:
                    self._resumed_replicators[unit_id] = replicator
            raise StaleRoute(unit_id, epoch, None) from exc

    def backup_unit(
        self, unit_id: str, epoch: int, folder: str, request_id: str = ""
    ) -> UnitBackup:
        """Checkpoint the unit under its lock (a batch boundary) into ``folder``, a path
        relative to the backup root (see ``actors.store.backup``); :class:`BackupRefused`
        for one that leads elsewhere. A flush in RocksDB's own threads comes first and
        keeps the checkpoint short."""
        target = backup_target(self._backup_root, folder)
        unit = self._unit(unit_id, epoch)
        if unit.gate.enter():  # the flush needs no lock: writes go on meanwhile
            try:
                flush_in_background(unit.engine.store)
            except StoreClosed:
                pass  # closing (a takeover): the checkpoint below says so
            finally:
                unit.gate.leave()
        with unit.lock:
            if self._units.get(unit_id) is not unit:
                raise StaleRoute(unit_id, epoch, None)
            try:
                info = checkpoint_unit(unit.engine.store, target, unit_id, request_id=request_id)
            except StoreClosed as exc:
                raise StaleRoute(unit_id, epoch, None) from exc
        log.info("unit_backed_up", shard=unit_id, node=self.node, path=info.path)
        return info

    def restore_stage(self, unit_id: str, folder: str) -> UnitBackup:
        """Make ``unit_id``'s checkpoint in the backup ``folder`` (relative to the backup
        root, as for :meth:`backup_unit`) this node's copy of the unit, replacing any
        follower copy left here; the coordinator then fires ``restore`` and has it opened
        at a new epoch. :class:`RestoreRefused` for a unit served here (a live unit is
        never overwritten) or a backup without it; :class:`BackupRefused` for a folder
        outside the backup root."""
        root = backup_target(self._backup_root, folder)
        with self._guard:
            if unit_id in self._units or unit_id in self._failed:
                raise RestoreRefused(
                    f"{unit_id}: {self.node} serves it; a live unit is never overwritten"
                )
            with self._copies_guard:
                self._close_copy(unit_id)
            info = stage_restore(
                root,
                unit_id,
                self.unit_path(unit_id),
                staging=self._below_root(self._root / "staging" / f"{unit_id}.restore"),
                trash=self._below_root(self._root / "trash"),
            )
            self._missing.pop(unit_id, None)
        log.warning(
            "unit_restore_staged",
            shard=unit_id,
            node=self.node,
            backup=str(root),
            backup_epoch=info.epoch,
            backup_sequence=info.sequence,
        )
        return info

    # -- replication: the primary's followers (called by the coordinator) ----------------

    def set_replicas(self, unit_id: str, epoch: int, followers: dict[str, str]) -> None:
        """The followers of a unit served here, ``node -> in_sync | catching_up``, as the
        coordinator persisted them; idempotent. New ones are caught up in the background."""
        replicator = self._unit(unit_id, epoch).replicator
        invariant(replicator is not None, f"{unit_id}: not a replicated unit on {self.node}")
        assert replicator is not None
        replicator.set_followers(dict(followers))

    def replica_pin(self, unit_id: str, epoch: int, node: str) -> bool:
        """Keep ``node`` in the unit's wait set until told otherwise (its ``join_isr`` is
        about to be persisted); False if it is not caught up now."""
        replicator = self._unit(unit_id, epoch).replicator
        return replicator is not None and replicator.pin(node)

    def replica_report(self) -> dict[str, dict[str, Any]]:
        """Per replicated unit served here: its followers, their lag and failures."""
        return {
            unit_id: unit.replicator.report()
            for unit_id, unit in list(self._units.items())
            if unit.replicator is not None
        }

    # -- replication: follower copies (called by primaries on other nodes) --------------

    def _close_copy(self, unit_id: str) -> None:
        """(The caller holds ``_guard`` or ``_copies_guard``.)"""
        entry = self._copies.pop(unit_id, None)
        if entry is not None:
            with entry.lock:
                entry.copy.close()

    def _copy(self, unit_id: str, epoch: int, *, create: bool) -> _Copy:
        serving = self._units.get(unit_id)
        if serving is not None:
            # This host is the unit's primary. An older primary is refused as fenced; a
            # newer one must wait until the coordinator has closed the unit here.
            if epoch <= serving.epoch:
                raise ReplicaFenced(unit_id, mine=epoch, fence=serving.epoch)
            raise ReplicaError(f"{unit_id}: {self.node} still serves it at {serving.epoch}")
        with self._copies_guard:
            entry = self._copies.get(unit_id)
            if entry is None:
                if not create:
                    raise ReplicaNotAttached(f"{unit_id}: no copy open on {self.node}")
                copy = FollowerCopy.open(unit_id, self.unit_path(unit_id))
                entry = self._copies[unit_id] = _Copy(copy)
            return entry

    def replica_attach(self, unit_id: str, epoch: int) -> CopyState:
        """A primary at ``epoch`` attaches this node's copy (created empty if there is
        none): the copy refuses every older primary from now on, and says where it is."""
        entry = self._copy(unit_id, epoch, create=True)
        with entry.lock:
            state = entry.copy.attach(epoch)
        log.info(
            "replica_attached", shard=unit_id, node=self.node, epoch=epoch, applied=state.applied
        )
        return state

    def replica_apply(self, unit_id: str, epoch: int, seq: int, payload: bytes) -> int:
        """Apply the primary's batch ``seq`` durably; the number of the last batch applied."""
        entry = self._copy(unit_id, epoch, create=False)
        with entry.lock:
            try:
                return entry.copy.apply(epoch, seq, payload)
            except ReplicaError:
                raise
            except Exception:
                # A write that failed (disk full): RocksDB refuses every later one until
                # reopened. Close the copy; the primary attaches again and resends.
                with self._copies_guard:
                    if self._copies.get(unit_id) is entry:
                        del self._copies[unit_id]
                entry.copy.close()
                raise

    def replica_fence(self, unit_id: str, epoch: int) -> None:
        """Refuse every primary of ``unit_id`` below ``epoch`` (after the coordinator fenced
        the old one); only a copy this host has open or on disk."""
        with self._copies_guard:
            entry = self._copies.get(unit_id)
        if entry is None and (self.unit_path(unit_id) / "CURRENT").exists():
            entry = self._copy(unit_id, epoch, create=True)
        if entry is not None:
            with entry.lock:
                entry.copy.raise_fence(epoch)

    def _staging(self, unit_id: str, token: str) -> Path:
        invariant("/" not in token and ".." not in token, f"bad token {token!r}")
        return self._below_root(self._root / "staging" / f"{unit_id}.{token}")

    def replica_stage(
        self, unit_id: str, epoch: int, token: str, name: str, offset: int, data: bytes
    ) -> None:
        """One chunk of a checkpoint the primary at ``epoch`` sends (staged, not used yet)."""
        entry = self._copy(unit_id, epoch, create=True)
        if epoch < entry.copy.fence:
            raise ReplicaFenced(unit_id, mine=epoch, fence=entry.copy.fence)
        FollowerCopy.stage_chunk(self._staging(unit_id, token), name, offset, data)

    def replica_install(self, unit_id: str, epoch: int, token: str, seq: int) -> CopyState:
        """Replace this node's copy with the staged checkpoint (``seq`` batches)."""
        entry = self._copy(unit_id, epoch, create=True)
        with entry.lock:
            if epoch < entry.copy.fence:
                raise ReplicaFenced(unit_id, mine=epoch, fence=entry.copy.fence)
            entry.copy.close()
            try:
                entry.copy = FollowerCopy.install(
                    unit_id,
                    self.unit_path(unit_id),
                    self._staging(unit_id, token),
                    epoch=epoch,
                    seq=seq,
                    trash=self._below_root(self._root / "trash"),
                )
            except BaseException:
                with self._copies_guard:
                    self._copies.pop(unit_id, None)
                raise
            state = entry.copy.state()
        log.info("replica_installed", shard=unit_id, node=self.node, epoch=epoch, seq=seq)
        return state

    def replica_drop(self, unit_id: str) -> None:
        """Close this node's copy of ``unit_id`` and delete it (the coordinator dropped
        the follower); a unit served here as primary is left alone."""
        if unit_id in self._units:
            return
        with self._copies_guard:
            self._close_copy(unit_id)
        path = self.unit_path(unit_id)
        if path.exists():
            trash = self._below_root(self._root / "trash")
            trash.mkdir(parents=True, exist_ok=True)
            gone = trash / f"{unit_id}.{os.getpid()}.{time.monotonic_ns()}"
            os.replace(path, gone)
            shutil.rmtree(gone, ignore_errors=True)
        log.info("replica_dropped", shard=unit_id, node=self.node)

    def unit_on_disk(self, unit_id: str) -> int | None:
        """The fencing epoch of ``unit_id``'s database in this node's folder (its EPOCH
        file), or None when there is no database there: whether a primary that was
        fenced (falsely failed, or its node restarted) still has its copy."""
        path = self.unit_path(unit_id)
        if not (path / "CURRENT").exists():
            return None
        return read_fence_epoch(path)

    def replica_copies(self) -> dict[str, CopyState]:
        """The follower copies open on this host and where each stands."""
        with self._copies_guard:
            entries = dict(self._copies)
        found = {}
        for unit_id, entry in entries.items():
            with entry.lock:
                found[unit_id] = entry.copy.state()
        return found

    # -- the control replica (called by the coordinator; replicated mode) ---------------

    def control_save(self, generation: int, state: bytes, events: list[dict[str, Any]]) -> int:
        """Keep the coordinator's save ``generation`` in this node's control replica
        (``<node folder>/control/``); the generation held. Refused below the one held
        (:class:`~actors.store.control_copy.ControlReplicaFenced`)."""
        invariant(self.mode == "replicated", f"{self.node}: control replicas are replicated-only")
        return save_copy(self._root, generation, state, events)

    def control_copy(self) -> ControlCopy:
        """This node's control replica (generation 0 if none), and how many unit folders
        the node holds: what a coordinator whose own copy is gone rebuilds it from."""
        invariant(self.mode == "replicated", f"{self.node}: control replicas are replicated-only")
        units = self._root / "units"
        count = sum(1 for p in units.iterdir() if p.is_dir()) if units.is_dir() else 0
        return read_copy(self._root, node=self.node, units=count)

    def update_engines(self, kind: str, update: Callable[[Any], None]) -> list[str]:
        """Apply ``update`` to the engine of every unit of ``kind`` (``account`` or
        ``partition``) served here, each under its unit's lock, so between two of its
        calls (a tariff reload); returns the ids of the units updated."""
        done = []
        for unit_id in sorted(self.units()):
            unit = self._units.get(unit_id)
            if unit is None or unit_kind(unit_id) != kind:
                continue
            with unit.lock:
                if self._units.get(unit_id) is unit:
                    update(unit.engine)
                    done.append(unit_id)
        return done

    def _local_epoch(self, unit_id: str) -> int | None:
        unit = self._units.get(unit_id)
        return None if unit is None else unit.epoch

    # -- what operations reach through the host (``actors.op.Env``) ---------------------

    def charge(self, shard_id: str, items: list[Any], at_s: int) -> Sequence[Any]:
        """Charge rated ``(account_id, rated)`` items on ``shard_id``, here or elsewhere."""
        return self._on_shard(shard_id, ChargeBatch(items=items, at_s=at_s))

    def _on_shard(self, shard_id: str, op: Op[R], timeout_s: float = _REMOTE_TIMEOUT_S) -> R:
        """``op`` on a unit served here (a plain call), or through the router (giving up
        after ``timeout_s``)."""
        epoch = self._local_epoch(shard_id)
        if epoch is not None:
            try:
                return self.run(shard_id, epoch, op)
            except StaleRoute:
                pass  # taken over meanwhile: follow the router
        if self._router is None:
            raise StaleRoute(shard_id, -1, None)
        return self._router.run_blocking(shard_id, op, timeout_s=timeout_s)

    def fan_out(self, calls: Mapping[str, Op[Any]]) -> dict[str, Any]:
        """One operation on each of several units: those served here in turn, the others
        concurrently through the router; per unit its answer, or the exception raised."""
        answers: dict[str, Any] = {}
        remote: dict[str, Op[Any]] = {}
        for unit_id, op in calls.items():
            epoch = self._local_epoch(unit_id)
            if epoch is None:
                remote[unit_id] = op
                continue
            try:
                answers[unit_id] = self.run(unit_id, epoch, op)
            except StaleRoute:
                remote[unit_id] = op  # taken over meanwhile: follow the router
            except Exception as exc:
                answers[unit_id] = exc
        if remote:
            if self._router is None:
                answers.update({u: StaleRoute(u, -1, None) for u in remote})
            else:
                answers.update(self._router.run_all_blocking(remote, timeout_s=_REMOTE_TIMEOUT_S))
        return answers

    def _deliver(
        self, origin: str, epoch: int, forwards: Sequence[Forward], at_s: int,
        timeout_s: float = _REMOTE_TIMEOUT_S,
    ) -> int:  # fmt: skip
        """Apply sponsor halves on their sponsors' shards, then clear them from the outbox
        of ``origin``; one that cannot be delivered now stays for :meth:`deliver_pending`.
        Returns how many were delivered."""
        by_target: dict[str, list[Forward]] = {}
        for forward in forwards:
            target = shard_of(forward.target_account_id, self._shards)
            by_target.setdefault(target, []).append(forward)
        delivered: list[str] = []
        for target, group in by_target.items():
            try:
                self._on_shard(target, ApplyForwards(forwards=group, at_s=at_s), timeout_s)
            except Exception as exc:  # stays in the outbox; redelivered later
                log.warning("forward_pending", shard=target, error=f"{type(exc).__name__}: {exc}")
                continue
            delivered.extend(f.forward_id for f in group)
        if delivered:
            self.run(origin, epoch, AckForwards(forward_ids=delivered))
        return len(delivered)

    def deliver_pending(self, unit_id: str, epoch: int, at_s: int, timeout_s: float) -> int:
        """Redeliver the forwards the account shard ``unit_id`` still holds in its outbox
        (its sponsor's shard was unreachable, or the host died between the commit and the
        delivery); the duty runner calls it every round, giving each sponsor's shard
        ``timeout_s`` (one still unreachable waits for the next round). Returns how many
        were delivered. Safe beside a delivery in flight: a sponsor's shard applies a
        forward once."""
        pending = self.run(unit_id, epoch, PendingForwards())
        return self._deliver(unit_id, epoch, pending, at_s, timeout_s) if pending else 0
