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
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import snakes.nets as sn

from petri.config import LockKind, NetConfig, NodeStatus
from petri.marking import PLACES

__all__ = ["OBSERVATIONS", "add_transition", "build_net", "net_load", "net_moved"]

#: Transitions that observe the marking without changing it (not progress).
OBSERVATIONS: frozenset[str] = frozenset({"write"})

_ALIVE = NodeStatus.ALIVE.value
_DRAINING = NodeStatus.DRAINING.value
_DEAD = NodeStatus.DEAD.value
_ABSENT = NodeStatus.ABSENT.value
_MIGRATION = LockKind.MIGRATION.value
_BILL_RUN = LockKind.BILL_RUN.value


def net_load(owned: Iterable[tuple[str, str, int]], node: str) -> int:
    """How many shards ``node`` owns, given the ``shard_owned`` tokens."""
    return sum(1 for token in owned if token[1] == node)


def net_moved(
    owned: Iterable[tuple[str, str, int]], shard: str, node: str, epoch: int
) -> list[tuple[str, str, int]]:
    """The ``shard_owned`` tokens with ``shard`` handed to ``node`` at ``epoch``."""
    return [(s, node, epoch) if s == shard else (s, n, e) for s, n, e in owned]


def _v(name: str) -> Any:
    return sn.Variable(name)


def _c(value: str) -> Any:
    return sn.Value(value)


def _x(expr: str) -> Any:
    return sn.Expression(expr)


def _t(*parts: Any) -> Any:
    return sn.Tuple(list(parts))


def _node(name: str, status: str) -> Any:
    return _t(_v(name), _c(status))


def add_transition(
    net: Any,
    name: str,
    *,
    guard: str = "True",
    inputs: Iterable[tuple[str, Any]] = (),
    outputs: Iterable[tuple[str, Any]] = (),
) -> None:
    """Add transition ``name`` to a SNAKES ``net`` with its guard and arcs."""
    net.add_transition(sn.Transition(name, sn.Expression(guard)))
    for place, label in inputs:
        net.add_input(place, name, label)
    for place, label in outputs:
        net.add_output(place, name, label)


class _Builder:
    """Adds transitions to one SNAKES net."""

    def __init__(self, net: Any) -> None:
        self.net = net

    def add(
        self,
        name: str,
        *,
        guard: str = "True",
        inputs: Iterable[tuple[str, Any]] = (),
        outputs: Iterable[tuple[str, Any]] = (),
    ) -> None:
        add_transition(self.net, name, guard=guard, inputs=inputs, outputs=outputs)


def build_net(config: NetConfig, name: str = "petribill") -> Any:
    """A fresh SNAKES ``PetriNet`` for ``config`` (places empty; markings are set later)."""
    net = sn.PetriNet(name)
    for place in PLACES:
        net.add_place(sn.Place(place))
    net.globals["load"] = net_load
    net.globals["moved"] = net_moved
    net.globals["billable"] = config.lockable(LockKind.BILL_RUN)
    b = _Builder(net)
    _add_node_transitions(b)
    _add_ownership_transitions(b)
    if LockKind.BILL_RUN in config.lock_kinds:
        _add_bill_run_transitions(b)
    if LockKind.MIGRATION in config.lock_kinds:
        _add_migration_transitions(b)
    return net


def _add_node_transitions(b: _Builder) -> None:
    for name, src, dst in (
        ("join", _ABSENT, _ALIVE),
        ("drain", _ALIVE, _DRAINING),
        ("undrain", _DRAINING, _ALIVE),
    ):
        b.add(name, inputs=[("node", _node("node", src))], outputs=[("node", _node("node", dst))])
    b.add(
        "node_fail",
        guard=f"status in ({_ALIVE!r}, {_DRAINING!r})",
        inputs=[("node", _t(_v("node"), _v("status")))],
        outputs=[("node", _node("node", _DEAD))],
    )
    for name, src, dst in (("leave", _DRAINING, _ABSENT), ("node_recover", _DEAD, _ALIVE)):
        b.add(
            name,
            guard="load(owned, node) == 0",
            inputs=[("node", _node("node", src)), ("shard_owned", sn.Test(sn.Flush("owned")))],
            outputs=[("node", _node("node", dst))],
        )


def _add_ownership_transitions(b: _Builder) -> None:
    bumped = _t(_v("shard"), _x("prev + 1"))
    b.add(
        "assign",
        inputs=[
            ("shard_free", _v("shard")),
            ("shard_epoch", _t(_v("shard"), _v("prev"))),
            ("node", sn.Test(_node("node", _ALIVE))),
        ],
        outputs=[
            ("shard_owned", _t(_v("shard"), _v("node"), _x("prev + 1"))),
            ("shard_epoch", bumped),
        ],
    )
    b.add(
        "release",
        inputs=[
            ("shard_owned", _t(_v("shard"), _v("node"), _v("epoch"))),
            ("node", sn.Test(_node("node", _ALIVE))),
            ("lock_free", sn.Test(_v("shard"))),
        ],
        outputs=[("shard_free", _v("shard"))],
    )
    b.add(
        "fence",
        inputs=[
            ("shard_owned", _t(_v("shard"), _v("node"), _v("prev"))),
            ("shard_epoch", _t(_v("shard"), _v("prev"))),
            ("node", sn.Test(_node("node", _DEAD))),
        ],
        outputs=[
            ("shard_recovering", _t(_v("shard"), _v("node"), _v("prev"))),
            ("shard_epoch", bumped),
        ],
    )
    b.add(
        "takeover",
        inputs=[
            ("shard_recovering", _t(_v("shard"), _v("from_node"), _v("fenced"))),
            ("shard_epoch", _t(_v("shard"), _v("prev"))),
            ("node", sn.Test(_node("node", _ALIVE))),
        ],
        outputs=[
            ("shard_owned", _t(_v("shard"), _v("node"), _x("prev + 1"))),
            ("shard_epoch", bumped),
        ],
    )
    b.add(
        "write",
        inputs=[
            ("shard_owned", sn.Test(_t(_v("shard"), _v("node"), _v("epoch")))),
            ("shard_epoch", sn.Test(_t(_v("shard"), _v("epoch")))),
        ],
    )


def _add_bill_run_transitions(b: _Builder) -> None:
    b.add(
        "bill_run_lock",
        guard="shard in billable",
        inputs=[("lock_free", _v("shard"))],
        outputs=[("lock_held", _t(_v("shard"), _c(_BILL_RUN)))],
    )
    b.add(
        "bill_run_unlock",
        inputs=[("lock_held", _t(_v("shard"), _c(_BILL_RUN)))],
        outputs=[("lock_free", _v("shard"))],
    )


def _add_migration_transitions(b: _Builder) -> None:
    held = ("lock_held", sn.Test(_t(_v("shard"), _c(_MIGRATION))))
    b.add(
        "migration_lock",
        inputs=[
            ("lock_free", _v("shard")),
            ("shard_owned", sn.Test(_t(_v("shard"), _v("owner"), _v("epoch")))),
        ],
        outputs=[("lock_held", _t(_v("shard"), _c(_MIGRATION)))],
    )
    b.add(
        "migration_unlock",
        inputs=[("lock_held", _t(_v("shard"), _c(_MIGRATION)))],
        outputs=[("lock_free", _v("shard"))],
    )
    b.add(
        "migrate",
        inputs=[
            ("shard_owned", _t(_v("shard"), _v("from_node"), _v("prev"))),
            ("shard_epoch", _t(_v("shard"), _v("prev"))),
            held,
            (
                "node",
                sn.Test(sn.MultiArc([_node("from_node", _DRAINING), _node("node", _ALIVE)])),
            ),
        ],
        outputs=[
            ("shard_owned", _t(_v("shard"), _v("node"), _x("prev + 1"))),
            ("shard_epoch", _t(_v("shard"), _x("prev + 1"))),
        ],
    )
    b.add(
        "rebalance",
        guard=(
            "(shard, from_node, prev) in owned and load(owned, from_node) >= load(owned, node) + 2"
        ),
        inputs=[
            ("shard_owned", sn.Flush("owned")),
            ("shard_epoch", _t(_v("shard"), _v("prev"))),
            held,
            ("node", sn.Test(sn.MultiArc([_node("from_node", _ALIVE), _node("node", _ALIVE)]))),
        ],
        outputs=[
            ("shard_owned", sn.Flush("moved(owned, shard, node, prev + 1)")),
            ("shard_epoch", _t(_v("shard"), _x("prev + 1"))),
        ],
    )
