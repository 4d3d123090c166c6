"""Stateful property test of the billing core: charging, top-ups, sessions, switches,
bill runs, payments and reversals across a few accounts, with the invariants checked
after every step (money conserved, books = ledger, idempotency, invoices = ledger)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from test_accounts import T0, FakeTariff, account, rated

from billing.accounts import AccountState, Outcome, PaymentMode
from billing.billrun.run import (
    BillingState,
    BillRunConfig,
    bill_account,
    billing_account,
    interim_invoice,
    invoice_id_for,
    ledger_difference,
)
from billing.bundles import Bundle
from billing.charging.batch import ChargingConfig, charge_batch, top_up
from billing.cycle import DAY_S, cycle_containing
from billing.idempotency import Mark
from billing.invoice import Invoice, InvoiceStatus
from billing.ledger import Entry, Ledger, replay
from billing.ocs.session import Quote, session_initial, session_terminate
from billing.records import Service
from billing.switching import switch_mode
from billing.writeoff import (
    PAYABLE,
    WriteoffOutcome,
    apply_payment,
    payment_order,
    reverse_payment,
)

ACCOUNTS = {"A": PaymentMode.PREPAID, "B": PaymentMode.POSTPAID, "C": PaymentMode.HYBRID}
MSISDN = {"A": "4901", "B": "4902", "C": "4903"}
CHARGING = ChargingConfig(tz="UTC")
BILLING = BillRunConfig(tz="UTC", grace_s=3 * DAY_S, payment_terms_s=14 * DAY_S)
QUOTE = Quote(
    service="voice", usage_class="voice.national", price_key="voice", plan_id="p", plan_version="1"
)
TARIFF = FakeTariff(
    (Bundle(bundle_id="b60", usage_classes=("voice.national",), units=60, unit="seconds"),)
)

account_ids = st.sampled_from(sorted(ACCOUNTS))
amounts = st.integers(min_value=1, max_value=5_000_000)


class Core(RuleBasedStateMachine):
    """A one-shard world applying every outcome the way the shard actor would."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = T0
        self.states: dict[str, AccountState] = {}
        for aid, mode in ACCOUNTS.items():
            self.states[aid] = AccountState(account(aid, mode, limit=None, msisdn=MSISDN[aid]))
        self.marks: dict[str, Mark[Any]] = {}
        self.ledger = Ledger()
        self.invoices: dict[str, Invoice] = {}
        self.also_refs: dict[str, tuple[str, ...]] = {}
        self.billing: dict[str, BillingState] = {aid: BillingState() for aid in ACCOUNTS}
        self.payments: list[tuple[str, str]] = []
        self.sessions: list[tuple[str, str]] = []
        self.replays: list[Callable[[], tuple[Entry, ...]]] = []
        self.n = 0

    # -- applying effects -------------------------------------------------------------

    def next_id(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def post(self, entries: tuple[Entry, ...]) -> None:
        """Append entries to the ledger and to the books of the accounts they touch."""
        for entry in entries:
            self.ledger.append(entry)
            for aid in {p.account.split("/")[0] for p in entry.postings} & set(self.states):
                state = self.states[aid].copy()
                state.apply_entry(entry)
                self.states[aid] = state

    def apply(self, outcome: Outcome[Any]) -> Outcome[Any]:
        effects = outcome.effects
        for state in effects.accounts:
            self.states[state.account_id] = state
        self.marks.update(dict(effects.marks))
        for entry in effects.entries:
            self.ledger.append(entry)
        return outcome

    def apply_writeoff(self, outcome: WriteoffOutcome) -> None:
        for invoice in outcome.invoices:
            self.invoices[invoice.invoice_id] = invoice
        self.marks.update(dict(outcome.marks))
        self.post(outcome.entries)

    def invoices_of(self, aid: str) -> list[Invoice]:
        return [i for i in self.invoices.values() if i.account_id == aid]

    # -- rules ------------------------------------------------------------------------

    @rule(days=st.integers(min_value=0, max_value=5), hours=st.integers(0, 23))
    def advance(self, days: int, hours: int) -> None:
        self.clock += days * DAY_S + hours * 3600

    @rule(
        aid=account_ids,
        units=st.lists(st.integers(1, 400), min_size=1, max_size=4),
        late_days=st.integers(0, 6),
        data=st.booleans(),
    )
    def charge(self, aid: str, units: list[int], late_days: int, data: bool) -> None:
        service, usage_class = (
            (Service.DATA, "data.rg1") if data else (Service.VOICE, "voice.national")
        )
        records = [
            rated(
                self.next_id("r"),
                n * (1000 if data else 1),
                msisdn=MSISDN[aid],
                service=service,
                usage_class=usage_class,
                at_s=self.clock - late_days * DAY_S,
            )
            for n in units
        ]

        def run() -> Outcome[Any]:
            return charge_batch(
                records,
                accounts=self.states,
                directory={v: k for k, v in MSISDN.items()},
                marks=self.marks,
                tariff=TARIFF,
                config=CHARGING,
                at_s=self.clock,
            )

        self.apply(run())
        self.replays.append(lambda: run().effects.entries)

    @rule(aid=account_ids, amount=amounts)
    def topup(self, aid: str, amount: int) -> None:
        rid = self.next_id("t")

        def run() -> Outcome[Any]:
            return top_up(
                request_id=rid,
                state=self.states[aid],
                amount=amount,
                currency="EUR",
                at_s=self.clock,
                existing=self.marks.get(rid),
                config=CHARGING,
            )

        self.apply(run())
        self.replays.append(lambda: run().effects.entries)

    @rule(aid=account_ids, units=st.integers(1, 300))
    def open_session(self, aid: str, units: int) -> None:
        sid = self.next_id("s")
        out = self.apply(
            session_initial(
                request_id=f"{sid}:i",
                state=self.states[aid],
                session_id=sid,
                quote=QUOTE,
                requested_units=units,
                validity_s=3600,
                at_s=self.clock,
                existing=self.marks.get(f"{sid}:i"),
                tariff=TARIFF,
                config=CHARGING,
            )
        )
        if sid in self.states[aid].reservations:
            self.sessions.append((aid, sid))
        del out

    @rule(data=st.data(), used=st.integers(0, 400))
    def close_session(self, data: st.DataObject, used: int) -> None:
        if not self.sessions:
            return
        aid, sid = self.sessions.pop(data.draw(st.integers(0, len(self.sessions) - 1)))
        self.apply(
            session_terminate(
                request_id=f"{sid}:t",
                state=self.states[aid],
                session_id=sid,
                used_units=used,
                at_s=self.clock,
                existing=self.marks.get(f"{sid}:t"),
                tariff=TARIFF,
                config=CHARGING,
            )
        )

    @rule(aid=account_ids, mode=st.sampled_from(list(PaymentMode)))
    def switch(self, aid: str, mode: PaymentMode) -> None:
        rid = self.next_id("w")
        out = self.apply(
            switch_mode(
                request_id=rid,
                state=self.states[aid],
                to_mode=mode,
                at_s=self.clock,
                existing=self.marks.get(rid),
                config=CHARGING,
            )
        )
        switch = out.receipt
        if switch is not None and switch.interim is not None:
            view = billing_account(
                self.states[aid], cycle=cycle_containing(self.clock, "UTC"), catalogue=None
            )
            event("interim invoice")
            bill = interim_invoice(switch.interim, view, self.billing[aid], config=BILLING)
            for invoice in bill.invoices:
                self.invoices[invoice.invoice_id] = invoice
                self.also_refs[invoice.invoice_id] = (f"switch:{rid}",)
            assert bill.state is not None
            self.billing[aid] = bill.state
            self.post(bill.entries)

    @rule(into_next=st.booleans(), days=st.integers(0, 6))
    def bill_run(self, into_next: bool, days: int) -> None:
        """Optionally move into the next cycle (inside or past the grace period), then bill
        the cycle before the clock's."""
        if into_next:
            self.clock = max(self.clock, cycle_containing(self.clock, "UTC").end_s + days * DAY_S)
        cycle = cycle_containing(self.clock, "UTC").previous()
        for aid in ACCOUNTS:
            state = self.states[aid]
            view = billing_account(state, cycle=cycle, catalogue=None)
            existing = self.invoices.get(invoice_id_for(aid, cycle.cycle_id))
            out = bill_account(
                view, self.billing[aid], cycle, at_s=self.clock, config=BILLING, existing=existing
            )
            event(f"bill run: {out.result.value}")
            for invoice in out.invoices:
                self.invoices[invoice.invoice_id] = invoice
            if out.state is not None:
                self.billing[aid] = out.state
            self.post(out.entries)
            at_s = self.clock

            def again(aid: str = aid, at_s: int = at_s) -> tuple[Entry, ...]:
                existing = self.invoices.get(invoice_id_for(aid, cycle.cycle_id))
                if existing is None or existing.status is InvoiceStatus.DRAFT:
                    return ()  # a draft may still change: only final runs are replays
                view = billing_account(self.states[aid], cycle=cycle, catalogue=None)
                return bill_account(
                    view, self.billing[aid], cycle, at_s=at_s, config=BILLING, existing=existing
                ).entries

            self.replays.append(again)

    @rule(aid=account_ids, amount=st.integers(min_value=1, max_value=600_000))
    def pay(self, aid: str, amount: int) -> None:
        rid = self.next_id("p")

        def run() -> WriteoffOutcome:
            return apply_payment(
                request_id=rid,
                account_id=aid,
                amount=amount,
                currency="EUR",
                at_s=self.clock,
                invoices=self.invoices_of(aid),
                existing=self.marks.get(rid),
            )

        payable = [i for i in self.invoices_of(aid) if i.status in PAYABLE and i.open_amount]
        event(f"payable invoices at payment: {min(len(payable), 3)}")
        first = run()
        event(f"payment: {first.result.value}, {len(first.invoices)} invoices")
        self.apply_writeoff(first)
        self.payments.append((aid, rid))
        if first.payment is not None and first.payment.allocations:
            # Oldest first: every payable invoice before the last one paid is settled now.
            last = self.invoices[first.payment.allocations[-1].invoice_id]
            for invoice in self.invoices_of(aid):
                if invoice.status in PAYABLE and payment_order(invoice) < payment_order(last):
                    assert invoice.open_amount == 0, (invoice.invoice_id, last.invoice_id)
        self.replays.append(lambda: run().entries)

    @rule(data=st.data())
    def reverse(self, data: st.DataObject) -> None:
        if not self.payments:
            return
        aid, pid = data.draw(st.sampled_from(self.payments))
        rid = self.next_id("v")

        def run() -> WriteoffOutcome:
            return reverse_payment(
                request_id=rid,
                account_id=aid,
                payment_id=pid,
                at_s=self.clock,
                payment_mark=self.marks.get(pid),
                invoices=self.invoices_of(aid),
                credit_balance=self.states[aid].credit,
                existing=self.marks.get(rid),
            )

        first = run()
        event(f"reversal: {first.result.value}")
        if first.reversal is not None:
            event(f"reversal debt: {first.reversal.debt > 0}")
        self.apply_writeoff(first)
        self.replays.append(lambda: run().entries)

    @rule(data=st.data())
    def replay_past_operation(self, data: st.DataObject) -> None:
        """Re-applying any earlier operation under its id changes nothing."""
        if not self.replays:
            return
        before = replay(self.ledger.entries)
        entries = data.draw(st.sampled_from(self.replays))()
        assert entries == ()
        assert replay(self.ledger.entries) == before

    # -- invariants -------------------------------------------------------------------

    @invariant()
    def money_is_conserved(self) -> None:
        assert self.ledger.total() == 0

    @invariant()
    def books_equal_ledger_replay(self) -> None:
        balances = replay(self.ledger.entries)
        for aid, state in self.states.items():
            mine = {k: v for k, v in balances.items() if k.startswith(aid + "/") and v}
            assert state.ledger_view() == mine, aid

    @invariant()
    def books_keep_their_signs(self) -> None:
        for state in self.states.values():
            assert state.prepaid >= 0 and state.reserved >= 0 and state.credit >= 0
            assert state.unbilled <= 0 and state.receivable <= 0 and state.debt <= 0

    @invariant()
    def invoices_equal_ledger(self) -> None:
        for invoice in self.invoices.values():
            if invoice.status is not InvoiceStatus.DRAFT:
                refs = self.also_refs.get(invoice.invoice_id, ())
                assert ledger_difference(invoice, self.ledger.entries, also_refs=refs) == 0
        for aid, state in self.states.items():
            owed = sum(
                i.open_amount for i in self.invoices_of(aid) if i.status is not InvoiceStatus.DRAFT
            )
            assert state.receivable == -owed, aid


Core.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCore = Core.TestCase


@pytest.mark.slow
def test_core_stateful_long() -> None:
    """The same machine with many more and longer runs."""
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(
        Core,
        settings=settings(
            max_examples=600,
            stateful_step_count=80,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
