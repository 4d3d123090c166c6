"""What columnar charging consumes: a batch of rated records as plain columns.

:class:`RatedColumns` is the one seam between rating and columnar charging
(:func:`billing.charging.columnar.charge_columns`). Its columns are numpy
arrays coded against one :class:`~billing.charging.table.AccountTable`
(account rows, currency, usage class and plan codes); the record ids stay a
sequence of strings, since they are keys.

``source`` gives back record ``i`` as a :class:`~billing.rated.RatedRecord`.
Charging reads it only for what it does not decide in columns: a record that
takes the reference path, a partly covered record's repricing, and the
derived rows and marks of the output. :meth:`RatedColumns.from_records`
converts a list of rated records once per batch (the list is the source); a
columnar rater hands its own columns and a ``source`` that builds record
``i`` on demand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter

import numpy as np

from billing.charging.codes import I64, Ints
from billing.charging.table import AccountTable
from billing.invariant import invariant
from billing.rated import RatedRecord
from billing.records import Service

__all__ = ["SERVICES", "RatedColumns"]

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
class RatedColumns:
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
    ) -> RatedColumns:
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
