"""The ledger postings of an invoice, and the check that they agree with it.

Rules in :mod:`billing.billrun.run` ("Postings"): one entry per part of the
invoice, refs ``bill:<invoice_id>:<part>``, tagged with the invoice's cycle.
"""

from __future__ import annotations

from collections.abc import Iterable

from billing.billrun.model import BillOutcome
from billing.invoice import Invoice, LineKind
from billing.ledger import Book, Entry, EntryKind, Posting, account_key, op_key

__all__ = ["invoice_entries", "ledger_difference", "moved"]

REVENUE_RECURRING = op_key("revenue/recurring")
REVENUE_ONE_OFF = op_key("revenue/one_off")
REVENUE_DISCOUNT = op_key("revenue/discount")

_PARTS: tuple[tuple[str, EntryKind, tuple[LineKind, ...]], ...] = (
    ("usage", EntryKind.BILL, (LineKind.USAGE, LineKind.LATE_USAGE)),
    ("recurring", EntryKind.RECURRING, (LineKind.RECURRING,)),
    ("one_off", EntryKind.ONE_OFF, (LineKind.ONE_OFF,)),
    ("discount", EntryKind.DISCOUNT, (LineKind.DISCOUNT, LineKind.ADJUSTMENT)),
    ("credit", EntryKind.ADJUSTMENT, (LineKind.CREDIT,)),
)
# Operator accounts the parts post against; the customer's own books are per account.
_PART_SOURCES = {
    "recurring": REVENUE_RECURRING,
    "one_off": REVENUE_ONE_OFF,
    "discount": REVENUE_DISCOUNT,
}


def invoice_entries(invoice: Invoice, at_s: int) -> tuple[Entry, ...]:
    """The postings of a final invoice, one entry per kind; see the module docstring."""
    acct = invoice.account_id
    receivable = account_key(acct, Book.RECEIVABLE)
    sums: dict[LineKind, int] = {}
    for line in invoice.lines:
        sums[line.kind] = sums.get(line.kind, 0) + line.amount
    entries: list[Entry] = []
    for name, kind, kinds in _PARTS:
        amount = 0
        for line_kind in kinds:
            amount += sums.get(line_kind, 0)
        if amount:
            source = _PART_SOURCES.get(name) or account_key(
                acct, Book.UNBILLED if name == "usage" else Book.CREDIT
            )
            entries.append(
                Entry(
                    ref=f"bill:{invoice.invoice_id}:{name}",
                    kind=kind,
                    currency=invoice.currency,
                    at_s=at_s,
                    cycle_id=invoice.cycle_id,
                    postings=(Posting(source, amount), Posting(receivable, -amount)),
                )
            )
    if invoice.total < 0:
        # A credit note: what the customer is owed becomes credit, not a positive receivable.
        entries.append(
            Entry(
                ref=f"bill:{invoice.invoice_id}:credit_note",
                kind=EntryKind.ADJUSTMENT,
                currency=invoice.currency,
                at_s=at_s,
                cycle_id=invoice.cycle_id,
                postings=(
                    Posting(receivable, invoice.total),
                    Posting(account_key(acct, Book.CREDIT), -invoice.total),
                ),
            )
        )
    return tuple(entries)


def ledger_difference(
    invoice: Invoice, entries: Iterable[Entry], *, also_refs: Iterable[str] = ()
) -> int:
    """``total`` minus what the ledger says the invoice bills: zero when they agree.

    The ledger side is minus the receivable postings, plus the credit-note
    posting, of the entries the bill run made for this invoice (tagged with its
    cycle and referring to its id), plus entries named in ``also_refs`` (an
    interim invoice's ``switch:<request_id>`` entry, see :func:`interim_invoice`).
    """
    receivable = account_key(invoice.account_id, Book.RECEIVABLE)
    prefix = f"bill:{invoice.invoice_id}:"
    extra = set(also_refs)
    billed = 0
    for entry in entries:
        if entry.ref in extra:
            billed -= entry.amount_for(receivable)
        elif entry.cycle_id == invoice.cycle_id and entry.ref.startswith(prefix):
            if entry.ref.endswith(":credit_note"):
                continue
            billed -= entry.amount_for(receivable)
    return invoice.total - billed


def moved(outcome: BillOutcome, book: Book) -> int:
    key = account_key(outcome.account_id, book)
    return sum(entry.amount_for(key) for entry in outcome.entries)
