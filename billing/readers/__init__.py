"""CDR file readers: CSV (with a header row) and JSON Lines, streamed line by line.

The schema is documented in ``docs/cdr-format.md``; both formats use the same
field names, and identical content gives identical :class:`UsageRecord` values
(only the provenance ``source_file`` / ``source_line`` differs).

A line that cannot be read becomes a :class:`Reject` — file, line number, a
fine-grained :class:`RejectCode`, a message a person can act on, and the raw
line — and reading goes on with the next line. Hostile input (overlong lines,
invalid UTF-8, NaN, huge integers, deep nesting) is a reject, never a crash.

Memory is bounded: files are read one physical line at a time, and a line
longer than ``max_line_bytes`` is skipped in chunks without being held whole.
Parsing is pure (:func:`parse_csv`, :func:`parse_jsonl` take lines in); only
:func:`read_records` and friends open files.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final, Protocol

from billing.readers.formats import parse_csv, parse_jsonl
from billing.readers.lines import (
    DEFAULT_MAX_LINE_BYTES,
    RAW_KEPT_CHARS_MAX,
    RawLine,
    Reject,
    read_lines,
)
from billing.readers.schema import FIELDS, make_options
from billing.readers.values import FieldError, RejectCode, normalise_number, parse_opening_time
from billing.records import UsageRecord

__all__ = [
    "CDR_SUFFIXES",
    "DEFAULT_MAX_LINE_BYTES",
    "FIELDS",
    "RAW_KEPT_CHARS_MAX",
    "FieldError",
    "RawLine",
    "Reject",
    "RejectCode",
    "UnsupportedFormatError",
    "normalise_number",
    "parse_csv",
    "parse_jsonl",
    "parse_opening_time",
    "read_csv",
    "read_jsonl",
    "read_lines",
    "read_records",
]


class UnsupportedFormatError(ValueError):
    """Raised by :func:`read_records` for a file name that is not .csv, .jsonl or .ndjson."""


def _read(
    path: str | Path,
    parse: _Parser,
    default_country_code: str,
    naive_time_zone: str | None,
    max_line_bytes: int,
) -> Iterator[UsageRecord | Reject]:
    # Validate eagerly, so a bad option fails at the call, not at the first next().
    make_options(default_country_code, naive_time_zone)

    def generate() -> Iterator[UsageRecord | Reject]:
        with open(path, "rb") as stream:
            yield from parse(
                read_lines(stream, max_line_bytes=max_line_bytes),
                source=str(path),
                default_country_code=default_country_code,
                naive_time_zone=naive_time_zone,
            )

    return generate()


class _Parser(Protocol):
    def __call__(
        self,
        lines: Iterable[RawLine],
        *,
        source: str,
        default_country_code: str = ...,
        naive_time_zone: str | None = ...,
    ) -> Iterator[UsageRecord | Reject]: ...


def read_csv(
    path: str | Path,
    *,
    default_country_code: str = "49",
    naive_time_zone: str | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[UsageRecord | Reject]:
    """Stream the records and rejects of a CSV file; see :func:`parse_csv`."""
    return _read(path, parse_csv, default_country_code, naive_time_zone, max_line_bytes)


def read_jsonl(
    path: str | Path,
    *,
    default_country_code: str = "49",
    naive_time_zone: str | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[UsageRecord | Reject]:
    """Stream the records and rejects of a JSON Lines file; see :func:`parse_jsonl`."""
    return _read(path, parse_jsonl, default_country_code, naive_time_zone, max_line_bytes)


_SUFFIXES: Final[dict[str, _Parser]] = {
    ".csv": parse_csv,
    ".jsonl": parse_jsonl,
    ".ndjson": parse_jsonl,
}
# The file name endings read_records knows, in lower case.
CDR_SUFFIXES: Final = tuple(_SUFFIXES)


def read_records(
    path: str | Path,
    *,
    default_country_code: str = "49",
    naive_time_zone: str | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Iterator[UsageRecord | Reject]:
    """Stream a CDR file, choosing the format by extension (.csv, .jsonl, .ndjson).

    Raises :class:`UnsupportedFormatError` for another extension and
    ``ValueError`` for a bad option, at the call; ``OSError`` when the file
    cannot be opened, at the first ``next()``.
    """
    parse = _SUFFIXES.get(Path(path).suffix.lower())
    if parse is None:
        raise UnsupportedFormatError(
            f"{path}: unknown CDR format, expected a .csv, .jsonl or .ndjson file"
        )
    return _read(path, parse, default_country_code, naive_time_zone, max_line_bytes)
