"""Selection keys: what a row's rate depends on, packed in one int, decided once per distinct key.

The scalar rater chooses a rate from a few facts that never include the
usage amount: plan version, service, destination, rating group, time band,
roaming (or, for content, plan version and item). Here those facts are packed
into one int64 per row (a :class:`KeySpace` sized for the batch), the batch's
distinct keys are found with a presence table or a sort, and each distinct
key is decided by the scalar code: ``billing.tariffs.selection.select``
(whose CEL conditions run there, so once per key at most, never per row) or,
for content, ``billing.rating.rate`` on a stand-in record.

Decisions are kept per catalogue in a :class:`ChoiceMemo`: a table with one
column per decided key, addressed by a *stable* key (the same facts packed
with radices that do not depend on the batch), so a warm partition spends one
dict probe per distinct key of a batch and a gather per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from billing.column_rating.tables import (
    CHOICE_FIELDS,
    GROUPS_MAX,
    ITEMS_MAX,
    NOTHING,
    Choice,
    ChoiceMemo,
    ColumnCatalogue,
)
from billing.columns import REJECT_REASONS, SERVICES
from billing.invariant import invariant
from billing.rated import RatingFailure
from billing.rating import rate
from billing.records import Service, UsageRecord
from billing.tariffs.model import Catalogue
from billing.tariffs.selection import Rejection, select

__all__ = ["KeySpace", "KeyedChoices", "choose"]

_PRESENCE_ROWS_MAX: Final = 8  # a presence table up to 8 entries a row beats a sort


@dataclass(frozen=True, slots=True, kw_only=True)
class KeySpace:
    """The radices of keys; content keys follow the others, the 'no key' key is last."""

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
        version: NDArray[Any],
        service: NDArray[Any],
        destination: NDArray[Any],
        rating_group: NDArray[Any],
        band: NDArray[Any],
        roaming: NDArray[Any],
    ) -> NDArray[np.int64]:
        """The key of a row that selects a rule (``destination`` ``-1`` for data)."""
        key: NDArray[np.int64] = version.astype(np.int64) * 3 + service
        key = key * (self.destinations + 1) + (destination + 1)
        key = (key * self.rating_groups + rating_group) * self.bands + band
        packed: NDArray[np.int64] = key * 2 + roaming
        return packed

    def pack_content(
        self, version: NDArray[np.int32], item: NDArray[np.int32]
    ) -> NDArray[np.int64]:
        """The key of a content purchase (``item`` ``-1`` for none)."""
        return self.content_base + version.astype(np.int64) * (self.items + 1) + (item + 1)

    def unpack(self, keys: NDArray[np.int64]) -> dict[str, NDArray[np.int64]]:
        """The facts of rule keys (content and 'no key' keys give nonsense; mask them)."""
        rest, roaming = np.divmod(keys, 2)
        rest, band = np.divmod(rest, self.bands)
        rest, group = np.divmod(rest, self.rating_groups)
        rest, destination = np.divmod(rest, self.destinations + 1)
        version, service = np.divmod(rest, 3)
        return {
            "version": version,
            "service": service,
            "destination": destination - 1,
            "group": group,
            "band": band,
            "roaming": roaming,
        }


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class KeyedChoices:
    """Each row's column in the memo's table, and the columns this batch uses."""

    code: NDArray[np.intp]
    used: NDArray[np.intp]
    memo: ChoiceMemo

    def field(self, name: str, dtype: type[np.signedinteger[Any]] = np.int64) -> NDArray[Any]:
        """One of :data:`CHOICE_FIELDS` for every row, as ``dtype``."""
        row = self.memo.table[CHOICE_FIELDS.index(name), : self.memo.size]
        column: NDArray[Any] = row.astype(dtype, copy=False)[self.code]
        return column

    def used_field(self, name: str) -> NDArray[np.int64]:
        """One of :data:`CHOICE_FIELDS` for each decision the batch uses."""
        used: NDArray[np.int64] = self.memo.table[CHOICE_FIELDS.index(name), self.used]
        return used

    def detail(self, code: int) -> str | None:
        return self.memo.details[code]


def _distinct(keys: NDArray[np.int64], space: int) -> tuple[NDArray[np.int64], NDArray[np.intp]]:
    """The sorted distinct keys and each row's position among them."""
    if space <= _PRESENCE_ROWS_MAX * len(keys) and space < 1 << 31:
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
        return ((REJECT_REASONS.index(chosen.reason), *NOTHING[0][1:]), chosen.detail)
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
        return ((REJECT_REASONS.index(outcome.reason), *NOTHING[0][1:]), outcome.detail)
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


def _stable_codes(
    memo: ChoiceMemo, rating_groups: list[int | None], item_ids: list[str]
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """The memo's codes for the batch's rating group values and item ids (0: none)."""
    groups = np.array([memo.groups.setdefault(v, len(memo.groups)) for v in rating_groups])
    items = np.array([0] + [memo.items.setdefault(i, len(memo.items)) for i in item_ids])
    return groups.astype(np.int64), items.astype(np.int64)


def choose(
    tables: ColumnCatalogue,
    catalogue: Catalogue,
    space: KeySpace,
    keys: NDArray[np.int64],
    rating_groups: list[int | None],
    item_ids: list[str],
) -> KeyedChoices:
    """Decide every distinct key of ``keys``; ``rating_groups[g]`` is the value of group code g."""
    if tables.memo_full():
        tables.forget_choices()
    distinct, position = _distinct(keys, space.nothing + 1)
    # The same facts with radices that do not depend on the batch.
    stable_space = KeySpace(
        versions=space.versions,
        destinations=space.destinations,
        rating_groups=GROUPS_MAX,
        bands=space.bands,
        items=ITEMS_MAX,
    )
    memo = tables.choice_memo
    groups, items = _stable_codes(memo, rating_groups, item_ids)
    if not memo.codes_fit():
        tables.forget_choices()
        memo = tables.choice_memo
        groups, items = _stable_codes(memo, rating_groups, item_ids)
        invariant(memo.codes_fit(), "a batch with over a million rating groups or items")
    content = distinct >= space.content_base
    facts = space.unpack(np.where(content, 0, distinct))
    stable = stable_space.pack(
        facts["version"], facts["service"], facts["destination"],
        groups[facts["group"]], facts["band"], facts["roaming"],
    )  # fmt: skip
    content_version, content_item = np.divmod(distinct - space.content_base, space.items + 1)
    stable_content = stable_space.content_base + content_version * ITEMS_MAX
    stable = np.where(content, stable_content + items[np.where(content, content_item, 0)], stable)
    stable[distinct == space.nothing] = -1
    known = memo.rows
    rows = [known.get(key, -1) for key in stable.tolist()]
    for at, row in enumerate(rows):
        if row >= 0:
            continue
        key = int(stable[at])
        if key == -1:
            rows[at] = 0
            continue
        if content[at]:
            item = int(content_item[at])
            choice = _decide_content(
                tables, catalogue, int(content_version[at]), item_ids[item - 1] if item else None
            )
        else:
            choice = _decide_rule(
                tables,
                catalogue,
                int(facts["version"][at]),
                int(facts["service"][at]),
                int(facts["destination"][at]),
                rating_groups[int(facts["group"][at])],
                int(facts["band"][at]),
                bool(facts["roaming"][at]),
            )
        rows[at] = known[key] = memo.add(choice)
    used = np.array(rows, np.intp)
    return KeyedChoices(code=used[position], used=used, memo=memo)
