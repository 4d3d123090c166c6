"""Reminders fire once per crossing per cycle and re-arm when the value goes back."""

from __future__ import annotations

from test_accounts import EUR, T0, FakeTariff, World, account, rated
from test_charging import VOICE_BUNDLES, _charge

from billing.accounts import PaymentMode
from billing.charging.batch import top_up
from billing.notifications import NotificationKind


def test_low_balance_once_per_crossing() -> None:
    """Below 1.00: one reminder; again below after a top-up: a second one with seq 1."""
    world = World()
    world.add(account("A", PaymentMode.PREPAID), prepaid=2 * EUR)
    _charge(world, "A", rated("r1", 1500))  # 0.50 left
    _charge(world, "A", rated("r2", 100))  # still low: no new reminder
    low = [n for n in world.notes if n.kind is NotificationKind.LOW_BALANCE]
    assert [n.seq for n in low] == [0]
    world.apply(
        top_up(
            request_id="t",
            state=world.states["A"],
            amount=2 * EUR,
            currency="EUR",
            at_s=T0,
            existing=None,
            config=world.config,
        )
    )
    _charge(world, "A", rated("r3", 2000))
    low = [n for n in world.notes if n.kind is NotificationKind.LOW_BALANCE]
    assert [n.seq for n in low] == [0, 1]
    assert low[0].notification_id == "A:low_balance:2024-06:1000000:0"


def test_bundle_80_and_100() -> None:
    """The 60 s national bundle reminds at 48 s (80 %) and at 60 s (100 %), once each."""
    world = World(tariff=FakeTariff(VOICE_BUNDLES))
    world.add(account("A", PaymentMode.PREPAID), prepaid=5 * EUR)
    for i, units in enumerate((40, 10, 5, 30)):
        _charge(world, "A", rated(f"r{i}", units))
    subjects = [n.subject for n in world.notes if n.kind is NotificationKind.BUNDLE_USAGE]
    assert subjects == ["national@80", "national@100", "any-voice@80"][: len(subjects)]
    assert subjects[:2] == ["national@80", "national@100"]
