"""Domain values as msgpack: the generic value encoding of account shard rows.

Domain values (dataclasses, named tuples, enums) are msgpack extension types
with a stable code per type (:data:`_TYPES`) whose payload maps field names to
values, so a type that gains a defaulted field still reads its old rows; the
code table is append-only, never renumbered. No pickle. Row layouts built on
top of this: :mod:`actors.shard.codec`.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from operator import attrgetter
from typing import Any, Final

import msgpack

from actors.store.codec import CodecError
from billing.accounts import Account, AccountStatus, Result, SponsorRule, Subscription
from billing.billrun.run import BillingState, UsageTotal
from billing.charging.batch import Charge, TopUp
from billing.idempotency import Mark
from billing.invoice import Invoice, InvoiceStatus, LineItem, LineKind
from billing.ledger import Book, Entry, EntryKind, Posting
from billing.notifications import Notification, NotificationKind
from billing.ocs.session import BalanceView, Grant, Quote, Refund, Reservation, SessionStatus
from billing.rated import RatedRecord, TierCharge
from billing.records import Service, UsageRecord
from billing.sponsor import SponsoredUsage
from billing.switching import InterimBill, Switch
from billing.tariffs.model import PaymentMode
from billing.writeoff import Allocation, Payment, Reversal

__all__ = ["decode_value", "encode_value", "pack_value", "unpack_value"]

# Append-only: the code of a type is part of the stored format.
_TYPES: Final[tuple[tuple[int, type], ...]] = (
    (1, Mark),
    (2, Account),
    (3, Subscription),
    (4, SponsorRule),
    (5, Charge),
    (6, TopUp),
    (7, Grant),
    (8, Quote),
    (9, Reservation),
    (10, Refund),
    (11, Switch),
    (12, InterimBill),
    (13, Payment),
    (14, Allocation),
    (15, Reversal),
    (16, Invoice),
    (17, LineItem),
    (18, BillingState),
    (19, UsageTotal),
    (20, Notification),
    (21, SponsoredUsage),
    (22, RatedRecord),
    (23, UsageRecord),
    (24, TierCharge),
    (25, BalanceView),
    (26, Entry),
    (27, Posting),
    (64, PaymentMode),
    (65, AccountStatus),
    (66, Result),
    (67, SessionStatus),
    (68, Book),
    (69, InvoiceStatus),
    (70, LineKind),
    (71, NotificationKind),
    (72, Service),
    (73, EntryKind),
)
_CODE_OF: Final = {cls: code for code, cls in _TYPES}
_CLASS_OF: Final = {code: cls for code, cls in _TYPES}
_FIELDS: dict[type, tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]] = {}
# By id: members of two StrEnums with one value are equal and hash alike (both
# ``OPEN == "open"``), but are different types. Members live as long as their class.
_ENUMS: dict[int, msgpack.ExtType] = {}


def _fields(cls: type) -> tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]:
    """The field names of a domain type and a getter of their values, memoised per type."""
    found = _FIELDS.get(cls)
    if found is None:
        if dataclasses.is_dataclass(cls):
            names = tuple(f.name for f in dataclasses.fields(cls))
        else:
            names = tuple(cls._fields)  # type: ignore[attr-defined]
        getter: Callable[[Any], tuple[Any, ...]] = attrgetter(*names)
        if len(names) == 1:  # attrgetter of one name returns the value, not a tuple
            one = attrgetter(names[0])
            getter = lambda obj: (one(obj),)  # noqa: E731
        found = _FIELDS[cls] = (names, getter)
    return found


def _default(obj: Any) -> Any:
    """msgpack hook (strict types): tuples as arrays, domain values as extension types."""
    cls = type(obj)
    if cls is tuple:
        return list(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    code = _CODE_OF.get(cls)
    if code is None:
        raise CodecError(f"cannot encode {cls.__name__}")
    if isinstance(obj, enum.Enum):
        ext = _ENUMS.get(id(obj))
        if ext is None:
            ext = _ENUMS[id(obj)] = msgpack.ExtType(code, str(obj.value).encode())
        return ext
    # By field name, so a type that gains a defaulted field still reads its old rows.
    names, getter = _fields(cls)
    return msgpack.ExtType(code, pack_value(dict(zip(names, getter(obj), strict=True))))


def _ext_hook(code: int, data: bytes) -> Any:
    cls = _CLASS_OF.get(code)
    if cls is None:
        raise CodecError(f"unknown extension type {code}")
    if issubclass(cls, enum.Enum):
        return cls(data.decode())
    values: dict[str, Any] = unpack_value(data)
    return cls(**values)


def pack_value(value: Any) -> bytes:
    """``value`` as msgpack, domain values as extension types (no tag byte)."""
    data: bytes = msgpack.packb(value, default=_default, strict_types=True, use_bin_type=True)
    return data


def unpack_value(data: bytes) -> Any:
    """Inverse of :func:`pack_value`."""
    return msgpack.unpackb(
        data, ext_hook=_ext_hook, use_list=False, strict_map_key=False, raw=False
    )


def encode_value(value: Any) -> bytes:
    """Any domain value (a mark, an invoice, a notification...) as ``"G" | msgpack``."""
    return b"G" + pack_value(value)


def decode_value(data: bytes) -> Any:
    """Inverse of :func:`encode_value`."""
    if data[:1] != b"G":
        raise CodecError(f"not a generic value: tag {data[:1]!r}")
    return unpack_value(data[1:])
