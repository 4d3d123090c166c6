"""Physical lines of a CDR file, read with bounded memory, and the reject of a bad line."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final

from billing.rated import RejectReason
from billing.readers.values import RejectCode

__all__ = ["DEFAULT_MAX_LINE_BYTES", "RAW_KEPT_CHARS_MAX", "RawLine", "Reject", "read_lines"]

DEFAULT_MAX_LINE_BYTES: Final = 64 * 1024
# A reject keeps at most this much of a line, so a reject store stays bounded too.
RAW_KEPT_CHARS_MAX: Final = 4096


@dataclass(frozen=True, slots=True, kw_only=True)
class Reject:
    """A line that could not be read, kept whole so it can be fixed and reprocessed.

    ``message`` starts with ``"line N: "`` and names the field when there is
    one. ``record_id`` is set when the line's id itself was readable.
    """

    source_file: str
    line: int
    code: RejectCode
    message: str
    raw: str
    field: str | None = None
    record_id: str | None = None
    raw_truncated: bool = False
    reason: RejectReason = RejectReason.MALFORMED


@dataclass(frozen=True, slots=True, kw_only=True)
class RawLine:
    """One physical line, without its line ending.

    ``data`` is the whole line, or only its first bytes when ``overlong``.
    """

    number: int
    data: bytes
    overlong: bool = False


def read_lines(
    stream: BinaryIO, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> Iterator[RawLine]:
    """Yield the physical lines of a binary stream, never holding more than one bounded line.

    Line endings (``\\n``, ``\\r\\n``) are removed. An overlong line keeps its
    first ``max_line_bytes`` bytes and the rest is skipped in chunks.
    """
    number = 0
    while True:
        chunk = stream.readline(max_line_bytes + 1)
        if not chunk:
            return
        number += 1
        overlong = len(chunk) > max_line_bytes and not chunk.endswith(b"\n")
        if overlong:
            while (rest := stream.readline(max_line_bytes)) and not rest.endswith(b"\n"):
                pass
            chunk = chunk[:max_line_bytes]
        yield RawLine(number=number, data=chunk.rstrip(b"\r\n"), overlong=overlong)


def decode(line: RawLine, source: str) -> str | Reject:
    """The line as text (UTF-8, a leading BOM dropped), or the reject saying why not."""
    raw = line.data.decode("utf-8", errors="backslashreplace")
    if line.overlong:
        detail = f"line is longer than {len(line.data)} bytes"
        return make_reject(source, line, RejectCode.LINE_TOO_LONG, detail, raw)
    try:
        text = line.data.decode("utf-8")
    except UnicodeDecodeError as exc:
        detail = f"not valid UTF-8 at byte {exc.start + 1}"
        return make_reject(source, line, RejectCode.BAD_ENCODING, detail, raw)
    return text.removeprefix("\ufeff") if line.number == 1 else text


def make_reject(
    source: str,
    line: RawLine,
    code: RejectCode,
    detail: str,
    raw: str,
    *,
    field: str | None = None,
    record_id: str | None = None,
) -> Reject:
    """A reject whose message starts with the line number and names the field if any."""
    where = f"line {line.number}: {field}: " if field else f"line {line.number}: "
    return Reject(
        source_file=source,
        line=line.number,
        code=code,
        message=where + detail,
        raw=raw[:RAW_KEPT_CHARS_MAX],
        field=field,
        record_id=record_id,
        raw_truncated=line.overlong or len(raw) > RAW_KEPT_CHARS_MAX,
    )
