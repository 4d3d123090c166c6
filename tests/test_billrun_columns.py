"""The columnar bill run gives, account for account, the reference bill_account's outcome
(invoice, statement, entries, billing state, notification) and the same postings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from billing.accounts import Account, AccountState, PaymentMode, Subscription
from billing.billrun.columns import bill_columns
from billing.billrun.model import BillingState, BillRunConfig, ExtraCharge, UsageTotal
from billing.billrun.run import bill_account, billing_account, invoice_id_for
from billing.charging.table import AccountTable
from billing.cycle import DAY_S, monthly_cycle
from billing.invoice import Invoice, InvoiceStatus, LineItem, LineKind
from billing.ledger import replay
from billing.rating import load_catalogue

CATALOGUE = load_catalogue(Path(__file__).resolve().parent.parent / "conf" / "tariffs")
TZ = "Europe/Berlin"
CYCLE = monthly_cycle(2026, 1, TZ)
CYCLES = ["2025-09", "2025-11", "2025-12", "2026-01", "2026-01", "2026-01", "2026-02"]
CLASSES = ["voice.national", "voice.mobile", "sms.national", "data.rg10", "content"]

usage_st = st.lists(
    st.tuples(
        st.sampled_from(CYCLES),
        st.sampled_from(CLASSES),
        st.integers(1, 3),  # records
        st.integers(0, 500),  # units
        st.integers(0, 500),  # bundle units (capped at units)
        st.sampled_from([0, 0, 1, 990_000, 1_500_000]),  # money
        st.booleans(),  # posted to unbilled (else prepaid)
    ),
    max_size=8,
)
accounts_st = st.lists(
    st.tuples(
        st.sampled_from(list(PaymentMode)),
        st.sampled_from([0, 0, 1_000_000, 50_000_000]),  # credit
        st.sampled_from([None, 0, -300_000]),  # unbilled: None = what the usage says
        st.lists(
            st.tuples(
                st.sampled_from(["smart", "business", "gone"]),
                st.sampled_from([-100, -5, 3, 20, 40]),  # start, days from the cycle start
                st.sampled_from([None, None, 10, 40]),  # end, days from the cycle start
            ),
            max_size=2,
        ),
        usage_st,
        # 0 no billing state; 1 clean, final earlier; 2 clean with billed snapshots;
        # 3 a draft of an earlier cycle; 4 final for this cycle; 5 a stored invoice;
        # 6 an extra charge; 7 an extra charge in another currency; 8 a top-up.
        st.sampled_from([0, 0, 0, 1, 2, 2, 3, 4, 5, 6, 7, 8]),
    ),
    min_size=1,
    max_size=6,
)


def _world(specs: list[tuple[Any, ...]]) -> tuple[
    list[AccountState], dict[str, BillingState], dict[str, Invoice],
    dict[str, tuple[ExtraCharge, ...]], dict[str, int],
]:  # fmt: skip
    states: list[AccountState] = []
    billing: dict[str, BillingState] = {}
    existing: dict[str, Invoice] = {}
    extras: dict[str, tuple[ExtraCharge, ...]] = {}
    topups: dict[str, int] = {}
    for n, (mode, credit, unbilled, subs, usage, history) in enumerate(specs):
        aid = f"B{n}"
        subscriptions = tuple(
            Subscription(
                plan_id=plan,
                start_s=CYCLE.start_s + start * DAY_S,
                end_s=None if end is None else CYCLE.start_s + end * DAY_S + 3600,
            )
            for plan, start, end in subs
            if end is None or end > start
        )
        state = AccountState(
            Account(account_id=aid, currency="EUR", payment_mode=mode, subscriptions=subscriptions)
        )
        state.credit = credit
        for cycle_id, usage_class, count, units, bundle, money, to_unbilled in usage:
            old = state.usage.get((cycle_id, usage_class), (0, 0, 0, 0, 0))
            part = money if to_unbilled and mode is not PaymentMode.PREPAID else 0
            new = (count, units, min(bundle, units), money, part)
            state.usage[(cycle_id, usage_class)] = tuple(
                a + b for a, b in zip(old, new, strict=True)
            )  # type: ignore[assignment]
        booked = -sum(t[4] for t in state.usage.values())
        state.unbilled = booked if unbilled is None else unbilled
        state.prepaid = 5_000_000 if mode is not PaymentMode.POSTPAID else 0
        states.append(state)
        if history == 1:
            billing[aid] = BillingState(last_final_cycle="2025-12")
        elif history == 2:
            snapshot = {
                cid: {cls: UsageTotal.of(t) for (c, cls), t in state.usage.items() if c == cid}
                for cid in ("2025-11", "2025-12")
            }
            if snapshot["2025-12"]:
                first = next(iter(snapshot["2025-12"]))
                snapshot["2025-12"][first] = UsageTotal(1, 1, 0, 1, 1)  # billed in part
            billing[aid] = BillingState(billed=snapshot, last_final_cycle="2025-12")
        elif history == 3:
            draft = Invoice(
                invoice_id=invoice_id_for(aid, "2025-12"), account_id=aid, cycle_id="2025-12",
                currency="EUR", period_start_s=CYCLE.start_s - 31 * DAY_S,
                period_end_s=CYCLE.start_s, issued_at_s=CYCLE.start_s, due_at_s=CYCLE.start_s,
                lines=(), total=0, status=InvoiceStatus.DRAFT,
            )  # fmt: skip
            billing[aid] = BillingState(draft=draft)
        elif history == 4:
            billing[aid] = BillingState(last_final_cycle="2026-01")
        elif history == 5:
            existing[aid] = Invoice(
                invoice_id=invoice_id_for(aid, "2026-01"), account_id=aid, cycle_id="2026-01",
                currency="EUR", period_start_s=CYCLE.start_s, period_end_s=CYCLE.end_s,
                issued_at_s=CYCLE.end_s, due_at_s=CYCLE.end_s,
                lines=(LineItem(kind=LineKind.ONE_OFF, description="x", amount=5),), total=5,
            )  # fmt: skip
        elif history in (6, 7):
            extras[aid] = (
                ExtraCharge(
                    ref=f"x{n}", kind=LineKind.ONE_OFF, description="router", amount=19_990_000,
                    currency="EUR" if history == 6 else "USD", cycle_id="2026-01",
                ),
            )  # fmt: skip
        elif history == 8:
            topups[aid] = 20_000_000
    return states, billing, existing, extras, topups


@settings(max_examples=300, deadline=None)
@given(accounts_st, st.booleans(), st.sampled_from([0, 3 * DAY_S]))
def test_bill_columns_equal_reference(
    specs: list[tuple[Any, ...]], final: bool, grace_s: int
) -> None:
    """bill_columns gives each account the reference's outcome, and the same postings."""
    states, billing, existing, extras, topups = _world(specs)
    config = BillRunConfig(tz=TZ, grace_s=grace_s)
    at_s = CYCLE.end_s + (grace_s if final else 0)
    if not final and grace_s == 0:
        at_s = CYCLE.end_s  # at the end with no grace: final too
    table = AccountTable.from_states(states)
    bills = bill_columns(
        table,
        CYCLE,
        catalogue=CATALOGUE,
        at_s=at_s,
        config=config,
        billing=billing,
        existing=existing,
        extras=extras,
        topups=topups,
    )
    entries = []
    for state in states:
        aid = state.account_id
        view = billing_account(
            state, cycle=CYCLE, catalogue=CATALOGUE, extras=extras.get(aid, ()),
            topups=topups.get(aid, 0),
        )  # fmt: skip
        want = bill_account(
            view, billing.get(aid, BillingState()), CYCLE, at_s=at_s, config=config,
            existing=existing.get(aid),
        )  # fmt: skip
        assert bills.outcome(table.index[aid]) == want, aid
        entries.extend(want.entries)
    assert bills.postings() == {k: v for k, v in replay(entries).items() if v}
