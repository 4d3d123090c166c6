"""Invoices and their line items: values produced by a bill run, paid by write-off.

An invoice is immutable; a payment or a status change yields a new instance
(``dataclasses.replace``). ``total`` is what the customer owes for the cycle
(a positive number of micro-units; negative only for a credit note), and
``paid`` what write-off has allocated to it so far.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from billing.invariant import invariant

__all__ = ["Invoice", "InvoiceStatus", "LineItem", "LineKind"]


class LineKind(enum.StrEnum):
    """What a line item bills."""

    USAGE = "usage"  # rated usage of one service, money part
    BUNDLE = "bundle"  # usage covered by a bundle, shown at zero
    RECURRING = "recurring"  # plan fee, prorated by days where partial
    ONE_OFF = "one_off"  # activation fees, equipment, manual charges
    DISCOUNT = "discount"  # negative amounts
    LATE_USAGE = "late_usage"  # usage of an earlier, closed cycle
    CREDIT = "credit"  # account credit applied (negative)
    ADJUSTMENT = "adjustment"


class InvoiceStatus(enum.StrEnum):
    """Life of an invoice. DRAFT invoices are still inside their grace period."""

    DRAFT = "draft"
    OPEN = "open"
    PARTIALLY_PAID = "partially_paid"
    PAID = "paid"
    OVERDUE = "overdue"
    VOID = "void"


@dataclass(frozen=True, slots=True, kw_only=True)
class LineItem:
    """One line of an invoice. ``units`` is in the service's unit where it applies."""

    kind: LineKind
    description: str
    amount: int
    service: str | None = None
    units: int | None = None
    count: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Invoice:
    """An invoice for one account and one cycle."""

    invoice_id: str
    account_id: str
    cycle_id: str
    currency: str
    period_start_s: int
    period_end_s: int
    issued_at_s: int
    due_at_s: int
    lines: tuple[LineItem, ...]
    total: int
    paid: int = 0
    status: InvoiceStatus = InvoiceStatus.OPEN

    def __post_init__(self) -> None:
        invariant(
            self.total == sum(line.amount for line in self.lines),
            f"invoice {self.invoice_id}: total {self.total} != sum of lines",
        )
        invariant(
            0 <= self.paid <= max(self.total, 0),
            f"invoice {self.invoice_id}: paid {self.paid} outside 0..{self.total}",
        )

    @property
    def open_amount(self) -> int:
        """What is still owed on this invoice."""
        return max(self.total, 0) - self.paid

    def is_overdue_at(self, at_s: int) -> bool:
        return self.open_amount > 0 and at_s >= self.due_at_s

    def with_paid(self, paid: int, *, at_s: int) -> Invoice:
        """This invoice with ``paid`` allocated in total, its status recomputed."""
        if paid >= max(self.total, 0):
            status = InvoiceStatus.PAID
        elif at_s >= self.due_at_s:
            status = InvoiceStatus.OVERDUE
        elif paid > 0:
            status = InvoiceStatus.PARTIALLY_PAID
        else:
            status = InvoiceStatus.OPEN
        return replace(self, paid=paid, status=status)
