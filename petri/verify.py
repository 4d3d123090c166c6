"""Reachability checking of the control-plane net for small configurations.

A breadth-first search over :meth:`PetriModel.all_steps` visits every reachable
marking and checks, on each marking, on each step and on the whole graph:

- ``one_place_per_shard``: each shard is exactly one of free, owned, recovering
  (or lost, in a replicated net);
- ``one_status_per_node``: each configured node has exactly one status;
- ``one_epoch_per_shard``: each shard has exactly one stored epoch;
- ``lock_plus_holders``: per shard, lock_free + lock_held = 1, and a held
  lock's kind is allowed for the shard's kind;
- ``owner_is_current``: an owner's epoch is the stored epoch;
- ``fenced_is_behind``: a fenced (recovering) owner's epoch is below the
  stored epoch, so storage refuses its writes;
- ``owner_in_cluster``: no shard is owned by an absent node;
- ``single_writer``: at most one ``write`` mode per shard, by the owner, and
  never by a fenced owner;
- ``epoch_grows`` (per step): a stored epoch never decreases, and a new
  owner's epoch is above every earlier one;
- ``handover_rule`` (per step): an owner that is not dead loses a shard only
  by releasing it or under the shard's migration lock; a dead owner only by
  being fenced (never straight to a new owner);
- ``no_dead_marking``: every marking enables some step other than the data
  plane's (``write``, ``ack``);
- ``healthy_reachable``: a healthy marking (every shard owned by an alive
  node, no lock held) is reachable from every reachable marking.

A replicated configuration (replication factor 2+) is also checked for the
follower invariants of :mod:`petri.replica_invariants` (``follower_token``,
``replicas_distinct``, ``follower_has_primary``, ``follower_in_cluster``,
``acked_on_isr``; ``single_acker``, ``ack_waits_for_shrink``,
``isr_unblockable``; per step ``promote_from_isr``, ``no_acked_loss``,
``no_needless_loss``) and, on the whole graph:

- ``rf_restorable``: a fully replicated marking (healthy, and every shard has
  RF−1 in-sync followers on alive nodes) is reachable from every reachable
  marking;
- ``rf_self_healing``: from every reachable marking with at least RF alive
  nodes, a fully replicated marking is reachable without any node changing
  status (no node needs to come back or join).

Epochs are renumbered and symmetric markings merged (:mod:`petri.reduction`);
per-step checks run on the concrete successor, before renumbering. One
representative per orbit is explored; every representative is a real
reachable marking.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field

from petri.config import NodeStatus
from petri.invariants import SHARD_PLACES, check_marking, check_step, check_writers, touches
from petri.marking import PLACES, Marking, initial_marking, is_fully_replicated, is_healthy
from petri.model import Binding, PetriModel, Step
from petri.net import DATA_PLANE
from petri.reduction import normalize_epochs, symmetry_key
from petri.replica_invariants import (
    REPLICA_SHARD_PLACES,
    check_replica_enabling,
    check_replica_step,
)

__all__ = [
    "VerificationReport",
    "Violation",
    "check_marking",
    "check_step",
    "check_writers",
    "normalize_epochs",
    "verify",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Violation:
    """A broken invariant, with a path of steps from the initial marking to it.

    The path replays exactly with :meth:`PetriModel.fire` when given without
    the ``epoch`` values (epochs were renumbered during the search).
    """

    invariant: str
    detail: str
    marking: Marking
    path: tuple[tuple[str, Binding], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class VerificationReport:
    """What :func:`verify` explored and found.

    ``replicated_states`` counts the fully replicated markings (0 for an
    unreplicated net, where it is not checked).
    """

    states: int
    edges: int
    healthy_states: int
    seconds: float
    symmetry: bool
    complete: bool
    violations: tuple[Violation, ...] = field(default=())
    replicated_states: int = 0

    @property
    def ok(self) -> bool:
        """The whole graph was explored and no invariant is broken."""
        return self.complete and not self.violations

    def invariants_broken(self) -> frozenset[str]:
        """The names of the broken invariants."""
        return frozenset(v.invariant for v in self.violations)


_NODE_PLACE = frozenset({PLACES.index("node")})


def verify(
    model: PetriModel,
    *,
    initial: Marking | None = None,
    symmetry: bool = True,
    states_max: int = 2_000_000,
    violations_per_invariant: int = 3,
) -> VerificationReport:
    """Explore every marking reachable from ``initial`` and check the invariants.

    Keeps ``violations_per_invariant`` examples of each broken invariant. Stops
    early once ``states_max`` markings were seen (the report then says
    ``complete=False`` and the whole-graph checks are skipped).
    """
    started = time.perf_counter()
    config = model.config
    replicated = config.replicated
    step_places = REPLICA_SHARD_PLACES if replicated else SHARD_PLACES
    key_of: Callable[[Marking], Hashable] = symmetry_key(config) if symmetry else (lambda m: m)
    start = normalize_epochs(initial if initial is not None else initial_marking(config))
    ids: dict[Hashable, int] = {key_of(start): 0}
    # Successors often repeat exactly; looking them up first skips the symmetry key.
    exact: dict[Marking, int] = {start: 0}
    reps: list[Marking] = [start]
    parent: list[tuple[int, str, Binding] | None] = [None]
    successors: list[list[int]] = []
    # The edges that change no node's status (replicated nets: for rf_self_healing).
    static_successors: list[list[int]] = []
    violations: list[Violation] = []
    counts: dict[str, int] = {}

    def path_to(index: int) -> tuple[tuple[str, Binding], ...]:
        steps: list[tuple[str, Binding]] = []
        link = parent[index]
        while link is not None:
            steps.append((link[1], link[2]))
            link = parent[link[0]]
        return tuple(reversed(steps))

    def report(
        index: int, marking: Marking, found: list[tuple[str, str]], via: Step | None
    ) -> None:
        tail = ((via.transition, via.binding),) if via is not None else ()
        for invariant, detail in found:
            # A few examples of each broken invariant are enough; keep exploring for others.
            if counts.get(invariant, 0) < violations_per_invariant:
                counts[invariant] = counts.get(invariant, 0) + 1
                violations.append(
                    Violation(
                        invariant=invariant,
                        detail=detail,
                        marking=marking,
                        path=path_to(index) + tail,
                    )
                )

    def check_state(marking: Marking) -> list[tuple[str, str]]:
        found = check_marking(config, marking) + check_writers(model, marking)
        return found + check_replica_enabling(model, marking) if replicated else found

    report(0, start, check_state(start), None)
    queue: deque[int] = deque([0])
    edges = 0
    complete = True
    while queue:
        index = queue.popleft()
        marking = reps[index]
        steps = model.all_steps(marking)
        targets: list[int] = []
        static: list[int] = []
        if all(step.transition in DATA_PLANE for step in steps):
            report(index, marking, [("no_dead_marking", "no step is enabled")], None)
        for step in steps:
            after = step.apply(marking)
            if touches(step, step_places):
                found = check_step(marking, step, after)
                if replicated:
                    found += check_replica_step(marking, step, after)
                report(index, after, found, step)
            after = normalize_epochs(after)
            target = exact.get(after)
            if target is None:
                key = key_of(after)
                target = ids.get(key)
                if target is None:
                    if len(reps) >= states_max:
                        complete = False
                        continue
                    target = len(reps)
                    ids[key] = target
                    reps.append(after)
                    parent.append((index, step.transition, step.binding))
                    report(target, after, check_state(after), None)
                    queue.append(target)
                exact[after] = target
            targets.append(target)
            if replicated and not touches(step, _NODE_PLACE):
                static.append(target)
        edges += len(targets)
        successors.extend([] for _ in range(index + 1 - len(successors)))
        successors[index] = targets
        if replicated:
            static_successors.extend([] for _ in range(index + 1 - len(static_successors)))
            static_successors[index] = static
    complete = complete and not queue
    healthy = [i for i, m in enumerate(reps) if is_healthy(m)]
    restored = (
        [i for i in healthy if is_fully_replicated(reps[i], config.replication_factor)]
        if replicated
        else []
    )
    if complete:
        # (invariant, what is missing, graph, goals, fewest alive nodes a source needs)
        whole_graph: list[tuple[str, str, list[list[int]], list[int], int]] = [
            ("healthy_reachable", "no healthy marking", successors, healthy, 0)
        ]
        if replicated:
            whole_graph += [
                ("rf_restorable", "no fully replicated marking", successors, restored, 0),
                (
                    "rf_self_healing",
                    "no fully replicated marking with the alive nodes at hand",
                    static_successors,
                    restored,
                    config.replication_factor,
                ),
            ]
        for invariant, detail, graph, goals, alive_min in whole_graph:
            stuck = (
                i for i in _cannot_reach(graph, goals, len(reps)) if _alive(reps[i]) >= alive_min
            )
            for index in itertools.islice(stuck, violations_per_invariant):
                report(index, reps[index], [(invariant, detail + " is reachable")], None)
    return VerificationReport(
        states=len(reps),
        edges=edges,
        healthy_states=len(healthy),
        seconds=time.perf_counter() - started,
        symmetry=symmetry,
        complete=complete,
        violations=tuple(violations),
        replicated_states=len(restored),
    )


def _alive(marking: Marking) -> int:
    return sum(1 for _, status in marking.nodes() if status == NodeStatus.ALIVE)


def _cannot_reach(successors: list[list[int]], goals: list[int], size: int) -> Iterator[int]:
    """The states from which no goal state is reachable (backward search from the goals)."""
    predecessors: list[list[int]] = [[] for _ in range(size)]
    for source, targets in enumerate(successors):
        for target in targets:
            predecessors[target].append(source)
    reached = [False] * size
    queue = deque(goals)
    for goal in goals:
        reached[goal] = True
    while queue:
        for source in predecessors[queue.popleft()]:
            if not reached[source]:
                reached[source] = True
                queue.append(source)
    return (i for i in range(size) if not reached[i])
