"""Top-ups: paying money into an account (rule 6 of ``billing.charging.batch``).

Idempotent by ``request_id`` (fields ``account``, ``amount``, ``currency``):
``op/cash −A``; a prepaid or hybrid account first repays its debt, the rest
goes to ``prepaid``; a postpaid account's top-up goes to ``Book.CREDIT`` (the
bill run applies it to the next invoice). Closed accounts refuse.
"""

from __future__ import annotations

from dataclasses import dataclass

from billing.accounts import AccountState, AccountStatus, PaymentMode
from billing.charging.config import ChargingConfig, calendar_for
from billing.charging.rows import CASH
from billing.idempotency import Mark
from billing.ledger import Book, Entry, EntryKind, Posting, account_key
from billing.limits import AMOUNT_MAX_MICROS, over_balance_limit
from billing.notifications import Notification
from billing.outcome import Outcome, Result, applied, replayed
from billing.reminders import check_credit, check_debt, check_low_balance

__all__ = ["TopUp", "top_up"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TopUp:
    """A top-up as applied: where the money went."""

    request_id: str
    account_id: str
    amount: int
    currency: str
    at_s: int
    to_debt: int
    to_prepaid: int
    to_credit: int


def top_up(
    *,
    request_id: str,
    state: AccountState,
    amount: int,
    currency: str,
    at_s: int,
    existing: Mark[TopUp] | None,
    config: ChargingConfig,
) -> Outcome[TopUp]:
    """Pay ``amount`` into the account (the module docstring says where it goes)."""
    fields = {"account": state.account.account_id, "amount": amount, "currency": currency}
    if (early := replayed(existing, fields)) is not None:
        return early
    if state.account.status is AccountStatus.CLOSED:
        return Outcome(result=Result.ACCOUNT_CLOSED)
    if not 0 < amount <= AMOUNT_MAX_MICROS:
        return Outcome(result=Result.INVALID_ARGUMENT)
    if currency != state.account.currency:
        return Outcome(result=Result.CURRENCY_MISMATCH)
    new = state.copy()
    account_id = new.account.account_id
    to_debt = to_prepaid = to_credit = 0
    if new.account.payment_mode is PaymentMode.POSTPAID:
        to_credit = amount
    else:
        to_debt = min(amount, -new.debt)
        to_prepaid = amount - to_debt
    postings = [Posting(CASH, -amount)]
    for book, part in ((Book.DEBT, to_debt), (Book.PREPAID, to_prepaid), (Book.CREDIT, to_credit)):
        if part:
            postings.append(Posting(account_key(account_id, book), part))
            new.add(book, part)
    if over_balance_limit(*new.balances().values()):
        return Outcome(result=Result.BALANCE_LIMIT)
    cycle_id = calendar_for(config.tz).cycle_of(at_s).cycle_id
    entry = Entry(
        ref=f"topup:{request_id}",
        kind=EntryKind.TOPUP,
        currency=currency,
        at_s=at_s,
        postings=tuple(postings),
        cycle_id=cycle_id,
    )
    notes: list[Notification] = []
    check_low_balance(new, config.reminders, cycle_id, at_s, notes)
    check_debt(new, cycle_id, at_s, notes)
    check_credit(new, config.reminders, cycle_id, at_s, notes)
    receipt = TopUp(
        request_id=request_id,
        account_id=account_id,
        amount=amount,
        currency=currency,
        at_s=at_s,
        to_debt=to_debt,
        to_prepaid=to_prepaid,
        to_credit=to_credit,
    )
    return applied(
        Result.TOPPED_UP, receipt, request_id=request_id, fields=fields, account=new,
        entries=(entry,), notifications=notes,
    )  # fmt: skip
