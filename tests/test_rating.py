"""Worked examples of rating against the sample catalogue in conf/tariffs.

Each test writes the arithmetic out; amounts are micro-units (1 EUR = 1_000_000).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from billing.rated import RatedRecord, RatingFailure, RejectReason
from billing.rating import (
    Catalogue,
    load_catalogue,
    price_enquiry,
    rate,
    rate_batch,
    reprice,
    units_for_amount,
)
from billing.records import Service, UsageRecord

SAMPLE = Path(__file__).resolve().parent.parent / "conf" / "tariffs"
BERLIN = ZoneInfo("Europe/Berlin")
# Wednesday 2026-01-14, 10:00 Berlin: a peak weekday hour.
PEAK = int(datetime(2026, 1, 14, 10, 0, tzinfo=BERLIN).timestamp())
# Saturday 2026-01-17, 10:00 Berlin: weekends are off-peak.
OFFPEAK = int(datetime(2026, 1, 17, 10, 0, tzinfo=BERLIN).timestamp())


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue(SAMPLE)


def voice(number: str, duration_s: int, at_s: int = PEAK, *, roaming: bool = False) -> UsageRecord:
    return UsageRecord(
        record_id=f"t:{number}:{duration_s}:{at_s}",
        service=Service.VOICE,
        served_msisdn="4915100000001",
        record_opening_time_s=at_s,
        called_number=number,
        duration_s=duration_s,
        roaming=roaming,
    )


def rated(record: UsageRecord, catalogue: Catalogue, plan: str = "smart") -> RatedRecord:
    outcome = rate(record, catalogue, plan)
    assert isinstance(outcome, RatedRecord), outcome
    assert rate_batch([record], catalogue, plan) == [outcome]
    return outcome


def test_sixty_sixty_bills_every_started_minute(catalogue: Catalogue) -> None:
    """A 61 s local peak call at 0.05/min in 60/60 costs 2 x 0.05 = 0.10."""
    out = rated(voice("493012345678", 61), catalogue)
    assert (out.amount, out.billed_units, out.units) == (100_000, 120, 61)
    assert out.destination == "DE-Berlin" and out.time_band == "peak"
    assert out.usage_class == "voice.local" and out.rounding == "half_up/4"


def test_first_minute_then_per_second(catalogue: Catalogue) -> None:
    """National peak 60/1 at 0.09/min: 61 s = 0.09 (first minute) + 1 x 0.09/60 = 0.0915."""
    out = rated(voice("4940123456", 61), catalogue)
    assert [t.amount for t in out.tiers] == [90_000, 1_500]
    assert [(t.units, t.billed_units) for t in out.tiers] == [(60, 60), (1, 1)]
    assert out.amount == 91_500


def test_thirty_six_increments(catalogue: Catalogue) -> None:
    """National off-peak 30/6 at 0.04/min: 31 s = 30 s (0.02) + 1 s billed as 6 s (0.004)."""
    out = rated(voice("4940123456", 31, OFFPEAK), catalogue)
    assert [t.billed_units for t in out.tiers] == [30, 6]
    assert [t.amount for t in out.tiers] == [20_000, 4_000]
    assert out.amount == 24_000 and out.time_band == "offpeak"


def test_four_decimal_half_up_rounding(catalogue: Catalogue) -> None:
    """Mobile peak 0.2333/min per second: 181 s = 181 x 0.2333 / 60 = 0.703788.. -> 0.7038."""
    out = rated(voice("4915112345678", 181), catalogue)
    assert out.amount == 703_800
    # 13 s = 0.05054833.. -> 0.0505 (half up at the fourth decimal).
    assert rated(voice("4915112345678", 13), catalogue).amount == 50_500


def test_data_per_mib_in_kib_steps(catalogue: Catalogue) -> None:
    """1.5 MiB at 0.05/MiB in 1 KiB steps = 1536 x 0.05 / 1024 = 0.075; a byte more bills a KiB."""
    record = UsageRecord(
        record_id="t:data",
        service=Service.DATA,
        served_msisdn="4915100000001",
        record_opening_time_s=PEAK,
        uplink_bytes=524_288,
        downlink_bytes=1_048_576,
        rating_group=10,
    )
    out = rated(record, catalogue)
    assert (out.amount, out.billed_units, out.usage_class) == (75_000, 1_572_864, "data.rg10")
    bigger = rated(UsageRecord(**{**_fields(record), "downlink_bytes": 1_048_577}), catalogue)
    # 1537 KiB x 0.05 / 1024 = 0.075048828125 -> 0.0750 at four decimals.
    assert (bigger.billed_units, bigger.amount) == (1_573_888, 75_000)


def _fields(record: UsageRecord) -> dict[str, object]:
    return {name: getattr(record, name) for name in UsageRecord.__slots__}


def test_connect_fee_is_added_once(catalogue: Catalogue) -> None:
    """Zone 2: 0.15 to connect + 0.49/min 60/60; 61 s = 0.15 + 2 x 0.49 = 1.13."""
    out = rated(voice("12125551234", 61), catalogue)
    assert (out.connect_fee, out.amount, out.destination) == (150_000, 1_130_000, "US")


def test_max_cost_cap(catalogue: Catalogue) -> None:
    """Zone 3 capped at 50.00: 40 min = 0.25 + 40 x 1.49 = 59.85 -> charged 50.00, capped."""
    out = rated(voice("861012345678", 2400), catalogue)
    assert (out.amount, out.capped, out.disconnect) == (50_000_000, True, False)


def test_max_cost_disconnect(catalogue: Catalogue) -> None:
    """Premium, disconnect over 30.00: 20 min = 0.50 + 20 x 1.99 = 40.30, charged and flagged."""
    out = rated(voice("49900123456", 1200), catalogue)
    assert (out.amount, out.capped, out.disconnect) == (40_300_000, False, True)


def test_plan_version_changes_at_local_midnight(catalogue: Catalogue) -> None:
    """The smart plan's 2026 version starts at 2026-01-01 00:00 Berlin, not a second earlier."""
    midnight = int(datetime(2026, 1, 1, tzinfo=BERLIN).timestamp())
    assert rated(voice("4930123456", 10, midnight - 1), catalogue).plan_version == "2025"
    assert rated(voice("4930123456", 10, midnight), catalogue).plan_version == "2026"


def test_peak_boundary_in_local_time_after_dst_change(catalogue: Catalogue) -> None:
    """On Monday 2026-03-30 (CEST, UTC+2) peak starts at 08:00 local, which is 06:00 UTC."""
    eight = int(datetime(2026, 3, 30, 8, 0, tzinfo=BERLIN).timestamp())
    assert eight == int(datetime(2026, 3, 30, 6, 0, tzinfo=ZoneInfo("UTC")).timestamp())
    assert rated(voice("4930123456", 10, eight - 1), catalogue).time_band == "offpeak"
    assert rated(voice("4930123456", 10, eight), catalogue).time_band == "peak"
    # The Sunday of the change itself is off-peak all day.
    sunday = int(datetime(2026, 3, 29, 12, 0, tzinfo=BERLIN).timestamp())
    assert rated(voice("4930123456", 10, sunday), catalogue).time_band == "offpeak"


def test_roaming_condition_selects_roaming_rate_and_class(catalogue: Catalogue) -> None:
    """The CEL rule `roaming` wins over the destination: 31 s at 0.25/min 30/30 = 0.25."""
    out = rated(voice("4930123456", 31, roaming=True), catalogue)
    assert (out.price_key, out.usage_class, out.amount) == ("V_ROAMING", "voice.roaming", 250_000)


def test_sms_by_destination_group(catalogue: Catalogue) -> None:
    """SMS: national 0.09, international 0.19 (CEL on the group), premium 0.99 per message."""

    def sms(number: str, count: int = 1) -> RatedRecord:
        record = UsageRecord(
            record_id=f"t:sms:{number}",
            service=Service.SMS,
            served_msisdn="4915100000001",
            record_opening_time_s=PEAK,
            called_number=number,
            sms_count=count,
        )
        return rated(record, catalogue)

    assert (sms("4915112345678", 2).amount, sms("4915112345678").usage_class) == (
        180_000,
        "sms.national",
    )
    assert sms("33612345678").amount == 190_000
    assert sms("49900123").amount == 990_000


def test_content_with_revenue_share(catalogue: Catalogue) -> None:
    """500 coins cost 1.99; the provider's 70% is 1.393. A 40% item override: 6.99 -> 2.796."""

    def buy(item: str) -> RatedRecord:
        record = UsageRecord(
            record_id=f"t:content:{item}",
            service=Service.CONTENT,
            served_msisdn="4915100000001",
            record_opening_time_s=PEAK,
            content_item_id=item,
        )
        return rated(record, catalogue)

    coins = buy("game-coins-500")
    assert (coins.amount, coins.provider_share, coins.content_provider) == (
        1_990_000,
        1_393_000,
        "pixelforge",
    )
    assert coins.usage_class == "content" and coins.price_key == "content:game-coins-500"
    assert buy("news-month").provider_share == 2_796_000


def test_failures_are_values_with_reasons(catalogue: Catalogue) -> None:
    """Unknown plans, destinations, items and services come back as RatingFailure, never raise."""
    item = UsageRecord(
        record_id="t:item",
        service=Service.CONTENT,
        served_msisdn="1",
        record_opening_time_s=PEAK,
        content_item_id="no-such-item",
    )
    two_years_ago = PEAK - 2 * 366 * 86_400
    cases = [
        (voice("4930123", 5), "nope", RejectReason.NO_PLAN),
        (voice("4930123", 5, two_years_ago), "business", RejectReason.NO_PLAN),
        (voice("99999123", 5), "smart", RejectReason.NO_DESTINATION),
        (item, "smart", RejectReason.UNKNOWN_ITEM),
        (item, "business", RejectReason.UNSUPPORTED_SERVICE),
    ]
    for record, plan, reason in cases:
        outcome = rate(record, catalogue, plan)
        assert isinstance(outcome, RatingFailure) and outcome.reason is reason, outcome
        assert rate_batch([record], catalogue, plan) == [outcome]


def test_reprice_for_the_part_a_bundle_leaves(catalogue: Catalogue) -> None:
    """A 61 s national peak call with 60 s from a bundle leaves 1 s: 0.09 (first tier is 60/60)."""
    out = rated(voice("4940123456", 61), catalogue)
    rest = reprice(out, 1, catalogue)
    assert (rest.amount, rest.units, rest.billed_units, rest.price_key) == (
        90_000,
        1,
        60,
        out.price_key,
    )
    assert reprice(out, 0, catalogue).amount == 0
    assert reprice(out, 61, catalogue) == out


def test_units_for_amount_grants_what_the_balance_pays(catalogue: Catalogue) -> None:
    """With 0.12 left at 0.05/min 60/60, two minutes fit (0.10) and a third (0.15) does not."""
    assert units_for_amount("V_LOCAL_PEAK", 120_000, catalogue) == 120
    assert units_for_amount("V_LOCAL_PEAK", 0, catalogue) == 0
    # A capped rate: once the cap fits, any duration up to the limit does.
    assert units_for_amount("V_INT_Z3", 50_000_000, catalogue, units_max=86_400) == 86_400


def test_price_enquiry(catalogue: Catalogue) -> None:
    """Ten minutes to a German mobile off-peak: 600 x 0.1234 / 60 = 1.234."""
    out = price_enquiry(
        catalogue,
        plan_id="smart",
        service=Service.VOICE,
        units=600,
        at_s=OFFPEAK,
        called_number="4917612345",
    )
    assert isinstance(out, RatedRecord) and out.amount == 1_234_000


def test_business_plan_flat_band_and_round_up(catalogue: Catalogue) -> None:
    """Business: 0.03/min per second, rounded up to the cent; 61 s = 0.0305 -> 0.04."""
    out = rated(voice("4915112345678", 61), catalogue, "business")
    assert (out.amount, out.time_band, out.rounding) == (40_000, "anytime", "up/2")
