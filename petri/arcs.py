"""Small builders for SNAKES arc labels and transitions, shared by the net's modules.

SNAKES has no type hints, so everything here returns ``Any``; the rest of
``petri/`` sees only :mod:`petri.model`'s typed API.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import snakes.nets as sn

__all__ = ["Builder", "add_transition", "c", "node_arc", "t", "v", "x"]


def v(name: str) -> Any:
    """A variable bound by matching a token."""
    return sn.Variable(name)


def c(value: str | int) -> Any:
    """A constant a token must equal."""
    return sn.Value(value)


def x(expr: str) -> Any:
    """An expression evaluated over the mode's variables and the net's globals."""
    return sn.Expression(expr)


def t(*parts: Any) -> Any:
    """A tuple token pattern."""
    return sn.Tuple(list(parts))


def node_arc(name: str, status: str) -> Any:
    """The ``(node, status)`` token of variable ``name`` in a given status."""
    return t(v(name), c(status))


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


class Builder:
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
