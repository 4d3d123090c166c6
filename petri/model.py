"""The pure, typed face of the net: ``enabled(marking)`` and ``fire(marking, ...)``.

SNAKES computes the semantics (modes, guards, token flows); this module turns
them into plain values and caches them. A transition's modes and flows depend
only on the tokens of its input places (test and flush arcs included) that its
arcs' patterns can match (:mod:`petri.prefilter`), so they are cached per
``(transition, those tokens)``; the cache makes reachability checking fast and
is bounded.

Bindings are what the coordinator logs: ``{"shard": "acct-3", "node": "n2",
"epoch": 5}``. Internal variables of the net (the previous epoch, the node's
old status, the flushed owner set) are hidden; ``epoch`` is always the epoch
*after* the step for transitions that bump it.
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import snakes.nets as sn

from petri.config import NetConfig
from petri.marking import PLACES, Marking, Token, token_sort_key
from petri.net import OBSERVATIONS, build_net
from petri.prefilter import ArcFilter, arc_filter

__all__ = ["Binding", "PetriModel", "Step", "TransitionRefused"]

Binding = Mapping[str, str | int]

#: Net variables that never appear in a public binding.
_HIDDEN = frozenset(
    {
        "prev",
        "status",
        "owned",
        "owner",
        "fenced",
        # Of the replicated net: the primary found from the shard, node statuses,
        # flushed places and a follower's lag.
        "primary",
        "pstatus",
        "fstatus",
        "nstatus",
        "followers",
        "locks",
        "nodes",
        "behind",
    }
)
_EPOCH_PLACE = PLACES.index("shard_epoch")


class TransitionRefused(Exception):
    """Raised by :meth:`PetriModel.fire` when the requested step is not allowed.

    ``reason`` is one of ``unknown_transition`` (no such transition),
    ``unknown_variable`` (the binding names a variable the transition does not
    have), ``not_enabled`` (no enabled mode matches the binding) or
    ``ambiguous`` (several enabled modes match; name more variables).
    The coordinator logs it and does not act; it is never a crash.
    """

    def __init__(self, transition: str, binding: Binding, reason: str, detail: str) -> None:
        super().__init__(f"{transition} {dict(binding)} refused ({reason}): {detail}")
        self.transition = transition
        self.binding = dict(binding)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Step:
    """One enabled mode of a transition, with the tokens it moves."""

    transition: str
    binding: Mapping[str, str | int]
    consumed: tuple[tuple[int, tuple[Token, ...]], ...]
    produced: tuple[tuple[int, tuple[Token, ...]], ...]

    def apply(self, marking: Marking) -> Marking:
        """The marking after this step (the step must be enabled in ``marking``)."""
        places = list(marking.places)
        for index, tokens in self.consumed:
            remaining = list(places[index])
            for token in tokens:
                remaining.remove(token)
            places[index] = tuple(remaining)
        for index, tokens in self.produced:
            places[index] = tuple(sorted(places[index] + tokens, key=token_sort_key))
        return Marking(tuple(places))


def _plain(value: Any) -> Token:
    if isinstance(value, tuple):
        return value
    return str(value)


def _flow(marking: Any) -> tuple[tuple[int, tuple[Token, ...]], ...]:
    moved = []
    for place in PLACES:
        if place in marking:
            tokens = tuple(sorted((_plain(t) for t in marking[place]), key=token_sort_key))
            if tokens:
                moved.append((PLACES.index(place), tokens))
    return tuple(moved)


class PetriModel:
    """The control-plane net for one configuration, as pure functions on markings.

    ``net`` may be given to check a hand-modified SNAKES net (tests build broken
    twins this way); by default it is :func:`petri.net.build_net` of ``config``.
    """

    def __init__(
        self, config: NetConfig, net: Any = None, *, cache_entries_max: int = 500_000
    ) -> None:
        self.config = config
        self._net = build_net(config) if net is None else net
        self._cache_entries_max = cache_entries_max
        # Steps by the whole input places, then by the tokens the arcs can bind.
        self._cache: dict[tuple[str, tuple[tuple[Token, ...], ...]], tuple[Step, ...]] = {}
        self._modes: dict[tuple[str, tuple[tuple[Token, ...], ...]], tuple[Step, ...]] = {}
        self._inputs: dict[str, tuple[int, ...]] = {}
        self._filters: dict[str, tuple[tuple[int, ArcFilter], ...]] = {}
        self._variables: dict[str, frozenset[str]] = {}
        for transition in self._net.transition():
            arcs = sorted(
                ((PLACES.index(p.name), arc_filter(label)) for p, label in transition.input()),
                key=lambda arc: arc[0],
            )
            self._inputs[transition.name] = tuple(index for index, _ in arcs)
            self._filters[transition.name] = tuple(arcs)
            public = set(transition.vars()) - _HIDDEN
            if any(p.name == "shard_epoch" for p, _ in transition.output()):
                public.add("epoch")
            self._variables[transition.name] = frozenset(public)
        self.transitions: tuple[str, ...] = tuple(sorted(self._inputs))

    @property
    def snakes_net(self) -> Any:
        """The underlying SNAKES ``PetriNet`` (its marking is scratch space)."""
        return self._net

    def variables(self, transition: str) -> frozenset[str]:
        """The public variable names of ``transition``'s bindings."""
        return self._variables[transition]

    def steps(self, marking: Marking, transition: str) -> tuple[Step, ...]:
        """Every enabled mode of ``transition`` in ``marking``."""
        key = (transition, tuple(marking.places[i] for i in self._inputs[transition]))
        cached = self._cache.get(key)
        if cached is None:
            cached = self._filtered_steps(key[1], transition)
            if len(self._cache) >= self._cache_entries_max:
                self._cache.clear()
            self._cache[key] = cached
        return cached

    def _filtered_steps(
        self, inputs: tuple[tuple[Token, ...], ...], transition: str
    ) -> tuple[Step, ...]:
        # Only the tokens an input arc can bind matter (petri.prefilter): markings that
        # differ elsewhere share one SNAKES computation, and with fewer tokens than an
        # arc needs the transition is disabled without asking SNAKES at all.
        local = []
        for (_, kept), tokens in zip(self._filters[transition], inputs, strict=True):
            matching = kept.keep(tokens)
            if len(matching) < kept.needed:
                return ()
            local.append(matching)
        key = (transition, tuple(local))
        cached = self._modes.get(key)
        if cached is None:
            cached = self._compute(key[1], transition)
            if len(self._modes) >= self._cache_entries_max:
                self._modes.clear()
            self._modes[key] = cached
        return cached

    def all_steps(self, marking: Marking, *, observations: bool = False) -> list[Step]:
        """The enabled steps of every transition (observations such as ``write`` on request)."""
        return [
            step
            for t in self.transitions
            if observations or t not in OBSERVATIONS
            for step in self.steps(marking, t)
        ]

    def enabled(self, marking: Marking, *, observations: bool = False) -> list[tuple[str, Binding]]:
        """``(transition, binding)`` for every enabled step, sorted by transition name."""
        # Copies: the steps are cached and shared, the caller may keep or change these.
        steps = self.all_steps(marking, observations=observations)
        return [(s.transition, dict(s.binding)) for s in steps]

    def match(self, marking: Marking, transition: str, binding: Binding) -> Step:
        """The one enabled step of ``transition`` agreeing with the (partial) ``binding``.

        Raises :class:`TransitionRefused` as described there.
        """
        if transition not in self._inputs:
            raise TransitionRefused(
                transition, binding, "unknown_transition", f"known: {', '.join(self.transitions)}"
            )
        unknown = set(binding) - self._variables[transition]
        if unknown:
            raise TransitionRefused(
                transition,
                binding,
                "unknown_variable",
                f"{sorted(unknown)} not in {sorted(self._variables[transition])}",
            )
        candidates = [
            s
            for s in self.steps(marking, transition)
            if all(s.binding.get(k) == v for k, v in binding.items())
        ]
        if not candidates:
            raise TransitionRefused(
                transition, binding, "not_enabled", self.explain(marking, transition, binding)
            )
        if len(candidates) > 1:
            options = "; ".join(str(dict(s.binding)) for s in candidates[:5])
            raise TransitionRefused(transition, binding, "ambiguous", f"matches {options}")
        return candidates[0]

    def fire(self, marking: Marking, transition: str, binding: Binding) -> Marking:
        """The marking after firing ``transition`` with ``binding``; see :meth:`match`."""
        return self.match(marking, transition, binding).apply(marking)

    def explain(self, marking: Marking, transition: str, binding: Binding) -> str:
        """Why no enabled mode of ``transition`` matches ``binding``, for an operator."""
        self._load(marking, transition)
        snakes_transition = self._net.transition(transition)

        def agrees(mode: Any) -> bool:
            return all(k not in mode or mode[k] == v for k, v in binding.items())

        per_arc = []
        for place, label in snakes_transition.input():
            try:
                modes = [m for m in label.modes(place.tokens) if agrees(m)]
            except sn.ModeError:
                modes = []
            if not modes:
                given = {k: v for k, v in binding.items() if k in label.vars()}
                return f"no token in {place.name} matches {label} with {given or 'any binding'}"
            per_arc.append(modes)
        merged = []
        for parts in itertools.product(*per_arc):
            try:
                merged.append(functools.reduce(operator.add, parts, sn.Substitution()))
            except sn.DomainError:
                continue
        if not merged:
            return "the tokens matching each input arc disagree on shared variables"
        if not any(snakes_transition.guard(mode) for mode in merged):
            return f"the guard {snakes_transition.guard} is false for {dict(binding)}"
        others = [dict(s.binding) for s in self.steps(marking, transition)]
        shown = "; ".join(str(b) for b in others[:5])
        return f"the binding disagrees with every enabled mode: {shown}"

    def _load(self, marking: Marking, transition: str) -> None:
        # Modes and flows read only the input places, so only those are loaded.
        for i in self._inputs[transition]:
            self._net.place(PLACES[i]).tokens = sn.MultiSet(marking.places[i])

    def _compute(self, local: tuple[tuple[Token, ...], ...], transition: str) -> tuple[Step, ...]:
        for (index, _), tokens in zip(self._filters[transition], local, strict=True):
            self._net.place(PLACES[index]).tokens = sn.MultiSet(tokens)
        snakes_transition = self._net.transition(transition)
        public_vars = self._variables[transition]
        steps = []
        for mode in snakes_transition.modes():
            consumed, produced = snakes_transition.flow(mode)
            produced_flow = _flow(produced)
            public: dict[str, str | int] = {}
            for name in mode:
                if name in public_vars:
                    value = mode[name]
                    public[name] = value if isinstance(value, int) else str(value)
            for index, tokens in produced_flow:
                if index == _EPOCH_PLACE:
                    public["epoch"] = int(tokens[0][1])
            steps.append(Step(transition, public, _flow(consumed), produced_flow))
        steps.sort(key=lambda s: sorted(s.binding.items()))
        return tuple(steps)
