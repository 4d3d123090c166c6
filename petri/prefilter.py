"""Which tokens an input arc can ever bind: a sound pre-filter for computing modes.

An arc labelled ``(shard, node, "in_sync", behind)`` can only bind tokens that
are 4-tuples with ``"in_sync"`` third, whatever the variables are bound to. So
a transition's modes and token flows are the same whether SNAKES sees a whole
input place or only the tokens matching one of its arc's patterns; and if fewer
tokens match than the arc needs (one, or one per part of a multi-arc), the
transition has no mode at all. :class:`petri.model.PetriModel` uses this to
skip SNAKES for most disabled transitions and to key its cache on the tokens
that matter (far more hits when a transition reads a busy place).

Labels this module does not know (flush arcs, inhibitors, expressions) keep
every token and need none, which is always sound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import snakes.nets as sn

from petri.marking import Token

__all__ = ["ArcFilter", "arc_filter"]

# A pattern: None matches any token; a tuple of patterns matches a tuple token of that
# length whose parts match; any other value must equal the token.
_ANY = None


@dataclass(frozen=True, slots=True)
class ArcFilter:
    """The tokens an input arc can bind, and how many it needs to be enabled."""

    patterns: tuple[object, ...]
    needed: int

    def keep(self, tokens: tuple[Token, ...]) -> tuple[Token, ...]:
        """The tokens some pattern matches (all of them when a pattern matches anything)."""
        if _ANY in self.patterns:
            return tokens
        return tuple(token for token in tokens if any(_matches(p, token) for p in self.patterns))


def _matches(pattern: object, token: object) -> bool:
    if pattern is _ANY:
        return True
    if isinstance(pattern, tuple):
        if not isinstance(token, tuple) or len(token) != len(pattern):
            return False
        for part, value in zip(pattern, token, strict=True):
            if part is not _ANY and not _matches(part, value):
                return False
        return True
    return bool(pattern == token)


def _pattern(label: Any) -> object:
    if isinstance(label, sn.Value):
        return label.value
    if isinstance(label, sn.Tuple):
        return tuple(_pattern(part) for part in label._components)
    # A variable, or a label not known here: anything may match.
    return _ANY


def arc_filter(label: Any) -> ArcFilter:
    """The filter of an input arc's label (see the module docstring)."""
    if isinstance(label, sn.Inhibitor | sn.Flush):
        return ArcFilter(patterns=(_ANY,), needed=0)
    if isinstance(label, sn.Test):
        return arc_filter(label._annotation)
    if isinstance(label, sn.Value | sn.Variable | sn.Tuple):
        return ArcFilter(patterns=(_pattern(label),), needed=1)
    if isinstance(label, sn.MultiArc):
        parts = [arc_filter(part) for part in label._components]
        if any(part.needed != 1 for part in parts):
            return ArcFilter(patterns=(_ANY,), needed=0)
        return ArcFilter(
            patterns=tuple(p for part in parts for p in part.patterns), needed=len(parts)
        )
    return ArcFilter(patterns=(_ANY,), needed=0)
