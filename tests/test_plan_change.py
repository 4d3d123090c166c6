"""Plan change on the account (billing.plan_change), and how the bill run prorates it."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.accounts import Account, AccountState, AccountStatus, Result, Subscription
from billing.billrun.run import BillingState, BillRunConfig, bill_account, billing_account
from billing.cycle import monthly_cycle
from billing.idempotency import Mark
from billing.invoice import LineKind
from billing.money import parse_amount
from billing.plan_change import change_plan, new_subscription
from billing.rating import load_catalogue
from billing.tariffs.model import Catalogue, PaymentMode

TZ = "Europe/Berlin"
NOV = monthly_cycle(2026, 11, TZ)
TARIFFS = Path(__file__).resolve().parent.parent / "conf" / "tariffs"
BILLING = BillRunConfig(tz=TZ)


def at(day: int, hour: int = 0, month: int = 11) -> int:
    return int(datetime(2026, month, day, hour, tzinfo=ZoneInfo(TZ)).timestamp())


CATALOGUE = load_catalogue(TARIFFS)  # the sample plans: smart 9.99, business 29.00 (2026)


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return CATALOGUE


def on_smart(
    *,
    currency: str = "EUR",
    status: AccountStatus = AccountStatus.ACTIVE,
    since_s: int = at(1, month=10),
) -> AccountState:
    """A postpaid account on the sample "smart" plan (since 1 October 2026)."""
    return AccountState(
        Account(
            account_id="A",
            currency=currency,
            payment_mode=PaymentMode.POSTPAID,
            status=status,
            subscriptions=(Subscription(plan_id="smart", start_s=since_s),),
            msisdns=("4915100000001",),
        )
    )


def change(
    state: AccountState,
    plan_id: str,
    at_s: int,
    catalogue: Catalogue | None,
    *,
    request_id: str = "pc-1",
    existing: Mark[Account] | None = None,
    at_from_clock: bool = False,
) -> Any:
    return change_plan(
        request_id=request_id, state=state, plan_id=plan_id, at_s=at_s, existing=existing,
        catalogue=catalogue, at_from_clock=at_from_clock,
    )  # fmt: skip


def stored_mark(out: Any) -> Mark[Account]:
    ((_, mark),) = out.effects.marks
    return mark  # type: ignore[no-any-return]


def test_change_ends_the_open_plan_and_opens_the_new_one(catalogue: Catalogue) -> None:
    """The open subscription ends at the change, the new plan starts there; nothing else of
    the account changes and no money moves; the state handed in is left as it was."""
    state = on_smart()
    before = state.account
    out = change(state, "business", at(16, 10), catalogue)
    assert out.result is Result.UPDATED
    (new,) = out.effects.accounts
    assert new.account.subscriptions == (
        Subscription(plan_id="smart", start_s=at(1, month=10), end_s=at(16, 10)),
        Subscription(plan_id="business", start_s=at(16, 10)),
    )
    assert out.receipt == new.account
    assert new_subscription(new.account) == Subscription(plan_id="business", start_s=at(16, 10))
    assert new.account.plan_at(at(16, 10) - 1) == "smart"
    assert new.account.plan_at(at(16, 10)) == "business"
    assert replace(new.account, subscriptions=before.subscriptions) == before
    assert out.effects.entries == () and new.balances() == state.balances()
    assert state.account is before


def test_retry_replays_and_a_changed_retry_names_the_field(catalogue: Catalogue) -> None:
    """Same id and content: DUPLICATE with the first receipt, nothing written. Same id with
    another plan or time: exists_with_different_plan / _time."""
    state = on_smart()
    first = change(state, "business", at(16, 10), catalogue)
    mark = stored_mark(first)
    (changed,) = first.effects.accounts
    # The retry may meet the account as the first call left it: it replays, not SAME_PLAN.
    for seen in (state, changed):
        again = change(seen, "business", at(16, 10), catalogue, existing=mark)
        assert again.result is Result.DUPLICATE and again.receipt == first.receipt
        assert again.effects.accounts == () and again.effects.marks == ()
    plan = change(changed, "smart", at(16, 10), catalogue, existing=mark)
    assert plan.result is Result.EXISTS_WITH_DIFFERENT_PLAN
    time = change(changed, "business", at(17, 10), catalogue, existing=mark)
    assert time.result is Result.EXISTS_WITH_DIFFERENT_TIME


def test_a_retry_that_names_no_time_replays_whatever_the_clock_says(catalogue: Catalogue) -> None:
    """A request that left the time to the caller's clock is the same request when retried
    later: the stored time stays, the retry is a DUPLICATE."""
    state = on_smart()
    first = change(state, "business", at(16, 10), catalogue, at_from_clock=True)
    (changed,) = first.effects.accounts
    later = change(
        changed, "business", at(17, 9), catalogue, existing=stored_mark(first), at_from_clock=True
    )
    assert later.result is Result.DUPLICATE
    assert new_subscription(later.receipt).start_s == at(16, 10)


@pytest.mark.parametrize(
    ("state", "plan_id", "at_s", "result"),
    [
        (on_smart(), "gold", at(16), Result.UNKNOWN_PLAN),
        # "business" has no version before 2026: unknown at that time.
        (on_smart(since_s=0), "business", at(1, month=12) - 400 * 86_400, Result.UNKNOWN_PLAN),
        (on_smart(), "", at(16), Result.INVALID_ARGUMENT),
        (on_smart(currency="USD"), "business", at(16), Result.CURRENCY_MISMATCH),
        (on_smart(status=AccountStatus.CLOSED), "business", at(16), Result.ACCOUNT_CLOSED),
        (on_smart(), "business", at(30, month=9), Result.BEFORE_PLAN_START),
        (on_smart(), "business", at(1, month=10), Result.BEFORE_PLAN_START),
        (on_smart(), "smart", at(16), Result.SAME_PLAN),
    ],
)
def test_refusals_write_nothing(
    catalogue: Catalogue, state: AccountState, plan_id: str, at_s: int, result: Result
) -> None:
    """Unknown plan, wrong currency, closed account, a time at or before the current plan's
    start, the same plan: refused with the account as it is, and nothing to persist."""
    out = change(state, plan_id, at_s, catalogue)
    assert out.result is result
    assert out.receipt == state.account
    assert out.effects.accounts == () and out.effects.marks == ()


def test_a_blocked_account_may_change_plan(catalogue: Catalogue) -> None:
    """Blocking stops usage, not profile changes."""
    out = change(on_smart(status=AccountStatus.BLOCKED), "business", at(16), catalogue)
    assert out.result is Result.UPDATED


def test_a_second_change_must_come_after_the_first(catalogue: Catalogue) -> None:
    """A scheduled change is not reordered: the next one must start after it."""
    (changed,) = change(on_smart(), "business", at(20), catalogue).effects.accounts
    early = change(changed, "smart", at(18), catalogue, request_id="pc-2")
    assert early.result is Result.BEFORE_PLAN_START
    back = change(changed, "smart", at(25), catalogue, request_id="pc-2")
    assert back.result is Result.UPDATED
    assert [s.plan_id for s in back.receipt.subscriptions] == ["smart", "business", "smart"]
    assert back.receipt.subscriptions[1].end_s == at(25)


def test_mid_cycle_change_bills_two_prorated_fees_that_add_up(catalogue: Catalogue) -> None:
    """smart (9.99) → business (29.00) on Monday 16 November at 10:00, 30-day November.

    The day of the change belongs to the new plan: smart 1..15 = 15 days,
    business 16..30 = 15 days.
      smart:    9.99 × 15/30 = 4.995  → round(4.995) = 5.00
      business: 29.00 × 15/30 = 14.50
      total exact 4.995 + 14.50 = 19.495 → 19.50, so the business line is
      round(19.495) − 5.00 = 14.50, and 5.00 + 14.50 = 19.50.
    """
    out = change(on_smart(), "business", at(16, 10), catalogue)
    (state,) = out.effects.accounts
    view = billing_account(state, cycle=NOV, catalogue=catalogue)
    bill = bill_account(view, BillingState(), NOV, at_s=NOV.end_s + BILLING.grace_s, config=BILLING)
    (invoice,) = bill.invoices
    fees = [
        (line.description, line.amount) for line in invoice.lines if line.kind is LineKind.RECURRING
    ]
    assert fees == [
        ("Smart (prepaid) (15/30 days)", parse_amount("5.00")),
        ("Business (postpaid) (15/30 days)", parse_amount("14.50")),
    ]
    assert sum(amount for _, amount in fees) == parse_amount("19.50")


@settings(max_examples=60, deadline=None)
@given(day=st.integers(min_value=2, max_value=30), hour=st.integers(min_value=0, max_value=23))
def test_any_change_day_splits_the_cycle_without_gap_or_overlap(day: int, hour: int) -> None:
    """Whatever day and hour the plan changes, the two fee lines cover the 30 days once and
    add up to the exact total (9.99 × d + 29.00 × (30 − d)) / 30 rounded once."""
    (state,) = change(on_smart(), "business", at(day, hour), CATALOGUE).effects.accounts
    view = billing_account(state, cycle=NOV, catalogue=CATALOGUE)
    bill = bill_account(view, BillingState(), NOV, at_s=NOV.end_s + BILLING.grace_s, config=BILLING)
    (invoice,) = bill.invoices
    fees = [line.amount for line in invoice.lines if line.kind is LineKind.RECURRING]
    assert len(fees) == 2
    smart_days = day - 1
    exact_numerator = parse_amount("9.99") * smart_days + parse_amount("29.00") * (30 - smart_days)
    # half_up to 2 decimals (10_000 micro-units) of numerator / 30.
    cents = (2 * exact_numerator + 30 * 10_000) // (2 * 30 * 10_000)
    assert sum(fees) == cents * 10_000
