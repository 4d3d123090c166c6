"""Rating: pricing usage records from the tariff catalogue. Pure functions.

``rate`` is the reference path: plain, uncached, one record at a time.
``rate_batch`` is the fast path (``billing.tariffs.fastpath``) and must give
exactly the same outcomes; a property test holds it to that. ``reprice`` and
``units_for_amount`` serve charging (bundles, online quota) with the same
arithmetic, documented in ``billing.tariffs.pricing`` and ``docs/tariffs.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Final

from billing.invariant import InvariantViolation, invariant
from billing.money import RoundingMode, round_scaled
from billing.rated import RatedRecord, RatingFailure, RatingOutcome, RejectReason
from billing.records import Service, UsageRecord
from billing.tariffs import pricing
from billing.tariffs.errors import TariffError
from billing.tariffs.fastpath import rate_many
from billing.tariffs.loader import load_catalogue
from billing.tariffs.model import Catalogue, ContentItem, PlanVersion, Rate
from billing.tariffs.selection import Rejection, select

__all__ = [
    "PPM",
    "Catalogue",
    "TariffError",
    "load_catalogue",
    "price_enquiry",
    "provider_share",
    "rate",
    "rate_batch",
    "reprice",
    "units_for_amount",
]

PPM: Final = 1_000_000
UNITS_MAX_DEFAULT: Final = 2**31 - 1


def provider_share(amount: int, share_ppm: int) -> int:
    """The content provider's part of ``amount``, rounded down to the micro-unit.

    Down, because the operator pays the provider and never owes a fraction it
    did not collect.
    """
    return round_scaled(amount * share_ppm, PPM, decimals=6, mode=RoundingMode.DOWN)


def _fail(record: UsageRecord, reason: RejectReason, detail: str) -> RatingFailure:
    return RatingFailure(record=record, reason=reason, detail=detail)


def _rate_content(record: UsageRecord, version: PlanVersion, catalogue: Catalogue) -> RatingOutcome:
    if not version.content:
        return _fail(
            record,
            RejectReason.UNSUPPORTED_SERVICE,
            f"plan {version.plan_id} version {version.version} does not sell content",
        )
    item: ContentItem | None = catalogue.items.get(record.content_item_id or "")
    if item is None:
        return _fail(
            record,
            RejectReason.UNKNOWN_ITEM,
            f"content item {record.content_item_id!r} is not in the catalogue",
        )
    priced = pricing.price(item.rate, 1)
    return RatedRecord(
        record=record,
        plan_id=version.plan_id,
        plan_version=version.version,
        currency=version.currency,
        amount=priced.amount,
        units=1,
        billed_units=priced.billed_units,
        connect_fee=priced.connect_fee,
        tiers=priced.tiers,
        rate_ids=(item.rate.rate_id,),
        rounding=item.rate.rounding_label,
        usage_class="content",
        price_key=item.rate.rate_id,
        capped=priced.capped,
        disconnect=priced.disconnect,
        content_provider=item.provider_id,
        provider_share=provider_share(priced.amount, item.share_ppm),
    )


def rate(record: UsageRecord, catalogue: Catalogue, plan_id: str | None = None) -> RatingOutcome:
    """Price one record for ``plan_id`` (``None``: the catalogue's ``default_plan``)."""
    plan_key = catalogue.default_plan if plan_id is None else plan_id
    t_s = record.record_opening_time_s
    version = catalogue.plan_version(plan_key, t_s)
    if version is None:
        known = "unknown plan" if plan_key not in catalogue.plans else "no version active"
        return _fail(record, RejectReason.NO_PLAN, f"plan {plan_key!r}: {known} at {t_s}")
    service = record.service
    if service is Service.CONTENT:
        return _rate_content(record, version, catalogue)
    destination = None
    if service is not Service.DATA:
        if not record.called_number:
            return _fail(
                record, RejectReason.NO_DESTINATION, f"{service.value} record without called number"
            )
        destination = catalogue.destination_of(record.called_number)
        if destination is None:
            return _fail(
                record, RejectReason.NO_DESTINATION, f"no prefix matches {record.called_number}"
            )
    band_index = version.timebands.band_at(t_s)
    chosen = select(version, service, destination, band_index, record.roaming, record.rating_group)
    if isinstance(chosen, Rejection):
        return _fail(record, chosen.reason, chosen.detail)
    priced = pricing.price(chosen.rate, record.units)
    return RatedRecord(
        record=record,
        plan_id=version.plan_id,
        plan_version=version.version,
        currency=version.currency,
        amount=priced.amount,
        units=priced.units,
        billed_units=priced.billed_units,
        connect_fee=priced.connect_fee,
        tiers=priced.tiers,
        rate_ids=chosen.rate_ids,
        rounding=chosen.rounding,
        usage_class=chosen.usage_class,
        price_key=chosen.rate.rate_id,
        destination=chosen.destination,
        time_band=chosen.band,
        capped=priced.capped,
        disconnect=priced.disconnect,
    )


def rate_batch(
    records: Iterable[UsageRecord],
    catalogue: Catalogue,
    plan_of: Callable[[UsageRecord], str] | str | None = None,
) -> list[RatingOutcome]:
    """Price many records; equal, outcome for outcome, to calling :func:`rate` on each.

    ``plan_of`` is one plan id for all records, a function from record to plan
    id, or ``None`` for the catalogue's default plan.
    """
    return rate_many(
        records, catalogue, catalogue.default_plan if plan_of is None else plan_of, rate
    )


def _rate_for(price_key: str, catalogue: Catalogue) -> Rate:
    found = catalogue.price_keys.get(price_key)
    if found is None:
        # A price key comes from a RatedRecord of this catalogue; anything else is a caller bug.
        raise InvariantViolation(f"unknown price key {price_key!r} in catalogue {catalogue.source}")
    return found


def reprice(rated: RatedRecord, units: int, catalogue: Catalogue) -> RatedRecord:
    """The same record priced for ``units`` (``0 <= units <= rated.units``) at the same rate.

    Charging calls this for the part of a record a bundle does not cover. The
    units are priced as a record of that length: tiers restart at zero, and the
    connect fee is charged when ``units > 0`` and not when ``units == 0``.
    """
    invariant(0 <= units <= rated.units, f"reprice units {units} outside 0..{rated.units}")
    priced = pricing.price(_rate_for(rated.price_key, catalogue), units)
    share = rated.provider_share
    if rated.content_provider is not None:
        item = catalogue.items[rated.price_key.removeprefix("content:")]
        share = provider_share(priced.amount, item.share_ppm)
    return replace(
        rated,
        amount=priced.amount,
        units=units,
        billed_units=priced.billed_units,
        connect_fee=priced.connect_fee,
        tiers=priced.tiers,
        capped=priced.capped,
        disconnect=priced.disconnect,
        provider_share=share,
    )


def units_for_amount(
    price_key: str, amount_micros: int, catalogue: Catalogue, *, units_max: int = UNITS_MAX_DEFAULT
) -> int:
    """The most units (at most ``units_max``) whose price at ``price_key`` is ``<= amount_micros``.

    Online charging grants this much quota against a balance. A rate capped by
    ``max_cost`` that the amount covers grants ``units_max``.
    """
    return pricing.units_for_amount(_rate_for(price_key, catalogue), amount_micros, units_max)


def price_enquiry(
    catalogue: Catalogue,
    *,
    plan_id: str | None,
    service: Service,
    units: int,
    at_s: int,
    called_number: str | None = None,
    rating_group: int | None = None,
    content_item_id: str | None = None,
    roaming: bool = False,
) -> RatingOutcome:
    """What ``units`` of ``service`` would cost for ``plan_id`` at ``at_s``, as a rated outcome."""
    record = UsageRecord(
        record_id="enquiry:0",
        service=service,
        served_msisdn="",
        record_opening_time_s=at_s,
        called_number=called_number,
        duration_s=units if service is Service.VOICE else 0,
        sms_count=units if service is Service.SMS else 0,
        downlink_bytes=units if service is Service.DATA else 0,
        rating_group=rating_group,
        content_item_id=content_item_id,
        roaming=roaming,
    )
    return rate(record, catalogue, plan_id)
