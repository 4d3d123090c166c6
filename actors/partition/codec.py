"""Byte layout of a rating partition's database (``part-N``): keys, counters, record JSON.

A partition's store is a :class:`actors.store.storage.ShardStore` like an account
shard's, with its own kinds of rows (one letter and ``/``, as in
:mod:`actors.store.codec`, so prefix scans visit one kind)::

    d/<msisdn>                          directory entry (JSON)
    q/<request_id>                      idempotency mark of a directory request (JSON)
    r/<kind>/<key>                      reject-store entry (JSON); kind R record, C conflict,
                                        L unreadable line (key ``<source>\\x00<line u64>``)
    c/totals                            reconciliation counters of the whole partition
    s/<source_id>                       counters and collection offset of one source (file)

Counters are five unsigned 64-bit big-endian fields, ``received``, ``rated``,
``rejected``, ``duplicates``, ``offset`` (40 bytes); ``c/totals`` leaves the
offset 0. The values are absolute, not deltas: the partition is the only
writer of its store (epoch-fenced), keeps the counters in memory and writes
the new values in the same batch as the effects they count.

Records are stored as JSON (only in the reject store, which is off the hot
path and meant to be read by people).
"""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any, Final

from actors.store.codec import CodecError, decode_u64, encode_u64, id_bytes
from billing.preprocess import Reconciliation
from billing.records import Service, UsageRecord

__all__ = [
    "DIRECTORY_PREFIX",
    "REJECT_PREFIX",
    "REQUEST_PREFIX",
    "SOURCE_PREFIX",
    "TOTALS_KEY",
    "decode_counts",
    "directory_key",
    "encode_counts",
    "json_bytes",
    "record_from_json",
    "record_to_json",
    "request_key",
    "source_key",
]

DIRECTORY_PREFIX: Final = b"d/"
REQUEST_PREFIX: Final = b"q/"
REJECT_PREFIX: Final = b"r/"
SOURCE_PREFIX: Final = b"s/"
TOTALS_KEY: Final = b"c/totals"

_RECORD_FIELDS: Final = tuple(f.name for f in fields(UsageRecord))


def directory_key(msisdn: str) -> bytes:
    """Key of the directory entry of ``msisdn``."""
    return DIRECTORY_PREFIX + id_bytes("msisdn", msisdn)


def request_key(request_id: str) -> bytes:
    """Key of the idempotency mark of a directory ``request_id``."""
    return REQUEST_PREFIX + id_bytes("request id", request_id)


def source_key(source_id: str) -> bytes:
    """Key of the counters and offset of collection source ``source_id``."""
    return SOURCE_PREFIX + id_bytes("source id", source_id)


def encode_counts(counts: Reconciliation, offset: int = 0) -> bytes:
    """The 40-byte row of ``counts`` and a collection ``offset``."""
    return b"".join(
        encode_u64(v)
        for v in (counts.received, counts.rated, counts.rejected, counts.duplicates, offset)
    )


def decode_counts(data: bytes) -> tuple[Reconciliation, int]:
    """Inverse of :func:`encode_counts`; refuses any length other than 40."""
    if len(data) != 40:
        raise CodecError(f"counter row must be 40 bytes, got {len(data)}")
    received, rated, rejected, duplicates, offset = (
        decode_u64(data[i : i + 8]) for i in range(0, 40, 8)
    )
    counts = Reconciliation(
        received=received, rated=rated, rejected=rejected, duplicates=duplicates
    )
    return counts, offset


def json_bytes(value: object) -> bytes:
    """Compact, key-sorted JSON, so equal values give equal bytes."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8")


def record_to_json(record: UsageRecord) -> dict[str, Any]:
    """A usage record as a JSON object (every field, ``service`` by its value)."""
    out: dict[str, Any] = {name: getattr(record, name) for name in _RECORD_FIELDS}
    out["service"] = record.service.value
    return out


def record_from_json(data: dict[str, Any]) -> UsageRecord:
    """Inverse of :func:`record_to_json`; unknown keys are a :class:`CodecError`."""
    unknown = set(data) - set(_RECORD_FIELDS)
    if unknown:
        raise CodecError(f"unknown usage record fields {sorted(unknown)}")
    values = dict(data)
    values["service"] = Service(values["service"])
    return UsageRecord(**values)
