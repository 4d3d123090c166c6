"""The inline path of charge_batch agrees with the general path, record for record."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from test_accounts import T0, FakeTariff, World, generated_state, rated

from billing.accounts import AccountState, AccountStatus, PaymentMode
from billing.bundles import Bundle
from billing.charging.batch import ChargingConfig, OfflinePolicy, charge, charge_batch
from billing.cycle import DAY_S
from billing.rated import RatedRecord
from billing.records import Service
from billing.reminders import ReminderConfig

BUNDLES = (
    Bundle(bundle_id="any-voice", usage_classes=("voice.*",), units=300, unit="seconds"),
    Bundle(bundle_id="national", usage_classes=("voice.national",), units=120, unit="seconds"),
    Bundle(bundle_id="sms", usage_classes=("sms.national",), units=3, unit="messages"),
)
MODES = list(PaymentMode)
STATUSES = [AccountStatus.ACTIVE] * 6 + [AccountStatus.BLOCKED, AccountStatus.CLOSED]

accounts_st = st.lists(
    st.tuples(
        st.sampled_from(MODES),
        st.sampled_from([None, 0, 200_000, 2_000_000]),  # credit limit
        st.sampled_from([0, 50_000, 900_000, 1_050_000, 3_000_000]),  # prepaid
        st.sampled_from(STATUSES),
        st.sampled_from([None] * 6 + ["sms.*", "data.*"]),  # a sponsor rule's class
    ),
    min_size=1,
    max_size=5,
)
records_st = st.lists(
    st.tuples(
        st.integers(0, 5),  # account index (5: unknown msisdn)
        st.sampled_from(["voice.national", "voice.mobile", "sms.national", "data.rg10", "spon"]),
        st.one_of(st.sampled_from([0, 1, 60, 120, 150, 240, 300]), st.integers(0, 400)),  # units
        st.integers(0, 45),  # day of the record (two cycles)
        st.integers(0, 3),  # 0: a fresh id; 1: repeat an earlier id; 2: conflicting repeat
    ),
    max_size=60,
)
config_st = st.builds(
    ChargingConfig,
    offline_policy=st.sampled_from(list(OfflinePolicy)),
    block_over_limit=st.booleans(),
    history_max=st.sampled_from([2, 50]),
    reminders=st.builds(
        ReminderConfig,
        low_balance_micros=st.sampled_from([0, 100_000, 1_000_000]),
        bundle_percents=st.sampled_from([(), (80, 100), (50,)]),
        credit_percents=st.sampled_from([(), (90, 100)]),
    ),
)


def _strip(row: Any) -> Any:
    return row._replace(rated=None) if row is not None else None


def _view(state: AccountState) -> tuple[Any, ...]:
    return (
        state.account,
        sorted(state.balances().items()),
        sorted(state.bundle_used.items()),
        sorted(state.usage.items()),
        sorted(state.reminders),
        sorted(state.crossings.items()),
        state.reminder_cycle,
        [_strip(r) for r in state.history],
    )


def _build(
    specs: list[tuple[Any, ...]], recs: list[tuple[Any, ...]]
) -> tuple[dict[str, AccountState], dict[str, str], list[RatedRecord]]:
    states: dict[str, AccountState] = {}
    directory: dict[str, str] = {}
    for n, (mode, limit, prepaid, status, sponsor_class) in enumerate(specs):
        state = generated_state(n, mode, limit, prepaid, status, sponsor_class)
        states[state.account_id] = state
        directory[f"49{n}"] = state.account_id
    records: list[RatedRecord] = []
    for i, (who, usage_class, units, day, repeat) in enumerate(recs):
        service = Service.SMS if usage_class.startswith("sms") else Service.VOICE
        if usage_class.startswith("data") or usage_class == "spon":
            service = Service.DATA
        r = rated(
            f"r{i}",
            units,
            msisdn=f"49{who}",
            service=service,
            usage_class=usage_class,
            at_s=T0 + day * DAY_S,
        )
        if repeat and records:
            earlier = records[i % len(records)]
            r = earlier if repeat == 1 else replace(earlier, amount=earlier.amount + 1)
        records.append(r)
    return states, directory, records


@settings(max_examples=400, deadline=None)
@given(accounts_st, records_st, config_st, st.booleans())
def test_batch_equals_one_by_one(
    specs: list[tuple[Any, ...]], recs: list[tuple[Any, ...]], config: ChargingConfig, offline: bool
) -> None:
    """charge_batch gives the rows, entries, marks, notifications and states of charging
    the same records one at a time through the general path."""
    _compare(specs, recs, config, offline)


def test_reminder_thresholds_agree_at_their_boundaries() -> None:
    """Balances and exposures just past a threshold remind the same in both paths."""
    active = AccountStatus.ACTIVE
    specs = [
        (PaymentMode.PREPAID, None, 1_050_000, active, None),
        (PaymentMode.HYBRID, 200_000, 1_050_000, active, None),
        (PaymentMode.POSTPAID, 300_000, 0, active, None),
    ]
    recs = [(who, "sms.national", 1, day, 0) for day in (1, 2) for who in (0, 1, 2)] * 4
    recs += [(who, "sms.national", 1, 40, 0) for who in (0, 1, 2)] * 8
    recs += [(who, "voice.mobile", 240, 3, 0) for who in (0, 1, 2)] * 3
    recs += [(who, "voice.national", 120, 41, 0) for who in (0, 1, 2)] * 3
    recs += [(0, "sms.national", 1, 2, 0)]  # a late record of the first cycle
    for percents in [(80, 100), (50,)]:
        config = ChargingConfig(
            reminders=ReminderConfig(bundle_percents=percents, credit_percents=(90, 100))
        )
        _compare(specs, recs, config, True)
        _compare(specs, recs, config, False)


def _compare(
    specs: list[tuple[Any, ...]], recs: list[tuple[Any, ...]], config: ChargingConfig, offline: bool
) -> None:
    tariff = FakeTariff(BUNDLES, sponsors={"spon": "A0"})
    states, directory, records = _build(specs, recs)
    originals = {aid: _view(s) for aid, s in states.items()}

    batch = charge_batch(
        records,
        accounts=states,
        directory=directory,
        marks={},
        tariff=tariff,
        config=config,
        at_s=T0,
        offline=offline,
    )
    world = World(states=dict(states), tariff=tariff, config=config)
    rows: list[Any] = []
    entries: list[Any] = []
    marks: list[Any] = []
    notes: list[Any] = []
    forwards: list[Any] = []
    for r in records:
        account_id = directory.get(r.record.served_msisdn)
        if account_id is None:
            rows.append(None)
            continue
        out = charge(
            world.states[account_id],
            r,
            marks=world.marks,
            tariff=tariff,
            config=config,
            at_s=T0,
            offline=offline,
            others=world.states,
        )
        rows.append(out.receipt)
        entries.extend(out.effects.entries)
        marks.extend(out.effects.marks)
        notes.extend(out.effects.notifications)
        forwards.extend(out.effects.forwards)
        for state in out.effects.accounts:
            world.states[state.account_id] = state
        for key, stored in out.effects.marks:
            world.marks[key] = stored

    assert batch.receipt is not None
    got = [_strip(row) if row.account_id else None for row in batch.receipt]
    assert got == [_strip(row) for row in rows]
    assert batch.effects.entries == tuple(entries)
    assert [(k, m.fields, m.result) for k, m in batch.effects.marks] == [
        (k, m.fields, m.result) for k, m in marks
    ]
    assert batch.effects.notifications == tuple(notes)
    assert batch.effects.forwards == tuple(forwards)
    new = {s.account_id: s for s in batch.effects.accounts}
    for account_id, state in world.states.items():
        assert _view(new.get(account_id, state)) == _view(state), account_id
    # The handed-in states are untouched.
    assert {aid: _view(s) for aid, s in states.items()} == originals
