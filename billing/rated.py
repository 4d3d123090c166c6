"""The outcome of rating one usage record: a priced record or a reason it cannot be.

These types are the contract between rating (``billing.rating``) and charging
(``billing.charging.batch``); they are values, never exceptions.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from billing.records import UsageRecord

__all__ = ["RatedRecord", "RatingFailure", "RatingOutcome", "RejectReason", "TierCharge"]


class RejectReason(enum.StrEnum):
    """Why a record was not rated. Maps one to one to the proto enum."""

    MALFORMED = "malformed"  # a reader could not parse or validate the line
    NO_PLAN = "no_plan"  # no plan (version) active at the record's start time
    NO_DESTINATION = "no_destination"  # no prefix matches the called number
    UNSUPPORTED_SERVICE = "unsupported_service"  # the plan does not price this service
    NO_RATE = "no_rate"  # no time band / condition selects a rate
    UNKNOWN_ITEM = "unknown_item"  # content item not in the catalogue
    UNKNOWN_ACCOUNT = "unknown_account"  # charging: no account for the subscriber


@dataclass(frozen=True, slots=True, kw_only=True)
class TierCharge:
    """One tier's piece of a rated record.

    ``units`` is the raw usage that fell in the tier, ``billed_units`` the same
    rounded up to the tier's increment, ``amount`` its price in micro-units
    after the rate's rounding.
    """

    rate_id: str
    start_units: int
    units: int
    billed_units: int
    amount: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RatedRecord:
    """A priced usage record. ``amount`` is micro-units in ``currency``.

    ``usage_class`` names what bundles may cover the record, e.g.
    ``"voice.national"``, ``"sms.national"``, ``"data.rg10"``, ``"content"``.
    ``price_key`` identifies the selected rate so that charging can price a
    smaller number of units (the part a bundle does not cover) with the very
    same rate: see ``billing.rating.reprice``.
    """

    record: UsageRecord
    plan_id: str
    plan_version: str
    currency: str
    amount: int
    units: int
    billed_units: int
    connect_fee: int
    tiers: tuple[TierCharge, ...]
    rate_ids: tuple[str, ...]
    rounding: str
    usage_class: str
    price_key: str
    destination: str | None = None
    time_band: str | None = None
    capped: bool = False
    disconnect: bool = False
    content_provider: str | None = None
    provider_share: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class RatingFailure:
    """A record that could not be rated, with a reason a person can act on."""

    record: UsageRecord
    reason: RejectReason
    detail: str


RatingOutcome = RatedRecord | RatingFailure
