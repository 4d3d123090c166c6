"""Charging a bulk batch on an account shard: rated columns in, answer columns out.

The seam between the bulk path and charging. A partition sends a shard the
rows it charges there as columns (:class:`~actors.shard.ops.ChargeColumns`:
the usage rows, the column rater's rated rows, the paying account of each) and
gets one answer row per record back as columns (:data:`ANSWER_SCHEMA`), with
the sponsor forwards the host delivers.

:func:`charge_columns` charges through columnar charging
(``billing.charging.columnar.charge_columns``): the batch's accounts (and any
sponsor on this shard its records may charge) are read through one
:class:`~actors.shard.work.Work` and brought up to date in the shard's one
account table (:mod:`actors.shard.table_cache`), the Arrow batches become a
``ChargeInput`` (``from_arrow``), the record ids' marks are read with one
multi-get, and the answer's states, charge rows and marks (encoded from the
columns: :mod:`actors.shard.column_lines`), notifications, forwards, fraud
states and sponsor prices are staged in that work: one synced commit, as the
per-record body makes; then the table takes the batch's update. A batch the columnar
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
from actors.shard.codec import AccountRow
from actors.shard.column_lines import lines_from_records, stage_lines
from actors.shard.outbox import Forward
from actors.shard.risk import assess_batch
from actors.shard.work import Work, without_rated
from billing.accounts import AccountState, Effects
from billing.charging.charge_input import ChargeInput
from billing.charging.columnar import ChargeColumns as ColumnarAnswer
from billing.charging.columnar import charge_columns as columnar_charge
from billing.charging.rows import Charge
from billing.charging.step import working_copy
from billing.charging.table import AccountTable, TableUpdate
from billing.charging.usage_store import CYCLE_SHIFT, ROW_SHIFT
from billing.charging.vector import RESULTS, code_of
from billing.column_rating import RatedRows
from billing.idempotency import Mark
from billing.invariant import invariant
from billing.rated import RatedRecord

if TYPE_CHECKING:
    from actors.shard.core import ShardCore
    from actors.shard.usage import ShardUsage

_LOW: Final = (1 << CYCLE_SHIFT) - 1

__all__ = ["ANSWER_SCHEMA", "RESULTS", "ChargeColumnsAnswer", "charge_columns"]

# RESULTS (``billing.charging.vector``'s): the dictionary of the ``result`` and
# ``replay_of`` columns, whose codes are the columnar core's own ``out.result``.

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
    columns = [
        pa.array([row.record_id for row in rows], pa.string()),
        pa.DictionaryArray.from_arrays(
            pa.array(np.array([code_of(row.result) for row in rows], np.int8)), _RESULT_NAMES
        ),
        _labels([row.account_id for row in rows]),
        pa.array([row.amount for row in rows], pa.int64()),
        pa.array([row.bundle_units for row in rows], pa.int64()),
        _labels([row.sponsored_by for row in rows]),
        pa.DictionaryArray.from_arrays(
            pa.array(
                [None if row.replay_of is None else code_of(row.replay_of) for row in rows],
                pa.int8(),
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


def _rows_of(
    work: Work, op: ops.ChargeColumns, core: ShardCore
) -> tuple[dict[str, AccountRow], list[str]]:
    """The current rows of the batch's accounts, read through ``work`` (the shard's
    cache, else the store, as the per-record body reads them), with every sponsor on
    this shard a record of the batch may charge (the per-record body charges such a
    sponsor here); and the ids named that the shard does not hold."""
    rows: dict[str, AccountRow] = {}
    missing: list[str] = []
    for account_id in pc.unique(op.accounts).to_pylist():
        row = work.row(account_id)
        if row is None:
            missing.append(account_id)
        else:
            rows[account_id] = row
    sponsors: list[str] = []
    for row in rows.values():
        sponsors.extend(rule.sponsor_account_id for rule in row.state.account.sponsor_rules)
    column = op.rated.column("usage_class")
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    for usage_class in pc.unique(column).to_pylist():
        found = None if usage_class is None else core.tariff.sponsor_for(usage_class)
        if found is not None:
            sponsors.append(found[0])
    for sponsor_id in sponsors:
        if sponsor_id not in rows:
            sponsor = work.row(sponsor_id)
            if sponsor is not None:
                rows[sponsor_id] = sponsor
    return rows, missing


def _states_after(
    table: AccountTable, update: TableUpdate, before: dict[str, AccountRow]
) -> dict[str, AccountState]:
    """The new state of every account ``update`` changes: its state before the batch
    (``before``, the rows the table was loaded from) with the update's values, as
    :meth:`AccountTable.apply` writes them into the table; the table is not read."""
    usage_rows = (update.usage_keys >> ROW_SHIFT).tolist()
    touched: set[int] = set(update.rows.tolist())
    touched.update(update.bundle_rows.tolist())
    touched.update(usage_rows)
    touched.update(update.entered_rows.tolist())
    touched.update(update.reminders)
    touched.update(update.profiles)
    ids = table.ids
    states: dict[int, AccountState] = {}
    for row in touched:
        # the reference core's copy: containers charging changes are copied, the
        # others shared (a state is never changed in place once committed)
        state = states[row] = working_copy(before[ids[row]].state)
        state.history = []
    for row, books in zip(update.rows.tolist(), update.books.tolist(), strict=True):
        state = states[row]
        (state.prepaid, state.reserved, state.unbilled, state.receivable, state.credit,
         state.debt) = books  # fmt: skip
    cycles, classes, bundles = table.cycles.names, table.classes.names, table.bundles.names
    for cycle, bundle, row, used in zip(
        update.bundle_cycles.tolist(), update.bundle_ids.tolist(), update.bundle_rows.tolist(),
        update.bundle_used.tolist(), strict=True,
    ):  # fmt: skip
        key = (cycles[cycle], bundles[bundle])
        if used:
            states[row].bundle_used[key] = used
        else:
            states[row].bundle_used.pop(key, None)  # zero consumption is not stored
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
    entered = zip(update.entered_rows.tolist(), update.entered_cycles.tolist(), strict=True)
    for row, cycle in entered:
        state = states[row]
        state.reminder_cycle, state.reminders, state.crossings = cycles[cycle], set(), {}
    for row, (cycle, keys, crossings) in update.reminders.items():
        state = states[row]
        state.reminder_cycle = None if cycle < 0 else cycles[cycle]
        state.reminders, state.crossings = set(keys), dict(crossings)
    for row, account in update.profiles.items():
        states[row].account = account
    return {ids[row]: state for row, state in sorted(states.items())}


def _charge_columnar(usage: ShardUsage, op: ops.ChargeColumns) -> ChargeColumnsAnswer:
    """Columnar charging, staged in one :class:`Work` and one synced commit as the
    per-record body stages it: states, charge rows (ledger rows and marks),
    notifications, forwards, fraud states and sponsor prices."""
    core = usage.core
    catalogue = core.catalogue
    invariant(catalogue is not None, "a shard charging columns has its catalogue")
    assert catalogue is not None
    work = Work(core)
    before, missing = _rows_of(work, op, core)
    table = core.account_table.load(before, missing)
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
    built = _states_after(table, out.update, before)
    for state in built.values():
        work.set_state(state)
    # The rows the columns do not say alone: decided by the reference path or a replay,
    # or a sponsored line (its sponsor's price is answered and stored under s/; its
    # forward carries its record).
    special = sorted({*out.reference, *np.flatnonzero(out.sponsor >= 0).tolist()})
    prefetch = getattr(batch.source, "prefetch", None)  # from_arrow's source has it
    if prefetch is not None:
        prefetch([*special, *lines_from_records(op.rated)])
    stage_lines(work, op.usage, op.rated, out)
    for note in out.notifications:
        work.put_notification(note)
    forwards = out.forwards()
    for sponsored in forwards:
        work.put_forward(sponsored)
    rows = {i: without_rated(out.row(i)) for i in special}
    if core.fraud is not None:
        every = [without_rated(out.row(i)) if i not in rows else rows[i] for i in range(n)]
        items = list(zip(batch.account_ids, batch.source, strict=True))
        assess_batch(core, work, items, every)  # fraud rules, in the same batch (shard_risk)
    amounts: dict[str, int] = {}
    if rows:
        lines = [line for i in sorted(out.extras) for line in out.extras[i]]
        decided = Effects(charges=(*lines, *out.reference.values()), forwards=tuple(forwards))
        amounts = usage._sponsor_amounts(work, list(rows.values()), [decided])
    work.commit()
    core.account_table.committed(out.update, work.rows, built)
    return _answer_of_columns(op, out, rows, amounts, work.forwards)


def _answer_of_columns(
    op: ops.ChargeColumns,
    out: ColumnarAnswer,
    rows: dict[int, Charge],
    amounts: dict[str, int],
    forwards: list[Forward],
) -> ChargeColumnsAnswer:
    """The answer from the columns, with the rows they do not say alone (``rows``: a
    reference or replayed row, a sponsored line) put in their place; ``amounts``: what
    the sponsor of each sponsored record is charged. Every row's id is the batch's, and
    its account too but for a replay of a record first charged to another account."""
    n = op.usage.num_rows
    accounts: pa.Array = op.accounts
    account_ids = out.batch.account_ids
    if any(row.account_id != account_ids[i] for i, row in rows.items()):
        # a replay answers the account the record was first charged to
        named = list(account_ids)
        for i, row in rows.items():
            named[i] = row.account_id
        accounts = pa.array(named, pa.string())
    result = out.result.astype(np.int8)
    amount, bundle_units = out.amount.copy(), out.bundle_units.copy()
    sponsored_by: list[str | None] = [None] * n
    replay_of: list[int | None] = [None] * n
    sponsor_amount = np.zeros(n, np.int64)
    for i, row in rows.items():
        result[i] = code_of(row.result)
        amount[i], bundle_units[i] = row.amount, row.bundle_units
        sponsored_by[i] = row.sponsored_by
        replay_of[i] = None if row.replay_of is None else code_of(row.replay_of)
        sponsor_amount[i] = amounts.get(row.record_id, 0)
    columns = [
        op.usage.column("record_id"),
        pa.DictionaryArray.from_arrays(pa.array(result), _RESULT_NAMES),
        accounts if pa.types.is_dictionary(accounts.type) else accounts.dictionary_encode(),
        pa.array(amount, pa.int64()),
        pa.array(bundle_units, pa.int64()),
        _labels(sponsored_by)
        if rows
        else pa.DictionaryArray.from_arrays(pa.nulls(n, pa.int32()), pa.array([], pa.string())),
        pa.DictionaryArray.from_arrays(pa.array(replay_of, pa.int8()), _RESULT_NAMES),
        pa.array(sponsor_amount, pa.int64()),
    ]
    return ChargeColumnsAnswer(pa.RecordBatch.from_arrays(columns, schema=ANSWER_SCHEMA), forwards)
