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
    The store's own keys live under ``m/`` (the epoch, the commit count and the
    write log); a unit's rows are laid out by its engine (an account shard's in
    :mod:`actors.shard.keys`). Ids in keys are UTF-8 without NUL
    (:func:`id_bytes`), so NUL can separate key parts.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "COMMITS_KEY",
    "EPOCH_KEY",
    "META_PREFIX",
    "WRITE_LOG_PREFIX",
    "CodecError",
    "decode_i64",
    "decode_i128",
    "decode_u64",
    "encode_i64",
    "encode_i128",
    "encode_u64",
    "id_bytes",
]

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
