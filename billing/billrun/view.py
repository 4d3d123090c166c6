"""The bill run's view of an account: usage totals, fee periods and balances from the ABM.

:func:`billing_account` turns an ABM :class:`~billing.accounts.AccountState`
into the :class:`~billing.billrun.model.BillingAccount` the bill run bills;
:func:`fee_periods` splits the subscriptions' plan fees where a plan version
(and so its monthly fee) changes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import cast

from billing.accounts import Account, AccountState, PaymentMode
from billing.billrun.model import BillingAccount, BillingMode, ExtraCharge, UsageTotal
from billing.cycle import Cycle, monthly_cycle
from billing.proration import FeePeriod
from billing.tariffs.model import Catalogue

__all__ = ["billing_account", "calendar_cycle", "fee_periods"]


def calendar_cycle(cycle_id: str, tz: str) -> Cycle:
    """The monthly cycle named ``cycle_id`` in the configured time zone."""
    year, month = (int(part) for part in cycle_id.split("-"))
    return monthly_cycle(year, month, tz)


def fee_periods(
    account: Account, catalogue: Catalogue | None, cycle: Cycle
) -> tuple[FeePeriod, ...]:
    """Recurring fee periods of ``account``'s subscriptions overlapping ``cycle``, split
    where the plan's version (and so its monthly fee) changes, in start order."""
    if catalogue is None:
        return ()
    periods: list[FeePeriod] = []
    subscriptions = account.subscriptions
    if len(subscriptions) > 1:
        subscriptions = tuple(sorted(subscriptions, key=lambda s: s.start_s))
    for sub in subscriptions:
        if sub.start_s >= cycle.end_s or (sub.end_s is not None and sub.end_s <= cycle.start_s):
            continue
        periods.extend(_plan_periods(catalogue, sub.plan_id, sub.start_s, sub.end_s, cycle))
    return tuple(periods)


@functools.lru_cache(maxsize=4096)
def _plan_periods(
    catalogue: Catalogue, plan_id: str, start_s: int, end_s: int | None, cycle: Cycle
) -> tuple[FeePeriod, ...]:
    # Memoised: most subscriptions of a cycle share a plan and a start before the cycle.
    plan = catalogue.plans.get(plan_id)
    if plan is None:
        return ()
    periods: list[FeePeriod] = []
    for version in plan.versions:
        start = max(start_s, version.valid_from_s, cycle.start_s)
        ends = [e for e in (end_s, version.valid_until_s) if e is not None]
        end = min([*ends, cycle.end_s])
        if start >= end or version.monthly_fee == 0:
            continue
        periods.append(
            FeePeriod(
                label=plan.name or plan.plan_id,
                fee=version.monthly_fee,
                from_s=start,
                until_s=None if end >= cycle.end_s else end,
                currency=version.currency,
            )
        )
    return tuple(periods)


_MODES = {PaymentMode(mode.value): mode for mode in BillingMode}


def billing_account(
    state: AccountState,
    *,
    cycle: Cycle,
    catalogue: Catalogue | None,
    extras: Sequence[ExtraCharge] = (),
    topups: int = 0,
) -> BillingAccount:
    """The bill run's view of an ABM :class:`~billing.accounts.AccountState`."""
    account = state.account
    usage: dict[str, dict[str, UsageTotal]] = {}
    for (cycle_id, usage_class), totals in state.usage.items():
        per = usage.get(cycle_id)
        if per is None:
            per = usage[cycle_id] = {}
        # The ABM's 5-tuples are UsageTotal field for field; the bill run reads them
        # by index, so they are passed through without a copy.
        per[usage_class] = cast(UsageTotal, totals)
    return BillingAccount(
        account_id=account.account_id,
        currency=account.currency,
        mode=_MODES[account.payment_mode],
        usage=usage,
        fee_periods=fee_periods(account, catalogue, cycle),
        extras=extras,
        credit_balance=state.credit,
        unbilled_balance=state.unbilled,
        prepaid_balance=state.prepaid,
        topups=topups,
        starts_s=min((s.start_s for s in account.subscriptions), default=None),
    )
