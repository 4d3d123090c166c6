"""Markings of the control-plane net: a compact, hashable, JSON-serialisable value.

The coordinator persists the marking durably before it acts and reloads it
after a restart, so the representation is plain data: for each place, a sorted
tuple of tokens, each token a string or a tuple of strings and integers.

Places and the shape of their tokens:

=================  ===========================  =======================================
place              token                        meaning
=================  ===========================  =======================================
node               (node, status)               one token per configured node
shard_free         shard                        not owned (before assignment, or released)
shard_owned        (shard, node, epoch)         node serves the shard under epoch
shard_recovering   (shard, fenced_node, epoch)  the owner was fenced at epoch; no owner yet
shard_epoch        (shard, epoch)               the fencing epoch stored with the shard
lock_free          shard                        the shard's lock is free
lock_held          (shard, kind)                the shard's lock is held by a bill run/migration
=================  ===========================  =======================================
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from petri.config import NetConfig, NodeStatus

__all__ = [
    "PLACES",
    "Marking",
    "MarkingFormatError",
    "Token",
    "epoch_of",
    "initial_marking",
    "is_healthy",
    "marking_from_json",
    "marking_to_json",
    "node_status",
    "owner_of",
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
)

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
    body = {"format": _FORMAT, "places": {p: list(ts) for p, ts in marking.as_dict().items()}}
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
    if not isinstance(places, dict) or set(places) != set(PLACES):
        raise MarkingFormatError(f"places must be exactly {list(PLACES)}")
    tokens: dict[str, list[Token]] = {}
    for place, raw_tokens in places.items():
        if not isinstance(raw_tokens, list):
            raise MarkingFormatError(f"place {place!r} is not a list")
        tokens[place] = [_token_from_json(place, t) for t in raw_tokens]
    return Marking.of(tokens)


def owner_of(marking: Marking, shard: str) -> tuple[str, int] | None:
    """``(node, epoch)`` of the shard's owner, or ``None`` if free or being recovered."""
    for owned, node, epoch in marking.owned():
        if owned == shard:
            return node, epoch
    return None


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
        and not marking.locks_held()
        and all(node in alive for _, node, _ in marking.owned())
    )
