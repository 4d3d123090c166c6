"""Requests built from plain Python values, by the request message's own descriptor.

Every SDK method takes the request message itself, or its fields: positionally
in the order the ``.proto`` declares them (``request_id`` left out: it is
generated once per call when not given, and reused by every retry), or by
name. Values are converted by field type, so no RPC is described again here:

- ``Money``: a :class:`billing.money.Money`, a ``Decimal``, or a decimal string
  or int of currency units (never micros; ``cluster.wire.money_to_proto``);
- ``UsageRecord``: a :class:`billing.records.UsageRecord` or a dict of its fields;
- ``UnreadableLine``: a reader's :class:`billing.readers.Reject`;
- an enum: its number, its full name, or its short name (``"prepaid"`` for
  ``PAYMENT_MODE_PREPAID``, ``"initial"`` for ``SESSION_STEP_INITIAL``), or a
  ``StrEnum`` whose value is the short name (``PaymentMode.PREPAID``);
- an ``optional`` field: ``None`` leaves it unset.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from typing import Any, Final

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from billing.readers import Reject
from cluster.wire import WireError, money_to_proto, record_to_proto, unreadable_to_proto

__all__ = ["build_request", "positional_fields"]

_MONEY: Final = "petribill.v1.Money"
_RECORD: Final = "petribill.v1.UsageRecord"
_UNREADABLE: Final = "petribill.v1.UnreadableLine"
_ID: Final = "request_id"


@cache
def positional_fields(descriptor: Descriptor) -> tuple[str, ...]:
    """The fields a call may give positionally, in ``.proto`` order (not request_id)."""
    return tuple(f.name for f in descriptor.fields if f.name != _ID)


@cache
def _enum_names(enum_type: EnumDescriptor) -> dict[str, int]:
    """Full and short names of an enum's values; the short name drops the prefix its
    zero value names (``PAYMENT_MODE_UNSPECIFIED``: ``PAYMENT_MODE_``), lower-cased."""
    prefix = enum_type.values_by_number[0].name.removesuffix("UNSPECIFIED")
    table = {}
    for value in enum_type.values:
        table[value.name] = value.number
        table[value.name.removeprefix(prefix).lower()] = value.number
    return table


def _enum(field: FieldDescriptor, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = value.value if isinstance(value, enum.Enum) else value
    number = _enum_names(field.enum_type).get(str(text))
    if number is None:
        known = sorted(k for k in _enum_names(field.enum_type) if k.islower())
        raise WireError(f"{field.name}: not one of {known}: {value!r}")
    return number


def _message(field: FieldDescriptor, value: Any) -> Any:
    full_name = field.message_type.full_name
    if isinstance(value, Message):
        return value
    if full_name == _MONEY:
        return money_to_proto(value)
    if full_name == _RECORD:
        return record_to_proto(value)
    if full_name == _UNREADABLE and isinstance(value, Reject):
        return unreadable_to_proto(value)
    raise WireError(f"{field.name}: give a {field.message_type.name} message, got {value!r}")


def _convert(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_ENUM:
        return _enum(field, value)
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return _message(field, value)
    return value


def build_request(
    request_type: type[Message],
    args: Sequence[Any],
    fields: dict[str, Any],
    new_id: Callable[[], str],
) -> Message:
    """A ``request_type`` from positional ``args`` and named ``fields`` (see the module)."""
    descriptor = request_type.DESCRIPTOR
    if len(args) == 1 and isinstance(args[0], request_type) and not fields:
        request: Message = args[0]
        if _ID in descriptor.fields_by_name and not getattr(request, _ID):
            request = request_type()
            request.CopyFrom(args[0])
            setattr(request, _ID, new_id())
        return request
    names = positional_fields(descriptor)
    if len(args) > len(names):
        raise TypeError(f"{descriptor.name} takes at most {len(names)} positional fields")
    given = dict(zip(names, args, strict=False))
    for name in fields:
        if name in given:
            raise TypeError(f"{descriptor.name}: {name} given twice")
    given.update(fields)
    request = request_type()
    for name, value in given.items():
        field = descriptor.fields_by_name.get(name)
        if field is None:
            raise TypeError(f"{descriptor.name} has no field {name!r}")
        if value is None:
            continue  # an optional field left unset
        if field.is_repeated:
            items = value if isinstance(value, Iterable) and not isinstance(value, str) else [value]
            converted = [_convert(field, item) for item in items]
            getattr(request, name).extend(converted)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(request, name).CopyFrom(_message(field, value))
        else:
            setattr(request, name, _convert(field, value))
    if _ID in descriptor.fields_by_name and not getattr(request, _ID):
        setattr(request, _ID, new_id())
    return request
