"""Column rating equals scalar rating, row for row, field for field, to the micro-unit."""

from __future__ import annotations

import importlib.util
import random
import string
from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.column_rating import RatedRows, rate_columns, tables
from billing.column_rating.arithmetic import RateTable, price_rows
from billing.columns import (
    RATED_SCHEMA,
    TIERS_FIELD,
    ColumnLayoutError,
    ColumnOverflowError,
    batch_to_records,
    records_to_batch,
)
from billing.invariant import InvariantViolation
from billing.money import RoundingMode
from billing.rated import RatedRecord, RatingOutcome
from billing.rating import load_catalogue, rate
from billing.records import Service, UsageRecord
from billing.tariffs import pricing
from billing.tariffs.conditions import Condition
from billing.tariffs.errors import Loc
from billing.tariffs.model import (
    Catalogue,
    ContentItem,
    Destination,
    MaxCostStrategy,
    PaymentMode,
    Plan,
    PlanVersion,
    Provider,
    Rate,
    RateRule,
    Tier,
)
from billing.tariffs.prefixes import PrefixTable
from billing.tariffs.timebands import Band, TimeBands

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = load_catalogue(ROOT / "conf" / "tariffs")

# Zones with odd offsets; Monrovia's -0:44:30 (until 1972) has no per-minute table.
ZONES = ["Europe/Berlin", "Asia/Kathmandu", "America/St_Johns", "UTC", "Africa/Monrovia"]
GROUPS = ["g0", "g1", "g2"]
RATING_GROUPS = [None, 0, 10, 20, 2**40]
# Conditions compile once (cel-python is slow to compile); the last one fails
# to evaluate when rating_group is 0, which must read as "no match".
CONDITIONS = [
    Condition.compile(source, Loc("test.toml", "when"))
    for source in (
        "roaming",
        "group.startsWith('g1')",
        "band == 'b0' && !roaming",
        "rating_group == 10 || service == 'sms'",
        "size(destination) > 2",
        "rating_group == 20 || 100 / rating_group > 1",
    )
]
T_LOW, T_HIGH = -300_000_000, 2_000_000_000  # 1960 .. 2033: Monrovia's old offset, DST changes


def check_equal(
    batch: pa.RecordBatch, plans: list[str | None], catalogue: Catalogue
) -> list[RatingOutcome]:
    """Rate ``batch`` both ways and fail on the first row that differs, showing both.

    A batch with a price beyond int64 must be refused as a whole; the rest of
    its rows are then compared on their own.
    """
    records = batch_to_records(batch)
    expected = [rate(record, catalogue, plan) for record, plan in zip(records, plans, strict=True)]
    plan_column = pa.array(plans, pa.string())
    beyond = [_beyond_int64(outcome) for outcome in expected]
    if any(beyond):
        with pytest.raises(ColumnOverflowError):
            rate_columns(batch, catalogue, plan_column)
        keep = [row for row, out in enumerate(beyond) if not out]
        batch, plans = batch.take(pa.array(keep, pa.int64())), [plans[row] for row in keep]
        plan_column = pa.array(plans, pa.string())
        expected = [expected[row] for row in keep]
    rated = rate_columns(batch, catalogue, plan_column, tiers=True)
    assert rated.batch.schema == RATED_SCHEMA.append(TIERS_FIELD)
    assert_same(RatedRows(batch, rated.batch, catalogue), expected, "row")
    # Without tiers, and with the plan column dictionary-encoded, the other columns are the
    # same, and the outcomes rebuilt from them (tiers recomputed) too.
    lean = rate_columns(batch, catalogue, plan_column.dictionary_encode()).batch
    assert lean.equals(rated.batch.drop_columns([TIERS_FIELD.name]))
    assert_same(RatedRows(batch, lean, catalogue), expected, "row (tiers recomputed)")
    # A slice of a larger batch (its buffers start part-way in) rates the same as a fresh one.
    if batch.num_rows > 2:
        last = batch.num_rows - 1
        middle = pa.concat_batches([batch, batch]).slice(last, 3)
        sliced = rate_columns(
            middle, catalogue, pa.array(plans * 2, pa.string()).slice(last, 3), tiers=True
        )
        wanted = [expected[last], *expected[:2]]
        assert_same(RatedRows(middle, sliced.batch, catalogue), wanted, "sliced row")
    return expected


def assert_same(got: Sequence[RatingOutcome], expected: list[RatingOutcome], what: str) -> None:
    """Fail on the first outcome that differs from the scalar one, naming the fields."""
    for row, (mine, reference) in enumerate(zip(got, expected, strict=True)):
        assert mine == reference, f"{what} {row} ({reference.record}): " + _differences(
            mine, reference
        )


def _differences(mine: RatingOutcome, reference: RatingOutcome) -> str:
    """The fields in which a column outcome differs from the scalar one: ``name: mine != ref``."""
    if type(mine) is not type(reference):
        return f"columns {mine!r} != scalar {reference!r}"
    return "; ".join(
        f"{name}: columns {getattr(mine, name)!r} != scalar {getattr(reference, name)!r}"
        for name in type(reference).__slots__
        if getattr(mine, name) != getattr(reference, name)
    )


def _beyond_int64(outcome: RatingOutcome) -> bool:
    """Whether a scalar outcome holds a number no int64 column (nor the storage) can keep."""
    if not isinstance(outcome, RatedRecord):
        return False
    numbers = [outcome.amount, outcome.billed_units, outcome.units]
    numbers += [n for t in outcome.tiers for n in (t.amount, t.billed_units, t.units)]
    return not all(-(2**63) <= n < 2**63 for n in numbers)


# ---- random catalogues ------------------------------------------------------------


@st.composite
def time_bands(draw: st.DrawFn, name: str) -> TimeBands:
    bands = []
    for position in range(draw(st.integers(0, 2))):
        start = draw(st.integers(0, 1439))
        bands.append(
            Band(
                band_id=f"b{draw(st.integers(0, position))}",
                days=frozenset(draw(st.sets(st.integers(0, 6), min_size=1))),
                from_minute=start,
                until_minute=draw(st.integers(start + 1, 1440)),
            )
        )
    # A last band over the whole week: the loader refuses a week with holes.
    bands.append(Band(band_id="rest", days=frozenset(range(7)), from_minute=0, until_minute=1440))
    zone = draw(st.sampled_from(ZONES))
    return TimeBands.build(name, zone, ZoneInfo(zone), tuple(bands))


# Prices ending in 5 make exact halves (ties) at many steps and units, so half_up and
# half_even differ; 10**12 needs the int64 guard.
PRICES_WITH_TIES = st.sampled_from([0, 5, 25, 125, 50, 500, 5_000, 50_000, 512, 10**12])


@st.composite
def rates(draw: st.DrawFn, rate_id: str) -> Rate:
    tiers = []
    start = 0
    count = draw(st.integers(1, 3))
    for position in range(count):
        increment = draw(st.sampled_from([1, 6, 30, 60, 1024, 7]))
        last = position == count - 1
        width = increment * draw(st.integers(1, 5))
        tiers.append(
            Tier(
                start_units=start,
                end_units=None if last else start + width,
                # Mostly ordinary prices; now and then one big enough to need the int64 guard.
                price=draw(st.one_of(st.integers(0, 3_000_000), PRICES_WITH_TIES)),
                rate_unit=draw(st.sampled_from([1, 2, 60, 1024, 1_048_576, 7])),
                increment=increment,
            )
        )
        start += width
    max_cost = draw(st.one_of(st.none(), st.integers(0, 50_000_000)))
    return Rate(
        rate_id=rate_id,
        tiers=tuple(tiers),
        connect_fee=draw(st.sampled_from([0, 0, 150_000, 990_000, 1])),
        rounding=draw(st.sampled_from(list(RoundingMode))),
        decimals=draw(st.one_of(st.integers(0, 6), st.just(6))),
        max_cost=max_cost,
        max_cost_strategy=draw(st.sampled_from(list(MaxCostStrategy))),
    )


@st.composite
def rules(
    draw: st.DrawFn,
    rate_pool: list[Rate],
    destinations: list[Destination],
    bands: TimeBands,
) -> tuple[RateRule, ...]:
    out = []
    for _ in range(draw(st.integers(0, 4))):
        out.append(
            RateRule(
                rate=draw(st.sampled_from(rate_pool)),
                group=draw(st.one_of(st.none(), st.sampled_from(GROUPS))),
                destination=draw(
                    st.one_of(st.none(), st.sampled_from([d.destination_id for d in destinations]))
                ),
                band=draw(st.one_of(st.none(), st.sampled_from(bands.band_ids))),
                rating_group=draw(st.sampled_from([None, None, 10, 20])),
                when=draw(st.one_of(st.none(), st.sampled_from(CONDITIONS))),
                usage_class=draw(st.sampled_from([None, None, "voice.roaming", "x.special"])),
            )
        )
    if draw(st.integers(0, 3)):  # usually a catch-all last rule, so that most records are priced
        out.append(RateRule(rate=draw(st.sampled_from(rate_pool))))
    return tuple(out)


PREFIX_DIGITS = st.text(alphabet="0123", min_size=1, max_size=7)


@st.composite
def catalogues(draw: st.DrawFn) -> Catalogue:
    band_sets = [draw(time_bands(f"tb{i}")) for i in range(draw(st.integers(1, 2)))]
    destinations = [
        Destination(destination_id=f"D{i}", group=draw(st.sampled_from(GROUPS)), name=f"D{i}")
        for i in range(draw(st.integers(1, 5)))
    ]
    destination_index = st.integers(0, len(destinations) - 1)
    prefixes = draw(st.dictionaries(PREFIX_DIGITS, destination_index))
    # Prefixes nested under others and ending in zeros: a number equal to the
    # shorter one, zero-padded, falls inside the longer one's range.
    for prefix in draw(st.lists(st.sampled_from(sorted(prefixes) or ["1"]), max_size=3)):
        prefixes[prefix + draw(st.sampled_from(["0", "00", "01"]))] = draw(destination_index)
    rate_pool = [draw(rates(f"R{i}")) for i in range(draw(st.integers(1, 4)))]
    providers = {"p0": Provider(provider_id="p0", name="p0", share_ppm=700_000)}
    items = {}
    for i in range(draw(st.integers(0, 3))):
        item_rate = Rate(
            rate_id=f"content:i{i}",
            tiers=(Tier(start_units=0, end_units=None, price=draw(st.integers(0, 9_990_000)),
                        rate_unit=1, increment=1),),
            connect_fee=0,
            rounding=RoundingMode.HALF_UP,
            decimals=6,
        )  # fmt: skip
        items[f"i{i}"] = ContentItem(
            item_id=f"i{i}",
            name=f"i{i}",
            provider_id="p0",
            share_ppm=draw(st.integers(0, 1_000_000)),
            rate=item_rate,
        )
    plans = {}
    for p in range(draw(st.integers(1, 2))):
        cuts = sorted(draw(st.sets(st.integers(T_LOW, T_HIGH), min_size=1, max_size=4)))
        versions = []
        for v, (begin, end) in enumerate(zip(cuts, [*cuts[1:], None], strict=True)):
            if draw(st.integers(0, 5)) == 0:
                continue  # a gap between versions
            bands = draw(st.sampled_from(band_sets))
            versions.append(
                PlanVersion(
                    plan_id=f"P{p}",
                    version=f"v{v}",
                    valid_from_s=begin,
                    valid_until_s=end,
                    currency=draw(st.sampled_from(["EUR", "USD"])),
                    monthly_fee=0,
                    payment_mode=PaymentMode.PREPAID,
                    timebands=bands,
                    bundles=(),
                    voice=draw(rules(rate_pool, destinations, bands)),
                    sms=draw(rules(rate_pool, destinations, bands)),
                    data=draw(rules(rate_pool, destinations, bands)),
                    content=draw(st.booleans()),
                )
            )
        plans[f"P{p}"] = Plan(plan_id=f"P{p}", name=f"P{p}", versions=tuple(versions))
    price_keys = {r.rate_id: r for r in rate_pool} | {
        i.rate.rate_id: i.rate for i in items.values()
    }
    return Catalogue(
        name="random",
        source="hypothesis",
        currency="EUR",
        timezone="UTC",
        default_plan="P0",
        destinations=tuple(destinations),
        prefixes=PrefixTable.build(prefixes),
        timebands={b.timebands_id: b for b in band_sets},
        rates={r.rate_id: r for r in rate_pool},
        providers=providers,
        items=items,
        plans=plans,
        sponsors={},
        price_keys=price_keys,
    )


@st.composite
def numbers(draw: st.DrawFn, catalogue: Catalogue) -> str | None:
    known = sorted(catalogue.prefixes.table) or ["1"]
    head = draw(st.sampled_from(known))
    tail = draw(st.text(alphabet=string.digits, max_size=12))
    return draw(
        st.sampled_from(
            [
                head + tail,
                head[:-1] + tail,  # often one digit short of a prefix: the padding case
                head,
                tail,
                None,
                "",
                head + "a7",  # not digits: the scalar path
                head + tail + "98765432101234",  # longer than E.164's 15 digits
            ]
        )
    )


SMALL_UNITS = st.one_of(st.integers(0, 5_000), st.integers(0, 10**7))
# Past the int64-safe range of most rates (the scalar path), some beyond int64 altogether.
BIG_UNITS = st.sampled_from([2**41, 2**43, 2**52])


@st.composite
def near_band_edge(draw: st.DrawFn, version: PlanVersion) -> int:
    """A moment within a minute of a band's start or end, local time, some days into ``version``."""
    bands = version.timebands
    band = draw(st.sampled_from(bands.bands))
    minute = draw(st.sampled_from([band.from_minute, band.until_minute]))
    first = datetime.fromtimestamp(version.valid_from_s, UTC).astimezone(bands.zone)
    day = first.date() + timedelta(days=draw(st.integers(0, 400)))
    edge = datetime.combine(day, time(), tzinfo=bands.zone) + timedelta(minutes=minute)
    return int(edge.timestamp()) + draw(st.sampled_from([-60, -31, -1, 0, 1, 59]))


@st.composite
def usage(draw: st.DrawFn, catalogue: Catalogue, big: bool) -> tuple[UsageRecord, str | None]:
    service = draw(st.sampled_from(list(Service)))
    units = st.one_of(SMALL_UNITS, BIG_UNITS) if big else SMALL_UNITS
    plans = list(catalogue.plans)
    # More than four plan ids in a batch (unknown ones included) takes the sorted path.
    plan = draw(st.sampled_from([*plans, *plans, *plans, None, "no-such-plan", "gone", "x"]))
    # Mostly inside the plan's versions, some right at a version's first second or just before.
    versions = catalogue.plans.get(plan or catalogue.default_plan)
    starts = [v.valid_from_s for v in versions.versions] if versions else []
    near_start = st.builds(
        lambda start, offset: start + offset,
        st.sampled_from(starts or [0]),
        st.one_of(st.integers(-1, 1), st.integers(0, 10**8), st.integers(0, 10**8)),
    )
    when = draw(st.integers(0, 4))
    if when == 0:
        t_s = draw(st.integers(T_LOW, T_HIGH))
    elif when == 1 and versions and versions.versions:
        t_s = draw(near_band_edge(draw(st.sampled_from(versions.versions))))
    else:
        t_s = draw(near_start)
    record = UsageRecord(
        record_id=f"h:{draw(st.integers(0, 10**6))}",
        service=service,
        served_msisdn="4915100000001",
        record_opening_time_s=t_s,
        called_number=draw(numbers(catalogue)),
        duration_s=draw(units),
        sms_count=draw(st.integers(0, 5)),
        uplink_bytes=draw(units),
        downlink_bytes=draw(units),
        rating_group=draw(st.sampled_from(RATING_GROUPS)),
        content_item_id=draw(st.sampled_from([None, "", "nope", *catalogue.items])),
        roaming=draw(st.booleans()),
        source_file=draw(st.sampled_from([None, "cdr-1.csv"])),
        source_line=draw(st.one_of(st.none(), st.integers(1, 10**6))),
    )
    return record, plan


@st.composite
def workloads(draw: st.DrawFn) -> tuple[Catalogue, list[tuple[UsageRecord, str | None]]]:
    catalogue = draw(catalogues())
    big = draw(st.integers(0, 2)) == 0  # one workload in three has huge volumes
    rows = draw(st.lists(usage(catalogue, big), min_size=1, max_size=60))
    # Repeat a few rows at other times, so keys shared by several rows occur.
    for record, plan in draw(st.lists(st.sampled_from(rows), max_size=20)):
        t_s = record.record_opening_time_s + draw(st.integers(-86_400, 86_400))
        rows.append((UsageRecord(**{**_fields(record), "record_opening_time_s": t_s}), plan))
    return catalogue, rows


def _fields(record: UsageRecord) -> dict[str, object]:
    return {name: getattr(record, name) for name in UsageRecord.__slots__}


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(workloads())
def test_column_rating_equals_scalar_on_random_catalogues(
    workload: tuple[Catalogue, list[tuple[UsageRecord, str | None]]],
) -> None:
    """On random catalogues and records, every rated field and every reject equals the scalar's."""
    catalogue, rows = workload
    batch = records_to_batch([record for record, _ in rows])
    check_equal(batch, [plan for _, plan in rows], catalogue)


@settings(max_examples=500, deadline=None)
@given(rates("R"), st.lists(st.one_of(SMALL_UNITS, st.integers(0, 99)), min_size=1, max_size=80))
def test_price_rows_equals_pricing_price(rate_: Rate, units: list[int]) -> None:
    """The array arithmetic prices every units count exactly as pricing.price, tier for tier."""
    table = RateTable.build([rate_])
    priced = price_rows(table, np.zeros(len(units), np.intp), np.array(units, np.int64), tiers=True)
    for row, count in enumerate(units):
        if count > table.units_max[0]:
            continue  # the rater sends these rows to the scalar path
        reference = pricing.price(rate_, count)
        tiers = tuple(
            (int(priced.tier_start[k, row]), int(priced.tier_units[k, row]),
             int(priced.tier_billed[k, row]), int(priced.tier_amount[k, row]))
            for k in range(int(priced.tier_count[row]))
        )  # fmt: skip
        got = (
            int(priced.amount[row]), int(priced.billed_units[row]), int(priced.connect_fee[row]),
            bool(priced.capped[row]), bool(priced.disconnect[row]), tiers,
        )  # fmt: skip
        expected = (
            reference.amount, reference.billed_units, reference.connect_fee, reference.capped,
            reference.disconnect,
            tuple((t.start_units, t.units, t.billed_units, t.amount) for t in reference.tiers),
        )  # fmt: skip
        assert got == expected, f"{count} units at {rate_}: columns {got} != scalar {expected}"


# ---- the sample catalogue with the bench's mix ---------------------------------------


def _bench_module() -> object:
    spec = importlib.util.spec_from_file_location("bench_rating", ROOT / "bench" / "rating.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sample_catalogue_with_the_bench_mix() -> None:
    """The bench's mix (voice, SMS, data, content, some rejects) rates identically both ways."""
    bench = _bench_module()
    records: list[UsageRecord] = bench.generate(20_000, 11)  # type: ignore[attr-defined]
    rng = random.Random(3)
    plans: list[str | None] = [rng.choice(["smart", "business", None]) for _ in records]
    expected = check_equal(records_to_batch(records), plans, SAMPLE)
    assert len({type(o) for o in expected}) == 2  # both rated records and rejects were compared


def test_memo_tables_that_start_again_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """With memo bounds so small that they reset every few batches, results stay the same."""
    monkeypatch.setattr(tables, "CHOICES_MAX", 20)
    monkeypatch.setattr(tables, "LABELS_MAX", 15)
    bench = _bench_module()
    records: list[UsageRecord] = bench.generate(3_000, 13)  # type: ignore[attr-defined]
    catalogue = load_catalogue(ROOT / "conf" / "tariffs")  # its own memo
    batch = records_to_batch(records)
    expected = [rate(record, catalogue, "smart") for record in records]
    for start in range(0, len(records), 250):
        part = batch.slice(start, 250)
        rated = rate_columns(part, catalogue, "smart", tiers=True)
        assert list(RatedRows(part, rated.batch, catalogue)) == expected[start : start + 250]


def test_sample_catalogue_across_versions_and_dst() -> None:
    """Records over 2025-2027 cross the smart plan's version change and every DST switch."""
    rng = random.Random(5)
    numbers_ = ["493012345", "4915112345678", "49900123", "33612345678", "8816123456", "99999"]
    records = [
        UsageRecord(
            record_id=f"v:{n}",
            service=rng.choice([Service.VOICE, Service.SMS, Service.DATA, Service.CONTENT]),
            served_msisdn="4915100000001",
            record_opening_time_s=rng.randrange(1_720_000_000, 1_800_000_000),
            called_number=rng.choice(numbers_),
            duration_s=rng.randrange(0, 4_000),
            sms_count=rng.randrange(0, 4),
            downlink_bytes=rng.randrange(0, 10**8),
            rating_group=rng.choice([None, 10, 20]),
            content_item_id=rng.choice([None, "game-skyrunner", "news-month"]),
            roaming=rng.random() < 0.2,
        )
        for n in range(3_000)
    ]
    check_equal(records_to_batch(records), ["smart"] * len(records), SAMPLE)


# ---- the edges of the columns --------------------------------------------------------


def test_records_round_trip_through_columns() -> None:
    """A batch built from records gives the very same records back, provenance included."""
    records = [
        UsageRecord(
            record_id="a:1",
            service=Service.DATA,
            served_msisdn="4915100000001",
            record_opening_time_s=1_770_000_000,
            uplink_bytes=5,
            downlink_bytes=7,
            rating_group=10,
            source_file="cdr.csv",
            source_line=4,
        ),
        UsageRecord(
            record_id="a:2",
            service=Service.CONTENT,
            served_msisdn="4915100000002",
            record_opening_time_s=-5,
            content_item_id="game-skyrunner",
            roaming=True,
        ),
    ]
    assert batch_to_records(records_to_batch(records)) == records


def test_plain_string_columns_from_a_client_are_accepted() -> None:
    """A client may send service and item as plain strings, in its own order of services."""
    record = UsageRecord(
        record_id="c:1",
        service=Service.SMS,
        served_msisdn="4915100000001",
        record_opening_time_s=1_770_000_000,
        called_number="4930123",
        sms_count=2,
    )
    batch = records_to_batch([record])
    plain = batch.set_column(1, "service", pa.array(["sms"])).drop_columns(
        ["source_file", "source_line"]
    )
    rated = rate_columns(plain, SAMPLE, "smart", tiers=True)
    assert list(RatedRows(batch, rated.batch, SAMPLE)) == [rate(record, SAMPLE, "smart")]


def test_a_batch_without_a_required_column_is_refused() -> None:
    """A missing column or a null where the schema forbids one names the column."""
    record = UsageRecord(
        record_id="c:1", service=Service.SMS, served_msisdn="1", record_opening_time_s=0
    )
    batch = records_to_batch([record])
    with pytest.raises(ColumnLayoutError, match="duration_s"):
        rate_columns(batch.drop_columns(["duration_s"]), SAMPLE)
    with pytest.raises(ColumnLayoutError, match="sms_count has 1 null"):
        rate_columns(batch.set_column(6, "sms_count", pa.nulls(1, pa.int64())), SAMPLE)


def test_negative_units_are_refused_as_by_the_scalar_rater() -> None:
    """A negative duration that reaches pricing raises the scalar's invariant, not a price."""
    record = UsageRecord(
        record_id="n:1",
        service=Service.VOICE,
        served_msisdn="1",
        record_opening_time_s=1_770_000_000,
        called_number="4930123",
        duration_s=-1,
    )
    with pytest.raises(InvariantViolation):
        rate(record, SAMPLE, "smart")
    with pytest.raises(InvariantViolation):
        rate_columns(records_to_batch([record]), SAMPLE, "smart")


def test_exotic_rows_are_counted() -> None:
    """Rows the arrays cannot take are rated by the scalar rater and counted by cause."""
    base = {"service": Service.VOICE, "served_msisdn": "1", "record_opening_time_s": 1_770_000_000}
    records = [
        UsageRecord(record_id="x:1", called_number="4930x1", duration_s=60, **base),  # type: ignore[arg-type]
        UsageRecord(record_id="x:2", called_number="4930123", duration_s=10**15, **base),  # type: ignore[arg-type]
        UsageRecord(record_id="x:3", called_number="4930123", duration_s=61, **base),  # type: ignore[arg-type]
    ]
    rated = rate_columns(records_to_batch(records), SAMPLE, "smart")
    assert dict(rated.scalar_rows) == {
        "not_digits": 1,
        "no_band_table": 0,
        "units_out_of_range": 1,
    }


def test_an_empty_batch_rates_to_an_empty_batch() -> None:
    """Zero rows in, zero rated rows out, with the full schema."""
    rated = rate_columns(records_to_batch([]), SAMPLE, pa.array([], pa.string()), tiers=True)
    assert rated.batch.num_rows == 0 and rated.batch.schema == RATED_SCHEMA.append(TIERS_FIELD)
