"""Several per-record calls of one partition settled as one: fewer, larger unit calls.

The per-record path's :class:`~actors.partition.grouping.Grouping`: the
``Submit`` parts of concurrent SubmitUsage calls bound for one partition arrive
as one :class:`SubmitGroup`, and the parts that may share a call (the join rule
of ``actors.partition.grouping``) are settled with one
:meth:`~actors.partition.engine.RatingPartition.submit` over their items put end
to end, so each owner partition sees one claim call and each shard one charge
call for the whole group; each part is answered its own results, in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from actors.op import Env
from actors.partition.grouping import Grouping
from actors.partition.grouping import settle_group as settle_parts
from actors.partition.ops import Reach, Submit
from actors.partition.results import RecordResult
from billing.readers import Reject

if TYPE_CHECKING:
    from actors.partition.engine import RatingPartition

__all__ = ["settle_group"]


def settle_group(
    partition: RatingPartition, parts: Sequence[Submit], env: Env
) -> list[list[RecordResult] | Exception]:
    """Each part's results (or the exception it raised alone), in order; the parts that
    may share a call settled in one (``actors.partition.grouping``). Each call reaches
    the shards at its own ``at_s`` (the shards charge at the time they are given)."""
    grouping: Grouping[Submit, list[RecordResult]] = Grouping(
        ids=_ids,
        items=lambda part: len(part.items),
        alone=lambda part: partition.submit(part, Reach(env, part.at_s)),
        joined=_joined,
        cut=lambda answer, start, count: answer[start : start + count],
    )
    return settle_parts(parts, grouping, partition.config.batch_records_max)


def _ids(part: Submit) -> list[str]:
    """The ids of the part's records (its reader rejects are not records: a repeat of
    one's id is no in-batch repeat, and it resolves nothing stored)."""
    return [item.record_id for item in part.items if not isinstance(item, Reject)]


def _joined(parts: Sequence[Submit]) -> Submit:
    """One call whose items are the parts' items end to end, each part's in its order."""
    first = parts[0]
    items = [item for part in parts for item in part.items]
    return Submit(items=items, at_s=first.at_s, source=first.source)
