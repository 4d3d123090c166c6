"""Reachability checking of the control-plane net for small configurations.

A breadth-first search over :meth:`PetriModel.all_steps` visits every reachable
marking and checks, on each marking, on each step and on the whole graph:

- ``one_place_per_shard``: each shard is exactly one of free, owned, recovering;
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
- ``no_dead_marking``: every marking enables some step (``write`` excluded);
- ``healthy_reachable``: a healthy marking (every shard owned by an alive
  node, no lock held) is reachable from every reachable marking.

Two abstractions keep the graph finite and small, both exact for this net:

- **Epochs** grow forever, but guards only compare epochs for equality and
  new epochs are ``stored + 1`` (above every epoch of the shard). Each
  marking's epochs are therefore renumbered per shard by dense rank (the
  lowest epoch of a shard becomes 0), which preserves every guard's outcome.
  Per-step checks run on the concrete successor, before renumbering.
- **Symmetry** (optional): guards compare node ids only for equality, and shard
  ids only for equality and kind, so markings equal up to renaming nodes, or
  shards of the same kind, have isomorphic futures. One representative per
  orbit is explored; every representative is a real reachable marking.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field

from petri.config import NetConfig, ShardKind
from petri.invariants import SHARD_PLACES, check_marking, check_step, check_writers, touches
from petri.marking import Marking, Token, initial_marking, is_healthy
from petri.model import Binding, PetriModel, Step

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
    """What :func:`verify` explored and found."""

    states: int
    edges: int
    healthy_states: int
    seconds: float
    symmetry: bool
    complete: bool
    violations: tuple[Violation, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """The whole graph was explored and no invariant is broken."""
        return self.complete and not self.violations

    def invariants_broken(self) -> frozenset[str]:
        """The names of the broken invariants."""
        return frozenset(v.invariant for v in self.violations)


def normalize_epochs(marking: Marking) -> Marking:
    """``marking`` with each shard's epochs renumbered by dense rank from 0."""
    per_shard: dict[str, set[int]] = {}
    for shard, _, epoch in marking.owned() + marking.recovering():
        per_shard.setdefault(shard, set()).add(epoch)
    for shard, epoch in marking.epochs():
        per_shard.setdefault(shard, set()).add(epoch)
    rank = {s: {e: i for i, e in enumerate(sorted(es))} for s, es in per_shard.items()}
    if all(r == {i: i for i in range(len(r))} for r in rank.values()):
        return marking

    def renumber(tokens: tuple[tuple[str, str, int], ...]) -> list[Token]:
        return [(shard, node, rank[shard][epoch]) for shard, node, epoch in tokens]

    return marking.replace(
        {
            "shard_owned": renumber(marking.owned()),
            "shard_recovering": renumber(marking.recovering()),
            "shard_epoch": [(s, rank[s][e]) for s, e in marking.epochs()],
        }
    )


def _symmetry_key(config: NetConfig) -> Callable[[Marking], Hashable]:
    nodes = config.nodes
    orders = [dict(zip(p, range(len(nodes)), strict=True)) for p in itertools.permutations(nodes)]
    kinds = {s.shard_id: s.kind for s in config.shards}
    groups = [[s for s in config.shard_ids if kinds[s] == kind] for kind in ShardKind]
    shard_count = len(config.shard_ids)

    def key(marking: Marking) -> Hashable:
        epoch = dict(marking.epochs())
        locks = dict(marking.locks_held())
        place: dict[str, tuple[str, str, int]] = {
            s: ("free", "", -1) for s in marking.free_shards()
        }
        for name, tokens in (("owned", marking.owned()), ("recovering", marking.recovering())):
            for shard, node, number in tokens:
                place[shard] = (name, node, number)
        lock_shards = {shard for shard, _ in marking.locks_held()} | set(marking.free_locks())
        well_formed = (
            len(place)
            == len(marking.free_shards()) + len(marking.owned()) + len(marking.recovering())
            and len(place) == shard_count
            and len(epoch) == len(marking.epochs()) == shard_count
            and len(lock_shards) == len(marking.locks_held()) + len(marking.free_locks())
            and len(lock_shards) == shard_count
        )
        if not well_formed:
            # The key below assumes one token per shard per place group; a marking
            # breaking that is kept as it is, so it never merges with a sane one.
            return marking
        status = marking.nodes()
        base = [
            [
                (place[s][0], place[s][1], place[s][2], epoch.get(s, -1), locks.get(s, ""))
                for s in group
            ]
            for group in groups
        ]
        best: tuple[object, ...] | None = None
        for order in orders:
            candidate = (
                tuple(sorted((order[n], s) for n, s in status)),
                tuple(
                    tuple(sorted((p, order.get(n, -1), e, st, lk) for p, n, e, st, lk in group))
                    for group in base
                ),
            )
            if best is None or candidate < best:
                best = candidate
        return best

    return key


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
    key_of: Callable[[Marking], Hashable] = _symmetry_key(config) if symmetry else (lambda m: m)
    start = normalize_epochs(initial if initial is not None else initial_marking(config))
    ids: dict[Hashable, int] = {key_of(start): 0}
    # Successors often repeat exactly; looking them up first skips the symmetry key.
    exact: dict[Marking, int] = {start: 0}
    reps: list[Marking] = [start]
    parent: list[tuple[int, str, Binding] | None] = [None]
    successors: list[list[int]] = []
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

    report(0, start, check_marking(config, start) + check_writers(model, start), None)
    queue: deque[int] = deque([0])
    edges = 0
    complete = True
    while queue:
        index = queue.popleft()
        marking = reps[index]
        steps = model.all_steps(marking)
        targets: list[int] = []
        if not steps:
            report(index, marking, [("no_dead_marking", "no step is enabled")], None)
        for step in steps:
            after = step.apply(marking)
            if touches(step, SHARD_PLACES):
                report(index, after, check_step(marking, step, after), step)
            after = normalize_epochs(after)
            target = exact.get(after)
            if target is not None:
                targets.append(target)
                continue
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
                report(
                    target, after, check_marking(config, after) + check_writers(model, after), None
                )
                queue.append(target)
            exact[after] = target
            targets.append(target)
        edges += len(targets)
        successors.extend([] for _ in range(index + 1 - len(successors)))
        successors[index] = targets
    complete = complete and not queue
    healthy = [i for i, m in enumerate(reps) if is_healthy(m)]
    if complete:
        stuck = _cannot_reach(successors, healthy, len(reps))
        for index in itertools.islice(stuck, violations_per_invariant):
            report(
                index, reps[index], [("healthy_reachable", "no healthy marking is reachable")], None
            )
    return VerificationReport(
        states=len(reps),
        edges=edges,
        healthy_states=len(healthy),
        seconds=time.perf_counter() - started,
        symmetry=symmetry,
        complete=complete,
        violations=tuple(violations),
    )


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
