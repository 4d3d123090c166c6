"""Reading a usage batch and its plan column into the numpy arrays the rater works on.

Numeric columns without nulls are viewed in place; nullable ones come with a
validity mask; dictionary columns give their codes and a small list of their
labels, so a per-label question (which service, which plan, which item) is
asked once per label and broadcast to the rows by a gather.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from billing.columns import SERVICES, USAGE_SCHEMA, ColumnLayoutError, usage_batch
from billing.records import Service

__all__ = ["PlanColumn", "UsageColumns", "plan_column", "usage_columns"]

PlanIds: TypeAlias = "str | pa.Array | pa.ChunkedArray | None"


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class UsageColumns:
    """The columns of a usage batch that rating reads, as arrays (``service``: 0..3 in SERVICES)."""

    batch: pa.RecordBatch
    service: NDArray[np.int8]
    t_s: NDArray[np.int64]
    duration_s: NDArray[np.int64]
    sms_count: NDArray[np.int64]
    uplink_bytes: NDArray[np.int64]
    downlink_bytes: NDArray[np.int64]
    roaming: NDArray[np.bool_]
    item: NDArray[np.int32]
    item_ids: list[str]
    called_number: pa.Array


def _dictionary(column: pa.Array) -> tuple[NDArray[np.int32], list[str]]:
    """Codes (``-1`` for null) and labels of a dictionary column."""
    indices = column.indices
    filled = pc.fill_null(indices, -1) if indices.null_count else indices
    codes = filled.to_numpy().astype(np.int32, copy=False)
    return codes, column.dictionary.to_pylist()


def usage_columns(batch: pa.RecordBatch) -> UsageColumns:
    """The arrays of ``batch``; :class:`ColumnLayoutError` when it does not fit the schema."""
    if not batch.schema.equals(USAGE_SCHEMA):
        batch = usage_batch(batch)
    service_codes, service_labels = _dictionary(batch.column("service"))
    try:
        service_map = np.array([SERVICES.index(Service(s)) for s in service_labels], np.int8)
    except ValueError as exc:
        raise ColumnLayoutError(f"usage column service: {exc}") from None
    item_codes, item_ids = _dictionary(batch.column("content_item_id"))
    return UsageColumns(
        batch=batch,
        service=service_map[service_codes] if len(service_map) else np.zeros(0, np.int8),
        t_s=batch.column("record_opening_time_s").to_numpy(),
        duration_s=batch.column("duration_s").to_numpy(),
        sms_count=batch.column("sms_count").to_numpy(),
        uplink_bytes=batch.column("uplink_bytes").to_numpy(),
        downlink_bytes=batch.column("downlink_bytes").to_numpy(),
        roaming=batch.column("roaming").to_numpy(zero_copy_only=False),
        item=item_codes,
        item_ids=item_ids,
        called_number=batch.column("called_number"),
    )


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class PlanColumn:
    """The plan id of each row as a code into ``names`` (a null or absent id: the default plan)."""

    code: NDArray[np.int32]
    names: list[str]


def plan_column(plans: PlanIds, rows: int, default_plan: str) -> PlanColumn:
    """Codes and names of ``plans``: one id for all rows, ``None``, or a string column.

    A dictionary-encoded column is taken as it is; a plain string column is
    encoded first (about 20 ns a row), so a caller with the directory's codes
    at hand should pass them as a dictionary.
    """
    if plans is None or isinstance(plans, str):
        return PlanColumn(
            code=np.zeros(rows, np.int32), names=[default_plan if plans is None else plans]
        )
    column: Any = plans.combine_chunks() if isinstance(plans, pa.ChunkedArray) else plans
    if len(column) != rows:
        raise ColumnLayoutError(f"{len(column)} plan ids for {rows} rows")
    if pa.types.is_null(column.type):  # all null: the default plan everywhere
        return PlanColumn(code=np.zeros(rows, np.int32), names=[default_plan])
    if not pa.types.is_dictionary(column.type):
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            raise ColumnLayoutError(f"plan ids must be strings, got {column.type}")
        column = column.dictionary_encode()
    names = [str(name) for name in column.dictionary.to_pylist()]
    if column.null_count:
        # A null id means the default plan, as rate(record, catalogue, None) does.
        codes = pc.fill_null(column.indices, len(names)).to_numpy().astype(np.int32)
        return PlanColumn(code=codes, names=[*names, default_plan])
    return PlanColumn(code=column.indices.to_numpy().astype(np.int32, copy=False), names=names)
