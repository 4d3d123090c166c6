"""Every key of an account shard's database: one type letter and ``/``, then ids.

A prefix scan visits exactly one kind of row, and the kinds sort apart::

    a/<account>                      account state row
    l/<account>\\0<seq u64>           the account's ledger stream (charge rows, entries)
    i/<idempotency key>              mark of a record_id / request_id
    b/<account>                      bill-run state
    v/<account>\\0<invoice>           invoice (with its ledger refs)
    V/<invoice>                      invoice -> account index
    o/<due u64><invoice>             open invoice by due date (ageing)
    N/<seq u64>                      notification, in shard order
    n/<account>\\0<seq u64>           the account's notifications (index)
    d/<notification id>              notification already stored (once per crossing)
    r/<account>                      earliest reservation expiry of the account
    e/<record id>                    the stored answer of a direct debit (balance after)
    f/<forward id>                   outbox: a sponsor charge for another shard
    x/<forward id>                   a sponsor charge this shard refused
    s/<record id>                    what a sponsored record's sponsor is charged (u64)
    k/<account>                      fraud risk state
    c/notifications                  notification sequence counter
    m/...                            store metadata (actors.store.codec: epoch, write log)

Ids are UTF-8 without NUL; the NUL after an owner id ends it, so ``ab`` sorts
before ``abc`` and a scan of ``ab``'s rows never strays into ``abc``'s. Sequence
numbers and times are unsigned big-endian, so byte order is numeric order.
"""

from __future__ import annotations

from typing import Final

from actors.store.codec import CodecError, decode_u64, encode_u64, id_bytes

__all__ = [
    "ACCOUNT_NOTIFICATION_PREFIX",
    "ACCOUNT_PREFIX",
    "AGEING_PREFIX",
    "ANSWER_PREFIX",
    "BILLING_PREFIX",
    "IDEMPOTENCY_PREFIX",
    "INVOICE_INDEX_PREFIX",
    "INVOICE_PREFIX",
    "LEDGER_PREFIX",
    "NOTIFICATION_ID_PREFIX",
    "NOTIFICATION_PREFIX",
    "NOTIFICATION_SEQ_KEY",
    "OUTBOX_PREFIX",
    "REFUSED_PREFIX",
    "RESERVATION_PREFIX",
    "RISK_PREFIX",
    "SPONSOR_AMOUNT_PREFIX",
    "account_key",
    "answer_key",
    "idempotency_key",
    "key_after",
    "ledger_key",
    "ledger_prefix",
    "prefix_end",
    "prefixed",
    "prefixed_seq",
    "split_ledger_key",
]

ACCOUNT_PREFIX: Final = b"a/"
LEDGER_PREFIX: Final = b"l/"
IDEMPOTENCY_PREFIX: Final = b"i/"
BILLING_PREFIX: Final = b"b/"
INVOICE_PREFIX: Final = b"v/"
INVOICE_INDEX_PREFIX: Final = b"V/"
AGEING_PREFIX: Final = b"o/"
NOTIFICATION_PREFIX: Final = b"N/"
ACCOUNT_NOTIFICATION_PREFIX: Final = b"n/"
NOTIFICATION_ID_PREFIX: Final = b"d/"
RESERVATION_PREFIX: Final = b"r/"
OUTBOX_PREFIX: Final = b"f/"
REFUSED_PREFIX: Final = b"x/"
RISK_PREFIX: Final = b"k/"
SPONSOR_AMOUNT_PREFIX: Final = b"s/"
ANSWER_PREFIX: Final = b"e/"
NOTIFICATION_SEQ_KEY: Final = b"c/notifications"


def prefixed(prefix: bytes, *parts: str) -> bytes:
    """``prefix`` + the ids joined by NUL (the last one not NUL-terminated)."""
    return prefix + b"\x00".join(id_bytes("id", p) for p in parts)


def prefixed_seq(prefix: bytes, owner: str | None, seq: int) -> bytes:
    """``prefix[<owner>\\0]<seq u64>``: rows in sequence order (per owner)."""
    head = prefix if owner is None else prefix + id_bytes("id", owner) + b"\x00"
    return head + encode_u64(seq)


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with ``prefix`` (a scan's end)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def key_after(key: bytes) -> bytes:
    """The smallest key greater than ``key`` (to resume a scan)."""
    return key + b"\x00"


def account_key(account_id: str) -> bytes:
    """Key of an account's state row."""
    return ACCOUNT_PREFIX + id_bytes("account id", account_id)


def ledger_prefix(account_id: str) -> bytes:
    """Prefix of all ledger rows of one account (for a prefix scan)."""
    return LEDGER_PREFIX + id_bytes("account id", account_id) + b"\x00"


def ledger_key(account_id: str, seq: int) -> bytes:
    """Key of ledger row number ``seq`` of an account."""
    return ledger_prefix(account_id) + encode_u64(seq)


def split_ledger_key(key: bytes) -> tuple[str, int]:
    """``(account_id, seq)`` of a key built by :func:`ledger_key`."""
    if not key.startswith(LEDGER_PREFIX) or len(key) < len(LEDGER_PREFIX) + 10:
        raise CodecError(f"not a ledger key: {key!r}")
    body, seq = key[len(LEDGER_PREFIX) : -8], key[-8:]
    if not body.endswith(b"\x00"):
        raise CodecError(f"not a ledger key: {key!r}")
    return body[:-1].decode("utf-8"), decode_u64(seq)


def answer_key(request_id: str) -> bytes | None:
    """Key of the stored answer of an online event, or None for an id no key can hold
    (empty, or with a NUL: such an id was never stored either)."""
    if not request_id or "\x00" in request_id:
        return None
    return ANSWER_PREFIX + request_id.encode()


def idempotency_key(key: str) -> bytes:
    """Key of the idempotency mark of a ``record_id`` or ``request_id``."""
    return IDEMPOTENCY_PREFIX + id_bytes("idempotency key", key)
