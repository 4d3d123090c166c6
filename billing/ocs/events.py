"""Online events outside a session: refunds and balance checks.

:func:`refund` gives ``service`` revenue back to the account (idempotent by
``request_id``): to prepaid (prepaid, hybrid) or credit (postpaid), with a
``refund`` entry. :func:`balance_check` is read-only: balances by book, what
can be spent now, and the bundles left this cycle for a quoted usage class.
Direct debit (an immediate event) is ``billing.charging.batch.charge`` with
``offline=False``.
"""

from __future__ import annotations

from dataclasses import dataclass

from billing.accounts import AccountState, AccountStatus, PaymentMode
from billing.bundles import Tariff
from billing.charging.config import ChargingConfig, calendar_for
from billing.charging.rows import revenue_key
from billing.idempotency import Mark
from billing.ledger import Book, Entry, EntryKind, Posting, account_key
from billing.limits import AMOUNT_MAX_MICROS, over_balance_limit
from billing.notifications import Notification
from billing.ocs.reservations import Quote, available_funds
from billing.outcome import Outcome, Result, applied, replayed
from billing.reminders import check_low_balance

__all__ = ["BalanceView", "Refund", "balance_check", "refund"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Refund:
    """A refund as applied: ``amount`` back from ``op/revenue/<service>`` to ``book``."""

    request_id: str
    account_id: str
    amount: int
    service: str
    book: Book
    at_s: int
    # The balance of ``book`` right after the refund: the answer a retry gets back.
    balance_after: int = 0


def refund(
    *,
    request_id: str,
    state: AccountState,
    amount: int,
    service: str,
    reason_ref: str,
    at_s: int,
    existing: Mark[Refund] | None,
    config: ChargingConfig,
) -> Outcome[Refund]:
    """Give ``amount`` of ``service`` revenue back: to prepaid (prepaid, hybrid) or credit
    (postpaid). ``reason_ref`` names what is refunded (a record or session id)."""
    fields = {
        "account": state.account.account_id,
        "amount": amount,
        "content": (service, reason_ref),
    }
    if (early := replayed(existing, fields)) is not None:
        return early
    if state.account.status is AccountStatus.CLOSED:
        return Outcome(result=Result.ACCOUNT_CLOSED)
    if not 0 < amount <= AMOUNT_MAX_MICROS:
        return Outcome(result=Result.INVALID_ARGUMENT)
    new = state.copy()
    book = Book.CREDIT if new.account.payment_mode is PaymentMode.POSTPAID else Book.PREPAID
    new.add(book, amount)
    if over_balance_limit(*new.balances().values()):
        return Outcome(result=Result.BALANCE_LIMIT)
    cycle_id = calendar_for(config.tz).cycle_of(at_s).cycle_id
    entry = Entry(
        ref=f"refund:{request_id}",
        kind=EntryKind.REFUND,
        currency=new.account.currency,
        at_s=at_s,
        postings=(
            Posting(revenue_key(service), -amount),
            Posting(account_key(new.account.account_id, book), amount),
        ),
        cycle_id=cycle_id,
        memo=reason_ref,
    )
    receipt = Refund(
        request_id=request_id,
        account_id=new.account.account_id,
        amount=amount,
        service=service,
        book=book,
        at_s=at_s,
        balance_after=new.balance(book),
    )
    notes: list[Notification] = []
    check_low_balance(new, config.reminders, cycle_id, at_s, notes)
    return applied(
        Result.REFUNDED, receipt, request_id=request_id, fields=fields, account=new,
        entries=(entry,), notifications=notes,
    )  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class BalanceView:
    """A balance check: money by book, what can be spent now, bundles left this cycle."""

    account_id: str
    currency: str
    payment_mode: PaymentMode
    books: tuple[tuple[str, int], ...]
    spendable: int | None
    credit_available: int | None
    bundles_left: tuple[tuple[str, int], ...]


def balance_check(
    state: AccountState,
    *,
    at_s: int,
    tariff: Tariff,
    config: ChargingConfig,
    quote: Quote | None = None,
) -> Outcome[BalanceView]:
    """Read-only: the account's balances; with a ``quote``, the bundles left for its class."""
    cycle_id = calendar_for(config.tz).cycle_of(at_s).cycle_id
    bundles: list[tuple[str, int]] = []
    if quote is not None:
        for bundle in tariff.bundles_for(quote.plan_id, quote.plan_version, quote.usage_class):
            left = state.bundle_remaining(cycle_id, bundle.bundle_id, bundle.units)
            bundles.append((bundle.bundle_id, left))
    view = BalanceView(
        account_id=state.account.account_id,
        currency=state.account.currency,
        payment_mode=state.account.payment_mode,
        books=tuple((book.value, amount) for book, amount in state.balances().items()),
        spendable=available_funds(state),
        credit_available=state.credit_available(),
        bundles_left=tuple(bundles),
    )
    return Outcome(result=Result.BALANCE, receipt=view)
