"""Markings of the control-plane net: a compact, hashable, JSON-serialisable value.

The coordinator persists the marking durably before it acts and reloads it
after a restart, so the representation is plain data: for each place, a sorted
tuple of tokens, each token a string or a tuple of strings and integers.

Places and the shape of their tokens:

=================  =================================  ======================================
place              token                              meaning
=================  =================================  ======================================
node               (node, status)                     one token per configured node
shard_free         shard                              not owned (before assignment, or released)
shard_owned        (shard, node, epoch)               node serves the shard under epoch (the
                                                      primary, when the shard is replicated)
shard_recovering   (shard, fenced_node, epoch)        the owner was fenced at epoch; no owner yet
shard_epoch        (shard, epoch)                     the fencing epoch stored with the shard
lock_free          shard                              the shard's lock is free
lock_held          (shard, kind)                      held by a bill run or a migration
shard_follower     (shard, node, state, behind)       a follower copy (replicated mode only):
                                                      state catching_up or in_sync; behind is 1
                                                      while it lacks an acknowledged batch
shard_lost         shard                              no copy with every acknowledged batch is
                                                      left; only an operator restore reopens it
=================  =================================  ======================================

The last two places exist only in replicated markings. They are written to JSON
only when they hold tokens, so the persisted form of an unreplicated marking is
the one it always was, and a document without them loads with both empty.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from petri.config import FollowerState, NetConfig, NodeStatus

__all__ = [
    "PLACES",
    "REPLICA_PLACES",
    "Marking",
    "MarkingFormatError",
    "Token",
    "behind_of",
    "epoch_of",
    "followers_of",
    "followers_on",
    "initial_marking",
    "is_fully_replicated",
    "is_healthy",
    "isr_of",
    "lost_shards",
    "marking_from_json",
    "marking_to_json",
    "node_status",
    "owner_of",
    "primary_of",
    "shards_of",
    "token_sort_key",
]

Token = str | tuple[str | int, ...]

#: Every place of the net, in a fixed order (the order of the persisted form).
PLACES: tuple[str, ...] = (
    "node",
    "shard_free",
    "shard_owned",
    "shard_recovering",
    "shard_epoch",
    "lock_free",
    "lock_held",
    "shard_follower",
    "shard_lost",
)

#: The places only a replicated net uses; optional in the persisted form.
REPLICA_PLACES: frozenset[str] = frozenset({"shard_follower", "shard_lost"})

_FORMAT = "petribill.marking/1"


class MarkingFormatError(ValueError):
    """Raised by :func:`marking_from_json` when the text is not a persisted marking."""


def token_sort_key(token: Token) -> tuple[str | int, ...]:
    """The order tokens are kept in: tokens of one place share a shape, so tuples compare."""
    if isinstance(token, str):
        return (token,)
    return token


@dataclass(frozen=True, slots=True)
class Marking:
    """The tokens of every place; equal markings compare and hash equal."""

    places: tuple[tuple[Token, ...], ...]

    @classmethod
    def of(cls, tokens: Mapping[str, Iterable[Token]]) -> Marking:
        """Build a marking from ``place -> tokens``; missing places are empty."""
        unknown = set(tokens) - set(PLACES)
        if unknown:
            raise ValueError(f"unknown places: {sorted(unknown)}")
        return cls(tuple(tuple(sorted(tokens.get(p, ()), key=token_sort_key)) for p in PLACES))

    def tokens(self, place: str) -> tuple[Token, ...]:
        """The tokens in ``place`` (sorted)."""
        return self.places[PLACES.index(place)]

    def nodes(self) -> tuple[tuple[str, str], ...]:
        """``(node, status)`` tokens."""
        return cast(tuple[tuple[str, str], ...], self.tokens("node"))

    def free_shards(self) -> tuple[str, ...]:
        """Shards in ``shard_free``."""
        return cast(tuple[str, ...], self.tokens("shard_free"))

    def owned(self) -> tuple[tuple[str, str, int], ...]:
        """``(shard, node, epoch)`` tokens of ``shard_owned``."""
        return cast(tuple[tuple[str, str, int], ...], self.tokens("shard_owned"))

    def recovering(self) -> tuple[tuple[str, str, int], ...]:
        """``(shard, fenced_node, fenced_epoch)`` tokens of ``shard_recovering``."""
        return cast(tuple[tuple[str, str, int], ...], self.tokens("shard_recovering"))

    def epochs(self) -> tuple[tuple[str, int], ...]:
        """``(shard, stored_epoch)`` tokens."""
        return cast(tuple[tuple[str, int], ...], self.tokens("shard_epoch"))

    def free_locks(self) -> tuple[str, ...]:
        """Shards whose lock is free."""
        return cast(tuple[str, ...], self.tokens("lock_free"))

    def locks_held(self) -> tuple[tuple[str, str], ...]:
        """``(shard, lock_kind)`` tokens of ``lock_held``."""
        return cast(tuple[tuple[str, str], ...], self.tokens("lock_held"))

    def followers(self) -> tuple[tuple[str, str, str, int], ...]:
        """``(shard, node, follower_state, behind)`` tokens of ``shard_follower``."""
        return cast(tuple[tuple[str, str, str, int], ...], self.tokens("shard_follower"))

    def lost(self) -> tuple[str, ...]:
        """Shards in ``shard_lost``."""
        return cast(tuple[str, ...], self.tokens("shard_lost"))

    def as_dict(self) -> dict[str, tuple[Token, ...]]:
        """``place -> tokens`` for every place."""
        return dict(zip(PLACES, self.places, strict=True))

    def replace(self, changes: Mapping[str, Iterable[Token]]) -> Marking:
        """A copy with the tokens of the places in ``changes`` replaced."""
        merged: dict[str, Iterable[Token]] = dict(self.as_dict())
        merged.update(changes)
        return Marking.of(merged)


def initial_marking(config: NetConfig) -> Marking:
    """The marking of a fresh cluster: shards free at epoch 0, all locks free."""
    alive = config.alive_at_start
    nodes: list[Token] = [
        (n, NodeStatus.ALIVE.value if n in alive else NodeStatus.ABSENT.value) for n in config.nodes
    ]
    return Marking.of(
        {
            "node": nodes,
            "shard_free": list(config.shard_ids),
            "shard_epoch": [(s, 0) for s in config.shard_ids],
            "lock_free": list(config.shard_ids),
        }
    )


def marking_to_json(marking: Marking) -> str:
    """The persisted form: compact JSON, stable key order, tuples as lists."""
    places = {p: list(ts) for p, ts in marking.as_dict().items() if ts or p not in REPLICA_PLACES}
    body = {"format": _FORMAT, "places": places}
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def _token_from_json(place: str, raw: Any) -> Token:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list) and all(
        isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)) for v in raw
    ):
        return tuple(raw)
    raise MarkingFormatError(f"bad token in place {place!r}: {raw!r}")


def marking_from_json(text: str) -> Marking:
    """Parse :func:`marking_to_json` output; raise :class:`MarkingFormatError` if malformed."""
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MarkingFormatError(f"not JSON: {exc}") from exc
    if not isinstance(body, dict) or body.get("format") != _FORMAT:
        raise MarkingFormatError(f"not a {_FORMAT} document")
    places = body.get("places")
    required = [p for p in PLACES if p not in REPLICA_PLACES]
    if not isinstance(places, dict) or not set(required) <= set(places) <= set(PLACES):
        raise MarkingFormatError(
            f"places must be exactly {required}, optionally with {sorted(REPLICA_PLACES)}"
        )
    tokens: dict[str, list[Token]] = {}
    for place, raw_tokens in places.items():
        if not isinstance(raw_tokens, list):
            raise MarkingFormatError(f"place {place!r} is not a list")
        tokens[place] = [_token_from_json(place, t) for t in raw_tokens]
    return Marking.of(tokens)


def owner_of(marking: Marking, shard: str) -> tuple[str, int] | None:
    """``(node, epoch)`` of the shard's owner, or ``None`` if free, being recovered or lost."""
    for owned, node, epoch in marking.owned():
        if owned == shard:
            return node, epoch
    return None


def primary_of(marking: Marking, shard: str) -> tuple[str, int] | None:
    """``(node, epoch)`` of a replicated shard's primary: its owner (see :func:`owner_of`)."""
    return owner_of(marking, shard)


def followers_of(marking: Marking, shard: str) -> dict[str, FollowerState]:
    """``node -> state`` of every follower of ``shard`` (empty when not replicated)."""
    return {
        node: FollowerState(state) for name, node, state, _ in marking.followers() if name == shard
    }


def isr_of(marking: Marking, shard: str) -> frozenset[str]:
    """The followers of ``shard`` in its in-sync set (the primary is not listed)."""
    return frozenset(
        node
        for name, node, state, _ in marking.followers()
        if name == shard and state == FollowerState.IN_SYNC
    )


def behind_of(marking: Marking, shard: str) -> frozenset[str]:
    """The followers of ``shard`` that lack an acknowledged batch (they must catch up first)."""
    return frozenset(
        node for name, node, _, behind in marking.followers() if name == shard and behind
    )


def followers_on(marking: Marking, node: str) -> dict[str, FollowerState]:
    """``shard -> state`` of every follower copy ``node`` holds."""
    return {
        shard: FollowerState(state) for shard, name, state, _ in marking.followers() if name == node
    }


def lost_shards(marking: Marking) -> tuple[str, ...]:
    """The shards that lost every copy with all acknowledged batches (sorted)."""
    return marking.lost()


def shards_of(marking: Marking, node: str) -> tuple[str, ...]:
    """The shards ``node`` owns (sorted)."""
    return tuple(shard for shard, owner, _ in marking.owned() if owner == node)


def node_status(marking: Marking, node: str) -> NodeStatus:
    """The status of a configured node; ``KeyError`` if the node is unknown."""
    for name, status in marking.nodes():
        if name == node:
            return NodeStatus(status)
    raise KeyError(node)


def epoch_of(marking: Marking, shard: str) -> int:
    """The fencing epoch stored with ``shard``; a writer with another epoch is refused."""
    for name, epoch in marking.epochs():
        if name == shard:
            return epoch
    raise KeyError(shard)


def is_healthy(marking: Marking) -> bool:
    """Every shard is owned by an alive (not draining) node and no lock is held."""
    alive = {node for node, status in marking.nodes() if status == NodeStatus.ALIVE}
    return (
        not marking.free_shards()
        and not marking.recovering()
        and not marking.lost()
        and not marking.locks_held()
        and all(node in alive for _, node, _ in marking.owned())
    )


def is_fully_replicated(marking: Marking, replication_factor: int) -> bool:
    """Healthy, and every shard has exactly ``replication_factor - 1`` followers, all in
    sync on alive nodes: the state a replicated cluster heals back to."""
    if not is_healthy(marking):
        return False
    alive = {node for node, status in marking.nodes() if status == NodeStatus.ALIVE}
    wanted = replication_factor - 1
    counts = dict.fromkeys((shard for shard, _, _ in marking.owned()), 0)
    for shard, node, state, _ in marking.followers():
        if state != FollowerState.IN_SYNC or node not in alive or shard not in counts:
            return False
        counts[shard] += 1
    return all(count == wanted for count in counts.values())
