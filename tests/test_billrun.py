"""Bill run: invoices with usage, bundles, prorated fees, extras and credit, equal to the ledger."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from billing.billrun.run import (
    BillingAccount,
    BillingMode,
    BillingState,
    BillResult,
    BillRunConfig,
    ExtraCharge,
    UsageTotal,
    bill_account,
    bill_run,
    invoice_id_for,
    ledger_difference,
)
from billing.cycle import DAY_S, monthly_cycle
from billing.invoice import InvoiceStatus, LineKind
from billing.ledger import Entry, EntryKind, Ledger, Posting, op_key
from billing.notifications import NotificationKind
from billing.proration import FeePeriod

TZ = "Europe/Berlin"
NOV = monthly_cycle(2026, 11, TZ)
DEC = NOV.next()
CONFIG = BillRunConfig(payment_terms_s=14 * DAY_S, grace_s=3 * DAY_S)
FINAL_NOV = NOV.end_s + 3 * DAY_S
EUR = "EUR"


def at(day: int, month: int = 11) -> int:
    return int(datetime(2026, month, day, 12, tzinfo=ZoneInfo(TZ)).timestamp())


def charge_entry(n: int, amount: int, cycle_id: str = "2026-11", service: str = "voice") -> Entry:
    """What the ABM posts for postpaid usage: revenue ↔ unbilled, tagged with the cycle."""
    return Entry(
        ref=f"r{n}",
        kind=EntryKind.CHARGE,
        currency=EUR,
        at_s=n,
        cycle_id=cycle_id,
        postings=(Posting(op_key(f"revenue/{service}"), amount), Posting("a1/unbilled", -amount)),
    )


def U(*, count: int, units: int, amount: int, bundle_units: int = 0) -> UsageTotal:
    """Postpaid usage: all of its money went to unbilled."""
    return UsageTotal(
        records=count, units=units, bundle_units=bundle_units, amount=amount, unbilled=amount
    )


def account(usage: dict[str, dict[str, UsageTotal]], **kw: object) -> BillingAccount:
    return BillingAccount(
        account_id="a1", currency=EUR, mode=BillingMode.POSTPAID, usage=usage, **kw
    )  # type: ignore[arg-type]


USAGE = {
    "2026-11": {
        "voice.national": U(count=10, units=3600, bundle_units=3000, amount=1_200_000),
        "voice.international": U(count=2, units=120, amount=2_000_000),
        "sms.national": U(count=5, units=5, bundle_units=5, amount=0),
        "data.rg10": U(count=3, units=10**9, amount=4_990_000),
    }
}


def test_invoice_lines_totals_and_due_date() -> None:
    """Usage per service, bundle lines at zero, prorated fee, one-off, discount and credit."""
    acct = account(
        USAGE,
        fee_periods=(FeePeriod(label="Basic", fee=19_990_000, from_s=at(11)),),
        extras=(
            ExtraCharge(
                ref="x1",
                kind=LineKind.ONE_OFF,
                description="SIM",
                amount=5_000_000,
                currency=EUR,
                cycle_id="2026-11",
            ),
            ExtraCharge(
                ref="x2",
                kind=LineKind.DISCOUNT,
                description="promo",
                amount=-1_000_000,
                currency=EUR,
                cycle_id="2026-11",
            ),
        ),
        credit_balance=2_500_000,
    )
    out = bill_account(acct, BillingState(), NOV, at_s=FINAL_NOV, config=CONFIG)
    assert out.result is BillResult.ISSUED
    (invoice,) = out.invoices
    lines = [(line.kind, line.service, line.amount, line.units) for line in invoice.lines]
    assert lines == [
        (LineKind.USAGE, "data", 4_990_000, 10**9),
        (LineKind.BUNDLE, "sms", 0, 5),
        (LineKind.USAGE, "voice", 3_200_000, 720),
        (LineKind.BUNDLE, "voice", 0, 3000),
        (LineKind.RECURRING, None, 13_330_000, None),  # 19.99 × 20/30 → 13.33
        (LineKind.ONE_OFF, None, 5_000_000, None),
        (LineKind.DISCOUNT, None, -1_000_000, None),
        (LineKind.CREDIT, None, -2_500_000, None),
    ]
    # 4.99 + 3.20 + 13.33 + 5.00 − 1.00 − 2.50 = 23.02
    assert invoice.total == 23_020_000
    assert invoice.status is InvoiceStatus.OPEN
    assert invoice.due_at_s == FINAL_NOV + 14 * DAY_S
    assert invoice.invoice_id == invoice_id_for("a1", "2026-11")
    (notice,) = out.notifications
    assert notice.kind is NotificationKind.INVOICE_ISSUED and notice.subject == invoice.invoice_id


def test_invoice_equals_ledger_to_the_minor_unit() -> None:
    """Invoice total = the receivable postings of its cycle's entries; unbilled is emptied."""
    ledger = Ledger(
        [
            charge_entry(1, 1_200_000),
            charge_entry(2, 2_000_000),
            charge_entry(3, 4_990_000, service="data"),
            Entry(
                ref="p0",
                kind=EntryKind.PAYMENT,
                currency=EUR,
                at_s=0,
                postings=(Posting(op_key("cash"), -2_500_000), Posting("a1/credit", 2_500_000)),
            ),
        ]
    )
    acct = account(
        USAGE,
        fee_periods=(FeePeriod(label="Basic", fee=19_990_000, from_s=at(11)),),
        credit_balance=ledger.balance("a1/credit"),
    )
    out = bill_account(acct, BillingState(), NOV, at_s=FINAL_NOV, config=CONFIG)
    for entry in out.entries:
        ledger.append(entry)
        assert entry.cycle_id == "2026-11"
    (invoice,) = out.invoices
    assert ledger_difference(invoice, ledger.entries) == 0
    assert ledger.balance("a1/receivable") == -invoice.total
    assert ledger.balance("a1/unbilled") == 0
    assert ledger.balance("a1/credit") == 0
    assert ledger.total() == 0
    usage_lines = sum(line.amount for line in invoice.lines if line.kind is LineKind.USAGE)
    charged = -sum(
        e.amount_for("a1/unbilled")
        for e in ledger.entries
        if e.kind is EntryKind.CHARGE and e.cycle_id == "2026-11"
    )
    assert usage_lines == charged


def test_bill_run_twice_is_idempotent() -> None:
    """A second run for a final cycle returns the same invoice and posts nothing."""
    first = bill_account(account(USAGE), BillingState(), NOV, at_s=FINAL_NOV, config=CONFIG)
    assert first.state is not None
    again = bill_account(
        account(USAGE),
        first.state,
        NOV,
        at_s=FINAL_NOV + 5,
        config=CONFIG,
        existing=first.invoices[0],
    )
    assert again.result is BillResult.REPLAYED
    assert again.invoices == first.invoices and again.entries == ()
    blind = bill_account(account(USAGE), first.state, NOV, at_s=FINAL_NOV + 5, config=CONFIG)
    assert blind.result is BillResult.REPLAYED and blind.entries == ()


def test_grace_period_draft_picks_up_late_usage() -> None:
    """Inside the grace period the invoice is a draft, posts nothing, and absorbs late usage."""
    draft = bill_account(account(USAGE), BillingState(), NOV, at_s=NOV.end_s + 60, config=CONFIG)
    assert draft.result is BillResult.DRAFT and draft.entries == ()
    assert draft.invoices[0].status is InvoiceStatus.DRAFT
    assert draft.state is not None
    same = bill_account(account(USAGE), draft.state, NOV, at_s=NOV.end_s + 120, config=CONFIG)
    assert same.invoices == draft.invoices
    more = {"2026-11": {**USAGE["2026-11"], "sms.premium": U(count=1, units=1, amount=500_000)}}
    final = bill_account(
        account(more), same.state or BillingState(), NOV, at_s=FINAL_NOV, config=CONFIG
    )
    assert final.result is BillResult.ISSUED
    assert final.invoices[0].total == draft.invoices[0].total + 500_000
    assert final.invoices[0].issued_at_s == FINAL_NOV


def test_late_usage_after_final_lands_on_next_invoice() -> None:
    """Usage of a closed cycle that arrives after its invoice is final is a LATE_USAGE line
    on the next invoice, and is billed once only."""
    nov = bill_account(account(USAGE), BillingState(), NOV, at_s=FINAL_NOV, config=CONFIG)
    assert nov.state is not None
    late = {
        "2026-11": {
            **USAGE["2026-11"],
            "voice.international": U(count=3, units=180, amount=2_700_000),
        },
        "2026-12": {"data.rg10": U(count=1, units=5, amount=1_000_000)},
    }
    dec = bill_account(account(late), nov.state, DEC, at_s=DEC.end_s + 3 * DAY_S, config=CONFIG)
    kinds = [(line.kind, line.amount) for line in dec.invoices[0].lines]
    assert kinds == [(LineKind.USAGE, 1_000_000), (LineKind.LATE_USAGE, 700_000)]
    assert dec.state is not None
    jan = bill_account(
        account(late), dec.state, DEC.next(), at_s=DEC.next().end_s + 3 * DAY_S, config=CONFIG
    )
    assert jan.invoices[0].lines == () and jan.invoices[0].total == 0
    assert jan.invoices[0].status is InvoiceStatus.PAID


def test_earlier_draft_is_finalised_first() -> None:
    """A run for December with November still a draft finalises November first."""
    draft = bill_account(account(USAGE), BillingState(), NOV, at_s=NOV.end_s, config=CONFIG)
    assert draft.state is not None
    dec = bill_account(account(USAGE), draft.state, DEC, at_s=DEC.end_s + 3 * DAY_S, config=CONFIG)
    assert [i.cycle_id for i in dec.invoices] == ["2026-11", "2026-12"]
    assert [i.status for i in dec.invoices] == [InvoiceStatus.OPEN, InvoiceStatus.PAID]
    assert len(dec.notifications) == 2


def test_credit_note_goes_to_credit() -> None:
    """A discount larger than the charges makes a negative invoice whose amount becomes credit."""
    acct = account(
        {},
        extras=(
            ExtraCharge(
                ref="d",
                kind=LineKind.DISCOUNT,
                description="goodwill",
                amount=-3_000_000,
                currency=EUR,
                cycle_id="2026-11",
            ),
        ),
    )
    out = bill_account(acct, BillingState(), NOV, at_s=FINAL_NOV, config=CONFIG)
    ledger = Ledger(out.entries)
    (invoice,) = out.invoices
    assert invoice.total == -3_000_000 and invoice.status is InvoiceStatus.PAID
    assert ledger.balance("a1/credit") == 3_000_000 and ledger.balance("a1/receivable") == 0
    assert ledger_difference(invoice, out.entries) == 0


def test_prepaid_gets_a_statement() -> None:
    """Prepaid accounts get a statement of usage, top-ups and balance, and no postings."""
    acct = BillingAccount(
        account_id="a1",
        currency=EUR,
        mode=BillingMode.PREPAID,
        usage=USAGE,
        topups=20_000_000,
        prepaid_balance=11_810_000,
    )
    out = bill_account(acct, BillingState(), NOV, at_s=FINAL_NOV, config=CONFIG)
    assert out.result is BillResult.STATEMENT and out.entries == () and out.invoices == ()
    assert out.statement is not None
    assert out.statement.usage_charges == 8_190_000
    assert out.statement.topups == 20_000_000


def test_currency_mismatch_is_refused() -> None:
    """An extra charge in another currency is not billed silently."""
    acct = account(
        {},
        extras=(
            ExtraCharge(
                ref="d",
                kind=LineKind.ONE_OFF,
                description="x",
                amount=1,
                currency="USD",
                cycle_id="2026-11",
            ),
        ),
    )
    out = bill_account(acct, BillingState(), NOV, at_s=FINAL_NOV, config=CONFIG)
    assert out.result is BillResult.CURRENCY_MISMATCH and out.entries == ()


def test_batch_bill_run_counts() -> None:
    """The batch API bills every account and sums what it issued."""
    items = [
        (
            BillingAccount(account_id=f"a{i}", currency=EUR, mode=mode, usage=USAGE),
            BillingState(),
            None,
        )
        for i, mode in enumerate([BillingMode.POSTPAID, BillingMode.HYBRID, BillingMode.PREPAID])
    ]
    outcomes, summary = bill_run(items, NOV, at_s=FINAL_NOV, config=CONFIG)
    assert len(outcomes) == 3
    assert summary.results == {BillResult.ISSUED: 2, BillResult.STATEMENT: 1}
    assert summary.invoiced == 2 * 8_190_000
