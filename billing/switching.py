"""Payment-mode switching: prepaid ↔ postpaid ↔ hybrid at any moment, nothing lost.

Rules (docs/billing-rules.md, "Switching"), all in one ``mode_switch`` entry
(ref ``switch:<request_id>``) that only moves money between the account's own
books, so the sum of its books is unchanged:

- **to postpaid** (from prepaid or hybrid): the prepaid balance becomes
  ``Book.CREDIT``, which the bill run applies to the next invoice.
- **from prepaid** (to postpaid or hybrid): offline debt (``Book.DEBT``) moves
  to ``Book.UNBILLED`` so the next invoice bills it.
- **to prepaid** (from postpaid or hybrid): unbilled charges are billed now —
  they move to ``Book.RECEIVABLE`` and the receipt's :class:`InterimBill`
  carries what an interim invoice needs (amount, cycle, credit on hand); the
  bill run turns it into the invoice, applying the account's credit.
- **postpaid → hybrid**: nothing moves; the prepaid balance (zero until a
  top-up) is used first from now on.
- Open reservations keep their funds and credit holds and settle under them.
  Money a reservation releases later (update, terminate, expiry) goes to the
  book of the mode the account has then: prepaid, or ``Book.CREDIT`` on an
  account now postpaid, as the switch moved its prepaid balance
  (``billing.ocs.reservations.release``).
- A new ``credit_limit`` may come with the switch; switching to the current mode
  is ``SWITCHED`` with nothing moved. Closed accounts refuse.

Idempotent by ``request_id`` (fields ``account``, ``mode``, ``amount`` = the
credit limit asked for).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from billing.accounts import (
    AccountState,
    AccountStatus,
    Outcome,
    PaymentMode,
    Result,
)
from billing.charging.config import ChargingConfig, calendar_for
from billing.idempotency import Mark
from billing.ledger import Book, Entry, EntryKind, Posting, account_key
from billing.limits import over_balance_limit
from billing.outcome import applied, replayed

__all__ = ["InterimBill", "Switch", "switch_mode"]

KEEP_LIMIT = -1  # sentinel: leave the credit limit as it is


@dataclass(frozen=True, slots=True, kw_only=True)
class InterimBill:
    """What the interim invoice of a switch to prepaid bills: ``amount`` moved to receivable."""

    account_id: str
    request_id: str
    cycle_id: str
    at_s: int
    amount: int
    credit_on_hand: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Switch:
    """A switch as applied: the modes and what moved between books (positive amounts)."""

    request_id: str
    account_id: str
    from_mode: PaymentMode
    to_mode: PaymentMode
    at_s: int
    prepaid_to_credit: int = 0
    debt_to_unbilled: int = 0
    unbilled_to_receivable: int = 0
    interim: InterimBill | None = None


def switch_mode(
    *,
    request_id: str,
    state: AccountState,
    to_mode: PaymentMode,
    at_s: int,
    existing: Mark[Switch] | None,
    config: ChargingConfig,
    credit_limit: int | None = KEEP_LIMIT,
) -> Outcome[Switch]:
    """Switch ``state``'s account to ``to_mode`` under the module's rules."""
    fields = {"account": state.account.account_id, "mode": to_mode.value, "amount": credit_limit}
    if (early := replayed(existing, fields)) is not None:
        return early
    if state.account.status is AccountStatus.CLOSED:
        return Outcome(result=Result.ACCOUNT_CLOSED)
    if credit_limit is not None and credit_limit < 0 and credit_limit != KEEP_LIMIT:
        return Outcome(result=Result.INVALID_ARGUMENT)
    new = state.copy()
    aid = new.account.account_id
    from_mode = new.account.payment_mode
    cycle_id = calendar_for(config.tz).cycle_of(at_s).cycle_id
    prepaid_to_credit = debt_to_unbilled = unbilled_to_receivable = 0
    if from_mode is not to_mode:
        if to_mode is PaymentMode.POSTPAID and new.prepaid > 0:
            prepaid_to_credit = new.prepaid
        if from_mode is PaymentMode.PREPAID and new.debt < 0:
            debt_to_unbilled = -new.debt
        if to_mode is PaymentMode.PREPAID and new.unbilled < 0:
            unbilled_to_receivable = -new.unbilled
    moves = (
        (Book.PREPAID, Book.CREDIT, prepaid_to_credit),
        (Book.DEBT, Book.UNBILLED, debt_to_unbilled),
        (Book.UNBILLED, Book.RECEIVABLE, unbilled_to_receivable),
    )
    postings: list[Posting] = []
    for source, target, amount in moves:
        if amount:
            # Sign convention: the source gives up what it held (a positive balance falls,
            # a negative one rises), the target takes it over.
            sign = 1 if new.balance(source) > 0 else -1
            new.add(source, -sign * amount)
            new.add(target, sign * amount)
            postings.append(Posting(account_key(aid, source), -sign * amount))
            postings.append(Posting(account_key(aid, target), sign * amount))
    limit = new.account.credit_limit if credit_limit == KEEP_LIMIT else credit_limit
    new.account = replace(new.account, payment_mode=to_mode, credit_limit=limit)
    interim = None
    if unbilled_to_receivable:
        interim = InterimBill(
            account_id=aid,
            request_id=request_id,
            cycle_id=cycle_id,
            at_s=at_s,
            amount=unbilled_to_receivable,
            credit_on_hand=new.credit,
        )
    receipt = Switch(
        request_id=request_id,
        account_id=aid,
        from_mode=from_mode,
        to_mode=to_mode,
        at_s=at_s,
        prepaid_to_credit=prepaid_to_credit,
        debt_to_unbilled=debt_to_unbilled,
        unbilled_to_receivable=unbilled_to_receivable,
        interim=interim,
    )
    if over_balance_limit(*new.balances().values()):
        return Outcome(result=Result.BALANCE_LIMIT)  # a switch merges books: keep them bounded
    entries: tuple[Entry, ...] = ()
    if postings:
        entries = (
            Entry(
                ref=f"switch:{request_id}",
                kind=EntryKind.MODE_SWITCH,
                currency=new.account.currency,
                at_s=at_s,
                postings=tuple(postings),
                cycle_id=cycle_id,
                memo=f"{from_mode.value}->{to_mode.value}",
            ),
        )
    return applied(
        Result.SWITCHED, receipt, request_id=request_id, fields=fields, account=new,
        entries=entries,
    )  # fmt: skip
