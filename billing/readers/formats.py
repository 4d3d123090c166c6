"""The two CDR formats, CSV with a header row and JSON Lines, parsed from lines.

Pure: lines in (see :func:`billing.readers.lines.read_lines`), records and
rejects out, one per non-blank line.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal

from billing.readers.lines import RawLine, Reject, decode, make_reject
from billing.readers.schema import COMMON_REQUIRED, FIELDS, Options, build_record, make_options
from billing.readers.values import (
    SIGNIFICANT_DIGITS_MAX,
    FieldError,
    OverlongInteger,
    RejectCode,
    parse_record_id,
    show,
)
from billing.records import UsageRecord

__all__ = ["parse_csv", "parse_jsonl"]


def record_or_reject(
    fields: Mapping[str, object], line: RawLine, text: str, source: str, options: Options
) -> UsageRecord | Reject:
    try:
        return build_record(fields, options, source, line.number)
    except FieldError as exc:
        try:
            record_id: str | None = parse_record_id(fields.get("record_id"))
        except FieldError:
            record_id = None
        return make_reject(
            source, line, exc.code, exc.detail, text, field=exc.field, record_id=record_id
        )


def _check_header(text: str) -> tuple[list[str], str | None]:
    try:
        names = [name.strip() for name in next(csv.reader([text], strict=True))]
    except csv.Error as exc:
        return [], f"header is not valid CSV: {exc}"
    for name in names:
        if name not in FIELDS:
            return names, f"header: unknown column {show(name)}"
        if names.count(name) > 1:
            return names, f"header: column {show(name)} appears twice"
    missing = [name for name in COMMON_REQUIRED if name not in names]
    if missing:
        return names, f"header: missing column(s) {', '.join(missing)}"
    return names, None


def parse_csv(
    lines: Iterable[RawLine],
    *,
    source: str,
    default_country_code: str = "49",
    naive_time_zone: str | None = None,
) -> Iterator[UsageRecord | Reject]:
    """Parse CSV lines; the first non-blank line is the header naming the columns.

    One record per physical line (a quoted field cannot span lines). Blank
    lines are skipped. If the header is invalid it is rejected, and so is
    every line after it, each with its own line number.
    """
    options = make_options(default_country_code, naive_time_zone)
    header: list[str] | None = None
    header_problem: str | None = None
    for line in lines:
        text = decode(line, source)
        if isinstance(text, Reject):
            if header is None:
                header, header_problem = [], f"the header on line {line.number} is unreadable"
            yield text
            continue
        if not text.strip():
            continue
        if header is None:
            header, header_problem = _check_header(text)
            if header_problem:
                yield make_reject(source, line, RejectCode.BAD_HEADER, header_problem, text)
                header_problem = f"the header on line {line.number} is invalid"
            continue
        if header_problem:
            yield make_reject(
                source, line, RejectCode.BAD_HEADER, f"unreadable: {header_problem}", text
            )
            continue
        try:
            cells = next(csv.reader([text], strict=True))
        except csv.Error as exc:
            yield make_reject(source, line, RejectCode.BAD_SYNTAX, f"not valid CSV: {exc}", text)
            continue
        if len(cells) != len(header):
            detail = f"has {len(cells)} fields, the header has {len(header)}"
            yield make_reject(source, line, RejectCode.FIELD_COUNT, detail, text)
            continue
        fields = {name: cell.strip() for name, cell in zip(header, cells, strict=True)}
        yield record_or_reject(fields, line, text, source, options)


class _JsonRefused(ValueError):
    def __init__(self, code: RejectCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _refuse_constant(name: str) -> object:
    raise _JsonRefused(RejectCode.BAD_SYNTAX, f"{name} is not a JSON number")


def _parse_int(text: str) -> int | OverlongInteger:
    # Huge integers are never converted (see SIGNIFICANT_DIGITS_MAX): keep their
    # digits so the field check rejects them as out of range.
    return int(text) if len(text) <= SIGNIFICANT_DIGITS_MAX else OverlongInteger(text)


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise _JsonRefused(RejectCode.DUPLICATE_FIELD, f"key {show(key)} appears twice")
        result[key] = value
    return result


def parse_jsonl(
    lines: Iterable[RawLine],
    *,
    source: str,
    default_country_code: str = "49",
    naive_time_zone: str | None = None,
) -> Iterator[UsageRecord | Reject]:
    """Parse JSON Lines: one JSON object per line, keys as in :data:`FIELDS`.

    Blank lines are skipped. NaN, Infinity, duplicate keys and unknown keys
    are rejects; an absent key and ``null`` mean the same.
    """
    options = make_options(default_country_code, naive_time_zone)
    for line in lines:
        text = decode(line, source)
        if isinstance(text, Reject):
            yield text
            continue
        if not text.strip():
            continue
        try:
            value = json.loads(
                text,
                parse_constant=_refuse_constant,
                parse_float=Decimal,
                parse_int=_parse_int,
                object_pairs_hook=_unique_keys,
            )
        except _JsonRefused as exc:
            yield make_reject(source, line, exc.code, exc.detail, text)
            continue
        except json.JSONDecodeError as exc:
            detail = f"not valid JSON: {exc.msg} at column {exc.colno}"
            yield make_reject(source, line, RejectCode.BAD_SYNTAX, detail, text)
            continue
        except (ValueError, RecursionError):
            yield make_reject(source, line, RejectCode.BAD_SYNTAX, "not valid JSON", text)
            continue
        if not isinstance(value, dict):
            yield make_reject(source, line, RejectCode.BAD_SYNTAX, "must be a JSON object", text)
            continue
        unknown = next((key for key in value if key not in FIELDS), None)
        if unknown is not None:
            detail = f"unknown key {show(unknown)}"
            yield make_reject(source, line, RejectCode.UNKNOWN_FIELD, detail, text)
            continue
        yield record_or_reject(value, line, text, source, options)
