"""Optional conditions on a rate rule, written in CEL and never in Python.

A condition sees only a few low-cardinality facts about a record (the
:data:`CEL_VARIABLES`), never the subscriber's number or the record id. That
keeps it cheap: each expression is compiled once at load, and its result is
cached per distinct tuple of the facts it reads, so cel-python (about 240 µs an
evaluation) runs a handful of times per catalogue, not once per record. Keying
on the facts the expression names, not on all six, matters: ``roaming`` alone
has two answers, but (roaming, destination, group, band...) has hundreds, and
each new one cost a full evaluation when a rating worker started cold.

Identifiers are checked against :data:`CEL_VARIABLES` at load, and the
expression is tried once on neutral facts, so most mistakes are load errors.
An expression that still fails for some facts at rating time (a type error on
one branch) does not match, the way a failing CEL filter selects nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import celpy
from celpy import celtypes
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError

from billing.tariffs.errors import Loc

__all__ = ["CEL_VARIABLES", "Condition", "Facts"]

CEL_VARIABLES: Final = ("service", "roaming", "rating_group", "destination", "group", "band")
"""What a condition may read. ``rating_group`` is -1 when the record has none;
``destination``, ``group`` and ``band`` are "" when the service has none."""

Facts = tuple[str, bool, int, str, str, str]
"""Values of :data:`CEL_VARIABLES`, in that order."""

_TRIAL_FACTS: Final[Facts] = ("voice", False, -1, "", "", "")
_FACTS_CACHED_MAX: Final = 100_000


def _activation(facts: Facts) -> dict[str, celtypes.Value]:
    service, roaming, rating_group, destination, group, band = facts
    return {
        "service": celtypes.StringType(service),
        "roaming": celtypes.BoolType(roaming),
        "rating_group": celtypes.IntType(rating_group),
        "destination": celtypes.StringType(destination),
        "group": celtypes.StringType(group),
        "band": celtypes.StringType(band),
    }


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Condition:
    """A compiled CEL expression with its result memoised per :data:`Facts`."""

    source: str
    program: celpy.Runner
    # Positions in Facts of the variables the expression names: its result
    # cannot depend on any other (CEL has no way to reach an unnamed variable).
    reads: tuple[int, ...] = tuple(range(len(CEL_VARIABLES)))
    _results: dict[tuple[object, ...], bool] = field(default_factory=dict, repr=False)

    @classmethod
    def compile(cls, source: str, loc: Loc) -> Condition:
        """Compile ``source``, then evaluate it once on neutral facts to catch type errors.

        The trial run turns an unknown variable or a non-boolean expression into
        a load error instead of a surprise on the first roaming call.
        """
        env = celpy.Environment()
        try:
            ast = env.compile(source)
            program = env.program(ast)
        except CELParseError as exc:
            raise loc.error(f"not a valid CEL expression: {str(exc).splitlines()[0]}") from None
        for node in ast.find_data("ident"):
            name = str(node.children[0])
            if name not in CEL_VARIABLES:
                known = ", ".join(CEL_VARIABLES)
                raise loc.error(f"unknown variable {name!r} in CEL expression (known: {known})")
        # ``.roaming`` (a leading dot) names a variable too, so it counts as read.
        named = {
            str(node.children[0]) for kind in ("ident", "dot_ident") for node in ast.find_data(kind)
        }
        reads = tuple(i for i, name in enumerate(CEL_VARIABLES) if name in named)
        condition = cls(source=source, program=program, reads=reads)
        outcome = condition._evaluate(_TRIAL_FACTS)
        if isinstance(outcome, str):
            raise loc.error(outcome)
        return condition

    def _evaluate(self, facts: Facts) -> bool | str:
        """The boolean result, or a description of why there is none."""
        try:
            result = self.program.evaluate(_activation(facts))
        except CELEvalError as exc:
            reason = exc.args[0] if exc.args else exc
            return f"CEL evaluation failed: {str(reason)[:120]}"
        if not isinstance(result, celtypes.BoolType):
            return f"must evaluate to a bool, got {type(result).__name__}"
        return bool(result)

    def matches(self, facts: Facts) -> bool:
        """Whether the condition holds for ``facts``; CEL runs once per distinct tuple read."""
        key = tuple(facts[i] for i in self.reads)
        cached = self._results.get(key)
        if cached is None:
            if len(self._results) >= _FACTS_CACHED_MAX:
                self._results.clear()
            cached = self._evaluate(facts) is True
            self._results[key] = cached
        return cached
