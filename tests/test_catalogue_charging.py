"""CatalogueTariff against the real catalogue in conf/tariffs: rate, then charge."""

from __future__ import annotations

from pathlib import Path

from billing.accounts import Account, AccountState, PaymentMode, Result
from billing.bundles import CatalogueTariff
from billing.charging.batch import ChargingConfig, charge_batch
from billing.rated import RatedRecord
from billing.rating import load_catalogue, rate, reprice
from billing.records import Service, UsageRecord

CATALOGUE = load_catalogue(Path(__file__).resolve().parent.parent / "conf" / "tariffs")
T_S = 1_768_467_600  # 2026-01-15 10:00 Europe/Berlin: the "2026" plan versions, peak band
MSISDN = "4915100000001"


def _rated(record_id: str, service: Service, **fields: object) -> RatedRecord:
    record = UsageRecord(
        record_id=record_id,
        service=service,
        served_msisdn=MSISDN,
        record_opening_time_s=T_S,
        **fields,  # type: ignore[arg-type]
    )
    outcome = rate(record, CATALOGUE, "smart")
    assert isinstance(outcome, RatedRecord), outcome
    return outcome


def _charge(records: list[RatedRecord], state: AccountState) -> tuple[list[object], AccountState]:
    out = charge_batch(
        records,
        accounts={state.account_id: state},
        directory={MSISDN: state.account_id},
        marks={},
        tariff=CatalogueTariff(CATALOGUE),
        config=ChargingConfig(tz="Europe/Berlin"),
        at_s=T_S,
    )
    assert out.receipt is not None
    (new,) = out.effects.accounts
    return list(out.receipt), new


def _prepaid() -> AccountState:
    state = AccountState(
        Account(
            account_id="A1",
            currency="EUR",
            payment_mode=PaymentMode.PREPAID,
            msisdns=(MSISDN,),
        )
    )
    state.prepaid = 50_000_000
    return state


def test_bundle_covered_usage_charges_no_money_and_the_rest_is_repriced() -> None:
    """Smart 2026 minutes cover a national call; past the allowance the remainder is priced
    with the call's own rate, as billing.rating.reprice prices it."""
    tariff = CatalogueTariff(CATALOGUE)
    call = _rated("c1", Service.VOICE, called_number="493012345678", duration_s=600)
    bundles = tariff.bundles_for(call.plan_id, call.plan_version, call.usage_class)
    assert [b.bundle_id for b in bundles] == ["smart-minutes"]
    allowance = bundles[0].units

    state = _prepaid()
    state.bundle_used[("2026-01", "smart-minutes")] = allowance - 100  # 100 s left
    rows, new = _charge([call], state)
    (row,) = rows
    assert row.result is Result.CHARGED  # type: ignore[attr-defined]
    assert row.bundle_units == 100  # type: ignore[attr-defined]
    expected = reprice(call, 500, CATALOGUE).amount
    assert expected > 0 and row.amount == expected  # type: ignore[attr-defined]
    assert new.prepaid == 50_000_000 - expected
    assert new.bundle_used[("2026-01", "smart-minutes")] == allowance


def test_sample_records_charge_their_rated_amounts_without_bundles() -> None:
    """With the allowances used up, every record is charged exactly its rated amount."""
    records = [
        _rated("v1", Service.VOICE, called_number="4915712345678", duration_s=61),
        _rated("s1", Service.SMS, called_number="4915712345678", sms_count=1),
        _rated("d1", Service.DATA, downlink_bytes=3_000_000, rating_group=10),
        _rated("i1", Service.VOICE, called_number="33612345678", duration_s=125),
    ]
    tariff = CatalogueTariff(CATALOGUE)
    state = _prepaid()
    for r in records:
        for bundle in tariff.bundles_for(r.plan_id, r.plan_version, r.usage_class):
            state.bundle_used[("2026-01", bundle.bundle_id)] = bundle.units
    rows, new = _charge(records, state)
    amounts = [row.amount for row in rows]  # type: ignore[attr-defined]
    assert amounts == [r.amount for r in records]
    assert all(row.bundle_units == 0 for row in rows)  # type: ignore[attr-defined]
    assert new.prepaid == 50_000_000 - sum(amounts)


def test_zero_rated_traffic_is_billed_to_the_catalogue_sponsor() -> None:
    """Rating group 20 is zero-rated for the subscriber and forwarded to the catalogue's
    sponsor (not on this shard) at the sponsor rate."""
    record = _rated("z1", Service.DATA, downlink_bytes=5 * 1_048_576, rating_group=20)
    rows, new = _charge([record], _prepaid())
    (row,) = rows
    assert row.result is Result.SPONSORED and row.amount == 0  # type: ignore[attr-defined]
    assert new.prepaid == 50_000_000
