"""Bill run over the ABM's real account states: charging, switching, then billing."""

from __future__ import annotations

from typing import Any

from test_accounts import T0, World, account, rated

from billing.accounts import PaymentMode
from billing.billrun.run import (
    BillingState,
    BillResult,
    BillRunConfig,
    bill_account,
    billing_account,
    interim_invoice,
    ledger_difference,
)
from billing.charging.batch import charge_batch, top_up
from billing.cycle import DAY_S, cycle_containing
from billing.invoice import LineKind
from billing.switching import switch_mode

CONFIG = BillRunConfig(tz="UTC")
JUNE = cycle_containing(T0, "UTC")
FINAL = JUNE.end_s + CONFIG.grace_s


def _charge(world: World, *records: Any) -> None:
    world.apply(
        charge_batch(
            records,
            accounts=world.states,
            directory={"491": "A"},
            marks=world.marks,
            tariff=world.tariff,
            config=world.config,
            at_s=T0 + DAY_S,
        )
    )


def _bill(world: World) -> Any:
    view = billing_account(world.states["A"], cycle=JUNE, catalogue=None)
    out = bill_account(view, BillingState(), JUNE, at_s=FINAL, config=CONFIG)
    for entry in out.entries:
        world.ledger.append(entry)
        world.states["A"].apply_entry(entry)
    return out


def test_hybrid_invoice_bills_only_the_unbilled_part() -> None:
    """A hybrid account's usage paid from prepaid is not invoiced; the rest is, to the unit."""
    world = World()
    world.add(account("A", PaymentMode.HYBRID), prepaid=100_000)
    _charge(world, rated("r1", 300))  # 0.30: 0.10 prepaid, 0.20 unbilled
    out = _bill(world)
    (invoice,) = out.invoices
    assert [(line.kind, line.amount) for line in invoice.lines] == [(LineKind.USAGE, 200_000)]
    assert ledger_difference(invoice, world.ledger.entries) == 0
    assert world.states["A"].unbilled == 0 and world.states["A"].receivable == -200_000
    assert world.ledger.total() == 0


def test_debt_moved_by_a_switch_is_billed_as_earlier_charges() -> None:
    """Prepaid debt moved to unbilled by a switch to postpaid lands on the invoice."""
    world = World()
    world.add(account("A", PaymentMode.PREPAID), prepaid=100_000)
    _charge(world, rated("r1", 300))  # 0.10 prepaid, 0.20 debt
    world.apply(
        switch_mode(
            request_id="s1",
            state=world.states["A"],
            to_mode=PaymentMode.POSTPAID,
            at_s=T0 + 2 * DAY_S,
            existing=None,
            config=world.config,
        )
    )
    _charge(world, rated("r2", 50))
    (invoice,) = _bill(world).invoices
    assert [(line.kind, line.amount) for line in invoice.lines] == [
        (LineKind.USAGE, 50_000),
        (LineKind.LATE_USAGE, 200_000),
    ]
    assert world.states["A"].unbilled == 0
    assert ledger_difference(invoice, world.ledger.entries) == 0


def test_switch_to_prepaid_gets_an_interim_invoice_billed_once() -> None:
    """The interim invoice bills the usage so far with credit; the bill run does not again."""
    world = World()
    world.add(account("A", PaymentMode.POSTPAID))
    world.apply(
        top_up(
            request_id="t1",
            state=world.states["A"],
            amount=50_000,
            currency="EUR",
            at_s=T0,
            existing=None,
            config=world.config,
        )
    )
    _charge(world, rated("r1", 300))
    out = world.apply(
        switch_mode(
            request_id="s1",
            state=world.states["A"],
            to_mode=PaymentMode.PREPAID,
            at_s=T0 + 2 * DAY_S,
            existing=None,
            config=world.config,
        )
    )
    assert out.receipt is not None and out.receipt.interim is not None
    view = billing_account(world.states["A"], cycle=JUNE, catalogue=None)
    bill = interim_invoice(out.receipt.interim, view, BillingState(), config=CONFIG)
    (invoice,) = bill.invoices
    assert invoice.total == 250_000  # 0.30 usage − 0.05 credit
    for entry in bill.entries:
        world.ledger.append(entry)
        world.states["A"].apply_entry(entry)
    assert ledger_difference(invoice, world.ledger.entries, also_refs=("switch:s1",)) == 0
    assert world.states["A"].receivable == -250_000 and world.states["A"].credit == 0
    assert bill.state is not None
    world.apply(
        switch_mode(
            request_id="s2",
            state=world.states["A"],
            to_mode=PaymentMode.POSTPAID,
            at_s=T0 + 3 * DAY_S,
            existing=None,
            config=world.config,
        )
    )
    view = billing_account(world.states["A"], cycle=JUNE, catalogue=None)
    again = bill_account(view, bill.state, JUNE, at_s=FINAL, config=CONFIG)
    assert again.result is BillResult.ISSUED and again.invoices[0].total == 0
