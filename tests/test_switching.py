"""Payment-mode switching moves money only between the account's own books (nothing lost)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_accounts import EUR, T0, World, account, rated
from test_charging import _charge

from billing.accounts import PaymentMode, Result
from billing.charging.batch import top_up
from billing.switching import switch_mode


def _switch(world: World, aid: str, mode: PaymentMode, rid: str):  # type: ignore[no-untyped-def]
    return world.apply(
        switch_mode(
            request_id=rid,
            state=world.states[aid],
            to_mode=mode,
            at_s=T0,
            existing=world.marks.get(rid),
            config=world.config,
        )
    )


def test_prepaid_to_postpaid_turns_balance_into_credit() -> None:
    """2.00 prepaid becomes 2.00 credit against the next invoice."""
    world = World()
    world.add(account("A", PaymentMode.PREPAID), prepaid=2 * EUR)
    out = _switch(world, "A", PaymentMode.POSTPAID, "sw1")
    assert out.result is Result.SWITCHED and out.receipt.prepaid_to_credit == 2 * EUR
    state = world.states["A"]
    assert (state.prepaid, state.credit, state.account.payment_mode) == (
        0,
        2 * EUR,
        PaymentMode.POSTPAID,
    )
    assert _switch(world, "A", PaymentMode.POSTPAID, "sw1").result is Result.DUPLICATE
    assert _switch(world, "A", PaymentMode.HYBRID, "sw1").result is (
        Result.EXISTS_WITH_DIFFERENT_MODE
    )
    world.check_books()


def test_postpaid_to_prepaid_bills_unbilled_now() -> None:
    """0.50 unbilled moves to receivable with an interim bill of 0.50."""
    world = World()
    world.add(account("B", PaymentMode.POSTPAID))
    _charge(world, "B", rated("r1", 500))
    out = _switch(world, "B", PaymentMode.PREPAID, "sw1")
    assert out.receipt.interim is not None and out.receipt.interim.amount == 500_000
    state = world.states["B"]
    assert (state.unbilled, state.receivable) == (0, -500_000)
    world.check_books()


MODES = list(PaymentMode)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["charge", "topup", "switch"]),
            st.integers(0, 3000),
            st.sampled_from(MODES),
        ),
        max_size=15,
    )
)
def test_a_switch_loses_nothing(ops: list[tuple[str, int, PaymentMode]]) -> None:
    """Σ of the account's books is unchanged by any switch, and books equal the ledger."""
    world = World()
    world.add(account("A", PaymentMode.PREPAID, limit=EUR), prepaid=EUR)
    for n, (op, units, mode) in enumerate(ops):
        if op == "charge":
            _charge(world, "A", rated(f"r{n}", units))
        elif op == "topup" and units:
            world.apply(
                top_up(
                    request_id=f"t{n}",
                    state=world.states["A"],
                    amount=units * 1000,
                    currency="EUR",
                    at_s=T0,
                    existing=None,
                    config=world.config,
                )
            )
        else:
            before = sum(world.states["A"].balances().values())
            _switch(world, "A", mode, f"s{n}")
            assert sum(world.states["A"].balances().values()) == before
        world.check_books()


def _session(world: World, step: str, rid: str, units: int, at_s: int = T0) -> Any:
    from test_ocs import QUOTE

    from billing.ocs.session import expire, session_initial, session_terminate

    state = world.states["A"]
    if step == "initial":
        out = session_initial(
            request_id=rid, state=state, session_id="s1", quote=QUOTE, requested_units=units,
            validity_s=60, at_s=at_s, existing=None, tariff=world.tariff, config=world.config,
        )  # fmt: skip
    elif step == "terminate":
        out = session_terminate(
            request_id=rid, state=state, session_id="s1", used_units=units, at_s=at_s,
            existing=None, tariff=world.tariff, config=world.config,
        )  # fmt: skip
    else:
        out = expire(state, at_s=at_s)
    return world.apply(out)


def test_money_released_after_a_switch_to_postpaid_becomes_credit() -> None:
    """1.00 prepaid; a session holds 0.60; switch to postpaid (0.40 to credit); terminate at
    200 s: 0.20 charged from the hold, the 0.40 released goes to credit, not prepaid."""
    world = World()
    world.add(account("A", PaymentMode.PREPAID), prepaid=EUR)
    _session(world, "initial", "i", 600)
    assert world.states["A"].reserved == 600_000
    _switch(world, "A", PaymentMode.POSTPAID, "sw")
    assert world.states["A"].credit == 400_000
    _session(world, "terminate", "t", 200, at_s=T0 + 30)
    state = world.states["A"]
    assert (state.prepaid, state.reserved, state.credit) == (0, 0, 800_000)
    release = [e for e in world.ledger.entries if e.ref == "release:s1:final"]
    assert [p.account for p in release[0].postings] == ["A/reserved", "A/credit"]
    world.check_books()


@pytest.mark.parametrize("mode", [PaymentMode.PREPAID, PaymentMode.HYBRID])
def test_money_released_on_a_prepaid_or_hybrid_account_stays_prepaid(mode: PaymentMode) -> None:
    """An account that (still or again) spends prepaid money gets the release back there,
    also when the reservation simply expires."""
    world = World()
    world.add(account("A", PaymentMode.PREPAID), prepaid=EUR)
    _session(world, "initial", "i", 600)
    if mode is PaymentMode.HYBRID:
        _switch(world, "A", mode, "sw")
    _session(world, "expire", "", 0, at_s=T0 + 61)
    state = world.states["A"]
    assert (state.prepaid, state.reserved, state.credit) == (EUR, 0, 0)
    world.check_books()
