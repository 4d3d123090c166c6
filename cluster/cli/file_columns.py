"""CDR files read into columns for the bulk path, with the readers' per-line rules.

``petribill ingest`` sends a file's records as Arrow columns
(``UsageService.SubmitUsageColumns``). :func:`read_chunks` reads the file in
chunks of physical lines and gives, per chunk, the readable lines as a table of
the request's columns (``cluster.wire_columns.COLUMN_KINDS``, with
``source_file`` and ``source_line``) and the unreadable ones as
:class:`~billing.readers.Reject` values with file, line, raw text and code.

Exactness is by construction, as in ``cluster.wire_columns``: the scalar
readers (``billing.readers.formats``) stay the rules. pyarrow's CSV and JSON
readers parse a chunk at once; a handful of Arrow kernels then find the rows
that are certainly readable *and* already normal (an id of the right shape,
E.164 numbers, epoch-second times and plain integers in range, the service's
fields and no other). Those rows are taken as they are. Every other row, and
every line of a chunk pyarrow cannot map one to one onto its lines (a blank
line, a quote in CSV, a type JSON would change, bytes that are not UTF-8, an
overlong line), goes through the scalar parser line by line. A
tests/test_file_columns.py property holds the two equal on random files.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson
from numpy.typing import NDArray

from billing.readers import Reject
from billing.readers.formats import parse_csv, parse_jsonl
from billing.readers.lines import RawLine, read_lines
from billing.readers.schema import make_options
from billing.readers.values import INT_BOUNDS, OPENING_TIME_MAX_S, OPENING_TIME_MIN_S
from billing.records import Service, UsageRecord
from cluster.wire_columns import (
    COLUMN_KINDS,
    E164_PATTERN,
    IDENTIFIER_PATTERN,
    RECORD_ID_PATTERN,
    SERVICES,
)

__all__ = ["WIRE_SCHEMA", "FileChunk", "read_chunks", "records_table"]

_TYPES: Final = {"text": pa.string(), "int": pa.int64(), "bool": pa.bool_()}
WIRE_SCHEMA: Final = pa.schema([(name, _TYPES[kind]) for name, kind in COLUMN_KINDS.items()])
"""The columns of a chunk's table (``SubmitUsageColumnsRequest.records``)."""

# A file's columns: the request's, but the opening time has no unit (ISO 8601 or epoch s).
_FILE_NAME: Final = {"record_opening_time_s": "record_opening_time"}
_FIELDS: Final = [n for n in COLUMN_KINDS if n not in ("source_file", "source_line")]
_INTS: Final = ("duration_s", "sms_count", "uplink_bytes", "downlink_bytes", "rating_group")
_DIGITS: Final = r"^[0-9]{1,18}$"
# Per service (its index in SERVICES): required and optional fields beyond the common ones.
_OWN: Final = {
    0: (("called_number", "duration_s"), ()),
    1: (("called_number",), ("sms_count",)),
    2: (("uplink_bytes", "downlink_bytes", "rating_group"), ()),
    3: (("content_item_id",), ("rating_group",)),
}
_OPTIONAL_ANY: Final = ("called_number", "content_item_id", *_INTS)


@dataclass(frozen=True, slots=True)
class FileChunk:
    """The records of a chunk of lines as columns (:data:`WIRE_SCHEMA`, file order) and its
    unreadable lines; ``items`` = rows + rejects (blank lines count as neither);
    ``last_line`` the chunk's last physical line."""

    records: pa.Table
    rejects: list[Reject]
    items: int
    last_line: int


@dataclass(frozen=True, slots=True)
class _Reading:
    """How a file's lines are read: its format, name and reader options, and for CSV its
    header (``header_ok``: the scalar parser accepts it), known once the header is seen."""

    is_csv: bool
    source: str
    country_code: str
    naive_time_zone: str | None
    header: RawLine | None = None
    header_ok: bool = False


def read_chunks(
    path: Path,
    *,
    chunk_lines: int = 1000,
    country_code: str = "49",
    naive_time_zone: str | None = None,
) -> Iterator[FileChunk]:
    """The file in chunks of ``chunk_lines`` physical lines (module docstring)."""
    make_options(country_code, naive_time_zone)  # a bad option fails here, at the call
    source = str(path)
    reading = _Reading(path.suffix.lower() == ".csv", source, country_code, naive_time_zone)
    with open(path, "rb") as stream:
        lines = read_lines(stream)
        chunk: list[RawLine] = []
        for line in lines:
            if reading.is_csv and reading.header is None:
                if not line.data.strip():
                    continue
                reading = replace(reading, header=line, header_ok=_header_ok(line, source))
                if not reading.header_ok:
                    chunk.append(line)  # the scalar parser rejects it, and every line after
                continue
            chunk.append(line)
            if len(chunk) >= chunk_lines:
                yield _chunk(chunk, reading)
                chunk = []
        if chunk:
            yield _chunk(chunk, reading)


def _header_ok(line: RawLine, source: str) -> bool:
    """Does the scalar CSV parser accept ``line`` as the header (it yields nothing for it)?"""
    return next(parse_csv([line], source=source), None) is None


def _chunk(lines: list[RawLine], reading: _Reading) -> FileChunk:
    parsed = _parsed(lines, reading.header if reading.header_ok else None, reading.is_csv)
    if parsed is None:
        plain = np.zeros(len(lines), np.bool_)
        table = None
    else:
        table = parsed
        plain = _plain_rows(table)
    scalar_at = np.flatnonzero(~plain).tolist()
    scalar: dict[int, UsageRecord | Reject | None] = {}
    for k in scalar_at:
        scalar[k] = _scalar(lines[k], reading)
    rejects = [item for item in scalar.values() if isinstance(item, Reject)]
    rows = np.flatnonzero(plain)
    parts: list[pa.Table] = []
    numbers = np.array([line.number for line in lines], np.int64)
    if len(rows) and table is not None:
        parts.append(_wire(table.take(pa.array(rows)), reading.source, numbers[rows]))
    judged = [(k, item) for k, item in scalar.items() if isinstance(item, UsageRecord)]
    if judged:
        parts.append(records_table([item for _, item in judged]))
    order = np.concatenate([rows, np.array([k for k, _ in judged], np.int64)]).astype(np.int64)
    if parts:
        merged = pa.concat_tables(parts).take(pa.array(np.argsort(order, kind="stable")))
    else:
        merged = WIRE_SCHEMA.empty_table()
    items = merged.num_rows + len(rejects)
    return FileChunk(merged.combine_chunks(), rejects, items, lines[-1].number)


def _parsed(lines: list[RawLine], header: RawLine | None, is_csv: bool) -> pa.Table | None:
    """The chunk parsed by pyarrow, one row per line; ``None`` when that mapping is not sure."""
    if is_csv and header is None:
        return None
    if any(line.overlong or not line.data.strip() for line in lines):
        return None
    data = b"\n".join(line.data for line in lines)
    if b"\xef\xbb\xbf" in data or b"\r" in data:
        return None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    try:
        if is_csv:
            assert header is not None
            if b'"' in data or b'"' in header.data or b"\xef\xbb\xbf" in header.data:
                return None
            names = [name.strip() for name in header.data.decode().split(",")]
            bad: list[object] = []
            table = pcsv.read_csv(
                io.BytesIO(data),
                read_options=pcsv.ReadOptions(column_names=names, use_threads=False),
                parse_options=pcsv.ParseOptions(
                    newlines_in_values=False,
                    invalid_row_handler=lambda row: _skipped(bad, row),
                ),
                convert_options=pcsv.ConvertOptions(
                    column_types={name: pa.string() for name in names},
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
            if bad:
                return None
        else:
            # The opening time is inferred: epoch seconds (int64) or ISO 8601 text.
            schema = pa.schema(
                [(n, _TYPES[COLUMN_KINDS[n]]) for n in _FIELDS if n not in _FILE_NAME]
            )
            table = pjson.read_json(
                io.BytesIO(data),
                read_options=pjson.ReadOptions(use_threads=False, block_size=max(len(data), 1) + 1),
                parse_options=pjson.ParseOptions(
                    explicit_schema=schema, unexpected_field_behavior="infer"
                ),
            )
            known = {_FILE_NAME.get(n, n) for n in _FIELDS}
            if not set(table.column_names) <= known:
                return None  # an unknown key: the scalar parser names it
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError):
        return None
    if table.num_rows != len(lines):
        return None
    return table


def _skipped(bad: list[object], row: object) -> str:
    """pyarrow's invalid-row handler: note the row (the chunk goes the scalar way), skip it."""
    bad.append(row)
    return "skip"


def _text(table: pa.Table, name: str) -> pa.Array:
    """A column as strings, ``""`` where absent (a CSV cell is ``""``, JSON a null)."""
    name = _FILE_NAME.get(name, name)
    if name not in table.column_names:
        return pa.repeat(pa.scalar("", pa.string()), table.num_rows)
    column = table.column(name).combine_chunks()
    if not pa.types.is_string(column.type):
        column = pc.cast(column, pa.string())
    return pc.fill_null(column, "")


def _matches(column: pa.Array, pattern: str) -> NDArray[np.bool_]:
    return np.asarray(pc.match_substring_regex(column, pattern).to_numpy(zero_copy_only=False))


def _plain_rows(table: pa.Table) -> NDArray[np.bool_]:
    """The rows certainly readable and already normal (module docstring)."""
    text = {name: _text(table, name) for name in _FIELDS}
    given = {name: ~_matches(text[name], "^$") for name in _FIELDS}
    plain = _matches(text["record_id"], RECORD_ID_PATTERN)
    plain &= _matches(text["record_id"], IDENTIFIER_PATTERN)
    plain &= _matches(text["served_msisdn"], E164_PATTERN)
    opening = text["record_opening_time_s"]
    in_time = _matches(opening, _DIGITS)
    t_s = _ints(opening, in_time)
    plain &= in_time & (t_s >= OPENING_TIME_MIN_S) & (t_s <= OPENING_TIME_MAX_S)
    roaming = text["roaming"]
    plain &= _matches(roaming, "^(|true|false)$")
    for name in _INTS:
        digits = _matches(text[name], _DIGITS)
        low, high = INT_BOUNDS[name]
        value = _ints(text[name], digits)
        plain &= ~given[name] | (digits & (value >= low) & (value <= high))
    plain &= ~given["called_number"] | _matches(text["called_number"], E164_PATTERN)
    plain &= ~given["content_item_id"] | _matches(text["content_item_id"], IDENTIFIER_PATTERN)
    service = np.asarray(
        pc.index_in(text["service"], value_set=pa.array(SERVICES)).to_numpy(zero_copy_only=False)
    )
    fits = np.zeros(table.num_rows, np.bool_)
    for code, (required, optional) in _OWN.items():
        mine = service == code
        for name in required:
            mine &= given[name]
        for name in _OPTIONAL_ANY:
            if name not in required and name not in optional:
                mine &= ~given[name]
        fits |= mine
    result: NDArray[np.bool_] = plain & fits
    return result


def _ints(column: pa.Array, valid: NDArray[np.bool_]) -> NDArray[np.int64]:
    """The integer value of the rows ``valid`` says are digits (0 elsewhere)."""
    values = np.zeros(len(column), np.int64)
    if valid.any():
        at = np.flatnonzero(valid)
        values[at] = pc.cast(column.take(pa.array(at)), pa.int64()).to_numpy()
    return values


def _wire(table: pa.Table, source: str, lines: NDArray[np.int64]) -> pa.Table:
    """Plain rows as the request's columns (blank texts and absent values null)."""
    columns: dict[str, pa.Array] = {}
    for name in _FIELDS:
        found = _text(table, name)
        blank = pc.equal(found, "")
        kind = COLUMN_KINDS[name]
        if kind == "text":
            columns[name] = pc.if_else(blank, pa.scalar(None, pa.string()), found)
        elif kind == "int":
            digits = pc.if_else(blank, pa.scalar(None, pa.string()), found)
            columns[name] = pc.cast(digits, pa.int64())
        else:
            columns[name] = pc.if_else(blank, pa.scalar(None, pa.bool_()), pc.equal(found, "true"))
    columns["source_file"] = pa.repeat(pa.scalar(source, pa.string()), table.num_rows)
    columns["source_line"] = pa.array(lines, pa.int64())
    return pa.table(columns, schema=WIRE_SCHEMA)


def records_table(records: list[UsageRecord]) -> pa.Table:
    """Records as the request's columns, with ``record_to_proto``'s values (the scalar
    reader's records here; the benchmark's batches in bench/ingest.py)."""
    rows = []
    for r in records:
        rows.append(
            {
                "record_id": r.record_id,
                "service": r.service.value,
                "served_msisdn": r.served_msisdn,
                "record_opening_time_s": r.record_opening_time_s,
                "called_number": r.called_number,
                "duration_s": r.duration_s,
                "sms_count": r.sms_count if r.service is Service.SMS else r.sms_count or None,
                "uplink_bytes": r.uplink_bytes,
                "downlink_bytes": r.downlink_bytes,
                "rating_group": r.rating_group,
                "content_item_id": r.content_item_id,
                "roaming": r.roaming,
                "source_file": r.source_file,
                "source_line": r.source_line,
            }
        )
    return pa.Table.from_pylist(rows, schema=WIRE_SCHEMA)


def _scalar(line: RawLine, reading: _Reading) -> UsageRecord | Reject | None:
    """The scalar reader's outcome of one line (``None``: a blank line)."""
    options = {"source": reading.source, "default_country_code": reading.country_code}
    zone = reading.naive_time_zone
    if not reading.is_csv:
        found = list(parse_jsonl([line], naive_time_zone=zone, **options))
        return found[0] if found else None
    header = reading.header
    if header is None or header is line:
        found = list(parse_csv([line], naive_time_zone=zone, **options))
        return found[0] if found else None
    # After its header; a bad header yields its own reject first.
    found = list(parse_csv([header, line], naive_time_zone=zone, **options))
    mine = found if reading.header_ok else found[1:]
    return mine[0] if mine else None
