"""The arithmetic of ``billing.tariffs.pricing`` over columns: every row at its own rate.

Each rate is a row of a :class:`RateTable` (tier ``k``'s start, end, price,
increment and ``rate_unit * step`` as column ``k`` of 2-D arrays), so pricing a
batch gathers each row's parameters by its rate index and runs the five
steps of the scalar arithmetic on whole arrays, tier by tier:

1. ``in_tier = max(min(units, end) - start, 0)`` (``end > start``, so this is
   the scalar's "nothing if ``units <= start``");
2. ``billed = ceil(in_tier / increment) * increment``;
3. ``round_scaled(billed * price, rate_unit, decimals, mode)``: with
   ``den = rate_unit * 10**(6 - decimals)``, ``q, r = divmod(billed * price, den)``
   and ``q`` goes up by one when the mode says so (``up``: ``r > 0``;
   ``half_up``: ``2r >= den``; ``half_even``: ``2r > den``, or ``2r == den``
   and ``q`` odd), then times the step. Amounts are never negative, so the
   magnitude is the value;
4. connect fee plus the tiers, only when ``units > 0``;
5. ``max_cost``: ``cap`` or ``disconnect``.

Everything is int64. A rate whose numbers could overflow that at some
``units`` gets ``units_max`` in the table; rows beyond it (and rows with
negative units, which the scalar refuses) are the caller's to price with the
scalar code. A row of the table past the last rate prices nothing: rejected
rows point there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from billing.money import DECIMALS, RoundingMode
from billing.tariffs.model import MaxCostStrategy, Rate

__all__ = ["PricedColumns", "RateTable", "price_rows"]

I64 = NDArray[np.int64]
_BIG: Final = 2**62  # beyond every start, end, max cost and safe amount
_MODES: Final = (RoundingMode.DOWN, RoundingMode.UP, RoundingMode.HALF_UP, RoundingMode.HALF_EVEN)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class RateTable:
    """Rates as arrays; 2-D arrays are ``[tier, rate]``, so one tier's column is contiguous."""

    rates: tuple[Rate, ...]
    start: I64
    end: I64
    price: I64
    increment: I64
    den: I64
    step: I64
    connect_fee: I64
    mode: NDArray[np.int8]
    max_cost: I64
    cap: NDArray[np.bool_]
    units_max: I64

    @property
    def empty_row(self) -> int:
        """The index of the row that prices nothing (for rejected rows)."""
        return len(self.rates)

    @classmethod
    def build(cls, rates: Sequence[Rate]) -> RateTable:
        tiers_max = max((len(rate.tiers) for rate in rates), default=1)
        size = len(rates) + 1
        start = np.full((tiers_max, size), _BIG, np.int64)
        end = np.full((tiers_max, size), _BIG + 1, np.int64)
        price = np.zeros((tiers_max, size), np.int64)
        increment = np.ones((tiers_max, size), np.int64)
        den = np.ones((tiers_max, size), np.int64)
        step = np.ones(size, np.int64)
        connect_fee = np.zeros(size, np.int64)
        mode = np.zeros(size, np.int8)
        max_cost = np.full(size, _BIG, np.int64)
        cap = np.zeros(size, np.bool_)
        units_max = np.zeros(size, np.int64)
        for r, rate in enumerate(rates):
            step[r] = 10 ** (DECIMALS - rate.decimals)
            connect_fee[r] = rate.connect_fee
            mode[r] = _MODES.index(rate.rounding)
            if rate.max_cost is not None:
                max_cost[r] = rate.max_cost
                cap[r] = rate.max_cost_strategy is MaxCostStrategy.CAP
            units_max[r] = _units_max(rate)
            for k, tier in enumerate(rate.tiers):
                start[k, r] = tier.start_units
                end[k, r] = _BIG + 1 if tier.end_units is None else tier.end_units
                price[k, r] = tier.price
                increment[k, r] = tier.increment
                den[k, r] = tier.rate_unit * int(step[r]) if units_max[r] >= 0 else 1
        return cls(
            rates=tuple(rates),
            start=start,
            end=end,
            price=price,
            increment=increment,
            den=den,
            step=step,
            connect_fee=connect_fee,
            mode=mode,
            max_cost=max_cost,
            cap=cap,
            units_max=units_max,
        )


def _units_max(rate: Rate) -> int:
    """The most units for which no int64 intermediate can overflow; ``-1``: price it scalar.

    With ``units <= units_max`` each ``billed * price`` stays below
    ``2**62 / (tiers + 1)``, so the tiers plus the connect fee stay below
    ``2**62``; ``2 * den`` and every stored amount must fit as well.
    """
    step = 10 ** (DECIMALS - rate.decimals)
    limit = _BIG // (len(rate.tiers) + 1)
    amounts = [rate.connect_fee, rate.max_cost or 0, *(tier.price for tier in rate.tiers)]
    if any(a < 0 or a >= limit for a in amounts):
        return -1
    if any(2 * tier.rate_unit * step >= _BIG or tier.start_units >= _BIG for tier in rate.tiers):
        return -1
    return min(limit // max(tier.price, 1) - tier.increment for tier in rate.tiers)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class PricedColumns:
    """The price of every row; ``tier_*`` are ``[tier, row]``, zero where a tier is not reached."""

    amount: I64
    billed_units: I64
    connect_fee: I64
    capped: NDArray[np.bool_]
    disconnect: NDArray[np.bool_]
    tier_count: NDArray[np.int64]
    tier_start: I64
    tier_units: I64
    tier_billed: I64
    tier_amount: I64


def _round_up(
    q: I64, r: I64, den: I64, mode: NDArray[np.int8], modes: frozenset[int]
) -> NDArray[np.bool_]:
    """Whether ``q`` goes up by one; only the modes present in the batch are computed."""
    up = np.zeros(len(q), np.bool_)
    twice = 2 * r
    if 1 in modes:
        up |= (mode == 1) & (r > 0)
    if 2 in modes:
        up |= (mode == 2) & (twice >= den)
    if 3 in modes:
        up |= (mode == 3) & ((twice > den) | ((twice == den) & (q & 1 == 1)))
    return up


def price_rows(
    table: RateTable,
    rate_row: NDArray[np.intp],
    units: I64,
    *,
    tiers: bool,
    rates_used: NDArray[np.intp] | None = None,
) -> PricedColumns:
    """Price ``units[i]`` at rate ``rate_row[i]`` (``0 <= units <= units_max``) for every row.

    ``tiers``: also keep each tier's piece (four more arrays per tier).
    ``rates_used``: the rate rows that occur, if the caller knows them
    (only their rounding modes are computed).
    """
    count = len(units)
    if rates_used is None:
        rates_used = np.unique(rate_row)
    modes = frozenset(table.mode[rates_used].tolist())
    mode = table.mode[rate_row] if len(modes) > 1 else np.full(count, next(iter(modes), 0), np.int8)
    step = table.step[rate_row]
    kept = table.start.shape[0] if tiers else 0
    tier_start = np.zeros((kept, count), np.int64)
    tier_units = np.zeros((kept, count), np.int64)
    tier_billed = np.zeros((kept, count), np.int64)
    tier_amount = np.zeros((kept, count), np.int64)
    tier_count = np.zeros(count, np.int64)
    billed_total = np.zeros(count, np.int64)
    charged = units > 0
    connect_fee = np.where(charged, table.connect_fee[rate_row], 0)
    total = connect_fee.copy()
    for k in range(table.start.shape[0]):
        start = table.start[k][rate_row]
        reached = units > start
        if not reached.any():
            break
        in_tier = np.maximum(np.minimum(units, table.end[k][rate_row]) - start, 0)
        increment = table.increment[k][rate_row]
        billed = (in_tier + (increment - 1)) // increment * increment
        den = table.den[k][rate_row]
        q, r = np.divmod(billed * table.price[k][rate_row], den)
        q += _round_up(q, r, den, mode, modes)
        amount = q * step
        total += amount
        billed_total += billed
        tier_count += reached
        if tiers:
            tier_start[k] = np.where(reached, start, 0)
            tier_units[k] = in_tier
            tier_billed[k] = billed
            tier_amount[k] = amount
    max_cost = table.max_cost[rate_row]
    over = total > max_cost
    cap = table.cap[rate_row]
    capped = over & cap
    return PricedColumns(
        amount=np.where(capped, max_cost, total),
        billed_units=billed_total,
        connect_fee=connect_fee,
        capped=capped,
        disconnect=over & ~cap,
        tier_count=tier_count,
        tier_start=tier_start,
        tier_units=tier_units,
        tier_billed=tier_billed,
        tier_amount=tier_amount,
    )
