"""The invariants of replicated shards: on markings, on enabled steps and on steps.

Each check returns ``(invariant, detail)`` pairs for what is broken; the names
are documented in :mod:`petri.verify` and docs/petri-net.md. Only a net with a
replication factor of 2 or more is checked against them.
"""

from __future__ import annotations

from petri.config import FollowerState, NetConfig, NodeStatus
from petri.marking import PLACES, Marking
from petri.model import PetriModel, Step

__all__ = [
    "REPLICA_SHARD_PLACES",
    "check_replica_enabling",
    "check_replica_marking",
    "check_replica_step",
]

#: The places whose changes the per-step checks of a replicated net look at.
REPLICA_SHARD_PLACES = frozenset(
    PLACES.index(p)
    for p in (
        "shard_free",
        "shard_owned",
        "shard_recovering",
        "shard_epoch",
        "shard_follower",
        "shard_lost",
    )
)

_IN_SYNC = FollowerState.IN_SYNC.value
_STATES = frozenset(s.value for s in FollowerState)
_SERVING = (NodeStatus.ALIVE.value, NodeStatus.DRAINING.value)
_IN_CLUSTER = (*_SERVING, NodeStatus.DEAD.value)


def _followers(marking: Marking) -> dict[str, list[tuple[str, str, int]]]:
    per_shard: dict[str, list[tuple[str, str, int]]] = {}
    for shard, node, state, behind in marking.followers():
        per_shard.setdefault(shard, []).append((node, state, behind))
    return per_shard


def check_replica_marking(config: NetConfig, marking: Marking) -> list[tuple[str, str]]:
    """The follower invariants broken by ``marking``.

    - ``follower_token``: a follower's state is catching_up or in_sync, its flag 0 or 1;
    - ``replicas_distinct``: a shard's primary and followers are on distinct nodes, and
      it has at most RF−1 followers;
    - ``follower_has_primary``: only an owned or fenced (recovering) shard has followers;
    - ``follower_in_cluster``: no follower is on an absent node;
    - ``acked_on_isr``: no in-sync follower lacks an acknowledged batch, so every
      acknowledged batch is on the primary and on every in-sync follower.
    """
    broken: list[tuple[str, str]] = []
    statuses = dict(marking.nodes())
    primary = {shard: node for shard, node, _ in marking.owned()}
    fenced = {shard for shard, _, _ in marking.recovering()}
    for shard, copies in _followers(marking).items():
        nodes = [node for node, _, _ in copies]
        if shard in primary:
            nodes.append(primary[shard])
        if len(set(nodes)) != len(nodes) or len(copies) >= config.replication_factor:
            broken.append(("replicas_distinct", f"{shard}: primary {primary.get(shard)}, {copies}"))
        if shard not in primary and shard not in fenced:
            broken.append(("follower_has_primary", f"{shard}: followers {copies} without primary"))
        for node, state, behind in copies:
            if state not in _STATES or behind not in (0, 1):
                broken.append(("follower_token", f"{shard}: {(node, state, behind)}"))
            if statuses.get(node) not in _IN_CLUSTER:
                broken.append(("follower_in_cluster", f"{shard}: {node} is {statuses.get(node)}"))
            if state == _IN_SYNC and behind:
                broken.append(("acked_on_isr", f"{shard}: in-sync follower {node} is behind"))
    return broken


def check_replica_enabling(model: PetriModel, marking: Marking) -> list[tuple[str, str]]:
    """The invariants about what ``marking`` enables.

    - ``single_acker``: at most one ``ack`` mode per shard, by its primary at the stored epoch;
    - ``ack_waits_for_shrink``: no batch of a shard is acknowledged while one of its
      in-sync followers is on a dead node (it cannot have the batch): the follower
      must leave the ISR first;
    - ``isr_unblockable``: such a follower of a shard with a primary can always leave
      the ISR (``shrink_isr`` is enabled), so acknowledgements can resume.
    """
    broken: list[tuple[str, str]] = []
    statuses = dict(marking.nodes())
    owners = set(marking.owned())
    stored = dict(marking.epochs())
    dead_isr = {
        (shard, node)
        for shard, node, state, _ in marking.followers()
        if state == _IN_SYNC and statuses.get(node) == NodeStatus.DEAD
    }
    ackers: dict[object, list[tuple[object, object, object]]] = {}
    for step in model.steps(marking, "ack") if "ack" in model.transitions else ():
        b = step.binding
        acker = (b["shard"], b["node"], b["epoch"])
        ackers.setdefault(b["shard"], []).append(acker)
        if acker not in owners or stored.get(str(b["shard"])) != b["epoch"]:
            broken.append(("single_acker", f"ack accepted from {acker}"))
        waiting = sorted(node for shard, node in dead_isr if shard == b["shard"])
        if waiting:
            broken.append(("ack_waits_for_shrink", f"{b['shard']} acked without dead {waiting}"))
    for shard, found in ackers.items():
        if len(found) > 1:
            broken.append(("single_acker", f"{shard}: ackers {found}"))
    primaries = {shard for shard, _, _ in owners}
    shrinks = model.steps(marking, "shrink_isr") if "shrink_isr" in model.transitions else ()
    shrinkable = {(s.binding["shard"], s.binding["node"]) for s in shrinks}
    for shard, node in sorted(dead_isr):
        if shard in primaries and (shard, node) not in shrinkable:
            broken.append(("isr_unblockable", f"{shard}: dead in-sync {node} cannot leave the ISR"))
    return broken


def check_replica_step(before: Marking, step: Step, after: Marking) -> list[tuple[str, str]]:
    """The per-step follower invariants broken by ``before --step--> after``.

    - ``promote_from_isr``: a shard's new primary (other than a brand-new assignment
      or an operator restore of a lost shard) was an in-sync follower;
    - ``no_acked_loss``: ... and it had every acknowledged batch;
    - ``no_needless_loss``: a shard is lost only when no in-sync follower on an alive
      or draining node could have been promoted.
    """
    broken: list[tuple[str, str]] = []
    old_owners = {shard: (node, epoch) for shard, node, epoch in before.owned()}
    fresh = set(before.free_shards()) | set(before.lost())
    followers = {(s, node): (state, behind) for s, node, state, behind in before.followers()}
    for shard, node, epoch in after.owned():
        if old_owners.get(shard) == (node, epoch) or shard in fresh:
            continue
        state, behind = followers.get((shard, node), ("none", 1))
        if state != _IN_SYNC:
            broken.append(
                ("promote_from_isr", f"{shard}: {node} ({state}) made primary by {step.transition}")
            )
        if behind:
            broken.append(
                ("no_acked_loss", f"{shard}: {node} lacks acknowledged batches, made primary")
            )
    statuses = dict(before.nodes())
    for shard in set(after.lost()) - set(before.lost()):
        candidates = sorted(
            node
            for (s, node), (state, _) in followers.items()
            if s == shard and state == _IN_SYNC and statuses.get(node) in _SERVING
        )
        if candidates:
            broken.append(("no_needless_loss", f"{shard}: lost although {candidates} in sync"))
    return broken
