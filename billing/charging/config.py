"""Charging policy and the cycle calendar every charging operation dates its effects with.

:class:`ChargingConfig` carries the operator's choices (time zone of the
monthly cycles, what offline prepaid usage does when the balance is short,
blocking over the credit limit, history length, reminder thresholds).
:func:`calendar_for` hands out one memoised :class:`Calendar` per time zone,
since ``cycle_containing`` costs microseconds and charging asks per record.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from billing.cycle import Cycle, cycle_containing
from billing.reminders import ReminderConfig

__all__ = ["Calendar", "ChargingConfig", "OfflinePolicy", "calendar_for"]


class OfflinePolicy(enum.StrEnum):
    """What an offline prepaid record does when the balance does not cover it."""

    DEBT = "debt"  # post the uncovered part to Book.DEBT (default: the usage happened)
    REJECT = "reject"  # answer REJECTED_OFFLINE; the caller queues the record


@dataclass(frozen=True, slots=True, kw_only=True)
class ChargingConfig:
    """Charging policy. ``tz`` names the operator time zone of the monthly cycles."""

    tz: str = "UTC"
    offline_policy: OfflinePolicy = OfflinePolicy.DEBT
    block_over_limit: bool = False
    history_max: int = 50
    reminders: ReminderConfig = field(default_factory=ReminderConfig)


class Calendar:
    """Cycle lookup with a small memo: ``cycle_containing`` costs microseconds."""

    __slots__ = ("_recent", "tz")

    def __init__(self, tz: str) -> None:
        self.tz = tz
        self._recent: list[Cycle] = []

    def cycle_of(self, at_s: int) -> Cycle:
        for cycle in self._recent:
            if cycle.start_s <= at_s < cycle.end_s:
                return cycle
        found = cycle_containing(at_s, self.tz)
        self._recent.insert(0, found)
        del self._recent[4:]
        return found


_CALENDARS: dict[str, Calendar] = {}


def calendar_for(tz: str) -> Calendar:
    """The shared :class:`Calendar` of ``tz``."""
    cal = _CALENDARS.get(tz)
    if cal is None:
        cal = _CALENDARS[tz] = Calendar(tz)
    return cal
