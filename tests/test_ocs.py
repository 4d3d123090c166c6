"""Online charging: reserve, update, terminate, expiry released exactly once."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from test_accounts import EUR, T0, World, account

from billing.accounts import PaymentMode, Result
from billing.ocs.session import (
    Quote,
    expire,
    session_initial,
    session_terminate,
    session_update,
)

QUOTE = Quote(
    service="voice", usage_class="voice.national", price_key="voice", plan_id="p", plan_version="1"
)


def _initial(world: World, sid: str, units: int, rid: str = "", at_s: int = T0) -> Any:
    rid = rid or f"{sid}:i"
    return world.apply(
        session_initial(
            request_id=rid,
            state=world.states["A"],
            session_id=sid,
            quote=QUOTE,
            requested_units=units,
            validity_s=60,
            at_s=at_s,
            existing=world.marks.get(rid),
            tariff=world.tariff,
            config=world.config,
        )
    )


def _update(world: World, sid: str, used: int, more: int, rid: str) -> Any:
    return world.apply(
        session_update(
            request_id=rid,
            state=world.states["A"],
            session_id=sid,
            used_units=used,
            requested_units=more,
            at_s=T0 + 10,
            existing=world.marks.get(rid),
            tariff=world.tariff,
            config=world.config,
        )
    )


def _terminate(world: World, sid: str, used: int, rid: str, at_s: int = T0 + 20) -> Any:
    return world.apply(
        session_terminate(
            request_id=rid,
            state=world.states["A"],
            session_id=sid,
            used_units=used,
            at_s=at_s,
            existing=world.marks.get(rid),
            tariff=world.tariff,
            config=world.config,
        )
    )


def test_reserve_update_terminate_worked_example() -> None:
    """1.00 EUR at 0.001/s: 600 s asked, 600 granted (0.60 held); 250 used; 500 asked, 400
    granted (final); terminate at 300 used in all: 0.30 charged, the rest released."""
    world = World()
    world.add(account("A", PaymentMode.PREPAID), prepaid=EUR)
    grant = _initial(world, "s1", 600).receipt
    assert (grant.granted_units, grant.final) == (600, False)
    assert (world.states["A"].prepaid, world.states["A"].reserved) == (400_000, 600_000)
    upd = _update(world, "s1", 250, 500, "s1:u1").receipt
    # 0.25 charged; 0.75 left to reserve: 500 asked, 750 fit, 500 granted.
    assert (upd.granted_units, upd.charged) == (500, 250_000)
    again = _update(world, "s1", 250, 500, "s1:u1")
    assert again.result is Result.DUPLICATE and again.effects.entries == ()
    done = _terminate(world, "s1", 50, "s1:t")
    assert done.result is Result.TERMINATED and done.receipt.charged == 300_000
    state = world.states["A"]
    assert (state.prepaid, state.reserved, state.reservations) == (700_000, 0, {})
    world.check_books()


def test_terminated_session_is_one_usage_line() -> None:
    """A session closes into one usage line: 300 units, 0.30 EUR, all from prepaid; the
    line posts nothing (the settle entries did) and a replayed terminate adds no second."""
    world = World()
    world.add(account("A", PaymentMode.PREPAID), prepaid=EUR)
    _initial(world, "s1", 600)
    _update(world, "s1", 250, 500, "s1:u1")
    done = _terminate(world, "s1", 50, "s1:t")
    (line,) = done.effects.charges
    assert (line.record_id, line.result, line.usage_class) == (
        "s1",
        Result.TERMINATED,
        "voice.national",
    )
    assert (line.units, line.bundle_units, line.amount, line.prepaid) == (300, 0, 300_000, 300_000)
    assert line.to_entry() is None and line.to_mark() is None
    assert done.effects.entries == tuple(e for e in done.effects.explicit_entries)
    assert list(world.states["A"].history) == [line]
    assert _terminate(world, "s1", 50, "s1:t").effects.charges == ()
    assert list(world.states["A"].history) == [line]
    world.check_books()


def test_final_unit_indication_and_no_funds() -> None:
    """Fewer units than asked set final; nothing at all is insufficient_balance."""
    world = World()
    world.add(account("A", PaymentMode.PREPAID), prepaid=100_000)
    grant = _initial(world, "s1", 500)
    assert grant.receipt.granted_units == 100 and grant.receipt.final
    assert _initial(world, "s2", 10).result is Result.INSUFFICIENT_BALANCE
    world.check_books()


def test_expiry_releases_exactly_once() -> None:
    """An expired reservation's funds return once; expiring again changes nothing."""
    world = World()
    world.add(account("A", PaymentMode.PREPAID), prepaid=EUR)
    _initial(world, "s1", 300)
    first = world.apply(expire(world.states["A"], at_s=T0 + 60))
    assert first.receipt == ("s1",) and world.states["A"].prepaid == EUR
    second = world.apply(expire(world.states["A"], at_s=T0 + 61))
    assert second.receipt == () and second.effects.entries == ()
    # A late terminate still charges the reported usage (it happened), from prepaid.
    late = _terminate(world, "s1", 100, "s1:t", at_s=T0 + 70)
    assert late.result is Result.TERMINATED and world.states["A"].prepaid == EUR - 100_000
    world.check_books()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("iute"), st.integers(0, 900)), max_size=12))
def test_sessions_conserve_money(steps: list[tuple[str, int]]) -> None:
    """Any sequence of session steps and expiries keeps the books equal to the ledger,
    prepaid and reserved non-negative, and each step idempotent."""
    world = World()
    world.add(account("A", PaymentMode.PREPAID), prepaid=EUR)
    for n, (kind, units) in enumerate(steps):
        sid = f"s{n % 3}"
        if kind == "i":
            _initial(world, sid, units + 1, rid=f"i{n}")
        elif kind == "u":
            out = _update(world, sid, units, units, f"u{n}")
            if out.result is not Result.DUPLICATE and out.effects.accounts:
                assert _update(world, sid, units, units, f"u{n}").result is Result.DUPLICATE
        elif kind == "t":
            _terminate(world, sid, units, f"t{n}")
        else:
            world.apply(expire(world.states["A"], at_s=T0 + units))
        world.check_books()
    world.apply(expire(world.states["A"], at_s=T0 + 10_000))
    assert world.states["A"].reserved == 0
    world.check_books()
