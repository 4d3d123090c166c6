"""Bundles: per-cycle allowances (free seconds, messages, bytes) and the tariff seam charging uses.

**Where bundles come from.** The plan version that rated a record
(``RatedRecord.plan_id`` / ``plan_version``) lists its bundles; each grants
``units`` per billing cycle for the usage classes its patterns cover
(``"voice.national"``, ``"voice.*"``). Allowances are not prorated and do not
roll over: they expire at the end of the cycle, because consumption is keyed
by ``(cycle_id, bundle_id)`` and a new cycle starts from zero.

**Order.** Among the bundles covering a usage class, the *narrowest* is used
first: an exact pattern before a wildcard, a longer wildcard before a shorter
one, then the plan's declaration order. A general allowance is so kept for
the usage only it covers.

**Units.** A bundle covers raw usage units (``RatedRecord.units``: seconds,
messages, bytes), not increment-rounded ones; the uncovered remainder is priced
as a record of that length (``billing.rating.reprice``: connect fee and
increments apply to it, nothing is charged when it is zero).

:class:`Tariff` is the small protocol charging needs from the catalogue;
:class:`CatalogueTariff` implements it on ``billing.rating``.
"""

from __future__ import annotations

from typing import Protocol

from billing.invariant import InvariantViolation
from billing.rated import RatedRecord
from billing.tariffs import pricing
from billing.tariffs.model import Bundle, Catalogue, class_matches

__all__ = ["Bundle", "CatalogueTariff", "Tariff", "order_bundles", "specificity"]


class Tariff(Protocol):
    """What charging and online charging ask of the tariff catalogue."""

    def bundles_for(self, plan_id: str, plan_version: str, usage_class: str) -> tuple[Bundle, ...]:
        """The bundles of the plan version that cover ``usage_class``, in consumption order."""
        ...

    def reprice(self, rated: RatedRecord, units: int) -> int:
        """The amount of ``units`` (``<= rated.units``) of ``rated`` at the same rate."""
        ...

    def price_units(self, price_key: str, units: int) -> int:
        """The amount of ``units`` at the rate ``price_key``."""
        ...

    def units_for_amount(self, price_key: str, amount_micros: int) -> int:
        """The most units whose price at ``price_key`` is at most ``amount_micros``."""
        ...

    def sponsor_for(self, usage_class: str) -> tuple[str, str] | None:
        """A catalogue-wide sponsor of ``usage_class``: ``(account_id, price_key)``."""
        ...


def specificity(pattern: str) -> tuple[int, int]:
    """Sort key, smaller first: exact patterns, then wildcards by decreasing length."""
    if pattern.endswith(".*"):
        return (1, -len(pattern))
    return (0, -len(pattern))


def order_bundles(bundles: tuple[Bundle, ...], usage_class: str) -> tuple[Bundle, ...]:
    """The bundles covering ``usage_class``, narrowest first, then in declaration order."""
    scored: list[tuple[tuple[int, int], int, Bundle]] = []
    for position, bundle in enumerate(bundles):
        matching = [p for p in bundle.usage_classes if class_matches(p, usage_class)]
        if matching:
            scored.append((min(specificity(p) for p in matching), position, bundle))
    scored.sort(key=lambda item: (item[0], item[1]))
    return tuple(bundle for _, _, bundle in scored)


class CatalogueTariff:
    """:class:`Tariff` over a loaded catalogue; memoises the bundle order per class."""

    __slots__ = ("_bundles", "_catalogue", "_sponsors")

    def __init__(self, catalogue: Catalogue) -> None:
        self._catalogue = catalogue
        self._bundles: dict[tuple[str, str, str], tuple[Bundle, ...]] = {}
        self._sponsors: dict[str, tuple[str, str] | None] = {}

    @property
    def catalogue(self) -> Catalogue:
        return self._catalogue

    def bundles_for(self, plan_id: str, plan_version: str, usage_class: str) -> tuple[Bundle, ...]:
        key = (plan_id, plan_version, usage_class)
        found = self._bundles.get(key)
        if found is None:
            plan = self._catalogue.plans.get(plan_id)
            versions = plan.versions if plan is not None else ()
            bundles: tuple[Bundle, ...] = ()
            for version in versions:
                if version.version == plan_version:
                    bundles = version.bundles
            found = order_bundles(bundles, usage_class)
            self._bundles[key] = found
        return found

    def reprice(self, rated: RatedRecord, units: int) -> int:
        # The amount of ``billing.rating.reprice(rated, units, catalogue)``, without building
        # the repriced record: the same rate (``price_key``) priced for ``units``.
        if not 0 <= units <= rated.units:
            raise InvariantViolation(f"reprice units {units} outside 0..{rated.units}")
        return pricing.price(self._catalogue.price_keys[rated.price_key], units).amount

    def price_units(self, price_key: str, units: int) -> int:
        return pricing.price(self._catalogue.price_keys[price_key], units).amount

    def units_for_amount(self, price_key: str, amount_micros: int) -> int:
        from billing import rating

        return rating.units_for_amount(price_key, amount_micros, self._catalogue)

    def sponsor_for(self, usage_class: str) -> tuple[str, str] | None:
        if usage_class not in self._sponsors:
            sponsor = self._catalogue.sponsor_for(usage_class)
            self._sponsors[usage_class] = (
                (sponsor.account_id, sponsor.rate_id) if sponsor is not None else None
            )
        return self._sponsors[usage_class]
