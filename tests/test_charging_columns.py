"""Columnar charging gives what the reference charge_batch gives, record for record and
account for account: rows, states, entries, postings, marks, usage lines, notifications
and forwards, over two batches (the second repeating ids of the first)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
from hypothesis import event, given, settings
from hypothesis import strategies as st
from test_accounts import T0, FakeTariff, account, generated_state, rated

from billing.accounts import Account, AccountState, AccountStatus, PaymentMode
from billing.bundles import Bundle, CatalogueTariff
from billing.charging.batch import ChargingConfig, OfflinePolicy, charge, charge_batch
from billing.charging.charge_input import ChargeInput
from billing.charging.column_marks import ColumnMarks
from billing.charging.columnar import ChargeColumns, charge_columns
from billing.charging.table import AccountTable
from billing.column_rating import RatedRows, rate_columns
from billing.columns import records_to_batch
from billing.cycle import DAY_S
from billing.idempotency import Mark
from billing.ledger import replay
from billing.notifications import NotificationKind
from billing.rated import RatedRecord
from billing.rating import load_catalogue
from billing.records import Service, UsageRecord
from billing.reminders import ReminderConfig, reminder_key

CYCLE = "2024-06"  # the cycle of T0 (UTC)
CLASSES = ["voice.national", "voice.mobile", "sms.national", "data.rg10", "zero", "spon"]
MODES = list(PaymentMode)
STATUSES = [AccountStatus.ACTIVE] * 8 + [AccountStatus.BLOCKED, AccountStatus.CLOSED]


def bundles(scale: int) -> tuple[Bundle, ...]:
    return (
        Bundle(bundle_id="any-voice", usage_classes=("voice.*",), units=300 * scale, unit="s"),
        Bundle(
            bundle_id="national", usage_classes=("voice.national",), units=120 * scale, unit="s"
        ),
        Bundle(bundle_id="sms", usage_classes=("sms.national",), units=3 * scale, unit="sms"),
    )


# An account: mode, credit limit, prepaid, status, a sponsor rule's class, and a history:
# 0 none; 1 in debt with the debt reminder set; 2 unbilled near/over the limit with the
# credit reminders set; 3 low-balance key set; 4 a bundle partly used with its 80 % key
# set; 5 a reminder state of the previous cycle; 6 a bundle hold (an open session);
# 7 exposure 60 bytes of data below 90 % of the limit; 8 "any-voice" 60 units below 80 % used;
# 9 a reminder state of the next cycle (the batch's records are late for it); 10 a hand-made
# state: the previous cycle's, holding a low-balance key of this cycle already.
accounts_st = st.lists(
    st.tuples(
        st.sampled_from(MODES),
        st.sampled_from([None, 0, 200_000, 2_000_000, 50_000_000]),
        # Around the low-balance threshold (1 EUR) by 60 bytes of data (60 micro), and far off.
        st.sampled_from(
            [-50_000, 0, 50_000, 900_000, 1_000_059, 1_000_060, 1_000_061, 3_000_000, 50_000_000]
        ),
        st.sampled_from(STATUSES),
        st.sampled_from([None] * 22 + ["sms.*", "data.*"]),
        st.sampled_from([0] * 6 + [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
    ),
    min_size=1,
    max_size=6,
)
records_st = st.lists(
    st.tuples(
        st.sampled_from([0, 1, 2, 3, 4, 5] * 4 + [6]),  # account (modulo); 6: unknown msisdn
        st.sampled_from(CLASSES[:4] * 5 + ["zero"] * 2 + ["spon"]),
        st.one_of(st.sampled_from([0, 1, 59, 60, 61, 120, 240, 300]), st.integers(0, 400)),
        st.sampled_from([1] * 20 + [2, 3, 29, 31, 40]),  # day: mostly one cycle
        # 1: repeat; 2: conflict; 3/4: the same of a record of the earlier batch; 5: in USD.
        st.sampled_from([0] * 30 + [1, 2, 3, 4, 5]),
    ),
    max_size=50,
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


def _state(n: int, spec: tuple[Any, ...], scale: int) -> AccountState:
    mode, limit, prepaid, status, sponsor_class, history = spec
    state = generated_state(n, mode, limit, prepaid, status, sponsor_class)
    keys: set[str] = set()
    if history == 1 and mode is PaymentMode.PREPAID:
        state.prepaid, state.debt = 0, -400_000
        keys.add(reminder_key(CYCLE, NotificationKind.DEBT_POSTED, "debt"))
    elif history == 2 and mode is not PaymentMode.PREPAID and limit:
        state.unbilled = -limit
        keys |= {reminder_key(CYCLE, NotificationKind.CREDIT_LIMIT, p) for p in ("90", "100")}
        if mode is PaymentMode.HYBRID:
            state.prepaid = 0
    elif history == 3:
        keys.add(reminder_key(CYCLE, NotificationKind.LOW_BALANCE, "1000000"))
    elif history == 4:
        state.bundle_used[(CYCLE, "any-voice")] = 250 * scale
        keys.add(reminder_key(CYCLE, NotificationKind.BUNDLE_USAGE, "any-voice@80"))
    elif history == 5:
        state.reminder_cycle = "2024-05"
        state.reminders = {reminder_key("2024-05", NotificationKind.LOW_BALANCE, "1000000")}
        state.crossings = {next(iter(state.reminders)): 2}
    elif history == 6:
        state.bundle_held = {(CYCLE, "national"): 60}
    elif history == 7 and mode is not PaymentMode.PREPAID and limit:
        state.unbilled = -(limit * 90 // 100 - 60)
    elif history == 8:
        state.bundle_used[(CYCLE, "any-voice")] = 240 * scale - 60
    elif history == 9:
        later = "2024-07"
        state.reminder_cycle = later
        state.reminders = {reminder_key(later, NotificationKind.LOW_BALANCE, "1000000")}
    elif history == 10:
        state.reminder_cycle = "2024-05"
        state.reminders = {reminder_key(CYCLE, NotificationKind.LOW_BALANCE, "1000000")}
        state.crossings = {next(iter(state.reminders)): 1}
    if keys:
        state.reminder_cycle = CYCLE
        state.reminders = keys
        state.crossings = dict.fromkeys(keys, 1)
    return state


def _records(
    recs: list[tuple[Any, ...]], prefix: str, earlier: list[RatedRecord], accounts: int
) -> list[RatedRecord]:
    out: list[RatedRecord] = []
    for i, (who, usage_class, units, day, repeat) in enumerate(recs):
        msisdn = f"49{who % accounts}" if who < 6 else "49-unknown"
        service = Service.SMS if usage_class.startswith("sms") else Service.VOICE
        if usage_class.startswith("data") or usage_class in ("spon", "zero"):
            service = Service.DATA
        r = rated(
            f"{prefix}{i}",
            units,
            msisdn=msisdn,
            service=service,
            usage_class=usage_class,
            at_s=T0 + day * DAY_S,
        )
        pool = out if repeat in (1, 2) else earlier
        if repeat == 5:
            r = replace(r, currency="USD")
        elif repeat and pool:
            same = pool[i % len(pool)]
            r = same if repeat in (1, 3) else replace(same, amount=same.amount + 1)
        out.append(r)
    return out


def _view(state: AccountState) -> tuple[Any, ...]:
    """Everything of a state but its usage history (the table does not keep it)."""
    return (
        state.account,
        sorted(state.balances().items()),
        sorted(state.bundle_used.items()),
        sorted(state.bundle_held.items()),
        sorted(state.usage.items()),
        sorted(state.reminders),
        sorted(state.crossings.items()),
        state.reminder_cycle,
        sorted(state.reservations),
    )


def _strip(row: Any) -> Any:
    return row._replace(rated=None)


def _table_views(table: AccountTable) -> dict[str, Any]:
    return {aid: _view(table.state(row)) for aid, row in table.index.items()}


def compare_batch(
    states: dict[str, AccountState],
    table: AccountTable,
    directory: dict[str, str],
    records: list[RatedRecord],
    marks: dict[str, Mark[Any]],
    tariff: FakeTariff,
    config: ChargingConfig,
    offline: bool,
    column_marks: ColumnMarks | None = None,
) -> ChargeColumns:
    """Charge ``records`` both ways, assert every output equal, apply both; the
    columnar answer. The columnar path reads ``column_marks`` (fed from its own
    answers) where given, else the reference's marks."""
    reference = charge_batch(
        records,
        accounts=states,
        directory=directory,
        marks=marks,
        tariff=tariff,
        config=config,
        at_s=T0,
        offline=offline,
    )
    effects = reference.effects
    before = _table_views(table)
    account_ids = [directory.get(r.record.served_msisdn, "") for r in records]
    columns = ChargeInput.from_records(records, account_ids, table)
    store = marks if column_marks is None else column_marks
    out = charge_columns(
        columns, table, marks=store, tariff=tariff, config=config, at_s=T0, offline=offline
    )
    assert _table_views(table) == before, "charging wrote the table"
    assert reference.receipt is not None
    assert [_strip(r) for r in out.rows()] == [_strip(r) for r in reference.receipt]
    assert out.results() == [r.result for r in reference.receipt]
    assert [_strip(c) for c in out.charges()] == [_strip(c) for c in effects.charges]
    assert out.entries() == list(effects.entries)
    assert out.postings() == {k: v for k, v in replay(effects.entries).items() if v}
    assert [(k, m.fields, m.result) for k, m in out.marks()] == [
        (k, m.fields, m.result) for k, m in effects.marks
    ]
    assert [_strip(c) for c in out.usage_lines()] == [_strip(c) for c in effects.usage_lines]
    assert out.notifications == effects.notifications
    assert out.forwards() == list(effects.forwards)
    table.apply(out.update)
    if column_marks is not None:
        column_marks.add(out)
    for state in effects.accounts:
        states[state.account_id] = state
    marks.update(dict(effects.marks))
    assert _table_views(table) == {aid: _view(s) for aid, s in states.items()}
    return out


def run_two_batches(
    specs: list[tuple[Any, ...]],
    first: list[tuple[Any, ...]],
    second: list[tuple[Any, ...]],
    config: ChargingConfig,
    offline: bool,
    scale: int,
) -> Counter[str]:
    states = {f"A{n}": _state(n, spec, scale) for n, spec in enumerate(specs)}
    directory = {f"49{n}": f"A{n}" for n in range(len(specs))}
    table = AccountTable.from_states(states.values())
    assert _table_views(table) == {aid: _view(s) for aid, s in states.items()}
    tariff = FakeTariff(bundles(scale), sponsors={"spon": "A0", "zero": "OFF-SHARD"})
    marks: dict[str, Mark[Any]] = {}
    column_marks = ColumnMarks()  # the columnar path's own, fed from its answers
    paths: Counter[str] = Counter()
    batch1 = _records(first, "r", [], len(specs))
    batch2 = _records(second, "s", batch1, len(specs))
    for records in (batch1, batch2):
        out = compare_batch(
            states, table, directory, records, marks, tariff, config, offline, column_marks
        )
        paths.update(out.paths)
    return paths


@settings(max_examples=500, deadline=None)
@given(
    accounts_st,
    records_st,
    records_st,
    config_st,
    st.booleans(),
    st.sampled_from([1, 1, 100]),
)
def test_columns_equal_reference(
    specs: list[tuple[Any, ...]],
    first: list[tuple[Any, ...]],
    second: list[tuple[Any, ...]],
    config: ChargingConfig,
    offline: bool,
    scale: int,
) -> None:
    """charge_columns gives the reference's rows, states, ledger, postings, marks, usage
    lines, notifications and forwards, batch after batch, and never writes the table."""
    paths = run_two_batches(specs, first, second, config, offline, scale)
    total = sum(paths.values())
    if total:
        share = paths["vector"] / total
        event(f"vector share {'0' if not share else '<50%' if share < 0.5 else '>=50%'}")


def test_thresholds_one_below_on_and_one_above() -> None:
    """Balances, exposures, debt and bundle use that a batch takes to one unit below, onto
    and one unit above each reminder threshold, keys set or not, charge alike both ways."""
    config = ChargingConfig(reminders=ReminderConfig(bundle_percents=(80, 100)))
    tariff = FakeTariff(bundles(1), sponsors={"zero": "OFF-SHARD"})
    low, limit = config.reminders.low_balance_micros, 2_000_000
    paths: Counter[str] = Counter()
    for offset in (-1, 0, 1):
        for keys_set in (False, True):
            for offline in (True, False):
                states: dict[str, AccountState] = {}
                # Low balance: a 60-byte record (60 micro) lands on low + offset.
                for n, mode in enumerate((PaymentMode.PREPAID, PaymentMode.HYBRID)):
                    state = AccountState(account(f"L{n}", mode, limit=limit, msisdn=f"1{n}"))
                    state.prepaid = low + 60 + offset
                    states[state.account_id] = state
                # Credit 90 %: exposure lands on 90 % of the limit + offset.
                for n, mode in enumerate((PaymentMode.POSTPAID, PaymentMode.HYBRID)):
                    state = AccountState(account(f"C{n}", mode, limit=limit, msisdn=f"2{n}"))
                    state.unbilled = -(limit * 90 // 100 - 60 + offset)
                    states[state.account_id] = state
                # Bundle 80 %: a 60 s call takes "any-voice" to 240 + offset of 300.
                state = AccountState(account("B0", PaymentMode.PREPAID, msisdn="30"))
                state.prepaid = 50_000_000
                state.bundle_used[(CYCLE, "any-voice")] = 180 + offset
                states[state.account_id] = state
                # Debt: an empty prepaid account, in debt already or not.
                state = AccountState(account("D0", PaymentMode.PREPAID, msisdn="40"))
                state.debt = offset * 100_000 if offset < 0 else 0
                states[state.account_id] = state
                if keys_set:
                    for state in states.values():
                        state.reminder_cycle = CYCLE
                        state.reminders = {
                            reminder_key(CYCLE, NotificationKind.LOW_BALANCE, str(low)),
                            reminder_key(CYCLE, NotificationKind.CREDIT_LIMIT, "90"),
                            reminder_key(CYCLE, NotificationKind.BUNDLE_USAGE, "any-voice@80"),
                            reminder_key(CYCLE, NotificationKind.DEBT_POSTED, "debt"),
                        }
                directory = {s.account.msisdns[0]: aid for aid, s in states.items()}
                data = Service.DATA
                records = [
                    rated(f"d{m}", 60, msisdn=m, service=data, usage_class="data.rg10")
                    for m in ("10", "11", "20", "21", "40")
                ] + [rated("v30", 60, msisdn="30", usage_class="voice.mobile")]
                table = AccountTable.from_states(states.values())
                out = compare_batch(states, table, directory, records, {}, tariff, config, offline)
                paths.update(out.paths)
    assert paths["vector"] and paths["reference"]


def test_table_put_and_state_round_trip() -> None:
    """A state put into a table comes back equal, for new rows past the initial capacity
    and for a row replaced by a later state (its usage totals replaced, not added)."""
    table = AccountTable(capacity=4)
    states = [_state(n, (PaymentMode.HYBRID, 2_000_000, 900_000, AccountStatus.ACTIVE, None,
                         n % 9), 1) for n in range(40)]  # fmt: skip
    for n, state in enumerate(states):
        state.usage = {(CYCLE, "voice.national"): (n + 1, 60, 0, 60_000, 60_000)}
        state.bundle_used[("2024-05", "sms")] = n + 1  # charging never stores 0 used
        assert table.put(state) == n
    assert {aid: _view(table.state(row)) for aid, row in table.index.items()} == {
        s.account_id: _view(s) for s in states
    }
    later = states[7].copy()
    later.prepaid, later.debt = 5, -7
    later.usage = {("2024-05", "sms.national"): (1, 1, 1, 0, 0)}
    later.bundle_used = {}
    later.reminders, later.crossings, later.reminder_cycle = set(), {}, None
    later.account = replace(later.account, status=AccountStatus.CLOSED)
    assert table.put(later) == 7
    assert _view(table.state(7)) == _view(later)
    assert _view(table.state(8)) == _view(states[8])


@settings(max_examples=200, deadline=None)
@given(
    accounts_st,
    records_st,
    st.lists(st.integers(0, 5), max_size=50),
    config_st,
    st.booleans(),
    st.sampled_from([1, 100]),
)
def test_columns_equal_one_by_one_when_an_msisdn_names_two_accounts(
    specs: list[tuple[Any, ...]],
    recs: list[tuple[Any, ...]],
    reassigned: list[int],
    config: ChargingConfig,
    offline: bool,
    scale: int,
) -> None:
    """Records whose msisdn the caller assigned to different accounts within one batch
    are charged as the general path charges them one at a time, in order."""
    states = {f"A{n}": _state(n, spec, scale) for n, spec in enumerate(specs)}
    records = _records(recs, "r", [], len(specs))
    account_ids = [
        f"A{reassigned[i] % len(specs)}" if i < len(reassigned) else f"A{i % len(specs)}"
        for i in range(len(records))
    ]
    tariff = FakeTariff(bundles(scale), sponsors={"spon": "A0", "zero": "OFF-SHARD"})
    table = AccountTable.from_states(states.values())
    columns = ChargeInput.from_records(records, account_ids, table)
    out = charge_columns(
        columns, table, marks={}, tariff=tariff, config=config, at_s=T0, offline=offline
    )
    world = dict(states)
    marks: dict[str, Mark[Any]] = {}
    rows, entries, notes, forwards = [], [], [], []
    for r, account_id in zip(records, account_ids, strict=True):
        one = charge(
            world[account_id], r, marks=marks, tariff=tariff, config=config, at_s=T0,
            offline=offline, others=world,
        )  # fmt: skip
        assert one.receipt is not None
        rows.append(_strip(one.receipt))
        entries.extend(one.effects.entries)
        notes.extend(one.effects.notifications)
        forwards.extend(one.effects.forwards)
        for state in one.effects.accounts:
            world[state.account_id] = state
        marks.update(dict(one.effects.marks))
    assert [_strip(r) for r in out.rows()] == rows
    assert out.entries() == entries
    assert list(out.notifications) == notes
    assert out.forwards() == forwards
    table.apply(out.update)
    assert _table_views(table) == {aid: _view(s) for aid, s in world.items()}


def test_arrow_input_equals_records_input() -> None:
    """The rater's Arrow batches give the columns, source records and charging answer
    that the same rated records give as a list (rejected rows left out of both)."""
    catalogue = load_catalogue(Path(__file__).resolve().parent.parent / "conf" / "tariffs")
    rng = random.Random(5)
    t0 = 1_767_222_000  # 2026-01-01 00:00 Europe/Berlin
    usage: list[UsageRecord] = []
    for n in range(3000):
        service = rng.choice(list(Service))
        called = rng.choice(["4915112345678", "4930123456", "3361234567", "99999123", None])
        usage.append(
            UsageRecord(
                record_id=f"arrow:{n}",
                service=service,
                served_msisdn=f"4917{rng.randrange(40):04d}",
                record_opening_time_s=t0 + rng.randrange(31 * DAY_S),
                called_number=called if service in (Service.VOICE, Service.SMS) else None,
                duration_s=rng.randrange(1, 900) if service is Service.VOICE else 0,
                sms_count=1 if service is Service.SMS else 0,
                downlink_bytes=rng.randrange(10**7) if service is Service.DATA else 0,
                rating_group=rng.choice([10, 20, None]) if service is Service.DATA else None,
                content_item_id="news-day-pass" if service is Service.CONTENT else None,
            )
        )
    plans = ["business" if int(r.served_msisdn) % 5 == 0 else "smart" for r in usage]
    batch = records_to_batch(usage)
    rated = rate_columns(batch, catalogue, pa.array(plans)).batch
    accounts = pa.array([f"acct-{r.served_msisdn}" for r in usage]).dictionary_encode()
    states = [
        AccountState(
            Account(
                account_id=f"acct-4917{n:04d}", currency="EUR",
                payment_mode=PaymentMode.PREPAID if n % 3 else PaymentMode.POSTPAID,
                msisdns=(f"4917{n:04d}",),
            )
        )
        for n in range(38)  # two numbers have no account here
    ]  # fmt: skip
    for state in states:
        state.prepaid = 2_000_000
    outcomes = RatedRows(batch, rated, catalogue)
    kept = [i for i in range(len(usage)) if isinstance(outcomes[i], RatedRecord)]
    assert 0 < len(kept) < len(usage)
    tariff = CatalogueTariff(catalogue)
    config = ChargingConfig(tz="Europe/Berlin")
    answers = []
    for arrow in (True, False):
        table = AccountTable.from_states(states)
        if arrow:
            columns = ChargeInput.from_arrow(batch, rated, accounts, table, catalogue)
        else:
            records = [outcomes[i] for i in kept]
            ids = [f"acct-{usage[i].served_msisdn}" for i in kept]
            columns = ChargeInput.from_records(records, ids, table)  # type: ignore[arg-type]
        out = charge_columns(
            columns, table, marks={}, tariff=tariff, config=config, at_s=t0 + 40 * DAY_S
        )
        answers.append((columns, out, table))
    (a, out_a, table_a), (b, out_b, table_b) = answers
    assert list(a.record_ids) == list(b.record_ids) and a.account_ids == b.account_ids
    for name in ("account", "time_s", "units", "amount", "service"):
        assert getattr(a, name).tolist() == getattr(b, name).tolist(), name
    names = {"currency": "currencies", "usage_class": "classes", "plan": "plans"}
    for name, codes in names.items():
        labels_a = [getattr(table_a, codes).names[c] for c in getattr(a, name).tolist()]
        labels_b = [getattr(table_b, codes).names[c] for c in getattr(b, name).tolist()]
        assert labels_a == labels_b, name
    assert list(a.source) == list(b.source)
    assert [_strip(r) for r in out_a.rows()] == [_strip(r) for r in out_b.rows()]
    assert out_a.entries() == out_b.entries()
