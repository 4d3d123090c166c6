"""Plan change: an account moves to another plan from a given moment on.

Rules (docs/billing-rules.md, "Plan change"):

- The subscription open at ``at_s`` ends at ``at_s``; a new open-ended
  subscription of the new plan starts at ``at_s``. Nothing else of the account
  changes: its payment mode, credit limit and balances stay, and no money
  moves now. The bill run prorates each plan's recurring fee by days
  (``billing.proration``: the day of the change belongs to the new plan).
- ``at_s`` must be *after* the start of the latest subscription: history is
  not rewritten, and a scheduled change is not reordered. A change at the very
  start would leave an empty subscription, so it is refused too.
- Refused, with nothing written: a closed account (``ACCOUNT_CLOSED``); a plan
  without a version valid at ``at_s`` in the catalogue (``UNKNOWN_PLAN``); a
  plan priced in another currency than the account's (``CURRENCY_MISMATCH``);
  ``at_s`` at or before the latest subscription's start
  (``BEFORE_PLAN_START``); the plan the account is on at ``at_s`` (``SAME_PLAN``).
  A blocked account may change plan.

Idempotent by ``request_id`` over the fields ``account``, ``plan`` and
``time``. ``time`` is ``at_s``, or ``None`` when the caller took ``at_s`` from
its own clock because the request named no time (``at_from_clock``): a retry
that again names no time then replays the first answer instead of conflicting
on a clock that moved on. The receipt is the account as the change left it;
its latest subscription is the new one (:func:`new_subscription`).
"""

from __future__ import annotations

from dataclasses import replace

from billing.accounts import Account, AccountState, AccountStatus, Outcome, Result, Subscription
from billing.idempotency import Mark
from billing.invariant import invariant
from billing.outcome import applied, replayed
from billing.tariffs.model import Catalogue

__all__ = ["change_plan", "new_subscription"]


def new_subscription(account: Account) -> Subscription | None:
    """The subscription that starts last: after a plan change, the one it opened."""
    return max(account.subscriptions, key=lambda s: s.start_s, default=None)


def change_plan(
    *,
    request_id: str,
    state: AccountState,
    plan_id: str,
    at_s: int,
    existing: Mark[Account] | None,
    catalogue: Catalogue | None,
    at_from_clock: bool = False,
) -> Outcome[Account]:
    """Move ``state``'s account to ``plan_id`` from ``at_s`` on, under the module's rules.

    ``catalogue`` is the one the plan is checked against; ``None`` means the
    caller has checked it. Refusals answer the current account as receipt, so
    a caller can say what the plan and its start are.
    """
    account = state.account
    fields = {
        "account": account.account_id,
        "plan": plan_id,
        "time": None if at_from_clock else at_s,
    }
    if (early := replayed(existing, fields)) is not None:
        return early
    if account.status is AccountStatus.CLOSED:
        return Outcome(result=Result.ACCOUNT_CLOSED, receipt=account)
    if not plan_id or at_s < 0:
        return Outcome(result=Result.INVALID_ARGUMENT, receipt=account)
    if catalogue is not None:
        version = catalogue.plan_version(plan_id, at_s)
        if version is None:
            return Outcome(result=Result.UNKNOWN_PLAN, receipt=account)
        if version.currency != account.currency:
            return Outcome(result=Result.CURRENCY_MISMATCH, receipt=account)
    latest = new_subscription(account)
    if latest is not None and at_s <= latest.start_s:
        return Outcome(result=Result.BEFORE_PLAN_START, receipt=account)
    if account.plan_at(at_s) == plan_id:
        return Outcome(result=Result.SAME_PLAN, receipt=account)
    kept = tuple(
        s if s.end_s is not None and s.end_s <= at_s else replace(s, end_s=at_s)
        for s in sorted(account.subscriptions, key=lambda s: s.start_s)
    )
    opened = Subscription(plan_id=plan_id, start_s=at_s)
    new_account = replace(account, subscriptions=(*kept, opened))
    invariant(new_subscription(new_account) == opened, "the new subscription starts last")
    invariant(new_account.plan_at(at_s) == plan_id, "the new plan is in force from at_s")
    new = state.copy()
    new.account = new_account
    return applied(
        Result.UPDATED, new_account, request_id=request_id, fields=fields, account=new, entries=()
    )
