"""Byte encodings of an account shard's rows: keys, account states, ledger rows, marks, values.

Keys (every kind has its own one- or two-byte prefix, so a prefix scan visits
one kind; ids are UTF-8 without NUL, sequence numbers u64 big-endian)::

    a/<account>                        account state (see "Account rows")
    l/<account>\\0<seq>                 ledger row: a charge row or an explicit entry
    i/<idempotency key>                idempotency mark
    b/<account>                        bill-run state (BillingState)
    v/<account>\\0<invoice id>          invoice (with the refs an interim invoice adds)
    V/<invoice id>                     -> account id (find an invoice by id)
    o/<due u64><invoice id>            -> account id, for OPEN/PARTIALLY_PAID invoices (ageing)
    N/<seq>                            notification, in shard order (the server stream)
    n/<account>\\0<seq>                 per-account index of N/ (empty value)
    d/<notification id>                -> seq (a notification id is stored once)
    r/<account>                        -> u64 next reservation due time (expiry index)
    f/<forward id>                     outbox: a sponsor charge for another shard
    x/<forward id>                     forwards this shard received and had to refuse
    c/<name>                           shard counters (u64), e.g. c/notifications

Values
    Amounts and sequence numbers sit in fixed-width fields (8-byte big-endian,
    :mod:`actors.codec`): the books and the ledger sequence of an account row,
    the amounts of a charge row and the posting amounts of an entry. The rest
    of a structured value is msgpack. Domain values (dataclasses, named tuples,
    enums) are msgpack extension types with a stable code per type
    (:data:`_TYPES`) whose payload maps field names to values, so a type that
    gains a defaulted field still reads its old rows; the code table is
    append-only, never renumbered. No pickle.

Account rows: ``"A" | 6 x i64 books | u64 next ledger seq | msgpack body``.
Ledger rows: ``"C" | 7 x i64 | msgpack strings`` for a charge row (its entry
is :meth:`billing.charging.Charge.to_entry`, derived when read), or ``"E" | u16
n | n x i64 amounts | msgpack`` for an explicit entry.
Marks: ``"P" | u64 seq | msgpack (account, fields)`` points at the charge row
that is the mark's result (one copy of a usage line, not two); ``"G" |
msgpack`` holds any other mark whole.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from collections.abc import Callable
from typing import Any, Final

import msgpack

from actors.codec import CodecError, account_key, encode_u64, ledger_prefix
from billing.accounts import Account, AccountState, AccountStatus, Result, SponsorRule, Subscription
from billing.billrun import BillingState, UsageTotal
from billing.charging import Charge, TopUp
from billing.idempotency import Mark
from billing.invoice import Invoice, InvoiceStatus, LineItem, LineKind
from billing.ledger import Book, Entry, EntryKind, Posting
from billing.notifications import Notification, NotificationKind
from billing.ocs import BalanceView, Grant, Quote, Refund, Reservation, SessionStatus
from billing.rated import RatedRecord, TierCharge
from billing.records import Service, UsageRecord
from billing.sponsor import SponsoredUsage
from billing.switching import InterimBill, Switch
from billing.tariffs.model import PaymentMode
from billing.writeoff import Allocation, Payment, Reversal

__all__ = [
    "AccountRow",
    "decode_account",
    "decode_ledger_row",
    "decode_value",
    "encode_account",
    "encode_charge_row",
    "encode_entry",
    "encode_value",
    "key_after",
    "ledger_seq_key",
    "prefixed",
    "prefixed_seq",
]

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
_FIELDS: dict[type, tuple[str, ...]] = {}
_MAX_ROW: Final = 1 << 30


def _names(cls: type) -> tuple[str, ...]:
    found = _FIELDS.get(cls)
    if found is None:
        if dataclasses.is_dataclass(cls):
            found = tuple(f.name for f in dataclasses.fields(cls))
        else:
            found = tuple(cls._fields)  # type: ignore[attr-defined]
        _FIELDS[cls] = found
    return found


def _default(obj: Any) -> Any:
    """msgpack hook (strict types): tuples as arrays, domain values as extension types."""
    if type(obj) is tuple:
        return list(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    code = _CODE_OF.get(type(obj))
    if code is None:
        raise CodecError(f"cannot encode {type(obj).__name__}")
    if isinstance(obj, enum.Enum):
        return msgpack.ExtType(code, str(obj.value).encode())
    # By field name, so a type that gains a defaulted field still reads its old rows.
    values = {name: getattr(obj, name) for name in _names(type(obj))}
    return msgpack.ExtType(code, _pack(values))


def _ext_hook(code: int, data: bytes) -> Any:
    cls = _CLASS_OF.get(code)
    if cls is None:
        raise CodecError(f"unknown extension type {code}")
    if issubclass(cls, enum.Enum):
        return cls(data.decode())
    values: dict[str, Any] = _unpack(data)
    return cls(**values)


def _pack(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, default=_default, strict_types=True, use_bin_type=True)
    return data


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(
        data, ext_hook=_ext_hook, use_list=False, strict_map_key=False, raw=False
    )


def encode_value(value: Any) -> bytes:
    """Any domain value (a mark, an invoice, a notification...) as ``"G" | msgpack``."""
    return b"G" + _pack(value)


def decode_value(data: bytes) -> Any:
    """Inverse of :func:`encode_value`."""
    if data[:1] != b"G":
        raise CodecError(f"not a generic value: tag {data[:1]!r}")
    return _unpack(data[1:])


# -- keys -------------------------------------------------------------------------------


def _id(value: str) -> bytes:
    data = value.encode()
    if not data or b"\x00" in data:
        raise CodecError(f"id must be non-empty and contain no NUL: {value!r}")
    return data


def prefixed(prefix: bytes, *parts: str) -> bytes:
    """``prefix`` + the ids joined by NUL (the last one not NUL-terminated)."""
    return prefix + b"\x00".join(_id(p) for p in parts)


def prefixed_seq(prefix: bytes, owner: str | None, seq: int) -> bytes:
    """``prefix[<owner>\\0]<seq u64>``: rows in sequence order (per owner)."""
    head = prefix if owner is None else prefix + _id(owner) + b"\x00"
    return head + encode_u64(seq)


def ledger_seq_key(account_id: str, seq: int) -> bytes:
    return ledger_prefix(account_id) + encode_u64(seq)


def key_after(key: bytes) -> bytes:
    """The smallest key greater than ``key`` (to resume a scan)."""
    return key + b"\x00"


# -- account rows -------------------------------------------------------------------------

_HEAD: Final = struct.Struct(">c6qQ")
_SEQ: Final = struct.Struct(">Q")
_BOOKS: Final = ("prepaid", "reserved", "unbilled", "receivable", "credit", "debt")


@dataclasses.dataclass(slots=True)
class AccountRow:
    """An account state with its ledger sequence counter and its encoded profile memo."""

    state: AccountState
    next_seq: int
    profile: bytes = b""
    profile_of: Account | None = None
    ledger_head: bytes = b""  # memo of ledger_prefix(account id)

    def ledger_key(self, seq: int) -> bytes:
        head = self.ledger_head
        if not head:
            head = self.ledger_head = ledger_prefix(self.state.account.account_id)
        return head + _SEQ.pack(seq)

    def profile_bytes(self) -> bytes:
        account = self.state.account
        if self.profile_of is not account:
            self.profile, self.profile_of = _pack(account), account
        return self.profile


def encode_account(row: AccountRow) -> bytes:
    """An account row: fixed-width books and sequence, then the msgpack body.

    The usage history (``AccountState.history``) is not stored here: its lines
    are the charge rows of the account's ledger stream.
    """
    s = row.state
    head = _HEAD.pack(
        b"A", s.prepaid, s.reserved, s.unbilled, s.receivable, s.credit, s.debt, row.next_seq
    )
    body: bytes = msgpack.packb(
        (
            row.profile_bytes(),
            [(c, b, n) for (c, b), n in s.bundle_used.items()],
            [(c, b, n) for (c, b), n in s.bundle_held.items()],
            [(c, u, *t) for (c, u), t in s.usage.items()],
            _pack(tuple(s.reservations.values())) if s.reservations else b"",
            sorted(s.reminders),
            list(s.crossings.items()),
            s.reminder_cycle,
        ),
        use_bin_type=True,
    )
    return head + body


def decode_account(data: bytes) -> AccountRow:
    """Inverse of :func:`encode_account` (the history comes back empty)."""
    tag, prepaid, reserved, unbilled, receivable, credit, debt, seq = _HEAD.unpack_from(data)
    if tag != b"A":
        raise CodecError(f"not an account row: tag {tag!r}")
    profile, used, held, usage, reservations, reminders, crossings, cycle = msgpack.unpackb(
        data[_HEAD.size :], use_list=False, raw=False
    )
    account = _unpack(profile)
    state = AccountState(account)
    state.prepaid, state.reserved, state.unbilled = prepaid, reserved, unbilled
    state.receivable, state.credit, state.debt = receivable, credit, debt
    state.bundle_used = {(c, b): n for c, b, n in used}
    state.bundle_held = {(c, b): n for c, b, n in held}
    state.usage = {(c, u): tuple(t) for c, u, *t in usage}
    if reservations:
        state.reservations = {r.session_id: r for r in _unpack(reservations)}
    state.reminders = set(reminders)
    state.crossings = dict(crossings)
    state.reminder_cycle = cycle
    return AccountRow(state=state, next_seq=seq, profile=profile, profile_of=account)


# -- ledger rows ----------------------------------------------------------------------------

_CHARGE_NUMS: Final = struct.Struct(">c7q")
_RESULTS: Final = {r.value: r for r in Result}


def encode_charge_row(row: Charge) -> bytes:
    """A charge row (usage line); its ledger entry is ``row.to_entry()``."""
    nums = _CHARGE_NUMS.pack(
        b"C", row.units, row.bundle_units, row.amount, row.prepaid, row.unbilled, row.debt, row.at_s
    )
    strings: bytes = msgpack.packb(
        (
            row.record_id,
            row.ref,
            row.account_id,
            row.result.value,
            row.cycle_id,
            row.service,
            row.usage_class,
            row.currency,
            row.sponsored_by,
            row.sponsor_of,
        ),
        use_bin_type=True,
    )
    return nums + strings


def _decode_charge(data: bytes) -> Charge:
    _, units, bundle_units, amount, prepaid, unbilled, debt, at_s = _CHARGE_NUMS.unpack_from(data)
    rid, ref, aid, result, cycle, service, usage_class, currency, by, of = msgpack.unpackb(
        data[_CHARGE_NUMS.size :], use_list=False, raw=False
    )
    return Charge(
        rid, ref, aid, _RESULTS[result], cycle, service, usage_class, units, bundle_units,
        amount, prepaid, unbilled, debt, currency, at_s, by, of,
    )  # fmt: skip


def encode_entry(entry: Entry) -> bytes:
    """An explicit ledger entry: posting amounts fixed-width, the rest msgpack."""
    amounts = [p.amount for p in entry.postings]
    head = b"E" + struct.pack(f">H{len(amounts)}q", len(amounts), *amounts)
    body: bytes = msgpack.packb(
        (
            entry.ref,
            entry.kind.value,
            entry.currency,
            entry.at_s,
            entry.cycle_id,
            entry.memo,
            [p.account for p in entry.postings],
        ),
        use_bin_type=True,
    )
    return head + body


def _decode_entry(data: bytes) -> Entry:
    (n,) = struct.unpack_from(">H", data, 1)
    amounts = struct.unpack_from(f">{n}q", data, 3)
    ref, kind, currency, at_s, cycle_id, memo, accounts = msgpack.unpackb(
        data[3 + 8 * n :], use_list=False, raw=False
    )
    return Entry(
        ref=ref,
        kind=EntryKind(kind),
        currency=currency,
        at_s=at_s,
        cycle_id=cycle_id,
        memo=memo,
        postings=tuple(Posting(a, x) for a, x in zip(accounts, amounts, strict=True)),
    )


def decode_ledger_row(data: bytes) -> Charge | Entry:
    """A stored ledger row: a :class:`Charge` (usage line) or an :class:`Entry`."""
    tag = data[:1]
    if tag == b"C":
        return _decode_charge(data)
    if tag == b"E":
        return _decode_entry(data)
    raise CodecError(f"not a ledger row: tag {tag!r}")


# -- marks -----------------------------------------------------------------------------------


def encode_charge_mark(account_id: str, seq: int, fields: tuple[tuple[str, object], ...]) -> bytes:
    """A mark whose result is the charge row ``l/<account_id>\\0<seq>``.

    Enum members in ``fields`` are stored as their values; they compare equal
    to the members (``StrEnum``), which is all :func:`billing.idempotency.check`
    needs.
    """
    body: bytes = msgpack.packb((account_id, fields), use_bin_type=True)
    return b"P" + _SEQ.pack(seq) + body


def decode_mark(data: bytes, row_of: Callable[[str, int], Charge]) -> Mark[Any]:
    """A stored mark; ``row_of(account, seq)`` reads the charge row a pointer mark names."""
    tag = data[:1]
    if tag == b"P":
        (seq,) = _SEQ.unpack_from(data, 1)
        account_id, fields = msgpack.unpackb(data[9:], use_list=False, raw=False)
        return Mark(fields, row_of(account_id, seq))
    mark = decode_value(data)
    if not isinstance(mark, Mark):
        raise CodecError(f"not a mark: {type(mark).__name__}")
    return mark


def account_row_key(account_id: str) -> bytes:
    return account_key(account_id)
