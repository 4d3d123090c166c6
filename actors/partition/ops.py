"""The operations of a rating partition: the closed set a caller may ask of one.

Each is a frozen value (see :mod:`actors.op`) whose ``apply`` names the engine
method that runs it. ``Submit`` and ``Reprocess`` charge account shards: the
host lends them its way to the shards (``Env.charge``), here or on other nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from actors.op import Env, Op, R
from actors.shard.ops import ChargeColumns
from billing.accounts import SponsorRule, Subscription
from billing.preprocess import Reconciliation
from billing.readers import Reject
from billing.records import UsageRecord

if TYPE_CHECKING:
    from actors.partition.claims import Claim, Claimed
    from actors.partition.directory import DirectoryAnswer, DirectoryEntry
    from actors.partition.engine import RatingPartition, SourceProgress
    from actors.partition.rejects import RejectEntry
    from actors.partition.results import RecordResult

__all__ = [
    "ChangeSubscriberPlan",
    "ClaimColumns",
    "ClaimIds",
    "CountRejects",
    "Counters",
    "DirectoryHolders",
    "GetSubscriber",
    "ListRejects",
    "MoveNumber",
    "PartitionOp",
    "PutSubscriber",
    "ReleaseNumber",
    "Reprocess",
    "Submit",
    "SubmitColumns",
    "SubmitColumnsGroup",
]


class Reach:
    """How a partition's batch reaches other units: the account shards it charges and the
    partitions that own its record ids' claims (through the host's :class:`Env`)."""

    __slots__ = ("_at_s", "_env")

    def __init__(self, env: Env, at_s: int) -> None:
        self._env, self._at_s = env, at_s

    def charge(self, shard: str, items: list[Any]) -> Sequence[Any]:
        return self._env.charge(shard, items, self._at_s)

    def claim(self, claims: dict[str, list[Claim]]) -> dict[str, Any]:
        """``ClaimIds`` on each owner partition: its answers, or the exception it raised."""
        return self._env.fan_out({unit: ClaimIds(claims=c) for unit, c in claims.items()})

    def claim_columns(self, batches: dict[str, pa.RecordBatch]) -> dict[str, Any]:
        """``ClaimColumns`` on each owner partition, concurrently: per partition its answer
        columns, or the exception it raised."""
        return self._env.fan_out({unit: ClaimColumns(batch=b) for unit, b in batches.items()})

    def charge_columns(self, calls: dict[str, ChargeColumns]) -> dict[str, Any]:
        """Each shard's ``ChargeColumns``, concurrently where they are elsewhere: per shard
        its answer, or the exception it raised."""
        return self._env.fan_out(calls)


class PartitionOp(Op[R]):
    """An operation of a rating partition."""

    __slots__ = ()
    kind: ClassVar[str] = "partition"

    def apply(self, engine: RatingPartition, env: Env) -> R:
        raise NotImplementedError


@dataclass(frozen=True, slots=True, kw_only=True)
class Submit(PartitionOp[list["RecordResult"]]):
    """Settle a batch of records and reader rejects: one result per item, in order,
    one synced commit of rejects and counters (and ``source``'s offset, if given)."""

    items: Sequence[UsageRecord | Reject]
    at_s: int
    source: SourceProgress | None = None

    def apply(self, engine: RatingPartition, env: Env) -> list[RecordResult]:
        return engine.submit(self, Reach(env, self.at_s))


@dataclass(frozen=True, slots=True, kw_only=True)
class SubmitColumns(PartitionOp[pa.RecordBatch]):
    """The bulk path's :class:`Submit`: the same per-record answers and effects, with the
    records as columns and the answers as columns (``actors.partition.bulk``).

    ``usage`` (``billing.columns.USAGE_SCHEMA``) holds the readable records; the call's
    items are those rows and the ``rejects`` (lines or records the gateway could not
    read), each reject at its place among the items and the rows in the other places
    (``positions``, the place of each row; ``None``: the rows are the items, in order).
    The answer is one row per item, in item order (``actors.partition.outcomes``).
    """

    usage: pa.RecordBatch
    at_s: int
    positions: NDArray[np.int64] | None = None
    rejects: Sequence[tuple[int, Reject]] = ()
    source: SourceProgress | None = None

    def apply(self, engine: RatingPartition, env: Env) -> pa.RecordBatch:
        return engine.submit_columns(self, Reach(env, self.at_s))

    @staticmethod
    def coalesce(parts: Sequence[SubmitColumns]) -> SubmitColumnsGroup:
        """The bulk calls bound for one partition as one operation (``actors.coalesce``)."""
        return SubmitColumnsGroup(parts=tuple(parts))


@dataclass(frozen=True, slots=True, kw_only=True)
class SubmitColumnsGroup(PartitionOp[list["pa.RecordBatch | Exception"]]):
    """Several :class:`SubmitColumns` in arrival order, settled in as few calls as their
    answers allow (``actors.partition.bulk_group``); per part its answer columns, or
    the exception it raised."""

    parts: tuple[SubmitColumns, ...]

    def apply(self, engine: RatingPartition, env: Env) -> list[pa.RecordBatch | Exception]:
        at_s = self.parts[0].at_s if self.parts else 0
        return engine.submit_column_group(self, Reach(env, at_s))


@dataclass(frozen=True, slots=True, kw_only=True)
class Reprocess(PartitionOp[list["RecordResult"]]):
    """Rate and charge stored rejected records again; one result per id, in order."""

    record_ids: Sequence[str]
    at_s: int

    def apply(self, engine: RatingPartition, env: Env) -> list[RecordResult]:
        return engine.reprocess(self, Reach(env, self.at_s))


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimIds(PartitionOp[list["Claimed"]]):
    """Claim record ids this partition owns, for the partitions about to charge them
    (``actors.partition.claims``); never waits for the unit's lock."""

    claims: Sequence[Claim]
    serialised: ClassVar[bool] = False

    def apply(self, engine: RatingPartition, env: Env) -> list[Claimed]:
        return engine.claims.claim(self.claims)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimColumns(PartitionOp[pa.RecordBatch]):
    """:class:`ClaimIds` for a column batch of distinct ids
    (``actors.partition.claim_columns``); never waits for the unit's lock."""

    batch: pa.RecordBatch
    serialised: ClassVar[bool] = False

    def apply(self, engine: RatingPartition, env: Env) -> pa.RecordBatch:
        return engine.claim_columns(self.batch)


@dataclass(frozen=True, slots=True, kw_only=True)
class PutSubscriber(PartitionOp["DirectoryAnswer"]):
    """Create or replace ``msisdn``'s directory entry (idempotent by ``request_id``)."""

    request_id: str
    msisdn: str
    account_id: str
    subscriptions: Sequence[Subscription]
    sponsor_rules: Sequence[SponsorRule] = ()

    def apply(self, engine: RatingPartition, env: Env) -> DirectoryAnswer:
        return engine.put_subscriber(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChangeSubscriberPlan(PartitionOp["DirectoryAnswer"]):
    """Append a subscription of ``plan_id`` from ``start_s``; with ``account_id``, only
    while ``msisdn`` belongs to that account (idempotent by ``request_id``)."""

    request_id: str
    msisdn: str
    plan_id: str
    start_s: int
    account_id: str = ""

    def apply(self, engine: RatingPartition, env: Env) -> DirectoryAnswer:
        return engine.change_plan(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class MoveNumber(PartitionOp["DirectoryAnswer"]):
    """Hand ``msisdn`` from ``from_account`` to ``to_account`` from ``at_s`` on, with the new
    holder's plans and sponsor rules (idempotent by ``request_id``)."""

    request_id: str
    msisdn: str
    from_account: str
    to_account: str
    subscriptions: Sequence[Subscription]
    sponsor_rules: Sequence[SponsorRule] = ()
    at_s: int
    at_from_clock: bool = False

    def apply(self, engine: RatingPartition, env: Env) -> DirectoryAnswer:
        return engine.directory.move_number(
            self.request_id, self.msisdn, self.from_account, self.to_account,
            self.subscriptions, self.sponsor_rules, self.at_s, self.at_from_clock,
        )  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseNumber(PartitionOp["DirectoryAnswer"]):
    """Undo the entry the ``PutSubscriber`` ``put_request_id`` created for ``account_id``
    (a CreateAccount the account shard refused); idempotent."""

    put_request_id: str
    msisdn: str
    account_id: str

    def apply(self, engine: RatingPartition, env: Env) -> DirectoryAnswer:
        return engine.directory.release_number(self.put_request_id, self.msisdn, self.account_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class GetSubscriber(PartitionOp["DirectoryEntry | None"]):
    msisdn: str

    def apply(self, engine: RatingPartition, env: Env) -> DirectoryEntry | None:
        return engine.get_subscriber(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class DirectoryHolders(PartitionOp[frozenset[str]]):
    """The accounts holding a number in this partition's directory (for ``reconcile``:
    each must exist on its shard, or that shard lost data)."""

    read: ClassVar[bool] = True

    def apply(self, engine: RatingPartition, env: Env) -> frozenset[str]:
        return engine.directory.holders()


@dataclass(frozen=True, slots=True, kw_only=True)
class Counters(PartitionOp[Reconciliation]):
    """Reconciliation of the whole partition, or of one collection source. A query of
    committed state (the counters in memory are replaced only after a commit), so a
    reconcile reads it without waiting for the partition's usage batch in flight."""

    source_id: str | None = None
    read: ClassVar[bool] = True

    def apply(self, engine: RatingPartition, env: Env) -> Reconciliation:
        return engine.counters(self.source_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class ListRejects(PartitionOp[list["RejectEntry"]]):
    """Up to ``limit`` stored rejects in store order, optionally of one ``reason``, after
    the row key ``after`` (a page's last ``RejectEntry.store_key()``). A query of
    committed rows (a store scan), run beside the partition's usage batches."""

    limit: int
    reason: str | None = None
    after: bytes | None = None
    read: ClassVar[bool] = True

    def apply(self, engine: RatingPartition, env: Env) -> list[RejectEntry]:
        return engine.list_rejects(self.limit, reason=self.reason, after=self.after)


@dataclass(frozen=True, slots=True, kw_only=True)
class CountRejects(PartitionOp[int]):
    """How many stored rejects there are, optionally of one ``reason`` (a full scan of
    committed rows: run beside the partition's usage batches, not behind them)."""

    reason: str | None = None
    read: ClassVar[bool] = True

    def apply(self, engine: RatingPartition, env: Env) -> int:
        counts = engine.rejects.counts_by_reason()
        return sum(counts.values()) if self.reason is None else counts.get(self.reason, 0)
