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
    e/<record id>                      stored answer of a direct debit: the balance after it
    f/<forward id>                     outbox: a sponsor charge for another shard
    x/<forward id>                     forwards this shard received and had to refuse
    s/<record id>                      -> u64 what the sponsor of a sponsored record is
                                       charged (the record's answered amount)
    k/<account>                        fraud risk state (:mod:`actors.shard.risk`; only
                                       written when the shard has a fraud config)
    c/<name>                           shard counters (u64), e.g. c/notifications

Values
    Amounts and sequence numbers sit in fixed-width fields (8-byte big-endian,
    :mod:`actors.store.codec`): the books and the ledger sequence of an account row,
    the amounts of a charge row and the posting amounts of an entry. The rest
    of a structured value is msgpack; domain values inside it are encoded by
    :mod:`actors.store.value_codec` (extension types by field name, no pickle).

Account rows: ``"A" | 6 x i64 books | u64 next ledger seq | msgpack body``.
Ledger rows: ``"C" | 7 x i64 | msgpack strings`` for a charge row (its entry
is :meth:`billing.charging.batch.Charge.to_entry`, derived when read), or ``"E" | u16
n | n x i64 amounts | msgpack`` for an explicit entry.
Marks: ``"P" | u64 seq | msgpack (account, fields)`` points at the charge row
that is the mark's result (one copy of a usage line, not two); ``"G" |
msgpack`` holds any other mark whole.

Hot path: the encoders of the rows written per record (charge rows, pointer
marks, account rows) take an optional ``pack``, a msgpack ``pack`` bound to a
reused ``Packer`` (:func:`new_packer`), which halves the cost of msgpack's
per-call ``packb``. A ``Packer`` holds a buffer, so each shard keeps its own
(a shard's calls are serialised) and never shares one across threads. The
bytes are the same either way.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable
from typing import Any, Final

import msgpack

from actors.shard.keys import account_key, ledger_prefix
from actors.store.codec import CodecError
from actors.store.value_codec import decode_value, encode_value, pack_value, unpack_value
from billing.accounts import Account, AccountState, Result
from billing.charging.batch import Charge
from billing.fraud import RiskState
from billing.idempotency import Mark
from billing.ledger import Entry, EntryKind, Posting

__all__ = [
    "AccountRow",
    "Pack",
    "decode_account",
    "decode_ledger_row",
    "decode_mark",
    "decode_value",
    "encode_account",
    "encode_charge_mark",
    "encode_charge_row",
    "encode_charge_values",
    "encode_entry",
    "encode_value",
    "new_packer",
]

Pack = Callable[[Any], bytes]
"""msgpack ``pack`` of plain values (``use_bin_type``; ``str`` subclasses as strings)."""


def new_packer() -> Pack:
    """A ``pack`` bound to its own ``Packer``: reuse it within one thread, never share it."""
    pack: Pack = msgpack.Packer(use_bin_type=True).pack
    return pack


def _packb(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True)
    return data


# -- keys -------------------------------------------------------------------------------


# -- account rows -------------------------------------------------------------------------

_HEAD: Final = struct.Struct(">c6qQ")
_SEQ: Final = struct.Struct(">Q")


@dataclasses.dataclass(slots=True)
class AccountRow:
    """An account state with its ledger sequence counter and its encoded profile memo."""

    state: AccountState
    next_seq: int
    profile: bytes = b""
    profile_of: Account | None = None
    ledger_head: bytes = b""  # memo of ledger_prefix(account id)
    key: bytes = b""  # memo of account_key(account id)
    # Memo of the account's risk state (k/<account>, actors.shard.risk); None: not read yet.
    # It rides with the row so the shard's cache holds it only once its batch committed.
    risk: RiskState | None = None

    def row_key(self) -> bytes:
        """The key of this account row, ``a/<account>``."""
        key = self.key
        if not key:
            key = self.key = account_key(self.state.account.account_id)
        return key

    def successor(self, state: AccountState) -> AccountRow:
        """A row for ``state``, a new state of this row's account, keeping the memos."""
        return AccountRow(
            state, self.next_seq, self.profile, self.profile_of, self.ledger_head, self.key,
            self.risk,
        )  # fmt: skip

    def ledger_key(self, seq: int) -> bytes:
        head = self.ledger_head
        if not head:
            head = self.ledger_head = ledger_prefix(self.state.account.account_id)
        return head + _SEQ.pack(seq)

    def profile_bytes(self) -> bytes:
        account = self.state.account
        if self.profile_of is not account:
            self.profile, self.profile_of = pack_value(account), account
        return self.profile


def encode_account(row: AccountRow, pack: Pack = _packb) -> bytes:
    """An account row: fixed-width books and sequence, then the msgpack body.

    The usage history (``AccountState.history``) is not stored here: its lines
    are the charge rows of the account's ledger stream. Empty containers are
    packed as empty tuples (the same bytes as empty lists), without building
    anything.
    """
    s = row.state
    used, held, usage, reminders, crossings = (
        s.bundle_used, s.bundle_held, s.usage, s.reminders, s.crossings
    )  # fmt: skip
    body = pack(
        (
            row.profile_bytes(),
            [(*k, n) for k, n in used.items()] if used else (),
            [(*k, n) for k, n in held.items()] if held else (),
            [k + v for k, v in usage.items()] if usage else (),
            pack_value(tuple(s.reservations.values())) if s.reservations else b"",
            sorted(reminders) if reminders else (),
            tuple(crossings.items()) if crossings else (),
            s.reminder_cycle,
        )
    )
    return (
        _HEAD.pack(
            b"A", s.prepaid, s.reserved, s.unbilled, s.receivable, s.credit, s.debt, row.next_seq
        )
        + body
    )


def decode_account(data: bytes) -> AccountRow:
    """Inverse of :func:`encode_account` (the history comes back empty)."""
    tag, prepaid, reserved, unbilled, receivable, credit, debt, seq = _HEAD.unpack_from(data)
    if tag != b"A":
        raise CodecError(f"not an account row: tag {tag!r}")
    profile, used, held, usage, reservations, reminders, crossings, cycle = msgpack.unpackb(
        data[_HEAD.size :], use_list=False, raw=False
    )
    account = unpack_value(profile)
    state = AccountState(account)
    state.prepaid, state.reserved, state.unbilled = prepaid, reserved, unbilled
    state.receivable, state.credit, state.debt = receivable, credit, debt
    state.bundle_used = {(c, b): n for c, b, n in used}
    state.bundle_held = {(c, b): n for c, b, n in held}
    state.usage = {(c, u): tuple(t) for c, u, *t in usage}
    if reservations:
        state.reservations = {r.session_id: r for r in unpack_value(reservations)}
    state.reminders = set(reminders)
    state.crossings = dict(crossings)
    state.reminder_cycle = cycle
    return AccountRow(state=state, next_seq=seq, profile=profile, profile_of=account)


# -- ledger rows ----------------------------------------------------------------------------

_CHARGE_NUMS: Final = struct.Struct(">c7q")
_RESULTS: Final = {r.value: r for r in Result}


# The layout below indexes Charge by position (the hot path); refuse to load if it moved.
_CHARGE_FIELDS: Final = (
    "record_id", "ref", "account_id", "result", "cycle_id", "service", "usage_class", "units",
    "bundle_units", "amount", "prepaid", "unbilled", "debt", "currency", "at_s", "sponsored_by",
    "sponsor_of", "rated", "replay_of",
)  # fmt: skip
if Charge._fields != _CHARGE_FIELDS:  # pragma: no cover - a change of billing.charging.batch.Charge
    raise ImportError(f"billing.charging.batch.Charge fields changed: {Charge._fields}")


def encode_charge_row(row: Charge, pack: Pack = _packb) -> bytes:
    """A charge row (usage line); its ledger entry is ``row.to_entry()``.

    The strings are ``record_id, ref, account_id, result, cycle_id, service,
    usage_class`` (fields 0-6), ``currency`` (13), ``sponsored_by, sponsor_of``
    (15-16); ``result`` is a ``StrEnum`` and packs as its value.
    """
    return encode_charge_values(
        (row[7], row[8], row[9], row[10], row[11], row[12], row[14]),
        row[:7] + row[13:14] + row[15:17],
        pack,
    )


def encode_charge_values(
    numbers: tuple[int, int, int, int, int, int, int],
    strings: tuple[str | None, ...],
    pack: Pack = _packb,
) -> bytes:
    """A charge row from its plain values, as :func:`encode_charge_row` lays them out:
    ``numbers`` are ``units, bundle_units, amount, prepaid, unbilled, debt, at_s`` and
    ``strings`` ``record_id, ref, account_id, result, cycle_id, service, usage_class,
    currency, sponsored_by, sponsor_of`` (the bulk path encodes rows from its columns
    with it, building no :class:`Charge`)."""
    return _CHARGE_NUMS.pack(b"C", *numbers) + pack(strings)


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


_MARK_HEAD: Final = struct.Struct(">cQ")


def encode_charge_mark(
    account_id: str, seq: int, fields: tuple[tuple[str, object], ...], pack: Pack = _packb
) -> bytes:
    """A mark whose result is the charge row ``l/<account_id>\\0<seq>``.

    Enum members in ``fields`` are stored as their values; they compare equal
    to the members (``StrEnum``), which is all :func:`billing.idempotency.check`
    needs.
    """
    return _MARK_HEAD.pack(b"P", seq) + pack((account_id, fields))


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
