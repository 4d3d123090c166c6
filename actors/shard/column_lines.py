"""The ledger rows and idempotency marks of a columnar batch, encoded from its columns.

A batch charged by columnar charging (:mod:`actors.shard.column_usage`) stores,
per record charged, one charge row (the usage line, ``l/<account>\\0<seq>``)
and one pointer mark (``i/<record id>``): the bytes
:meth:`~actors.shard.work.Work.put_charge` writes for the record's
:class:`~billing.charging.rows.Charge`, but encoded straight from the answer's
columns and the usage batch's (:func:`~actors.shard.codec.encode_charge_values`,
:func:`~actors.shard.codec.encode_charge_mark`), without a ``Charge`` or a
:class:`~billing.rated.RatedRecord` per record. The on-disk formats do not
change, so every reader reads these rows as before.

The few rows the columns do not describe take ``put_charge`` on their
``Charge``, in their place in the order: the rows the reference path or a
replay decided, the sponsor lines charged before a record's own line, and a
content purchase with a provider share (its share is an entry of its own,
``content_share_entry``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from actors.shard.codec import encode_charge_values
from billing.charging.charge_input import SERVICES
from billing.charging.vector import RESULTS, code_of
from billing.outcome import CHARGED_RESULTS, Result
from billing.records import CONTENT_FIELDS

if TYPE_CHECKING:
    from actors.shard.work import Work
    from billing.charging.columnar import ChargeColumns

__all__ = ["lines_from_records", "stage_lines"]

_LINE_CODES: Final = frozenset(code_of(r) for r in (*CHARGED_RESULTS, Result.SPONSORED))
_SPONSORED: Final = code_of(Result.SPONSORED)
_RESULT_VALUES: Final = tuple(r.value for r in RESULTS)
_SERVICE_VALUES: Final = tuple(s.value for s in SERVICES)


def lines_from_records(rated: pa.RecordBatch) -> set[int]:
    """The rows :func:`stage_lines` stores from their record, not from the columns
    alone: a content purchase whose provider takes a share."""
    providers = rated.column("content_provider")
    if providers.null_count == len(providers):
        return set()
    picked = pc.and_(pc.is_valid(providers), pc.greater(rated.column("provider_share"), 0))
    return set(np.flatnonzero(picked.to_numpy(zero_copy_only=False)).tolist())


def stage_lines(
    work: Work, usage: pa.RecordBatch, rated: pa.RecordBatch, out: ChargeColumns
) -> None:
    """Stage in ``work`` the rows ``out.charges()`` lists (per record, its sponsor lines,
    then its own fresh line), with their marks, in that order. ``usage``/``rated``: the
    batch's columns, row ``i`` being ``out``'s record ``i``."""
    batch, table = out.batch, out.table
    reference, extras = out.reference, out.extras
    special = set(reference) | lines_from_records(rated)
    results, cycles = out.result.tolist(), out.cycle.tolist()
    accounts, services = batch.account.tolist(), batch.service.tolist()
    classes, currencies = batch.usage_class.tolist(), batch.currency.tolist()
    units, bundle_units, amounts = (
        batch.units.tolist(),
        out.bundle_units.tolist(),
        out.amount.tolist(),
    )
    prepaid, unbilled, debt = out.prepaid.tolist(), out.unbilled.tolist(), out.debt.tolist()
    sponsor, rated_amounts = out.sponsor.tolist(), batch.amount.tolist()
    contents = list(zip(*(usage.column(name).to_pylist() for name in CONTENT_FIELDS), strict=True))
    record_ids, ids, sponsors = batch.record_ids, table.ids, out.sponsors
    cycle_names, class_names = table.cycles.names, table.classes.names
    currency_names = table.currencies.names
    at_s, pack, put_line = out.at_s, work.pack, work.put_line
    no_refs: set[str] = set()
    for i, code in enumerate(results):
        if extras:
            for line in extras.get(i, ()):
                work.put_charge(line, no_refs)
        if i in special:
            row = out.row(i)
            if row.rated is not None:
                work.put_charge(row, no_refs)
            continue
        if code not in _LINE_CODES:
            continue
        record_id = record_ids[i]
        account_id = ids[accounts[i]]
        by = sponsors[sponsor[i]] if code == _SPONSORED and sponsor[i] >= 0 else None
        value = encode_charge_values(
            (units[i], bundle_units[i], amounts[i], prepaid[i], unbilled[i], debt[i], at_s),
            (
                record_id, "usage:" + record_id, account_id, _RESULT_VALUES[code],
                cycle_names[cycles[i]], _SERVICE_VALUES[services[i]], class_names[classes[i]],
                currency_names[currencies[i]], by, None,
            ),
            pack,
        )  # fmt: skip
        fields = (("account", account_id), ("amount", rated_amounts[i]), ("content", contents[i]))
        put_line(account_id, value, record_id, fields)
