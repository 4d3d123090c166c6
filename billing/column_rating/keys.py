"""Selection keys: what a row's rate depends on, packed in one int, decided once per distinct key.

The scalar rater chooses a rate from a few facts that never include the
usage amount: plan version, service, destination, rating group, time band,
roaming (or, for content, plan version and item). Here those facts are packed
into one int64 per row, the distinct keys of the batch are found with a
presence table (or a sort when the key space is large), and each distinct key
is decided by the scalar code: ``billing.tariffs.selection.select`` (whose CEL
conditions run there, so once per key at most, not per row) or, for content,
``billing.rating.rate`` on a stand-in record. Decisions are memoised per
catalogue, so a warm partition only looks keys up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from billing.column_rating.tables import CHOICE_FIELDS, CHOICES_MAX, Choice, ColumnCatalogue
from billing.columns import REJECT_REASONS, SERVICES
from billing.invariant import invariant
from billing.rated import RatingFailure
from billing.rating import rate
from billing.records import Service, UsageRecord
from billing.tariffs.model import Catalogue
from billing.tariffs.selection import Rejection, select

__all__ = ["KeySpace", "KeyedChoices", "choose"]

_PRESENCE_MAX: Final = 1 << 24
_NOTHING: Final[Choice] = ((-1, -1, *([-1] * (len(CHOICE_FIELDS) - 3)), 0), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class KeySpace:
    """The radices of a batch's keys; content keys follow the others, the 'no key' key is last."""

    versions: int
    destinations: int
    rating_groups: int
    bands: int
    items: int

    @property
    def content_base(self) -> int:
        return self.versions * 3 * (self.destinations + 1) * self.rating_groups * self.bands * 2

    @property
    def nothing(self) -> int:
        return self.content_base + self.versions * (self.items + 1)

    def pack(
        self,
        version: NDArray[np.int32],
        service: NDArray[np.int8],
        destination: NDArray[np.int32],
        rating_group: NDArray[np.int32],
        band: NDArray[np.int16],
        roaming: NDArray[np.bool_],
    ) -> NDArray[np.int64]:
        """The key of a row that selects a rule (``destination`` ``-1`` for data)."""
        key = version.astype(np.int64) * 3 + service
        key = key * (self.destinations + 1) + (destination + 1)
        key = (key * self.rating_groups + rating_group) * self.bands + band
        return key * 2 + roaming

    def pack_content(
        self, version: NDArray[np.int32], item: NDArray[np.int32]
    ) -> NDArray[np.int64]:
        """The key of a content purchase (``item`` ``-1`` for none)."""
        return self.content_base + version.astype(np.int64) * (self.items + 1) + (item + 1)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class KeyedChoices:
    """Each row's code into the table of this batch's distinct keys, and that table."""

    code: NDArray[np.intp]
    table: NDArray[np.int64]  # [distinct key, CHOICE_FIELDS]
    details: list[str | None]

    def field(self, name: str) -> NDArray[np.int64]:
        """One of :data:`CHOICE_FIELDS` for every row."""
        column: NDArray[np.int64] = self.table[:, CHOICE_FIELDS.index(name)][self.code]
        return column


def _distinct(keys: NDArray[np.int64], space: int) -> tuple[NDArray[np.int64], NDArray[np.intp]]:
    """The sorted distinct keys and each row's position among them."""
    if space <= max(_PRESENCE_MAX, 4 * len(keys)) and space < 1 << 31:
        seen = np.zeros(space, np.bool_)
        seen[keys] = True
        distinct = np.flatnonzero(seen)
        position = np.empty(space, np.intp)
        position[distinct] = np.arange(len(distinct))
        return distinct.astype(np.int64), position[keys]
    distinct, inverse = np.unique(keys, return_inverse=True)
    return distinct, inverse.astype(np.intp)


def _decide_rule(
    tables: ColumnCatalogue,
    catalogue: Catalogue,
    version_index: int,
    service_code: int,
    destination_index: int,
    rating_group: int | None,
    band: int,
    roaming: bool,
) -> Choice:
    version = tables.versions[version_index]
    destination = catalogue.destinations[destination_index] if destination_index >= 0 else None
    service = SERVICES[service_code]
    chosen = select(version, service, destination, band, roaming, rating_group)
    if isinstance(chosen, Rejection):
        return ((REJECT_REASONS.index(chosen.reason), *_NOTHING[0][1:]), chosen.detail)
    labels = tables.labels
    row = tables.rate_rows.get(id(chosen.rate))
    invariant(row is not None, f"rate {chosen.rate.rate_id} is not in the column rate table")
    return (
        (
            -1,
            row if row is not None else -1,
            labels["plan_id"].code(version.plan_id),
            labels["plan_version"].code(version.version),
            labels["currency"].code(version.currency),
            labels["rounding"].code(chosen.rounding),
            labels["usage_class"].code(chosen.usage_class),
            labels["price_key"].code(chosen.rate.rate_id),
            labels["destination"].code(chosen.destination),
            labels["time_band"].code(chosen.band),
            -1,
            0,
        ),
        None,
    )


def _decide_content(
    tables: ColumnCatalogue, catalogue: Catalogue, version_index: int, item_id: str | None
) -> Choice:
    """A content purchase depends on the version and the item only: rate a stand-in once."""
    version = tables.versions[version_index]
    stand_in = UsageRecord(
        record_id="columns:content",
        service=Service.CONTENT,
        served_msisdn="",
        record_opening_time_s=version.valid_from_s,
        content_item_id=item_id,
    )
    outcome = rate(stand_in, catalogue, version.plan_id)
    if isinstance(outcome, RatingFailure):
        return ((REJECT_REASONS.index(outcome.reason), *_NOTHING[0][1:]), outcome.detail)
    item = catalogue.items[outcome.price_key.removeprefix("content:")]
    labels = tables.labels
    return (
        (
            -1,
            tables.rate_rows[id(item.rate)],
            labels["plan_id"].code(outcome.plan_id),
            labels["plan_version"].code(outcome.plan_version),
            labels["currency"].code(outcome.currency),
            labels["rounding"].code(outcome.rounding),
            labels["usage_class"].code(outcome.usage_class),
            labels["price_key"].code(outcome.price_key),
            -1,
            -1,
            labels["content_provider"].code(outcome.content_provider),
            outcome.provider_share,
        ),
        None,
    )


def choose(
    tables: ColumnCatalogue,
    catalogue: Catalogue,
    space: KeySpace,
    keys: NDArray[np.int64],
    rating_groups: list[int | None],
    item_ids: list[str],
) -> KeyedChoices:
    """Decide every distinct key of ``keys``; ``rating_groups[g]`` is the value of group code g."""
    distinct, code = _distinct(keys, space.nothing + 1)
    memo = tables.choices
    if len(memo) >= CHOICES_MAX:
        memo.clear()
    decided: list[Choice] = []
    for key in distinct.tolist():
        if key == space.nothing:
            decided.append(_NOTHING)
            continue
        if key >= space.content_base:
            version_index, item = divmod(key - space.content_base, space.items + 1)
            item_id = item_ids[item - 1] if item else None
            memo_key: tuple[object, ...] = ("content", version_index, item_id)
            choice = memo.get(memo_key)
            if choice is None:
                choice = memo[memo_key] = _decide_content(tables, catalogue, version_index, item_id)
            decided.append(choice)
            continue
        rest, roaming = divmod(key, 2)
        rest, band = divmod(rest, space.bands)
        rest, group = divmod(rest, space.rating_groups)
        rest, destination = divmod(rest, space.destinations + 1)
        version_index, service_code = divmod(rest, 3)
        memo_key = (
            version_index,
            service_code,
            destination - 1,
            rating_groups[group],
            band,
            roaming,
        )
        choice = memo.get(memo_key)
        if choice is None:
            choice = memo[memo_key] = _decide_rule(
                tables,
                catalogue,
                version_index,
                service_code,
                destination - 1,
                rating_groups[group],
                band,
                bool(roaming),
            )
        decided.append(choice)
    table = np.array([values for values, _ in decided], np.int64).reshape(-1, len(CHOICE_FIELDS))
    return KeyedChoices(code=code, table=table, details=[detail for _, detail in decided])
