"""Several bulk calls of one partition settled as one: fewer, larger unit calls per row.

A gateway cuts every bulk request into one part per partition, and each part
claims on every owner partition and charges on every shard its accounts live
on. A unit call has a fixed cost of tens of Arrow kernels, a multi-get and a
synced commit whatever its size, so P parts of a request make P x (P + S)
calls of a few hundred rows each, and the fixed costs dominate. The gateway's
coalescer (``actors.coalesce``) therefore sends the parts bound for one host
together, and the parts of one partition become one :class:`SubmitColumnsGroup`:
:func:`settle_group` settles them with one :func:`~actors.partition.bulk.submit_columns`
over their rows put end to end, so each owner partition sees one claim call and
each shard one charge call for the whole group.

The answer is each part's own, exactly as it would have been alone and in
arrival order: a part joins the run only when it could not tell the
difference, that is when it has

- the run's ``at_s`` and ``source`` (its rows are charged at that time and
  counted under that source);
- no record id repeated inside it (a repeat answers "repeats item k of this
  batch", naming its place in the call) and no record id of another part of
  the run (across two calls the second is a replay through the claims and the
  shard's marks, inside one it would be an in-batch repeat);

and its columns read as usage columns. Any other part is settled alone, in its
place in the order. A run whose settling raises is settled part by part, so one
part's failure is that part's answer only; a store that is no longer this
unit's (fenced, closed, failed) raises for the whole call, as alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from actors.partition.bulk import BulkReach, submit_columns
from actors.partition.ops import SubmitColumns
from actors.store.storage import STORE_LOST
from billing.columns import USAGE_SCHEMA, ColumnLayoutError, usage_batch
from billing.invariant import invariant
from billing.readers import Reject

if TYPE_CHECKING:
    from actors.partition.engine import RatingPartition

__all__ = ["settle_group"]


def settle_group(
    partition: RatingPartition, parts: Sequence[SubmitColumns], reach: BulkReach
) -> list[pa.RecordBatch | Exception]:
    """Each part's answer (or the exception it raised alone), in order; the parts that
    may share a call settled in one (module docstring)."""
    answers: list[pa.RecordBatch | Exception | None] = [None] * len(parts)
    run: list[int] = []
    seen: set[str] = set()
    limit = partition.config.batch_records_max
    rows = 0
    usages = [_usage(part) for part in parts]  # each part's columns read once
    for index, part in enumerate(parts):
        ids = _ids_if_joinable(usages[index])
        first = parts[run[0]] if run else None
        fits = (
            ids is not None
            and (first is None or (part.at_s == first.at_s and part.source == first.source))
            and seen.isdisjoint(ids)
            and rows + _items(part) <= limit
        )
        if not fits and run:
            _settle_run(partition, parts, usages, run, reach, answers)
            run, seen, rows = [], set(), 0
        if ids is None:
            answers[index] = _alone(partition, part, reach)
            continue
        run.append(index)
        seen.update(ids)
        rows += _items(part)
    if run:
        _settle_run(partition, parts, usages, run, reach, answers)
    done = [a for a in answers if a is not None]
    invariant(len(done) == len(parts), f"{len(done)} answers for {len(parts)} bulk calls")
    return done


def _items(part: SubmitColumns) -> int:
    rows: int = part.usage.num_rows
    return rows + len(part.rejects)


def _usage(part: SubmitColumns) -> pa.RecordBatch | None:
    """The part's rows as usage columns, or None when they do not read as such."""
    try:
        return part.usage if part.usage.schema.equals(USAGE_SCHEMA) else usage_batch(part.usage)
    except ColumnLayoutError:
        return None


def _ids_if_joinable(usage: pa.RecordBatch | None) -> list[str] | None:
    """The part's record ids, or None when it must be settled alone: its columns are not
    usage columns, or an id repeats inside it."""
    if usage is None:
        return None
    ids = usage.column("record_id")
    if pc.count_distinct(ids).as_py() != len(ids):
        return None
    found: list[str] = ids.to_pylist()
    return found


def _alone(
    partition: RatingPartition, part: SubmitColumns, reach: BulkReach
) -> pa.RecordBatch | Exception:
    try:
        return submit_columns(partition, part, reach)
    except STORE_LOST:
        raise
    except Exception as exc:  # this part's own failure, answered to its caller only
        return exc


def _settle_run(
    partition: RatingPartition,
    parts: Sequence[SubmitColumns],
    usages: Sequence[pa.RecordBatch | None],
    run: list[int],
    reach: BulkReach,
    answers: list[pa.RecordBatch | Exception | None],
) -> None:
    """Settle the parts ``run`` (indexes into ``parts``) in one call, their answers into
    ``answers``; part by part if that call raises."""
    if len(run) == 1:
        answers[run[0]] = _alone(partition, parts[run[0]], reach)
        return
    members = [parts[i] for i in run]
    try:
        merged = submit_columns(partition, _joined(members, [usages[i] for i in run]), reach)
    except STORE_LOST:
        raise
    except Exception:  # find the part that raised: each alone, its failure its own
        for index in run:
            answers[index] = _alone(partition, parts[index], reach)
        return
    offset = 0
    for index, part in zip(run, members, strict=True):
        answers[index] = merged.slice(offset, _items(part))
        offset += _items(part)


def _joined(
    parts: Sequence[SubmitColumns], usages: Sequence[pa.RecordBatch | None]
) -> SubmitColumns:
    """One call whose items are the parts' items (``usages``: their rows as usage columns)
    end to end, each part's in its order."""
    batches: list[pa.RecordBatch] = []
    places: list[NDArray[np.int64]] = []
    rejects: list[tuple[int, Reject]] = []
    offset = 0
    for part, usage in zip(parts, usages, strict=True):
        if usage is None:  # a run holds only parts whose columns read (settle_group)
            raise TypeError("a part joined a run without usage columns")
        batches.append(usage)
        rows = usage.num_rows
        place = np.arange(rows, dtype=np.int64) if part.positions is None else part.positions
        places.append(np.asarray(place, np.int64) + offset)
        rejects.extend((offset + i, reject) for i, reject in part.rejects)
        offset += _items(part)
    usage = pa.Table.from_batches(batches, USAGE_SCHEMA).combine_chunks().to_batches()
    joined = usage[0] if usage else batches[0]
    first = parts[0]
    return SubmitColumns(
        usage=joined,
        at_s=first.at_s,
        positions=np.concatenate(places),
        rejects=rejects,
        source=first.source,
    )
