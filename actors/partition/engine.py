"""RatingPartition: the usage data plane of one partition unit (``part-3``), plain Python.

A partition owns the subscriber directory of its MSISDNs, rates their usage,
hands the rated records to the account shards through an injected
:data:`ChargeFn`, and keeps the reject store, the reconciliation counters and
the collection offsets of files (docs/architecture.md, "Write path").

Recovery contract
    *Durable.* Directory entries and their request marks (each write one synced
    batch); per :meth:`RatingPartition.submit` / :meth:`~RatingPartition.reprocess`
    call, one synced batch holding the reject-store changes, the counters
    (totals and per source) and, for a file chunk, the new collection offset.
    Nothing of a call is written when its commit fails.

    *Idempotent.* Usage by ``record_id``: exactly-once charging rests on the
    shards' durable marks, so resubmitting any record is safe (a charged one
    comes back ``duplicate``, a changed one ``exists_with_different_content``).
    Directory writes by ``request_id``. A rejected record resubmitted is
    rejected again under the same reject-store key (replaced, not piled up).

    *Never acknowledged without a commit.* A record is answered ``charged``
    (or ``charged_as_debt`` / ``charged_over_limit`` / ``duplicate``) only from
    the shard's own answer, which the shard gives after its synced commit. If
    ``charge`` raises for a shard, that shard's records are ``unavailable``; a
    rejected record that does not fit the bounded reject store is
    ``resource_exhausted``. Both are retryable, are not counted, and do not
    advance a file offset.

    *After an error.* A retryable status: resubmit those records with the same
    ids (for a file chunk, with the same :class:`SourceProgress`; the offset
    moves once every item of the chunk is settled). An exception from
    ``submit`` (``StaleEpoch``: this partition was taken over; an I/O error):
    nothing of the call is acknowledged; resubmit the whole call to the current
    owner. Records the shards had charged then come back ``duplicate``, so
    ``received == rated + rejected + duplicates`` still holds exactly, but such
    a record counts as a duplicate rather than rated (the shards' marks are the
    authority on what was charged; the auditor compares against them).

Counting
    Every item of a ``submit`` call that gets a final status counts once as
    received and once as rated (charged in any way), rejected (rejects,
    conflicts) or duplicates. Reprocessing a stored reject is not a new
    reception: a reprocessed record now charged moves from rejected to rated
    (or to duplicates, if a shard had charged it meanwhile).

Sponsored usage
    Records are routed by the subscriber's account shard. That shard decides
    sponsorship (``billing.sponsor``) and forwards the sponsor's half, so one
    place decides and nothing is charged twice; the result names the sponsor
    as ``charged_account_id``.

Layout: per-record results and the mapping of shard answers are in
:mod:`actors.partition.results`, the directory-rating-charging pipeline in
:mod:`actors.partition.settle`; this module stages rejects and counters and
commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from actors.partition import ops
from actors.partition.bulk import BulkReach, submit_columns
from actors.partition.bulk_group import settle_group
from actors.partition.claim_columns import claim_rows
from actors.partition.claims import Claim, ClaimStore
from actors.partition.codec import (
    SOURCE_PREFIX,
    TOTALS_KEY,
    decode_counts,
    encode_counts,
    source_key,
)
from actors.partition.directory import Directory, DirectoryAnswer, DirectoryEntry
from actors.partition.rejects import RejectEntry, RejectKind, RejectStore, Staging
from actors.partition.results import (
    DUPLICATES,
    RATED,
    REJECTED,
    RETRYABLE,
    ChargeFn,
    ChargeOnly,
    Reach,
    RecordResult,
    RecordStatus,
    Settled,
    ShardResult,
    Tally,
    apply_row,
    reader_reject,
    reject_entry,
)
from actors.partition.settle import settle
from actors.routing import partition_of, partition_of_record
from actors.store.storage import Batch, ShardStore
from billing.accounts import Result
from billing.invariant import invariant
from billing.preprocess import CONTENT_FIELDS, Reconciliation
from billing.rated import RatedRecord
from billing.rating import Catalogue
from billing.readers import Reject
from billing.records import UsageRecord

__all__ = [
    "RETRYABLE",
    "BatchTooLarge",
    "ChargeFn",
    "PartitionConfig",
    "RatingPartition",
    "RecordResult",
    "RecordStatus",
    "ShardResult",
    "SourceProgress",
]


class BatchTooLarge(ValueError):
    """Raised by :meth:`RatingPartition.submit` for more than ``batch_records_max`` items."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceProgress:
    """A file chunk: every item of the call lies at or before ``offset`` in ``source_id``
    (the host's unit, e.g. the last line number read)."""

    source_id: str
    offset: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionConfig:
    """``shards``: account shards to route to; ``partitions``: when set, directory
    writes for MSISDNs of other partitions are refused."""

    shards: int
    partitions: int | None = None
    rejects_max: int = 100_000
    directory_cache_entries_max: int = 100_000
    batch_records_max: int = 100_000


class RatingPartition:
    """One partition unit over its own :class:`ShardStore` (not thread-safe)."""

    def __init__(
        self, store: ShardStore, *, unit_id: str, catalogue: Catalogue, config: PartitionConfig
    ) -> None:
        invariant(config.shards >= 1, f"shards must be >= 1, got {config.shards}")
        self.store, self.unit_id, self.catalogue, self.config = store, unit_id, catalogue, config
        self.directory = Directory(store, cache_entries_max=config.directory_cache_entries_max)
        self.rejects = RejectStore(store, entries_max=config.rejects_max)
        self.claims = ClaimStore(store)
        raw = store.get(TOTALS_KEY)
        self._totals = decode_counts(raw)[0] if raw is not None else Reconciliation()
        self._sources: dict[str, tuple[Reconciliation, int]] = {
            key[len(SOURCE_PREFIX) :].decode(): decode_counts(value)
            for key, value in store.scan_prefix(SOURCE_PREFIX)
        }
        self.shard_memo: dict[str, str] = {}

    @classmethod
    def open(
        cls,
        path: Path | str,
        *,
        epoch: int,
        unit_id: str,
        catalogue: Catalogue,
        config: PartitionConfig,
        resume: bool = False,
    ) -> RatingPartition:
        """Open the unit's store as owner at ``epoch`` (see ``ShardStore.open``) and load it."""
        store = ShardStore.open(path, epoch=epoch, cache_entries_max=0, resume=resume)
        try:
            return cls(store, unit_id=unit_id, catalogue=catalogue, config=config)
        except BaseException:
            store.close()
            raise

    def close(self) -> None:
        """Release the store (and its lock); idempotent."""
        self.store.close()

    def __enter__(self) -> RatingPartition:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_catalogue(self, catalogue: Catalogue) -> None:
        """Rate with ``catalogue`` from the next call on (a tariff reload)."""
        self.catalogue = catalogue

    # -- directory ---------------------------------------------------------------

    def put_subscriber(self, op: ops.PutSubscriber) -> DirectoryAnswer:
        """Create or replace ``msisdn``'s directory entry (idempotent by ``request_id``)."""
        misrouted = self.misrouted(op.msisdn)
        if misrouted:
            return DirectoryAnswer(result=Result.INVALID_ARGUMENT, detail=misrouted)
        return self.directory.put_subscriber(
            op.request_id, op.msisdn, op.account_id, op.subscriptions, op.sponsor_rules
        )

    def change_plan(self, op: ops.ChangeSubscriberPlan) -> DirectoryAnswer:
        """Append a subscription of ``plan_id`` from ``start_s`` (idempotent by ``request_id``);
        with ``account_id``, only while ``msisdn`` belongs to that account."""
        return self.directory.change_plan(
            op.request_id, op.msisdn, op.plan_id, op.start_s, op.account_id
        )

    def get_subscriber(self, op: ops.GetSubscriber) -> DirectoryEntry | None:
        """The directory entry of ``msisdn``, if this partition has one."""
        return self.directory.get(op.msisdn)

    def misrouted(self, msisdn: str) -> str:
        """Why ``msisdn`` is not in this partition's directory when another owns it ("")."""
        partitions = self.config.partitions
        if partitions is None or not msisdn:
            return ""
        owner = partition_of(msisdn, partitions)
        return "" if owner == self.unit_id else f"msisdn {msisdn} belongs to {owner}"

    # -- usage ---------------------------------------------------------------------

    def submit(self, op: ops.Submit, reach: Reach | ChargeFn) -> list[RecordResult]:
        """Settle a batch: one result per item, in order; one synced commit.

        ``items`` are usage records and, from file readers, ``Reject`` values
        (stored as ``malformed``). See the module docstring for what is counted
        and what a caller does with retryable results.
        """
        items, at_s, source = op.items, op.at_s, op.source
        if len(items) > self.config.batch_records_max:
            raise BatchTooLarge(f"{len(items)} items > {self.config.batch_records_max}")
        results: list[RecordResult | None] = [None] * len(items)
        settled: list[Settled | None] = [None] * len(items)
        firsts: dict[str, int] = {}
        repeats: list[tuple[int, int]] = []
        todo: list[int] = []
        for i, item in enumerate(items):
            if isinstance(item, Reject):
                settled[i] = reader_reject(item)
                continue
            j = firsts.setdefault(item.record_id, i)
            if j == i:
                todo.append(i)
                continue
            first = items[j]
            assert isinstance(first, UsageRecord)
            if first.content_key() == item.content_key():
                repeats.append((i, j))
            else:
                differ = [n for n in CONTENT_FIELDS if getattr(item, n) != getattr(first, n)]
                field = differ[0] if differ else "content"
                detail = f"record_id used earlier in this batch with different {', '.join(differ)}"
                result = RecordResult(
                    item.record_id, RecordStatus.EXISTS_WITH_DIFFERENT_CONTENT, field, detail
                )
                settled[i] = (result, REJECTED, RejectKind.CONFLICT, field)
        records: list[UsageRecord] = [items[i] for i in todo]  # type: ignore[misc]
        for i, outcome in zip(todo, self._settle(records, at_s, reach), strict=True):
            settled[i] = outcome
        for i, j in repeats:
            first_outcome = settled[j]
            assert first_outcome is not None
            first_result = first_outcome[0]
            if first_result.retryable:
                settled[i] = (first_result, None, None, None)
            else:
                # The first item's result, as decided, flagged as a replay of it.
                detail = f"repeats item {j} of this batch"
                settled[i] = (
                    first_result._replace(replay=True, detail=detail),
                    DUPLICATES,
                    None,
                    None,
                )
        staging, tally = self.rejects.stage(), Tally()
        source_id = None if source is None else source.source_id
        all_settled = True
        rows, stored = tally.by_source, self.rejects.records()
        for i, done in enumerate(settled):
            assert done is not None
            result, kind, reject_kind, _ = done
            if kind is None:
                results[i] = result
                all_settled = False
                continue
            item = items[i]
            src = source_id or item.source_file
            if reject_kind is None and result.record_id not in stored:
                # Counted inline: nothing to stage (no stored reject of this record to resolve).
                row = rows.get(src)
                if row is None:
                    row = rows[src] = [0, 0, 0, 0]
                row[0] += 1
                row[kind] += 1
                results[i] = result
                continue
            results[i] = result = self.stage(done, item, src, at_s, staging, tally)
            all_settled = all_settled and not result.retryable
        self.commit(staging, tally, source if all_settled else None)
        return results  # type: ignore[return-value]

    def submit_columns(self, op: ops.SubmitColumns, reach: BulkReach) -> pa.RecordBatch:
        """:meth:`submit` for a batch of columns, with the same per-record rules
        (``actors.partition.bulk``): one result row per item, in order; one synced commit."""
        return submit_columns(self, op, reach)

    def submit_column_group(
        self, op: ops.SubmitColumnsGroup, reach: BulkReach
    ) -> list[pa.RecordBatch | Exception]:
        """Several bulk calls, in order, in as few settles as their answers allow
        (``actors.partition.bulk_group``); per call its answer or its exception."""
        return settle_group(self, op.parts, reach)

    def claim_columns(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Claim the distinct ids of a column batch (``actors.partition.claim_columns``),
        under the claim store's lock like :meth:`ClaimStore.claim`."""
        with self.claims.lock:
            return claim_rows(self.store, batch)

    def reprocess(self, op: ops.Reprocess, reach: Reach | ChargeFn) -> list[RecordResult]:
        """Rate and charge stored rejected records again (e.g. after their account was
        created); those now charged leave the store. One result per id, in order."""
        record_ids, at_s = op.record_ids, op.at_s
        entries: dict[str, RejectEntry] = {}
        for record_id in record_ids:
            entry = self.rejects.get(RejectKind.RECORD, record_id) if record_id else None
            if entry is not None and entry.record is not None:
                entries[record_id] = entry
        records = [e.record for e in entries.values() if e.record is not None]
        by_id = dict(zip(entries, self._settle(records, at_s, reach), strict=True))
        staging, tally = self.rejects.stage(), Tally()
        answers: dict[str, RecordResult] = {}
        for record_id, outcome in by_id.items():
            entry = entries[record_id]
            result, kind, reject_kind, _code = outcome
            if kind in (RATED, DUPLICATES):
                staging.delete(RejectKind.RECORD, record_id)
                tally.add(entry.source_id, REJECTED, received=0, step=-1)
                tally.add(entry.source_id, kind, received=0)
            elif reject_kind is not None:
                staging.delete(RejectKind.RECORD, record_id)
                self.stage(outcome, entry.record, entry.source_id, at_s, staging, None)
            answers[record_id] = result
        self.commit(staging, tally, None)
        missing = RecordResult("", RecordStatus.NOT_FOUND, "not_in_reject_store")
        return [answers.get(rid) or missing._replace(record_id=rid) for rid in record_ids]

    # -- the pipeline ----------------------------------------------------------------

    def _settle(
        self, records: Sequence[UsageRecord], at_s: int, reach: Reach | ChargeFn
    ) -> list[Settled]:
        """Directory, rating, claims and charging of distinct records (:func:`settle`)."""
        reached: Reach = reach if not callable(reach) else ChargeOnly(reach)
        return settle(
            records,
            reach=_ClaimsHere(reached, self.claims, self.unit_id),
            claim_owner=self.claim_owner,
            directory=self.directory,
            catalogue=self.catalogue,
            shards=self.config.shards,
            shard_memo=self.shard_memo,
            unit_id=self.unit_id,
            misrouted=self.misrouted,
        )

    def stage(
        self,
        outcome: Settled,
        item: UsageRecord | Reject | None,
        source_id: str | None,
        at_s: int,
        staging: Staging,
        tally: Tally | None,
    ) -> RecordResult:
        """Stage the reject entry and counts of one settled item; returns its final result
        (both paths, ``submit`` and the bulk path, stage through here)."""
        result, kind, reject_kind, code = outcome
        if kind is None:
            return result
        if reject_kind is not None:
            entry = reject_entry(reject_kind, item, result, code, at_s, source_id)
            if not staging.put(entry):
                detail = f"reject store full ({self.config.rejects_max} entries): {result.reason}"
                return RecordResult(
                    result.record_id, RecordStatus.RESOURCE_EXHAUSTED, "reject_store_full", detail
                )
        elif self.rejects and self.rejects.has(RejectKind.RECORD, result.record_id):
            staging.delete(RejectKind.RECORD, result.record_id)  # charged now: resolved
        if tally is not None:
            tally.add(source_id, kind)
        return result

    def commit(self, staging: Staging, tally: Tally, source: SourceProgress | None) -> None:
        """One synced batch of the staged rejects, the counters and ``source``'s offset."""
        if not tally.by_source and not staging.puts and not staging.deletes and source is None:
            return
        batch = Batch()
        staging.write(batch)
        totals = self._totals
        sources: dict[str, tuple[Reconciliation, int]] = {}
        for source_id, row in tally.by_source.items():
            totals = apply_row(totals, row)
            if source_id is not None:
                counts, offset = sources.get(source_id) or self._source(source_id)
                sources[source_id] = (apply_row(counts, row), offset)
        if source is not None:
            counts, offset = sources.get(source.source_id) or self._source(source.source_id)
            sources[source.source_id] = (counts, max(offset, source.offset))
        batch.put(TOTALS_KEY, encode_counts(totals))
        for source_id, (counts, offset) in sources.items():
            batch.put(source_key(source_id), encode_counts(counts, offset))
        self.store.commit(batch)
        self._totals = totals
        self._sources.update(sources)
        self.rejects.applied(staging)

    def claim_owner(self, record_id: str) -> str:
        """The partition that owns ``record_id``'s claim (this one with no partition count)."""
        partitions = self.config.partitions
        return self.unit_id if partitions is None else partition_of_record(record_id, partitions)

    def _source(self, source_id: str) -> tuple[Reconciliation, int]:
        return self._sources.get(source_id) or (Reconciliation(), 0)

    # -- reading -------------------------------------------------------------------

    def counters(self, source_id: str | None = None) -> Reconciliation:
        """Reconciliation of the whole partition, or of one collection source."""
        return self._totals if source_id is None else self._source(source_id)[0]

    def file_offset(self, source_id: str) -> int:
        """The committed collection offset of ``source_id`` (0 if never seen)."""
        return self._source(source_id)[1]

    def sources(self) -> list[str]:
        return sorted(self._sources)

    def list_rejects(
        self, limit: int, reason: str | None = None, after: bytes | None = None
    ) -> list[RejectEntry]:
        """Up to ``limit`` stored rejects in store order, optionally of one ``reason``,
        after the row key ``after``."""
        return self.rejects.list(limit, reason=reason, after=after)


class _ClaimsHere:
    """A :class:`Reach` that makes the claims this partition owns itself (in its own store,
    under the claim store's lock) and sends the others on."""

    __slots__ = ("_claims", "_reach", "_unit_id")

    def __init__(self, reach: Reach, claims: ClaimStore, unit_id: str) -> None:
        self._reach, self._claims, self._unit_id = reach, claims, unit_id

    def charge(self, shard: str, items: list[tuple[str, RatedRecord]]) -> Sequence[ShardResult]:
        return self._reach.charge(shard, items)

    def claim(self, groups: dict[str, list[Claim]]) -> dict[str, Any]:
        local = groups.pop(self._unit_id, None)
        answers = self._reach.claim(groups) if groups else {}
        if local is not None:
            answers[self._unit_id] = self._claims.claim(local)
        return answers
