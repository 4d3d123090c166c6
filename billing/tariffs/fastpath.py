"""The batch rating fast path: memo tables and a lean way to build RatedRecords.

``billing.rating.rate`` is the reference; this module must return exactly what
it returns, record for record, only faster. Where the time goes per record
(CPython 3.11) and what is done about it:

* plan version: one state per plan id, its validity range checked per record,
  so bisecting the versions happens only when time leaves the range;
* destination: longest-prefix lookup memoised on the number's first
  ``max_len`` digits (the answer depends on nothing else);
* time band: per Unix day, a 1 440-byte table of (twice) the band index of
  each UTC minute, built from :meth:`TimeBands.day_minutes`; a band set with
  one band needs no lookup at all. A dict per minute held a month of keys and
  missed the CPU caches on almost every record;
* rate selection (rules, CEL conditions): per plan version, a list per
  (service, destination or rating group) indexed by ``2 * band + roaming``,
  whose entry is a :class:`_Choice`. No tuple key is built or hashed;
* price: per rate, a dict from exact units to the priced tuple (voice
  durations and SMS counts repeat, and the tiers tuple is shared); for
  one-tier data rates a dict from *billed* units instead, since byte counts
  rarely repeat but 1 KiB steps do, and only the TierCharge is built per
  record;
* content: the reference prices an item once per plan version, and each
  purchase copies that outcome with its own record;
* the RatedRecord itself: a frozen dataclass's ``__init__`` sets each of its 19
  slots through ``object.__setattr__`` (about 6 µs here); a layout twin filled
  with plain slot stores and then re-classed builds the identical object in
  about 0.4 µs (see :class:`_RatedTwin`). Values go in by tuple unpacking
  straight into the slots.

What is left per record is mostly not rating: the caller's ``plan_of``, the
record's own fields coming in from memory, the RatedRecord (and for data the
TierCharge) being allocated, and the cyclic GC visiting each of them once.

Anything unusual (no plan, no destination, no rate) is handed to the
reference path, so failures and their messages are the same by construction.
Memo tables are bounded and keyed by the catalogue, which is immutable, so a
reloaded catalogue starts with fresh tables.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any, Final

from billing.rated import RatedRecord, RatingFailure, RatingOutcome, TierCharge
from billing.records import Service, UsageRecord
from billing.tariffs import pricing
from billing.tariffs.model import Catalogue, MaxCostStrategy, PlanVersion, Rate
from billing.tariffs.selection import Selection, select
from billing.tariffs.timebands import DAY_S, TimeBands

__all__ = ["rate_many"]

_ENTRIES_MAX: Final = 500_000
# Twice a band index plus one must fit a byte in _day_slots.
_BANDS_IN_BYTES_MAX: Final = 127
_FAR_FUTURE_S: Final = 2**62


class _RatedTwin:
    """Same slots, same order as RatedRecord, but plain: filled by fast slot stores.

    CPython allows assigning ``__class__`` between classes with identical
    layouts, so a filled twin becomes a genuine RatedRecord (``type(x) is
    RatedRecord``, dataclass ``==`` and ``hash`` included) in about a quarter of
    the time the frozen ``__init__`` takes with its 19 ``object.__setattr__``
    calls. ``_twins_work`` proves it at import; otherwise every record goes
    through the reference path.
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
# A priced memo entry, in the order the loop stores it: amount, billed units,
# connect fee, tiers, capped, disconnect.
PricedTuple = tuple[int, int, int, tuple[TierCharge, ...], bool, bool]
# A billed-units memo entry of a one-tier rate: amount, billed units, connect
# fee, capped, disconnect, and the tier's own amount.
BilledTuple = tuple[int, int, int, bool, bool, int]
# A memoised content outcome: every RatedRecord field but the record, in slot
# order, or the reason and detail of a failure.
ContentTemplate = tuple[object, ...]
# What a RatedRecord takes from its plan version and selected rule, in the
# order the loop stores it: plan_id, plan_version, currency, rate_ids,
# rounding, usage_class, price_key, destination, time_band, content_provider,
# provider_share.
Labels = tuple[str, str, str, tuple[str, ...], str, str, str, str | None, str, None, int]


class _Choice:
    """A selected rule, flattened for the loop: the record's labels and its rate's memo.

    ``by_billed`` is set for one-tier data rates: byte counts rarely repeat, so
    the price is memoised per billed units (1 KiB steps repeat far more) and
    only the record's own TierCharge is built per record. Every other rate is
    memoised per exact units in ``by_units``, whose tiers tuples are shared.
    """

    __slots__ = ("by_billed", "by_units", "increment", "labels", "price_key", "rate")

    def __init__(
        self, chosen: Selection, memo: _Memo, version: PlanVersion, service: Service
    ) -> None:
        rate = chosen.rate
        self.rate: Rate = rate
        self.price_key: str = rate.rate_id
        self.labels: Labels = (
            version.plan_id,
            version.version,
            version.currency,
            chosen.rate_ids,
            chosen.rounding,
            chosen.usage_class,
            rate.rate_id,
            chosen.destination,
            chosen.band,
            None,
            0,
        )
        self.by_units: dict[int, PricedTuple] = memo.by_units.setdefault(rate.rate_id, {})
        self.by_billed: dict[int, BilledTuple] | None = None
        self.increment = 1
        if service is Service.DATA and len(rate.tiers) == 1:
            self.by_billed = memo.by_billed.setdefault(rate.rate_id, {})
            self.increment = rate.tiers[0].increment


# A memoised selection that found no rule: the loop compares by identity and
# hands the record to the reference path, which says why. Its slots stay unset.
_NO_RATE: Final = object.__new__(_Choice)
Row = list[_Choice | None]


class _VersionState:
    """One plan version as the loop needs it, with its selection rows.

    A row holds the choices for one (service, destination or rating group),
    indexed by ``2 * band + roaming``, so the common lookup is a list index
    rather than a dict probe on a tuple.
    """

    __slots__ = (
        "content",
        "data",
        "days",
        "from_s",
        "keyed",
        "row_size",
        "single_band",
        "sms",
        "timebands",
        "until_s",
        "version",
        "voice",
    )

    def __init__(self, version: PlanVersion, memo: _Memo, destinations_count: int) -> None:
        bands = version.timebands
        self.version = version
        self.from_s = version.valid_from_s
        self.until_s = _FAR_FUTURE_S if version.valid_until_s is None else version.valid_until_s
        self.timebands = bands
        # Per Unix day, twice the band index of each minute (see _day_slots),
        # shared by every version with this band set.
        self.days: dict[int, bytes] = memo.days.setdefault(id(bands), {})
        # Every minute of the week is covered (the loader checks), so one band id is the answer.
        self.single_band = len(bands.band_ids) == 1
        self.row_size = 2 * len(bands.band_ids)
        self.voice: list[Row | None] = [None] * destinations_count
        self.sms: list[Row | None] = [None] * destinations_count
        self.data: dict[int | None, Row] = {}
        self.keyed: dict[tuple[Service, int, int | None], Row] = {}
        self.content: dict[str | None, ContentTemplate] = {}


class _Memo:
    """Memo tables of one catalogue; every value is a pure function of its key."""

    __slots__ = ("amounts", "by_billed", "by_units", "days", "heads", "states", "versions")

    def __init__(self) -> None:
        # The state last used per plan id, and every state by id(PlanVersion):
        # records that alternate between two versions of a plan (around a
        # version change) switch states without losing their memo rows.
        self.versions: dict[str, _VersionState] = {}
        self.states: dict[int, _VersionState] = {}
        self.heads: dict[str, int] = {}
        self.days: dict[int, dict[int, bytes]] = {}
        self.by_units: dict[str, dict[int, PricedTuple]] = {}
        self.by_billed: dict[str, dict[int, BilledTuple]] = {}
        self.amounts: dict[tuple[str, int, int], int] = {}

    def trim(self) -> None:
        """Bound memory: a table that reached its limit starts again empty.

        Called before each batch; the tables that grow with the data (one
        entry per distinct value in the records) are also checked whenever
        they miss inside a batch.
        """
        tables: list[dict[Any, Any]] = [self.heads, self.amounts]
        tables += self.days.values()
        tables += self.by_units.values()
        tables += self.by_billed.values()
        for state in self.states.values():
            tables += (state.content, state.keyed, state.data)
        for table in tables:
            if len(table) >= _ENTRIES_MAX:
                table.clear()


_MEMOS: weakref.WeakKeyDictionary[Catalogue, _Memo] = weakref.WeakKeyDictionary()


def _memo_for(catalogue: Catalogue) -> _Memo:
    memo = _MEMOS.get(catalogue)
    if memo is None:
        memo = _MEMOS[catalogue] = _Memo()
    return memo


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


def _max_cost(rate: Rate, total: int) -> tuple[int, bool, bool]:
    """Step 5 of the arithmetic: the total after ``max_cost``, and the capped/disconnect flags."""
    max_cost = rate.max_cost
    if max_cost is not None and total > max_cost:
        if rate.max_cost_strategy is MaxCostStrategy.CAP:
            return max_cost, True, False
        return total, False, True
    return total, False, False


def _price(rate: Rate, units: int, amounts: dict[tuple[str, int, int], int]) -> PricedTuple:
    """``pricing.price`` as a tuple, with tier amounts memoised per billed units.

    A test holds this equal to ``pricing.price``.
    """
    if units <= 0:
        reference = pricing.price(rate, units)
        return (0, 0, reference.connect_fee, (), False, False)
    if len(amounts) >= _ENTRIES_MAX:
        amounts.clear()
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
    total, capped, disconnect = _max_cost(rate, total)
    return (total, billed_total, rate.connect_fee, tuple(pieces), capped, disconnect)


def _billed(rate: Rate, billed: int) -> BilledTuple:
    """A one-tier rate's price of ``billed > 0`` units: the memo entry of ``by_billed``."""
    amount = pricing.tier_amount(rate, rate.tiers[0], billed)
    total, capped, disconnect = _max_cost(rate, rate.connect_fee + amount)
    return (total, billed, rate.connect_fee, capped, disconnect, amount)


def _day_slots(bands: TimeBands, day: int) -> bytes:
    """Twice the band index of each minute of ``day``, or empty where minutes have no band.

    One table of 1 440 bytes per day replaces a dict probe per minute: a
    month of minutes in a dict spills out of the CPU caches, a month of days
    does not. Empty means a historic offset that is not whole minutes: the
    loop then asks :meth:`TimeBands.band_at` per record.
    """
    minutes = bands.day_minutes(day)
    if minutes is None or len(bands.band_ids) > _BANDS_IN_BYTES_MAX:
        return b""
    return bytes(2 * band for band in minutes)


def _new_row(state: _VersionState) -> Row:
    return [None] * state.row_size


def _choose(
    state: _VersionState,
    memo: _Memo,
    catalogue: Catalogue,
    record: UsageRecord,
    dest_index: int,
    band_index: int,
) -> _Choice:
    chosen = select(
        state.version,
        record.service,
        catalogue.destinations[dest_index] if dest_index >= 0 else None,
        band_index,
        record.roaming,
        record.rating_group,
    )
    if isinstance(chosen, Selection):
        return _Choice(chosen, memo, state.version, record.service)
    return _NO_RATE


def _content_template(outcome: RatingOutcome) -> ContentTemplate:
    if isinstance(outcome, RatingFailure):
        return (outcome.reason, outcome.detail)
    return tuple(getattr(outcome, name) for name in _RATED_SLOTS[1:])


def _content(record: UsageRecord, template: ContentTemplate) -> RatingOutcome:
    """The memoised content outcome for ``record``: same fields, its own record."""
    if len(template) == 2:
        reason, detail = template
        return RatingFailure(record=record, reason=reason, detail=detail)  # type: ignore[arg-type]
    rated = _RatedTwin()
    rated.record = record
    (
        rated.plan_id, rated.plan_version, rated.currency, rated.amount, rated.units,
        rated.billed_units, rated.connect_fee, rated.tiers, rated.rate_ids, rated.rounding,
        rated.usage_class, rated.price_key, rated.destination, rated.time_band, rated.capped,
        rated.disconnect, rated.content_provider, rated.provider_share,
    ) = template  # type: ignore[assignment]  # fmt: skip
    rated.__class__ = RatedRecord  # type: ignore[assignment]
    return rated  # type: ignore[return-value]


def rate_many(
    records: Iterable[UsageRecord],
    catalogue: Catalogue,
    plan_of: Callable[[UsageRecord], str] | str,
    fallback: Fallback,
) -> list[RatingOutcome]:
    """Rate ``records`` with the memo tables; ``fallback`` is the reference ``rate``.

    One long loop on purpose: at about a microsecond per record, each helper
    call, tuple key or attribute load shows, so the common case (memo hits)
    is inline and every miss calls out. Values reach the RatedRecord by tuple
    unpacking straight into its slots, which saves a load and a store per
    field.
    """
    plan_fn = None if isinstance(plan_of, str) else plan_of
    plan_const = plan_of if isinstance(plan_of, str) else ""
    if not _TWINS:
        # Another interpreter without layout twins: the reference, record by record.
        return [
            fallback(record, catalogue, plan_const if plan_fn is None else plan_fn(record))
            for record in records
        ]
    memo = _memo_for(catalogue)
    memo.trim()
    versions, heads, amounts = memo.versions, memo.heads, memo.amounts
    prefixes = catalogue.prefixes
    max_len = prefixes.max_len
    lookup = prefixes.lookup
    destinations_count = len(catalogue.destinations)
    entries_max = _ENTRIES_MAX
    day_s = DAY_S
    voice, data, content = Service.VOICE, Service.DATA, Service.CONTENT
    no_rate = _NO_RATE
    rated_twin, tier_twin, rated_cls, tier_cls = _RatedTwin, _TierTwin, RatedRecord, TierCharge
    out: list[RatingOutcome] = []
    append = out.append
    for record in records:
        plan_id = plan_const if plan_fn is None else plan_fn(record)
        t_s = record.record_opening_time_s
        state = versions.get(plan_id)
        if state is None or not state.from_s <= t_s < state.until_s:
            version = catalogue.plan_version(plan_id, t_s)
            if version is None:
                append(fallback(record, catalogue, plan_id))
                continue
            state = memo.states.get(id(version))
            if state is None:
                state = memo.states[id(version)] = _VersionState(version, memo, destinations_count)
            versions[plan_id] = state
        service = record.service
        if service is content:
            # Priced by the reference once per version and item; a failure's
            # reason and detail depend on nothing else either.
            item_id = record.content_item_id
            template = state.content.get(item_id)
            if template is None:
                outcome = fallback(record, catalogue, plan_id)
                state.content[item_id] = _content_template(outcome)
                append(outcome)
            else:
                append(_content(record, template))
            continue
        # The position in a selection row: twice the band index, plus one when roaming.
        if state.single_band:
            slot = 0
        else:
            slots = state.days.get(t_s // day_s)
            if slots is None:
                slots = state.days[t_s // day_s] = _day_slots(state.timebands, t_s // day_s)
            slot = slots[t_s % day_s // 60] if slots else 2 * state.timebands.band_at(t_s)
        if record.roaming:
            slot += 1
        if service is data:
            dest_index = -1
            units = record.uplink_bytes + record.downlink_bytes
            row = state.data.get(record.rating_group)
            if row is None:
                row = state.data[record.rating_group] = _new_row(state)
        else:
            number = record.called_number
            if not number:
                append(fallback(record, catalogue, plan_id))
                continue
            head = number[:max_len]
            found = heads.get(head)
            if found is None:
                if len(heads) >= entries_max:
                    heads.clear()
                index = lookup(head)
                found = heads[head] = -1 if index is None else index
            if found < 0:
                append(fallback(record, catalogue, plan_id))
                continue
            dest_index = found
            if service is voice:
                units = record.duration_s
                rows = state.voice
            else:
                units = record.sms_count
                rows = state.sms
            if record.rating_group is None:
                maybe_row = rows[dest_index]
                if maybe_row is None:
                    maybe_row = rows[dest_index] = _new_row(state)
                row = maybe_row
            else:
                key = (service, dest_index, record.rating_group)
                row = state.keyed.get(key) or state.keyed.setdefault(key, _new_row(state))
        choice = row[slot]
        if choice is None:
            choice = row[slot] = _choose(state, memo, catalogue, record, dest_index, slot >> 1)
        if choice is no_rate:
            append(fallback(record, catalogue, plan_id))
            continue
        rated = rated_twin()
        by_billed = choice.by_billed
        if by_billed is not None and units > 0:
            increment = choice.increment
            billed = -(-units // increment) * increment
            entry = by_billed.get(billed)
            if entry is None:
                if len(by_billed) >= entries_max:
                    by_billed.clear()
                entry = by_billed[billed] = _billed(choice.rate, billed)
            (
                rated.amount, rated.billed_units, rated.connect_fee,
                rated.capped, rated.disconnect, tier_amount,
            ) = entry  # fmt: skip
            tier = tier_twin()
            tier.rate_id = choice.price_key
            tier.start_units = 0
            tier.units = units
            tier.billed_units = billed
            tier.amount = tier_amount
            tier.__class__ = tier_cls  # type: ignore[assignment]
            rated.tiers = (tier,)  # type: ignore[assignment]
        else:
            by_units = choice.by_units
            priced = by_units.get(units)
            if priced is None:
                if len(by_units) >= entries_max:
                    by_units.clear()
                priced = by_units[units] = _price(choice.rate, units, amounts)
            (
                rated.amount, rated.billed_units, rated.connect_fee,
                rated.tiers, rated.capped, rated.disconnect,
            ) = priced  # fmt: skip
        rated.record = record
        rated.units = units
        (
            rated.plan_id, rated.plan_version, rated.currency, rated.rate_ids, rated.rounding,
            rated.usage_class, rated.price_key, rated.destination, rated.time_band,
            rated.content_provider, rated.provider_share,
        ) = choice.labels  # fmt: skip
        rated.__class__ = rated_cls  # type: ignore[assignment]
        append(rated)  # type: ignore[arg-type]
    return out
