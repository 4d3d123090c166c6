"""How the coordinator drives replicated units (``storage.mode = "replicated"``, RF >= 2).

The rules are the replicated net's (``petri/replication.py``); this module decides
*which* enabled step to take, from the marking and from what each unit's primary
reports (``UnitHost.replica_report``: its followers, how far each has acknowledged,
and since when one fails). The decisions are pure functions of those two
(:func:`failover_steps`, :func:`dead_follower_steps`, :func:`lagging_steps`,
:func:`joinable`, :func:`repair_steps`); :class:`ReplicaDriver` takes them one at a
time, each as the coordinator takes every step: fire on the net, persist, journal,
then act on the hosts.

One round, in this order (docs/petri-net.md, "How the coordinator drives it"):

1. **Failover.** A fenced unit (its primary's node died) is promoted to its least
   loaded in-sync follower on an alive node (``promote``, a new epoch); its
   followers are first told the fenced epoch. With no such follower the unit is
   ``lose``-t: an operator alert (``unit_lost`` at error level, the
   ``petribill_units_lost_total`` metric), and every call on it is refused with
   UNAVAILABLE naming it as lost. It is never reopened anywhere empty. If the
   node of the fenced primary answers again *with that primary's database*
   (a false failure, or a node restarted with its disk), that copy has every
   acknowledged batch (a primary commits before it acknowledges, and no other
   primary followed it), so the unit is ``restore``-d from it there, as Kafka
   waits for its last in-sync leader; otherwise an operator restores a backup.
2. **Followers on dead nodes** leave the in-sync set (``shrink_isr``) and are
   dropped (``replica_drop``): their disk may be gone with them. A node that
   comes back is an empty node for the units it followed; it gets copies again
   by step 5, and a copy it kept is reused if it is a prefix of the primary's.
3. **Lagging followers** (a primary reports a follower failing for longer than
   ``lag_max_s``) leave the in-sync set. The primary refuses calls until then;
   only after the ``shrink_isr`` is persisted is it told it may acknowledge
   without that follower.
4. **Joins.** A follower its primary reports caught up is *pinned* there first
   (the primary must not drop it on its own any more), then ``catch_up`` and
   ``join_isr`` are fired and persisted, then the primary is told.
5. **Repairs.** A unit with fewer than RF−1 followers gets one on the alive node
   holding the fewest copies (``replica_add``); its primary catches it up.

and, every round, each primary is told its followers as persisted
(``set_replicas``; the ops only send what changed).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from actors import metrics
from petri import Marking
from petri.config import FollowerState, NodeStatus
from petri.marking import epoch_of, followers_of, is_fully_replicated, isr_of, owner_of

__all__ = [
    "ReplicaDriver",
    "ReplicaOps",
    "Step",
    "dead_follower_steps",
    "failover_steps",
    "joinable",
    "lagging_steps",
    "repair_steps",
    "replica_view",
    "writable",
]

log = structlog.get_logger("petribill.coordinator")

Reports = Mapping[str, Mapping[str, Any]]
"""unit -> its primary's ``replica_report`` (``epoch``, ``followers`` by node...)."""


class ReplicaOps(Protocol):
    """What the driver needs of the cluster besides ``ClusterOps``."""

    def replica_reports(self) -> dict[str, dict[str, dict[str, Any]]]:
        """node -> unit -> report, from every answering host, for each unit it serves as a
        primary (it may be one that was failed and fenced meanwhile: a stale primary)."""
        ...

    def release_unit(self, node: str, unit_id: str) -> None:
        """Ask the node's host to stop serving ``unit_id``, without waiting for it."""
        ...

    def replica_ready(self, node: str) -> bool:
        """Whether ``node``'s host answers (lately): a new follower is only placed there."""
        ...

    def set_replicas(self, node: str, unit_id: str, epoch: int, followers: dict[str, str]) -> None:
        """Tell ``unit_id``'s primary on ``node`` its followers (only when it changed)."""
        ...

    def replica_pin(self, node: str, unit_id: str, epoch: int, follower: str) -> bool:
        """Ask the primary to keep ``follower`` in its wait set; False if not caught up."""
        ...

    def replica_fence(self, node: str, unit_id: str, epoch: int) -> None:
        """Tell the copy on ``node`` to refuse primaries below ``epoch`` (best effort)."""
        ...

    def replica_drop(self, node: str, unit_id: str) -> None:
        """Delete the copy on ``node`` (for a drain that moves followers off a node)."""
        ...

    def unit_on_disk(self, node: str, unit_id: str) -> int | None:
        """The EPOCH of ``unit_id``'s database on ``node``, None if it has none there."""
        ...

    def restore_stage(self, node: str, unit_id: str, folder: str) -> dict[str, Any]:
        """Have ``node``'s host copy ``unit_id``'s checkpoint from the backup ``folder``
        (relative to the backup root) into its own folder; the backup's description.
        Raises ``RestoreRefused`` or ``BackupRefused`` as the host did."""
        ...


@dataclass(frozen=True, slots=True)
class Step:
    """One transition to fire, with its binding."""

    transition: str
    binding: dict[str, str | int]


def current_reports(
    marking: Marking, by_node: Mapping[str, Mapping[str, Mapping[str, Any]]]
) -> tuple[dict[str, Mapping[str, Any]], list[tuple[str, str]]]:
    """Split hosts' reports into those of each unit's current primary (unit -> report) and
    the ``(node, unit)`` of hosts still serving a unit they no longer own: a primary that
    was failed and fenced while it was only paused or cut off, and came back."""
    owners = {unit: (node, epoch) for unit, node, epoch in marking.owned()}
    status = _statuses(marking)
    current: dict[str, Mapping[str, Any]] = {}
    stale: list[tuple[str, str]] = []
    for node, reports in by_node.items():
        for unit, report in reports.items():
            if owners.get(unit) == (node, report.get("epoch")):
                current[unit] = report
            elif status.get(node) == NodeStatus.ALIVE and owners.get(unit, ("", 0))[0] != node:
                stale.append((node, unit))
    return current, stale


def _statuses(marking: Marking) -> dict[str, str]:
    return dict(marking.nodes())


def _primaries(marking: Marking) -> dict[str, int]:
    """Primaries per alive node (the load the coordinator evens out)."""
    status = _statuses(marking)
    load = {node: 0 for node, s in status.items() if s == NodeStatus.ALIVE}
    for _unit, node, _epoch in marking.owned():
        if node in load:
            load[node] += 1
    return load


def _copies(marking: Marking) -> dict[str, int]:
    """Copies (primaries and followers) per alive node."""
    load = _primaries(marking)
    for _unit, node, _state, _behind in marking.followers():
        if node in load:
            load[node] += 1
    return load


def failover_steps(marking: Marking) -> list[Step]:
    """For each fenced unit: ``promote`` its least loaded in-sync follower on an alive
    (else draining) node, or ``lose`` it when it has none."""
    status = _statuses(marking)
    load = _primaries(marking)
    steps = []
    for unit, fenced, _epoch in marking.recovering():
        isr = isr_of(marking, unit)
        candidates = sorted(
            (n for n in isr if status.get(n) in (NodeStatus.ALIVE, NodeStatus.DRAINING)),
            key=lambda n: (status[n] != NodeStatus.ALIVE, load.get(n, 0), n),
        )
        if candidates:
            steps.append(Step("promote", {"shard": unit, "node": candidates[0]}))
        else:
            steps.append(Step("lose", {"shard": unit, "from_node": fenced}))
    return steps


def dead_follower_steps(marking: Marking) -> list[Step]:
    """Followers of owned units on dead nodes: out of the ISR, then dropped."""
    status = _statuses(marking)
    owned = {unit for unit, _n, _e in marking.owned()}
    steps = []
    for unit, node, state, _behind in marking.followers():
        if unit not in owned or status.get(node) != NodeStatus.DEAD:
            continue
        if state == FollowerState.IN_SYNC:
            steps.append(Step("shrink_isr", {"shard": unit, "node": node}))
        steps.append(Step("replica_drop", {"shard": unit, "node": node}))
    return steps


def lagging_steps(marking: Marking, reports: Reports, *, lag_max_s: float) -> list[Step]:
    """In-sync followers whose primary (at the current epoch) reports them failing for
    ``lag_max_s`` or longer: ``shrink_isr``."""
    steps = []
    for unit, _node, epoch in marking.owned():
        report = reports.get(unit)
        if report is None or report.get("epoch") != epoch:
            continue
        for follower in sorted(isr_of(marking, unit)):
            seen = report["followers"].get(follower)
            failed_s = None if seen is None else seen.get("failed_s")
            if failed_s is not None and failed_s >= lag_max_s:
                steps.append(Step("shrink_isr", {"shard": unit, "node": follower}))
    return steps


def joinable(marking: Marking, reports: Reports) -> list[tuple[str, str, int, str, bool]]:
    """``(unit, primary, epoch, follower, behind)`` of catching-up followers on alive nodes
    that their primary reports caught up: ready to be pinned and joined."""
    status = _statuses(marking)
    behind = {(u, n): b for u, n, _s, b in marking.followers()}
    found = []
    for unit, primary, epoch in marking.owned():
        report = reports.get(unit)
        if report is None or report.get("epoch") != epoch:
            continue
        for follower, state in sorted(followers_of(marking, unit).items()):
            seen = report["followers"].get(follower) or {}
            if (
                state == FollowerState.CATCHING_UP
                and status.get(follower) == NodeStatus.ALIVE
                and seen.get("caught_up")
                and seen.get("failed_s") is None
            ):
                found.append((unit, primary, epoch, follower, bool(behind[(unit, follower)])))
    return found


def repair_steps(
    marking: Marking,
    *,
    replication_factor: int,
    ready: Callable[[str], bool] = lambda _node: True,
) -> list[Step]:
    """``replica_add`` for each unit with fewer than RF−1 followers, on the alive (and
    ``ready``: its host answers) node holding the fewest copies among those without one
    of the unit."""
    status = _statuses(marking)
    copies = {node: n for node, n in _copies(marking).items() if ready(node)}
    steps = []
    for unit, primary, _epoch in marking.owned():
        if status.get(primary) == NodeStatus.DEAD:
            continue
        followers = followers_of(marking, unit)
        missing = replication_factor - 1 - len(followers)
        for _ in range(missing):
            candidates = sorted(
                (n for n in copies if n != primary and n not in followers),
                key=lambda n: (copies[n], n),
            )
            if not candidates:
                break
            node = candidates[0]
            steps.append(Step("replica_add", {"shard": unit, "node": node}))
            followers = {**followers, node: FollowerState.CATCHING_UP}
            copies[node] += 1
    return steps


def writable(marking: Marking, *, min_in_sync: int) -> bool:
    """Every unit owned by an alive node with enough in-sync followers to acknowledge."""
    status = _statuses(marking)
    owned = marking.owned()
    if marking.free_shards() or marking.recovering() or marking.lost():
        return False
    return all(
        status.get(node) == NodeStatus.ALIVE and 1 + len(isr_of(marking, unit)) >= min_in_sync
        for unit, node, _e in owned
    )


def replica_view(marking: Marking, reports: Reports) -> dict[str, dict[str, Any]]:
    """Per unit: primary, epoch, followers with their state and lag, in-sync set, lost
    (what ``petribill status`` and the operator tools show)."""
    view: dict[str, dict[str, Any]] = {}
    for unit, _epoch in marking.epochs():
        owner = owner_of(marking, unit)
        report = reports.get(unit) or {}
        seen = report.get("followers", {}) if owner and report.get("epoch") == owner[1] else {}
        view[unit] = {
            "primary": owner[0] if owner else "",
            "epoch": epoch_of(marking, unit),
            "followers": {
                node: {
                    "state": state.value,
                    "lag": (seen.get(node) or {}).get("lag"),
                    "failed_s": (seen.get(node) or {}).get("failed_s"),
                }
                for node, state in sorted(followers_of(marking, unit).items())
            },
            "isr": sorted(isr_of(marking, unit)),
            "lost": unit in marking.lost(),
            "acknowledged": report.get("acknowledged"),
            "commits": report.get("commits"),
        }
    return view


class ReplicaDriver:
    """The replicated half of the coordinator's round (see the module docstring).

    ``fire(transition, **binding) -> bool`` is the coordinator's fire-persist-journal;
    ``marking()`` its current marking.
    """

    def __init__(
        self,
        *,
        replication_factor: int,
        min_in_sync: int,
        lag_max_s: float,
        ops: ReplicaOps,
        fire: Callable[..., bool],
        marking: Callable[[], Marking],
    ) -> None:
        self.replication_factor = replication_factor
        self.min_in_sync = min_in_sync
        self.lag_max_s = lag_max_s
        self._ops = ops
        self._fire = fire
        self._marking = marking
        self.reports: dict[str, Mapping[str, Any]] = {}
        self.reports_at = 0.0
        # unit -> (node, epoch) of the primary fenced when the unit was lost: that copy
        # has every acknowledged batch if its disk survived (kept in memory only: after
        # a coordinator restart an operator restores a lost unit).
        self._lost_from: dict[str, tuple[str, int]] = {}
        # Lost units an operator is restoring from a backup right now (staged on a host
        # outside the loop's lock): not restored from a fenced primary meanwhile, whose
        # folder the staging could be writing.
        self.restoring: set[str] = set()

    def _observe(self) -> None:
        try:
            by_node = self._ops.replica_reports()
        except Exception as exc:  # a round without reports only delays joins and shrinks
            log.warning("replica_reports_failed", error=f"{type(exc).__name__}: {exc}")
            return
        self.reports, stale = current_reports(self._marking(), by_node)
        self.reports_at = time.monotonic()
        for node, unit in stale:
            # Its followers refuse it, so it could never get a batch acknowledged; closing
            # it frees its folder for the copy the new primary will attach there.
            log.warning("stale_primary_closed", shard=unit, node=node)
            try:
                self._ops.release_unit(node, unit)
            except Exception as exc:
                log.warning("close_failed", shard=unit, node=node, error=str(exc))

    def failover(self) -> int:
        """Step 1: promote or lose every fenced unit; restore a lost one from its fenced
        primary's own copy once that node answers with it."""
        fired = self._restore_from_fenced()
        fenced = {u: (n, e) for u, n, e in self._marking().recovering()}
        for step in failover_steps(self._marking()):
            unit = str(step.binding["shard"])
            if step.transition == "promote":
                self._fence_followers(unit)
            if self._fire(step.transition, **step.binding):
                fired += 1
                if step.transition == "lose":
                    self._lost_from[unit] = fenced[unit]
                    log.error(
                        "unit_lost",
                        shard=unit,
                        from_node=step.binding["from_node"],
                        detail="no in-sync copy on an alive node: restore it from a backup",
                    )
                    metrics.unit_lost(unit)
        return fired

    def _restore_from_fenced(self) -> int:
        marking = self._marking()
        status = _statuses(marking)
        fired = 0
        for unit in marking.lost():
            found = self._lost_from.get(unit)
            if found is None or unit in self.restoring:
                continue
            node, epoch = found
            if status.get(node) != NodeStatus.ALIVE or not self._ops.replica_ready(node):
                continue
            try:
                on_disk = self._ops.unit_on_disk(node, unit)
            except Exception as exc:
                log.warning("unit_on_disk_failed", shard=unit, node=node, error=str(exc))
                continue
            if on_disk != epoch:
                if on_disk is None:
                    log.error("unit_copy_gone", shard=unit, node=node, epoch=epoch)
                    del self._lost_from[unit]  # its disk is gone: an operator's restore
                continue
            if self._fire("restore", shard=unit, node=node):
                fired += 1
                del self._lost_from[unit]
                log.warning("unit_restored_from_fenced_primary", shard=unit, node=node)
        return fired

    def _fence_followers(self, unit: str) -> None:
        """Tell a fenced unit's followers its new epoch: they refuse the old primary."""
        marking = self._marking()
        status = _statuses(marking)
        epoch = epoch_of(marking, unit)
        for node in followers_of(marking, unit):
            if status.get(node) in (NodeStatus.ALIVE, NodeStatus.DRAINING):
                try:
                    self._ops.replica_fence(node, unit, epoch)
                except Exception as exc:  # best effort: the new primary attaches anyway
                    log.warning("replica_fence_failed", shard=unit, node=node, error=str(exc))

    def reconcile(self) -> int:
        """Steps 2 to 5; returns the transitions fired."""
        self._observe()
        fired = 0
        for step in dead_follower_steps(self._marking()):
            fired += self._fire(step.transition, **step.binding)
        for step in lagging_steps(self._marking(), self.reports, lag_max_s=self.lag_max_s):
            unit, node = str(step.binding["shard"]), str(step.binding["node"])
            log.warning("replica_lagging", shard=unit, node=node, bound_s=self.lag_max_s)
            fired += self._fire(step.transition, **step.binding)
        self.converge()  # the primaries learn the shrinks before anything else happens
        for unit, primary, epoch, follower, behind in joinable(self._marking(), self.reports):
            try:
                pinned = self._ops.replica_pin(primary, unit, epoch, follower)
            except Exception as exc:
                log.warning("replica_pin_failed", shard=unit, node=follower, error=str(exc))
                continue
            if not pinned:
                continue
            # Pinned: the primary waits for the follower from now on. If the join is
            # refused, the next converge tells it the follower is not in sync (unpinned).
            if behind:
                if not self._fire("catch_up", shard=unit, node=follower):
                    continue
                fired += 1
            fired += self._fire("join_isr", shard=unit, node=follower)
        steps = repair_steps(
            self._marking(),
            replication_factor=self.replication_factor,
            ready=self._ops.replica_ready,
        )
        for step in steps:
            fired += self._fire(step.transition, **step.binding)
        self.converge()
        return fired

    def converge(self) -> None:
        """Tell every primary on an alive or draining node its followers as persisted."""
        marking = self._marking()
        status = _statuses(marking)
        for unit, node, epoch in marking.owned():
            if status.get(node) not in (NodeStatus.ALIVE, NodeStatus.DRAINING):
                continue
            followers = {n: s.value for n, s in followers_of(marking, unit).items()}
            try:
                self._ops.set_replicas(node, unit, epoch, followers)
            except Exception as exc:  # the host is not serving it yet: next round
                log.debug("set_replicas_failed", shard=unit, node=node, error=str(exc))

    def assign_target(self) -> str | None:
        """Where a new unit's primary goes: the alive node with the fewest primaries whose
        host answers (a unit placed on a host still starting has no follower yet, and if
        that host fails first the unit is lost before it ever held anything)."""
        load = {
            node: n
            for node, n in _primaries(self._marking()).items()
            if self._ops.replica_ready(node)
        }
        return min(sorted(load), key=lambda n: load[n]) if load else None

    def move_target(self, unit: str, from_node: str, *, rebalance: bool) -> str | None:
        """Where a primary moves (drain, rebalance): its least loaded in-sync follower on
        an alive node, which then holds every acknowledged batch; for a rebalance only
        one at least two primaries lighter."""
        marking = self._marking()
        status = _statuses(marking)
        load = _primaries(marking)
        candidates = sorted(
            (n for n in isr_of(marking, unit) if status.get(n) == NodeStatus.ALIVE),
            key=lambda n: (load.get(n, 0), n),
        )
        if not candidates:
            return None
        target = candidates[0]
        if rebalance and load.get(from_node, 0) < load.get(target, 0) + 2:
            return None
        return target

    def writable(self) -> bool:
        return writable(self._marking(), min_in_sync=self.min_in_sync)

    def fully_replicated(self) -> bool:
        return is_fully_replicated(self._marking(), self.replication_factor)

    def view(self) -> dict[str, dict[str, Any]]:
        return replica_view(self._marking(), self.reports)
