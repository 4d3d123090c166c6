"""The invariants the reachability checker asserts, on markings and on steps.

Each check returns ``(invariant, detail)`` pairs for what is broken; the names
are documented in :mod:`petri.verify` and docs/petri-net.md.
"""

from __future__ import annotations

from petri.config import LOCKS_BY_KIND, LockKind, NetConfig, NodeStatus
from petri.marking import PLACES, Marking
from petri.model import PetriModel, Step
from petri.replica_invariants import check_replica_marking

__all__ = ["SHARD_PLACES", "check_marking", "check_step", "check_writers", "touches"]

SHARD_PLACES = frozenset(
    PLACES.index(p) for p in ("shard_free", "shard_owned", "shard_recovering", "shard_epoch")
)
_NOT_DEAD = (NodeStatus.ALIVE.value, NodeStatus.DRAINING.value, NodeStatus.DEAD.value)


def _shard_states(marking: Marking) -> dict[str, list[tuple[str, str, int]]]:
    states: dict[str, list[tuple[str, str, int]]] = {}
    for shard in marking.free_shards():
        states.setdefault(shard, []).append(("shard_free", "", -1))
    for shard in marking.lost():
        states.setdefault(shard, []).append(("shard_lost", "", -1))
    for place, tokens in (
        ("shard_owned", marking.owned()),
        ("shard_recovering", marking.recovering()),
    ):
        for shard, node, epoch in tokens:
            states.setdefault(shard, []).append((place, node, epoch))
    return states


def check_marking(config: NetConfig, marking: Marking) -> list[tuple[str, str]]:
    """The marking invariants broken by ``marking``, as ``(invariant, detail)``.

    A replicated configuration's markings are also checked for the follower
    invariants of :func:`petri.replica_invariants.check_replica_marking`.
    """
    broken: list[tuple[str, str]] = []
    statuses: dict[str, list[str]] = {}
    for node, status in marking.nodes():
        statuses.setdefault(node, []).append(status)
    for node in config.nodes:
        if len(statuses.get(node, [])) != 1:
            broken.append(("one_status_per_node", f"{node}: {statuses.get(node, [])}"))
    stored: dict[str, list[int]] = {}
    for shard, epoch in marking.epochs():
        stored.setdefault(shard, []).append(epoch)
    holders: dict[str, list[str]] = {}
    for shard in marking.free_locks():
        holders.setdefault(shard, []).append("free")
    for shard, kind in marking.locks_held():
        holders.setdefault(shard, []).append(kind)
    kinds = {s.shard_id: s.kind for s in config.shards}
    shard_states = _shard_states(marking)
    for shard in config.shard_ids:
        states = shard_states.get(shard, [])
        if len(states) != 1:
            broken.append(("one_place_per_shard", f"{shard}: {states}"))
        if len(stored.get(shard, [])) != 1:
            broken.append(("one_epoch_per_shard", f"{shard}: {stored.get(shard, [])}"))
            continue
        current = stored[shard][0]
        locks = holders.get(shard, [])
        allowed = {k.value for k in LOCKS_BY_KIND[kinds[shard]]} | {"free"}
        if len(locks) != 1 or not set(locks) <= allowed:
            broken.append(("lock_plus_holders", f"{shard}: {locks}"))
        for state in states:
            if state[0] == "shard_owned":
                node_states = statuses.get(state[1], [])
                if state[2] != current:
                    broken.append(("owner_is_current", f"{shard}: {state} vs stored {current}"))
                if not node_states or node_states[0] not in _NOT_DEAD:
                    broken.append(("owner_in_cluster", f"{shard}: {state} node {node_states}"))
            if state[0] == "shard_recovering" and state[2] >= current:
                broken.append(("fenced_is_behind", f"{shard}: {state} vs stored {current}"))
    if config.replicated:
        broken += check_replica_marking(config, marking)
    return broken


def check_writers(model: PetriModel, marking: Marking) -> list[tuple[str, str]]:
    """``single_writer``: storage accepts at most one writer per shard, never a fenced one."""
    broken: list[tuple[str, str]] = []
    fenced = set(marking.recovering())
    owners = set(marking.owned())
    writers: dict[object, list[tuple[object, object, object]]] = {}
    for step in model.steps(marking, "write") if "write" in model.transitions else ():
        b = step.binding
        writer = (b["shard"], b["node"], b["epoch"])
        writers.setdefault(b["shard"], []).append(writer)
        if writer in fenced or writer not in owners:
            broken.append(("single_writer", f"write accepted from {writer}"))
    for shard, ws in writers.items():
        if len(ws) > 1:
            broken.append(("single_writer", f"{shard}: writers {ws}"))
    return broken


def touches(step: Step, places: frozenset[int]) -> bool:
    """Whether ``step`` moves tokens of ``places`` (per-step checks concern only those)."""
    return any(i in places for i, _ in step.consumed) or any(i in places for i, _ in step.produced)


def _owner_map(marking: Marking) -> dict[str, tuple[str, int]]:
    return {shard: (node, epoch) for shard, node, epoch in marking.owned()}


def _epochs(marking: Marking) -> dict[str, int]:
    return dict(marking.epochs())


def check_step(before: Marking, step: Step, after: Marking) -> list[tuple[str, str]]:
    """The per-step invariants broken by ``before --step--> after``."""
    broken: list[tuple[str, str]] = []
    old_epochs, new_epochs = _epochs(before), _epochs(after)
    for shard, epoch in new_epochs.items():
        if epoch < old_epochs.get(shard, epoch):
            broken.append(("epoch_grows", f"{shard}: stored {old_epochs[shard]} -> {epoch}"))
    old_owners, new_owners = _owner_map(before), _owner_map(after)
    statuses = dict(before.nodes())
    migrating = {shard for shard, kind in before.locks_held() if kind == LockKind.MIGRATION}
    recovering = {shard for shard, _, _ in before.recovering()}
    for shard, (node, epoch) in new_owners.items():
        previous = old_owners.get(shard)
        if previous != (node, epoch) and epoch <= old_epochs.get(shard, -1):
            broken.append(("epoch_grows", f"{shard}: new owner {node} at old epoch {epoch}"))
        if shard in recovering and previous is None:
            continue
        if previous is not None and previous[0] != node:
            status = statuses.get(previous[0])
            if status == NodeStatus.DEAD or shard not in migrating:
                broken.append(
                    ("handover_rule", f"{shard}: {previous[0]} ({status}) -> {node} by {step}")
                )
    for shard, (node, _) in old_owners.items():
        if shard in new_owners:
            continue
        released = shard in after.free_shards() and statuses.get(node) == NodeStatus.ALIVE
        fenced = statuses.get(node) == NodeStatus.DEAD and any(
            t[0] == shard for t in after.recovering()
        )
        if not (released or fenced):
            broken.append(("handover_rule", f"{shard}: {node} lost it by {step.transition}"))
    return broken
