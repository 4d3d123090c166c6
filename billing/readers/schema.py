"""The CDR schema: which fields exist, which each service needs, and building a record.

``docs/cdr-format.md`` is the reader's documentation of the same rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from billing.readers.values import (
    DIGITS,
    FieldError,
    RejectCode,
    absent,
    parse_boolean,
    parse_identifier,
    parse_integer,
    parse_number,
    parse_opening_time,
    parse_record_id,
    parse_text,
    show,
)
from billing.records import CONTENT_FIELDS, Service, UsageRecord

__all__ = ["FIELDS", "Options", "build_record", "make_options"]

# A file names the record's fields as UsageRecord does, but for the opening time: it is
# ISO 8601 or epoch seconds there, so its column carries no unit.
_COLUMN_OF: Final = {"record_opening_time_s": "record_opening_time"}
FIELDS: Final = ("record_id", *(_COLUMN_OF.get(name, name) for name in CONTENT_FIELDS))
COMMON_REQUIRED: Final = ("record_id", "service", "served_msisdn", "record_opening_time")
# Per service: (required, optional) fields beyond the common ones and ``roaming``.
SERVICE_FIELDS: Final[dict[Service, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    Service.VOICE: (("called_number", "duration_s"), ()),
    Service.SMS: (("called_number",), ("sms_count",)),
    Service.DATA: (("uplink_bytes", "downlink_bytes", "rating_group"), ()),
    Service.CONTENT: (("content_item_id",), ("rating_group",)),
}
# Per service, the fields that belong to other services only: present means reject.
_FOREIGN: Final = {
    service: tuple(
        name for name in FIELDS if name not in (*COMMON_REQUIRED, "roaming", *required, *optional)
    )
    for service, (required, optional) in SERVICE_FIELDS.items()
}
_SERVICES: Final = {service.value: service for service in Service}


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    default_country_code: str
    naive_zone: ZoneInfo | None


def make_options(default_country_code: str, naive_time_zone: str | None) -> Options:
    """Check the reader options; raises ``ValueError`` naming the bad one."""
    if not (DIGITS.fullmatch(default_country_code) and len(default_country_code) <= 3):
        raise ValueError(f"default country code must be 1 to 3 digits: {default_country_code!r}")
    if default_country_code.startswith("0"):
        raise ValueError(f"a country code never starts with 0: {default_country_code!r}")
    try:
        zone = ZoneInfo(naive_time_zone) if naive_time_zone else None
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone: {naive_time_zone!r}") from None
    return Options(default_country_code=default_country_code, naive_zone=zone)


def build_record(
    fields: Mapping[str, object], options: Options, source: str, line: int
) -> UsageRecord:
    """Validate one line's fields (absent = missing key, ``None`` or ``""``) into a record."""
    for name in COMMON_REQUIRED:
        if absent(fields.get(name)):
            raise FieldError(RejectCode.MISSING_FIELD, "is required", name)
    record_id = parse_record_id(fields["record_id"])
    service_text = parse_text("service", fields["service"])
    service = _SERVICES.get(service_text)
    if service is None:
        raise FieldError(
            RejectCode.UNKNOWN_SERVICE,
            f"must be voice, sms, data or content, got {show(service_text)}",
            "service",
        )
    for name in SERVICE_FIELDS[service][0]:
        if absent(fields.get(name)):
            raise FieldError(RejectCode.MISSING_FIELD, f"is required for {service} records", name)
    for name in _FOREIGN[service]:
        if not absent(fields.get(name)):
            raise FieldError(
                RejectCode.FIELD_NOT_ALLOWED, f"is not a field of {service} records", name
            )
    opening = fields["record_opening_time"]
    if not isinstance(opening, str | int) or isinstance(opening, bool):
        raise FieldError(
            RejectCode.BAD_TIME,
            f"must be a string or epoch seconds, got {show(opening)}",
            "record_opening_time",
        )
    try:
        opening_s = parse_opening_time(opening, naive_zone=options.naive_zone)
    except FieldError as exc:
        raise FieldError(exc.code, exc.detail, "record_opening_time") from None

    def given(name: str) -> object | None:
        value = fields.get(name)
        return None if absent(value) else value

    cc = options.default_country_code
    called, duration, sms = given("called_number"), given("duration_s"), given("sms_count")
    uplink, downlink = given("uplink_bytes"), given("downlink_bytes")
    group, item, roaming = given("rating_group"), given("content_item_id"), given("roaming")
    return UsageRecord(
        record_id=record_id,
        service=service,
        served_msisdn=parse_number("served_msisdn", fields["served_msisdn"], cc),
        record_opening_time_s=opening_s,
        called_number=None if called is None else parse_number("called_number", called, cc),
        duration_s=0 if duration is None else parse_integer("duration_s", duration),
        # An SMS record without a count is one message, as a switch writes it.
        sms_count=(int(service is Service.SMS) if sms is None else parse_integer("sms_count", sms)),
        uplink_bytes=0 if uplink is None else parse_integer("uplink_bytes", uplink),
        downlink_bytes=0 if downlink is None else parse_integer("downlink_bytes", downlink),
        rating_group=None if group is None else parse_integer("rating_group", group),
        content_item_id=None if item is None else parse_identifier("content_item_id", item),
        roaming=False if roaming is None else parse_boolean("roaming", roaming),
        source_file=source,
        source_line=line,
    )
