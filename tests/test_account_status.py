"""Account status by an operator: every transition, its notification, idempotency."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_accounts import T0, World, account

from billing.account_status import change_status
from billing.accounts import AccountState, AccountStatus, PaymentMode, Result
from billing.charging.config import ChargingConfig
from billing.notifications import NotificationKind

CONFIG = ChargingConfig(tz="Europe/Berlin")
A, B, C = AccountStatus.ACTIVE, AccountStatus.BLOCKED, AccountStatus.CLOSED


def state_in(status: AccountStatus) -> AccountState:
    world = World()
    base = world.add(account("A1", PaymentMode.PREPAID))
    new = base.copy()
    new.account = replace(base.account, status=status)
    return new


def change(state: AccountState, status: AccountStatus, *, rid: str = "r1", reason: str = "why"):
    return change_status(
        request_id=rid, state=state, status=status, reason=reason, at_s=T0, existing=None,
        config=CONFIG,
    )  # fmt: skip


# (now, asked) -> (result, status after, notification kind or None)
TABLE = {
    (A, A): (Result.UPDATED, A, None),
    (A, B): (Result.UPDATED, B, NotificationKind.ACCOUNT_BLOCKED),
    (A, C): (Result.UPDATED, C, NotificationKind.ACCOUNT_CLOSED),
    (B, A): (Result.UPDATED, A, NotificationKind.ACCOUNT_UNBLOCKED),
    (B, B): (Result.UPDATED, B, None),
    (B, C): (Result.UPDATED, C, NotificationKind.ACCOUNT_CLOSED),
    (C, A): (Result.ACCOUNT_CLOSED, C, None),
    (C, B): (Result.ACCOUNT_CLOSED, C, None),
    (C, C): (Result.UPDATED, C, None),
}


@pytest.mark.parametrize(("now", "asked"), sorted(TABLE))
def test_every_transition_of_the_table(now: AccountStatus, asked: AccountStatus) -> None:
    """Each (status now, status asked) gives the documented result, status and notice;
    a refusal writes nothing, a no-change writes only the request's mark."""
    result, after, kind = TABLE[(now, asked)]
    state = state_in(now)
    out = change(state, asked)
    assert out.result is result
    assert state.account.status is now  # the input state is never changed
    states = out.effects.accounts
    assert (states[0].account.status if states else now) is after
    assert [n.kind for n in out.effects.notifications] == ([kind] if kind else [])
    if result is Result.UPDATED:
        assert [key for key, _ in out.effects.explicit_marks] == ["r1"]
        assert out.receipt is not None and out.receipt.status is after
    else:
        assert out.effects.explicit_marks == ()


def test_the_notification_carries_reason_and_the_status_before() -> None:
    """A block by an operator tells the customer why, dated and numbered by the request."""
    out = change(state_in(A), B, rid="desk-7", reason="chargeback under review")
    (note,) = out.effects.notifications
    assert note.subject == "operator:desk-7" and note.account_id == "A1"
    assert note.value("reason") == "chargeback under review" and note.value("from") == "active"
    assert note.at_s == T0 and note.cycle_id == "2024-06"


def test_a_retry_replays_and_another_reason_conflicts() -> None:
    """The same request id replays the first answer; with another reason or status it is
    a conflict naming the content; a long reason is cut to 200 characters."""
    world = World()
    world.add(account("A1", PaymentMode.PREPAID))
    first = world.apply(change(world.states["A1"], B, reason="x" * 500))
    assert first.receipt.status is B
    stored = world.marks["r1"]
    again = change_status(
        request_id="r1", state=world.states["A1"], status=B, reason="x" * 500, at_s=T0 + 9,
        existing=stored, config=CONFIG,
    )  # fmt: skip
    assert again.result is Result.DUPLICATE and again.effects.accounts == ()
    for status, reason in ((B, "other"), (C, "x" * 500)):
        other = change_status(
            request_id="r1", state=world.states["A1"], status=status, reason=reason, at_s=T0,
            existing=stored, config=CONFIG,
        )  # fmt: skip
        assert other.result is Result.EXISTS_WITH_DIFFERENT_CONTENT
    assert dict(stored.fields)["reason"] == "x" * 200


def test_closing_ends_the_plan_so_the_last_fee_is_prorated_and_none_follows() -> None:
    """Smart (9.99 a month) from 1 November, closed on 16 November 2026 (Berlin): the
    November fee is 15 of 30 days, 5.00; December has none; a plan change scheduled for
    December never starts."""
    from pathlib import Path

    from billing.accounts import Subscription
    from billing.billrun.view import fee_periods
    from billing.cycle import monthly_cycle
    from billing.proration import prorate_periods
    from billing.rating import load_catalogue

    catalogue = load_catalogue(Path(__file__).resolve().parent.parent / "conf" / "tariffs")
    nov, dec = (monthly_cycle(2026, m, "Europe/Berlin") for m in (11, 12))
    smart = Subscription(plan_id="smart", start_s=nov.start_s, end_s=dec.start_s + 86_400)
    later = Subscription(plan_id="business", start_s=dec.start_s + 86_400)
    state = state_in(A)
    state.account = replace(state.account, subscriptions=(smart, later))
    closed_at = nov.start_s + 15 * 86_400
    out = change_status(
        request_id="x", state=state, status=C, reason="", at_s=closed_at, existing=None,
        config=CONFIG,
    )  # fmt: skip
    ended = out.effects.accounts[0].account
    assert [(s.start_s, s.end_s) for s in ended.subscriptions] == [
        (nov.start_s, closed_at),
        (later.start_s, later.start_s),
    ]
    (fee,) = prorate_periods(nov, fee_periods(ended, catalogue, nov))
    assert fee.amount == 5_000_000
    assert fee_periods(ended, catalogue, dec) == ()
