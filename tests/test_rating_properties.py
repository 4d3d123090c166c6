"""Properties of rating: non-negative, monotone, exact rounding, and batch equals one by one."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from billing.money import DECIMALS, RoundingMode, round_scaled
from billing.rated import RatedRecord
from billing.rating import load_catalogue, rate, rate_batch
from billing.records import Service, UsageRecord
from billing.tariffs import pricing
from billing.tariffs.conditions import Condition, Facts
from billing.tariffs.errors import Loc
from billing.tariffs.fastpath import _price
from billing.tariffs.timebands import DAY_S, Band, TimeBands

CATALOGUE = load_catalogue(Path(__file__).resolve().parent.parent / "conf" / "tariffs")
NUMBERS = [
    "493012345", "4940123456", "4915112345678", "4917612345", "49900123", "49800123", "49180555",
    "33612345678", "12125551234", "18765551234", "861012345678", "8816123456", "99999", "4932123",
]  # fmt: skip
ITEMS = [*CATALOGUE.items, "no-such-item"]
# 2024-06 .. 2027-06: covers both smart versions, the business plan's start and DST changes.
TIMES = st.integers(min_value=1_717_200_000, max_value=1_812_000_000)


@st.composite
def records(draw: st.DrawFn) -> UsageRecord:
    service = draw(st.sampled_from(list(Service)))
    base = {
        "record_id": f"p:{draw(st.integers(0, 10**9))}",
        "service": service,
        "served_msisdn": "4915100000001",
        "record_opening_time_s": draw(TIMES),
        "roaming": draw(st.booleans()),
    }
    if service is Service.VOICE:
        base |= {
            "called_number": draw(st.sampled_from(NUMBERS)),
            "duration_s": draw(st.integers(0, 20_000)),
        }
    elif service is Service.SMS:
        base |= {
            "called_number": draw(st.sampled_from(NUMBERS)),
            "sms_count": draw(st.integers(0, 5)),
        }
    elif service is Service.DATA:
        base |= {
            "uplink_bytes": draw(st.integers(0, 10**8)),
            "downlink_bytes": draw(st.integers(0, 10**9)),
            "rating_group": draw(st.sampled_from([None, 10, 20, 30])),
        }
    else:
        base["content_item_id"] = draw(st.sampled_from(ITEMS))
    return UsageRecord(**base)  # type: ignore[arg-type]


PLANS = st.sampled_from(["smart", "business", "none"])


@settings(max_examples=300, deadline=None)
@given(st.lists(records(), max_size=40), PLANS)
def test_rate_batch_equals_one_by_one(batch: list[UsageRecord], plan: str) -> None:
    """The fast path gives exactly the reference outcome for every record, memo warm or cold."""
    expected = [rate(record, CATALOGUE, plan) for record in batch]
    assert rate_batch(batch, CATALOGUE, plan) == expected
    assert rate_batch(batch, CATALOGUE, lambda _record: plan) == expected  # warm memo, callable


@settings(max_examples=300, deadline=None)
@given(records(), PLANS)
def test_amounts_are_never_negative(record: UsageRecord, plan: str) -> None:
    """No rated amount, tier, connect fee or provider share is ever below zero."""
    outcome = rate(record, CATALOGUE, plan)
    if isinstance(outcome, RatedRecord):
        assert outcome.amount >= 0 and outcome.connect_fee >= 0 and outcome.provider_share >= 0
        assert all(t.amount >= 0 and t.billed_units >= t.units for t in outcome.tiers)
        assert outcome.billed_units >= outcome.units


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(CATALOGUE.price_keys)), st.integers(0, 100_000), st.integers(0, 100_000)
)
def test_longer_usage_is_never_cheaper(price_key: str, units: int, more: int) -> None:
    """For every rate, pricing more units never costs less (the basis of quota grants)."""
    rate_ = CATALOGUE.price_keys[price_key]
    assert pricing.price(rate_, units + more).amount >= pricing.price(rate_, units).amount


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(CATALOGUE.price_keys)), st.integers(0, 10**10))
def test_fast_price_equals_reference_price(price_key: str, units: int) -> None:
    """The fast path's memoised pricing equals pricing.price, tier for tier."""
    rate_ = CATALOGUE.price_keys[price_key]
    reference = pricing.price(rate_, units)
    fast = _price(rate_, units, {})
    expected = (
        reference.amount, reference.billed_units, reference.connect_fee,
        reference.tiers, reference.capped, reference.disconnect,
    )  # fmt: skip
    assert fast == expected


@given(
    st.integers(-(10**15), 10**15),
    st.integers(1, 10**7),
    st.integers(0, DECIMALS),
    st.sampled_from(list(RoundingMode)),
)
def test_rounding_is_idempotent(
    numerator: int, denominator: int, decimals: int, mode: RoundingMode
) -> None:
    """Rounding an already-rounded amount again, in any mode, changes nothing."""
    once = round_scaled(numerator, denominator, decimals=decimals, mode=mode)
    for again_mode in RoundingMode:
        assert round_scaled(once, 1, decimals=decimals, mode=again_mode) == once
        assert (
            round_scaled(once * denominator, denominator, decimals=decimals, mode=again_mode)
            == once
        )


ODD_ZONES = ["Europe/Berlin", "Asia/Kathmandu", "America/St_Johns", "Australia/Lord_Howe", "UTC"]
SPLIT_BANDS = {
    name: TimeBands.build(
        "split",
        name,
        ZoneInfo(name),
        (
            # A boundary at an odd minute (12:07) and a weekday-only band catch any off-by-a-minute.
            Band(band_id="a", days=frozenset(range(5)), from_minute=0, until_minute=727),
            Band(band_id="b", days=frozenset(range(7)), from_minute=0, until_minute=1440),
        ),
    )
    for name in ODD_ZONES
}


@settings(max_examples=1000, deadline=None)
@given(TIMES, st.sampled_from(ODD_ZONES))
def test_band_cache_equals_zoneinfo(t_s: int, zone_name: str) -> None:
    """The 15-minute bucket cache picks the same band as zoneinfo, in zones with odd offsets too."""
    bands = SPLIT_BANDS[zone_name]
    assert bands.band_fast(t_s) == bands.band_at(t_s)


# Historic offsets that are not whole minutes (Monrovia -0:44:30 until 1972,
# Amsterdam +0:19:32 until 1937) have no per-minute band: the table must say so.
DAY_ZONES = [*ODD_ZONES, "Africa/Monrovia", "Europe/Amsterdam"]
DAY_BANDS = {
    name: SPLIT_BANDS.get(name)
    or TimeBands.build("split", name, ZoneInfo(name), SPLIT_BANDS["UTC"].bands)
    for name in DAY_ZONES
}


@settings(max_examples=300, deadline=None)
@given(st.integers(-(10**9), 2 * 10**9), st.sampled_from(DAY_ZONES))
def test_day_table_equals_zoneinfo(t_s: int, zone_name: str) -> None:
    """The per-day minute table the batch path indexes picks the zoneinfo band, or is absent."""
    bands = DAY_BANDS[zone_name]
    table = bands.day_minutes(t_s // DAY_S)
    if table is not None:
        assert len(table) == DAY_S // 60
        assert table[t_s % DAY_S // 60] == bands.band_at(t_s)


CONDITION_SOURCES = [
    "roaming",
    "group.startsWith('international')",
    "group in ['local', 'national'] && band == 'peak'",
    ".roaming || rating_group == 20",
    "size(destination) > 3 && service == 'voice'",
]
FACTS = st.tuples(
    st.sampled_from(["voice", "sms", "data"]),
    st.booleans(),
    st.sampled_from([-1, 10, 20]),
    st.sampled_from(["", "DE-mobile", "FR", "US"]),
    st.sampled_from(["", "mobile", "local", "national", "international_z1"]),
    st.sampled_from(["", "peak", "offpeak"]),
)
CONDITIONS = [Condition.compile(source, Loc("test.toml", "when")) for source in CONDITION_SOURCES]


@settings(max_examples=300, deadline=None)
@given(st.lists(FACTS, min_size=1, max_size=20), st.sampled_from(range(len(CONDITIONS))))
def test_condition_cache_equals_fresh_evaluation(facts_seen: list[Facts], index: int) -> None:
    """A condition cached on the facts it reads answers as a fresh evaluation on all six would."""
    condition = CONDITIONS[index]
    for facts in facts_seen:
        assert condition.matches(facts) == (condition._evaluate(facts) is True)
