"""The SNAKES Petri net of the control plane: places, transitions, arcs and guards.

This module is the one place that talks to SNAKES (which has no type hints);
:mod:`petri.model` wraps it in a typed, pure API. The rules, one per transition:

- ``join``: an absent node becomes alive.
- ``drain`` / ``undrain``: alive <-> draining. A draining node keeps serving
  its shards until each is migrated; it never takes new ones.
- ``leave``: a draining node that owns no shard becomes absent. Drain never
  leaves a shard ownerless: the only way a draining node loses a shard is
  ``migrate`` (to an alive node, atomically) or its own death.
- ``node_fail``: an alive or draining node becomes dead.
- ``node_recover``: a dead node becomes alive again once all its shards were
  fenced (it owns nothing), so a returning node never resumes an old epoch.
- ``assign``: a free shard goes to an alive node; the epoch is bumped.
- ``release``: an alive owner gives a shard back; only while its lock is free.
- ``fence``: a shard owned by a dead node goes to recovering; the stored epoch
  is bumped, so the old owner (a zombie, perhaps) is refused from now on.
- ``takeover``: a recovering shard (fenced, so from a dead owner) goes to an
  alive node; the epoch is bumped again. Locks do not block failover.
- ``bill_run_lock`` / ``bill_run_unlock``: account shards only.
- ``migration_lock`` / ``migration_unlock``: an owned shard.
- ``migrate``: a draining node's shard goes to an alive node, under the
  migration lock (so never during a bill run on that shard); epoch bumped.
- ``rebalance``: an alive node's shard goes to an alive node owning at least
  two fewer shards, under the migration lock; epoch bumped.
- ``write``: an observation, not a step: the storage accepts a batch from
  ``(shard, node, epoch)`` iff that is the owner token and the stored epoch.

With a replication factor of 2 or more the owner is the shard's *primary* and
:mod:`petri.replication` adds the followers' rules; ``release`` and
``takeover`` are then not built (a replicated shard's data lives only on its
copies, so it is never handed to an arbitrary node), and ``migrate`` and
``rebalance`` hand the primary to an in-sync follower.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import snakes.nets as sn

from petri.arcs import Builder, add_transition, c, node_arc, t, v, x
from petri.config import FollowerState, LockKind, NetConfig, NodeStatus
from petri.marking import PLACES, REPLICA_PLACES
from petri.replication import REPLICA_GLOBALS, REPLICA_TRANSITIONS, add_replica_transitions

__all__ = [
    "DATA_PLANE",
    "OBSERVATIONS",
    "TRANSITION_NAMES",
    "add_transition",
    "build_net",
    "net_load",
    "net_moved",
]

#: Transitions that observe the marking without changing it (not progress).
OBSERVATIONS: frozenset[str] = frozenset({"write"})

#: Transitions of the data plane: modelled for the checker, never fired by the coordinator.
DATA_PLANE: frozenset[str] = OBSERVATIONS | {"ack"}

#: Every transition name a net of either mode has (with every lock kind).
TRANSITION_NAMES: frozenset[str] = frozenset(
    {
        "join",
        "drain",
        "undrain",
        "leave",
        "node_fail",
        "node_recover",
        "assign",
        "release",
        "fence",
        "takeover",
        "write",
        "bill_run_lock",
        "bill_run_unlock",
        "migration_lock",
        "migration_unlock",
        "migrate",
        "rebalance",
    }
    | REPLICA_TRANSITIONS
)

_ALIVE = NodeStatus.ALIVE.value
_DRAINING = NodeStatus.DRAINING.value
_DEAD = NodeStatus.DEAD.value
_ABSENT = NodeStatus.ABSENT.value
_MIGRATION = LockKind.MIGRATION.value
_BILL_RUN = LockKind.BILL_RUN.value
_IN_SYNC = FollowerState.IN_SYNC.value


def net_load(owned: Iterable[tuple[str, str, int]], node: str) -> int:
    """How many shards ``node`` owns, given the ``shard_owned`` tokens."""
    return sum(1 for token in owned if token[1] == node)


def net_moved(
    owned: Iterable[tuple[str, str, int]], shard: str, node: str, epoch: int
) -> list[tuple[str, str, int]]:
    """The ``shard_owned`` tokens with ``shard`` handed to ``node`` at ``epoch``."""
    return [(s, node, epoch) if s == shard else (s, n, e) for s, n, e in owned]


def build_net(config: NetConfig, name: str = "petribill") -> Any:
    """A fresh SNAKES ``PetriNet`` for ``config`` (places empty; markings are set later)."""
    net = sn.PetriNet(name)
    for place in PLACES:
        # Without replicas the net is the one of the local and shared modes, place for place.
        if config.replicated or place not in REPLICA_PLACES:
            net.add_place(sn.Place(place))
    net.globals["load"] = net_load
    net.globals["moved"] = net_moved
    net.globals["billable"] = config.lockable(LockKind.BILL_RUN)
    b = Builder(net)
    _add_node_transitions(b, replicated=config.replicated)
    _add_ownership_transitions(b, replicated=config.replicated)
    if LockKind.BILL_RUN in config.lock_kinds:
        _add_bill_run_transitions(b)
    if LockKind.MIGRATION in config.lock_kinds:
        _add_migration_transitions(b, replicated=config.replicated)
    if config.replicated:
        for name, helper in REPLICA_GLOBALS.items():
            net.globals[name] = helper
        net.globals["rf"] = config.replication_factor
        add_replica_transitions(b)
    return net


def _add_node_transitions(b: Builder, *, replicated: bool) -> None:
    for name, src, dst in (
        ("join", _ABSENT, _ALIVE),
        ("drain", _ALIVE, _DRAINING),
        ("undrain", _DRAINING, _ALIVE),
    ):
        b.add(
            name,
            inputs=[("node", node_arc("node", src))],
            outputs=[("node", node_arc("node", dst))],
        )
    b.add(
        "node_fail",
        guard=f"status in ({_ALIVE!r}, {_DRAINING!r})",
        inputs=[("node", t(v("node"), v("status")))],
        outputs=[("node", node_arc("node", _DEAD))],
    )
    # A replicated node leaves only once its follower copies were moved off too. A dead
    # node recovers with its followers: their data is on its disk, and no batch was
    # acknowledged without an in-sync one while it was down (``ack`` waits for them).
    leave_inputs = [("shard_follower", sn.Test(sn.Flush("followers")))] if replicated else []
    for name, src, dst, guard, extra in (
        (
            "leave",
            _DRAINING,
            _ABSENT,
            "load(owned, node) == 0" + (" and not hosts(followers, node)" if replicated else ""),
            leave_inputs,
        ),
        ("node_recover", _DEAD, _ALIVE, "load(owned, node) == 0", []),
    ):
        b.add(
            name,
            guard=guard,
            inputs=[
                ("node", node_arc("node", src)),
                ("shard_owned", sn.Test(sn.Flush("owned"))),
                *extra,
            ],
            outputs=[("node", node_arc("node", dst))],
        )


def _add_ownership_transitions(b: Builder, *, replicated: bool) -> None:
    bumped = t(v("shard"), x("prev + 1"))
    b.add(
        "assign",
        inputs=[
            ("shard_free", v("shard")),
            ("shard_epoch", t(v("shard"), v("prev"))),
            ("node", sn.Test(node_arc("node", _ALIVE))),
        ],
        outputs=[
            ("shard_owned", t(v("shard"), v("node"), x("prev + 1"))),
            ("shard_epoch", bumped),
        ],
    )
    if not replicated:
        b.add(
            "release",
            inputs=[
                ("shard_owned", t(v("shard"), v("node"), v("epoch"))),
                ("node", sn.Test(node_arc("node", _ALIVE))),
                ("lock_free", sn.Test(v("shard"))),
            ],
            outputs=[("shard_free", v("shard"))],
        )
    b.add(
        "fence",
        inputs=[
            ("shard_owned", t(v("shard"), v("node"), v("prev"))),
            ("shard_epoch", t(v("shard"), v("prev"))),
            ("node", sn.Test(node_arc("node", _DEAD))),
        ],
        outputs=[
            ("shard_recovering", t(v("shard"), v("node"), v("prev"))),
            ("shard_epoch", bumped),
        ],
    )
    if not replicated:
        b.add(
            "takeover",
            inputs=[
                ("shard_recovering", t(v("shard"), v("from_node"), v("fenced"))),
                ("shard_epoch", t(v("shard"), v("prev"))),
                ("node", sn.Test(node_arc("node", _ALIVE))),
            ],
            outputs=[
                ("shard_owned", t(v("shard"), v("node"), x("prev + 1"))),
                ("shard_epoch", bumped),
            ],
        )
    b.add(
        "write",
        inputs=[
            ("shard_owned", sn.Test(t(v("shard"), v("node"), v("epoch")))),
            ("shard_epoch", sn.Test(t(v("shard"), v("epoch")))),
        ],
    )


def _add_bill_run_transitions(b: Builder) -> None:
    b.add(
        "bill_run_lock",
        guard="shard in billable",
        inputs=[("lock_free", v("shard"))],
        outputs=[("lock_held", t(v("shard"), c(_BILL_RUN)))],
    )
    b.add(
        "bill_run_unlock",
        inputs=[("lock_held", t(v("shard"), c(_BILL_RUN)))],
        outputs=[("lock_free", v("shard"))],
    )


def _add_migration_transitions(b: Builder, *, replicated: bool) -> None:
    held = ("lock_held", sn.Test(t(v("shard"), c(_MIGRATION))))
    b.add(
        "migration_lock",
        inputs=[
            ("lock_free", v("shard")),
            ("shard_owned", sn.Test(t(v("shard"), v("owner"), v("epoch")))),
        ],
        outputs=[("lock_held", t(v("shard"), c(_MIGRATION)))],
    )
    b.add(
        "migration_unlock",
        inputs=[("lock_held", t(v("shard"), c(_MIGRATION)))],
        outputs=[("lock_free", v("shard"))],
    )
    # Replicated: the new primary is an in-sync follower. A drained node's copy is
    # closed (the node is leaving); a rebalanced primary stays as an in-sync follower,
    # since it has every acknowledged batch.
    taken = [("shard_follower", t(v("shard"), v("node"), c(_IN_SYNC), v("behind")))]
    b.add(
        "migrate",
        inputs=[
            ("shard_owned", t(v("shard"), v("from_node"), v("prev"))),
            ("shard_epoch", t(v("shard"), v("prev"))),
            held,
            (
                "node",
                sn.Test(sn.MultiArc([node_arc("from_node", _DRAINING), node_arc("node", _ALIVE)])),
            ),
            *(taken if replicated else []),
        ],
        outputs=[
            ("shard_owned", t(v("shard"), v("node"), x("prev + 1"))),
            ("shard_epoch", t(v("shard"), x("prev + 1"))),
        ],
    )
    demoted = [("shard_follower", t(v("shard"), v("from_node"), c(_IN_SYNC), c(0)))]
    b.add(
        "rebalance",
        guard=(
            "(shard, from_node, prev) in owned and load(owned, from_node) >= load(owned, node) + 2"
        ),
        inputs=[
            ("shard_owned", sn.Flush("owned")),
            ("shard_epoch", t(v("shard"), v("prev"))),
            held,
            (
                "node",
                sn.Test(sn.MultiArc([node_arc("from_node", _ALIVE), node_arc("node", _ALIVE)])),
            ),
            *(taken if replicated else []),
        ],
        outputs=[
            ("shard_owned", sn.Flush("moved(owned, shard, node, prev + 1)")),
            ("shard_epoch", t(v("shard"), x("prev + 1"))),
            *(demoted if replicated else []),
        ],
    )
