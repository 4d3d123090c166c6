"""Load and validate a tariff catalogue folder into a :class:`Catalogue`, all or nothing.

The format is described in ``docs/tariffs.md``. This module turns the merged
sections into model values in dependency order (settings, time bands,
destinations and prefixes, rates, content, plans, sponsors) and raises
:class:`TariffError` at the first problem, so no half-loaded catalogue exists.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from pathlib import Path

from billing.money import RoundingMode, is_currency_code
from billing.tariffs.errors import Loc, TariffError
from billing.tariffs.fields import (
    as_table,
    check_keys,
    get_amount,
    get_int,
    get_list,
    get_rounding,
    get_str,
    ident,
    opt_amount,
    opt_str,
    ppm_share,
)
from billing.tariffs.model import (
    Catalogue,
    ContentItem,
    Destination,
    MaxCostStrategy,
    Provider,
    Rate,
    Tier,
)
from billing.tariffs.plan_loader import load_plans, load_sponsors
from billing.tariffs.prefixes import PrefixTable, read_prefix_csv, valid_prefix
from billing.tariffs.sections import Entry, Sections, read_folder
from billing.tariffs.timebands import DAYS, MINUTES_PER_DAY, Band, TimeBands, format_minute_of_week

__all__ = ["load_catalogue", "load_zone"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """The ``[catalogue]`` table."""

    name: str
    currency: str
    timezone: str
    default_plan: str
    rounding: tuple[RoundingMode, int]


def load_zone(name: str, loc: Loc) -> zoneinfo.ZoneInfo:
    """A tz database zone; an unknown name is a load error, never a UTC fallback."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise loc.error(f"unknown time zone {name!r}") from None


def _settings(entry: Entry) -> Settings:
    table, loc = entry.table, entry.loc
    check_keys(table, loc, ("name", "currency", "timezone", "default_plan", "rounding", "decimals"))
    currency = get_str(table, "currency", loc)
    if not is_currency_code(currency):
        raise loc.key("currency").error(f"expected an ISO 4217 code such as EUR, got {currency!r}")
    timezone = get_str(table, "timezone", loc)
    load_zone(timezone, loc.key("timezone"))
    return Settings(
        name=get_str(table, "name", loc),
        currency=currency,
        timezone=timezone,
        default_plan=get_str(table, "default_plan", loc),
        rounding=get_rounding(table, loc, (RoundingMode.HALF_UP, 4)),
    )


def _clock_minute(text: object, loc: Loc) -> int:
    if not isinstance(text, str) or len(text) != 5 or text[2] != ":":
        raise loc.error(f'expected a time of day "HH:MM", got {text!r}')
    hours, minutes = text[:2], text[3:]
    if not (hours.isdigit() and minutes.isdigit()) or int(minutes) > 59 or int(hours) > 24:
        raise loc.error(f'expected a time of day "HH:MM", got {text!r}')
    minute = int(hours) * 60 + int(minutes)
    if minute > MINUTES_PER_DAY:
        raise loc.error(f"after 24:00: {text!r}")
    return minute


def _timebands(entry: Entry) -> TimeBands:
    table, loc = entry.table, entry.loc
    check_keys(table, loc, ("timezone", "bands"))
    timezone = get_str(table, "timezone", loc)
    zone = load_zone(timezone, loc.key("timezone"))
    bands: list[Band] = []
    for position, raw in enumerate(get_list(table, "bands", loc)):
        band_loc = loc.key("bands").index(position)
        band = as_table(raw, band_loc)
        check_keys(band, band_loc, ("id", "days", "from", "until"))
        days_raw = get_list(band, "days", band_loc, default=list(DAYS))
        days: set[int] = set()
        for day_position, day in enumerate(days_raw):
            if day not in DAYS:
                raise (
                    band_loc.key("days")
                    .index(day_position)
                    .error(f"expected one of {', '.join(DAYS)}, got {day!r}")
                )
            days.add(DAYS.index(str(day)))
        start = _clock_minute(band.get("from", "00:00"), band_loc.key("from"))
        end = _clock_minute(band.get("until", "24:00"), band_loc.key("until"))
        if start >= end:
            raise band_loc.key("until").error(
                "must be later than from (split a band that crosses midnight)"
            )
        band_id = ident(band.get("id"), band_loc.key("id"))
        bands.append(
            Band(band_id=band_id, days=frozenset(days), from_minute=start, until_minute=end)
        )
    if not bands:
        raise loc.key("bands").error("at least one band is needed")
    built = TimeBands.build(entry.entry_id, timezone, zone, tuple(bands))
    gap = built.first_gap()
    if gap is not None:
        raise loc.key("bands").error(
            f"no band covers {format_minute_of_week(gap)} (the week must be covered)"
        )
    return built


def _destinations(sections: Sections) -> tuple[tuple[Destination, ...], PrefixTable]:
    destinations: list[Destination] = []
    index_of: dict[str, int] = {}
    where_of: dict[str, str] = {}
    prefixes: dict[str, int] = {}
    prefix_where: dict[str, str] = {}

    def add(destination_id: str, group: str, name: str, where: str, loc_error: Loc) -> int:
        known = index_of.get(destination_id)
        if known is None:
            index_of[destination_id] = len(destinations)
            where_of[destination_id] = where
            destinations.append(Destination(destination_id=destination_id, group=group, name=name))
            return len(destinations) - 1
        if destinations[known].group != group:
            raise loc_error.error(
                f"destination {destination_id!r} is in group {destinations[known].group!r} "
                f"at {where_of[destination_id]}, not {group!r}"
            )
        return known

    def add_prefix(prefix: str, index: int, where: str, loc_error: Loc) -> None:
        if prefix in prefixes:
            raise loc_error.error(f"prefix {prefix} already defined at {prefix_where[prefix]}")
        prefixes[prefix] = index
        prefix_where[prefix] = where

    for entry in sections.of("destinations"):
        table, loc = entry.table, entry.loc
        check_keys(table, loc, ("group", "name", "prefixes"))
        destination_id = ident(entry.entry_id, loc)
        group = ident(get_str(table, "group", loc), loc.key("group"))
        index = add(
            destination_id,
            group,
            opt_str(table, "name", loc) or destination_id,
            f"{loc.file}: {loc.path}",
            loc,
        )
        for position, prefix in enumerate(get_list(table, "prefixes", loc, default=[])):
            prefix_loc = loc.key("prefixes").index(position)
            if not isinstance(prefix, str) or not valid_prefix(prefix):
                raise prefix_loc.error(
                    f"prefix {prefix!r} is not 1..15 digits (E.164 without '+', quoted)"
                )
            add_prefix(prefix, index, f"{prefix_loc.file}: {prefix_loc.path}", prefix_loc)
    for path, shown, _listed_at in sections.prefix_files:
        for row in read_prefix_csv(path, shown):
            row_loc = Loc(shown, f"line {row.line}")
            destination_id = ident(row.destination, row_loc)
            index = add(
                destination_id,
                ident(row.group, row_loc),
                row.name,
                f"{shown}: line {row.line}",
                row_loc,
            )
            add_prefix(row.prefix, index, f"{shown}: line {row.line}", row_loc)
    return tuple(destinations), PrefixTable.build(prefixes)


def _tiers(entry: Entry) -> tuple[Tier, ...]:
    table, loc = entry.table, entry.loc
    raw_tiers = get_list(table, "tiers", loc)
    if not raw_tiers:
        raise loc.key("tiers").error("at least one tier is needed")
    parsed: list[tuple[int, int, int, int]] = []
    for position, raw in enumerate(raw_tiers):
        tier_loc = loc.key("tiers").index(position)
        tier = as_table(raw, tier_loc)
        check_keys(tier, tier_loc, ("start", "price", "rate_unit", "increment"))
        start = get_int(tier, "start", tier_loc)
        if position == 0 and start != 0:
            raise tier_loc.key("start").error(f"the first tier must start at 0, got {start}")
        if parsed and start <= parsed[-1][0]:
            raise tier_loc.key("start").error(
                f"must be greater than the previous tier's start {parsed[-1][0]}"
            )
        parsed.append(
            (
                start,
                get_amount(tier, "price", tier_loc),
                get_int(tier, "rate_unit", tier_loc, minimum=1),
                get_int(tier, "increment", tier_loc, minimum=1),
            )
        )
    tiers: list[Tier] = []
    for position, (start, price, rate_unit, increment) in enumerate(parsed):
        end = parsed[position + 1][0] if position + 1 < len(parsed) else None
        if end is not None and (end - start) % increment:
            raise (
                loc.key("tiers")
                .index(position)
                .key("increment")
                .error(f"tier width {end - start} is not a multiple of the increment {increment}")
            )
        tiers.append(
            Tier(
                start_units=start,
                end_units=end,
                price=price,
                rate_unit=rate_unit,
                increment=increment,
            )
        )
    return tuple(tiers)


def _rate(entry: Entry, default_rounding: tuple[RoundingMode, int]) -> Rate:
    table, loc = entry.table, entry.loc
    check_keys(
        table,
        loc,
        ("name", "connect_fee", "rounding", "decimals", "tiers", "max_cost", "max_cost_strategy"),
    )
    rounding, decimals = get_rounding(table, loc, default_rounding)
    strategy = MaxCostStrategy.CAP
    if "max_cost_strategy" in table:
        text = get_str(table, "max_cost_strategy", loc)
        try:
            strategy = MaxCostStrategy(text)
        except ValueError:
            raise loc.key("max_cost_strategy").error(
                f"expected cap or disconnect, got {text!r}"
            ) from None
    return Rate(
        rate_id=ident(entry.entry_id, loc),
        tiers=_tiers(entry),
        connect_fee=opt_amount(table, "connect_fee", loc) or 0,
        rounding=rounding,
        decimals=decimals,
        max_cost=opt_amount(table, "max_cost", loc),
        max_cost_strategy=strategy,
    )


def _content(sections: Sections) -> tuple[dict[str, Provider], dict[str, ContentItem]]:
    providers: dict[str, Provider] = {}
    for entry in sections.of("providers"):
        check_keys(entry.table, entry.loc, ("name", "share", "share_ppm"))
        share = ppm_share(entry.table, entry.loc)
        if share is None:
            raise entry.loc.key("share").error("missing required key (share or share_ppm)")
        provider_id = ident(entry.entry_id, entry.loc)
        providers[provider_id] = Provider(
            provider_id=provider_id, name=get_str(entry.table, "name", entry.loc), share_ppm=share
        )
    items: dict[str, ContentItem] = {}
    for entry in sections.of("content"):
        table, loc = entry.table, entry.loc
        check_keys(table, loc, ("name", "provider", "price", "share", "share_ppm"))
        provider_id = get_str(table, "provider", loc)
        if provider_id not in providers:
            raise loc.key("provider").error(f"unknown provider {provider_id!r}")
        item_id = ident(entry.entry_id, loc)
        share = ppm_share(table, loc)
        # One purchase at an exact price: a one-tier rate keeps every service on one arithmetic.
        rate = Rate(
            rate_id=f"content:{item_id}",
            tiers=(
                Tier(
                    start_units=0,
                    end_units=None,
                    price=get_amount(table, "price", loc),
                    rate_unit=1,
                    increment=1,
                ),
            ),
            connect_fee=0,
            rounding=RoundingMode.HALF_UP,
            decimals=6,
        )
        items[item_id] = ContentItem(
            item_id=item_id,
            name=get_str(table, "name", loc),
            provider_id=provider_id,
            share_ppm=providers[provider_id].share_ppm if share is None else share,
            rate=rate,
        )
    return providers, items


def load_catalogue(folder: str | Path) -> Catalogue:
    """Load the catalogue in ``folder``; raise :class:`TariffError` on the first problem."""
    folder = Path(folder)
    sections = read_folder(folder)
    top = sections.catalogue
    if top is None:  # read_folder already refuses this; the check narrows the type
        raise TariffError(str(folder), "catalogue", "missing")
    settings = _settings(top)
    timebands = {entry.entry_id: _timebands(entry) for entry in sections.of("timebands")}
    destinations, prefixes = _destinations(sections)
    rates = {entry.entry_id: _rate(entry, settings.rounding) for entry in sections.of("rates")}
    providers, items = _content(sections)
    plans = load_plans(
        sections.of("plans"),
        timezone=load_zone(settings.timezone, top.loc.key("timezone")),
        currency=settings.currency,
        timebands=timebands,
        rates=rates,
        destinations=destinations,
    )
    if settings.default_plan not in plans:
        raise top.loc.key("default_plan").error(f"unknown plan {settings.default_plan!r}")
    sponsors = load_sponsors(sections.of("sponsors"), rates)
    price_keys: dict[str, Rate] = dict(rates)
    price_keys.update({item.rate.rate_id: item.rate for item in items.values()})
    return Catalogue(
        name=settings.name,
        source=str(folder),
        currency=settings.currency,
        timezone=settings.timezone,
        default_plan=settings.default_plan,
        destinations=destinations,
        prefixes=prefixes,
        timebands=timebands,
        rates=rates,
        providers=providers,
        items=items,
        plans=plans,
        sponsors=sponsors,
        price_keys=price_keys,
    )
