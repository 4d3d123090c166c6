"""The bulk path of a rating partition: :meth:`RatingPartition.submit` for a batch of columns.

:func:`submit_columns` settles a ``SubmitColumns`` call with exactly the
per-record rules of ``RatingPartition.submit`` (which stays the reference):
the same result per item, the same reject-store entries, the same counters and
the same one synced commit — tests/test_bulk_equivalence.py holds the two
paths equal on random batches through whole clusters. Only the shape differs:
records come as an Arrow batch (``billing.columns.USAGE_SCHEMA``), results go
back as one (``actors.partition.outcomes.RESULT_SCHEMA``), and everything a
whole batch shares is done once per batch with arrays:

1. reader rejects (the items the gateway could not read) are settled as
   ``malformed``, each at its place among the items;
2. a record id repeated inside the call answers its first item's result as a
   replay (same content) or is refused naming the first field that differs;
3. the distinct rows are settled by :func:`actors.partition.bulk_settle.settle_rows`;
4. the items that store a reject (or resolve one stored earlier) are staged one
   by one, as ``submit`` stages them; the rest are counted with a ``bincount``;
   one commit, the file offset moving only once every item is settled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from actors.partition.bulk_settle import BulkReach, settle_rows
from actors.partition.outcomes import Outcomes
from actors.partition.rejects import RejectKind
from actors.partition.results import (
    DUPLICATES,
    REJECTED,
    RecordResult,
    RecordStatus,
    Tally,
    reader_reject,
)
from actors.shard.ops import ChargeColumns
from billing.columns import USAGE_SCHEMA, batch_to_records, usage_batch
from billing.invariant import invariant
from billing.preprocess import CONTENT_FIELDS
from billing.readers import Reject
from billing.records import UsageRecord

if TYPE_CHECKING:
    from actors.partition.engine import RatingPartition
    from actors.partition.ops import SubmitColumns
    from actors.shard.engine import AccountShard

__all__ = ["BulkReach", "DirectReach", "submit_columns"]


class DirectReach:
    """A :class:`BulkReach` over engines of this process, called directly (no host, no
    router): the straight-line baseline of bench/ingest.py and tests. Sponsor charges for
    other shards stay in the shards' outboxes (a host would deliver them)."""

    def __init__(
        self, partitions: Mapping[str, RatingPartition], shards: Mapping[str, AccountShard]
    ) -> None:
        self._partitions, self._shards = partitions, shards

    def claim_columns(self, batches: dict[str, pa.RecordBatch]) -> dict[str, Any]:
        return {unit: self._partitions[unit].claim_columns(b) for unit, b in batches.items()}

    def charge_columns(self, calls: dict[str, ChargeColumns]) -> dict[str, Any]:
        return {unit: self._shards[unit].usage.charge_columns(op) for unit, op in calls.items()}


class _Records:
    """Rows of the call's usage batch as :class:`UsageRecord` values, built for the rows
    asked for only (a reject to store, a repeat to compare): the rare rows."""

    __slots__ = ("_built", "_usage")

    def __init__(self, usage: pa.RecordBatch) -> None:
        self._usage = usage
        self._built: dict[int, UsageRecord] = {}

    def get(self, rows: list[int]) -> list[UsageRecord]:
        wanted = [r for r in dict.fromkeys(rows) if r not in self._built]
        if wanted:
            found = batch_to_records(self._usage.take(pa.array(wanted, pa.int64())))
            self._built.update(zip(wanted, found, strict=True))
        return [self._built[r] for r in rows]


def _first_rows(ids: pa.Array) -> NDArray[np.int64]:
    """Per row, the row of the first occurrence of its id."""
    encoded = ids.dictionary_encode()
    codes = encoded.indices.to_numpy()
    if len(encoded.dictionary) == len(ids):
        return np.arange(len(ids), dtype=np.int64)
    _, first = np.unique(codes, return_index=True)
    # dictionary_encode numbers ids in order of first appearance: code c first occurs at first[c].
    rows: NDArray[np.int64] = first.astype(np.int64)[codes]
    return rows


def _item_ids(usage: pa.RecordBatch, place: NDArray[np.int64], rejects: list[str]) -> pa.Array:
    """The record id of every item (a reject's as its result names it), in item order."""
    ids = usage.column("record_id")
    if not rejects:
        return ids
    n = usage.num_rows + len(rejects)
    order = np.empty(n, np.int64)
    order[place] = np.arange(usage.num_rows)
    taken = np.ones(n, np.bool_)
    taken[place] = False
    order[taken] = usage.num_rows + np.arange(len(rejects))
    return pa.concat_arrays([ids, pa.array(rejects, pa.string())]).take(pa.array(order))


def submit_columns(
    partition: RatingPartition, op: SubmitColumns, reach: BulkReach
) -> pa.RecordBatch:
    """Settle a bulk call: one result row per item, in order; one synced commit."""
    from actors.partition.engine import BatchTooLarge

    usage = op.usage if op.usage.schema.equals(USAGE_SCHEMA) else usage_batch(op.usage)
    rows = usage.num_rows
    n = rows + len(op.rejects)
    if n > partition.config.batch_records_max:
        raise BatchTooLarge(f"{n} items > {partition.config.batch_records_max}")
    place = np.arange(rows, dtype=np.int64) if op.positions is None else np.asarray(op.positions)
    invariant(len(place) == rows, f"{len(place)} places for {rows} rows")
    out = Outcomes(n)
    reject_at: dict[int, Reject] = {}
    for i, reject in op.rejects:
        reject_at[i] = reject
        out.put(i, reader_reject(reject))
    records = _Records(usage)
    ids = usage.column("record_id")
    first = _first_rows(ids)
    repeated = np.flatnonzero(first != np.arange(rows))
    repeats: list[tuple[int, int]] = []
    if len(repeated):
        firsts = first[repeated].tolist()
        for r, j, item, earlier in zip(
            repeated.tolist(), firsts, records.get(repeated.tolist()), records.get(firsts),
            strict=True,
        ):  # fmt: skip
            if item.content_key() == earlier.content_key():
                repeats.append((r, j))
                continue
            differ = [f for f in CONTENT_FIELDS if getattr(item, f) != getattr(earlier, f)]
            field = differ[0] if differ else "content"
            detail = f"record_id used earlier in this batch with different {', '.join(differ)}"
            result = RecordResult(
                item.record_id, RecordStatus.EXISTS_WITH_DIFFERENT_CONTENT, field, detail
            )
            out.put(int(place[r]), (result, REJECTED, RejectKind.CONFLICT, field))
        distinct = np.flatnonzero(first == np.arange(rows))
        settle_rows(partition, usage.take(pa.array(distinct)), place[distinct], out, reach, op.at_s)
    else:
        settle_rows(partition, usage, place, out, reach, op.at_s)
    for r, j in repeats:
        record_id = ids[r].as_py()
        first_result = out.result(int(place[j]), record_id)
        if first_result.retryable:
            out.put(int(place[r]), (first_result, None, None, None))
        else:
            # The first item's result, as decided, flagged as a replay of it.
            detail = f"repeats item {int(place[j])} of this batch"
            replay = first_result._replace(replay=True, detail=detail)
            out.put(int(place[r]), (replay, DUPLICATES, None, None))
    item_ids = _item_ids(
        usage, place, [reader_reject(r)[0].record_id for _, r in sorted(reject_at.items())]
    )
    _stage_and_commit(partition, op, usage, place, reject_at, records, out, item_ids)
    return out.batch(item_ids)


def _stage_and_commit(
    partition: RatingPartition,
    op: SubmitColumns,
    usage: pa.RecordBatch,
    place: NDArray[np.int64],
    reject_at: dict[int, Reject],
    records: _Records,
    out: Outcomes,
    item_ids: pa.Array,
) -> None:
    """Stage rejects and counters as ``submit`` does, and commit (module docstring, 4.)."""
    n = len(out)
    retry = out.retryable()
    all_settled = not bool(retry.any())
    staged = np.zeros(n, np.bool_)
    staged[list(out.reject)] = True
    stored = partition.rejects.records()
    if stored:
        # A charged record whose earlier reject is stored resolves it: staged too.
        known = pc.is_in(item_ids, value_set=pa.array(list(stored), pa.string()))
        staged |= known.to_numpy(zero_copy_only=False) & (out.kind > 0)
    staged &= ~retry
    inline = ~retry & ~staged
    staging, tally = partition.rejects.stage(), Tally()
    source_id = None if op.source is None else op.source.source_id
    _count(tally, source_id, usage, place, out.kind, inline)
    row_of = np.full(n, -1, np.int64)
    row_of[place] = np.arange(usage.num_rows)
    at = np.flatnonzero(staged).tolist()
    usage_rows = [int(row_of[i]) for i in at if row_of[i] >= 0]
    built = dict(zip(usage_rows, records.get(usage_rows), strict=True))
    for i in at:
        item: Any = reject_at[i] if row_of[i] < 0 else built[int(row_of[i])]
        src = source_id or item.source_file
        settled = out.settled(i, item_ids[i].as_py())
        result = partition.stage(settled, item, src, op.at_s, staging, tally)
        _, kind, reject_kind, code = settled
        out.put(i, (result, None if result.retryable else kind, reject_kind, code))
        all_settled = all_settled and not result.retryable
    partition.commit(staging, tally, op.source if all_settled else None)


def _count(
    tally: Tally,
    source_id: str | None,
    usage: pa.RecordBatch,
    place: NDArray[np.int64],
    kind: NDArray[np.int8],
    inline: NDArray[np.bool_],
) -> None:
    """Count the ``inline`` items (received, and rated, rejected or duplicate) per source."""
    if not inline.any():
        return
    if source_id:
        groups: list[tuple[str | None, NDArray[np.int8]]] = [(source_id, kind[inline])]
    else:
        # Per record, its source file (only usage rows are counted inline: rejects are staged).
        files = usage.column("source_file")
        if not pa.types.is_dictionary(files.type):
            files = files.dictionary_encode()
        code = np.full(len(kind), -2, np.int64)
        code[place] = pc.fill_null(files.indices, -1).to_numpy()
        names = files.dictionary.to_pylist()
        groups = [
            (None if c < 0 else names[c], kind[inline & (code == c)])
            for c in np.unique(code[inline]).tolist()
        ]
    for src, kinds in groups:
        counts = np.bincount(kinds, minlength=4).tolist()
        row = tally.by_source.get(src)
        if row is None:
            row = tally.by_source[src] = [0, 0, 0, 0]
        row[0] += len(kinds)
        for k in (1, 2, 3):
            row[k] += counts[k]
