"""Backward billing: the sponsor pays, the subscriber's history shows a zero-money line."""

from __future__ import annotations

from test_accounts import EUR, T0, FakeTariff, World, account, rated
from test_charging import _charge

from billing.accounts import AccountState, AccountStatus, PaymentMode, Result, SponsorRule
from billing.charging.batch import charge
from billing.records import Service
from billing.sponsor import charge_sponsored


def test_rating_group_rule_bills_the_enterprise() -> None:
    """Rating group 20 is paid by enterprise E; the subscriber is charged nothing."""
    world = World()
    rule = SponsorRule(sponsor_account_id="E", rating_group=20)
    world.add(account("A", PaymentMode.PREPAID, sponsor_rules=(rule,)), prepaid=EUR)
    world.add(account("E", PaymentMode.POSTPAID, msisdn="000"))
    r = rated("r1", 5000, service=Service.DATA, usage_class="data.rg20", rating_group=20)
    out = _charge(world, "A", r)
    assert out.result is Result.SPONSORED and out.receipt.sponsored_by == "E"
    assert world.states["A"].prepaid == EUR
    assert world.states["E"].unbilled == -5000  # 5000 bytes at 1 micro-unit
    assert world.states["A"].history[-1].sponsored_by == "E"
    assert _charge(world, "A", r).result is Result.DUPLICATE
    assert world.states["E"].unbilled == -5000
    world.check_books()


def test_cross_shard_sponsor_is_forwarded_and_idempotent() -> None:
    """A sponsor on another shard gets a forward; applying it twice charges once."""
    world = World(tariff=FakeTariff(sponsors={"data.rg10": "S"}))
    world.add(account("A", PaymentMode.PREPAID), prepaid=EUR)
    world.add(account("S", PaymentMode.POSTPAID, msisdn="000"))
    r = rated("r1", 100, service=Service.DATA, usage_class="data.rg10")
    alone: dict[str, AccountState] = {}
    out = charge(
        world.states["A"],
        r,
        marks=world.marks,
        tariff=world.tariff,
        config=world.config,
        at_s=T0,
        others=alone,
    )
    assert len(out.effects.forwards) == 1
    world.apply(out)  # the harness delivers the forward once
    again = charge_sponsored(
        world.states["S"],
        out.effects.forwards[0],
        marks=world.marks,
        tariff=world.tariff,
        config=world.config,
        at_s=T0,
    )
    assert again.result is Result.DUPLICATE
    assert world.states["S"].unbilled == -200 * 1000  # sponsor price 0.002 per unit
    world.check_books()


def test_a_sponsor_refusing_on_the_same_shard_is_forwarded_not_lost() -> None:
    """A closed sponsor on the subscriber's own shard refuses its half: the half becomes a
    forward (kept as sponsor_refused where it is applied), at the price decided here."""
    world = World(tariff=FakeTariff(sponsors={"data.rg10": "S"}))
    world.add(account("A", PaymentMode.PREPAID), prepaid=EUR)
    world.add(account("S", PaymentMode.POSTPAID, msisdn="000", status=AccountStatus.CLOSED))
    r = rated("r1", 100, service=Service.DATA, usage_class="data.rg10")
    out = charge(
        world.states["A"], r, marks=world.marks, tariff=world.tariff, config=world.config,
        at_s=T0, others={"S": world.states["S"]},
    )  # fmt: skip
    assert out.result is Result.SPONSORED
    (usage,) = out.effects.forwards
    assert (usage.sponsor_account_id, usage.amount) == ("S", 200 * 1000)
    assert all(row.sponsor_of is None for row in out.effects.charges)  # nothing charged to S
