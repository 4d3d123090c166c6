"""Which unit owns what: stable hashing of accounts to shards and MSISDNs to partitions.

``zlib.crc32`` is used because it is stable across processes, machines and
Python versions; the built-in ``hash()`` is salted per process.
"""

from __future__ import annotations

import zlib

__all__ = [
    "partition_id",
    "partition_of",
    "partition_of_record",
    "shard_id",
    "shard_of",
    "unit_kind",
]


def shard_id(index: int) -> str:
    """The unit id of account shard ``index``: ``acct-07``."""
    return f"acct-{index:02d}"


def partition_id(index: int) -> str:
    """The unit id of rating partition ``index``: ``part-3``."""
    return f"part-{index}"


def shard_of(account_id: str, shards: int) -> str:
    """The account shard that owns ``account_id``."""
    return shard_id(zlib.crc32(account_id.encode()) % shards)


def partition_of(msisdn: str, partitions: int) -> str:
    """The rating partition that owns subscriber ``msisdn`` (E.164 digits)."""
    return partition_id(zlib.crc32(msisdn.encode()) % partitions)


def partition_of_record(record_id: str, partitions: int) -> str:
    """The rating partition that owns the claim of ``record_id`` (``actors.partition.claims``):
    the id's own hash decides, whichever subscriber the record names."""
    return partition_id(zlib.crc32(record_id.encode()) % partitions)


def unit_kind(unit_id: str) -> str:
    """``"account"`` or ``"partition"``, from a unit id."""
    if unit_id.startswith("acct-"):
        return "account"
    if unit_id.startswith("part-"):
        return "partition"
    raise ValueError(f"not a unit id: {unit_id!r}")
