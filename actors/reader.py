"""Local reads: a node answers queries from its own copies of account shards, not through a host.

A query sent to the host that serves a unit waits behind everything else that
host is doing: Ray's call queue and the host's share of the CPU under ingestion
(docs/operations-notes.md, "Queries beside ingestion"). Yet every node keeps
copies of units in its own folder: the units it serves as primary, and in
``replicated`` mode the follower copies the primaries on other nodes write.
:class:`LocalReader` answers a single-account query (``actors.shard.view``) from
such a copy, opened read-only as a RocksDB secondary
(:mod:`actors.store.secondary`), with the same query code as the host.

Which copy may answer (the consistency a read gets: docs/architecture.md,
"Local reads")
    The reader is told the placement: per unit its primary node, its epoch and
    its in-sync followers (:class:`Placement`, from the coordinator). A copy in
    this node's folder answers only if this node is the unit's primary or one of
    its in-sync followers at that epoch, the copy's ``EPOCH`` file still holds
    that epoch (a takeover raises it first; a follower's fence is its primary's
    epoch), it is the same folder the view was opened on (a follower copy
    replaced by a checkpoint is a new folder), and a primary's database holds
    that epoch. Before every answer the view catches up with the owner, after
    the query arrived: a batch acknowledged before the query was synced on every
    in-sync copy first, so the answer includes it (read-your-writes). In every
    other case, and on any error, the reader raises :class:`NotLocal` and the
    caller asks the host as before.

Bounds: at most ``views_max`` views are open (least recently used closed first),
each with at most ``FILES_OPEN_MAX`` table files; a view is opened when the
placement names a copy here (:meth:`LocalReader.prepare`) or on a unit's first
query, and closed when its epoch or folder changes.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import structlog

from actors.op import Op
from actors.routing import unit_kind
from actors.shard.view import LOCAL_READS, ShardView
from actors.store.fencing import read_fence_epoch
from actors.store.secondary import SecondaryStore

__all__ = ["LocalReader", "NotLocal", "Placement", "serves"]

log = structlog.get_logger("petribill.reader")

R = TypeVar("R")

#: Views a reader keeps open by default (a node's copies of account shards).
VIEWS_MAX: Final = 64


class NotLocal(Exception):
    """Raised by :meth:`LocalReader.read` when no copy here may answer; the caller asks
    the unit's host instead. ``reason`` says why, in a word (counted by the caller)."""

    def __init__(self, unit_id: str, reason: str) -> None:
        super().__init__(f"{unit_id}: not read locally: {reason}")
        self.unit_id, self.reason = unit_id, reason


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    """Where a unit's copies are, as the coordinator last said: its primary node, the
    epoch it serves at, and the followers in its in-sync set."""

    primary: str
    epoch: int
    in_sync: frozenset[str] = frozenset()


def serves(op: Op[Any]) -> bool:
    """Whether a local reader may answer ``op`` (a single-account query)."""
    return isinstance(op, LOCAL_READS)


@dataclass(slots=True)
class _View:
    epoch: int
    inode: int
    store: SecondaryStore
    lock: threading.Lock = field(default_factory=threading.Lock)


class LocalReader:
    """The views of one node's copies of account shards; thread-safe.

    ``root`` is the node's folder (the units are in ``root/units/<unit>``);
    ``scratch`` a folder of this reader's own, removed by :meth:`close`.
    """

    def __init__(self, *, node: str, root: Path, scratch: Path, views_max: int = VIEWS_MAX):
        self.node, self.root, self.scratch = node, root, scratch
        self._views_max = max(views_max, 1)
        self._views: OrderedDict[str, _View] = OrderedDict()
        self._guard = threading.Lock()
        self._placement: Mapping[str, Placement] = {}

    def set_placement(self, placement: Mapping[str, Placement]) -> None:
        """Read by ``placement`` from now on (views of units whose epoch changed close
        at their next query)."""
        self._placement = dict(placement)

    def prepare(self) -> int:
        """Open the views of the account shards this node holds a readable copy of, now,
        off the queries' path: a view's first open replays the owner's whole WAL since
        its last flush, which under ingestion takes far longer than a catch-up. Returns
        how many views it opened."""
        opened = 0
        for unit_id, placed in sorted(self._placement.items()):
            if unit_kind(unit_id) != "account" or not self._holds(placed):
                continue
            with self._guard:
                current = self._views.get(unit_id)
            if current is None or current.epoch != placed.epoch:
                path = self.root / "units" / unit_id
                try:
                    self._check_fence(unit_id, path, placed.epoch)
                    self._view(unit_id, path, placed.epoch)
                except NotLocal:
                    continue  # no copy here yet: its first query asks the host
                opened += 1
        return opened

    def _holds(self, placed: Placement) -> bool:
        """Whether this node holds a copy that may answer: the primary or in sync."""
        return placed.primary == self.node or self.node in placed.in_sync

    def read(self, unit_id: str, op: Op[R]) -> R:
        """``op`` answered from this node's copy of ``unit_id``, caught up first;
        :class:`NotLocal` when no copy here may answer it."""
        if not serves(op):
            raise NotLocal(unit_id, "not a local query")
        placed = self._placement.get(unit_id)
        if placed is None:
            raise NotLocal(unit_id, "unplaced")
        if not self._holds(placed):
            raise NotLocal(unit_id, "no in-sync copy here")
        primary = placed.primary == self.node
        path = self.root / "units" / unit_id
        self._check_fence(unit_id, path, placed.epoch)  # before a view is (re)opened
        view = self._view(unit_id, path, placed.epoch)
        with view.lock:
            try:
                if os.stat(path).st_ino != view.inode:
                    raise NotLocal(unit_id, "fenced or replaced")
                view.store.catch_up()
                if primary and view.store.epoch != placed.epoch:
                    raise NotLocal(unit_id, "fenced")
                return ShardView(view.store).run(op)  # type: ignore[arg-type]
            except NotLocal as exc:
                failure = exc
            except Exception as exc:  # a catch-up or a read failed: the host answers
                log.info("local_read_failed", shard=unit_id, error=f"{type(exc).__name__}: {exc}")
                failure = NotLocal(unit_id, "failed")
                failure.__cause__ = exc
        self._close(unit_id, view)
        raise failure

    @staticmethod
    def _check_fence(unit_id: str, path: Path, epoch: int) -> None:
        """:class:`NotLocal` unless the copy at ``path`` is fenced at ``epoch`` (its
        ``EPOCH`` file: a takeover raises it before the new owner serves)."""
        fence = read_fence_epoch(path)
        if fence == 0:
            raise NotLocal(unit_id, "no copy")
        if fence != epoch:
            raise NotLocal(unit_id, "fenced or replaced")

    def _view(self, unit_id: str, path: Path, epoch: int) -> _View:
        with self._guard:
            view = self._views.get(unit_id)
            if view is not None and view.epoch == epoch:
                self._views.move_to_end(unit_id)
                return view
        if view is not None:
            self._close(unit_id, view)
        try:
            inode = os.stat(path).st_ino
            store = SecondaryStore.open(path, self.scratch / f"{unit_id}.{time.monotonic_ns()}")
        except Exception as exc:  # no copy here (yet), or not a database
            raise NotLocal(unit_id, "no copy") from exc
        view = _View(epoch=epoch, inode=inode, store=store)
        evicted: list[tuple[str, _View]] = []
        with self._guard:
            old = self._views.pop(unit_id, None)
            if old is not None:
                evicted.append((unit_id, old))
            self._views[unit_id] = view
            while len(self._views) > self._views_max:
                evicted.append(self._views.popitem(last=False))
        for evicted_id, evicted_view in evicted:
            self._close(evicted_id, evicted_view)
        return view

    def _close(self, unit_id: str, view: _View) -> None:
        """Forget ``view`` and close it once the query reading it (if any) has ended."""
        with self._guard:
            if self._views.get(unit_id) is view:
                del self._views[unit_id]
        with view.lock:
            view.store.close()

    @property
    def views_open(self) -> int:
        with self._guard:
            return len(self._views)

    def close(self) -> None:
        """Close every view and remove the scratch folder."""
        with self._guard:
            views = list(self._views.items())
        for unit_id, view in views:
            self._close(unit_id, view)
        shutil.rmtree(self.scratch, ignore_errors=True)
