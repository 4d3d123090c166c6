"""The two abstractions that keep the reachability graph finite and small.

- **Epochs** grow forever, but guards only compare epochs for equality and
  new epochs are ``stored + 1`` (above every epoch of the shard). Each
  marking's epochs are therefore renumbered per shard by dense rank (the
  lowest epoch of a shard becomes 0), which preserves every guard's outcome.
- **Symmetry**: guards compare node ids only for equality, and shard ids only
  for equality and kind, so markings equal up to renaming nodes, or shards of
  the same kind, have isomorphic futures. :func:`symmetry_key` maps a marking
  to a canonical form of its orbit.

Acknowledged batches need no abstraction of their own: a follower's ``behind``
flag already says "lacks at least one acknowledged batch", which is all a guard
or an invariant asks (see docs/petri-net.md).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable

from petri.config import NetConfig, ShardKind
from petri.marking import Marking, Token

__all__ = ["normalize_epochs", "symmetry_key"]


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


def _renamed(
    order: dict[str, int], copies: list[tuple[str, str, int]]
) -> tuple[tuple[int, str, int], ...]:
    return tuple(sorted((order.get(n, -1), state, behind) for n, state, behind in copies))


def symmetry_key(config: NetConfig) -> Callable[[Marking], Hashable]:
    """A function giving equal keys to markings equal up to renaming nodes or shards of a kind.

    A marking breaking the one-token-per-shard shape is its own key, so it never
    merges with a sane one (the invariants report it).
    """
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
        for s in marking.lost():
            place[s] = ("lost", "", -1)
        for name, tokens in (("owned", marking.owned()), ("recovering", marking.recovering())):
            for shard, node, number in tokens:
                # A fenced owner's node is read by no guard (promote, lose and
                # takeover only log it): forgetting it merges bisimilar markings.
                forget = name == "recovering" and config.replicated
                place[shard] = (name, "" if forget else node, number)
        followers: dict[str, list[tuple[str, str, int]]] = {}
        for shard, node, state, behind in marking.followers():
            followers.setdefault(shard, []).append((node, state, behind))
        lock_shards = {shard for shard, _ in marking.locks_held()} | set(marking.free_locks())
        placed = (
            len(marking.free_shards())
            + len(marking.lost())
            + len(marking.owned())
            + len(marking.recovering())
        )
        well_formed = (
            len(place) == placed == shard_count
            and len(epoch) == len(marking.epochs()) == shard_count
            and len(lock_shards) == len(marking.locks_held()) + len(marking.free_locks())
            and len(lock_shards) == shard_count
            and set(followers) <= set(place)
        )
        if not well_formed:
            return marking
        status = marking.nodes()
        base = [
            [
                (
                    place[s][0],
                    place[s][1],
                    place[s][2],
                    epoch.get(s, -1),
                    locks.get(s, ""),
                    followers.get(s, []),
                )
                for s in group
            ]
            for group in groups
        ]
        best: tuple[object, ...] | None = None
        for order in orders:
            candidate = (
                tuple(sorted((order[n], s) for n, s in status)),
                tuple(
                    tuple(
                        sorted(
                            (p, order.get(n, -1), e, st, lk, _renamed(order, fs))
                            for p, n, e, st, lk, fs in group
                        )
                    )
                    for group in base
                ),
            )
            if best is None or candidate < best:
                best = candidate
        return best

    return key
