"""Choosing the rate for a record: the plan version's rules, first match wins.

Selection depends only on a few facts (plan version, service, destination,
time band, roaming, rating group), never on the usage amount, so the fast path
memoises it per tuple of those facts and this function runs once per tuple.
"""

from __future__ import annotations

from dataclasses import dataclass

from billing.rated import RejectReason
from billing.records import Service
from billing.tariffs.conditions import Facts
from billing.tariffs.model import Destination, PlanVersion, Rate, RateRule

__all__ = ["Rejection", "Selection", "select", "usage_class_of"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Selection:
    """The chosen rate and the labels the rated record carries."""

    rate: Rate
    rate_ids: tuple[str, ...]
    rounding: str
    usage_class: str
    destination: str | None
    band: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejection:
    """Why no rate was selected; becomes a ``RatingFailure``."""

    reason: RejectReason
    detail: str


def usage_class_of(
    service: Service, destination: Destination | None, rating_group: int | None
) -> str:
    """``voice.<group>``, ``sms.<group>``, ``data.rg<N>`` (``data.default`` without one)."""
    if service is Service.DATA:
        return f"data.rg{rating_group}" if rating_group is not None else "data.default"
    if service is Service.CONTENT:
        return "content"
    group = destination.group if destination is not None else "unknown"
    return f"{service.value}.{group}"


def _matches(
    rule: RateRule, destination: Destination | None, band: str, rating_group: int | None
) -> bool:
    if rule.band is not None and rule.band != band:
        return False
    if rule.rating_group is not None and rule.rating_group != rating_group:
        return False
    if rule.destination is not None and (
        destination is None or destination.destination_id != rule.destination
    ):
        return False
    return rule.group is None or (destination is not None and destination.group == rule.group)


def select(
    version: PlanVersion,
    service: Service,
    destination: Destination | None,
    band_index: int,
    roaming: bool,
    rating_group: int | None,
) -> Selection | Rejection:
    """The first rule of ``version`` for ``service`` that matches, as a :class:`Selection`."""
    rules = version.rules(service)
    if not rules:
        return Rejection(
            reason=RejectReason.UNSUPPORTED_SERVICE,
            detail=f"plan {version.plan_id} version {version.version} "
            f"does not price {service.value}",
        )
    band = version.timebands.band_ids[band_index]
    facts: Facts = (
        service.value,
        roaming,
        -1 if rating_group is None else rating_group,
        destination.destination_id if destination is not None else "",
        destination.group if destination is not None else "",
        band,
    )
    for rule in rules:
        if _matches(rule, destination, band, rating_group) and (
            rule.when is None or rule.when.matches(facts)
        ):
            rate = rule.rate
            return Selection(
                rate=rate,
                rate_ids=(rate.rate_id,),
                rounding=rate.rounding_label,
                usage_class=rule.usage_class or usage_class_of(service, destination, rating_group),
                destination=destination.destination_id if destination is not None else None,
                band=band,
            )
    where = f" to {destination.destination_id}" if destination is not None else ""
    rg = f" rating group {rating_group}" if rating_group is not None else ""
    return Rejection(
        reason=RejectReason.NO_RATE,
        detail=f"no {service.value} rule of plan {version.plan_id} version {version.version} "
        f"matches{where}{rg} in band {band}{' roaming' if roaming else ''}",
    )
