"""Cluster-wide uniqueness of record ids: one claim per id, on the partition its hash names.

A partition charges its records on the account shards of their subscribers,
and a shard's idempotency marks see only that shard. The same ``record_id``
sent again with another subscriber's number would land on another shard and
be charged twice. So before a partition charges a record it **claims** the
id on the partition that owns the id (``routing.partition_of_record``: the
id's own hash decides), durably, with the record's content and the account
it is about to charge:

- a new id is claimed (``NEW``);
- the same id with the same content and account is a retry (``SAME``): the
  shard's marks answer it with the stored result;
- the same content charged to another account (the number moved between the
  two submissions) is answered as that first account's (``OTHER_ACCOUNT``):
  the record goes to that account's shard, whose mark answers the stored
  result, or which charges it there if the first attempt stopped between its
  claim and its charge;
- other content is ``CONFLICT`` naming the first field that differs: the
  record is refused, whatever shard it would have reached.

Claims are committed (one synced batch per call) before the caller charges
anything, so no acknowledged charge exists without its claim. Cost per usage
batch: one claim call per partition its ids hash to (made concurrently), one
multi-key read and at most one synced write on each. The claim store has its
own lock: claims arrive from other partitions while this one may be busy with
a batch of its own (which claims on them), so a claim never waits for the
unit's lock — two partitions claiming on each other cannot deadlock.
"""

from __future__ import annotations

import enum
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from actors.store.codec import id_bytes
from actors.store.storage import Batch, ShardStore
from billing.records import CONTENT_FIELDS

__all__ = ["CLAIM_PREFIX", "Claim", "ClaimOutcome", "ClaimStore", "Claimed", "claim_key"]

CLAIM_PREFIX: Final = b"i/"


def claim_key(record_id: str) -> bytes:
    """``i/<record_id>``: the claim of one record id."""
    return CLAIM_PREFIX + id_bytes("record id", record_id)


class ClaimOutcome(enum.StrEnum):
    NEW = "new"
    SAME = "same"
    OTHER_ACCOUNT = "other_account"
    CONFLICT = "conflict"


@dataclass(frozen=True, slots=True)
class Claim:
    """A record id, what the record says (``UsageRecord.content_key()``) and the account
    the claiming partition is about to charge."""

    record_id: str
    content: tuple[Any, ...]
    account_id: str


@dataclass(frozen=True, slots=True)
class Claimed:
    """The answer to one claim: ``account_id`` is the account that holds the id (the
    first claimer's), ``field`` the first content field that differs (``CONFLICT``)."""

    outcome: ClaimOutcome
    account_id: str
    field: str = ""


def _stored(content: tuple[Any, ...], account_id: str) -> bytes:
    values = [getattr(v, "value", v) for v in content]  # Service is a StrEnum
    return json.dumps([values, account_id], separators=(",", ":")).encode()


def _loaded(raw: bytes) -> tuple[list[Any], str]:
    values, account_id = json.loads(raw)
    return values, account_id


class ClaimStore:
    """The claims of the record ids one partition owns, in that partition's store."""

    def __init__(self, store: ShardStore) -> None:
        self._store = store
        self._lock = threading.Lock()

    @property
    def lock(self) -> threading.Lock:
        """Held by every claim, of one id or of a column batch (``claim_columns``)."""
        return self._lock

    def claim(self, claims: Sequence[Claim]) -> list[Claimed]:
        """Claim each id (see the module); one synced commit for the new ones."""
        with self._lock:
            answers: list[Claimed] = []
            staged: dict[str, tuple[list[Any], str]] = {}
            batch = Batch()
            for claim in claims:
                values = [getattr(v, "value", v) for v in claim.content]
                held = staged.get(claim.record_id)
                if held is None:
                    raw = self._store.get(claim_key(claim.record_id))
                    held = None if raw is None else _loaded(raw)
                if held is None:
                    staged[claim.record_id] = (values, claim.account_id)
                    batch.put(claim_key(claim.record_id), _stored(claim.content, claim.account_id))
                    answers.append(Claimed(ClaimOutcome.NEW, claim.account_id))
                    continue
                first, holder = held
                if first != values:
                    differing = [
                        n for n, a, b in zip(CONTENT_FIELDS, first, values, strict=True) if a != b
                    ]
                    field = differing[0] if differing else "content"
                    answers.append(Claimed(ClaimOutcome.CONFLICT, holder, field))
                elif holder != claim.account_id:
                    answers.append(Claimed(ClaimOutcome.OTHER_ACCOUNT, holder))
                else:
                    answers.append(Claimed(ClaimOutcome.SAME, holder))
            if batch.records:
                self._store.commit(batch)
            return answers

    def holder(self, record_id: str) -> str | None:
        """The account an id was claimed for, if it was (for audits and tests)."""
        raw = self._store.get(claim_key(record_id))
        return None if raw is None else _loaded(raw)[1]
