"""The tariff catalogue as frozen values: rates, destinations, plans, bundles, content.

Everything here is built once by ``billing.tariffs.loader`` and never mutated;
the only mutable parts are memo tables (band buckets, condition results) whose
contents are pure functions of the catalogue. Amounts are micro-units
(``billing.money``); units are seconds, messages, bytes or items.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from billing.money import RoundingMode
from billing.records import Service
from billing.tariffs.conditions import Condition
from billing.tariffs.prefixes import PrefixTable
from billing.tariffs.timebands import TimeBands

__all__ = [
    "SERVICE_UNITS",
    "Bundle",
    "Catalogue",
    "ContentItem",
    "Destination",
    "MaxCostStrategy",
    "PaymentMode",
    "Plan",
    "PlanVersion",
    "Provider",
    "Rate",
    "RateRule",
    "Sponsor",
    "Tier",
    "class_matches",
]

SERVICE_UNITS: Mapping[str, str] = {
    "voice": "seconds",
    "sms": "messages",
    "data": "bytes",
    "content": "items",
}


class MaxCostStrategy(enum.StrEnum):
    """What happens when a record costs more than the rate's ``max_cost``."""

    CAP = "cap"  # charge max_cost and mark the record capped
    DISCONNECT = "disconnect"  # charge the full amount and flag that the call should have been cut


class PaymentMode(enum.StrEnum):
    """How a plan's accounts pay by default; accounts may switch (see billing.accounts)."""

    PREPAID = "prepaid"
    POSTPAID = "postpaid"
    HYBRID = "hybrid"


@dataclass(frozen=True, slots=True, kw_only=True)
class Tier:
    """Usage in ``[start_units, end_units)`` at ``price`` per ``rate_unit``, ``increment`` steps."""

    start_units: int
    end_units: int | None
    price: int
    rate_unit: int
    increment: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Rate:
    """A price: a connect fee, tiers by elapsed usage, one rounding, an optional max cost."""

    rate_id: str
    tiers: tuple[Tier, ...]
    connect_fee: int
    rounding: RoundingMode
    decimals: int
    max_cost: int | None = None
    max_cost_strategy: MaxCostStrategy = MaxCostStrategy.CAP

    @property
    def rounding_label(self) -> str:
        """``"half_up/4"``: the mode and decimals, as stored on a RatedRecord."""
        return f"{self.rounding.value}/{self.decimals}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Destination:
    """A named destination (``"DE-mobile"``) in a reporting and bundle group (``"mobile"``)."""

    destination_id: str
    group: str
    name: str


def class_matches(pattern: str, usage_class: str) -> bool:
    """``"voice.*"`` covers every ``"voice.<x>"``; any other pattern must match exactly."""
    if pattern.endswith(".*"):
        return usage_class.startswith(pattern[:-1])
    return pattern == usage_class


@dataclass(frozen=True, slots=True, kw_only=True)
class Bundle:
    """An allowance granted per billing cycle: ``units`` of ``unit`` for the covered usage classes.

    Loaded and validated here; consuming it is ``billing.charging.batch``'s job. All
    patterns of one bundle are of one service, so ``unit`` is unambiguous.
    """

    bundle_id: str
    usage_classes: tuple[str, ...]
    units: int
    unit: str

    def covers(self, usage_class: str) -> bool:
        return any(class_matches(pattern, usage_class) for pattern in self.usage_classes)


@dataclass(frozen=True, slots=True, kw_only=True)
class RateRule:
    """One line of a plan's selection table; the first rule whose criteria all hold wins.

    ``None`` criteria match anything. ``usage_class`` overrides the class the
    record gets (e.g. ``"voice.roaming"``), so bundles can exclude it.
    """

    rate: Rate
    group: str | None = None
    destination: str | None = None
    band: str | None = None
    rating_group: int | None = None
    when: Condition | None = None
    usage_class: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanVersion:
    """A plan as valid in ``[valid_from_s, valid_until_s)``; ``None`` is open-ended."""

    plan_id: str
    version: str
    valid_from_s: int
    valid_until_s: int | None
    currency: str
    monthly_fee: int
    payment_mode: PaymentMode
    timebands: TimeBands
    bundles: tuple[Bundle, ...]
    voice: tuple[RateRule, ...]
    sms: tuple[RateRule, ...]
    data: tuple[RateRule, ...]
    content: bool

    def active_at(self, t_s: int) -> bool:
        return self.valid_from_s <= t_s and (self.valid_until_s is None or t_s < self.valid_until_s)

    def rules(self, service: Service) -> tuple[RateRule, ...]:
        if service is Service.VOICE:
            return self.voice
        if service is Service.SMS:
            return self.sms
        if service is Service.DATA:
            return self.data
        return ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """A plan id and its versions, sorted by ``valid_from_s`` and never overlapping."""

    plan_id: str
    name: str
    versions: tuple[PlanVersion, ...]
    _starts: tuple[int, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_starts", tuple(v.valid_from_s for v in self.versions))

    def version_at(self, t_s: int) -> PlanVersion | None:
        """The version active at ``t_s``, if any (a gap between versions has none)."""
        position = bisect.bisect_right(self._starts, t_s) - 1
        if position < 0:
            return None
        version = self.versions[position]
        return version if version.active_at(t_s) else None


@dataclass(frozen=True, slots=True, kw_only=True)
class Provider:
    """A content provider and its default revenue share in parts per million."""

    provider_id: str
    name: str
    share_ppm: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ContentItem:
    """A purchasable item; ``rate`` prices one purchase, ``share_ppm`` is owed to the provider."""

    item_id: str
    name: str
    provider_id: str
    share_ppm: int
    rate: Rate


@dataclass(frozen=True, slots=True, kw_only=True)
class Sponsor:
    """A third party paying for zero-rated usage (backward billing).

    The subscriber's record rates at the plan's (usually zero) price; charging
    bills ``account_id`` for the covered usage classes at ``rate_id``.
    """

    sponsor_id: str
    name: str
    account_id: str
    usage_classes: tuple[str, ...]
    rate_id: str

    def covers(self, usage_class: str) -> bool:
        return any(class_matches(pattern, usage_class) for pattern in self.usage_classes)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False, weakref_slot=True)
class Catalogue:
    """The whole loaded tariff catalogue. Compared by identity; memo tables key on it.

    ``price_keys`` maps every ``RatedRecord.price_key`` (a rate id, or
    ``"content:<item id>"``) to its rate, for ``reprice`` and quota questions.
    """

    name: str
    source: str
    currency: str
    timezone: str
    default_plan: str
    destinations: tuple[Destination, ...]
    prefixes: PrefixTable
    timebands: Mapping[str, TimeBands]
    rates: Mapping[str, Rate]
    providers: Mapping[str, Provider]
    items: Mapping[str, ContentItem]
    plans: Mapping[str, Plan]
    sponsors: Mapping[str, Sponsor]
    price_keys: Mapping[str, Rate]

    def plan_version(self, plan_id: str, t_s: int) -> PlanVersion | None:
        plan = self.plans.get(plan_id)
        return plan.version_at(t_s) if plan is not None else None

    def destination_of(self, number: str) -> Destination | None:
        """The destination of ``number`` (E.164 digits) by longest prefix."""
        index = self.prefixes.lookup(number)
        return self.destinations[index] if index is not None else None

    def sponsor_for(self, usage_class: str) -> Sponsor | None:
        """The sponsor that pays for ``usage_class``, if one does (first declared wins)."""
        for sponsor in self.sponsors.values():
            if sponsor.covers(usage_class):
                return sponsor
        return None
