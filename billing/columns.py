"""The column layouts the bulk path shares: a batch of usage records and its rated results.

Gateway, partitions and shards pass batches as Apache Arrow record batches
(``pyarrow.RecordBatch``), never as lists of Python objects. Two schemas:

* :data:`USAGE_SCHEMA`: one row per usage record, the fields of
  :class:`~billing.records.UsageRecord` (and of proto ``petribill.v1.UsageRecord``)
  with the same names and units, plus the record's provenance (file, line).
* :data:`RATED_SCHEMA`: one row per row of a usage batch, same order, the
  outcome of rating it: the priced fields of :class:`~billing.rated.RatedRecord`
  or, when ``reject_reason`` is not null, why the record could not be rated.
  Numbers are never null (0 or false on a rejected row); labels are null
  where the scalar type has ``None``. ``RatedRecord.rate_ids`` is not a column:
  rating always sets it to ``(price_key,)``. :data:`TIERS_FIELD` (each tier's
  piece; its ``rate_id`` is the row's ``price_key``) is optional, since
  charging reprices from ``price_key`` and never reads it.

Low-cardinality strings (service, plan, usage class, destination...) are
dictionary-encoded: a batch carries each distinct label once and an int per
row, so a consumer can work on the codes and look a label up once per code.

:func:`records_to_batch` / :func:`batch_to_records` convert from and to the
scalar records (``billing.column_rating.RatedRows`` turns rated columns back
into :class:`~billing.rated.RatingOutcome` values). They cost about a
microsecond per record, so they belong at the edges (tests, the per-record
API), not on the bulk path, which receives Arrow IPC and keeps the columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import pyarrow as pa

from billing.rated import RejectReason
from billing.records import Service, UsageRecord

__all__ = [
    "LABEL",
    "RATED_SCHEMA",
    "REJECT_REASONS",
    "SERVICES",
    "TIERS_FIELD",
    "TIER_TYPE",
    "USAGE_SCHEMA",
    "ColumnLayoutError",
    "ColumnOverflowError",
    "batch_to_records",
    "records_to_batch",
    "usage_batch",
]

LABEL: Final = pa.dictionary(pa.int32(), pa.string())
"""A dictionary-encoded string: the type of every low-cardinality label column."""

SERVICES: Final[tuple[Service, ...]] = (Service.VOICE, Service.SMS, Service.DATA, Service.CONTENT)
"""Service codes in :data:`USAGE_SCHEMA`'s ``service`` column: proto enum value minus one."""

REJECT_REASONS: Final[tuple[RejectReason, ...]] = tuple(RejectReason)
"""The dictionary of ``reject_reason``, in :class:`RejectReason` declaration order."""

USAGE_SCHEMA: Final = pa.schema(
    [
        pa.field("record_id", pa.string(), nullable=False),
        pa.field("service", pa.dictionary(pa.int8(), pa.string()), nullable=False),
        pa.field("served_msisdn", pa.string(), nullable=False),
        pa.field("record_opening_time_s", pa.int64(), nullable=False),
        pa.field("called_number", pa.string()),
        pa.field("duration_s", pa.int64(), nullable=False),
        pa.field("sms_count", pa.int64(), nullable=False),
        pa.field("uplink_bytes", pa.int64(), nullable=False),
        pa.field("downlink_bytes", pa.int64(), nullable=False),
        pa.field("rating_group", pa.int64()),
        pa.field("content_item_id", LABEL),
        pa.field("roaming", pa.bool_(), nullable=False),
        pa.field("source_file", LABEL),
        pa.field("source_line", pa.int64()),
    ]
)

TIER_TYPE: Final = pa.struct(
    [
        pa.field("start_units", pa.int64(), nullable=False),
        pa.field("units", pa.int64(), nullable=False),
        pa.field("billed_units", pa.int64(), nullable=False),
        pa.field("amount", pa.int64(), nullable=False),
    ]
)
TIERS_FIELD: Final = pa.field("tiers", pa.list_(pa.field("item", TIER_TYPE, nullable=False)))

RATED_SCHEMA: Final = pa.schema(
    [
        pa.field("reject_reason", pa.dictionary(pa.int8(), pa.string())),
        pa.field("reject_detail", pa.string()),
        pa.field("plan_id", LABEL),
        pa.field("plan_version", LABEL),
        pa.field("currency", LABEL),
        pa.field("amount", pa.int64(), nullable=False),
        pa.field("units", pa.int64(), nullable=False),
        pa.field("billed_units", pa.int64(), nullable=False),
        pa.field("connect_fee", pa.int64(), nullable=False),
        pa.field("capped", pa.bool_(), nullable=False),
        pa.field("disconnect", pa.bool_(), nullable=False),
        pa.field("rounding", LABEL),
        pa.field("usage_class", LABEL),
        pa.field("price_key", LABEL),
        pa.field("destination", LABEL),
        pa.field("time_band", LABEL),
        pa.field("content_provider", LABEL),
        pa.field("provider_share", pa.int64(), nullable=False),
    ]
)

_SERVICE_CODE: Final = {service: code for code, service in enumerate(SERVICES)}
_SERVICE_DICTIONARY: Final = pa.array([service.value for service in SERVICES], pa.string())
_REQUIRED: Final = tuple(
    field.name for field in USAGE_SCHEMA if field.name not in ("source_file", "source_line")
)


class ColumnLayoutError(ValueError):
    """Raised when a batch does not have the columns, types or non-null values a schema asks for.

    The message names the column; a gateway answers it as INVALID_ARGUMENT.
    """


class ColumnOverflowError(ValueError):
    """Raised when a rated value does not fit its int64 column (beyond 9.2 trillion currency units).

    The scalar types have no bound, but every stored amount is 8 bytes
    (``actors.store.codec.encode_i64`` refuses more), so only an absurd rate
    times an absurd volume gets here, and the batch fails before anything is kept.
    """


def _labels(values: Sequence[str | None]) -> pa.DictionaryArray:
    """Dictionary-encode strings (``None`` stays null), in order of first appearance."""
    codes: dict[str, int] = {}
    indices = [None if value is None else codes.setdefault(value, len(codes)) for value in values]
    return pa.DictionaryArray.from_arrays(
        pa.array(indices, pa.int32()), pa.array(list(codes), pa.string())
    )


def records_to_batch(records: Sequence[UsageRecord]) -> pa.RecordBatch:
    """The records as one batch of :data:`USAGE_SCHEMA`, row for row."""
    service_codes = np.fromiter(
        (_SERVICE_CODE[record.service] for record in records), np.int8, len(records)
    )
    columns: list[Any] = [
        pa.array([r.record_id for r in records], pa.string()),
        pa.DictionaryArray.from_arrays(pa.array(service_codes), _SERVICE_DICTIONARY),
        pa.array([r.served_msisdn for r in records], pa.string()),
        pa.array([r.record_opening_time_s for r in records], pa.int64()),
        pa.array([r.called_number for r in records], pa.string()),
        pa.array([r.duration_s for r in records], pa.int64()),
        pa.array([r.sms_count for r in records], pa.int64()),
        pa.array([r.uplink_bytes for r in records], pa.int64()),
        pa.array([r.downlink_bytes for r in records], pa.int64()),
        pa.array([r.rating_group for r in records], pa.int64()),
        _labels([r.content_item_id for r in records]),
        pa.array([r.roaming for r in records], pa.bool_()),
        _labels([r.source_file for r in records]),
        pa.array([r.source_line for r in records], pa.int64()),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=USAGE_SCHEMA)


def usage_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` checked against :data:`USAGE_SCHEMA`; missing provenance columns are added as null.

    Plain strings where the schema has dictionaries (and the other way round)
    are converted, so a client may send either; a missing column, another
    type, or a null in a non-nullable column raises :class:`ColumnLayoutError`.
    """
    names = set(batch.schema.names)
    missing = [name for name in _REQUIRED if name not in names]
    if missing:
        raise ColumnLayoutError(f"usage batch lacks column(s): {', '.join(missing)}")
    columns = []
    for field in USAGE_SCHEMA:
        if field.name not in names:
            columns.append(pa.nulls(batch.num_rows, field.type))
            continue
        column = batch.column(field.name)
        if column.type != field.type:
            try:
                column = column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ColumnLayoutError(
                    f"usage column {field.name} is {column.type}, expected {field.type}: {exc}"
                ) from None
        if not field.nullable and column.null_count:
            raise ColumnLayoutError(f"usage column {field.name} has {column.null_count} null(s)")
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, schema=USAGE_SCHEMA)


def batch_to_records(batch: pa.RecordBatch) -> list[UsageRecord]:
    """The rows of a :data:`USAGE_SCHEMA` batch as usage records (the inverse of the above)."""
    checked = usage_batch(batch)
    names = USAGE_SCHEMA.names
    columns = [checked.column(name).to_pylist() for name in names]
    services = {service.value: service for service in SERVICES}
    records = []
    for row in zip(*columns, strict=True):
        fields = dict(zip(names, row, strict=True))
        fields["service"] = services[fields["service"]]
        records.append(UsageRecord(**fields))
    return records
