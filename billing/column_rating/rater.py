"""Rating a batch of usage columns, equal to ``billing.rating.rate`` row for row, to the micro-unit.

The pipeline, each step on whole arrays:

1. plan version per row: ``searchsorted`` of the opening time in the plan's
   version starts, then the version's end checked (a gap has no version);
2. destination of voice and SMS rows by longest prefix (``prefixes``);
3. time band in the band set's zone (``bands``);
4. selection key per row, decided once per distinct key (``keys``);
5. price per row at the chosen rate (``arithmetic``);
6. reject reasons and details, then the output columns.

Rows the arrays do not cover go to the scalar rater, one by one, and are
counted in :attr:`RatedColumns.scalar_rows` by cause: a called number that
is not all ASCII digits (``not_digits``), a day whose zone offset is not whole
minutes (``no_band_table``), and units beyond what int64 arithmetic holds or
below zero (``units_out_of_range``). Rejects follow the scalar rater's order:
no plan, then content, then no destination, then no rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from billing.column_rating.arithmetic import price_rows
from billing.column_rating.bands import NO_TABLE
from billing.column_rating.inputs import PlanColumn, PlanIds, UsageColumns, plan_column
from billing.column_rating.inputs import usage_columns as read_usage
from billing.column_rating.keys import KeySpace, choose
from billing.column_rating.output import RatedArrays, assemble
from billing.column_rating.prefixes import NO_NUMBER, NOT_DIGITS
from billing.column_rating.tables import ColumnCatalogue, column_catalogue
from billing.columns import REJECT_REASONS, batch_to_records
from billing.rated import RatedRecord, RejectReason
from billing.rating import rate
from billing.tariffs.model import Catalogue
from billing.tariffs.timebands import DAY_S

__all__ = ["RatedColumns", "rate_columns"]

_VOICE, _SMS, _DATA, _CONTENT = range(4)
_NO_PLAN: Final = REJECT_REASONS.index(RejectReason.NO_PLAN)
_NO_DESTINATION: Final = REJECT_REASONS.index(RejectReason.NO_DESTINATION)
_PLANS_MASKED_MAX: Final = 4
_BYTES_MAX: Final = 2**62
_GROUP_SPAN_MAX: Final = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class RatedColumns:
    """The rated batch (``billing.columns.RATED_SCHEMA``) and how it was made.

    ``scalar_rows`` counts the rows priced by the scalar rater, by cause;
    ``keys`` is the number of distinct selection keys in the batch.
    """

    batch: pa.RecordBatch
    scalar_rows: Mapping[str, int]
    keys: int


def _versions(
    tables: ColumnCatalogue, plans: PlanColumn, t_s: NDArray[np.int64]
) -> NDArray[np.int32]:
    """The global version index per row, ``-1`` where the plan is unknown or has no version."""
    version = np.full(len(t_s), -1, np.int32)
    known = [tables.plan_index.get(name, -1) for name in plans.names]
    if len(plans.names) <= _PLANS_MASKED_MAX:
        groups = [
            (np.arange(len(t_s)) if len(plans.names) == 1 else np.flatnonzero(plans.code == j), p)
            for j, p in enumerate(known)
        ]
    else:
        order = np.argsort(plans.code, kind="stable")
        edges = np.searchsorted(plans.code[order], np.arange(len(known) + 1))
        groups = [(order[edges[j] : edges[j + 1]], p) for j, p in enumerate(known)]
    for rows, p in groups:
        plan = tables.plans[p] if p >= 0 else None
        if plan is None or len(rows) == 0 or len(plan.starts) == 0:
            continue
        t = t_s[rows]
        at = np.searchsorted(plan.starts, t, side="right") - 1
        inside = (at >= 0) & (t < plan.untils[np.maximum(at, 0)])
        version[rows] = np.where(inside, plan.versions[np.maximum(at, 0)], -1)
    return version


def _rating_groups(column: pa.Array) -> tuple[NDArray[np.int32], list[int | None]]:
    """A small code per row for its rating group (0: none) and the value of each code."""
    rows = len(column)
    if column.null_count == rows:
        return np.zeros(rows, np.int32), [None]
    extremes = pc.min_max(column)
    low, high = extremes["min"].as_py(), extremes["max"].as_py()
    # Nulls read as the smallest value, which occurs anyway; their code is reset below.
    values = (pc.fill_null(column, low) if column.null_count else column).to_numpy()
    if high - low < _GROUP_SPAN_MAX:
        shifted = values - low
        seen = np.zeros(high - low + 1, np.bool_)
        seen[shifted] = True
        distinct = np.flatnonzero(seen)
        lookup = np.zeros(high - low + 1, np.int32)
        lookup[distinct] = np.arange(1, len(distinct) + 1, dtype=np.int32)
        code = lookup[shifted]
        group_values: list[int | None] = [None, *(int(v) + low for v in distinct.tolist())]
    else:
        distinct_values, inverse = np.unique(values, return_inverse=True)
        code = (inverse + 1).astype(np.int32)
        group_values = [None, *distinct_values.tolist()]
    if column.null_count:
        code[~column.is_valid().to_numpy(zero_copy_only=False)] = 0
    return code, group_values


def _units(usage: UsageColumns) -> NDArray[np.int64]:
    """``UsageRecord.units`` per row: seconds, messages, bytes, or one item."""
    by_service = (
        usage.duration_s,
        usage.sms_count,
        usage.uplink_bytes + usage.downlink_bytes,
        np.ones(len(usage.service), np.int64),
    )
    units: NDArray[np.int64] = np.choose(usage.service, by_service)
    return units


def rate_columns(
    batch: pa.RecordBatch, catalogue: Catalogue, plans: PlanIds = None, *, tiers: bool = False
) -> RatedColumns:
    """Rate every row of ``batch`` (``billing.columns.USAGE_SCHEMA``) for the plan id in ``plans``.

    ``plans`` is one plan id for all rows, ``None`` (the catalogue's default
    plan), or a string column with a plan id per row (null: the default); a
    dictionary-encoded column saves encoding it here. ``tiers=True`` adds the
    ``tiers`` column (``billing.columns.TIERS_FIELD``).
    """
    tables = column_catalogue(catalogue)
    usage = read_usage(batch)
    rows = usage.batch.num_rows
    # 1. Plan version, by opening time.
    plan = plan_column(plans, rows, catalogue.default_plan)
    version = _versions(tables, plan, usage.t_s)
    service = usage.service
    reason = np.where(version < 0, _NO_PLAN, -1).astype(np.int8)
    has_version = version >= 0
    # 2. Destination: only voice and SMS rows with a version need one.
    wants_number = has_version & (service <= _SMS)
    found = (
        tables.prefixes.lookup(usage.called_number)
        if wants_number.any()
        else np.full(rows, -1, np.int32)
    )
    no_number = wants_number & (found == NO_NUMBER)
    no_match = wants_number & (found == -1)
    reason[no_number | no_match] = _NO_DESTINATION
    not_digits = wants_number & (found == NOT_DIGITS)
    # 3. Band, in the zone of the version's band set.
    band = np.zeros(rows, np.int16)
    selects = has_version & (service != _CONTENT) & ~no_number & ~no_match & ~not_digits
    band_set = tables.version_bands[version]
    day = usage.t_s // DAY_S
    minute = (usage.t_s - day * DAY_S) // 60
    for position, days in enumerate(tables.band_days):
        if days.single:
            continue
        at = np.flatnonzero(selects & (band_set == position))
        if len(at):
            band[at] = days.band_of(day[at], minute[at])
    no_band_table = selects & (band == NO_TABLE)
    scalar = not_digits | no_band_table
    selects &= ~no_band_table
    # 4. Keys, decided once each.
    group_code, group_values = _rating_groups(usage.batch.column("rating_group"))
    space = KeySpace(
        versions=len(tables.versions),
        destinations=len(catalogue.destinations),
        rating_groups=len(group_values),
        bands=tables.bands_max,
        items=len(usage.item_ids),
    )
    destination = np.where(service == _DATA, -1, np.maximum(found, -1)).astype(np.int32)
    keys = np.full(rows, space.nothing, np.int64)
    keys[selects] = space.pack(
        version[selects],
        service[selects],
        destination[selects],
        group_code[selects],
        band[selects],
        usage.roaming[selects],
    )
    content = has_version & (service == _CONTENT)
    keys[content] = space.pack_content(version[content], usage.item[content])
    choices = choose(tables, catalogue, space, keys, group_values, usage.item_ids)
    chosen_reason = choices.field("reason").astype(np.int8)
    reason = np.where(reason >= 0, reason, chosen_reason)
    rated = (reason < 0) & ~scalar
    # 5. Price the rated rows; rows outside the int64-safe range go scalar.
    # 6. (In output.assemble) reject details and the Arrow columns.
    units = _units(usage)
    rate_row = choices.field("rate_row")
    in_range = (units >= 0) & (units <= tables.rates.units_max[np.maximum(rate_row, 0)])
    data = service == _DATA
    # Each byte count below 2**62 keeps their sum inside int64.
    small = (np.abs(usage.uplink_bytes) < _BYTES_MAX) & (np.abs(usage.downlink_bytes) < _BYTES_MAX)
    in_range &= ~data | small
    out_of_range = rated & ~in_range
    rated &= in_range
    scalar |= out_of_range
    units = np.where(rated, units, 0)
    rate_row = np.where(rated, rate_row, tables.rates.empty_row).astype(np.intp)
    rates_used = np.append(choices.used_field("rate_row"), tables.rates.empty_row)
    priced = price_rows(
        tables.rates, rate_row, units, tiers=tiers, rates_used=rates_used[rates_used >= 0]
    )
    arrays = RatedArrays.gather(choices, reason, units, priced)
    scalar_at = np.flatnonzero(scalar)
    if len(scalar_at):
        _rate_scalar(tables, catalogue, usage, plan, scalar_at, arrays)
    out = assemble(tables, usage, plan, version, found, arrays, choices, tiers=tiers)
    return RatedColumns(
        batch=out,
        scalar_rows={
            "not_digits": int(not_digits.sum()),
            "no_band_table": int(no_band_table.sum()),
            "units_out_of_range": int(out_of_range.sum()),
        },
        keys=len(choices.used),
    )


def _rate_scalar(
    tables: ColumnCatalogue,
    catalogue: Catalogue,
    usage: UsageColumns,
    plan: PlanColumn,
    at: NDArray[np.intp],
    arrays: RatedArrays,
) -> None:
    """Rate the rows ``at`` with the scalar rater and write its outcomes into ``arrays``."""
    records = batch_to_records(usage.batch.take(pa.array(at)))
    labels = tables.labels
    for row, record in zip(at.tolist(), records, strict=True):
        outcome = rate(record, catalogue, plan.names[plan.code[row]])
        if not isinstance(outcome, RatedRecord):
            arrays.reject(row, REJECT_REASONS.index(outcome.reason), outcome.detail)
            continue
        codes = {name: labels[name].code(getattr(outcome, name)) for name in labels}
        arrays.put(row, outcome, codes)
