"""The configuration a control-plane net is built for: node ids, shards, lock kinds, copies.

The net is finite by construction: every node the cluster may ever contain is
named up front (a node that has not joined yet sits in status ``absent``), and
so is every shard. Account shards and rating partitions are both *shards*; the
kind only decides which locks a shard can take (a bill run closes accounts, so
rating partitions never hold a bill-run lock).

The replication factor picks the failover rules. With one copy (the ``local``
and ``shared`` storage modes) a dead owner's shard is fenced and taken over by
any alive node. With two or more (``replicated``) every shard has a primary and
followers on other nodes, and only an in-sync follower may become primary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "FollowerState",
    "LockKind",
    "NetConfig",
    "NodeStatus",
    "ShardKind",
    "ShardSpec",
]


class ShardKind(StrEnum):
    """What a shard holds; decides which lock kinds apply to it."""

    ACCOUNT = "account"
    RATING = "rating"


class LockKind(StrEnum):
    """The activities that hold a per-shard lock (one holder at a time)."""

    BILL_RUN = "bill_run"
    MIGRATION = "migration"


class NodeStatus(StrEnum):
    """The one status each configured node has at any time."""

    ABSENT = "absent"
    ALIVE = "alive"
    DRAINING = "draining"
    DEAD = "dead"


class FollowerState(StrEnum):
    """Where a follower of a replicated shard stands."""

    #: Copying the primary's checkpoint and the batches since; not in the in-sync set.
    CATCHING_UP = "catching_up"
    #: In the in-sync set (ISR): the primary acknowledges a batch only once this copy has it.
    IN_SYNC = "in_sync"


#: Which lock kinds each shard kind may take.
LOCKS_BY_KIND: dict[ShardKind, frozenset[LockKind]] = {
    ShardKind.ACCOUNT: frozenset({LockKind.BILL_RUN, LockKind.MIGRATION}),
    ShardKind.RATING: frozenset({LockKind.MIGRATION}),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ShardSpec:
    """One shard: an account hash range or a rating partition."""

    shard_id: str
    kind: ShardKind = ShardKind.ACCOUNT


@dataclass(frozen=True, slots=True, kw_only=True)
class NetConfig:
    """The finite universe of a net: all nodes and shards it may ever see.

    ``initial_nodes`` are alive in the initial marking; the other nodes are
    ``absent`` until they join. ``lock_kinds`` restricts the lock transitions
    built (verification of big configurations may leave one kind out).
    ``replication_factor`` is the number of copies of each shard (primary plus
    followers); 1 builds the net of the ``local``/``shared`` modes unchanged.
    """

    nodes: tuple[str, ...]
    shards: tuple[ShardSpec, ...]
    initial_nodes: frozenset[str] | None = None
    lock_kinds: frozenset[LockKind] = field(
        default_factory=lambda: frozenset({LockKind.BILL_RUN, LockKind.MIGRATION})
    )
    replication_factor: int = 1

    def __post_init__(self) -> None:
        if not self.nodes:
            raise ValueError("a net needs at least one node")
        if len(set(self.nodes)) != len(self.nodes):
            raise ValueError(f"node ids repeat: {self.nodes}")
        ids = [s.shard_id for s in self.shards]
        if len(set(ids)) != len(ids):
            raise ValueError(f"shard ids repeat: {ids}")
        if self.initial_nodes is not None and not self.initial_nodes <= set(self.nodes):
            unknown = sorted(self.initial_nodes - set(self.nodes))
            raise ValueError(f"initial nodes not in nodes: {unknown}")
        if self.replication_factor < 1:
            raise ValueError(f"replication factor must be at least 1: {self.replication_factor}")

    @classmethod
    def small(
        cls,
        *,
        nodes: int,
        account_shards: int,
        rating_shards: int = 0,
        initially_alive: int | None = None,
        lock_kinds: frozenset[LockKind] | None = None,
        replication_factor: int = 1,
    ) -> NetConfig:
        """Build a configuration with generated ids ``n1..``, ``acct-0..``, ``rate-0..``."""
        node_ids = tuple(f"n{i + 1}" for i in range(nodes))
        shards = tuple(
            ShardSpec(shard_id=f"acct-{i}", kind=ShardKind.ACCOUNT) for i in range(account_shards)
        ) + tuple(
            ShardSpec(shard_id=f"rate-{i}", kind=ShardKind.RATING) for i in range(rating_shards)
        )
        alive = node_ids if initially_alive is None else node_ids[:initially_alive]
        return cls(
            nodes=node_ids,
            shards=shards,
            initial_nodes=frozenset(alive),
            lock_kinds=lock_kinds if lock_kinds is not None else frozenset(LockKind),
            replication_factor=replication_factor,
        )

    @property
    def replicated(self) -> bool:
        """Whether shards have followers (and failover promotes one instead of a takeover)."""
        return self.replication_factor > 1

    @property
    def shard_ids(self) -> tuple[str, ...]:
        """The shard ids, in configuration order."""
        return tuple(s.shard_id for s in self.shards)

    @property
    def alive_at_start(self) -> frozenset[str]:
        """The nodes alive in the initial marking (all nodes unless told otherwise)."""
        return frozenset(self.nodes) if self.initial_nodes is None else self.initial_nodes

    def lockable(self, lock: LockKind) -> frozenset[str]:
        """The shards that may take ``lock`` (empty when the kind is not modelled)."""
        if lock not in self.lock_kinds:
            return frozenset()
        return frozenset(s.shard_id for s in self.shards if lock in LOCKS_BY_KIND[s.kind])
