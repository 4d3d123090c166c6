"""Bill run (出账): closing a cycle into an invoice (postpaid, hybrid) or a statement (prepaid).

**What an invoice holds.** For account ``A`` and cycle ``C``: one ``USAGE``
line per service with the money part of the cycle's usage (what was posted to
``A/unbilled``), one ``BUNDLE`` line per service showing bundle-covered units
at zero, ``RECURRING`` plan fees prorated by days (:mod:`billing.proration`),
``ONE_OFF`` charges and ``DISCOUNT``/``ADJUSTMENT`` lines given for ``C``,
``LATE_USAGE`` lines for usage of earlier cycles that arrived after their own
invoice was final, and a ``CREDIT`` line applying account credit (never more
than the invoice would otherwise total). Due date: issue time + payment terms.

**Late usage and grace.** Usage belongs to the cycle of its record's start
time. Until ``grace_s`` after the cycle's end the bill run only makes a
``DRAFT``: it posts nothing, may be re-run as often as wanted and picks up
usage that arrives meanwhile. The first run at or after ``end + grace_s``
makes the invoice final (``OPEN``, or ``PAID`` when it totals zero or less),
posts its entries and records per usage class what it billed
(:class:`BillingState`). Usage of a cycle that arrives after its invoice is
final is the difference between the cycle's totals and what was billed; it
lands on the next invoice as ``LATE_USAGE``, for up to ``late_cycles_max``
earlier cycles. A bill run of ``C`` finalises a draft of an earlier cycle
first (its grace has necessarily passed), so nothing is billed twice.

**The unbilled book is the truth.** Given the account's ``Book.UNBILLED``
balance, a final invoice moves all of it except the charges of later cycles:
what the usage totals do not explain (debt a prepaid→postpaid switch moved in,
charges older than the late window) is one more ``LATE_USAGE`` line, "earlier
unbilled charges". A switch to prepaid bills at once: :func:`interim_invoice`.

**Postings** (one entry per kind, all tagged ``cycle_id=C``, refs
``bill:<invoice_id>:<kind>``): usage ``A/unbilled +U`` ↔ ``A/receivable −U``;
recurring ``op/revenue/recurring +F`` ↔ receivable; one-offs
``op/revenue/one_off``; discounts and adjustments ``op/revenue/discount``
(negative) ↔ receivable; credit applied ``A/credit −c`` ↔ receivable ``+c``.
A total below zero (a credit note) goes to ``A/credit`` rather than leaving
the receivable positive. So the receivable postings of an invoice's entries
sum to ``−total`` (:func:`ledger_difference`).

**Idempotency.** Per (account, cycle): the invoice id is
``INV-<cycle>-<account>``; a run for a cycle whose invoice is final returns it
unchanged (``REPLAYED``) with no entries; a draft re-run with nothing new
returns an equal draft.

Prepaid accounts get a :class:`Statement` instead: usage, top-ups and charges
of the cycle, and no receivable.

**Layout.** The values are in :mod:`billing.billrun.model`, the lines of a
bill in :mod:`billing.billrun.lines`, its postings in
:mod:`billing.billrun.postings` and the account view in
:mod:`billing.billrun.view`; their public names are re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from billing.billrun.lines import (
    line_sum,
    lines_before_credit,
    merge_billed,
    statement_of,
    usage_part,
)
from billing.billrun.model import (
    BillingAccount,
    BillingMode,
    BillingState,
    BillOutcome,
    BillResult,
    BillRunConfig,
    BillRunSummary,
    ExtraCharge,
    Statement,
    UsageTotal,
    invoice_id_for,
)
from billing.billrun.postings import invoice_entries, ledger_difference, moved
from billing.billrun.view import billing_account, calendar_cycle, fee_periods
from billing.cycle import Cycle
from billing.invariant import invariant
from billing.invoice import Invoice, InvoiceStatus, LineItem, LineKind
from billing.ledger import Book, Entry, EntryKind, Posting, account_key
from billing.notifications import NotificationKind, make_notification
from billing.switching import InterimBill

__all__ = [
    "BillOutcome",
    "BillResult",
    "BillRunConfig",
    "BillRunSummary",
    "BillingAccount",
    "BillingMode",
    "BillingState",
    "ExtraCharge",
    "Statement",
    "UsageTotal",
    "bill_account",
    "bill_run",
    "billing_account",
    "calendar_cycle",
    "fee_periods",
    "interim_invoice",
    "invoice_id_for",
    "ledger_difference",
]


def _bill_one(
    account: BillingAccount,
    state: BillingState,
    cycle: Cycle,
    at_s: int,
    config: BillRunConfig,
) -> BillOutcome:
    invoice_id = invoice_id_for(account.account_id, cycle.cycle_id)
    lines, deltas = lines_before_credit(account, state, cycle, config)
    pre_credit = line_sum(lines)
    credit = min(max(account.credit_balance, 0), max(pre_credit, 0))
    if credit:
        lines.append(LineItem(kind=LineKind.CREDIT, description="credit applied", amount=-credit))
    total = pre_credit - credit
    final = at_s >= cycle.end_s + config.grace_s
    issued_at_s = at_s
    if not final and state.draft is not None and state.draft.invoice_id == invoice_id:
        issued_at_s = state.draft.issued_at_s  # a re-run of an unchanged draft is equal
    status = InvoiceStatus.DRAFT
    if final:
        status = InvoiceStatus.OPEN if total > 0 else InvoiceStatus.PAID
    invoice = Invoice(
        invoice_id=invoice_id,
        account_id=account.account_id,
        cycle_id=cycle.cycle_id,
        currency=account.currency,
        period_start_s=cycle.start_s,
        period_end_s=cycle.end_s,
        issued_at_s=issued_at_s,
        due_at_s=issued_at_s + config.payment_terms_s,
        lines=tuple(lines),
        total=total,
        status=status,
    )
    if not final:
        return BillOutcome(
            result=BillResult.DRAFT,
            account_id=account.account_id,
            invoices=(invoice,),
            state=replace(state, draft=invoice),
        )
    new_state = BillingState(
        billed=merge_billed(state.billed, deltas, config.late_cycles_max),
        last_final_cycle=cycle.cycle_id,
        draft=None,
    )
    notice = make_notification(
        NotificationKind.INVOICE_ISSUED,
        account_id=account.account_id,
        at_s=at_s,
        cycle_id=cycle.cycle_id,
        subject=invoice_id,
        data={"total": total, "due_at_s": invoice.due_at_s, "currency": account.currency},
    )
    return BillOutcome(
        result=BillResult.ISSUED,
        account_id=account.account_id,
        invoices=(invoice,),
        entries=invoice_entries(invoice, at_s),
        state=new_state,
        notifications=(notice,),
    )


def _currencies_ok(account: BillingAccount) -> bool:
    return all(extra.currency == account.currency for extra in account.extras) and all(
        fee.currency in (None, account.currency) for fee in account.fee_periods
    )


def bill_account(
    account: BillingAccount,
    state: BillingState,
    cycle: Cycle,
    *,
    at_s: int,
    config: BillRunConfig,
    existing: Invoice | None = None,
) -> BillOutcome:
    """Bill ``account`` for ``cycle`` at ``at_s``; ``existing`` is its stored final
    invoice for the cycle, if any (looked up by :func:`invoice_id_for`)."""
    invariant(at_s >= cycle.end_s, f"bill run of {cycle.cycle_id} before its end")
    if account.starts_s is not None and account.starts_s >= cycle.end_s:
        # Not a customer yet in this cycle: neither an invoice nor a statement.
        return BillOutcome(result=BillResult.NOT_STARTED, account_id=account.account_id)
    if account.mode is BillingMode.PREPAID:
        return BillOutcome(
            result=BillResult.STATEMENT,
            account_id=account.account_id,
            statement=statement_of(account, cycle),
        )
    if existing is not None and existing.status is not InvoiceStatus.DRAFT:
        return BillOutcome(
            result=BillResult.REPLAYED, account_id=account.account_id, invoices=(existing,)
        )
    if state.last_final_cycle is not None and state.last_final_cycle >= cycle.cycle_id:
        # Final already, but the caller did not hand the invoice in: nothing to do again.
        return BillOutcome(result=BillResult.REPLAYED, account_id=account.account_id)
    if not _currencies_ok(account):
        return BillOutcome(result=BillResult.CURRENCY_MISMATCH, account_id=account.account_id)
    before: BillOutcome | None = None
    draft = state.draft
    if draft is not None and draft.cycle_id < cycle.cycle_id:
        # An earlier cycle's draft is past its grace by now: finalise it first.
        earlier = cycle
        while earlier.cycle_id > draft.cycle_id:
            earlier = earlier.previous()
        before = _bill_one(account, state, earlier, at_s, config)
        invariant(before.state is not None, "finalising a draft yields a state")
        assert before.state is not None  # for mypy; the invariant above always runs
        state = before.state
        account = replace(
            account,
            credit_balance=account.credit_balance + moved(before, Book.CREDIT),
            unbilled_balance=(
                None
                if account.unbilled_balance is None
                else account.unbilled_balance + moved(before, Book.UNBILLED)
            ),
        )
    outcome = _bill_one(account, state, cycle, at_s, config)
    if before is None:
        return outcome
    return replace(
        outcome,
        invoices=before.invoices + outcome.invoices,
        entries=before.entries + outcome.entries,
        notifications=before.notifications + outcome.notifications,
    )


def bill_run(
    items: Iterable[tuple[BillingAccount, BillingState, Invoice | None]],
    cycle: Cycle,
    *,
    at_s: int,
    config: BillRunConfig,
) -> tuple[list[BillOutcome], BillRunSummary]:
    """Bill many accounts for ``cycle``: one :class:`BillOutcome` per account, in order.

    Each item is an account, its billing state and its stored invoice for the
    cycle (if any). Accounts are independent; a shard persists each outcome
    (or a group of them) in one batch and may stop and resume anywhere, since
    every account's run is idempotent.
    """
    outcomes: list[BillOutcome] = []
    results: dict[BillResult, int] = {}
    invoiced = entries = 0
    for account, state, existing in items:
        outcome = bill_account(account, state, cycle, at_s=at_s, config=config, existing=existing)
        outcomes.append(outcome)
        results[outcome.result] = results.get(outcome.result, 0) + 1
        entries += len(outcome.entries)
        if outcome.result is BillResult.ISSUED:
            invoiced += sum(i.total for i in outcome.invoices if i.cycle_id == cycle.cycle_id)
    summary = BillRunSummary(
        accounts=len(outcomes), results=results, invoiced=invoiced, entries=entries
    )
    return outcomes, summary


def interim_invoice(
    interim: InterimBill,
    account: BillingAccount,
    state: BillingState,
    *,
    config: BillRunConfig,
) -> BillOutcome:
    """The invoice of a switch to prepaid (``billing.switching``): the switch has moved
    ``interim.amount`` from unbilled to receivable (entry ``switch:<request_id>``);
    this bills it at once, applying credit, and records it as billed so the cycle's
    bill run does not bill it again. Idempotent by the switch: the invoice id is
    ``INV-<cycle>-<account>-<request_id>`` and the caller stores it.
    """
    cycle = calendar_cycle(interim.cycle_id, config.tz)
    lines, deltas = usage_part(account, state, cycle, config, interim.amount)
    pre_credit = line_sum(lines)
    credit = min(max(account.credit_balance, 0), max(pre_credit, 0))
    if credit:
        lines.append(LineItem(kind=LineKind.CREDIT, description="credit applied", amount=-credit))
    total = pre_credit - credit
    invoice = Invoice(
        invoice_id=f"{invoice_id_for(account.account_id, interim.cycle_id)}-{interim.request_id}",
        account_id=account.account_id,
        cycle_id=interim.cycle_id,
        currency=account.currency,
        period_start_s=cycle.start_s,
        period_end_s=interim.at_s,
        issued_at_s=interim.at_s,
        due_at_s=interim.at_s + config.payment_terms_s,
        lines=tuple(lines),
        total=total,
        status=InvoiceStatus.OPEN if total > 0 else InvoiceStatus.PAID,
    )
    entries: tuple[Entry, ...] = ()
    if credit:
        entries = (
            Entry(
                ref=f"bill:{invoice.invoice_id}:credit",
                kind=EntryKind.ADJUSTMENT,
                currency=invoice.currency,
                at_s=interim.at_s,
                cycle_id=invoice.cycle_id,
                postings=(
                    Posting(account_key(account.account_id, Book.CREDIT), -credit),
                    Posting(account_key(account.account_id, Book.RECEIVABLE), credit),
                ),
            ),
        )
    notice = make_notification(
        NotificationKind.INVOICE_ISSUED,
        account_id=account.account_id,
        at_s=interim.at_s,
        cycle_id=interim.cycle_id,
        subject=invoice.invoice_id,
        data={"total": total, "due_at_s": invoice.due_at_s, "currency": account.currency},
    )
    new_state = replace(state, billed=merge_billed(state.billed, deltas, config.late_cycles_max))
    return BillOutcome(
        result=BillResult.ISSUED,
        account_id=account.account_id,
        invoices=(invoice,),
        entries=entries,
        state=new_state,
        notifications=(notice,),
    )
