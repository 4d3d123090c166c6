"""Proration: a recurring fee for part of a cycle, by calendar days, in exact integers.

**Day rule.** A period ``[from_s, until_s)`` covers the calendar days (in the
cycle's time zone) from the local date of ``from_s`` up to, *not including*,
the local date of ``until_s``, clipped to the cycle. So a plan started at any
time on the 11th is charged from the 11th; a plan stopped at any time on the
20th is charged up to the 19th; on a plan change the day of the change belongs
to the new plan. Back-to-back periods never charge one day twice or miss one.

**Amount rule.** A period of ``d`` days out of a cycle of ``D`` days costs
``fee × d / D``, an exact rational, rounded once by
:func:`billing.money.round_scaled` to the currency's minor unit
(:data:`DEFAULT_DECIMALS`, mode :data:`DEFAULT_MODE` = ``half_up``).

Several periods of one cycle (a plan change, a stop and a restart) are rounded
*cumulatively*: line ``i`` is ``round(Σ exact up to i) − round(Σ exact up to
i−1)``. Each line is then within one minor unit of its own exact value, the
lines add up to the rounded exact total, and periods of one fee that together
cover the whole cycle add up to the full fee, to the minor unit.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final
from zoneinfo import ZoneInfo

from billing.cycle import Cycle
from billing.invariant import invariant
from billing.money import RoundingMode, round_scaled

__all__ = [
    "DEFAULT_DECIMALS",
    "DEFAULT_MODE",
    "FeePeriod",
    "ProratedFee",
    "active_days",
    "prorate",
    "prorate_periods",
]

DEFAULT_DECIMALS: Final = 2
DEFAULT_MODE: Final = RoundingMode.HALF_UP


@dataclass(frozen=True, slots=True, kw_only=True)
class FeePeriod:
    """A recurring ``fee`` (micro-units per full cycle) active over ``[from_s, until_s)``.

    ``until_s`` is ``None`` while the subscription is open-ended.
    """

    label: str
    fee: int
    from_s: int
    until_s: int | None = None
    currency: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ProratedFee:
    """The charge for one :class:`FeePeriod` in one cycle: ``days`` of ``cycle_days``."""

    label: str
    fee: int
    days: int
    cycle_days: int
    amount: int

    @property
    def is_full(self) -> bool:
        return self.days == self.cycle_days


@functools.lru_cache(maxsize=4096)
def _local_day(at_s: int, tz: str) -> int:
    """The proleptic ordinal of the local calendar date of ``at_s`` in ``tz``."""
    return datetime.fromtimestamp(at_s, ZoneInfo(tz)).date().toordinal()


def active_days(cycle: Cycle, from_s: int, until_s: int | None) -> int:
    """Calendar days of ``cycle`` covered by ``[from_s, until_s)`` under the day rule."""
    tz = cycle.tz
    first = _local_day(cycle.start_s, tz)
    start = first if from_s <= cycle.start_s else _local_day(from_s, tz)
    stop = first + cycle.days
    if until_s is not None and until_s < cycle.end_s:
        stop = min(stop, _local_day(until_s, tz))
    return max(0, stop - start)


def prorate(
    fee: int,
    days: int,
    cycle_days: int,
    *,
    decimals: int = DEFAULT_DECIMALS,
    mode: RoundingMode = DEFAULT_MODE,
) -> int:
    """``fee × days / cycle_days`` rounded once to ``decimals`` with ``mode``."""
    invariant(cycle_days > 0, f"cycle_days must be positive, got {cycle_days}")
    invariant(0 <= days <= cycle_days, f"days {days} outside 0..{cycle_days}")
    return round_scaled(fee * days, cycle_days, decimals=decimals, mode=mode)


def prorate_periods(
    cycle: Cycle,
    periods: Sequence[FeePeriod],
    *,
    decimals: int = DEFAULT_DECIMALS,
    mode: RoundingMode = DEFAULT_MODE,
) -> tuple[ProratedFee, ...]:
    """One :class:`ProratedFee` per period with at least one day in ``cycle``.

    Periods are taken in the order given (callers pass them by start time) and
    rounded cumulatively as described in the module docstring.
    """
    lines: list[ProratedFee] = []
    # Every period's exact amount is fee × days / cycle.days: one common denominator,
    # so the running exact sum is an integer numerator over cycle.days.
    numerator = 0
    billed = 0
    for period in periods:
        days = active_days(cycle, period.from_s, period.until_s)
        if days == 0:
            continue
        numerator += period.fee * days
        target = round_scaled(numerator, cycle.days, decimals=decimals, mode=mode)
        lines.append(
            ProratedFee(
                label=period.label,
                fee=period.fee,
                days=days,
                cycle_days=cycle.days,
                amount=target - billed,
            )
        )
        billed = target
    return tuple(lines)
