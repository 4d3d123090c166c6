"""Charging a bulk batch on an account shard: rated columns in, answer columns out.

The seam between the bulk path and charging. A partition sends a shard the
rows it charges there as columns (:class:`~actors.shard.ops.ChargeColumns`:
the usage rows, the column rater's rated rows, the paying account of each) and
gets one answer row per record back as columns (:data:`ANSWER_SCHEMA`), with
the sponsor forwards the host delivers.

:func:`charge_columns` charges through columnar charging
(``billing.charging.columnar.charge_columns``): the batch's accounts (and any
sponsor on this shard its records may charge) are read through one
:class:`~actors.shard.work.Work` into a per-call
:class:`~billing.charging.table.AccountTable`, the Arrow batches become a
``ChargeInput`` (``from_arrow``), the record ids' marks are read with one
multi-get, and the answer's states, charge rows (ledger rows and marks),
notifications, forwards, fraud states and sponsor prices are staged in that
work: one synced commit, as the per-record body makes. A batch the columnar
core cannot express the same way (:func:`_per_record_reason`) takes the
per-record body (``ShardUsage.charge_batch``, the reference), which
tests/test_bulk_equivalence.py holds the bulk path to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from actors.shard import ops
from actors.shard.outbox import Forward
from actors.shard.risk import assess_batch
from actors.shard.work import Work, without_rated
from billing.accounts import AccountState, Effects, Result
from billing.charging.charge_input import ChargeInput
from billing.charging.columnar import ChargeColumns as ColumnarAnswer
from billing.charging.columnar import charge_columns as columnar_charge
from billing.charging.rows import Charge
from billing.charging.table import AccountTable, TableUpdate
from billing.charging.usage_store import CYCLE_SHIFT, ROW_SHIFT
from billing.column_rating import RatedRows
from billing.idempotency import Mark
from billing.invariant import invariant
from billing.rated import RatedRecord

if TYPE_CHECKING:
    from actors.shard.core import ShardCore
    from actors.shard.usage import ShardUsage

_LOW: Final = (1 << CYCLE_SHIFT) - 1

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
    """Charge every row of ``op`` (each one rated) to its account: one commit.

    Columnar charging (``billing.charging.columnar``) takes the batch unless it holds
    something only the per-record body says the same way (:func:`_per_record_reason`).
    """
    invariant(op.rated.column("reject_reason").null_count == op.rated.num_rows,
              "only rated rows are charged")  # fmt: skip
    if _per_record_reason(op) is not None:
        return _charge_per_record(usage, op)
    return _charge_columnar(usage, op)


def _per_record_reason(op: ops.ChargeColumns) -> str | None:
    """Why this batch must take the per-record body, or None.

    - a record id that is empty or holds NUL: the per-record body refuses it
      (``invalid_argument``) before charging; columnar charging has no such refusal;
    - one msisdn charged to two accounts in the batch: the per-record body charges
      such a batch in runs (its directory maps an msisdn to one account), each run
      seeing the marks of the runs before it; columnar charging would take it in one
      pass. Both are rare (a directory change racing a batch, a malformed id).
    """
    ids = op.usage.column("record_id")
    if (
        pc.any(pc.equal(pc.utf8_length(ids), 0)).as_py()
        or pc.any(pc.match_substring(ids, "\x00")).as_py()
    ):
        return "invalid record id"
    msisdns = op.usage.column("served_msisdn")
    pairs = pa.table({"m": msisdns, "a": op.accounts}).group_by(["m", "a"]).aggregate([])
    if pairs.num_rows != pc.count_distinct(msisdns).as_py():
        return "one msisdn, two accounts"
    return None


def _charge_per_record(usage: ShardUsage, op: ops.ChargeColumns) -> ChargeColumnsAnswer:
    """The reference: every row as a :class:`RatedRecord` through ``charge_batch``."""
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
    return _answer_of_rows(answer.rows, answer.sponsor_amounts, answer.forwards)


def _answer_of_rows(
    rows: list[Charge], amounts: dict[str, int], forwards: list[Forward]
) -> ChargeColumnsAnswer:
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
    return ChargeColumnsAnswer(pa.RecordBatch.from_arrays(columns, schema=ANSWER_SCHEMA), forwards)


class _WorkMarks:
    """The columnar core's ``MarkStore`` over a :class:`Work` whose marks were prefetched
    (one multi-get): ``get_many`` answers the batch's ids from that read."""

    __slots__ = ("_work", "get")

    def __init__(self, work: Work) -> None:
        self._work = work
        self.get = work.mark

    def get_many(self, keys: Sequence[str]) -> list[Mark[Any] | None]:
        work = self._work
        if not work.fetched and not work.marks:
            unmarked = work.unmarked
            if all(map(unmarked.__contains__, keys)):
                return [None] * len(keys)  # the common batch: every id fresh
        return list(map(work.mark, keys))


def _table_of(
    work: Work, op: ops.ChargeColumns, core: ShardCore
) -> tuple[AccountTable, dict[str, AccountState]]:
    """The batch's accounts as a table, read through ``work`` (the shard's cache, else
    the store, as the per-record body reads them), with every sponsor on this shard a
    record of the batch may charge: the per-record body charges such a sponsor here."""
    wanted = pc.unique(op.accounts).to_pylist()
    states = {a: s for a in wanted if (s := work.state(a)) is not None}
    sponsors: list[str] = []
    for state in states.values():
        sponsors.extend(rule.sponsor_account_id for rule in state.account.sponsor_rules)
    column = op.rated.column("usage_class")
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    for usage_class in pc.unique(column).to_pylist():
        found = None if usage_class is None else core.tariff.sponsor_for(usage_class)
        if found is not None:
            sponsors.append(found[0])
    for sponsor_id in sponsors:
        if sponsor_id not in states:
            sponsor = work.state(sponsor_id)
            if sponsor is not None:
                states[sponsor_id] = sponsor
    return AccountTable.from_states(states.values()), states


def _states_after(
    table: AccountTable, update: TableUpdate, before: dict[str, AccountState]
) -> list[AccountState]:
    """The new state of every row ``update`` changes, read from ``table`` once the update
    is applied; the usage totals are the ones read (``before``) plus the update's, which
    adds to them, so the table's usage store is not searched per account."""
    usage_rows = (update.usage_keys >> ROW_SHIFT).tolist()
    rows: set[int] = set(update.rows.tolist())
    rows.update(update.bundle_rows.tolist())
    rows.update(usage_rows)
    rows.update(update.entered_rows.tolist())
    rows.update(update.reminders)
    rows.update(update.profiles)
    states = {row: table.state(row, usage=False) for row in sorted(rows)}
    for row, state in states.items():
        state.usage = dict(before[table.ids[row]].usage)
    cycles, classes = table.cycles.names, table.classes.names
    for row, key, added in zip(
        usage_rows, update.usage_keys.tolist(), update.usage_values.tolist(), strict=True
    ):
        usage = states[row].usage
        name = (cycles[(key >> CYCLE_SHIFT) & _LOW], classes[key & _LOW])
        old = usage.get(name)
        usage[name] = (
            (added[0], added[1], added[2], added[3], added[4])
            if old is None
            else (old[0] + added[0], old[1] + added[1], old[2] + added[2],
                  old[3] + added[3], old[4] + added[4])
        )  # fmt: skip
    return list(states.values())


def _charge_columnar(usage: ShardUsage, op: ops.ChargeColumns) -> ChargeColumnsAnswer:
    """Columnar charging, staged in one :class:`Work` and one synced commit as the
    per-record body stages it: states, charge rows (ledger rows and marks),
    notifications, forwards, fraud states and sponsor prices."""
    core = usage.core
    catalogue = core.catalogue
    invariant(catalogue is not None, "a shard charging columns has its catalogue")
    assert catalogue is not None
    work = Work(core)
    table, before = _table_of(work, op, core)
    n = op.usage.num_rows
    batch = ChargeInput.from_arrow(
        op.usage, op.rated, op.accounts, table, catalogue, rows=np.arange(n, dtype=np.int64)
    )
    # Every record's idempotency mark with one multi-get (issue #13, item 4).
    work.prefetch_marks(list(batch.record_ids))
    out = columnar_charge(
        batch, table, marks=_WorkMarks(work), tariff=core.tariff, config=core.charging,
        at_s=op.at_s, offline=op.offline,
    )  # fmt: skip
    # The table is this call's own: its rows become the states the work writes.
    table.apply(out.update)
    for state in _states_after(table, out.update, before):
        work.set_state(state)
    # The rows once (each builds its record's Charge): the answer's, and the stored ones
    # in the order ChargeColumns.charges gives (a record's sponsor lines, then its line).
    full = out.rows()
    extras = out.extras
    charges: list[Charge] = []
    for i, full_row in enumerate(full):
        if extras:
            charges.extend(extras.get(i, ()))
        if full_row.rated is not None:
            charges.append(full_row)
    no_refs: set[str] = set()
    for charge_row in charges:
        work.put_charge(charge_row, no_refs)
    for note in out.notifications:
        work.put_notification(note)
    forwards = out.forwards()
    for sponsored in forwards:
        work.put_forward(sponsored)
    sponsor_code = out.sponsor
    any_sponsored = bool(out.reference) or bool((sponsor_code >= 0).any())
    rows: list[Charge] | None = None
    if core.fraud is not None or any_sponsored:
        rows = [r if r.rated is None else without_rated(r) for r in full]
    if core.fraud is not None:
        assert rows is not None
        items = list(zip(batch.account_ids, batch.source, strict=True))
        assess_batch(core, work, items, rows)  # fraud rules, in the same batch (shard_risk)
    amounts: dict[str, int] = {}
    if rows is not None:
        decided = Effects(charges=tuple(charges), forwards=tuple(forwards))
        amounts = usage._sponsor_amounts(work, rows, [decided])
    work.commit()
    if rows is not None:
        return _answer_of_rows(rows, amounts, work.forwards)
    return _answer_of_columns(op, out, work.forwards)


def _answer_of_columns(
    op: ops.ChargeColumns, out: ColumnarAnswer, forwards: list[Forward]
) -> ChargeColumnsAnswer:
    """The answer of a batch with no sponsored line and no reference row, from the
    columns (no Python value per record): every row's id and account are the batch's."""
    n = op.usage.num_rows
    accounts = op.accounts
    columns = [
        op.usage.column("record_id"),
        pa.DictionaryArray.from_arrays(pa.array(out.result.astype(np.int8)), _RESULT_NAMES),
        accounts if pa.types.is_dictionary(accounts.type) else accounts.dictionary_encode(),
        pa.array(out.amount, pa.int64()),
        pa.array(out.bundle_units, pa.int64()),
        pa.DictionaryArray.from_arrays(pa.nulls(n, pa.int32()), pa.array([], pa.string())),
        pa.DictionaryArray.from_arrays(pa.nulls(n, pa.int8()), _RESULT_NAMES),
        pa.array(np.zeros(n, np.int64), pa.int64()),
    ]
    return ChargeColumnsAnswer(pa.RecordBatch.from_arrays(columns, schema=ANSWER_SCHEMA), forwards)
