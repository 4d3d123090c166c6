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
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NamedTuple, Protocol

from actors.directory import Directory, DirectoryAnswer, DirectoryEntry
from actors.partition_codec import (
    SOURCE_PREFIX,
    TOTALS_KEY,
    decode_counts,
    encode_counts,
    source_key,
)
from actors.rejects import RejectEntry, RejectKind, RejectStore, Staging
from actors.routing import partition_of, shard_of
from actors.storage import Batch, ShardStore
from billing.accounts import Result, SponsorRule, Subscription
from billing.invariant import invariant
from billing.preprocess import CONTENT_FIELDS, Reconciliation
from billing.rated import RatedRecord, RatingFailure, RejectReason
from billing.rating import Catalogue, rate_batch
from billing.readers import Reject
from billing.records import UsageRecord

__all__ = [
    "BatchTooLarge",
    "ChargeFn",
    "PartitionConfig",
    "RatingPartition",
    "RecordResult",
    "RecordStatus",
    "ShardResult",
    "SourceProgress",
]


class RecordStatus(enum.StrEnum):
    """Per-record outcome; the first six are ``RecordStatus`` of usage.proto."""

    CHARGED = "charged"  # also sponsored usage (charged_account_id is the sponsor)
    DUPLICATE = "duplicate"
    EXISTS_WITH_DIFFERENT_CONTENT = "exists_with_different_content"  # reason: the field
    REJECTED = "rejected"  # stored in the reject store with reason
    CHARGED_AS_DEBT = "charged_as_debt"
    CHARGED_OVER_LIMIT = "charged_over_limit"
    UNAVAILABLE = "unavailable"  # retry: the shard did not answer (gRPC UNAVAILABLE)
    RESOURCE_EXHAUSTED = "resource_exhausted"  # retry later: the reject store is full
    NOT_FOUND = "not_found"  # reprocess only: no such record in the reject store


RETRYABLE: Final = frozenset({RecordStatus.UNAVAILABLE, RecordStatus.RESOURCE_EXHAUSTED})

_CHARGED: Final = {
    Result.CHARGED: RecordStatus.CHARGED,
    Result.SPONSORED: RecordStatus.CHARGED,
    Result.CHARGED_TO_DEBT: RecordStatus.CHARGED_AS_DEBT,
    Result.CHARGED_OVER_LIMIT: RecordStatus.CHARGED_OVER_LIMIT,
}
_CONFLICT_PREFIX: Final = "exists_with_different_"


class RecordResult(NamedTuple):
    """What happened to one submitted item. A NamedTuple rather than a frozen
    dataclass because one is built per record on the hot path (~10x cheaper).

    ``amount`` is micro-units charged to ``charged_account_id`` (0 when a
    bundle covered it, and for the subscriber's line of sponsored usage);
    ``billed_units`` are the rated units after increments.
    """

    record_id: str
    status: RecordStatus
    reason: str = ""
    detail: str = ""
    amount: int = 0
    charged_account_id: str = ""
    billed_units: int = 0
    bundle_units: int = 0

    @property
    def retryable(self) -> bool:
        return self.status in RETRYABLE


class ShardResult(Protocol):
    """What the partition reads of a shard's per-record answer (``billing.charging.Charge``)."""

    @property
    def record_id(self) -> str: ...
    @property
    def result(self) -> Result: ...
    @property
    def account_id(self) -> str: ...
    @property
    def amount(self) -> int: ...
    @property
    def bundle_units(self) -> int: ...


ChargeFn = Callable[[str, list[tuple[str, RatedRecord]]], Sequence[ShardResult]]
"""``charge(shard_unit_id, [(account_id, rated), ...])`` -> one answer per item, in order,
returned only after the shard's synced commit; raises if the shard cannot answer."""


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


# What a settled record counts as (None: retryable, not counted).
_RATED, _REJECTED, _DUPLICATES = 1, 2, 3
Settled = tuple[RecordResult, int | None, RejectKind | None, str | None]


def _no_charge(shard: str, items: list[tuple[str, RatedRecord]]) -> Sequence[ShardResult]:
    raise AssertionError("submit_rejects never charges")  # pragma: no cover


class _Tally:
    """Counter deltas of one call, per source (``None``: totals only)."""

    __slots__ = ("by_source",)

    def __init__(self) -> None:
        self.by_source: dict[str | None, list[int]] = {}

    def add(self, source_id: str | None, kind: int, received: int = 1, step: int = 1) -> None:
        row = self.by_source.get(source_id)
        if row is None:
            row = self.by_source[source_id] = [0, 0, 0, 0]
        row[0] += received
        row[kind] += step


def _apply(counts: Reconciliation, row: list[int]) -> Reconciliation:
    return counts.add(received=row[0], rated=row[1], rejected=row[2], duplicates=row[3])


class RatingPartition:
    """One partition unit over its own :class:`ShardStore` (not thread-safe)."""

    def __init__(
        self, store: ShardStore, *, unit_id: str, catalogue: Catalogue, config: PartitionConfig
    ) -> None:
        invariant(config.shards >= 1, f"shards must be >= 1, got {config.shards}")
        self.store, self.unit_id, self.catalogue, self.config = store, unit_id, catalogue, config
        self.directory = Directory(store, cache_entries_max=config.directory_cache_entries_max)
        self.rejects = RejectStore(store, entries_max=config.rejects_max)
        raw = store.get(TOTALS_KEY)
        self._totals = decode_counts(raw)[0] if raw is not None else Reconciliation()
        self._sources: dict[str, tuple[Reconciliation, int]] = {
            key[len(SOURCE_PREFIX) :].decode(): decode_counts(value)
            for key, value in store.scan_prefix(SOURCE_PREFIX)
        }
        self._shard_memo: dict[str, str] = {}

    @classmethod
    def open(
        cls,
        path: Path | str,
        *,
        epoch: int,
        unit_id: str,
        catalogue: Catalogue,
        config: PartitionConfig,
    ) -> RatingPartition:
        """Open the unit's store as owner at ``epoch`` (see ``ShardStore.open``) and load it."""
        store = ShardStore.open(path, epoch=epoch, cache_entries_max=0)
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

    def put_subscriber(
        self,
        request_id: str,
        msisdn: str,
        account_id: str,
        subscriptions: Sequence[Subscription],
        sponsor_rules: Sequence[SponsorRule] = (),
    ) -> DirectoryAnswer:
        """Create or replace ``msisdn``'s directory entry (idempotent by ``request_id``)."""
        misrouted = self._misrouted(msisdn)
        if misrouted:
            return DirectoryAnswer(result=Result.INVALID_ARGUMENT, detail=misrouted)
        return self.directory.put_subscriber(
            request_id, msisdn, account_id, subscriptions, sponsor_rules
        )

    def change_plan(
        self, request_id: str, msisdn: str, plan_id: str, start_s: int
    ) -> DirectoryAnswer:
        """Append a subscription of ``plan_id`` from ``start_s`` (idempotent by ``request_id``)."""
        return self.directory.change_plan(request_id, msisdn, plan_id, start_s)

    def get_subscriber(self, msisdn: str) -> DirectoryEntry | None:
        """The directory entry of ``msisdn``, if this partition has one."""
        return self.directory.get(msisdn)

    def _misrouted(self, msisdn: str) -> str:
        partitions = self.config.partitions
        if partitions is None or not msisdn:
            return ""
        owner = partition_of(msisdn, partitions)
        return "" if owner == self.unit_id else f"msisdn {msisdn} belongs to {owner}"

    # -- usage ---------------------------------------------------------------------

    def submit(
        self,
        items: Sequence[UsageRecord | Reject],
        *,
        at_s: int,
        charge: ChargeFn,
        source: SourceProgress | None = None,
    ) -> list[RecordResult]:
        """Settle a batch: one result per item, in order; one synced commit.

        ``items`` are usage records and, from file readers, ``Reject`` values
        (stored as ``malformed``). See the module docstring for what is counted
        and what a caller does with retryable results.
        """
        if len(items) > self.config.batch_records_max:
            raise BatchTooLarge(f"{len(items)} items > {self.config.batch_records_max}")
        results: list[RecordResult | None] = [None] * len(items)
        settled: list[Settled | None] = [None] * len(items)
        firsts: dict[str, int] = {}
        repeats: list[tuple[int, int]] = []
        todo: list[int] = []
        for i, item in enumerate(items):
            if isinstance(item, Reject):
                settled[i] = self._reader_reject(item)
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
                settled[i] = (result, _REJECTED, RejectKind.CONFLICT, field)
        records: list[UsageRecord] = [items[i] for i in todo]  # type: ignore[misc]
        for i, outcome in zip(todo, self._settle(records, at_s, charge), strict=True):
            settled[i] = outcome
        for i, j in repeats:
            first_outcome = settled[j]
            assert first_outcome is not None
            first_result = first_outcome[0]
            if first_result.retryable:
                settled[i] = (first_result, None, None, None)
            else:
                detail = f"repeats item {j} of this batch"
                settled[i] = (
                    first_result._replace(status=RecordStatus.DUPLICATE, reason="", detail=detail),
                    _DUPLICATES,
                    None,
                    None,
                )
        staging, tally = self.rejects.stage(), _Tally()
        source_id = None if source is None else source.source_id
        all_settled = True
        rows, plain = tally.by_source, not self.rejects
        for i, done in enumerate(settled):
            assert done is not None
            result, kind, reject_kind, _ = done
            if kind is None:
                results[i] = result
                all_settled = False
                continue
            item = items[i]
            src = source_id or item.source_file
            if plain and reject_kind is None:
                # Counted inline: nothing to stage (the reject store is empty).
                row = rows.get(src)
                if row is None:
                    row = rows[src] = [0, 0, 0, 0]
                row[0] += 1
                row[kind] += 1
                results[i] = result
                continue
            results[i] = result = self._stage(done, item, src, at_s, staging, tally)
            all_settled = all_settled and not result.retryable
        self._commit(staging, tally, source if all_settled else None)
        return results  # type: ignore[return-value]

    def submit_rejects(
        self, rejects: Sequence[Reject], *, at_s: int, source: SourceProgress | None = None
    ) -> list[RecordResult]:
        """Store reader rejects (unreadable lines) with their reasons and count them."""
        return self.submit(rejects, at_s=at_s, charge=_no_charge, source=source)

    def reprocess(
        self, record_ids: Sequence[str], *, at_s: int, charge: ChargeFn
    ) -> list[RecordResult]:
        """Rate and charge stored rejected records again (e.g. after their account was
        created); those now charged leave the store. One result per id, in order."""
        entries: dict[str, RejectEntry] = {}
        for record_id in record_ids:
            entry = self.rejects.get(RejectKind.RECORD, record_id) if record_id else None
            if entry is not None and entry.record is not None:
                entries[record_id] = entry
        records = [e.record for e in entries.values() if e.record is not None]
        by_id = dict(zip(entries, self._settle(records, at_s, charge), strict=True))
        staging, tally = self.rejects.stage(), _Tally()
        answers: dict[str, RecordResult] = {}
        for record_id, outcome in by_id.items():
            entry = entries[record_id]
            result, kind, reject_kind, _code = outcome
            if kind in (_RATED, _DUPLICATES):
                staging.delete(RejectKind.RECORD, record_id)
                tally.add(entry.source_id, _REJECTED, received=0, step=-1)
                tally.add(entry.source_id, kind, received=0)
            elif reject_kind is not None:
                staging.delete(RejectKind.RECORD, record_id)
                self._stage(outcome, entry.record, entry.source_id, at_s, staging, None)
            answers[record_id] = result
        self._commit(staging, tally, None)
        missing = RecordResult("", RecordStatus.NOT_FOUND, "not_in_reject_store")
        return [answers.get(rid) or missing._replace(record_id=rid) for rid in record_ids]

    # -- the pipeline ----------------------------------------------------------------

    def _reader_reject(self, reject: Reject) -> Settled:
        record_id = reject.record_id or f"{reject.source_file}:{reject.line}"
        result = RecordResult(record_id, RecordStatus.REJECTED, reject.reason.value, reject.message)
        return result, _REJECTED, RejectKind.LINE, reject.code.value

    def _settle(self, records: Sequence[UsageRecord], at_s: int, charge: ChargeFn) -> list[Settled]:
        """Directory, rating and charging of distinct records; one outcome per record."""
        out: list[Settled | None] = [None] * len(records)
        get_entry = self.directory.get
        plans: dict[str, str] = {}
        to_rate: list[UsageRecord] = []
        rate_index: list[int] = []
        accounts: list[str] = []
        for i, record in enumerate(records):
            entry = get_entry(record.served_msisdn)
            if entry is None:
                where = self._misrouted(record.served_msisdn)
                detail = f"msisdn {record.served_msisdn} is not in the directory of {self.unit_id}"
                out[i] = _rejected(record, RejectReason.UNKNOWN_ACCOUNT, detail + where)
                continue
            plan = entry.plan_at(record.record_opening_time_s)
            if plan is None:
                detail = f"no subscription of {record.served_msisdn} active at "
                out[i] = _rejected(
                    record, RejectReason.NO_PLAN, detail + str(record.record_opening_time_s)
                )
                continue
            plans[record.record_id] = plan
            to_rate.append(record)
            rate_index.append(i)
            accounts.append(entry.account_id)
        outcomes = rate_batch(to_rate, self.catalogue, lambda r: plans[r.record_id])
        groups: dict[str, tuple[list[tuple[str, RatedRecord]], list[int]]] = {}
        memo, shards = self._shard_memo, self.config.shards
        if len(memo) > 1_000_000:
            memo.clear()
        for i, account_id, outcome in zip(rate_index, accounts, outcomes, strict=True):
            if isinstance(outcome, RatingFailure):
                out[i] = _rejected(outcome.record, outcome.reason, outcome.detail)
                continue
            shard = memo.get(account_id)
            if shard is None:
                shard = memo[account_id] = shard_of(account_id, shards)
            group = groups.get(shard)
            if group is None:
                group = groups[shard] = ([], [])
            group[0].append((account_id, outcome))
            group[1].append(i)
        for shard, (items, indices) in groups.items():
            try:
                answers = charge(shard, items)
            except Exception as exc:  # any failure to answer: retryable, nothing acknowledged
                detail = f"{shard}: {type(exc).__name__}: {exc}"
                for i in indices:
                    result = RecordResult(
                        records[i].record_id, RecordStatus.UNAVAILABLE, "shard_unavailable", detail
                    )
                    out[i] = (result, None, None, None)
                continue
            invariant(len(answers) == len(items), f"{shard} answered {len(answers)}/{len(items)}")
            charged, rated_kind = Result.CHARGED, _RATED
            for (_, rated), i, answer in zip(items, indices, answers, strict=True):
                record_id = rated.record.record_id
                # The common case inline (it runs once per record); the rest in _from_shard.
                if (
                    answer.result is charged
                    and answer.record_id == record_id
                    and getattr(answer, "sponsored_by", None) is None
                ):
                    result = RecordResult(
                        record_id,
                        RecordStatus.CHARGED,
                        "",
                        "",
                        answer.amount,
                        answer.account_id,
                        rated.billed_units,
                        answer.bundle_units,
                    )
                    out[i] = (result, rated_kind, None, None)
                else:
                    out[i] = _from_shard(rated, answer)
        return out  # type: ignore[return-value]

    def _stage(
        self,
        outcome: Settled,
        item: UsageRecord | Reject | None,
        source_id: str | None,
        at_s: int,
        staging: Staging,
        tally: _Tally | None,
    ) -> RecordResult:
        """Stage the reject entry and counts of one settled item; returns its final result."""
        result, kind, reject_kind, code = outcome
        if kind is None:
            return result
        if reject_kind is not None:
            entry = _entry(reject_kind, item, result, code, at_s, source_id)
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

    def _commit(self, staging: Staging, tally: _Tally, source: SourceProgress | None) -> None:
        if not tally.by_source and not staging.puts and not staging.deletes and source is None:
            return
        batch = Batch()
        staging.write(batch)
        totals = self._totals
        sources: dict[str, tuple[Reconciliation, int]] = {}
        for source_id, row in tally.by_source.items():
            totals = _apply(totals, row)
            if source_id is not None:
                counts, offset = sources.get(source_id) or self._source(source_id)
                sources[source_id] = (_apply(counts, row), offset)
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

    def list_rejects(self, limit: int, reason: str | None = None) -> list[RejectEntry]:
        """Up to ``limit`` stored rejects, optionally of one ``reason``."""
        return self.rejects.list(limit, reason=reason)


def _rejected(record: UsageRecord, reason: RejectReason, detail: str) -> Settled:
    result = RecordResult(record.record_id, RecordStatus.REJECTED, reason.value, detail)
    return result, _REJECTED, RejectKind.RECORD, None


def _from_shard(rated: RatedRecord, answer: ShardResult) -> Settled:
    record_id = rated.record.record_id
    invariant(answer.record_id == record_id, f"shard answered {answer.record_id} for {record_id}")
    code = answer.result
    status = _CHARGED.get(code)
    if status is not None or code is Result.DUPLICATE:
        sponsor = getattr(answer, "sponsored_by", None)
        result = RecordResult(
            record_id,
            RecordStatus.DUPLICATE if status is None else status,
            "",
            f"sponsored by {sponsor}" if sponsor else "",
            answer.amount,
            sponsor or answer.account_id,
            rated.billed_units,
            answer.bundle_units,
        )
        return result, _DUPLICATES if status is None else _RATED, None, None
    if code.value.startswith(_CONFLICT_PREFIX):
        field = code.value.removeprefix(_CONFLICT_PREFIX)
        detail = f"record_id already charged with a different {field}"
        result = RecordResult(
            record_id,
            RecordStatus.EXISTS_WITH_DIFFERENT_CONTENT,
            field,
            detail,
            0,
            answer.account_id,
            rated.billed_units,
        )
        return result, _REJECTED, RejectKind.CONFLICT, field
    detail = f"{answer.account_id or 'shard'} refused: {code.value}"
    result = RecordResult(
        record_id,
        RecordStatus.REJECTED,
        code.value,
        detail,
        0,
        answer.account_id,
        rated.billed_units,
    )
    return result, _REJECTED, RejectKind.RECORD, None


def _entry(
    kind: RejectKind,
    item: UsageRecord | Reject | None,
    result: RecordResult,
    code: str | None,
    at_s: int,
    source_id: str | None,
) -> RejectEntry:
    if isinstance(item, Reject):
        return RejectEntry(
            kind=kind,
            record_id=item.record_id,
            reason=result.reason,
            detail=result.detail,
            at_s=at_s,
            code=code,
            source_file=item.source_file,
            source_line=item.line,
            source_id=source_id,
            raw=item.raw,
        )
    invariant(item is not None, "a record reject needs its record")
    assert item is not None
    return RejectEntry(
        kind=kind,
        record_id=item.record_id,
        reason=result.reason if kind is RejectKind.RECORD else result.status.value,
        detail=result.detail,
        at_s=at_s,
        record=item,
        code=code,
        source_file=item.source_file,
        source_line=item.source_line,
        source_id=source_id,
    )
