"""Proration of recurring fees by calendar days, with worked examples."""

from __future__ import annotations

import itertools
from datetime import datetime
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from billing.cycle import monthly_cycle
from billing.money import RoundingMode, parse_amount
from billing.proration import FeePeriod, active_days, prorate, prorate_periods

TZ = "Europe/Berlin"
NOV = monthly_cycle(2026, 11, TZ)


def at(day: int, hour: int = 0, month: int = 11) -> int:
    return int(datetime(2026, month, day, hour, tzinfo=ZoneInfo(TZ)).timestamp())


def test_started_on_the_11th_of_november() -> None:
    """19.99 over a 30-day November from the 11th: 20 days, 19.99×20/30 = 13.3266… → 13.33."""
    assert NOV.days == 30
    days = active_days(NOV, at(11, 15), None)
    assert days == 20  # 11th..30th inclusive
    # 19_990_000 × 20 / 30 = 13_326_666.67 micro-units; half_up to 2 decimals = 13.33
    assert prorate(parse_amount("19.99"), days, NOV.days) == parse_amount("13.33")


def test_stop_day_is_not_charged() -> None:
    """A plan stopped on the 20th is charged for the 1st..19th: 19.99×19/30 = 12.6603… → 12.66."""
    days = active_days(NOV, NOV.start_s, at(20, 9))
    assert days == 19
    assert prorate(parse_amount("19.99"), days, NOV.days) == parse_amount("12.66")


def test_full_cycle_costs_the_full_fee() -> None:
    """A subscription active through the cycle (or started earlier) pays the whole fee."""
    days = active_days(NOV, at(3, month=10), None)
    assert days == 30
    assert prorate(parse_amount("19.99"), days, 30) == parse_amount("19.99")


def test_period_outside_the_cycle_has_no_days() -> None:
    """Periods that end before or start after the cycle produce no line."""
    assert active_days(NOV, at(1, month=10), at(1, month=11)) == 0
    assert active_days(NOV, at(1, month=12), None) == 0
    assert prorate_periods(NOV, [FeePeriod(label="x", fee=1, from_s=at(1, month=12))]) == ()


def test_plan_change_mid_cycle_two_lines_add_up() -> None:
    """19.99 → 29.99 on the 16th: 15 days each; exact 9.995 + 14.995 = 24.99.

    Plain rounding would give 10.00 + 15.00 = 25.00, a cent more than the exact
    total. Cumulative rounding gives 10.00 (round 9.995) and then
    round(24.99) − 10.00 = 14.99: the lines add up to the rounded exact total.
    """
    change = at(16, 10)
    lines = prorate_periods(
        NOV,
        [
            FeePeriod(
                label="basic", fee=parse_amount("19.99"), from_s=at(1, month=9), until_s=change
            ),
            FeePeriod(label="plus", fee=parse_amount("29.99"), from_s=change),
        ],
    )
    assert [(line.label, line.days) for line in lines] == [("basic", 15), ("plus", 15)]
    assert [line.amount for line in lines] == [parse_amount("10.00"), parse_amount("14.99")]
    assert sum(line.amount for line in lines) == parse_amount("24.99")


def test_rounding_mode_is_a_parameter() -> None:
    """The mode is named: 13.3266… is 13.32 rounded down and 13.33 rounded up."""
    fee = parse_amount("19.99")
    assert prorate(fee, 20, 30, mode=RoundingMode.DOWN) == parse_amount("13.32")
    assert prorate(fee, 20, 30, mode=RoundingMode.UP) == parse_amount("13.33")
    assert prorate(fee, 20, 30, decimals=4) == parse_amount("13.3267")


def test_february_has_28_days() -> None:
    """Cycle length comes from the calendar: 10.00 from 15 Feb 2026 = 14/28 = 5.00."""
    feb = monthly_cycle(2026, 2, TZ)
    start = int(datetime(2026, 2, 15, tzinfo=ZoneInfo(TZ)).timestamp())
    (line,) = prorate_periods(feb, [FeePeriod(label="p", fee=parse_amount("10"), from_s=start)])
    assert (line.days, line.cycle_days, line.amount) == (14, 28, parse_amount("5.00"))


def test_dst_change_does_not_change_day_count() -> None:
    """October in Berlin has a 25-hour day; it is still 31 calendar days."""
    octo = monthly_cycle(2026, 10, TZ)
    assert octo.days == 31
    assert active_days(octo, octo.start_s, None) == 31


@given(
    fee=st.integers(min_value=0, max_value=10**10),
    cuts=st.lists(st.integers(min_value=2, max_value=30), max_size=5),
)
def test_split_periods_of_one_fee_add_up_to_the_full_fee(fee: int, cuts: list[int]) -> None:
    """However a cycle is cut into back-to-back periods of one fee, the lines sum to that fee
    rounded once."""
    bounds = [NOV.start_s, *(at(day, 7) for day in sorted(set(cuts))), None]
    periods = [
        FeePeriod(label=str(i), fee=fee, from_s=start, until_s=end)
        for i, (start, end) in enumerate(itertools.pairwise(bounds))
        if start is not None
    ]
    lines = prorate_periods(NOV, periods)
    assert sum(line.days for line in lines) == 30
    assert sum(line.amount for line in lines) == prorate(fee, 30, 30)
    for line in lines:
        exact = fee * line.days / 30
        assert abs(line.amount - exact) <= 10_000  # one minor unit at 2 decimals
