"""A catalogue prepared for column rating: arrays for the per-row work, memos for the per-key work.

Built once per catalogue (the catalogue is immutable; a reloaded one gets new
tables) and kept in a weak map, like the scalar fast path's memo tables. Three
kinds of content:

* arrays the rows index: plan versions by start time, the prefix index, the
  band tables, the rate table;
* label registries: append-only string lists whose positions are the codes
  of the output's dictionary columns, so a code keeps its label from batch to
  batch (until the memo outgrows its bounds and starts again; each batch
  carries its own dictionary, which is what a reader must use);
* the choice memo: what a selection key (plan version, service, destination,
  rating group, band, roaming; or version and content item) decides, computed
  by the scalar code once per key and kept.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from billing.column_rating.arithmetic import RateTable
from billing.column_rating.bands import BandDays
from billing.column_rating.prefixes import PrefixIndex
from billing.invariant import invariant
from billing.tariffs.model import Catalogue, PlanVersion, Rate

__all__ = [
    "CHOICE_FIELDS",
    "GROUPS_MAX",
    "ITEMS_MAX",
    "NOTHING",
    "Choice",
    "ChoiceMemo",
    "ColumnCatalogue",
    "Labels",
    "column_catalogue",
]

_FAR_FUTURE_S: Final = 2**62

CHOICE_FIELDS: Final = (
    "reason", "rate_row", "plan_id", "plan_version", "currency", "rounding", "usage_class",
    "price_key", "destination", "time_band", "content_provider", "provider_share",
)  # fmt: skip
"""The integer fields of a :data:`Choice`, in order: a reject reason code (``-1``: rated),
the rate table row, label codes (``-1``: null) and the provider share in micro-units."""

Choice = tuple[tuple[int, ...], str | None]
"""What one selection key decides: :data:`CHOICE_FIELDS` values and the reject detail."""

NOTHING: Final[Choice] = ((-1, -1, *([-1] * (len(CHOICE_FIELDS) - 3)), 0), None)
"""The decision for rows that select nothing (rejected before selection, or scalar)."""
_FIELDS: Final = len(CHOICE_FIELDS)
# Stable radices of rating groups and items (more than a batch of a million rows can
# hold), and the bounds on what the memo keeps: when one is reached, the decisions
# and the label registries start again together (codes are only ever read through
# the dictionary a batch carries).
GROUPS_MAX: Final = 1 << 20
ITEMS_MAX: Final = 1 << 20
CHOICES_MAX: Final = 200_000
LABELS_MAX: Final = 200_000


class Labels:
    """An append-only list of labels; a label's position is its code in every batch."""

    __slots__ = ("_array", "codes", "values")

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}
        self.values: list[str] = []
        self._array: pa.Array | None = None

    def code(self, value: str | None) -> int:
        """The code of ``value`` (``-1`` for ``None``), registering it if new."""
        if value is None:
            return -1
        found = self.codes.get(value)
        if found is None:
            found = self.codes[value] = len(self.values)
            self.values.append(value)
            self._array = None
        return found

    def array(self) -> pa.Array:
        """The dictionary of the labels so far, built again only after one was added."""
        if self._array is None:
            self._array = pa.array(self.values, pa.string())
        return self._array


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class PlanColumns:
    """One plan's versions as arrays: ``versions[i]`` is valid in ``[starts[i], untils[i])``."""

    starts: NDArray[np.int64]
    untils: NDArray[np.int64]
    versions: NDArray[np.int32]


class ChoiceMemo:
    """The decided keys of one catalogue: ``table[field, row]`` and the stable key of each row.

    Row 0 is the 'no key' decision (labels null, nothing to price). Rating
    group values and item ids get stable codes here, in order of first sight.
    """

    __slots__ = ("details", "groups", "items", "rows", "size", "table")

    def __init__(self) -> None:
        self.rows: dict[int, int] = {}
        self.groups: dict[int | None, int] = {None: 0}
        self.items: dict[str | None, int] = {None: 0}
        self.table = np.zeros((_FIELDS, 1024), np.int64)
        self.details: list[str | None] = []
        self.size = 0
        self.add(NOTHING)

    def add(self, choice: Choice) -> int:
        """Keep a decision; returns its column in :attr:`table`."""
        if self.size == self.table.shape[1]:
            self.table = np.concatenate([self.table, np.zeros_like(self.table)], axis=1)
        self.table[:, self.size] = choice[0]
        self.details.append(choice[1])
        self.size += 1
        return self.size - 1

    def full(self) -> bool:
        return (
            self.size >= CHOICES_MAX
            or len(self.groups) >= GROUPS_MAX
            or len(self.items) >= ITEMS_MAX
        )

    def codes_fit(self) -> bool:
        """Whether every rating group and item code fits its radix in the stable keys."""
        return len(self.groups) <= GROUPS_MAX and len(self.items) <= ITEMS_MAX


class ColumnCatalogue:
    """Everything column rating keeps per catalogue; see the module docstring."""

    __slots__ = (
        "band_days",
        "choice_memo",
        "labels",
        "plan_index",
        "plans",
        "prefixes",
        "rate_rows",
        "rates",
        "version_bands",
        "versions",
    )

    def __init__(self, catalogue: Catalogue) -> None:
        # The catalogue itself is not kept: it is the weak key these tables live under.
        self.versions: list[PlanVersion] = []
        self.plans: list[PlanColumns] = []
        self.plan_index: dict[str, int] = {}
        for plan_id, plan in catalogue.plans.items():
            first = len(self.versions)
            self.versions.extend(plan.versions)
            self.plan_index[plan_id] = len(self.plans)
            self.plans.append(
                PlanColumns(
                    starts=np.array([v.valid_from_s for v in plan.versions], np.int64),
                    untils=np.array(
                        [
                            _FAR_FUTURE_S if v.valid_until_s is None else v.valid_until_s
                            for v in plan.versions
                        ],
                        np.int64,
                    ),
                    versions=np.arange(first, len(self.versions), dtype=np.int32),
                )
            )
        band_sets: dict[int, int] = {}
        self.band_days: list[BandDays] = []
        bands_of: list[int] = []
        for version in self.versions:
            position = band_sets.get(id(version.timebands))
            if position is None:
                position = band_sets[id(version.timebands)] = len(self.band_days)
                self.band_days.append(BandDays(version.timebands))
            bands_of.append(position)
        # One more entry for "no version" (index -1), pointing at no band set.
        self.version_bands = np.array([*bands_of, -1], np.int32)
        self.prefixes = PrefixIndex.build(catalogue.prefixes.table)
        rates: dict[int, Rate] = {id(rate): rate for rate in catalogue.price_keys.values()}
        for item in catalogue.items.values():
            rates[id(item.rate)] = item.rate
        for version in self.versions:
            for rule in (*version.voice, *version.sms, *version.data):
                rates[id(rule.rate)] = rule.rate
        self.rate_rows = {key: row for row, key in enumerate(rates)}
        self.rates = RateTable.build(list(rates.values()))
        self.labels = {name: Labels() for name in CHOICE_FIELDS[2:-1]}
        self.choice_memo = ChoiceMemo()
        # The stable keys of keys.choose: rule keys, then content keys.
        rules = len(self.versions) * 3 * (len(catalogue.destinations) + 1) * GROUPS_MAX
        stable_keys = rules * self.bands_max * 2 + len(self.versions) * ITEMS_MAX
        invariant(stable_keys < 2**62, f"catalogue {catalogue.source}: keys do not fit int64")

    def forget_choices(self) -> None:
        """Start the decisions and the label registries again (they bound memory)."""
        self.labels = {name: Labels() for name in CHOICE_FIELDS[2:-1]}
        self.choice_memo = ChoiceMemo()

    def memo_full(self) -> bool:
        return self.choice_memo.full() or any(
            len(labels.values) >= LABELS_MAX for labels in self.labels.values()
        )

    @property
    def bands_max(self) -> int:
        return max((len(days.bands.band_ids) for days in self.band_days), default=1)


_TABLES: weakref.WeakKeyDictionary[Catalogue, ColumnCatalogue] = weakref.WeakKeyDictionary()


def column_catalogue(catalogue: Catalogue) -> ColumnCatalogue:
    """The prepared tables of ``catalogue``, built on first use."""
    tables = _TABLES.get(catalogue)
    if tables is None:
        tables = _TABLES[catalogue] = ColumnCatalogue(catalogue)
    return tables
