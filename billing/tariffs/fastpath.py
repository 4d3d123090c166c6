"""The batch rating fast path: memo tables and a lean way to build RatedRecords.

``billing.rating.rate`` is the reference; this module must return exactly what
it returns, record for record, only faster. Where the time goes per record
(CPython 3.11) and what is done about it:

* plan version: the last version used per plan id is kept and its validity
  range checked, so bisecting the versions happens only when time moves on;
* destination: longest-prefix lookup memoised on the number's first
  ``max_len`` digits (the answer depends on nothing else);
* time band: the 15-minute UTC bucket cache of :class:`TimeBands`;
* rate selection (rules, CEL conditions): memoised per (plan version, service,
  destination, band, roaming, rating group), which decides it completely;
* price: memoised per (rate, units); voice durations and SMS counts repeat a
  lot; data volumes rarely repeat to the byte, so tier amounts are memoised
  per (rate, tier, billed units) as well;
* minute of the week: a per-band-set memo from the record's Unix minute to its
  band, in front of the 15-minute bucket cache;
* the RatedRecord itself: a frozen dataclass's ``__init__`` sets each of its 19
  slots through ``object.__setattr__`` (about 6 µs here); a layout twin filled
  with plain slot stores and then re-classed builds the identical object in
  about 0.5 µs (see :class:`_RatedTwin`).

Anything unusual (no plan, no destination, no rate, content) is handed to the
reference path, so failures and their messages are the same by construction.
Memo tables are bounded and keyed by the catalogue, which is immutable, so a
reloaded catalogue starts with fresh tables.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Final

from billing.rated import RatedRecord, RatingOutcome, TierCharge
from billing.records import Service, UsageRecord
from billing.tariffs import pricing
from billing.tariffs.model import Catalogue, MaxCostStrategy, PlanVersion, Rate
from billing.tariffs.selection import Selection, select

__all__ = ["rate_many"]

_ENTRIES_MAX: Final = 500_000
_FAR_FUTURE_S: Final = 2**62


class _RatedTwin:
    """Same slots, same order as RatedRecord, but plain: filled by fast slot stores.

    CPython allows assigning ``__class__`` between classes with identical
    layouts, so a filled twin becomes a genuine RatedRecord (``type(x) is
    RatedRecord``, dataclass ``==`` and ``hash`` included) in about a quarter of
    the time the frozen ``__init__`` takes with its 19 ``object.__setattr__``
    calls. ``_twins_work`` proves it at import; otherwise the ordinary
    constructors are used.
    """

    __slots__ = RatedRecord.__slots__
    # Annotations only (no values), so mypy knows the slots' types.
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
    destination: str | None
    time_band: str | None
    capped: bool
    disconnect: bool
    content_provider: str | None
    provider_share: int


class _TierTwin:
    """The same trick for TierCharge."""

    __slots__ = TierCharge.__slots__
    rate_id: str
    start_units: int
    units: int
    billed_units: int
    amount: int


def _twins_work() -> bool:
    tier = TierCharge(rate_id="r", start_units=0, units=1, billed_units=1, amount=2)
    twin_tier = _TierTwin()
    twin_tier.rate_id, twin_tier.start_units, twin_tier.units = "r", 0, 1
    twin_tier.billed_units, twin_tier.amount = 1, 2
    try:
        twin_tier.__class__ = TierCharge  # type: ignore[assignment]
        probe: object = _RatedTwin()
        probe.__class__ = RatedRecord
    except TypeError:
        return False
    rebuilt: object = twin_tier
    return rebuilt == tier and type(rebuilt) is TierCharge and type(probe) is RatedRecord


_TWINS: Final = _twins_work()
_RATED_SLOTS: Final[tuple[str, ...]] = RatedRecord.__slots__

Fallback = Callable[[UsageRecord, Catalogue, str | None], RatingOutcome]
# A priced memo entry: amount, billed units, connect fee, tiers, capped, disconnect.
PricedTuple = tuple[int, int, int, tuple[TierCharge, ...], bool, bool]
# A selection memo entry: what the record needs from the chosen rate, flattened;
# an empty tuple records that no rate matches (the reference path says why).
Prepared = tuple[str, tuple[str, ...], str, str, str | None, str, Rate]
# A plan-version memo entry: the version, its validity, its band cache and labels.
VersionState = tuple[PlanVersion, int, int, dict[int, int], str, str, str, int]


class _Memo:
    """Memo tables of one catalogue; every value is a pure function of its key."""

    __slots__ = ("amounts", "contents", "heads", "minutes", "priced", "selections", "versions")

    def __init__(self) -> None:
        self.versions: dict[str, VersionState] = {}
        self.heads: dict[str, int] = {}
        self.minutes: dict[int, dict[int, int]] = {}
        self.selections: dict[
            tuple[int, Service, int, int, bool, int | None], Prepared | tuple[()]
        ] = {}
        self.priced: dict[tuple[str, int], PricedTuple] = {}
        self.amounts: dict[tuple[str, int, int], int] = {}
        self.contents: dict[tuple[int, str | None], RatedRecord] = {}

    def trim(self) -> None:
        """Bound memory: a table that reached its limit starts again empty."""
        for table in (self.heads, self.minutes, self.selections, self.priced, self.amounts):
            if len(table) >= _ENTRIES_MAX:
                table.clear()
        if len(self.contents) >= _ENTRIES_MAX:
            self.contents.clear()


_MEMOS: weakref.WeakKeyDictionary[Catalogue, _Memo] = weakref.WeakKeyDictionary()


def _memo_for(catalogue: Catalogue) -> _Memo:
    memo = _MEMOS.get(catalogue)
    if memo is None:
        memo = _MEMOS[catalogue] = _Memo()
    return memo


def _version_state(memo: _Memo, version: PlanVersion) -> VersionState:
    bands = version.timebands
    minutes = memo.minutes.setdefault(id(bands), {})
    until_s = _FAR_FUTURE_S if version.valid_until_s is None else version.valid_until_s
    return (
        version,
        version.valid_from_s,
        until_s,
        minutes,
        version.plan_id,
        version.version,
        version.currency,
        id(version),
    )


def _prepare(chosen: Selection) -> Prepared:
    return (
        chosen.rate.rate_id,
        chosen.rate_ids,
        chosen.rounding,
        chosen.usage_class,
        chosen.destination,
        chosen.band,
        chosen.rate,
    )


def _tier_charge(rate_id: str, start: int, units: int, billed: int, amount: int) -> TierCharge:
    if not _TWINS:
        return TierCharge(
            rate_id=rate_id, start_units=start, units=units, billed_units=billed, amount=amount
        )
    twin = _TierTwin()
    twin.rate_id = rate_id
    twin.start_units = start
    twin.units = units
    twin.billed_units = billed
    twin.amount = amount
    twin.__class__ = TierCharge  # type: ignore[assignment]
    return twin  # type: ignore[return-value]


def _price(rate: Rate, units: int, amounts: dict[tuple[str, int, int], int]) -> PricedTuple:
    """``pricing.price`` as a tuple, with tier amounts memoised per billed units.

    Data volumes rarely repeat to the byte but often to the kilobyte, so the
    rounded amount of ``billed`` units in a tier is memoised separately from
    the record's exact units. A test holds this equal to ``pricing.price``.
    """
    if units <= 0:
        reference = pricing.price(rate, units)
        return (0, 0, reference.connect_fee, (), False, False)
    tiers = rate.tiers
    if len(tiers) == 1 and rate.max_cost is None:
        # The common shape (one tier, no cap): the loop below without its bookkeeping.
        tier = tiers[0]
        increment = tier.increment
        billed = -(-units // increment) * increment
        key = (rate.rate_id, 0, billed)
        amount = amounts.get(key)
        if amount is None:
            amount = amounts[key] = pricing.tier_amount(rate, tier, billed)
        charge = _tier_charge(rate.rate_id, 0, units, billed, amount)
        return (rate.connect_fee + amount, billed, rate.connect_fee, (charge,), False, False)
    pieces: list[TierCharge] = []
    billed_total = 0
    total = rate.connect_fee
    rate_id = rate.rate_id
    for position, tier in enumerate(rate.tiers):
        start = tier.start_units
        if units <= start:
            break
        end = tier.end_units
        in_tier = (units if end is None or units < end else end) - start
        increment = tier.increment
        billed = -(-in_tier // increment) * increment
        key = (rate_id, position, billed)
        amount = amounts.get(key)
        if amount is None:
            amount = amounts[key] = pricing.tier_amount(rate, tier, billed)
        pieces.append(_tier_charge(rate_id, start, in_tier, billed, amount))
        billed_total += billed
        total += amount
    capped = disconnect = False
    max_cost = rate.max_cost
    if max_cost is not None and total > max_cost:
        if rate.max_cost_strategy is MaxCostStrategy.CAP:
            total, capped = max_cost, True
        else:
            disconnect = True
    return (total, billed_total, rate.connect_fee, tuple(pieces), capped, disconnect)


def rate_many(
    records: Iterable[UsageRecord],
    catalogue: Catalogue,
    plan_of: Callable[[UsageRecord], str] | str,
    fallback: Fallback,
) -> list[RatingOutcome]:
    """Rate ``records`` with the memo tables; ``fallback`` is the reference ``rate``."""
    memo = _memo_for(catalogue)
    memo.trim()
    versions, heads, selections, priced_memo = (
        memo.versions,
        memo.heads,
        memo.selections,
        memo.priced,
    )
    amounts, contents = memo.amounts, memo.contents
    plan_fn = None if isinstance(plan_of, str) else plan_of
    plan_const = plan_of if isinstance(plan_of, str) else ""
    prefixes = catalogue.prefixes
    max_len = prefixes.max_len
    lookup = prefixes.lookup
    destinations = catalogue.destinations
    twins = _TWINS
    voice, sms, data = Service.VOICE, Service.SMS, Service.DATA
    out: list[RatingOutcome] = []
    append = out.append
    for record in records:
        plan_id = plan_const if plan_fn is None else plan_fn(record)
        t_s = record.record_opening_time_s
        state = versions.get(plan_id)
        if state is None or not state[1] <= t_s < state[2]:
            version = catalogue.plan_version(plan_id, t_s)
            if version is None:
                append(fallback(record, catalogue, plan_id))
                continue
            state = versions[plan_id] = _version_state(memo, version)
        service = record.service
        if service is data:
            dest_index = -1
            units = record.uplink_bytes + record.downlink_bytes
        elif service is voice or service is sms:
            number = record.called_number
            if not number:
                append(fallback(record, catalogue, plan_id))
                continue
            head = number[:max_len]
            found = heads.get(head)
            if found is None:
                found = lookup(head)
                found = heads[head] = -1 if found is None else found
            if found < 0:
                append(fallback(record, catalogue, plan_id))
                continue
            dest_index = found
            units = record.duration_s if service is voice else record.sms_count
        else:
            # Content: the reference prices it (once per plan version and item),
            # and the twin copies that result onto each purchase of the item.
            content_key = (state[7], record.content_item_id)
            template = contents.get(content_key)
            if template is None:
                outcome = fallback(record, catalogue, plan_id)
                if isinstance(outcome, RatedRecord) and twins:
                    contents[content_key] = outcome
                append(outcome)
                continue
            rated = _RatedTwin()
            for name in _RATED_SLOTS:
                setattr(rated, name, getattr(template, name))
            rated.record = record
            rated.__class__ = RatedRecord  # type: ignore[assignment]
            append(rated)  # type: ignore[arg-type]
            continue
        minute = t_s // 60
        minutes = state[3]
        band_index = minutes.get(minute)
        if band_index is None:
            band_index = minutes[minute] = state[0].timebands.band_fast(t_s)
        key = (state[7], service, dest_index, band_index, record.roaming, record.rating_group)
        prepared = selections.get(key)
        if prepared is None:
            chosen = select(
                state[0],
                service,
                destinations[dest_index] if dest_index >= 0 else None,
                band_index,
                record.roaming,
                record.rating_group,
            )
            prepared = selections[key] = _prepare(chosen) if isinstance(chosen, Selection) else ()
        if not prepared:
            append(fallback(record, catalogue, plan_id))
            continue
        rate_id, rate_ids, rounding, usage_class, destination, band, rate = prepared
        price_key = (rate_id, units)
        priced = priced_memo.get(price_key)
        if priced is None:
            priced = priced_memo[price_key] = _price(rate, units, amounts)
        amount, billed, connect_fee, tiers, capped, disconnect = priced
        if twins:
            rated = _RatedTwin()
            rated.record = record
            rated.plan_id = state[4]
            rated.plan_version = state[5]
            rated.currency = state[6]
            rated.amount = amount
            rated.units = units
            rated.billed_units = billed
            rated.connect_fee = connect_fee
            rated.tiers = tiers
            rated.rate_ids = rate_ids
            rated.rounding = rounding
            rated.usage_class = usage_class
            rated.price_key = rate_id
            rated.destination = destination
            rated.time_band = band
            rated.capped = capped
            rated.disconnect = disconnect
            rated.content_provider = None
            rated.provider_share = 0
            rated.__class__ = RatedRecord  # type: ignore[assignment]
            append(rated)  # type: ignore[arg-type]
        else:
            append(
                RatedRecord(
                    record=record,
                    plan_id=state[4],
                    plan_version=state[5],
                    currency=state[6],
                    amount=amount,
                    units=units,
                    billed_units=billed,
                    connect_fee=connect_fee,
                    tiers=tiers,
                    rate_ids=rate_ids,
                    rounding=rounding,
                    usage_class=usage_class,
                    price_key=rate_id,
                    destination=destination,
                    time_band=band,
                    capped=capped,
                    disconnect=disconnect,
                )
            )
    return out
