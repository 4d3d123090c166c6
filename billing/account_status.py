"""Account status set by an operator: block, unblock, close; idempotent, with a reason.

Transitions (docs/billing-rules.md, "Account status"); a row is the status
now, a column the status asked for:

============  ===============  ===============  ===============
now \\ asked  active (unblock)  blocked (block)  closed (close)
============  ===============  ===============  ===============
active        nothing          blocked          closed
blocked       active           nothing          closed
closed        account_closed   account_closed   nothing
============  ===============  ===============  ===============

A change stores one notification (``account_blocked``, ``account_unblocked``
or ``account_closed``, subject ``operator:<request_id>``, data ``reason`` and
``from``) in the same batch. "Nothing" is ``UPDATED`` with the account as it
is and no notification; the request is still marked, so its retry replays.
Closing is final: a closed account refuses new usage (``account_closed``),
online and offline, and any further status change; its balances, invoices
and payments stay where they are. Closing also ends the account's plan
subscriptions at ``at_s`` (one that would start later never starts), so bill
runs prorate the last fee to the close and charge none after it.

Idempotent by ``request_id`` over the fields ``account``, ``content`` (the
status asked for) and ``reason``: the same id with another status or reason
is ``exists_with_different_content``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from billing.accounts import (
    Account,
    AccountState,
    AccountStatus,
    Effects,
    Outcome,
    Result,
    Subscription,
)
from billing.charging.config import ChargingConfig, calendar_for
from billing.idempotency import Mark, mark
from billing.notifications import NotificationKind, make_notification
from billing.outcome import replayed

__all__ = ["REASON_CHARS_MAX", "change_status"]

#: The longest reason kept (a reason is for a person; longer text is cut).
REASON_CHARS_MAX: Final = 200

_KIND: Final = {
    AccountStatus.ACTIVE: NotificationKind.ACCOUNT_UNBLOCKED,
    AccountStatus.BLOCKED: NotificationKind.ACCOUNT_BLOCKED,
    AccountStatus.CLOSED: NotificationKind.ACCOUNT_CLOSED,
}


def _ended(subscriptions: tuple[Subscription, ...], at_s: int) -> tuple[Subscription, ...]:
    """The subscriptions ending at ``at_s`` at the latest (an ended one keeps its end; one
    starting later ends where it starts, so it never runs)."""
    return tuple(
        s if s.end_s is not None and s.end_s <= at_s else replace(s, end_s=max(at_s, s.start_s))
        for s in subscriptions
    )


def change_status(
    *,
    request_id: str,
    state: AccountState,
    status: AccountStatus,
    reason: str,
    at_s: int,
    existing: Mark[Account] | None,
    config: ChargingConfig,
) -> Outcome[Account]:
    """Move ``state``'s account to ``status`` under the module's rules."""
    account = state.account
    reason = reason[:REASON_CHARS_MAX]
    fields = {"account": account.account_id, "content": status.value, "reason": reason}
    if (early := replayed(existing, fields)) is not None:
        return early
    current = account.status
    if current is AccountStatus.CLOSED and status is not AccountStatus.CLOSED:
        return Outcome(result=Result.ACCOUNT_CLOSED, receipt=account)
    marks = ((request_id, mark(fields, account)),)
    if current is status:
        return Outcome(
            result=Result.UPDATED, receipt=account, effects=Effects(explicit_marks=marks)
        )
    new_account = replace(account, status=status)
    if status is AccountStatus.CLOSED:
        new_account = replace(new_account, subscriptions=_ended(account.subscriptions, at_s))
    new = state.copy()
    new.account = new_account
    note = make_notification(
        _KIND[status],
        account_id=account.account_id,
        at_s=at_s,
        cycle_id=calendar_for(config.tz).cycle_of(at_s).cycle_id,
        subject=f"operator:{request_id}",
        data={"reason": reason, "from": current.value},
    )
    return Outcome(
        result=Result.UPDATED,
        receipt=new_account,
        effects=Effects(
            accounts=(new,),
            explicit_marks=((request_id, mark(fields, new_account)),),
            notifications=(note,),
        ),
    )
