"""Byte encodings for shard databases: fixed-width integers and typed keys.

Values
    Amounts are ``int`` micro-units (see :mod:`billing.money`) stored as **8-byte
    big-endian two's complement** (:func:`encode_i64`): a signed 64-bit field
    holds 9.2 trillion currency units, far above any balance, and every other
    petribill component (proto ``sint64``, the ledger) uses the same range.
    Totals that add up many accounts (revenue counters, reconciliation sums) use
    16 bytes (:func:`encode_i128`) so they can never overflow. Decoding checks the
    width, so a value written at one width is never read at another.

Keys
    Every key starts with a one-letter type and ``/`` so that a prefix scan
    visits exactly one kind of row and the kinds sort apart::

        a/<account>                  account state
        l/<account>\\x00<seq u64>     ledger posting, in sequence order per account
        i/<idempotency key>          idempotency mark (record_id / request_id)
        m/<name>                     shard metadata, e.g. m/epoch

    Account ids and idempotency keys are UTF-8 without NUL; the NUL after the
    account in ledger keys ends the id, so ``ab`` sorts before ``abc`` and a scan
    of ``ab``'s ledger never strays into ``abc``'s. Sequence numbers are unsigned
    big-endian, so byte order is numeric order.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ACCOUNT_PREFIX",
    "COMMITS_KEY",
    "EPOCH_KEY",
    "IDEMPOTENCY_PREFIX",
    "LEDGER_PREFIX",
    "META_PREFIX",
    "WRITE_LOG_PREFIX",
    "CodecError",
    "account_key",
    "decode_i64",
    "decode_i128",
    "decode_u64",
    "encode_i64",
    "encode_i128",
    "encode_u64",
    "id_bytes",
    "idempotency_key",
    "ledger_key",
    "ledger_prefix",
    "split_ledger_key",
]

ACCOUNT_PREFIX: Final = b"a/"
LEDGER_PREFIX: Final = b"l/"
IDEMPOTENCY_PREFIX: Final = b"i/"
META_PREFIX: Final = b"m/"
EPOCH_KEY: Final = b"m/epoch"
COMMITS_KEY: Final = b"m/commits"  # batches ever committed (u64)
WRITE_LOG_PREFIX: Final = b"m/wlog/"  # + epoch u64 -> first, last commit number (u64 each)

_I64_MIN: Final = -(1 << 63)
_I64_MAX: Final = (1 << 63) - 1
_I128_MIN: Final = -(1 << 127)
_I128_MAX: Final = (1 << 127) - 1
_U64_MAX: Final = (1 << 64) - 1


class CodecError(ValueError):
    """Raised when a value is out of range for its width, a stored value has the
    wrong length, or an id cannot be part of a key (empty, or contains NUL)."""


def encode_i64(value: int) -> bytes:
    """8-byte big-endian two's complement of a signed 64-bit ``value``."""
    if not _I64_MIN <= value <= _I64_MAX:
        raise CodecError(f"{value} does not fit a signed 64-bit field")
    return value.to_bytes(8, "big", signed=True)


def decode_i64(data: bytes) -> int:
    """Inverse of :func:`encode_i64`; refuses any length other than 8."""
    if len(data) != 8:
        raise CodecError(f"i64 field must be 8 bytes, got {len(data)}")
    return int.from_bytes(data, "big", signed=True)


def encode_i128(value: int) -> bytes:
    """16-byte big-endian two's complement of a signed 128-bit ``value``."""
    if not _I128_MIN <= value <= _I128_MAX:
        raise CodecError(f"{value} does not fit a signed 128-bit field")
    return value.to_bytes(16, "big", signed=True)


def decode_i128(data: bytes) -> int:
    """Inverse of :func:`encode_i128`; refuses any length other than 16."""
    if len(data) != 16:
        raise CodecError(f"i128 field must be 16 bytes, got {len(data)}")
    return int.from_bytes(data, "big", signed=True)


def encode_u64(value: int) -> bytes:
    """8-byte big-endian unsigned ``value``; byte order equals numeric order."""
    if not 0 <= value <= _U64_MAX:
        raise CodecError(f"{value} does not fit an unsigned 64-bit field")
    return value.to_bytes(8, "big", signed=False)


def decode_u64(data: bytes) -> int:
    """Inverse of :func:`encode_u64`; refuses any length other than 8."""
    if len(data) != 8:
        raise CodecError(f"u64 field must be 8 bytes, got {len(data)}")
    return int.from_bytes(data, "big", signed=False)


def id_bytes(kind: str, value: str) -> bytes:
    """An id as key bytes: UTF-8, non-empty, no NUL (NUL separates key parts)."""
    data = value.encode("utf-8")
    if not data or b"\x00" in data:
        raise CodecError(f"{kind} must be non-empty and contain no NUL: {value!r}")
    return data


def account_key(account_id: str) -> bytes:
    """Key of an account's state row."""
    return ACCOUNT_PREFIX + id_bytes("account id", account_id)


def ledger_prefix(account_id: str) -> bytes:
    """Prefix of all ledger postings of one account (for a prefix scan)."""
    return LEDGER_PREFIX + id_bytes("account id", account_id) + b"\x00"


def ledger_key(account_id: str, seq: int) -> bytes:
    """Key of posting number ``seq`` of an account."""
    return ledger_prefix(account_id) + encode_u64(seq)


def split_ledger_key(key: bytes) -> tuple[str, int]:
    """``(account_id, seq)`` of a key built by :func:`ledger_key`."""
    if not key.startswith(LEDGER_PREFIX) or len(key) < len(LEDGER_PREFIX) + 10:
        raise CodecError(f"not a ledger key: {key!r}")
    body, seq = key[len(LEDGER_PREFIX) : -8], key[-8:]
    if not body.endswith(b"\x00"):
        raise CodecError(f"not a ledger key: {key!r}")
    return body[:-1].decode("utf-8"), decode_u64(seq)


def idempotency_key(key: str) -> bytes:
    """Key of the idempotency mark of a ``record_id`` or ``request_id``."""
    return IDEMPOTENCY_PREFIX + id_bytes("idempotency key", key)
