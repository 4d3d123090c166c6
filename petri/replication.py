"""The followers of replicated shards: their places' rules, for a replication factor of 2+.

The owner token of :mod:`petri.net` is the shard's *primary*. Each follower is
a ``shard_follower`` token ``(shard, node, state, behind)``: ``state`` is
``catching_up`` or ``in_sync`` (the in-sync set, ISR), and ``behind`` is 1
while the copy lacks an acknowledged batch. The rules, one per transition:

- ``replica_add``: a new follower (catching up, behind) on an alive node that
  holds no copy of the shard, while the primary's node is not dead. A shard
  has at most RF−1 followers (see docs/petri-net.md for why a surplus copy
  during a move is left out).
- ``catch_up``: the follower applied the primary's checkpoint and every batch
  since (behind := 0). The follower's node is alive, the primary's not dead.
- ``join_isr``: a caught-up (not behind) follower on an alive node joins the ISR.
- ``shrink_isr``: an in-sync follower (slow, or on a dead node) leaves the ISR.
  The real system persists this before the primary acknowledges anything
  without that follower.
- ``replica_drop``: a catching-up follower is removed, if its node is dead or
  draining, or under the shard's migration lock (a copy being moved).
- ``ack``: the data plane's step, modelled so the checker sees every
  interleaving; the coordinator never fires it. The current primary commits
  and acknowledges a batch: every in-sync follower has it, which needs each of
  their nodes not dead, and every catching-up follower falls behind.
- ``promote``: the primary was fenced (``fence``, as without replicas); an
  in-sync follower on an alive or draining node becomes primary at a new epoch.
- ``lose``: a fenced shard with no in-sync follower on an alive or draining
  node is lost; its followers are forgotten (their copies lack acknowledged
  batches, so none may ever serve).
- ``restore``: an operator brings a lost shard back from a backup on an alive
  node, at a new epoch.

The guards' helpers take whole places (SNAKES flush arcs) and are installed in
the net's globals as :data:`REPLICA_GLOBALS`; ``rf`` is the replication factor.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import snakes.nets as sn

from petri.arcs import Builder, c, node_arc, t, v, x
from petri.config import FollowerState, LockKind, NodeStatus

__all__ = ["REPLICA_GLOBALS", "REPLICA_TRANSITIONS", "add_replica_transitions"]

#: The transitions this module adds (besides the replicated ``migrate``/``rebalance``).
REPLICA_TRANSITIONS: frozenset[str] = frozenset(
    {
        "replica_add",
        "catch_up",
        "join_isr",
        "shrink_isr",
        "replica_drop",
        "ack",
        "promote",
        "lose",
        "restore",
    }
)

Follower = tuple[str, str, str, int]

_ALIVE = NodeStatus.ALIVE.value
_DEAD = NodeStatus.DEAD.value
_SERVING = (NodeStatus.ALIVE.value, NodeStatus.DRAINING.value)
_CATCHING_UP = FollowerState.CATCHING_UP.value
_IN_SYNC = FollowerState.IN_SYNC.value
_MIGRATION = LockKind.MIGRATION.value


def _statuses(nodes: Iterable[tuple[str, str]]) -> dict[str, str]:
    # Not dict(nodes): a flushed place is a SNAKES MultiSet, itself a dict of counts.
    return {node: status for node, status in nodes}


def hosts(followers: Iterable[Follower], node: str) -> bool:
    """Whether ``node`` holds a follower copy of any shard."""
    return any(f[1] == node for f in followers)


def has_copy(followers: Iterable[Follower], shard: str, node: str) -> bool:
    """Whether ``node`` holds a follower copy of ``shard``."""
    return any(f[0] == shard and f[1] == node for f in followers)


def follower_count(followers: Iterable[Follower], shard: str) -> int:
    """How many followers ``shard`` has, in any state."""
    return sum(1 for f in followers if f[0] == shard)


def migrating(locks: Iterable[tuple[str, str]], shard: str) -> bool:
    """Whether ``shard``'s migration lock is held."""
    return any(lock == (shard, _MIGRATION) for lock in locks)


def isr_reachable(
    followers: Iterable[Follower], nodes: Iterable[tuple[str, str]], shard: str
) -> bool:
    """Whether every in-sync follower of ``shard`` can sync a batch (its node is not dead)."""
    status = _statuses(nodes)
    return all(status[f[1]] != _DEAD for f in followers if f[0] == shard and f[2] == _IN_SYNC)


def promotable(followers: Iterable[Follower], nodes: Iterable[tuple[str, str]], shard: str) -> bool:
    """Whether ``shard`` has an in-sync follower on an alive or draining node."""
    status = _statuses(nodes)
    return any(f[0] == shard and f[2] == _IN_SYNC and status[f[1]] in _SERVING for f in followers)


def acked(followers: Iterable[Follower], shard: str) -> list[Follower]:
    """The followers after ``shard``'s primary acknowledged a batch: catching-up ones lag."""
    return [(s, n, st, 1 if s == shard and st == _CATCHING_UP else b) for s, n, st, b in followers]


def without(followers: Iterable[Follower], shard: str) -> list[Follower]:
    """The followers of every shard but ``shard``."""
    return [f for f in followers if f[0] != shard]


#: The guard helpers, by the names the guards use.
REPLICA_GLOBALS: dict[str, Any] = {
    "hosts": hosts,
    "has_copy": has_copy,
    "follower_count": follower_count,
    "migrating": migrating,
    "isr_reachable": isr_reachable,
    "promotable": promotable,
    "acked": acked,
    "without": without,
}


def _follower(state: str, behind: Any) -> Any:
    return t(v("shard"), v("node"), c(state), behind)


def _primary(epoch: str = "epoch") -> tuple[str, Any]:
    return ("shard_owned", sn.Test(t(v("shard"), v("primary"), v(epoch))))


def add_replica_transitions(b: Builder) -> None:
    """Add the follower, acknowledgement and failover transitions of a replicated net."""
    _add_follower_transitions(b)
    _add_failover_transitions(b)


def _add_follower_transitions(b: Builder) -> None:
    # The node arcs pair the follower's node with the primary's: a MultiArc needs two
    # distinct tokens, so a follower is never on its primary's node.
    b.add(
        "replica_add",
        guard=(
            "pstatus != 'dead' and not has_copy(followers, shard, node)"
            " and follower_count(followers, shard) < rf - 1"
        ),
        inputs=[
            _primary(),
            (
                "node",
                sn.Test(sn.MultiArc([node_arc("node", _ALIVE), t(v("primary"), v("pstatus"))])),
            ),
            ("shard_follower", sn.Test(sn.Flush("followers"))),
        ],
        outputs=[("shard_follower", _follower(_CATCHING_UP, c(1)))],
    )
    b.add(
        "catch_up",
        guard="pstatus != 'dead'",
        inputs=[
            _primary(),
            (
                "node",
                sn.Test(sn.MultiArc([node_arc("node", _ALIVE), t(v("primary"), v("pstatus"))])),
            ),
            ("shard_follower", _follower(_CATCHING_UP, c(1))),
        ],
        outputs=[("shard_follower", _follower(_CATCHING_UP, c(0)))],
    )
    b.add(
        "join_isr",
        inputs=[
            _primary(),
            ("node", sn.Test(node_arc("node", _ALIVE))),
            ("shard_follower", _follower(_CATCHING_UP, c(0))),
        ],
        outputs=[("shard_follower", _follower(_IN_SYNC, c(0)))],
    )
    b.add(
        "shrink_isr",
        inputs=[_primary(), ("shard_follower", _follower(_IN_SYNC, v("behind")))],
        outputs=[("shard_follower", _follower(_CATCHING_UP, v("behind")))],
    )
    b.add(
        "replica_drop",
        guard="fstatus != 'alive' or migrating(locks, shard)",
        inputs=[
            _primary(),
            ("node", sn.Test(t(v("node"), v("fstatus")))),
            ("shard_follower", _follower(_CATCHING_UP, v("behind"))),
            ("lock_held", sn.Test(sn.Flush("locks"))),
        ],
    )
    b.add(
        "ack",
        guard="isr_reachable(followers, nodes, shard)",
        inputs=[
            ("shard_owned", sn.Test(t(v("shard"), v("node"), v("epoch")))),
            ("shard_epoch", sn.Test(t(v("shard"), v("epoch")))),
            ("node", sn.Test(sn.Flush("nodes"))),
            ("shard_follower", sn.Flush("followers")),
        ],
        outputs=[("shard_follower", sn.Flush("acked(followers, shard)"))],
    )


def _add_failover_transitions(b: Builder) -> None:
    b.add(
        "promote",
        guard=f"nstatus in {_SERVING!r}",
        inputs=[
            ("shard_recovering", t(v("shard"), v("from_node"), v("fenced"))),
            ("shard_epoch", t(v("shard"), v("prev"))),
            ("node", sn.Test(t(v("node"), v("nstatus")))),
            ("shard_follower", _follower(_IN_SYNC, v("behind"))),
        ],
        outputs=[
            ("shard_owned", t(v("shard"), v("node"), x("prev + 1"))),
            ("shard_epoch", t(v("shard"), x("prev + 1"))),
        ],
    )
    b.add(
        "lose",
        guard="not promotable(followers, nodes, shard)",
        inputs=[
            ("shard_recovering", t(v("shard"), v("from_node"), v("fenced"))),
            ("node", sn.Test(sn.Flush("nodes"))),
            ("shard_follower", sn.Flush("followers")),
        ],
        outputs=[
            ("shard_lost", v("shard")),
            ("shard_follower", sn.Flush("without(followers, shard)")),
        ],
    )
    b.add(
        "restore",
        inputs=[
            ("shard_lost", v("shard")),
            ("shard_epoch", t(v("shard"), v("prev"))),
            ("node", sn.Test(node_arc("node", _ALIVE))),
        ],
        outputs=[
            ("shard_owned", t(v("shard"), v("node"), x("prev + 1"))),
            ("shard_epoch", t(v("shard"), x("prev + 1"))),
        ],
    )
