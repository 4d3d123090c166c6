"""Idempotency: the same operation id gives the same answer, once.

Every write path carries an id (``record_id`` for usage, ``request_id`` for
top-ups, payments, switches and session steps). The first time an id is seen
its request fields and result are kept as a :class:`Mark`. A retry with equal
fields replays the stored result; a retry whose fields differ is a conflict
that names the first differing field, so the caller learns *what* it changed
(``exists_with_different_amount``).

The check is pure: the caller looks the mark up in whatever store it has (a
dict, RocksDB) and passes it in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Conflict", "Fresh", "Mark", "Replay", "check", "mark"]

R = TypeVar("R")

Fields = tuple[tuple[str, object], ...]


@dataclass(frozen=True, slots=True)
class Mark(Generic[R]):
    """What is remembered of a completed operation: its request fields and result."""

    fields: Fields
    result: R


@dataclass(frozen=True, slots=True)
class Fresh:
    """The id has not been seen: apply the operation."""


@dataclass(frozen=True, slots=True)
class Replay(Generic[R]):
    """The id was applied with the same fields: answer ``result`` again, change nothing."""

    result: R


@dataclass(frozen=True, slots=True)
class Conflict:
    """The id was applied with other fields; ``field`` is the first that differs."""

    field: str

    @property
    def reason(self) -> str:
        return f"exists_with_different_{self.field}"


def mark(fields: Mapping[str, object], result: R) -> Mark[R]:
    """Build the mark to store after applying an operation with ``fields``."""
    return Mark(tuple(sorted(fields.items())), result)


def check(existing: Mark[R] | None, fields: Mapping[str, object]) -> Fresh | Replay[R] | Conflict:
    """Decide what to do with a request given the mark stored under its id, if any."""
    if existing is None:
        return Fresh()
    stored = dict(existing.fields)
    for name in sorted(set(stored) | set(fields)):
        if stored.get(name) != fields.get(name):
            return Conflict(name)
    return Replay(existing.result)
