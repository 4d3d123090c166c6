"""The arithmetic of one rate: tiers, increments, one rounding per tier, connect fee, max cost.

For ``units > 0`` of usage priced by a :class:`~billing.tariffs.model.Rate`:

1. Each tier ``[start, end)`` takes the usage that falls in it,
   ``in_tier = min(units, end) - start`` (nothing if ``units <= start``).
2. ``billed = ceil(in_tier / increment) * increment``. Tier widths are
   multiples of their increment (checked at load), so rounding up never
   reaches into the next tier.
3. The tier costs ``round_scaled(billed * price, rate_unit, decimals, mode)``:
   the exact rational ``billed * price / rate_unit`` micro-units, rounded once.
4. ``total = connect_fee + sum(tier costs)``.
5. If ``max_cost`` is set and ``total > max_cost``: strategy ``cap`` charges
   ``max_cost`` (``capped``); strategy ``disconnect`` charges ``total`` and sets
   ``disconnect`` so charging and fraud control know the call overran.

``units == 0`` costs nothing, not even the connect fee: the connect fee is
charged exactly when some usage is charged in money. A bundle that covers a
whole call therefore leaves nothing to pay; a bundle that covers part of it
leaves the rest, connect fee included (see ``billing.rating.reprice``).
"""

from __future__ import annotations

from dataclasses import dataclass

from billing.invariant import invariant
from billing.money import round_scaled
from billing.rated import TierCharge
from billing.tariffs.model import MaxCostStrategy, Rate, Tier

__all__ = ["Priced", "price", "tier_amount", "units_for_amount"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Priced:
    """The price of some units at one rate, with its pieces."""

    units: int
    amount: int
    billed_units: int
    connect_fee: int
    tiers: tuple[TierCharge, ...]
    capped: bool = False
    disconnect: bool = False


def tier_amount(rate: Rate, tier: Tier, billed_units: int) -> int:
    """Step 3: ``billed_units`` of ``tier`` priced and rounded once, with the rate's rounding."""
    return round_scaled(
        billed_units * tier.price, tier.rate_unit, decimals=rate.decimals, mode=rate.rounding
    )


def price(rate: Rate, units: int) -> Priced:
    """Price ``units`` at ``rate`` exactly as the module docstring says."""
    invariant(units >= 0, f"units must not be negative, got {units}")
    if units == 0:
        return Priced(units=0, amount=0, billed_units=0, connect_fee=0, tiers=())
    pieces: list[TierCharge] = []
    billed_total = 0
    total = rate.connect_fee
    for tier in rate.tiers:
        if units <= tier.start_units:
            break
        upper = units if tier.end_units is None else min(units, tier.end_units)
        in_tier = upper - tier.start_units
        billed = -(-in_tier // tier.increment) * tier.increment
        amount = tier_amount(rate, tier, billed)
        pieces.append(
            TierCharge(
                rate_id=rate.rate_id,
                start_units=tier.start_units,
                units=in_tier,
                billed_units=billed,
                amount=amount,
            )
        )
        billed_total += billed
        total += amount
    capped = disconnect = False
    if rate.max_cost is not None and total > rate.max_cost:
        if rate.max_cost_strategy is MaxCostStrategy.CAP:
            total, capped = rate.max_cost, True
        else:
            disconnect = True
    return Priced(
        units=units,
        amount=total,
        billed_units=billed_total,
        connect_fee=rate.connect_fee,
        tiers=tuple(pieces),
        capped=capped,
        disconnect=disconnect,
    )


def units_for_amount(rate: Rate, amount_micros: int, units_max: int) -> int:
    """The most units in ``[0, units_max]`` whose price is at most ``amount_micros``.

    Prices never fall as units grow (prices are non-negative and tiers only add),
    so a binary search finds the answer in ``log2(units_max)`` pricings. A
    capped rate whose cap fits the amount grants ``units_max``.
    """
    invariant(units_max >= 0, f"units_max must not be negative, got {units_max}")
    if amount_micros < 0:
        return 0
    low, high = 0, units_max
    while low < high:
        middle = (low + high + 1) // 2
        if price(rate, middle).amount <= amount_micros:
            low = middle
        else:
            high = middle - 1
    return low
