"""Invariants that always run, even under ``python -O``.

``assert`` disappears under ``-O``; a broken invariant in a billing system must
crash the actor so that supervision restarts it from durable state.
"""

from __future__ import annotations

__all__ = ["InvariantViolation", "invariant"]


class InvariantViolation(AssertionError):
    """Raised when a programmer-level invariant does not hold (a bug, never bad input)."""


def invariant(condition: object, message: str) -> None:
    """Raise :class:`InvariantViolation` with ``message`` unless ``condition`` is truthy."""
    if not condition:
        raise InvariantViolation(message)
