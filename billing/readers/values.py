"""Field values of a CDR line: phone numbers, times, integers, flags, identifiers.

Each parser takes one raw value — a ``str`` from CSV, or a JSON value — and
returns the normalised value or raises :class:`FieldError` with a
:class:`RejectCode` and a detail a person can act on.
"""

from __future__ import annotations

import enum
import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Final
from zoneinfo import ZoneInfo

__all__ = [
    "OPENING_TIME_MAX_S",
    "OPENING_TIME_MIN_S",
    "FieldError",
    "OverlongInteger",
    "RejectCode",
    "normalise_number",
    "parse_opening_time",
]

# Inclusive bounds. Duration: 31 days, longer calls arrive as partial records.
# Volumes stay below 2**53 so every JSON implementation reads them exactly.
INT_BOUNDS: Final = {
    "duration_s": (0, 31 * 86_400),
    "sms_count": (1, 255),
    "uplink_bytes": (0, 2**53 - 1),
    "downlink_bytes": (0, 2**53 - 1),
    "rating_group": (0, 2**32 - 1),
}
# Opening times outside [2000-01-01, 2100-01-01) are typos or zeroed clocks.
OPENING_TIME_MIN_S: Final = 946_684_800
OPENING_TIME_MAX_S: Final = 4_102_444_800 - 1

DIGITS = re.compile(r"[0-9]+", re.ASCII)
# More significant digits than any bound has (2**64 has 20). Longer runs of digits are
# out of range without being converted: that costs quadratic time, and Python refuses
# beyond 4300 digits.
SIGNIFICANT_DIGITS_MAX: Final = 20
_ID = re.compile(r"[\x21-\x7e]{1,128}", re.ASCII)
_NUMBER_SEPARATORS = str.maketrans("", "", " -/")
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


class RejectCode(enum.StrEnum):
    """The finer reason a line is malformed (all map to ``RejectReason.MALFORMED``)."""

    BAD_ENCODING = "bad_encoding"
    LINE_TOO_LONG = "line_too_long"
    BAD_SYNTAX = "bad_syntax"
    BAD_HEADER = "bad_header"
    FIELD_COUNT = "field_count"
    UNKNOWN_FIELD = "unknown_field"
    DUPLICATE_FIELD = "duplicate_field"
    MISSING_FIELD = "missing_field"
    FIELD_NOT_ALLOWED = "field_not_allowed"
    UNKNOWN_SERVICE = "unknown_service"
    BAD_VALUE = "bad_value"
    OUT_OF_RANGE = "out_of_range"
    BAD_TIME = "bad_time"
    NAIVE_TIME = "naive_time"
    BAD_NUMBER = "bad_number"


class OverlongInteger(str):
    """The digits of a JSON integer too long to convert cheaply; always out of range."""

    __slots__ = ()


class FieldError(ValueError):
    """Raised by the field parsers when one value is invalid; ``code`` says how."""

    def __init__(self, code: RejectCode, detail: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {detail}" if field else detail)
        self.code = code
        self.detail = detail
        self.field = field


def show(value: object) -> str:
    """A short, quoted rendering of a raw value for a reject message."""
    if isinstance(value, Decimal | OverlongInteger):
        text = str(value)
    elif isinstance(value, str):
        text = repr(value)
    else:
        text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def normalise_number(text: str, *, default_country_code: str = "49") -> str:
    """Normalise a phone number to E.164 digits without ``+``.

    ``+49301234567``, ``0049301234567`` and (with default country code 49)
    ``0301234567`` all give ``"49301234567"``; digits without a prefix are
    taken as already international. Spaces, ``-`` and ``/`` are ignored.
    Raises :class:`FieldError` (``bad_number``) for anything else.
    """
    compact = text.strip().translate(_NUMBER_SEPARATORS)
    if compact.startswith("+"):
        digits = compact[1:]
    elif compact.startswith("00"):
        digits = compact[2:]
    elif compact.startswith("0"):
        digits = default_country_code + compact[1:]
    else:
        digits = compact
    if not DIGITS.fullmatch(digits):
        raise FieldError(RejectCode.BAD_NUMBER, f"must be a phone number, got {show(text)}")
    if digits.startswith("0"):
        raise FieldError(RejectCode.BAD_NUMBER, f"no country code after the prefix in {show(text)}")
    if not 3 <= len(digits) <= 15:
        raise FieldError(
            RejectCode.BAD_NUMBER, f"E.164 numbers have 3 to 15 digits, got {show(text)}"
        )
    return digits


def parse_opening_time(value: str | int, *, naive_zone: ZoneInfo | None = None) -> int:
    """Parse ISO 8601 with an offset (or ``Z``), or Unix epoch seconds, to epoch seconds.

    A time without offset is a ``naive_time`` error unless ``naive_zone`` is
    given; then it is read in that zone, and a local time that does not exist
    or exists twice (daylight-saving changes) is an error. Fractions of a
    second are truncated towards the past.
    """
    if isinstance(value, int):
        seconds = value
    elif DIGITS.fullmatch(value):
        found = digits_value(value)
        seconds = OPENING_TIME_MAX_S * 10**6 if found is None else found
    else:
        text = value.strip()
        if len(text) > 64 or not any(sep in text for sep in "Tt "):
            raise FieldError(
                RejectCode.BAD_TIME,
                f"must be ISO 8601 date and time with offset, or epoch seconds, got {show(value)}",
            )
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise FieldError(
                RejectCode.BAD_TIME, f"not an ISO 8601 date and time: {show(value)}"
            ) from None
        if moment.tzinfo is None:
            moment = _localise(moment, naive_zone, value)
        try:
            seconds = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(seconds=1)
        except OverflowError:
            seconds = -1
    if not OPENING_TIME_MIN_S <= seconds <= OPENING_TIME_MAX_S:
        # Milliseconds since the epoch are a common mix-up worth naming.
        milliseconds = OPENING_TIME_MAX_S < seconds <= OPENING_TIME_MAX_S * 1000
        hint = " (epoch milliseconds? write seconds)" if milliseconds else ""
        raise FieldError(
            RejectCode.OUT_OF_RANGE,
            f"must lie in the years 2000 to 2099{hint}, got {show(value)}",
        )
    return seconds


def _localise(moment: datetime, zone: ZoneInfo | None, value: str) -> datetime:
    if zone is None:
        raise FieldError(
            RejectCode.NAIVE_TIME,
            f"has no UTC offset (write e.g. 2026-11-03T10:00:00+01:00 or ...Z), got {show(value)}",
        )
    early, late = moment.replace(tzinfo=zone, fold=0), moment.replace(tzinfo=zone, fold=1)
    if early.utcoffset() != late.utcoffset():
        # Either the clock skipped this local time or it happened twice.
        back = early.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
        what = "does not exist" if back != moment else "is ambiguous"
        raise FieldError(RejectCode.BAD_TIME, f"{what} in {zone.key}: {show(value)}")
    return early


def digits_value(digits: str) -> int | None:
    """The value of a string of ASCII digits; ``None`` past :data:`SIGNIFICANT_DIGITS_MAX`."""
    significant = digits.lstrip("0")
    return int(significant or "0") if len(significant) <= SIGNIFICANT_DIGITS_MAX else None


def absent(value: object) -> bool:
    return value is None or value == ""


def parse_text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise FieldError(RejectCode.BAD_VALUE, f"must be a string, got {show(value)}", name)
    return value


def parse_integer(name: str, value: object) -> int:
    low, high = INT_BOUNDS[name]
    if isinstance(value, OverlongInteger):
        number = high + 1
    elif isinstance(value, str) and DIGITS.fullmatch(value):
        # A CSV cell or a JSON string of digits: as out of range as the JSON integer.
        found = digits_value(value)
        number = high + 1 if found is None else found
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise FieldError(
            RejectCode.BAD_VALUE, f"must be a non-negative integer, got {show(value)}", name
        )
    if not low <= number <= high:
        raise FieldError(
            RejectCode.OUT_OF_RANGE, f"must be from {low} to {high}, got {show(value)}", name
        )
    return number


def parse_boolean(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise FieldError(RejectCode.BAD_VALUE, f"must be true or false, got {show(value)}", name)


def parse_identifier(name: str, value: object) -> str:
    text = parse_text(name, value)
    if not _ID.fullmatch(text):
        raise FieldError(
            RejectCode.BAD_VALUE,
            f"must be 1 to 128 printable ASCII characters without spaces, got {show(value)}",
            name,
        )
    return text


def parse_record_id(value: object) -> str:
    text = parse_identifier("record_id", value)
    source, sep, local = text.partition(":")
    if not (sep and source and local):
        raise FieldError(
            RejectCode.BAD_VALUE, f"must look like '<source>:<id>', got {show(value)}", "record_id"
        )
    return text


def parse_number(name: str, value: object, default_country_code: str) -> str:
    try:
        return normalise_number(parse_text(name, value), default_country_code=default_country_code)
    except FieldError as exc:
        raise FieldError(exc.code, exc.detail, name) from None
