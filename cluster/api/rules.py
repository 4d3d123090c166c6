"""The field rules of ``proto/petribill/v1/rules.proto``, read once from the descriptors.

Every request field carries a ``(petribill.v1.rule)`` option; this module
compiles the options of a message type into a list of small checks the first
time the type is seen, and runs them on each message. A broken rule is a
:class:`RuleError` whose message names the field by its path
(``TopUpRequest.amount.micros``, ``StoreUnreadableRequest.lines[3].raw``) and the
rule, and never repeats more than :data:`SHOWN_CHARS_MAX` characters of what was
sent. The gateway turns it into INVALID_ARGUMENT (``cluster.gateway.validate``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Final

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from petribill.v1 import rules_pb2

from billing.limits import TIME_MAX_S, TIME_MIN_S
from billing.money import is_currency_code
from cluster.api.columns import IpcError, read_ipc

__all__ = ["SHOWN_CHARS_MAX", "RuleError", "check_message", "field_rule", "shown"]

#: The most characters of a sent value an error message repeats.
SHOWN_CHARS_MAX: Final = 40
_MONEY: Final = "petribill.v1.Money"
_BYTES: Final = FieldDescriptor.TYPE_BYTES


class RuleError(ValueError):
    """Raised by :func:`check_message` for the first broken rule; the message names the field."""


def shown(text: str) -> str:
    """``text`` quoted, cut to :data:`SHOWN_CHARS_MAX` characters (with its length if cut)."""
    if len(text) <= SHOWN_CHARS_MAX:
        return repr(text)
    return f"{text[:SHOWN_CHARS_MAX]!r}... ({len(text)} characters)"


def field_rule(field: FieldDescriptor) -> rules_pb2.FieldRule | None:
    """The ``(petribill.v1.rule)`` option of ``field``, or ``None`` when it has none."""
    options = field.GetOptions()
    if not options.HasExtension(rules_pb2.rule):
        return None
    rule: rules_pb2.FieldRule = options.Extensions[rules_pb2.rule]
    return rule


# A check gets the message, the path of the message so far and the batch limit.
_Check = Callable[[Any, str, int], None]
# A scalar value's check answers what is wrong with it, said after its path (" is
# required"), or None: the path is built only for a value that breaks a rule, not for
# every field of every request.
_Item = Callable[[Any], str | None]
_COMPILED: dict[str, tuple[_Check, ...]] = {}


def check_message(message: Any, *, batch_items_max: int, path: str = "") -> None:
    """Raise :class:`RuleError` for the first rule ``message`` breaks (rules of nested
    messages included, except the items of a ``per_item`` field)."""
    descriptor = message.DESCRIPTOR
    checks = _COMPILED.get(descriptor.full_name)
    if checks is None:
        checks = _COMPILED[descriptor.full_name] = _compile(descriptor)
    where = path or descriptor.name
    for check in checks:
        check(message, where, batch_items_max)


def _compile(descriptor: Descriptor) -> tuple[_Check, ...]:
    checks: list[_Check] = []
    options = descriptor.GetOptions()
    if options.HasExtension(rules_pb2.message_rule):
        any_of = tuple(options.Extensions[rules_pb2.message_rule].any_of)
        if any_of:
            checks.append(_any_of(any_of))
    # Consecutive scalar fields are checked by one loop (one call per message, not one
    # per field), in field order, so the first broken rule is still the one reported.
    scalars: list[tuple[str, _Item]] = []
    for field in descriptor.fields:
        rule = field_rule(field) or rules_pb2.FieldRule()
        item = _scalar_item(field, rule)
        if item is not None:
            scalars.append((field.name, item))
            continue
        if scalars:
            checks.append(_scalars(tuple(scalars)))
            scalars = []
        checks.extend(_field_checks(field, rule))
    if scalars:
        checks.append(_scalars(tuple(scalars)))
    return tuple(checks)


def _scalar_item(field: FieldDescriptor, rule: rules_pb2.FieldRule) -> _Item | None:
    """The check of a singular scalar field; None for other fields and unchecked scalars."""
    if field.is_repeated or field.type in (FieldDescriptor.TYPE_MESSAGE, _BYTES):
        return None
    return _item_check(field, rule)


def _scalars(items: tuple[tuple[str, _Item], ...]) -> _Check:
    def check(message: Any, where: str, _batch: int) -> None:
        for name, item in items:
            problem = item(getattr(message, name))
            if problem is not None:
                raise RuleError(f"{where}.{name}{problem}")

    return check


def _any_of(names: Sequence[str]) -> _Check:
    def check(message: Any, where: str, _batch: int) -> None:
        if not any(getattr(message, name) for name in names):
            raise RuleError(f"{where}: one of {', '.join(names)} is required")

    return check


def _field_checks(field: FieldDescriptor, rule: rules_pb2.FieldRule) -> list[_Check]:
    """The checks of a repeated, message or bytes field (scalars: :func:`_scalars`)."""
    if field.is_repeated:
        return [_repeated(field, rule)]
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return [_message(field, rule)]
    if field.type == _BYTES:
        return _columns(field, rule)
    return []


def _repeated(field: FieldDescriptor, rule: rules_pb2.FieldRule) -> _Check:
    name, required, max_items, batch = field.name, rule.required, rule.max_items, rule.batch
    is_message = field.type == FieldDescriptor.TYPE_MESSAGE
    nested = is_message and not rule.per_item
    item = None if is_message else _item_check(field, rule)

    def check(message: Any, where: str, batch_max: int) -> None:
        items = getattr(message, name)
        count = len(items)
        if required and count == 0:
            raise RuleError(f"{where}.{name} is empty: at least one item is required")
        if max_items and count > max_items:
            raise RuleError(f"{where}.{name} has {count} items (at most {max_items})")
        if batch and count > batch_max:
            raise RuleError(
                f"{where}.{name} has {count} items (batch_records_max={batch_max}); split the batch"
            )
        if nested:
            for index, value in enumerate(items):
                check_message(value, batch_items_max=batch_max, path=f"{where}.{name}[{index}]")
        elif item is not None:
            for index, value in enumerate(items):
                problem = item(value)
                if problem is not None:
                    raise RuleError(f"{where}.{name}[{index}]{problem}")

    return check


def _columns(field: FieldDescriptor, rule: rules_pb2.FieldRule) -> list[_Check]:
    """A bytes field: required, and with ``batch`` an Arrow IPC stream of at most
    ``batch_records_max`` rows (``cluster.api.columns``)."""
    name, required, batch = field.name, rule.required, rule.batch
    if not (required or batch):
        return []

    def check(message: Any, where: str, batch_max: int) -> None:
        data = getattr(message, name)
        if not data:
            if required:
                raise RuleError(f"{where}.{name} is required")
            return
        if not batch:
            return
        try:
            rows = read_ipc(data).num_rows
        except IpcError as exc:
            raise RuleError(f"{where}.{name}: {exc}") from None
        if rows == 0 and required:
            raise RuleError(f"{where}.{name} has no rows: at least one is required")
        if rows > batch_max:
            raise RuleError(
                f"{where}.{name} has {rows} rows (batch_records_max={batch_max}); split the batch"
            )

    return [check]


def _message(field: FieldDescriptor, rule: rules_pb2.FieldRule) -> _Check:
    name, required = field.name, rule.required
    bounds = _bounds(rule) if field.message_type.full_name == _MONEY else None

    def check(message: Any, where: str, batch_max: int) -> None:
        if not message.HasField(name):
            if required:
                raise RuleError(f"{where}.{name} is required")
            return
        value = getattr(message, name)
        if bounds is not None and (problem := bounds(value.micros)) is not None:
            raise RuleError(f"{where}.{name}.micros{problem}")
        check_message(value, batch_items_max=batch_max, path=f"{where}.{name}")

    return check


def _item_check(field: FieldDescriptor, rule: rules_pb2.FieldRule) -> _Item | None:
    """The check of one scalar value (a field, or an item of a repeated field)."""
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return _string(rule)
    if kind == FieldDescriptor.TYPE_ENUM:
        return _enum(field, rule)
    if kind == FieldDescriptor.TYPE_BOOL:
        return None
    if field.cpp_type in _INTEGER_TYPES:
        return _integer(rule)
    return None


_INTEGER_TYPES: Final = frozenset(
    {
        FieldDescriptor.CPPTYPE_INT32,
        FieldDescriptor.CPPTYPE_INT64,
        FieldDescriptor.CPPTYPE_UINT32,
        FieldDescriptor.CPPTYPE_UINT64,
    }
)


def _string(rule: rules_pb2.FieldRule) -> _Item | None:
    required, max_len, currency = rule.required, rule.max_len, rule.currency
    pattern = re.compile(rule.pattern) if rule.pattern else None
    if not (required or max_len or currency or pattern):
        return None

    def check(value: str) -> str | None:
        if not value:
            return " is required" if required else None
        if max_len and len(value) > max_len:
            return f" has {len(value)} characters (at most {max_len})"
        if pattern is not None and not pattern.fullmatch(value):
            return f" must match {pattern.pattern}, got {shown(value)}"
        if currency and not is_currency_code(value):
            return f" must be an ISO 4217 code, got {shown(value)}"
        return None

    return check


def _enum(field: FieldDescriptor, rule: rules_pb2.FieldRule) -> _Item:
    required = rule.required
    defined = frozenset(field.enum_type.values_by_number)
    type_name = field.enum_type.name

    def check(value: int) -> str | None:
        if value == 0 and required:
            return f" must be set (not {type_name} UNSPECIFIED)"
        if value not in defined:
            return f": {value} is not a value of {type_name}"
        return None

    return check


def _bounds(rule: rules_pb2.FieldRule) -> _Item | None:
    low = rule.min if rule.HasField("min") else None
    high = rule.max if rule.HasField("max") else None
    if low is None and high is None:
        return None

    def check(value: int) -> str | None:
        if low is not None and value < low:
            return f" must be at least {low}, got {value}"
        if high is not None and value > high:
            return f" must be at most {high}, got {value}"
        return None

    return check


def _integer(rule: rules_pb2.FieldRule) -> _Item | None:
    required, time = rule.required, rule.time
    bounds = _bounds(rule)
    if not (required or time or bounds):
        return None

    def check(value: int) -> str | None:
        if value == 0:
            return " is required" if required else None
        if time and not TIME_MIN_S <= value <= TIME_MAX_S:
            return (
                f" must be Unix seconds in [{TIME_MIN_S}, {TIME_MAX_S}] "
                f"(2000-01-01 to 2099-12-31 UTC), got {value}"
            )
        return None if bounds is None else bounds(value)

    return check
