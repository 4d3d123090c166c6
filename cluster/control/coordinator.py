"""The coordinator: a reconciliation loop over the Petri net of the control plane.

Each round it observes (which Ray nodes are alive, which hosts answer), compares
with the marking, and fires the enabled transitions that move the marking
towards the wanted state: every node Ray knows has joined, every unit is owned
by an alive node, dead owners are fenced and their units taken over by the
least-loaded alive node. Every step is, in this order:

1. fired on the net (``PetriModel.fire``): a step the net does not allow is a
   refused action, logged as ``refused``, never a crash;
2. persisted with the new marking (``control_state.commit``, fsynced, fenced by the
   generation: a coordinator that was replaced while paused is refused); in
   replicated mode the round's last save also goes to the live nodes' control
   replicas at the round's end, waited for until durable at most
   ``CONTROL_ACK_WAIT_S`` (``cluster.control.mirror``);
3. journaled (``control/transitions.jsonl``) and logged as a structlog event
   named after the transition, with its binding, so a run can be replayed
   through the net (``petri.trace.check_trace``);
4. acted on (a host opens the unit at the new epoch, fencing the old owner).

Failure detection (docs/operations-notes.md, "Failure detection"): a node is
failed at once when its process is gone — Ray reports the node dead, or the
host's ping raised (Ray says the actor died) — and, when Ray still reports it
alive but its host leaves the ping unanswered, only after ``HOST_SILENT_MAX_S``:
a busy host is not a dead one. A silent host that no other alive node could
relieve keeps its units (fencing them would only hand them back to it), and
a fenced node's units go to another node whenever there is one.

Replicated units (``storage.mode = "replicated"``, a replication factor of 2+):
the net is the replicated one, failover promotes an in-sync follower instead of
taking the unit over anywhere, and followers are added, caught up, joined and
shrunk by :class:`cluster.control.replicas.ReplicaDriver`, in the same
fire-persist-act order.

Recovery contract: the marking on disk is never older than anything acted
upon. After a restart the coordinator reloads it and ``converge`` re-issues
the idempotent ``open_unit(unit, epoch)`` of every owned unit, so an action
lost between steps 2 and 4 is completed. Hosts refuse epochs older than the
one stored with a unit, so a replayed open can never roll ownership back. A
coordinator that finds no state on its disk while nodes hold control replicas
rebuilds it from the newest of them before its first round, or refuses to start
(``ControlStateMissing``): it never starts empty over a cluster that ran.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

import structlog

from actors.routing import partition_id, shard_id
from cluster.control.mirror import (
    CONTROL_ACK_WAIT_S,
    JOURNAL_TAIL_MAX,
    ControlMirror,
    ControlRecovery,
    ControlReplicaOps,
    ControlStateMissing,
)
from cluster.control.state import (
    ControlState,
    check_current,
    commit,
    install_copy,
    load_state,
    read_journal,
    repair_journal,
    state_path,
)
from petri import (
    Marking,
    NetConfig,
    PetriModel,
    ShardKind,
    ShardSpec,
    TransitionRefused,
    initial_marking,
    marking_from_json,
    marking_to_json,
)
from petri.marking import epoch_of, owner_of

if TYPE_CHECKING:
    from cluster.control.replicas import ReplicaDriver

__all__ = [
    "BILL_RUN_LEASE_S",
    "HOST_SILENT_MAX_S",
    "ClusterOps",
    "Coordinator",
    "Route",
    "UnitOpenError",
]

#: How many restore requests the control state remembers (a retry is answered the same).
RESTORES_KEPT: Final = 64

log = structlog.get_logger("petribill.coordinator")

#: How long a host that Ray still reports alive may leave the coordinator's ping
#: unanswered before its node is failed and its units fenced. Its ping runs on a
#: thread of its own (actors/remote.py), so only a hung or starved process gets
#: here; long calls answer it in milliseconds (bench/liveness.py).
HOST_SILENT_MAX_S: Final = 15.0
#: A bill-run lock not renewed for this long is released: its holder (a gateway running
#: the bill run in steps, each renewing the lease) died mid run.
BILL_RUN_LEASE_S: Final = 60.0


class UnitOpenError(RuntimeError):
    """Raised by :meth:`ClusterOps.open_unit` when a host could not open a unit
    (host unreachable, store locked by a process that is not the fenced owner).

    ``stale``: the store's epoch is already the one asked for (or above): a host
    opened it at that epoch before and is gone — the node restarted (a whole
    cluster restart, a new host process). Only a takeover at a new epoch can
    serve it again.
    """

    def __init__(self, message: str, *, stale: bool = False) -> None:
        super().__init__(message)
        self.stale = stale


class ClusterOps(Protocol):
    """What the coordinator needs from the cluster; Ray in production (control/ray_ops.py)."""

    def alive_nodes(self) -> Mapping[str, str]:
        """Petribill node name -> Ray node id, for every node Ray reports alive."""
        ...

    def host_ok(self, node: str) -> bool:
        """False once the node's host process is known gone (its ping raised: Ray says
        the actor died); a host that is merely slow to answer is still ok."""
        ...

    def host_silent_s(self, node: str) -> float:
        """Seconds the node's host has left the coordinator's ping unanswered; 0.0 when
        it answered the last one."""
        ...

    def open_unit(self, node: str, unit_id: str, epoch: int) -> None:
        """Make the node's host serve ``unit_id`` at ``epoch``; idempotent."""
        ...

    def close_unit(self, node: str, unit_id: str) -> None:
        """Make the node's host stop serving ``unit_id``; idempotent."""
        ...

    def gateways(self) -> list[dict[str, str]]:
        """Every gateway of an alive node, ``{"node", "address", "state"}`` with state
        ``serving`` or ``restarting``; restarted ones are asked to serve again."""
        ...

    def metrics_urls(self) -> dict[str, str]:
        """Ray node id -> the Prometheus address of its metrics agent (may be empty)."""
        ...


@dataclass(frozen=True, slots=True)
class Route:
    """Where a unit is served: the owning node and the epoch callers must present."""

    node: str
    epoch: int


def unit_specs(shards: int, partitions: int) -> tuple[ShardSpec, ...]:
    """Every unit of a cluster, account shards first."""
    return tuple(ShardSpec(shard_id=shard_id(i), kind=ShardKind.ACCOUNT) for i in range(shards)) + (
        tuple(ShardSpec(shard_id=partition_id(i), kind=ShardKind.RATING) for i in range(partitions))
    )


class Coordinator:
    """Owns the marking; the only writer of unit ownership."""

    def __init__(
        self,
        *,
        data_dir: Path,
        shards: int,
        partitions: int,
        ops: ClusterOps,
        wall_clock: Callable[[], float] = time.time,
        replication_factor: int = 1,
        min_in_sync: int = 1,
        lag_max_s: float = 5.0,
        control_acks: int = 0,
    ) -> None:
        self._data_dir = data_dir
        self._wall_clock = wall_clock
        self._ops = ops
        self._units = unit_specs(shards, partitions)
        self._state: ControlState = load_state(data_dir)
        self._rf = replication_factor
        self._min_in_sync, self._lag_max_s = min_in_sync, lag_max_s
        self._replicas: ReplicaDriver | None = None
        # The net's universe of nodes grows as Ray nodes appear; until the
        # first one does there is nothing to own units, and no model.
        self._model: PetriModel | None = None
        self._marking: Marking | None = None
        # Control replicas (cluster.control.mirror): every save also goes to the live
        # nodes' copies; a missing own copy is rebuilt from them before anything else.
        self._mirror: ControlMirror | None = None
        self._recovery: ControlRecovery | None = None
        self.control_error = ""
        self._in_round = False  # inside reconcile: its saves reach the replicas at its end
        if control_acks > 0:  # the ops of a replicated cluster reach the replicas too
            replica_ops = cast("ControlReplicaOps", ops)
            self._mirror = ControlMirror(replica_ops, acks_needed=control_acks)
            if not state_path(data_dir).exists():
                self._recovery = ControlRecovery(replica_ops, acks_needed=control_acks)
        if self._recovery is None:
            self._adopt()
        self.failover_started: dict[str, float] = {}
        self._lock_since: dict[str, float] = {}
        self.lock_lease_s = BILL_RUN_LEASE_S
        self.host_silent_max_s = HOST_SILENT_MAX_S
        self._kept: set[str] = set()  # silent nodes kept: no other node could take over

    def _adopt(self) -> None:
        """Start from the persisted state: the journal repaired, the net and marking."""
        repair_journal(self._data_dir, self._state)
        self._replicas = self._replica_driver(self._ops, self._min_in_sync, self._lag_max_s)
        if self._state.nodes:
            self._model = self._build_model(tuple(self._state.nodes))
            assert self._state.marking_json is not None
            self._marking = marking_from_json(self._state.marking_json)
        saved = state_path(self._data_dir)
        if self._mirror is not None and saved.exists():
            tail = read_journal(self._data_dir)[-JOURNAL_TAIL_MAX:]
            self._mirror.start_from(self._state.generation, saved.read_bytes(), tail)

    def _recover(self) -> bool:
        """While the own control copy is missing: gather the nodes' replicas and rebuild
        it from the newest (:mod:`cluster.control.mirror`); True once started."""
        assert self._recovery is not None
        alive = self._ops.alive_nodes()
        try:
            decision = self._recovery.step(list(alive))
        except ControlStateMissing as missing:
            if str(missing) != self.control_error:  # said once per new finding
                log.error("control_state_missing", reason=str(missing))
            self.control_error = str(missing)
            return False
        if not decision.ready:
            return False
        if decision.copy is not None:
            copy = decision.copy
            self._state = install_copy(self._data_dir, copy.state, copy.journal)
            log.warning("control_state_rebuilt", node=copy.node, generation=copy.generation)
        self._recovery = None
        self.control_error = ""
        self._adopt()
        return True

    # -- the net -----------------------------------------------------------

    def _replica_driver(self, ops: Any, min_in_sync: int, lag_max_s: float) -> ReplicaDriver | None:
        """The replicated half of the loop (RF >= 2), after checking that the persisted
        marking was made for this replication factor."""
        if self._state.nodes and self._state.replication_factor != self._rf:
            raise ValueError(
                f"{self._data_dir}/control was made with replication factor "
                f"{self._state.replication_factor}, not {self._rf}: a marking is only "
                "meaningful with the net it was made for (start with the storage mode "
                "and replication factor it was created with)"
            )
        self._state.replication_factor = self._rf
        if self._rf < 2:
            return None
        from cluster.control.replicas import ReplicaDriver

        return ReplicaDriver(
            replication_factor=self._rf,
            min_in_sync=min_in_sync,
            lag_max_s=lag_max_s,
            ops=ops,
            fire=self._fire,
            marking=lambda: self.marking,
        )

    def _build_model(self, nodes: tuple[str, ...]) -> PetriModel:
        config = NetConfig(
            nodes=nodes,
            shards=self._units,
            initial_nodes=frozenset(),
            replication_factor=self._rf,
        )
        return PetriModel(config)

    def _grow(self, node: str, ray_node_id: str) -> None:
        """Add a node the net has never seen; it starts ``absent`` and must ``join``."""
        self._state.nodes[node] = ray_node_id
        self._model = self._build_model(tuple(self._state.nodes))
        if self._marking is None:
            self._marking = initial_marking(self._model.config)
        else:
            tokens = [*self._marking.tokens("node"), (node, "absent")]
            self._marking = self._marking.replace({"node": tokens})

    def _fire(self, transition: str, /, *, cause: str = "", **binding: str | int) -> bool:
        """Fire, persist, log — in that order. Returns False for a refused step.

        The journaled event also says when (``at_s``, wall clock) and, for a node
        failure, why (``cause``), so a run's takeovers can be told apart afterwards
        (chaos counts those no injected fault explains)."""
        assert self._model is not None and self._marking is not None
        try:
            marking = self._model.fire(self._marking, transition, binding)
        except TransitionRefused as refused:
            log.warning(
                "refused",
                transition=transition,
                reason=refused.reason,
                detail=refused.detail,
                **binding,
            )
            return False
        self._marking = marking
        if "epoch" not in binding and "shard" in binding:
            owner = owner_of(marking, str(binding["shard"]))
            if owner is not None:
                binding["epoch"] = owner[1]
        event: dict[str, object] = {
            "event": transition,
            **binding,
            "generation": self._state.generation + 1,
            "at_s": round(self._wall_clock(), 3),
        }
        if cause:
            event["cause"] = cause
        self._state.marking_json = marking_to_json(marking)
        self._state.last_event = event
        self._replicate(commit(self._data_dir, self._state, event), event)
        log.info(transition, **binding, **({"cause": cause} if cause else {}))
        return True

    def _replicate(self, state: bytes, event: dict[str, Any] | None) -> None:
        """Hand a save just committed to the control replicas: at the end of the round
        (:meth:`reconcile`), or now for a save made outside one (bounded wait)."""
        if self._mirror is not None:
            self._mirror.saved(self._state.generation, state, event)
            if not self._in_round:
                self._mirror.settle(self._control_targets())

    def _control_targets(self) -> list[str]:
        """The nodes whose replicas a save goes to: alive or draining, host answering."""
        return [
            node
            for node, status in self._nodes()
            if status in ("alive", "draining")
            and self._ops.host_ok(node)
            and self._ops.host_silent_s(node) < CONTROL_ACK_WAIT_S  # busy is not gone
        ]

    def check_current(self) -> None:
        """Raise :class:`~cluster.control.state.StaleCoordinator` if another coordinator has
        written the control folder since this one loaded or last wrote it."""
        check_current(self._data_dir, self._state)

    # -- observation -------------------------------------------------------

    @property
    def marking(self) -> Marking:
        if self._marking is None:
            raise RuntimeError("no node has joined yet")
        return self._marking

    @property
    def model(self) -> PetriModel:
        if self._model is None:
            raise RuntimeError("no node has joined yet")
        return self._model

    def _owned(self) -> tuple[tuple[str, str, int], ...]:
        return () if self._marking is None else self._marking.owned()

    def _nodes(self) -> tuple[tuple[str, str], ...]:
        return () if self._marking is None else self._marking.nodes()

    def routes(self) -> dict[str, Route]:
        """The owner and epoch of every owned unit: what gateways route by."""
        return {unit: Route(node, epoch) for unit, node, epoch in self._owned()}

    def node_ids(self) -> dict[str, str]:
        return dict(self._state.nodes)

    def _status(self, node: str) -> str:
        for name, status in self._nodes():
            if name == node:
                return status
        return "unknown"

    def _load(self) -> dict[str, int]:
        load = {n: 0 for n, s in self._nodes() if s == "alive"}
        for _unit, node, _epoch in self._owned():
            if node in load:
                load[node] += 1
        return load

    def _least_loaded(self, avoid: str = "") -> str | None:
        """The alive node owning the fewest units; ``avoid`` only when it is the one
        alive node (a fenced owner's units go elsewhere whenever they can)."""
        load = self._load()
        if len(load) > 1:
            load.pop(avoid, None)
        if not load:
            return None
        return min(sorted(load), key=lambda n: load[n])

    # -- the loop ----------------------------------------------------------

    def reconcile(self) -> int:
        """One round: observe, fire what is enabled towards the wanted state, act.

        Returns the number of transitions fired.
        """
        if self._recovery is not None and not self._recover():
            return 0
        self._in_round = True
        try:
            fired = self._round()
        finally:
            self._in_round = False
        if self._mirror is not None:  # the round's saves, in one call per replica
            self._mirror.settle(self._control_targets())
        return fired

    def _round(self) -> int:
        """The round's observations and transitions (see :meth:`reconcile`)."""
        fired = 0
        alive = dict(self._ops.alive_nodes())
        for node, ray_id in sorted(alive.items()):
            if node not in self._state.nodes:
                self._grow(node, ray_id)
        if self._marking is None:
            return 0
        for node, status in list(self._marking.nodes()):
            if status in ("alive", "draining"):
                cause = self._failure(node, alive)
                if cause:
                    self.failover_started.setdefault(node, time.monotonic())
                    fired += self._fire("node_fail", node=node, cause=cause)
            elif status == "absent" and node in alive:
                fired += self._fire("join", node=node)
        for unit, node, _epoch in list(self._marking.owned()):
            if self._status(node) == "dead":
                fired += self._fire("fence", shard=unit, node=node)
        for node, status in list(self._marking.nodes()):
            owns = any(n == node for _u, n, _e in self._marking.owned())
            if status == "dead" and not owns and self._answering(node, alive):
                fired += self._fire("node_recover", node=node)
        if self._replicas is not None:
            fired += self._replicas.failover()  # promote an in-sync follower, or lose
        for unit, fenced, _epoch in list(self._marking.recovering()):
            target = self._least_loaded(avoid=fenced) if self._replicas is None else None
            if target is not None:
                fired += self._fire("takeover", shard=unit, node=target)
        for unit in list(self._marking.free_shards()):
            target = (
                self._least_loaded()
                if self._replicas is None  # replicated: only a node whose host answers
                else self._replicas.assign_target()
            )
            if target is not None:
                fired += self._fire("assign", shard=unit, node=target)
        fired += self._expire_locks()
        fired += self._drain_step()
        fired += self._rebalance_step()
        self.converge()
        if self._replicas is not None:
            fired += self._replicas.reconcile()
        return fired

    # -- failure detection ---------------------------------------------------

    def _answering(self, node: str, alive: Mapping[str, str]) -> bool:
        return node in alive and self._ops.host_ok(node) and self._ops.host_silent_s(node) == 0

    def _failure(self, node: str, alive: Mapping[str, str]) -> str:
        """Why ``node`` must be failed now ("" if it must not): its process is gone
        (at once), or its host has been silent past ``host_silent_max_s`` while
        another node could take its units over."""
        if node not in alive:
            return "node_dead"
        if not self._ops.host_ok(node):
            return "host_gone"
        silent_s = self._ops.host_silent_s(node)
        if silent_s < self.host_silent_max_s:
            self._kept.discard(node)
            return ""
        relief = [
            other
            for other, status in self._nodes()
            if other != node
            and status == "alive"
            and other in alive
            and self._ops.host_ok(other)
            and self._ops.host_silent_s(other) < self.host_silent_max_s
        ]
        if not relief:
            if node not in self._kept:  # said once per silence, not every round
                self._kept.add(node)
                log.warning("host_silent_kept", node=node, silent_s=round(silent_s, 1))
            return ""
        log.warning("host_silent", node=node, silent_s=round(silent_s, 1), relief=relief)
        return "host_silent"

    # -- moving units: drain and rebalance ---------------------------------

    def _lock_free(self, unit: str) -> bool:
        return self._marking is not None and unit in self._marking.free_locks()

    def _move(self, unit: str, from_node: str, transition: str) -> int:
        """Move ``unit`` off ``from_node`` under the migration lock; 0 if not now.

        The old host closes the unit before the new one opens it at the new
        epoch, so a live migration never needs to fence a live process.
        """
        if not self._lock_free(unit):
            return 0  # a bill run holds the shard: the migration waits
        target = (
            self._least_loaded()
            if self._replicas is None  # replicated: only to an in-sync follower
            else self._replicas.move_target(unit, from_node, rebalance=transition == "rebalance")
        )
        if target is None or target == from_node:
            return 0
        if not self._fire("migration_lock", shard=unit):
            return 0
        moved = self._fire(transition, shard=unit, from_node=from_node, node=target)
        if moved:
            try:
                self._ops.close_unit(from_node, unit)
            except Exception as exc:  # the next open fences a verified owner
                log.warning("close_failed", shard=unit, node=from_node, error=str(exc))
        self._fire("migration_unlock", shard=unit)
        return 3 if moved else 2

    def _drain_step(self) -> int:
        fired = 0
        for unit, node, _epoch in list(self._owned()):
            if self._status(node) == "draining":
                fired += self._move(unit, node, "migrate")
        return fired

    def _rebalance_step(self) -> int:
        """Even out units over alive nodes (after a join), one unit at a time."""
        fired = 0
        for _ in range(len(self._units)):
            load = self._load()
            if len(load) < 2:
                break
            busiest = max(sorted(load), key=lambda n: load[n])
            if load[busiest] - min(load.values()) < 2:
                break
            unit = next(
                (u for u, n, _e in self._owned() if n == busiest and self._lock_free(u)), None
            )
            if unit is None:
                break
            moved = self._move(unit, busiest, "rebalance")
            if moved < 3:
                break
            fired += moved
        return fired

    # -- operator and bill-run requests --------------------------------------

    def drain(self, node: str) -> bool:
        """Start moving every unit off ``node``; the loop migrates them. False if refused,
        also when no other alive node could take its units (the node would stay draining
        for ever, serving all the same)."""
        if self._marking is None or not set(self._load()) - {node}:
            return False
        return self._fire("drain", node=node)

    def undrain(self, node: str) -> bool:
        return self._marking is not None and self._fire("undrain", node=node)

    def lock(self, unit: str, kind: str) -> bool:
        """Take ``unit``'s lock for a bill run; False while a migration holds it."""
        taken = self._marking is not None and self._fire(f"{kind}_lock", shard=unit)
        if taken:
            self._lock_since[unit] = time.monotonic()
        return taken

    def unlock(self, unit: str, kind: str) -> bool:
        self._lock_since.pop(unit, None)
        return self._marking is not None and self._fire(f"{kind}_unlock", shard=unit)

    def renew(self, unit: str, kind: str) -> bool:
        """Extend the lease of ``unit``'s held lock (a bill run's step); False when it is
        not held (its lease ran out). Nothing is fired or persisted: a lease is memory."""
        held = self._marking is not None and (unit, kind) in self._marking.locks_held()
        if held:
            self._lock_since[unit] = time.monotonic()
        return held

    def _expire_locks(self) -> int:
        """Release bill-run locks held past their lease (a gateway died mid bill run).

        The lease starts when the lock was taken or last renewed, or, for a lock found
        in the persisted marking after a restart, when this coordinator first saw it.
        """
        fired = 0
        now = time.monotonic()
        for unit, kind in list(self._marking.locks_held() if self._marking else ()):
            if kind != "bill_run":
                continue
            since = self._lock_since.setdefault(unit, now)
            if now - since > self.lock_lease_s:
                log.warning("lock_lease_expired", shard=unit, held_s=round(now - since, 1))
                fired += self.unlock(unit, kind)
        return fired

    def converge(self) -> list[str]:
        """Make every alive owner serve its units at their epochs; returns failures.

        A node whose host finds a unit's epoch already taken (a restarted node
        or cluster: the host that opened it at that epoch is gone) is failed,
        so that its units are fenced and taken over at new epochs.
        """
        failures = []
        restarted: set[str] = set()
        for unit, node, epoch in self._owned():
            if self._status(node) != "alive" and self._status(node) != "draining":
                continue
            try:
                self._ops.open_unit(node, unit, epoch)
            except UnitOpenError as exc:
                failures.append(unit)
                log.warning("open_failed", shard=unit, node=node, epoch=epoch, error=str(exc))
                if exc.stale:
                    restarted.add(node)
        for node in sorted(restarted):
            self.failover_started.setdefault(node, time.monotonic())
            self._fire("node_fail", node=node, cause="restarted")
        return failures

    # -- what the coordinator's duties keep (cluster.control.duties) -------------

    @property
    def schedule(self) -> dict[str, Any]:
        """The scheduled work's durable record (``ControlState.schedule``): saved with the
        marking by every transition fired, and by :meth:`save`."""
        return self._state.schedule

    def save(self) -> None:
        """Persist the state now (the schedule changed without a transition), fenced by
        the generation like every write (a stale coordinator's is refused). Nothing is
        saved while the state is being rebuilt from the nodes' replicas."""
        if self._recovery is None:
            self._replicate(commit(self._data_dir, self._state), None)

    def healthy(self) -> bool:
        """Every unit owned by an alive node."""
        owned = {u for u, n, _e in self._owned() if self._status(n) == "alive"}
        return owned == {spec.shard_id for spec in self._units}

    # -- replicated units --------------------------------------------------------------

    @property
    def replication_factor(self) -> int:
        return self._rf

    def writable(self) -> bool:
        """Healthy, and (replicated) every unit's in-sync set can acknowledge a batch."""
        return self.healthy() and (self._replicas is None or self._replicas.writable())

    def fully_replicated(self) -> bool:
        """Healthy, and (replicated) every unit has RF−1 in-sync followers on alive nodes."""
        return self.healthy() and (self._replicas is None or self._replicas.fully_replicated())

    def lost(self) -> tuple[str, ...]:
        """Units with no copy left that has every acknowledged batch (replicated only)."""
        return () if self._marking is None else self._marking.lost()

    def control(self) -> dict[str, Any]:
        """The control replicas for ``status``: what each holds, the last durable save, and
        why the coordinator has not started if it could not rebuild its own copy."""
        if self._mirror is None:
            return {"replicated": False}
        return {
            "replicated": True,
            "generation": self._state.generation,
            **self._mirror.status(),
            "rebuilding": self._recovery is not None,
            "error": self.control_error,
        }

    def replicas(self) -> dict[str, dict[str, Any]]:
        """Per unit: primary, followers (state, lag), in-sync set, lost; ``{}`` unless
        replicated (for ``status``, ``node add`` and the operator's tools)."""
        if self._replicas is None or self._marking is None:
            return {}
        return self._replicas.view()

    # -- operator restore of lost units (``petribill restore``) ----------------------------

    def restored(self, request_id: str) -> dict[str, dict[str, Any]]:
        """What the restore request ``request_id`` restored (unit -> record), as persisted."""
        return dict(self._state.restores.get(request_id, {}))

    def hold_restore(self, units: list[str]) -> list[str]:
        """Mark ``units`` as being restored by an operator; returns those another restore
        holds already (and then holds none). While held, a lost unit is not restored from
        its fenced primary's copy, nor by a second request: a staged backup never meets
        another copy in one folder."""
        if self._replicas is None:
            return []
        busy = sorted(set(units) & self._replicas.restoring)
        if not busy:
            self._replicas.restoring.update(units)
        return busy

    def release_restore(self, units: list[str]) -> None:
        if self._replicas is not None:
            self._replicas.restoring.difference_update(units)

    def restore_target(self) -> str | None:
        """Where a lost unit is restored: the alive node with the fewest primaries whose
        host answers; None when there is none (or the cluster is not replicated)."""
        return None if self._replicas is None else self._replicas.assign_target()

    def restore(
        self, unit: str, node: str, request_id: str, backup: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Fire ``restore`` of the lost ``unit`` on ``node``, whose host has staged the
        backup's copy of it; the record (node, new epoch, what the backup held) is saved
        under ``request_id`` by the same commit. None when the net refuses (the unit is
        not lost, the node not alive)."""
        if unit not in self.lost():
            return None
        record = {
            "node": node,
            "epoch": epoch_of(self.marking, unit) + 1,
            "backup_epoch": int(backup["epoch"]),
            "backup_sequence": int(backup["sequence"]),
            "taken_at_s": int(backup["taken_at_s"]),
        }
        restores = self._state.restores
        done = restores.setdefault(request_id, {})
        done[unit] = record
        for old in list(restores)[:-RESTORES_KEPT]:
            del restores[old]
        if not self._fire("restore", shard=unit, node=node):
            del done[unit]
            if not done:
                restores.pop(request_id, None)
            return None
        return record
