"""Several bulk calls of one partition settled as one: fewer, larger unit calls per row.

The bulk path's :class:`~actors.partition.grouping.Grouping`: the parts of one
partition arrive as one :class:`SubmitColumnsGroup`, and the parts that may share
a call (the join rule of ``actors.partition.grouping``) are settled with one
:func:`~actors.partition.bulk.submit_columns` over their rows put end to end, so
each owner partition sees one claim call and each shard one charge call for the
whole group. A part whose columns do not read as usage columns is settled alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from actors.partition.bulk import BulkReach, submit_columns
from actors.partition.grouping import Grouping
from actors.partition.grouping import settle_group as settle_parts
from actors.partition.ops import SubmitColumns
from billing.columns import USAGE_SCHEMA, ColumnLayoutError, usage_batch
from billing.readers import Reject

if TYPE_CHECKING:
    from actors.partition.engine import RatingPartition

__all__ = ["settle_group"]


def settle_group(
    partition: RatingPartition, parts: Sequence[SubmitColumns], reach: BulkReach
) -> list[pa.RecordBatch | Exception]:
    """Each part's answer (or the exception it raised alone), in order; the parts that
    may share a call settled in one (``actors.partition.grouping``)."""
    grouping: Grouping[SubmitColumns, pa.RecordBatch] = Grouping(
        ids=_ids,
        items=_items,
        alone=lambda part: submit_columns(partition, part, reach),
        joined=_joined,
        cut=lambda answer, start, count: answer.slice(start, count),
    )
    return settle_parts(parts, grouping, partition.config.batch_records_max)


def _items(part: SubmitColumns) -> int:
    rows: int = part.usage.num_rows
    return rows + len(part.rejects)


def _ids(part: SubmitColumns) -> list[str] | None:
    """The part's record ids, or None when its columns are not usage columns."""
    try:
        usage = part.usage if part.usage.schema.equals(USAGE_SCHEMA) else usage_batch(part.usage)
    except ColumnLayoutError:
        return None
    found: list[str] = usage.column("record_id").to_pylist()
    return found


def _joined(parts: Sequence[SubmitColumns]) -> SubmitColumns:
    """One call whose items are the parts' items end to end, each part's in its order."""
    batches: list[pa.RecordBatch] = []
    places: list[NDArray[np.int64]] = []
    rejects: list[tuple[int, Reject]] = []
    offset = 0
    for part in parts:
        usage = part.usage if part.usage.schema.equals(USAGE_SCHEMA) else usage_batch(part.usage)
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
