"""Fraud rules: velocity, spend spike and premium destinations, with their boundaries."""

from __future__ import annotations

from fractions import Fraction

import pytest

from billing.fraud import (
    Action,
    FraudConfig,
    FraudConfigError,
    PremiumRule,
    RiskState,
    Rule,
    SpikeRule,
    VelocityRule,
    evaluate,
    notification_of,
    unblock,
)
from billing.notifications import NotificationKind
from billing.rated import RatedRecord
from billing.records import Service, UsageRecord

_seq = iter(range(10**9))


def call(
    at_s: int,
    *,
    usage_class: str = "voice.international",
    amount: int = 1_000_000,
    number: str = "4471234",
    service: Service = Service.VOICE,
) -> RatedRecord:
    record = UsageRecord(
        record_id=f"r{next(_seq)}",
        service=service,
        served_msisdn="491",
        record_opening_time_s=at_s,
        called_number=number,
        duration_s=60,
    )
    return RatedRecord(
        record=record,
        plan_id="p",
        plan_version="1",
        currency="EUR",
        amount=amount,
        units=60,
        billed_units=60,
        connect_fee=0,
        tiers=(),
        rate_ids=(),
        rounding="half_up",
        usage_class=usage_class,
        price_key="k",
    )


def run(
    config: FraudConfig, records: list[tuple[RatedRecord, str]], state: RiskState | None = None
) -> tuple[RiskState, list[Rule]]:
    state = state or RiskState()
    fired: list[Rule] = []
    for rated, cycle in records:
        state, alerts = evaluate(config, state, rated, account_id="a1", cycle_id=cycle)
        fired.extend(a.rule for a in alerts)
    return state, fired


VELOCITY_ONLY = FraudConfig(
    velocity=VelocityRule(calls=3, window_s=600), spend_spike=None, premium=None
)


def test_velocity_fires_at_n_calls_within_window() -> None:
    """Three international calls spanning 599 s fire; the state keeps only three starts."""
    state, fired = run(VELOCITY_ONLY, [(call(t), "c") for t in (0, 300, 599)])
    assert fired == [Rule.VELOCITY]
    assert len(state.intl_starts_s) == 3


def test_velocity_boundary_span_equal_to_window_does_not_fire() -> None:
    """Calls at 0, 300 and 600 span exactly the window: not within it."""
    _, fired = run(VELOCITY_ONLY, [(call(t), "c") for t in (0, 300, 600)])
    assert fired == []


def test_velocity_ignores_national_calls_and_fires_once_per_window() -> None:
    """National calls do not count; a burst fires once, and again only a window later."""
    records = [(call(t, usage_class="voice.national"), "c") for t in range(0, 50, 10)]
    records += [(call(t), "c") for t in (100, 110, 120, 130, 140)]
    records += [(call(t), "c") for t in (700, 710, 720)]
    state, fired = run(VELOCITY_ONLY, records)
    assert fired == [Rule.VELOCITY, Rule.VELOCITY]
    assert state.intl_starts_s == (700, 710, 720)


def test_velocity_state_is_bounded() -> None:
    """However many calls come, the state holds at most `calls` start times."""
    state, _ = run(VELOCITY_ONLY, [(call(t * 1000), "c") for t in range(500)])
    assert len(state.intl_starts_s) == 3


SPIKE_ONLY = FraudConfig(
    velocity=None,
    premium=None,
    spend_spike=SpikeRule(factor=Fraction(3), trailing_cycles=2, min_history=1),
)


def test_spend_spike_strictly_above_k_times_average() -> None:
    """History 10 and 30 (average 20): 60 is not a spike, 60.000001 is, once per cycle."""
    history = [(call(1, amount=10), "2026-01"), (call(2, amount=30), "2026-02")]
    _, fired = run(SPIKE_ONLY, [*history, (call(3, amount=60), "2026-03")])
    assert fired == []
    state, fired = run(
        SPIKE_ONLY,
        [
            *history,
            (call(3, amount=60), "2026-03"),
            (call(4, amount=1), "2026-03"),
            (call(5, amount=100), "2026-03"),
        ],
    )
    assert fired == [Rule.SPEND_SPIKE]
    assert state.cycle_spend == 161


def test_spend_spike_needs_history_and_trails_a_bounded_number_of_cycles() -> None:
    """No history, no spike; only the last `trailing_cycles` cycles are averaged."""
    _, fired = run(SPIKE_ONLY, [(call(1, amount=10**9), "2026-01")])
    assert fired == []
    records = [
        (call(i, amount=a), c)
        for i, (a, c) in enumerate(
            [(1000, "2026-01"), (10, "2026-02"), (10, "2026-03"), (31, "2026-04")]
        )
    ]
    state, fired = run(SPIKE_ONLY, records)
    assert state.history == (10, 10)
    assert fired == [Rule.SPEND_SPIKE]


def test_late_record_of_an_old_cycle_does_not_count_as_spend() -> None:
    """A record of an earlier cycle does not reopen it."""
    state, _ = run(SPIKE_ONLY, [(call(1, amount=5), "2026-02"), (call(2, amount=7), "2026-01")])
    assert (state.cycle_id, state.cycle_spend, state.history) == ("2026-02", 5, ())


PREMIUM = FraudConfig(
    velocity=None,
    spend_spike=None,
    premium=PremiumRule(premium_prefixes=("49900",), action=Action.BLOCK),
)


def test_premium_prefix_blocks_and_unblock_clears() -> None:
    """A call to a premium prefix fires and blocks; an operator can unblock."""
    state, fired = run(PREMIUM, [(call(1, number="4990012345", usage_class="voice.national"), "c")])
    assert fired == [Rule.PREMIUM] and state.blocked
    assert not unblock(state).blocked


def test_block_becomes_an_account_blocked_notification() -> None:
    """A blocking alert has a customer notification; an alert-only one has none."""
    _, alerts = evaluate(
        PREMIUM,
        RiskState(),
        call(1, number="4990012", usage_class="x"),
        account_id="a1",
        cycle_id="2026-11",
    )
    (alert,) = alerts
    note = notification_of(alert, cycle_id="2026-11")
    assert note is not None and note.kind is NotificationKind.ACCOUNT_BLOCKED
    assert note.subject == "fraud:premium"
    _, alerts = evaluate(
        VELOCITY_ONLY, RiskState(intl_starts_s=(0, 1)), call(2), account_id="a1", cycle_id="c"
    )
    alert_note = notification_of(alerts[0], cycle_id="c")
    assert alert_note is not None and alert_note.kind is NotificationKind.FRAUD_ALERT
    assert alert_note.subject == f"velocity:{alerts[0].record_id}"


def test_premium_class_and_non_premium() -> None:
    """The premium usage class fires; an ordinary number and data never do."""
    _, fired = run(
        PREMIUM,
        [
            (call(1, usage_class="sms.premium", service=Service.SMS), "c"),
            (call(2, number="4930123", usage_class="voice.national"), "c"),
            (call(3, number="49900", service=Service.DATA, usage_class="data.rg1"), "c"),
        ],
    )
    assert fired == [Rule.PREMIUM]


def test_alert_action_does_not_block() -> None:
    """An alert-only rule reports without blocking."""
    state, fired = run(VELOCITY_ONLY, [(call(t), "c") for t in (0, 1, 2)])
    assert fired == [Rule.VELOCITY] and not state.blocked


def test_config_from_mapping() -> None:
    """Rules load from a TOML-shaped table; absent rules are off; bad values are errors."""
    config = FraudConfig.from_mapping(
        {
            "velocity": {"calls": 5, "window_s": 300, "action": "block"},
            "spend_spike": {"factor": "2.5", "trailing_cycles": 3},
        }
    )
    assert config.velocity == VelocityRule(calls=5, window_s=300, action=Action.BLOCK)
    assert config.spend_spike is not None and config.spend_spike.factor == Fraction(5, 2)
    assert config.premium is None
    for bad in (
        {"velocity": {"calls": 0}},
        {"nope": {}},
        {"premium": {"action": "shout"}},
        {"spend_spike": {"factor": "-1"}},
        {"velocity": []},
    ):
        with pytest.raises(FraudConfigError):
            FraudConfig.from_mapping(bad)
