"""The bill run over an account table: every account's bill of one cycle as columns.

:func:`bill_columns` bills the accounts of an
:class:`~billing.charging.table.AccountTable` for one cycle and answers with
:class:`~billing.billrun.column_outcomes.BillColumns`: per account the result,
total, credit applied and dates, and the invoice and statement lines as one
set of columns. It gives, account for account, the
:class:`~billing.billrun.model.BillOutcome` of :func:`~billing.billrun.run.bill_account`
over :func:`~billing.billrun.view.billing_account` (the reference), which
``BillColumns.outcome`` builds on demand and tests/test_billrun_columns.py
compares.

**Which account goes where.** An account whose first subscription starts
after the cycle is ``not_started`` (no bill), in columns. Prepaid accounts get
their statement in columns. A postpaid or hybrid account is billed in columns when its billing
state is *clean* — no draft, no final invoice for this cycle or a later one —
and it has no stored invoice and no extra charges for the run; its ``billed``
snapshot, if any, is subtracted in columns. Every other account is billed by
the reference, one at a time.

**How.** The usage totals of the table (sorted ``(row, cycle, class)``
columns) give per account and service the usage and bundle lines of the
cycle, the late lines of the earlier cycles of the window and the unbilled
charges of later cycles, each a group-by; the recurring fees come from one
proration per distinct set of subscriptions; credit, totals and statuses are
array arithmetic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from billing.billrun.column_outcomes import LINE_KINDS, BillColumns, FeeLines, Lines
from billing.billrun.lines import _window
from billing.billrun.model import BillingState, BillResult, BillRunConfig, ExtraCharge
from billing.billrun.run import bill_account
from billing.billrun.view import billing_account, fee_periods
from billing.charging.codes import I64, Codes, Groups, Ints
from billing.charging.table import MODES, AccountTable
from billing.charging.usage_store import usage_key
from billing.cycle import Cycle
from billing.invoice import Invoice, InvoiceStatus, LineKind
from billing.proration import prorate_periods
from billing.tariffs.model import Catalogue, PaymentMode

__all__ = ["bill_columns"]

PREPAID = MODES.index(PaymentMode.PREPAID)
_KIND = {kind: i for i, kind in enumerate(LINE_KINDS)}
_RESULT = {r: i for i, r in enumerate(BillResult)}
_STATUS = {s: i for i, s in enumerate(InvoiceStatus)}
# Sections of an invoice, in line order.
_USAGE_SECTION, _LATE_SECTION, _REST_SECTION, _FEE_SECTION, _CREDIT_SECTION = range(5)


@dataclass(frozen=True, slots=True)
class _Billed:
    """The clean billing states' ``billed`` snapshots as sorted usage-store columns."""

    keys: Ints
    values: Ints


def _billed_columns(table: AccountTable, clean: Mapping[int, BillingState]) -> _Billed:
    rows: list[int] = []
    cycles: list[int] = []
    classes: list[int] = []
    totals: list[Sequence[int]] = []
    cycle_code, class_code = table.cycles.code, table.classes.code
    for row, state in clean.items():
        for cycle_id, per in state.billed.items():
            c = cycle_code(cycle_id)
            for usage_class, total in per.items():
                rows.append(row)
                cycles.append(c)
                classes.append(class_code(usage_class))
                totals.append(tuple(total))
    if not rows:
        return _Billed(np.zeros(0, dtype=I64), np.zeros((5, 0), dtype=I64))
    keys = usage_key(np.array(rows, I64), np.array(cycles, I64), np.array(classes, I64))
    order = np.argsort(keys, kind="stable")
    return _Billed(keys[order], np.ascontiguousarray(np.array(totals, dtype=I64)[order].T))


def bill_columns(
    table: AccountTable,
    cycle: Cycle,
    *,
    catalogue: Catalogue | None,
    at_s: int,
    config: BillRunConfig,
    billing: Mapping[str, BillingState] | None = None,
    existing: Mapping[str, Invoice] | None = None,
    extras: Mapping[str, Sequence[ExtraCharge]] | None = None,
    topups: Mapping[str, int] | None = None,
) -> BillColumns:
    """Bill every account of ``table`` for ``cycle`` at ``at_s``.

    ``billing``, ``existing``, ``extras`` and ``topups`` hold, by account id, the
    accounts' billing states (absent: empty), stored final invoices of the cycle,
    extra charges and the cycle's top-ups (statements), as :func:`bill_account`
    and :func:`billing_account` take them.
    """
    billing, existing = billing or {}, existing or {}
    extras, topups = extras or {}, topups or {}
    size = table.size
    mode = table.column("mode")
    cycle_id = cycle.cycle_id
    # The accounts the reference bills (module docstring), and the clean states.
    reference_rows: set[int] = set()
    clean: dict[int, BillingState] = {}
    for account_id in {*billing, *existing, *extras}:
        row = table.index.get(account_id)
        if row is None or mode[row] == PREPAID:
            continue
        state = billing.get(account_id)
        if (
            account_id in existing
            or extras.get(account_id)
            or (state is not None and state.draft is not None)
            or (state is not None and state.last_final_cycle is not None
                and state.last_final_cycle >= cycle_id)
        ):  # fmt: skip
            reference_rows.add(row)
        elif state is not None:
            clean[row] = state
    billed = _billed_columns(table, clean)

    # Fees: one proration per distinct set of subscriptions; a foreign currency refuses.
    distinct, fee_of = np.unique(table.column("fee_set"), return_inverse=True)
    fee_of = fee_of.reshape(size)
    first = np.zeros(len(distinct), dtype=I64)
    first[fee_of[::-1]] = np.arange(size)[::-1]  # a row of each distinct set
    fee_sets: list[FeeLines] = []
    started_sets: list[bool] = []  # not a customer before the cycle's end: no bill at all
    for row in first.tolist():
        account = table.profiles[row]
        starts_s = min((s.start_s for s in account.subscriptions), default=None)
        started_sets.append(starts_s is None or starts_s < cycle.end_s)
        periods = fee_periods(account, catalogue, cycle)
        fee_sets.append(
            FeeLines.of(
                prorate_periods(cycle, periods, decimals=config.fee_decimals, mode=config.fee_mode),
                ok=all(p.currency in (None, account.currency) for p in periods),
            )
        )
    fee_ok = np.array([f.ok for f in fee_sets], dtype=bool)
    started = np.array(started_sets, dtype=bool)[fee_of] if size else np.zeros(0, dtype=bool)
    fee_total = np.array([f.total for f in fee_sets], dtype=I64)

    # Usage of the window's cycles, less what clean states billed already.
    u_rows, u_cycles, u_classes, u_values = table.usage.merged()
    names = table.cycles.names
    window = _window(cycle, config)
    position = np.full(len(names), -1, dtype=I64)  # order in the window, by cycle id
    for rank, cid in enumerate(sorted(window)):
        if cid in table.cycles.index:
            position[table.cycles.index[cid]] = rank
    later = np.array([name > cycle_id for name in names], dtype=bool)
    current = table.cycles.index.get(cycle_id, -1)
    if len(billed.keys):
        keys = usage_key(u_rows, u_cycles, u_classes)
        at = np.searchsorted(billed.keys, keys)
        hit = at < len(billed.keys)
        hit[hit] = billed.keys[at[hit]] == keys[hit]
        minus = np.zeros_like(u_values)
        minus[:, hit] = billed.values[:, at[hit]]
        deltas = u_values - minus
    else:
        deltas = u_values
    postpaid_like = mode != PREPAID
    in_columns = np.ones(size, dtype=bool)
    in_columns[list(reference_rows)] = False
    invoiced = postpaid_like[u_rows] & in_columns[u_rows] & started[u_rows]
    future = invoiced & later[u_cycles] if len(later) else invoiced & False
    future_unbilled = np.zeros(size, dtype=I64)
    if future.any():
        groups = Groups(u_rows[future])
        future_unbilled[groups.keys_of] = groups.sum(deltas[4][future])

    services: Codes[str] = Codes(sorted({n.partition(".")[0] for n in table.classes.names}))
    service_of = np.array(
        [services.index[n.partition(".")[0]] for n in table.classes.names] or [0], dtype=I64
    )
    lines = Lines(table, services)

    # Statements (prepaid): the cycle's usage by service, money charged.
    statement = ~postpaid_like[u_rows] & started[u_rows] & (u_cycles == current)
    _usage_lines(lines, u_rows[statement], service_of[u_classes[statement]],
                 u_values[:, statement], money=3)  # fmt: skip

    # Invoices: the cycle's deltas, then late lines of the window's earlier cycles.
    in_window = invoiced & (position[u_cycles] >= 0) & deltas.any(axis=0)
    now = in_window & (u_cycles == current)
    _usage_lines(lines, u_rows[now], service_of[u_classes[now]], deltas[:, now], money=4)
    late = in_window & (u_cycles != current)
    if late.any():
        key = (u_rows[late] << 32) | (position[u_cycles[late]] << 16) | service_of[u_classes[late]]
        groups = Groups(key)
        sums = _sums(deltas[:, late], groups)
        has = sums[4] != 0
        g_rows = groups.keys_of[has] >> 32
        g_position = (groups.keys_of[has] >> 16) & 0xFFFF
        window_ids = sorted(window)
        late_cycle = np.array(
            [table.cycles.index.get(window_ids[p], -1) for p in g_position.tolist()], dtype=I64
        )
        lines.add(
            rows=g_rows,
            section=_LATE_SECTION,
            order=groups.keys_of[has] & 0xFFFFFFFF,
            kind=_KIND[LineKind.LATE_USAGE],
            amount=sums[4, has],
            service=groups.keys_of[has] & 0xFFFF,
            units=sums[1, has] - sums[2, has],
            count=sums[0, has],
            late_cycle=late_cycle,
        )
    invoice_rows = np.flatnonzero(postpaid_like[:size] & in_columns & started)
    usage_sum = lines.sums(size)
    book_to_bill = -table.column("unbilled") - future_unbilled
    rest = book_to_bill - usage_sum
    rest_rows = invoice_rows[rest[invoice_rows] != 0]
    lines.add(
        rows=rest_rows,
        section=_REST_SECTION,
        order=np.zeros(len(rest_rows), dtype=I64),
        kind=_KIND[LineKind.LATE_USAGE],
        amount=rest[rest_rows],
    )
    fee_rows = invoice_rows[fee_ok[fee_of[invoice_rows]]]
    lines.add_fees(fee_rows, fee_of[fee_rows], fee_sets, section=_FEE_SECTION)
    pre_credit = np.zeros(size, dtype=I64)
    pre_credit[invoice_rows] = usage_sum[invoice_rows] + rest[invoice_rows]
    pre_credit[invoice_rows] += fee_total[fee_of[invoice_rows]]
    credit = np.minimum(np.maximum(table.column("credit"), 0), np.maximum(pre_credit, 0))
    credit_rows = fee_rows[credit[fee_rows] != 0]
    lines.add(
        rows=credit_rows,
        section=_CREDIT_SECTION,
        order=np.zeros(len(credit_rows), dtype=I64),
        kind=_KIND[LineKind.CREDIT],
        amount=-credit[credit_rows],
        text="credit applied",
    )
    total = pre_credit - credit

    final = at_s >= cycle.end_s + config.grace_s
    result = np.full(size, _RESULT[BillResult.STATEMENT], dtype=I64)
    result[invoice_rows] = _RESULT[BillResult.ISSUED if final else BillResult.DRAFT]
    mismatch = invoice_rows[~fee_ok[fee_of[invoice_rows]]]
    result[mismatch] = _RESULT[BillResult.CURRENCY_MISMATCH]
    result[~started] = _RESULT[BillResult.NOT_STARTED]
    status = np.full(size, _STATUS[InvoiceStatus.DRAFT], dtype=I64)
    if final:
        status[invoice_rows] = np.where(
            total[invoice_rows] > 0, _STATUS[InvoiceStatus.OPEN], _STATUS[InvoiceStatus.PAID]
        )

    # The reference, one account at a time, for the rest.
    reference = {}
    for row in sorted(reference_rows):
        account_id = table.ids[row]
        view = billing_account(
            table.state(row),
            cycle=cycle,
            catalogue=catalogue,
            extras=extras.get(account_id, ()),
            topups=topups.get(account_id, 0),
        )
        reference[row] = bill_account(
            view,
            billing.get(account_id, BillingState()),
            cycle,
            at_s=at_s,
            config=config,
            existing=existing.get(account_id),
        )
    return BillColumns(
        table=table,
        cycle=cycle,
        at_s=at_s,
        config=config,
        result=result,
        total=total,
        credit=credit,
        status=status,
        lines=lines.freeze(),
        topups={table.index[a]: t for a, t in topups.items() if a in table.index},
        billing=clean,
        deltas=(u_rows[in_window], u_cycles[in_window], u_classes[in_window], deltas[:, in_window]),
        reference=reference,
    )


def _sums(values: Ints, groups: Groups) -> Ints:
    """Per group, each of the ``(5, n)`` totals summed: a ``(5, groups)`` array."""
    return np.stack([groups.sum(v) for v in values])


def _usage_lines(lines: Lines, rows: Ints, service: Ints, values: Ints, *, money: int) -> None:
    """USAGE and BUNDLE lines per (row, service) of ``(5, n)`` totals: ``money`` is the
    total shown as the amount."""
    if not len(rows):
        return
    groups = Groups(rows << 16 | service)
    sums = _sums(values, groups)
    g_rows, g_service = groups.keys_of >> 16, groups.keys_of & 0xFFFF
    amount, charged = sums[money], sums[1] - sums[2]
    usage = (amount != 0) | (charged != 0)
    lines.add(
        rows=g_rows[usage],
        section=_USAGE_SECTION,
        order=g_service[usage] << 1,
        kind=_KIND[LineKind.USAGE],
        amount=amount[usage],
        service=g_service[usage],
        units=charged[usage],
        count=sums[0, usage],
    )
    bundle = sums[2] != 0
    lines.add(
        rows=g_rows[bundle],
        section=_USAGE_SECTION,
        order=g_service[bundle] << 1 | 1,
        kind=_KIND[LineKind.BUNDLE],
        amount=np.zeros(int(bundle.sum()), dtype=I64),
        service=g_service[bundle],
        units=sums[2, bundle],
    )
