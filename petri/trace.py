"""Trace checking: replay the coordinator's structlog events through the net.

The coordinator names each control step's log event after the transition it
fired, with the binding as fields::

    {"event": "takeover", "shard": "acct-3", "node": "n2", "from_node": "n1", "epoch": 5}

:func:`check_trace` replays such events from an initial marking and reports
the first one the model does not allow. Fields that are not variables of the
transition (timestamps, log level, ...) are ignored; the variables given must
agree with the one enabled mode they select. Events that are not transition
names (``coordinator_started``, ``transition_refused``, ...) are skipped unless
``strict`` is set; a transition of the other storage mode (a ``takeover`` in a
replicated run, a ``promote`` in an unreplicated one) is always rejected.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from petri.marking import Marking, initial_marking
from petri.model import PetriModel, TransitionRefused
from petri.net import TRANSITION_NAMES

__all__ = ["TraceRejection", "TraceResult", "check_trace", "events_from_jsonl"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceRejection:
    """The first event of a trace that the model does not allow."""

    index: int
    event: Mapping[str, Any]
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"event #{self.index} {dict(self.event)} rejected ({self.reason}): {self.detail}"


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceResult:
    """The outcome of a replay: how far it got and, if it stopped, why."""

    steps_accepted: int
    events_skipped: int
    final: Marking
    rejection: TraceRejection | None

    @property
    def ok(self) -> bool:
        """Every transition event was allowed by the model."""
        return self.rejection is None


def events_from_jsonl(text: str) -> list[dict[str, Any]]:
    """The JSON objects of a structlog JSON-lines log; other lines are skipped."""
    events = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            events.append(value)
    return events


def check_trace(
    model: PetriModel,
    events: Iterable[Mapping[str, Any]],
    *,
    initial: Marking | None = None,
    event_key: str = "event",
    strict: bool = False,
) -> TraceResult:
    """Replay ``events`` from ``initial`` (default: the config's initial marking)."""
    marking = initial if initial is not None else initial_marking(model.config)
    accepted = skipped = 0
    for index, event in enumerate(events):
        name = event.get(event_key)
        if not isinstance(name, str) or name not in model.transitions:
            if strict or name in TRANSITION_NAMES:
                rf = model.config.replication_factor
                rejection = TraceRejection(
                    index=index,
                    event=event,
                    reason="unknown_transition",
                    detail=f"{name!r} is not a transition of the net (replication factor {rf})",
                )
                return TraceResult(
                    steps_accepted=accepted,
                    events_skipped=skipped,
                    final=marking,
                    rejection=rejection,
                )
            skipped += 1
            continue
        variables = model.variables(name)
        binding = {k: v for k, v in event.items() if k in variables}
        try:
            marking = model.fire(marking, name, binding)
        except TransitionRefused as refused:
            rejection = TraceRejection(
                index=index, event=event, reason=refused.reason, detail=refused.detail
            )
            return TraceResult(
                steps_accepted=accepted, events_skipped=skipped, final=marking, rejection=rejection
            )
        accepted += 1
    return TraceResult(
        steps_accepted=accepted, events_skipped=skipped, final=marking, rejection=None
    )
