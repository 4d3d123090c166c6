"""Plans: versions with validity dates, bundles and rate selection rules; and sponsors.

A plan id has versions valid in ``[valid_from, valid_until)``. A TOML date
means midnight in the catalogue's time zone, a local date-time is read in that
zone, and an offset date-time is taken as written. Versions of one plan must
not overlap; a gap is allowed (records in it fail with ``no_plan``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from zoneinfo import ZoneInfo

from billing.tariffs.conditions import Condition
from billing.tariffs.errors import Loc
from billing.tariffs.fields import (
    Table,
    as_table,
    check_keys,
    get_amount,
    get_bool,
    get_int,
    get_list,
    get_str,
    ident,
    opt_int,
    opt_str,
)
from billing.tariffs.model import (
    SERVICE_UNITS,
    Bundle,
    Destination,
    PaymentMode,
    Plan,
    PlanVersion,
    Rate,
    RateRule,
    Sponsor,
)
from billing.tariffs.sections import Entry
from billing.tariffs.timebands import TimeBands

__all__ = ["load_plans", "load_sponsors"]

_VERSION_KEYS = (
    "version", "valid_from", "valid_until", "currency", "monthly_fee", "payment_mode",
    "timebands", "bundles", "voice", "sms", "data", "content",
)  # fmt: skip
_RULE_KEYS = ("rate", "group", "destination", "band", "rating_group", "when", "usage_class")


def _instant(value: object, loc: Loc, zone: ZoneInfo) -> tuple[int, str]:
    """Unix seconds and the text to show for a TOML date or date-time."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=zone)
        return int(moment.timestamp()), value.isoformat()
    if isinstance(value, date):
        midnight = datetime(value.year, value.month, value.day, tzinfo=zone)
        return int(midnight.timestamp()), value.isoformat()
    raise loc.error(f"expected a TOML date (2026-01-01) or date-time, got {value!r}")


def _class_patterns(raw: object, loc: Loc) -> tuple[str, ...]:
    """Usage-class patterns (``voice.national``, ``data.*``), all of one service."""
    patterns = [raw] if isinstance(raw, str) else raw
    if not isinstance(patterns, list) or not patterns:
        raise loc.error("expected a usage class pattern or a non-empty array of them")
    services: set[str] = set()
    for position, pattern in enumerate(patterns):
        where = loc.index(position) if isinstance(raw, list) else loc
        if not isinstance(pattern, str):
            raise where.error(f"expected a usage class pattern, got {pattern!r}")
        service, _, rest = pattern.partition(".")
        if service not in SERVICE_UNITS or (service != "content" and not rest):
            raise where.error(
                f"expected <service>.<class> or <service>.* with a service of "
                f"{', '.join(SERVICE_UNITS)}, got {pattern!r}"
            )
        services.add(service)
    if len(services) > 1:
        raise loc.error(f"mixes services {sorted(services)}: one bundle grants one kind of unit")
    return tuple(str(p) for p in patterns)


def _bundles(raw: list[object], loc: Loc) -> tuple[Bundle, ...]:
    bundles: list[Bundle] = []
    for position, item in enumerate(raw):
        bundle_loc = loc.index(position)
        table = as_table(item, bundle_loc)
        check_keys(table, bundle_loc, ("id", "covers", "units"))
        bundle_id = ident(table.get("id"), bundle_loc.key("id"))
        if any(b.bundle_id == bundle_id for b in bundles):
            raise bundle_loc.key("id").error(f"duplicate bundle id {bundle_id!r}")
        if "covers" not in table:
            raise bundle_loc.key("covers").error("missing required key")
        patterns = _class_patterns(table["covers"], bundle_loc.key("covers"))
        bundles.append(
            Bundle(
                bundle_id=bundle_id,
                usage_classes=patterns,
                units=get_int(table, "units", bundle_loc, minimum=1),
                unit=SERVICE_UNITS[patterns[0].partition(".")[0]],
            )
        )
    return tuple(bundles)


def _rules(
    service: str,
    raw: list[object],
    loc: Loc,
    *,
    rates: Mapping[str, Rate],
    timebands: TimeBands,
    groups: frozenset[str],
    destination_ids: frozenset[str],
) -> tuple[RateRule, ...]:
    rules: list[RateRule] = []
    for position, item in enumerate(raw):
        rule_loc = loc.index(position)
        table = as_table(item, rule_loc)
        check_keys(table, rule_loc, _RULE_KEYS)
        rate_id = get_str(table, "rate", rule_loc)
        if rate_id not in rates:
            raise rule_loc.key("rate").error(f"unknown rate {rate_id!r}")
        group = opt_str(table, "group", rule_loc)
        if group is not None and group not in groups:
            raise rule_loc.key("group").error(f"unknown destination group {group!r}")
        destination = opt_str(table, "destination", rule_loc)
        if destination is not None and destination not in destination_ids:
            raise rule_loc.key("destination").error(f"unknown destination {destination!r}")
        if service == "data" and (group or destination):
            raise rule_loc.error(
                "data rules select by rating_group, band or when, not by destination"
            )
        band = opt_str(table, "band", rule_loc)
        if band is not None and band not in timebands.band_ids:
            raise rule_loc.key("band").error(
                f"unknown band {band!r} in timebands {timebands.timebands_id!r} "
                f"(one of: {', '.join(timebands.band_ids)})"
            )
        when_text = opt_str(table, "when", rule_loc)
        usage_class = opt_str(table, "usage_class", rule_loc)
        if usage_class is not None and not usage_class.startswith(f"{service}."):
            raise rule_loc.key("usage_class").error(
                f"must start with {service + '.'!r}, got {usage_class!r}"
            )
        rules.append(
            RateRule(
                rate=rates[rate_id],
                group=group,
                destination=destination,
                band=band,
                rating_group=opt_int(table, "rating_group", rule_loc),
                when=Condition.compile(when_text, rule_loc.key("when")) if when_text else None,
                usage_class=usage_class,
            )
        )
    return tuple(rules)


def _version(
    plan_id: str,
    table: Table,
    loc: Loc,
    *,
    zone: ZoneInfo,
    currency: str,
    timebands: Mapping[str, TimeBands],
    rates: Mapping[str, Rate],
    destinations: Sequence[Destination],
) -> tuple[PlanVersion, str]:
    check_keys(table, loc, _VERSION_KEYS)
    valid_from_s, from_text = _instant(table.get("valid_from"), loc.key("valid_from"), zone)
    valid_until_s: int | None = None
    until_text = "open"
    if "valid_until" in table:
        valid_until_s, until_text = _instant(table["valid_until"], loc.key("valid_until"), zone)
        if valid_until_s <= valid_from_s:
            raise loc.key("valid_until").error(f"must be after valid_from ({from_text})")
    bands_id = get_str(table, "timebands", loc)
    if bands_id not in timebands:
        raise loc.key("timebands").error(f"unknown timebands {bands_id!r}")
    mode_text = table.get("payment_mode", "prepaid")
    try:
        payment_mode = PaymentMode(str(mode_text))
    except ValueError:
        raise loc.key("payment_mode").error(
            f"expected prepaid, postpaid or hybrid, got {mode_text!r}"
        ) from None
    version_currency = opt_str(table, "currency", loc) or currency
    if version_currency != currency:
        # One currency per catalogue keeps rates unambiguous: a rate has no currency of its own.
        raise loc.key("currency").error(f"differs from the catalogue currency {currency}")
    groups = frozenset(d.group for d in destinations)
    destination_ids = frozenset(d.destination_id for d in destinations)
    rules = {
        service: _rules(
            service,
            get_list(table, service, loc, default=[]),
            loc.key(service),
            rates=rates,
            timebands=timebands[bands_id],
            groups=groups,
            destination_ids=destination_ids,
        )
        for service in ("voice", "sms", "data")
    }
    version = PlanVersion(
        plan_id=plan_id,
        version=ident(table.get("version"), loc.key("version")),
        valid_from_s=valid_from_s,
        valid_until_s=valid_until_s,
        currency=version_currency,
        monthly_fee=get_amount(table, "monthly_fee", loc) if "monthly_fee" in table else 0,
        payment_mode=payment_mode,
        timebands=timebands[bands_id],
        bundles=_bundles(get_list(table, "bundles", loc, default=[]), loc.key("bundles")),
        voice=rules["voice"],
        sms=rules["sms"],
        data=rules["data"],
        content=get_bool(table, "content", loc, default=False),
    )
    return version, f"{from_text}..{until_text}"


def load_plans(
    entries: Sequence[Entry],
    *,
    timezone: ZoneInfo,
    currency: str,
    timebands: Mapping[str, TimeBands],
    rates: Mapping[str, Rate],
    destinations: Sequence[Destination],
) -> dict[str, Plan]:
    """Build every plan; versions of one plan that overlap are an error."""
    plans: dict[str, Plan] = {}
    for entry in entries:
        table, loc = entry.table, entry.loc
        check_keys(table, loc, ("name", "versions"))
        plan_id = ident(entry.entry_id, loc)
        versions: list[tuple[PlanVersion, str]] = []
        raw_versions = get_list(table, "versions", loc)
        if not raw_versions:
            raise loc.key("versions").error("at least one version is needed")
        for position, raw in enumerate(raw_versions):
            version_loc = loc.key("versions").index(position)
            version, span = _version(
                plan_id,
                as_table(raw, version_loc),
                version_loc,
                zone=timezone,
                currency=currency,
                timebands=timebands,
                rates=rates,
                destinations=destinations,
            )
            for earlier, (other, other_span) in enumerate(versions):
                if other.version == version.version:
                    raise version_loc.key("version").error(f"duplicate version {version.version!r}")
                starts_before_other_ends = (
                    other.valid_until_s is None or version.valid_from_s < other.valid_until_s
                )
                ends_after_other_starts = (
                    version.valid_until_s is None or other.valid_from_s < version.valid_until_s
                )
                if starts_before_other_ends and ends_after_other_starts:
                    raise version_loc.key("valid_from").error(
                        f"overlaps version {earlier} {other.version!r} ({other_span})"
                    )
            versions.append((version, span))
        ordered = tuple(sorted((v for v, _ in versions), key=lambda v: v.valid_from_s))
        plans[plan_id] = Plan(plan_id=plan_id, name=get_str(table, "name", loc), versions=ordered)
    return plans


def load_sponsors(entries: Sequence[Entry], rates: Mapping[str, Rate]) -> dict[str, Sponsor]:
    """Sponsors of zero-rated usage: who pays, for which usage classes, at which rate."""
    sponsors: dict[str, Sponsor] = {}
    for entry in entries:
        table, loc = entry.table, entry.loc
        check_keys(table, loc, ("name", "account", "covers", "rate"))
        rate_id = get_str(table, "rate", loc)
        if rate_id not in rates:
            raise loc.key("rate").error(f"unknown rate {rate_id!r}")
        if "covers" not in table:
            raise loc.key("covers").error("missing required key")
        sponsor_id = ident(entry.entry_id, loc)
        sponsors[sponsor_id] = Sponsor(
            sponsor_id=sponsor_id,
            name=get_str(table, "name", loc),
            account_id=get_str(table, "account", loc),
            usage_classes=_class_patterns(table["covers"], loc.key("covers")),
            rate_id=rate_id,
        )
    return sponsors
