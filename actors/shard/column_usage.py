"""Charging a bulk batch on an account shard: rated columns in, answer columns out.

The seam between the bulk path and charging. A partition sends a shard the
rows it charges there as columns (:class:`~actors.shard.ops.ChargeColumns`:
the usage rows, the column rater's rated rows, the paying account of each) and
gets one answer row per record back as columns (:data:`ANSWER_SCHEMA`), with
the sponsor forwards the host delivers.

Today this charges through the per-record core (``ShardUsage.charge_batch``,
the reference): the rated rows become :class:`~billing.rated.RatedRecord`
values here, on the shard, and nowhere before it. Columnar charging
(``billing.charging.columnar.charge_columns``, which takes the same Arrow
batches through ``ChargeInput.from_arrow``) replaces the body of
:func:`charge_columns`; nothing on the partition's side changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np
import pyarrow as pa

from actors.shard import ops
from actors.shard.outbox import Forward
from billing.accounts import Result
from billing.column_rating import RatedRows
from billing.invariant import invariant
from billing.rated import RatedRecord

if TYPE_CHECKING:
    from actors.shard.usage import ShardUsage

__all__ = ["ANSWER_SCHEMA", "RESULTS", "ChargeColumnsAnswer", "charge_columns"]

RESULTS: Final[tuple[Result, ...]] = tuple(Result)
"""The dictionary of the ``result`` and ``replay_of`` columns, in declaration order."""

_TEXT: Final = pa.dictionary(pa.int32(), pa.string())
_RESULT: Final = pa.dictionary(pa.int8(), pa.string())
ANSWER_SCHEMA: Final = pa.schema(
    [
        pa.field("record_id", pa.string(), nullable=False),
        pa.field("result", _RESULT, nullable=False),
        pa.field("account_id", _TEXT, nullable=False),
        pa.field("amount", pa.int64(), nullable=False),
        pa.field("bundle_units", pa.int64(), nullable=False),
        pa.field("sponsored_by", _TEXT),
        pa.field("replay_of", _RESULT),
        pa.field("sponsor_amount", pa.int64(), nullable=False),
    ]
)
"""Per record: the shard's ``Charge`` answer (``sponsor_amount``: what the sponsor of a
sponsored line is charged, the per-record path's ``sponsor_amounts``)."""

_RESULT_NAMES: Final = pa.array([r.value for r in RESULTS], pa.string())
_RESULT_CODE: Final = {r: code for code, r in enumerate(RESULTS)}


@dataclass(frozen=True, slots=True)
class ChargeColumnsAnswer:
    """The answer columns and the sponsor charges for other shards this batch stored in
    its outbox (``forwards``: the host delivers them, as for ``ChargeBatch``)."""

    batch: pa.RecordBatch
    forwards: list[Forward]


def _labels(values: list[str | None]) -> pa.DictionaryArray:
    return pa.array(values, pa.string()).dictionary_encode()


def charge_columns(usage: ShardUsage, op: ops.ChargeColumns) -> ChargeColumnsAnswer:
    """Charge every row of ``op`` (each one rated) to its account: one commit."""
    catalogue = usage.core.catalogue
    invariant(catalogue is not None, "a shard charging columns has its catalogue")
    assert catalogue is not None
    rated_rows = RatedRows(op.usage, op.rated, catalogue)
    accounts = op.accounts.to_pylist()
    items: list[tuple[str, RatedRecord]] = []
    for account_id, outcome in zip(accounts, rated_rows, strict=True):
        invariant(isinstance(outcome, RatedRecord), "only rated rows are charged")
        items.append((account_id, outcome))  # type: ignore[arg-type]
    answer = usage.charge_batch(ops.ChargeBatch(items=items, at_s=op.at_s, offline=op.offline))
    rows = answer.rows
    amounts = answer.sponsor_amounts
    code = _RESULT_CODE
    columns = [
        pa.array([row.record_id for row in rows], pa.string()),
        pa.DictionaryArray.from_arrays(
            pa.array(np.array([code[row.result] for row in rows], np.int8)), _RESULT_NAMES
        ),
        _labels([row.account_id for row in rows]),
        pa.array([row.amount for row in rows], pa.int64()),
        pa.array([row.bundle_units for row in rows], pa.int64()),
        _labels([row.sponsored_by for row in rows]),
        pa.DictionaryArray.from_arrays(
            pa.array(
                [None if row.replay_of is None else code[row.replay_of] for row in rows], pa.int8()
            ),
            _RESULT_NAMES,
        ),
        pa.array([amounts.get(row.record_id, 0) for row in rows], pa.int64()),
    ]
    return ChargeColumnsAnswer(
        pa.RecordBatch.from_arrays(columns, schema=ANSWER_SCHEMA), list(answer.forwards)
    )
