"""Write-off (销账): applying payments to open invoices, reversing them exactly, ageing.

**Order.** A payment pays the account's open invoices *oldest first*: by due
date, then issue date, then invoice id (a total order, so the allocation is
deterministic). Each invoice takes ``min(open amount, what is left)``, so the
last one reached may be paid partially. Only final invoices are payable
(``OPEN``, ``PARTIALLY_PAID``, ``OVERDUE``); a ``DRAFT`` is still inside its
grace period and ``VOID``/``PAID`` owe nothing.

**Excess.** What is left after the last open invoice becomes account credit
(``Book.CREDIT``); the bill run applies credit to the next invoices.

**Postings.** A payment of ``A`` with allocations ``a_i`` and excess ``c``:
``op/cash −A``, ``<acct>/receivable +Σa_i``, ``<acct>/credit +c``.

**Reversal.** A reversal (its own request id) undoes exactly the allocations
stored in the :class:`Payment` record: each invoice's ``paid`` goes down by its
allocation and its status is recomputed, and the payment entry is mirrored.
The excess is taken back from ``Book.CREDIT`` as far as the credit is still
there; credit the bill run has meanwhile applied to an invoice cannot be taken
back from that invoice, so that part is posted to ``Book.DEBT`` (the customer
owes it again) and reported in :attr:`Reversal.debt`.

**Idempotency.** A payment is keyed by its request id with fields
``account_id``, ``amount``, ``currency``; a retry replays the stored result,
a changed retry is ``exists_with_different_<field>``. A reversal is keyed by
its own request id with ``account_id`` and ``payment_id``; a second reversal
of one payment under another id is ``already_reversed``.

**Ageing.** :func:`age_invoices` marks open invoices past their due date
``OVERDUE`` and emits one "payment overdue" notification per invoice when it
crosses into ``OVERDUE`` (a payment that lands after the due date makes the
same crossing and emits it instead).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from billing.idempotency import Conflict, Mark, Replay, check, mark
from billing.invariant import invariant
from billing.invoice import Invoice, InvoiceStatus
from billing.ledger import Book, Entry, EntryKind, Posting, account_key, op_key
from billing.notifications import Notification, NotificationKind, make_notification

__all__ = [
    "PAYABLE",
    "Allocation",
    "Payment",
    "Reversal",
    "WriteoffOutcome",
    "WriteoffResult",
    "age_invoices",
    "allocate",
    "apply_payment",
    "overdue_notice",
    "payment_order",
    "reverse_payment",
]

PAYABLE = frozenset({InvoiceStatus.OPEN, InvoiceStatus.PARTIALLY_PAID, InvoiceStatus.OVERDUE})
CASH = op_key("cash")


def overdue_notice(invoice: Invoice, at_s: int) -> Notification:
    """The "payment overdue" notification of ``invoice``; its id is one per invoice."""
    return make_notification(
        NotificationKind.PAYMENT_OVERDUE,
        account_id=invoice.account_id,
        at_s=at_s,
        cycle_id=invoice.cycle_id,
        subject=invoice.invoice_id,
        data={"open_amount": invoice.open_amount, "due_at_s": invoice.due_at_s},
    )


class WriteoffResult(enum.StrEnum):
    """Business outcomes of payments and reversals; one to one with the proto enum."""

    APPLIED = "applied"
    REVERSED = "reversed"
    DUPLICATE = "duplicate"
    EXISTS_WITH_DIFFERENT_AMOUNT = "exists_with_different_amount"
    EXISTS_WITH_DIFFERENT_CURRENCY = "exists_with_different_currency"
    EXISTS_WITH_DIFFERENT_CONTENT = "exists_with_different_content"
    INVALID_AMOUNT = "invalid_amount"
    UNKNOWN_PAYMENT = "unknown_payment"
    ALREADY_REVERSED = "already_reversed"


@dataclass(frozen=True, slots=True)
class Allocation:
    """``amount`` micro-units of a payment allocated to invoice ``invoice_id``."""

    invoice_id: str
    amount: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Payment:
    """A payment as applied: what it paid, so it can be reversed exactly.

    Stored as the result of the payment's idempotency mark; ``reversed_by`` is
    set (by a new mark under the same id) once a reversal has undone it.
    """

    payment_id: str
    account_id: str
    currency: str
    amount: int
    at_s: int
    allocations: tuple[Allocation, ...]
    credit: int
    reversed_by: str | None = None

    def __post_init__(self) -> None:
        invariant(
            sum(a.amount for a in self.allocations) + self.credit == self.amount,
            f"payment {self.payment_id}: allocations + credit != amount",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Reversal:
    """A reversal as applied: credit taken back and the part moved to debt."""

    reversal_id: str
    payment_id: str
    account_id: str
    at_s: int
    credit_taken: int
    debt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteoffOutcome:
    """Everything a write-off decided, to persist in one atomic batch.

    ``invoices`` are the changed invoices only; ``marks`` maps an idempotency
    id to the mark to store under it (a reversal also rewrites the payment's
    mark so that its record says who reversed it).
    """

    result: WriteoffResult
    payment: Payment | None = None
    reversal: Reversal | None = None
    invoices: tuple[Invoice, ...] = ()
    entries: tuple[Entry, ...] = ()
    marks: tuple[tuple[str, Mark[Payment] | Mark[Reversal]], ...] = ()
    notifications: tuple[Notification, ...] = ()


def payment_order(invoice: Invoice) -> tuple[int, int, str]:
    """The write-off order: oldest due date first, then issue date, then id."""
    return (invoice.due_at_s, invoice.issued_at_s, invoice.invoice_id)


def allocate(amount: int, invoices: Sequence[Invoice]) -> tuple[tuple[Allocation, ...], int]:
    """Split ``amount`` over payable invoices oldest first; returns allocations and excess."""
    invariant(amount >= 0, f"allocate: negative amount {amount}")
    left = amount
    allocations: list[Allocation] = []
    for invoice in sorted(invoices, key=payment_order):
        if left == 0:
            break
        if invoice.status not in PAYABLE or invoice.open_amount <= 0:
            continue
        take = min(left, invoice.open_amount)
        allocations.append(Allocation(invoice.invoice_id, take))
        left -= take
    return tuple(allocations), left


def _conflict_result(conflict: Conflict) -> WriteoffResult:
    try:
        return WriteoffResult(conflict.reason)
    except ValueError:
        return WriteoffResult.EXISTS_WITH_DIFFERENT_CONTENT


def _crossed_overdue(before: Invoice, after: Invoice, at_s: int) -> tuple[Notification, ...]:
    if after.status is InvoiceStatus.OVERDUE and before.status is not InvoiceStatus.OVERDUE:
        return (overdue_notice(after, at_s),)
    return ()


def apply_payment(
    *,
    request_id: str,
    account_id: str,
    amount: int,
    currency: str,
    at_s: int,
    invoices: Sequence[Invoice],
    existing: Mark[Payment] | None,
) -> WriteoffOutcome:
    """Apply a payment of ``amount`` to ``account_id``'s ``invoices`` (all of the account's).

    Invoices in another currency are not touched; their payments are separate.
    """
    fields = {"account_id": account_id, "amount": amount, "currency": currency}
    decision = check(existing, fields)
    if isinstance(decision, Replay):
        return WriteoffOutcome(result=WriteoffResult.DUPLICATE, payment=decision.result)
    if isinstance(decision, Conflict):
        return WriteoffOutcome(result=_conflict_result(decision))
    if amount <= 0:
        return WriteoffOutcome(result=WriteoffResult.INVALID_AMOUNT)
    mine = [i for i in invoices if i.account_id == account_id and i.currency == currency]
    allocations, excess = allocate(amount, mine)
    by_id = {i.invoice_id: i for i in mine}
    changed: list[Invoice] = []
    notices: list[Notification] = []
    for allocation in allocations:
        before = by_id[allocation.invoice_id]
        after = before.with_paid(before.paid + allocation.amount, at_s=at_s)
        changed.append(after)
        notices.extend(_crossed_overdue(before, after, at_s))
    payment = Payment(
        payment_id=request_id,
        account_id=account_id,
        currency=currency,
        amount=amount,
        at_s=at_s,
        allocations=allocations,
        credit=excess,
    )
    postings = [Posting(CASH, -amount)]
    if amount - excess:
        postings.append(Posting(account_key(account_id, Book.RECEIVABLE), amount - excess))
    if excess:
        postings.append(Posting(account_key(account_id, Book.CREDIT), excess))
    entry = Entry(
        ref=f"payment:{request_id}",
        kind=EntryKind.PAYMENT,
        currency=currency,
        at_s=at_s,
        postings=tuple(postings),
        memo=",".join(f"{a.invoice_id}={a.amount}" for a in allocations),
    )
    return WriteoffOutcome(
        result=WriteoffResult.APPLIED,
        payment=payment,
        invoices=tuple(changed),
        entries=(entry,),
        marks=((request_id, mark(fields, payment)),),
        notifications=tuple(notices),
    )


def reverse_payment(
    *,
    request_id: str,
    account_id: str,
    payment_id: str,
    at_s: int,
    payment_mark: Mark[Payment] | None,
    invoices: Sequence[Invoice],
    credit_balance: int,
    existing: Mark[Reversal] | None,
) -> WriteoffOutcome:
    """Undo exactly the allocations of payment ``payment_id``; ``credit_balance`` is
    the account's current ``Book.CREDIT`` balance in the payment's currency."""
    fields = {"account_id": account_id, "payment_id": payment_id}
    decision = check(existing, fields)
    if isinstance(decision, Replay):
        return WriteoffOutcome(result=WriteoffResult.DUPLICATE, reversal=decision.result)
    if isinstance(decision, Conflict):
        return WriteoffOutcome(result=_conflict_result(decision))
    if payment_mark is None or payment_mark.result.account_id != account_id:
        return WriteoffOutcome(result=WriteoffResult.UNKNOWN_PAYMENT)
    payment = payment_mark.result
    if payment.reversed_by is not None:
        return WriteoffOutcome(result=WriteoffResult.ALREADY_REVERSED, payment=payment)
    by_id: Mapping[str, Invoice] = {i.invoice_id: i for i in invoices}
    changed: list[Invoice] = []
    notices: list[Notification] = []
    for allocation in payment.allocations:
        before = by_id.get(allocation.invoice_id)
        invariant(before is not None, f"reversal {request_id}: invoice {allocation.invoice_id}")
        assert before is not None  # for mypy; the invariant above always runs
        invariant(
            before.paid >= allocation.amount,
            f"reversal {request_id}: invoice {before.invoice_id} paid {before.paid} "
            f"< allocation {allocation.amount}",
        )
        after = before.with_paid(before.paid - allocation.amount, at_s=at_s)
        changed.append(after)
        notices.extend(_crossed_overdue(before, after, at_s))
    credit_taken = min(payment.credit, max(credit_balance, 0))
    debt = payment.credit - credit_taken
    allocated = payment.amount - payment.credit
    postings = [Posting(CASH, payment.amount)]
    if allocated:
        postings.append(Posting(account_key(account_id, Book.RECEIVABLE), -allocated))
    if credit_taken:
        postings.append(Posting(account_key(account_id, Book.CREDIT), -credit_taken))
    if debt:
        postings.append(Posting(account_key(account_id, Book.DEBT), -debt))
    entry = Entry(
        ref=f"reversal:{request_id}",
        kind=EntryKind.PAYMENT_REVERSAL,
        currency=payment.currency,
        at_s=at_s,
        postings=tuple(postings),
        memo=f"reverses payment:{payment_id}",
    )
    reversal = Reversal(
        reversal_id=request_id,
        payment_id=payment_id,
        account_id=account_id,
        at_s=at_s,
        credit_taken=credit_taken,
        debt=debt,
    )
    reversed_payment = replace(payment, reversed_by=request_id)
    return WriteoffOutcome(
        result=WriteoffResult.REVERSED,
        payment=reversed_payment,
        reversal=reversal,
        invoices=tuple(changed),
        entries=(entry,),
        marks=(
            (request_id, mark(fields, reversal)),
            (payment_id, Mark(payment_mark.fields, reversed_payment)),
        ),
        notifications=tuple(notices),
    )


def age_invoices(
    invoices: Sequence[Invoice], at_s: int
) -> tuple[tuple[Invoice, ...], tuple[Notification, ...]]:
    """Mark open invoices past due ``OVERDUE``; returns the changed invoices and one
    "payment overdue" notification for each. Running it again changes nothing."""
    changed: list[Invoice] = []
    notices: list[Notification] = []
    for invoice in sorted(invoices, key=payment_order):
        if invoice.status in (InvoiceStatus.OPEN, InvoiceStatus.PARTIALLY_PAID) and (
            invoice.is_overdue_at(at_s)
        ):
            after = replace(invoice, status=InvoiceStatus.OVERDUE)
            changed.append(after)
            notices.append(overdue_notice(after, at_s))
    return tuple(changed), tuple(notices)
