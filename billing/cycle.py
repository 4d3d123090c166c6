"""Billing cycles: calendar months in the operator's time zone.

A cycle is half-open, ``[start_s, end_s)`` in Unix seconds, and named
``"YYYY-MM"``. Time comes in as parameters; nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from billing.invariant import invariant

__all__ = ["Cycle", "cycle_containing", "monthly_cycle"]

DAY_S = 86_400


@dataclass(frozen=True, slots=True, kw_only=True)
class Cycle:
    """One billing period; ``days`` is its length in calendar days (for proration)."""

    cycle_id: str
    start_s: int
    end_s: int
    days: int
    tz: str

    def __post_init__(self) -> None:
        invariant(self.start_s < self.end_s, f"cycle {self.cycle_id}: empty")

    def contains(self, at_s: int) -> bool:
        return self.start_s <= at_s < self.end_s

    def next(self) -> Cycle:
        year, month = (int(part) for part in self.cycle_id.split("-"))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        return monthly_cycle(year, month, self.tz)

    def previous(self) -> Cycle:
        year, month = (int(part) for part in self.cycle_id.split("-"))
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
        return monthly_cycle(year, month, self.tz)


def monthly_cycle(year: int, month: int, tz: str) -> Cycle:
    """The calendar month ``year-month`` in time zone ``tz``."""
    invariant(1 <= month <= 12, f"month must be 1..12, got {month}")
    zone = ZoneInfo(tz)
    start = datetime(year, month, 1, tzinfo=zone)
    end = (
        datetime(year + 1, 1, 1, tzinfo=zone)
        if month == 12
        else datetime(year, month + 1, 1, tzinfo=zone)
    )
    days = (end.date() - start.date()).days
    return Cycle(
        cycle_id=f"{year:04d}-{month:02d}",
        start_s=int(start.timestamp()),
        end_s=int(end.timestamp()),
        days=days,
        tz=tz,
    )


def cycle_containing(at_s: int, tz: str) -> Cycle:
    """The monthly cycle that contains the instant ``at_s``."""
    local = datetime.fromtimestamp(at_s, ZoneInfo(tz))
    return monthly_cycle(local.year, local.month, tz)
