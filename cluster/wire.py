"""Conversions between billing values and the petribill.v1 wire messages.

One place, so the rules are the same for the gateway's backend and for the
client SDK: money crosses the wire as integer micros (never a float) with the
decimal string filled in for display; enums map by name; a usage record given
as a ``dict`` uses the field names of :class:`billing.records.UsageRecord`
(which are those of the proto message), and a record coming in is validated
with the CDR readers' own field rules. The backend's answers built from engine
values (accounts, invoices...) are in :mod:`cluster.backend.convert`.
"""

from __future__ import annotations

import decimal
import hashlib
import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final

from google.protobuf.json_format import MessageToDict
from petribill.v1 import common_pb2, usage_pb2

from billing.invariant import invariant
from billing.money import (
    DECIMALS,
    SCALE,
    Money,
    MoneyParseError,
    format_amount,
    is_currency_code,
    parse_amount,
)
from billing.readers import FieldError, Reject, RejectCode
from billing.readers.schema import build_record, make_options
from billing.records import Service, UsageRecord
from billing.tariffs.model import PaymentMode

__all__ = [
    "RECORD_ID_CHARS_MAX",
    "WireError",
    "bounded_id",
    "decimal_from_proto",
    "malformed",
    "money",
    "money_from_proto",
    "money_to_proto",
    "payment_mode_from_proto",
    "payment_mode_to_proto",
    "record_from_proto",
    "record_from_values",
    "record_to_proto",
    "service_from_proto",
    "service_to_proto",
    "unreadable_from_proto",
    "unreadable_to_proto",
]

_SERVICE_TO_PROTO: dict[Service, int] = {
    Service.VOICE: common_pb2.SERVICE_VOICE,
    Service.SMS: common_pb2.SERVICE_SMS,
    Service.DATA: common_pb2.SERVICE_DATA,
    Service.CONTENT: common_pb2.SERVICE_CONTENT,
}
_SERVICE_FROM_PROTO = {number: service for service, number in _SERVICE_TO_PROTO.items()}
_SERVICES_BY_VALUE: dict[object, Service] = {service.value: service for service in Service}
_MODE_TO_PROTO: dict[PaymentMode, int] = {
    PaymentMode.PREPAID: common_pb2.PAYMENT_MODE_PREPAID,
    PaymentMode.POSTPAID: common_pb2.PAYMENT_MODE_POSTPAID,
    PaymentMode.HYBRID: common_pb2.PAYMENT_MODE_HYBRID,
}
_MODE_FROM_PROTO = {number: mode for mode, number in _MODE_TO_PROTO.items()}
# common.proto fixes the wire's scale at micros; the system's scale must be the same.
invariant(SCALE == 1_000_000, f"billing.money.SCALE {SCALE} is not the wire's micros")
_RECORD_FIELDS = frozenset(common_pb2.UsageRecord.DESCRIPTOR.fields_by_name)
_OPTIONS: Final = make_options("49", None)
# Fields that are meaningful for a service even when zero (proto3 cannot tell
# an explicit 0 from an absent value): other services' zeros are "absent".
_ZERO_MEANINGFUL: Final = {
    Service.VOICE: {"duration_s"},
    Service.DATA: {"uplink_bytes", "downlink_bytes"},
}
_INT64_MAX = 2**63 - 1
#: The longest record id (UsageRecord.record_id's max_len in rules.proto, and the readers').
RECORD_ID_CHARS_MAX: Final = 128
_ID_PREFIX_CHARS: Final = 64


class WireError(ValueError):
    """Raised when a value cannot become a wire message (or back); the message names the field."""


def money(micros: int, currency: str) -> common_pb2.Money:
    """A wire Money of ``micros``: ``micros`` authoritative, ``decimal`` for display."""
    return common_pb2.Money(micros=micros, currency=currency, decimal=format_amount(micros))


def money_to_proto(
    amount: Money | decimal.Decimal | str | int, currency: str = ""
) -> common_pb2.Money:
    """A wire Money from a :class:`Money`, or from a decimal amount and a currency.

    ``"12.50"`` and ``Decimal("12.50")`` are 12.50 currency units; an ``int``
    is whole units too (as in :func:`billing.money.parse_amount`), never micros:
    pass a :class:`Money` to give micros. More than six decimals is an error.
    """
    if isinstance(amount, Money):
        micros, currency = amount.micros, amount.currency
    else:
        try:
            micros = parse_amount(str(amount) if isinstance(amount, decimal.Decimal) else amount)
        except MoneyParseError as exc:
            raise WireError(f"amount: {exc}") from None
    if not -_INT64_MAX <= micros <= _INT64_MAX:
        raise WireError(f"amount: {micros} micros does not fit the wire's int64")
    return money(micros, currency)


def money_from_proto(message: common_pb2.Money, default_currency: str = "") -> Money:
    """The :class:`Money` of a wire Money (``micros`` is authoritative; ``decimal`` is ignored)."""
    currency = message.currency or default_currency
    if not is_currency_code(currency):
        raise WireError(f"Money.currency must be an ISO 4217 code, got {currency!r}")
    return Money(message.micros, currency)


def decimal_from_proto(message: common_pb2.Money) -> decimal.Decimal:
    """The exact decimal amount of a wire Money, for display or arithmetic by a client."""
    return decimal.Decimal(message.micros).scaleb(-DECIMALS)


def service_to_proto(service: Service | str) -> int:
    try:
        return _SERVICE_TO_PROTO[Service(service)]
    except ValueError:
        raise WireError(f"service: not one of {[s.value for s in Service]}: {service!r}") from None


def service_from_proto(number: int) -> Service:
    try:
        return _SERVICE_FROM_PROTO[number]
    except KeyError:
        raise WireError(f"service: not set or unknown ({number})") from None


def payment_mode_to_proto(mode: PaymentMode | str) -> int:
    try:
        return _MODE_TO_PROTO[PaymentMode(mode)]
    except ValueError:
        raise WireError(
            f"payment_mode: not one of {[m.value for m in PaymentMode]}: {mode!r}"
        ) from None


def payment_mode_from_proto(number: int) -> PaymentMode:
    try:
        return _MODE_FROM_PROTO[number]
    except KeyError:
        raise WireError(f"payment_mode: not set or unknown ({number})") from None


def record_to_proto(record: UsageRecord | Mapping[str, Any]) -> common_pb2.UsageRecord:
    """A wire UsageRecord from a :class:`UsageRecord` or a ``dict`` of its fields.

    In a dict, ``service`` may be ``"voice"``, a :class:`Service` or the proto
    number; ``None`` means absent. Unknown keys are refused, because a
    misspelt field silently dropped would be a record charged wrongly.
    Provenance (``source_file``, ``source_line``) does not cross the wire.
    """
    if isinstance(record, UsageRecord):
        fields: dict[str, Any] = {
            name: getattr(record, name)
            for name in _RECORD_FIELDS
            if getattr(record, name) is not None
        }
    else:
        unknown = set(record) - _RECORD_FIELDS - {"source_file", "source_line"}
        if unknown:
            raise WireError(f"usage record: unknown fields {sorted(unknown)}")
        fields = {k: v for k, v in record.items() if v is not None and k in _RECORD_FIELDS}
    service = fields.get("service")
    if service is not None and not isinstance(service, int):
        fields["service"] = service_to_proto(service)
    try:
        return common_pb2.UsageRecord(**fields)
    except (TypeError, ValueError) as exc:
        raise WireError(f"usage record {fields.get('record_id', '?')!r}: {exc}") from None


def _fields(message: common_pb2.UsageRecord) -> tuple[dict[str, object], Service | None]:
    """The record as the readers' field mapping (``None``: absent)."""
    service = _SERVICE_FROM_PROTO.get(message.service)
    meaningful = _ZERO_MEANINGFUL.get(service, set()) if service else set()

    def number(name: str) -> int | None:
        value = int(getattr(message, name))
        return value if value or name in meaningful else None

    fields: dict[str, object] = {
        "record_id": message.record_id or None,
        "service": None
        if message.service == 0
        else (service.value if service else str(message.service)),
        "served_msisdn": message.served_msisdn or None,
        "record_opening_time": message.record_opening_time_s or None,
        "called_number": message.called_number or None,
        "content_item_id": message.content_item_id or None,
        "rating_group": message.rating_group if message.HasField("rating_group") else None,
        "roaming": message.roaming or None,
    }
    for name in ("duration_s", "sms_count", "uplink_bytes", "downlink_bytes"):
        fields[name] = number(name)
    return fields, service


def record_from_proto(message: common_pb2.UsageRecord, *, index: int = 0) -> UsageRecord | Reject:
    """A validated, normalised record, or the reject of a malformed one (naming the field).

    A record is held to the same schema whether it arrived in a file or over
    gRPC: the fields go through the CDR readers' own rules
    (``billing.readers.schema.build_record``). Numbers are normalised to E.164
    digits as the readers do (default country code 49, the sample operator's).
    A data record without a rating group is rated with the plan's default, as
    ``common.proto`` says. ``index`` is the record's place in its batch (a
    reject of a record without an id is keyed by it).
    """
    fields, service = _fields(message)
    return _judged(message, fields, service, index, {})


def record_from_values(values: Mapping[str, Any], *, index: int = 0) -> UsageRecord | Reject:
    """A row of the bulk path's columns (``None`` where a column is null or absent), judged
    exactly as :func:`record_from_proto` judges the UsageRecord message of the same values.

    The one thing a column can say that a message cannot is a service outside the enum
    (``"video"``): it is the readers' ``unknown_service``, as in a file.
    """
    wanted: dict[str, Any] = {}
    unknown_service = None
    for name in _RECORD_FIELDS:
        value = values.get(name)
        if value is None:
            continue
        if name == "service":
            found = _SERVICES_BY_VALUE.get(value)
            if found is None:
                if value != "":
                    unknown_service = value
                continue
            value = _SERVICE_TO_PROTO[found]
        wanted[name] = value
    message = common_pb2.UsageRecord(**wanted)
    fields, service = _fields(message)
    extra: dict[str, Any] = {}
    if unknown_service is not None:
        fields["service"] = extra["service"] = unknown_service
    return _judged(message, fields, service, index, extra)


def _judged(
    message: common_pb2.UsageRecord,
    fields: dict[str, object],
    service: Service | None,
    index: int,
    raw_extra: dict[str, Any],
) -> UsageRecord | Reject:
    default_group = service is Service.DATA and fields["rating_group"] is None
    if default_group:
        fields["rating_group"] = 0  # the reader requires one; dropped again below
    try:
        record = build_record(fields, _OPTIONS, "grpc", index + 1)
    except FieldError as exc:
        where = f"{exc.field}: " if exc.field else ""
        return malformed(
            message,
            index,
            f"{where}{exc.detail}",
            code=exc.code,
            field=exc.field,
            raw_extra=raw_extra,
        )
    record = replace(record, source_file=None, source_line=None)
    return replace(record, rating_group=None) if default_group else record


def malformed(
    message: common_pb2.UsageRecord,
    index: int,
    detail: str,
    *,
    code: RejectCode = RejectCode.BAD_VALUE,
    field: str | None = None,
    raw_extra: Mapping[str, Any] | None = None,
) -> Reject:
    """The reject of a record refused before it could be read (keyed by its id, or by
    its place in the batch when it has none); ``raw_extra``: values the message could not
    hold, shown in the raw text beside its fields."""
    record_id = bounded_id(message.record_id) or None
    shown = MessageToDict(message)
    shown.update(raw_extra or {})
    return Reject(
        source_file=f"grpc:{record_id}" if record_id else "grpc:no-id",
        line=0 if record_id else index + 1,
        code=code,
        message=detail,
        raw=json.dumps(shown, sort_keys=True)[:4096],
        field=field,
        record_id=record_id,
    )


def bounded_id(text: str) -> str:
    """``text`` when it is at most :data:`RECORD_ID_CHARS_MAX` long, else a prefix of it and
    a hash of the whole: what a result echoes and the reject store keys an overlong id by."""
    if len(text) <= RECORD_ID_CHARS_MAX:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{text[:_ID_PREFIX_CHARS]}...#{digest}"


def unreadable_to_proto(reject: Reject) -> usage_pb2.UnreadableLine:
    """A reader's reject of a file line, for ``UsageService.StoreUnreadable``."""
    return usage_pb2.UnreadableLine(
        source_file=reject.source_file,
        source_line=reject.line,
        raw=reject.raw,
        record_id=reject.record_id or "",
        code=reject.code.value,
        field=reject.field or "",
        message=reject.message,
    )


def unreadable_from_proto(line: usage_pb2.UnreadableLine) -> Reject:
    """Inverse of :func:`unreadable_to_proto`; an unknown code reads as ``bad_value``."""
    try:
        code = RejectCode(line.code)
    except ValueError:
        code = RejectCode.BAD_VALUE
    return Reject(
        source_file=line.source_file,
        line=line.source_line,
        code=code,
        message=line.message or code.value,
        raw=line.raw,
        field=line.field or None,
        record_id=line.record_id or None,
    )
