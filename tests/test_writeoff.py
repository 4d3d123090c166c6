"""Write-off: payments pay open invoices oldest first, excess is credit, reversal is exact."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from billing.idempotency import Mark
from billing.invoice import Invoice, InvoiceStatus, LineItem, LineKind
from billing.ledger import Ledger, op_key
from billing.writeoff import (
    Payment,
    WriteoffResult,
    age_invoices,
    allocate,
    apply_payment,
    reverse_payment,
)

EUR = "EUR"
DAY = 86_400


def inv(
    invoice_id: str,
    total: int,
    *,
    due: int,
    issued: int = 0,
    paid: int = 0,
    status: InvoiceStatus = InvoiceStatus.OPEN,
    account: str = "a1",
) -> Invoice:
    return Invoice(
        invoice_id=invoice_id,
        account_id=account,
        cycle_id="2026-11",
        currency=EUR,
        period_start_s=0,
        period_end_s=1,
        issued_at_s=issued,
        due_at_s=due,
        lines=(LineItem(kind=LineKind.USAGE, description="usage", amount=total),),
        total=total,
        paid=paid,
        status=status,
    )


def pay(
    amount: int,
    invoices: list[Invoice],
    *,
    rid: str = "p1",
    at_s: int = 10,
    existing: Mark[Payment] | None = None,
):  # type: ignore[no-untyped-def]
    return apply_payment(
        request_id=rid,
        account_id="a1",
        amount=amount,
        currency=EUR,
        at_s=at_s,
        invoices=invoices,
        existing=existing,
    )


def test_oldest_due_first_then_issue_then_id() -> None:
    """Allocation order is due date, then issue date, then invoice id."""
    invoices = [
        inv("c", 100, due=20, issued=5),
        inv("b", 100, due=20, issued=1),
        inv("a", 100, due=30),
        inv("z", 100, due=10),
    ]
    allocations, excess = allocate(250, invoices)
    assert [(a.invoice_id, a.amount) for a in allocations] == [("z", 100), ("b", 100), ("c", 50)]
    assert excess == 0


def test_partial_payment_and_status() -> None:
    """A payment smaller than the invoice pays part of it: PARTIALLY_PAID."""
    out = pay(40, [inv("i1", 100, due=100)])
    assert out.result is WriteoffResult.APPLIED
    (changed,) = out.invoices
    assert (changed.paid, changed.status) == (40, InvoiceStatus.PARTIALLY_PAID)
    (entry,) = out.entries
    assert entry.amount_for(op_key("cash")) == -40
    assert entry.amount_for("a1/receivable") == 40


def test_excess_becomes_credit() -> None:
    """What is left after all open invoices is posted to the credit book."""
    out = pay(
        150, [inv("i1", 100, due=100), inv("i2", 30, due=50, paid=30, status=InvoiceStatus.PAID)]
    )
    assert out.payment is not None
    assert out.payment.credit == 50
    (entry,) = out.entries
    assert entry.amount_for("a1/credit") == 50
    assert entry.amount_for("a1/receivable") == 100
    assert [i.status for i in out.invoices] == [InvoiceStatus.PAID]


def test_drafts_void_and_other_accounts_are_not_paid() -> None:
    """Draft (grace period), void and foreign invoices take nothing."""
    invoices = [
        inv("d", 100, due=1, status=InvoiceStatus.DRAFT),
        inv("v", 100, due=1, status=InvoiceStatus.VOID),
        inv("x", 100, due=1, account="a2"),
    ]
    out = pay(10, invoices)
    assert out.invoices == ()
    assert out.payment is not None and out.payment.credit == 10


def test_retry_is_replayed_and_changed_retry_is_refused() -> None:
    """Same request id and fields: duplicate; another amount: exists_with_different_amount."""
    first = pay(40, [inv("i1", 100, due=100)])
    (key, stored) = first.marks[0]
    assert key == "p1"
    again = pay(40, [inv("i1", 100, due=100)], existing=stored)  # type: ignore[arg-type]
    assert again.result is WriteoffResult.DUPLICATE
    assert again.entries == () and again.invoices == ()
    assert again.payment == first.payment
    changed = pay(41, [], existing=stored)  # type: ignore[arg-type]
    assert changed.result is WriteoffResult.EXISTS_WITH_DIFFERENT_AMOUNT
    assert changed.entries == ()


def test_non_positive_amount_is_invalid() -> None:
    """Zero and negative payments are refused as values."""
    assert pay(0, []).result is WriteoffResult.INVALID_AMOUNT
    assert pay(-5, []).result is WriteoffResult.INVALID_AMOUNT


def test_payment_after_due_date_crosses_into_overdue_once() -> None:
    """A partial payment after the due date leaves the invoice OVERDUE and says so once."""
    out = pay(10, [inv("i1", 100, due=5)], at_s=10)
    assert out.invoices[0].status is InvoiceStatus.OVERDUE
    assert [n.subject for n in out.notifications] == ["i1"]


def _apply_all(invoices: dict[str, Invoice], changed: tuple[Invoice, ...]) -> None:
    for invoice in changed:
        invoices[invoice.invoice_id] = invoice


def test_reversal_restores_invoices_and_ledger_exactly() -> None:
    """A reversal undoes exactly its payment's allocations and postings, credit included."""
    invoices = {
        i.invoice_id: i
        for i in (
            inv("i1", 100, due=50),
            inv("i2", 70, due=60, paid=20, status=InvoiceStatus.PARTIALLY_PAID),
        )
    }
    before = dict(invoices)
    ledger = Ledger()
    out = pay(200, list(invoices.values()))
    _apply_all(invoices, out.invoices)
    for e in out.entries:
        ledger.append(e)
    assert out.payment is not None and out.payment.credit == 50
    payment_mark = dict(out.marks)["p1"]
    rev = reverse_payment(
        request_id="r1",
        account_id="a1",
        payment_id="p1",
        at_s=20,
        payment_mark=payment_mark,  # type: ignore[arg-type]
        invoices=list(invoices.values()),
        credit_balance=ledger.balance("a1/credit"),
        existing=None,
    )
    assert rev.result is WriteoffResult.REVERSED
    _apply_all(invoices, rev.invoices)
    for e in rev.entries:
        ledger.append(e)
    assert {k: (v.paid, v.status) for k, v in invoices.items()} == {
        k: (v.paid, v.status) for k, v in before.items()
    }
    assert all(balance == 0 for balance in ledger.balances.values())
    assert rev.reversal is not None and rev.reversal.debt == 0
    # The reversal is idempotent by its own id, and the payment cannot be reversed twice.
    marks = dict(rev.marks)
    again = reverse_payment(
        request_id="r1",
        account_id="a1",
        payment_id="p1",
        at_s=21,
        payment_mark=marks["p1"],  # type: ignore[arg-type]
        invoices=list(invoices.values()),
        credit_balance=0,
        existing=marks["r1"],
    )  # type: ignore[arg-type]
    assert again.result is WriteoffResult.DUPLICATE and again.entries == ()
    other = reverse_payment(
        request_id="r2",
        account_id="a1",
        payment_id="p1",
        at_s=21,
        payment_mark=marks["p1"],  # type: ignore[arg-type]
        invoices=list(invoices.values()),
        credit_balance=0,
        existing=None,
    )
    assert other.result is WriteoffResult.ALREADY_REVERSED and other.entries == ()


def test_reversal_of_spent_credit_moves_the_rest_to_debt() -> None:
    """Excess credit already applied elsewhere is owed again, on the debt book."""
    out = pay(150, [inv("i1", 100, due=50)])
    payment_mark = dict(out.marks)["p1"]
    rev = reverse_payment(
        request_id="r1",
        account_id="a1",
        payment_id="p1",
        at_s=20,
        payment_mark=payment_mark,  # type: ignore[arg-type]
        invoices=list(out.invoices),
        credit_balance=20,
        existing=None,
    )
    assert rev.reversal is not None
    assert (rev.reversal.credit_taken, rev.reversal.debt) == (20, 30)
    (entry,) = rev.entries
    assert entry.amount_for("a1/credit") == -20 and entry.amount_for("a1/debt") == -30


def test_unknown_or_foreign_payment_is_refused() -> None:
    """Reversing a payment that does not exist, or of another account, changes nothing."""
    rev = reverse_payment(
        request_id="r1",
        account_id="a1",
        payment_id="nope",
        at_s=1,
        payment_mark=None,
        invoices=[],
        credit_balance=0,
        existing=None,
    )
    assert rev.result is WriteoffResult.UNKNOWN_PAYMENT


def test_age_invoices_marks_overdue_once() -> None:
    """Open invoices past their due date become OVERDUE with one notification each."""
    invoices = [
        inv("i1", 100, due=50),
        inv("i2", 100, due=500),
        inv("i3", 100, due=10, paid=100, status=InvoiceStatus.PAID),
    ]
    changed, notices = age_invoices(invoices, 100)
    assert [i.invoice_id for i in changed] == ["i1"]
    assert changed[0].status is InvoiceStatus.OVERDUE
    assert [n.notification_id for n in notices] == ["a1:payment_overdue:2026-11:i1:0"]
    at_due = age_invoices([inv("i4", 1, due=100)], 100)
    assert len(at_due[0]) == 1  # due_at_s itself is overdue (is_overdue_at uses >=)
    again = age_invoices([changed[0], invoices[1], invoices[2]], 600)
    assert [i.invoice_id for i in again[0]] == ["i2"]


@given(
    totals=st.lists(st.integers(min_value=1, max_value=10_000), min_size=1, max_size=6),
    amount=st.integers(min_value=1, max_value=70_000),
)
def test_allocation_conserves_and_is_oldest_first(totals: list[int], amount: int) -> None:
    """Allocations plus excess equal the payment, and only the last invoice reached is partial."""
    invoices = [inv(f"i{n}", t, due=n) for n, t in enumerate(totals)]
    allocations, excess = allocate(amount, invoices)
    assert sum(a.amount for a in allocations) + excess == amount
    for allocation, invoice in zip(allocations[:-1], invoices, strict=False):
        assert allocation.invoice_id == invoice.invoice_id
        assert allocation.amount == invoice.total
    assert excess == 0 or len(allocations) == len(invoices)
