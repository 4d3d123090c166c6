"""The bulk path's records in: a client's Arrow columns, judged row by row as SubmitUsage judges.

A row of ``SubmitUsageColumnsRequest.records`` means what the
``UsageRecord`` message of the same values means (usage.proto): a null, an
empty string or a 0 is "absent" unless the service makes the 0 meaningful.
:func:`read_records` gives, for a table of such rows, the readable records as
one ``billing.columns.USAGE_SCHEMA`` batch (normalised: E.164 numbers, an SMS
without a count is one message) and the malformed rows as rejects naming the
field, exactly as :func:`cluster.wire.record_from_proto` would for each row.

Exactness is by construction, cheapness by arrays: a handful of Arrow kernels
find the rows that are certainly well-formed *and* already normal (ids of the
right shape, numbers already E.164 digits, values in range, the service's
fields and no other). Those are taken as they are, without a Python object per
row. Every other row — a malformed one, or a number written ``+49 30 ...`` —
is judged by ``record_from_values``, the per-record rules themselves, and its
record (or reject) put back in its place. A well-formed batch from a mediation
system that writes E.164 takes no row through Python.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from billing.columns import LABEL, USAGE_SCHEMA, records_to_batch, usage_batch
from billing.readers import Reject
from billing.readers.values import INT_BOUNDS, OPENING_TIME_MAX_S, OPENING_TIME_MIN_S
from billing.records import UsageRecord
from cluster.wire import record_from_values

__all__ = [
    "COLUMN_KINDS",
    "E164_PATTERN",
    "IDENTIFIER_PATTERN",
    "RECORD_ID_PATTERN",
    "SERVICES",
    "WireColumnsError",
    "WireRecords",
    "one_batch",
    "read_records",
]

COLUMN_KINDS: Final = {
    "record_id": "text",
    "service": "text",
    "served_msisdn": "text",
    "record_opening_time_s": "int",
    "called_number": "text",
    "duration_s": "int",
    "sms_count": "int",
    "uplink_bytes": "int",
    "downlink_bytes": "int",
    "rating_group": "int",
    "content_item_id": "text",
    "roaming": "bool",
    "source_file": "text",
    "source_line": "int",
}
"""The columns a client may send and their kinds (SubmitUsageColumnsRequest)."""

RECORD_ID_PATTERN: Final = r"^[!-9;-~]+:[!-~]+$"  # parse_record_id: <source>:<id>, printable ASCII
E164_PATTERN: Final = r"^[1-9][0-9]{2,14}$"  # what normalise_number leaves unchanged
IDENTIFIER_PATTERN: Final = r"^[!-~]{1,128}$"
SERVICES: Final = ("voice", "sms", "data", "content")
_VOICE, _SMS, _DATA, _CONTENT = range(4)


class WireColumnsError(ValueError):
    """Raised by :func:`read_records` for a table that is not the request's columns
    (an unknown column, a column of another kind, text that is not UTF-8); the message
    names the column. The gateway answers INVALID_ARGUMENT."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WireRecords:
    """The readable records (``usage``, :data:`USAGE_SCHEMA`), ``positions`` (the request
    row of each), and the malformed rows as ``(request row, reject)``, in row order."""

    usage: pa.RecordBatch
    positions: NDArray[np.int64]
    rejects: list[tuple[int, Reject]]


def _column(table: pa.Table, name: str, kind: str) -> pa.Array:
    """The column ``name`` as one array of its canonical type (all null when absent)."""
    wanted = {"text": pa.string(), "int": pa.int64(), "bool": pa.bool_()}[kind]
    if name not in table.column_names:
        return pa.nulls(table.num_rows, wanted)
    column = table.column(name).combine_chunks()
    given = column.type
    fits = (
        pa.types.is_null(given)
        or (kind == "text" and (pa.types.is_string(given) or pa.types.is_large_string(given)))
        or (
            kind == "text"
            and pa.types.is_dictionary(given)
            and pa.types.is_string(given.value_type)
        )
        or (kind == "int" and pa.types.is_integer(given))
        or (kind == "bool" and pa.types.is_boolean(given))
    )
    if not fits:
        raise WireColumnsError(f"column {name} is {given}; it must be {kind} ({wanted})")
    try:
        return column.cast(wanted) if given != wanted else column
    except pa.ArrowInvalid as exc:
        raise WireColumnsError(f"column {name}: {exc}") from None


def _matches(column: pa.Array, pattern: str) -> NDArray[np.bool_]:
    found = pc.fill_null(pc.match_substring_regex(column, pattern), False)
    return np.asarray(found.to_numpy(zero_copy_only=False), np.bool_)


def _blank(column: pa.Array) -> NDArray[np.bool_]:
    found = pc.fill_null(pc.equal(column, ""), True)
    return np.asarray(found.to_numpy(zero_copy_only=False), np.bool_)


def _ints(column: pa.Array) -> NDArray[np.int64]:
    return np.asarray(pc.fill_null(column, 0).to_numpy(), np.int64)


def _within(values: NDArray[np.int64], name: str) -> NDArray[np.bool_]:
    low, high = INT_BOUNDS[name]
    return (values >= low) & (values <= high)


def _plain_rows(c: dict[str, pa.Array]) -> tuple[NDArray[np.bool_], NDArray[np.int8]]:
    """The rows certainly readable and already normal (see the module), and their service."""
    rows = len(c["record_id"])
    service = np.asarray(
        pc.fill_null(pc.index_in(c["service"], value_set=pa.array(SERVICES)), -1).to_numpy(),
        np.int8,
    )
    t_s = _ints(c["record_opening_time_s"])
    duration, sms = _ints(c["duration_s"]), _ints(c["sms_count"])
    up, down, group = _ints(c["uplink_bytes"]), _ints(c["downlink_bytes"]), _ints(c["rating_group"])
    has_group = np.asarray(c["rating_group"].is_valid().to_numpy(zero_copy_only=False), np.bool_)
    common = (
        _matches(c["record_id"], RECORD_ID_PATTERN)
        & np.asarray(pc.fill_null(pc.less_equal(pc.utf8_length(c["record_id"]), 128), False))
        & (service >= 0)
        & _matches(c["served_msisdn"], E164_PATTERN)
        & (t_s >= OPENING_TIME_MIN_S)
        & (t_s <= OPENING_TIME_MAX_S)
    )
    called, no_called = _matches(c["called_number"], E164_PATTERN), _blank(c["called_number"])
    item, no_item = _matches(c["content_item_id"], IDENTIFIER_PATTERN), _blank(c["content_item_id"])
    no_volume = (up == 0) & (down == 0)
    group_ok = ~has_group | _within(group, "rating_group")
    voice = called & _within(duration, "duration_s") & (sms == 0) & no_volume & ~has_group & no_item
    text = called & (duration == 0) & ((sms == 0) | _within(sms, "sms_count")) & no_volume
    text &= ~has_group & no_item
    data = no_called & (duration == 0) & (sms == 0) & no_item & group_ok
    data &= _within(up, "uplink_bytes") & _within(down, "downlink_bytes")
    content = no_called & (duration == 0) & (sms == 0) & no_volume & group_ok & item
    by_service = np.choose(np.maximum(service, 0), (voice, text, data, content))
    plain = common & by_service
    return plain if rows else np.zeros(0, np.bool_), service


def _plain_batch(
    c: dict[str, pa.Array], service: NDArray[np.int8], rows: NDArray[np.intp]
) -> pa.RecordBatch:
    """The plain rows ``rows`` as :data:`USAGE_SCHEMA`, normalised as ``build_record`` would."""
    picked = pa.array(rows)
    taken = {name: column.take(picked) for name, column in c.items()}
    kinds = service[rows]
    sms = _ints(taken["sms_count"])
    sms = np.where((kinds == _SMS) & (sms == 0), 1, sms)  # an SMS without a count is one message
    called = taken["called_number"]
    item = taken["content_item_id"]
    columns: dict[str, Any] = {
        "record_id": taken["record_id"],
        "service": pa.DictionaryArray.from_arrays(
            pa.array(kinds, pa.int8()), pa.array(SERVICES, pa.string())
        ),
        "served_msisdn": taken["served_msisdn"],
        "record_opening_time_s": taken["record_opening_time_s"],
        "called_number": pc.if_else(pc.equal(called, ""), pa.scalar(None, pa.string()), called),
        "duration_s": pa.array(_ints(taken["duration_s"])),
        "sms_count": pa.array(sms),
        "uplink_bytes": pa.array(_ints(taken["uplink_bytes"])),
        "downlink_bytes": pa.array(_ints(taken["downlink_bytes"])),
        "rating_group": taken["rating_group"],
        "content_item_id": pc.if_else(pc.equal(item, ""), pa.scalar(None, pa.string()), item),
        "roaming": pc.fill_null(taken["roaming"], False),
        "source_file": taken["source_file"],
        "source_line": taken["source_line"],
    }
    for name in ("content_item_id", "source_file"):
        columns[name] = columns[name].cast(LABEL)
    return pa.RecordBatch.from_arrays([columns[f.name] for f in USAGE_SCHEMA], schema=USAGE_SCHEMA)


def read_records(table: pa.Table) -> WireRecords:
    """The request's table as records and rejects (module docstring)."""
    unknown = sorted(set(table.column_names) - set(COLUMN_KINDS))
    if unknown:
        raise WireColumnsError(
            f"unknown column(s) {', '.join(unknown)}; the columns are {', '.join(COLUMN_KINDS)}"
        )
    if len(set(table.column_names)) != len(table.column_names):
        raise WireColumnsError("a column appears twice")
    try:
        table.validate(full=True)
    except pa.ArrowInvalid as exc:
        raise WireColumnsError(f"columns are not valid Arrow data: {exc}") from None
    c = {name: _column(table, name, kind) for name, kind in COLUMN_KINDS.items()}
    plain, service = _plain_rows(c)
    rows = np.flatnonzero(plain)
    other = np.flatnonzero(~plain)
    if len(other) == 0:
        return WireRecords(
            usage=_plain_batch(c, service, rows), positions=rows.astype(np.int64), rejects=[]
        )
    judged: list[UsageRecord] = []
    judged_at: list[int] = []
    rejects: list[tuple[int, Reject]] = []
    values = pa.table({name: column.take(pa.array(other)) for name, column in c.items()})
    for row, found in zip(other.tolist(), values.to_pylist(), strict=True):
        outcome = record_from_values(found, index=row)
        if isinstance(outcome, Reject):
            rejects.append((row, outcome))
            continue
        # record_from_values reads what a message holds; provenance is the columns'.
        judged.append(
            replace(outcome, source_file=found["source_file"], source_line=found["source_line"])
        )
        judged_at.append(row)
    parts = [pa.Table.from_batches([_plain_batch(c, service, rows)])]
    if judged:
        parts.append(pa.Table.from_batches([usage_batch(records_to_batch(judged))]))
    positions = np.concatenate([rows, np.array(judged_at, np.int64)]).astype(np.int64)
    order = np.argsort(positions, kind="stable")
    merged = pa.concat_tables(parts).take(pa.array(order)).combine_chunks()
    return WireRecords(usage=one_batch(merged), positions=positions[order], rejects=rejects)


def one_batch(table: pa.Table) -> pa.RecordBatch:
    """A table of one chunk per column as one record batch (an empty one for no rows)."""
    batches = table.combine_chunks().to_batches()
    if len(batches) == 1:
        return batches[0]
    if not batches:
        return pa.RecordBatch.from_arrays(
            [pa.array([], type=f.type) for f in table.schema], schema=table.schema
        )
    return pa.concat_batches(batches)
