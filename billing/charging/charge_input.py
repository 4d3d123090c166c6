"""What columnar charging consumes: a batch of rated records as plain columns.

:class:`ChargeInput` is the one seam between rating and columnar charging
(:func:`billing.charging.columnar.charge_columns`). Its columns are numpy
arrays coded against one :class:`~billing.charging.table.AccountTable`
(account rows, currency, usage class and plan codes); the record ids stay a
sequence of strings, since they are keys.

``source`` gives back record ``i`` as a :class:`~billing.rated.RatedRecord`.
Charging reads it only for what it does not decide in columns: a record that
takes the reference path or replays a mark, and the derived rows and marks
of the output. A source may offer ``prefetch(positions)``: charging calls it
once per batch with every position its reference path and replays will read.

Two ways in, each one conversion per batch: :meth:`ChargeInput.from_arrow`
takes the bulk path's Arrow batches (``billing.columns``: a usage batch and
the rater's rated batch, row for row), maps each distinct label to a table
code once, and builds records from the rater's
:class:`~billing.column_rating.RatedRows`; :meth:`ChargeInput.from_records`
takes a list of rated records (the list is the source).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import overload

import numpy as np
import pyarrow as pa

from billing.charging.codes import I64, Codes, Ints
from billing.charging.table import AccountTable
from billing.column_rating import RatedRows
from billing.invariant import invariant
from billing.rated import RatedRecord, RatingOutcome
from billing.records import Service
from billing.tariffs.model import Catalogue

__all__ = ["SERVICES", "ChargeInput"]

SERVICES: tuple[Service, ...] = tuple(Service)
_SERVICE_CODE = {s: i for i, s in enumerate(SERVICES)}
_RECORD, _RECORD_ID, _OPENING = (
    attrgetter("record"),
    attrgetter("record_id"),
    attrgetter("record_opening_time_s"),
)
_UNITS, _AMOUNT, _CURRENCY = attrgetter("units"), attrgetter("amount"), attrgetter("currency")
_CLASS, _PLAN, _SERVICE = (
    attrgetter("usage_class"), attrgetter("plan_id", "plan_version"), attrgetter("service")
)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class ChargeInput:
    """A batch of rated records, each column one value per record, in batch order.

    ``account``: the subscriber's row in the table, ``-1`` when the table does
    not hold it (``account_ids`` keeps the id as given, for its refusal row).
    ``currency``, ``usage_class`` and ``plan`` are codes of the table's
    ``currencies``, ``classes`` and ``plans`` (``(plan_id, plan_version)``);
    ``service`` indexes :data:`SERVICES`; ``time_s`` is the record opening time.
    """

    record_ids: Sequence[str]
    account_ids: Sequence[str]
    account: Ints
    time_s: Ints
    units: Ints
    amount: Ints
    currency: Ints
    usage_class: Ints
    plan: Ints
    service: Ints
    source: Sequence[RatedRecord]

    def __post_init__(self) -> None:
        n = len(self.record_ids)
        invariant(
            all(
                len(c) == n
                for c in (
                    self.account_ids, self.account, self.time_s, self.units, self.amount,
                    self.currency, self.usage_class, self.plan, self.service, self.source,
                )
            ),
            "rated columns of one length",
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.record_ids)

    @classmethod
    def from_records(
        cls, records: Sequence[RatedRecord], account_ids: Sequence[str], table: AccountTable
    ) -> ChargeInput:
        """Columns of ``records`` charged to ``account_ids`` (one per record), coded
        against ``table`` (new strings are interned in its codes; no row is added)."""
        n = len(records)
        usage = list(map(_RECORD, records))
        index_get = table.index.get
        rows = [index_get(a, -1) for a in account_ids]
        return cls(
            record_ids=list(map(_RECORD_ID, usage)),
            account_ids=list(account_ids),
            account=np.array(rows, dtype=I64),
            time_s=np.fromiter(map(_OPENING, usage), I64, count=n),
            units=np.fromiter(map(_UNITS, records), I64, count=n),
            amount=np.fromiter(map(_AMOUNT, records), I64, count=n),
            currency=table.currencies.codes(list(map(_CURRENCY, records))),
            usage_class=table.classes.codes(list(map(_CLASS, records))),
            plan=table.plans.codes(list(map(_PLAN, records))),
            service=np.fromiter(map(_SERVICE_CODE.__getitem__, map(_SERVICE, usage)), I64, n),
            source=records,
        )

    @classmethod
    def from_arrow(
        cls,
        usage: pa.RecordBatch,
        rated: pa.RecordBatch,
        accounts: pa.Array | Sequence[str],
        table: AccountTable,
        catalogue: Catalogue,
        rows: Ints | None = None,
    ) -> ChargeInput:
        """The rows ``rows`` of a ``billing.columns.USAGE_SCHEMA`` batch and of its
        ``RATED_SCHEMA`` batch (the rater's output, row for row), charged to ``accounts``
        (one account id per usage row, a string column or a sequence). ``rows`` defaults
        to every rated row (``reject_reason`` null). Labels are mapped to table codes
        once per distinct label; the record ids become one list of strings."""
        if rows is None:
            rejected = rated.column("reject_reason").is_null().to_numpy(zero_copy_only=False)
            rows = np.flatnonzero(rejected)
        picked = pa.array(rows, pa.int64())
        account_ids: list[str] = (
            accounts.take(picked).to_pylist()
            if isinstance(accounts, pa.Array)
            else [accounts[i] for i in rows.tolist()]
        )
        index_get = table.index.get
        return cls(
            record_ids=usage.column("record_id").take(picked).to_pylist(),
            account_ids=account_ids,
            account=np.array([index_get(a, -1) for a in account_ids], dtype=I64),
            time_s=usage.column("record_opening_time_s").to_numpy()[rows].astype(I64),
            units=rated.column("units").to_numpy()[rows].astype(I64),
            amount=rated.column("amount").to_numpy()[rows].astype(I64),
            currency=_label_codes(rated.column("currency"), rows, table.currencies),
            usage_class=_label_codes(rated.column("usage_class"), rows, table.classes),
            plan=_plan_codes(rated.column("plan_id"), rated.column("plan_version"), rows, table),
            service=_label_codes(usage.column("service"), rows, _SERVICE_NAMES),
            source=_Rows(usage, rated, catalogue, rows.tolist()),
        )


_SERVICE_NAMES: Codes[str] = Codes(s.value for s in SERVICES)


def _dictionary(column: pa.Array) -> pa.DictionaryArray:
    return column if pa.types.is_dictionary(column.type) else column.dictionary_encode()


def _indices(column: pa.DictionaryArray, rows: Ints) -> Ints:
    """The dictionary index of each picked row (a null row, never picked, reads 0)."""
    indices: Ints = np.asarray(column.indices.fill_null(0).to_numpy(), dtype=I64)
    return indices[rows]


def _label_codes(column: pa.Array, rows: Ints, codes: Codes[str]) -> Ints:
    """The codes of a label column's picked rows: one interning per distinct label."""
    labels = _dictionary(column)
    mapping = codes.codes(labels.dictionary.to_pylist())
    return mapping[_indices(labels, rows)] if len(mapping) else np.zeros(len(rows), I64)


def _plan_codes(plan_ids: pa.Array, versions: pa.Array, rows: Ints, table: AccountTable) -> Ints:
    """The table's ``(plan_id, plan_version)`` codes of the picked rows."""
    ids, names = _dictionary(plan_ids), _dictionary(versions)
    id_labels, version_labels = ids.dictionary.to_pylist(), names.dictionary.to_pylist()
    pair = _indices(ids, rows) * (len(version_labels) + 1) + _indices(names, rows)
    distinct, inverse = np.unique(pair, return_inverse=True)
    width = len(version_labels) + 1
    mapping = np.array(
        [
            table.plans.code((id_labels[p // width], version_labels[p % width]))
            for p in distinct.tolist()
        ],
        dtype=I64,
    )
    return mapping[inverse.reshape(len(rows))] if len(rows) else np.zeros(0, I64)


class _Rows(Sequence[RatedRecord]):
    """Rows ``picked`` of the rater's outcomes, as rated records, built when asked for.

    Building one row of :class:`RatedRows` converts its whole batch to Python values
    first (a microsecond a row): right for many rows, ten milliseconds for one. So the
    rows charging announces (:meth:`prefetch`: the few its reference path takes) are
    built from one Arrow ``take`` of just them; any other row builds the whole batch.
    """

    __slots__ = ("_all", "_built", "_catalogue", "_picked", "_rated", "_usage")

    def __init__(
        self, usage: pa.RecordBatch, rated: pa.RecordBatch, catalogue: Catalogue, picked: list[int]
    ) -> None:
        self._usage, self._rated, self._catalogue = usage, rated, catalogue
        self._picked = picked
        self._built: dict[int, RatedRecord] = {}
        self._all: RatedRows | None = None

    def __len__(self) -> int:
        return len(self._picked)

    def prefetch(self, positions: Sequence[int]) -> None:
        """Build the records at ``positions`` now, from those rows only."""
        wanted = [p for p in dict.fromkeys(positions) if p not in self._built]
        if not wanted or self._all is not None:
            return
        rows = pa.array([self._picked[p] for p in wanted], pa.int64())
        few = RatedRows(self._usage.take(rows), self._rated.take(rows), self._catalogue)
        for k, position in enumerate(wanted):
            self._built[position] = _rated(few[k], self._picked[position])

    @overload
    def __getitem__(self, index: int) -> RatedRecord: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[RatedRecord]: ...

    def __getitem__(self, index: int | slice) -> RatedRecord | Sequence[RatedRecord]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        found = self._built.get(index)
        if found is None:
            if self._all is None:
                self._all = RatedRows(self._usage, self._rated, self._catalogue)
            found = _rated(self._all[self._picked[index]], self._picked[index])
        return found


def _rated(outcome: RatingOutcome, row: int) -> RatedRecord:
    invariant(isinstance(outcome, RatedRecord), f"row {row} was not rated")
    assert isinstance(outcome, RatedRecord)  # for mypy; the invariant above always runs
    return outcome
