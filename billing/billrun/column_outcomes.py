"""The answer of the columnar bill run: bills as columns, outcome objects on demand.

:class:`BillColumns` holds, per table row, the result, total, credit applied
and invoice status of a :func:`~billing.billrun.columns.bill_columns` run, and
every invoice and statement line in one set of columns (:class:`Lines`,
sorted by row, then line order). :meth:`BillColumns.outcome` builds the
:class:`~billing.billrun.model.BillOutcome` the reference gives for the
account — invoice, statement, entries, new billing state, notification —
and :meth:`BillColumns.postings` sums the run's postings per ledger account
with array operations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from billing.billrun.lines import merge_billed
from billing.billrun.model import (
    BillingState,
    BillOutcome,
    BillResult,
    BillRunConfig,
    Statement,
    UsageTotal,
    invoice_id_for,
)
from billing.billrun.postings import REVENUE_RECURRING, invoice_entries
from billing.charging.codes import I64, Codes, Groups, Ints
from billing.charging.table import AccountTable
from billing.cycle import Cycle
from billing.invoice import Invoice, InvoiceStatus, LineItem, LineKind
from billing.ledger import Book, account_key
from billing.notifications import NotificationKind, make_notification
from billing.proration import ProratedFee

__all__ = ["LINE_KINDS", "BillColumns", "FeeLines", "Lines"]

LINE_KINDS: tuple[LineKind, ...] = tuple(LineKind)
_RESULTS: tuple[BillResult, ...] = tuple(BillResult)
_STATUSES: tuple[InvoiceStatus, ...] = tuple(InvoiceStatus)
_FIELDS = ("rows", "section", "order", "kind", "amount", "service", "units", "count",
           "has_units", "has_count", "late_cycle", "text")  # fmt: skip


@dataclass(frozen=True, slots=True)
class FeeLines:
    """The recurring-fee lines of one set of subscriptions: ``(description, amount)``."""

    lines: tuple[tuple[str, int], ...]
    total: int
    ok: bool  # every fee in the account's currency (else the bill is refused)

    @classmethod
    def of(cls, fees: Sequence[ProratedFee], *, ok: bool) -> FeeLines:
        lines = tuple(
            (f"{fee.label}{'' if fee.is_full else f' ({fee.days}/{fee.cycle_days} days)'}",
             fee.amount)
            for fee in fees
        )  # fmt: skip
        return cls(lines, sum(amount for _, amount in lines), ok)


class Lines:
    """Bill lines as columns, added in chunks, then sorted by (row, section, order).

    ``service`` and ``late_cycle`` are codes (``-1``: none); ``text`` is a code of
    ``texts`` for a line whose description is not derived from its kind.
    """

    def __init__(self, table: AccountTable, services: Codes[str]) -> None:
        self.table = table
        self.services = services
        self.texts: Codes[str] = Codes()
        self._chunks: list[dict[str, Ints]] = []
        self.columns: dict[str, Ints] = {}
        self.starts: Ints = np.zeros(0, dtype=I64)

    def add(
        self,
        *,
        rows: Ints,
        section: int,
        order: Ints,
        kind: int,
        amount: Ints,
        service: Ints | None = None,
        units: Ints | None = None,
        count: Ints | None = None,
        late_cycle: Ints | None = None,
        text: str | None = None,
    ) -> None:
        n = len(rows)
        if not n:
            return
        none = np.full(n, -1, dtype=I64)
        self._chunks.append(
            {
                "rows": rows.astype(I64),
                "section": np.full(n, section, dtype=I64),
                "order": order.astype(I64),
                "kind": np.full(n, kind, dtype=I64),
                "amount": amount.astype(I64),
                "service": none if service is None else service.astype(I64),
                "units": np.zeros(n, dtype=I64) if units is None else units.astype(I64),
                "count": np.zeros(n, dtype=I64) if count is None else count.astype(I64),
                "has_units": np.full(n, units is not None, dtype=I64),
                "has_count": np.full(n, count is not None, dtype=I64),
                "late_cycle": none if late_cycle is None else late_cycle.astype(I64),
                "text": none if text is None else np.full(n, self.texts.code(text), dtype=I64),
            }
        )

    def add_fees(
        self, rows: Ints, fee_of: Ints, fee_sets: Sequence[FeeLines], *, section: int
    ) -> None:
        for k in np.unique(fee_of).tolist():
            picked = rows[fee_of == k]
            for j, (description, amount) in enumerate(fee_sets[k].lines):
                self.add(
                    rows=picked,
                    section=section,
                    order=np.full(len(picked), j, dtype=I64),
                    kind=LINE_KINDS.index(LineKind.RECURRING),
                    amount=np.full(len(picked), amount, dtype=I64),
                    text=description,
                )

    def sums(self, size: int) -> Ints:
        """Per row: the sum of the amounts of the lines added so far."""
        out = np.zeros(size, dtype=I64)
        for chunk in self._chunks:
            groups = Groups(chunk["rows"])
            out[groups.keys_of] += groups.sum(chunk["amount"])
        return out

    def freeze(self) -> Lines:
        """Concatenate and sort the chunks; rows' lines are then ``starts[r]:starts[r+1]``."""
        columns = {
            name: np.concatenate([c[name] for c in self._chunks])
            if self._chunks
            else np.zeros(0, dtype=I64)
            for name in _FIELDS
        }
        order = np.lexsort((columns["order"], columns["section"], columns["rows"]))
        self.columns = {name: values[order] for name, values in columns.items()}
        self._chunks.clear()
        self.starts = np.searchsorted(
            self.columns["rows"], np.arange(self.table.size + 1, dtype=I64)
        )
        return self

    def items(self, row: int) -> tuple[LineItem, ...]:
        """Row ``row``'s lines as :class:`LineItem` values, in order."""
        lo, hi = int(self.starts[row]), int(self.starts[row + 1])
        c = {name: values[lo:hi].tolist() for name, values in self.columns.items()}
        services, texts, cycles = self.services.names, self.texts.names, self.table.cycles.names
        out: list[LineItem] = []
        for i in range(hi - lo):
            kind = LINE_KINDS[c["kind"][i]]
            service = services[c["service"][i]] if c["service"][i] >= 0 else None
            if c["text"][i] >= 0:
                description = texts[c["text"][i]]
            elif kind is LineKind.USAGE:
                description = f"{service} usage"
            elif kind is LineKind.BUNDLE:
                description = f"{service} in bundle"
            elif c["late_cycle"][i] >= 0:
                description = f"{service} usage of {cycles[c['late_cycle'][i]]}"
            else:
                description = "earlier unbilled charges"
            out.append(
                LineItem(
                    kind=kind,
                    description=description,
                    amount=c["amount"][i],
                    service=service,
                    units=c["units"][i] if c["has_units"][i] else None,
                    count=c["count"][i] if c["has_count"][i] else None,
                )
            )
        return tuple(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class BillColumns:
    """A columnar bill run's answer (module docstring); ``reference`` holds the outcomes
    of the accounts billed one at a time, ``billing`` the billing states of the accounts
    billed in columns that had one, ``deltas`` the usage (row, cycle, class, (5, n) totals)
    the run bills."""

    table: AccountTable
    cycle: Cycle
    at_s: int
    config: BillRunConfig
    result: Ints
    total: Ints
    credit: Ints
    status: Ints
    lines: Lines
    topups: dict[int, int]
    billing: dict[int, BillingState]
    deltas: tuple[Ints, Ints, Ints, Ints]
    reference: dict[int, BillOutcome]

    def results(self) -> dict[BillResult, int]:
        """How many accounts got each result."""
        codes = self.result.copy()
        counts: dict[BillResult, int] = {}
        if self.reference:
            rows = list(self.reference)
            codes = np.delete(codes, rows)
            for outcome in self.reference.values():
                counts[outcome.result] = counts.get(outcome.result, 0) + 1
        for code, n in zip(*np.unique(codes, return_counts=True), strict=True):
            result = _RESULTS[int(code)]
            counts[result] = counts.get(result, 0) + int(n)
        return counts

    def outcome(self, row: int) -> BillOutcome:
        """The reference's :class:`BillOutcome` for ``row``'s account, built."""
        found = self.reference.get(row)
        if found is not None:
            return found
        table, cycle = self.table, self.cycle
        account = table.profiles[row]
        account_id = account.account_id
        result = _RESULTS[int(self.result[row])]
        if result in (BillResult.CURRENCY_MISMATCH, BillResult.NOT_STARTED):
            return BillOutcome(result=result, account_id=account_id)
        lines = self.lines.items(row)
        if result is BillResult.STATEMENT:
            return BillOutcome(
                result=result,
                account_id=account_id,
                statement=Statement(
                    account_id=account_id,
                    cycle_id=cycle.cycle_id,
                    currency=account.currency,
                    lines=lines,
                    usage_charges=sum(line.amount for line in lines),
                    topups=self.topups.get(row, 0),
                    closing_balance=int(table.prepaid[row]),
                ),
            )
        total = int(self.total[row])
        invoice = Invoice(
            invoice_id=invoice_id_for(account_id, cycle.cycle_id),
            account_id=account_id,
            cycle_id=cycle.cycle_id,
            currency=account.currency,
            period_start_s=cycle.start_s,
            period_end_s=cycle.end_s,
            issued_at_s=self.at_s,
            due_at_s=self.at_s + self.config.payment_terms_s,
            lines=lines,
            total=total,
            status=_STATUSES[int(self.status[row])],
        )
        state = self.billing.get(row, BillingState())
        if result is BillResult.DRAFT:
            return BillOutcome(
                result=result, account_id=account_id, invoices=(invoice,),
                state=replace(state, draft=invoice),
            )  # fmt: skip
        notice = make_notification(
            NotificationKind.INVOICE_ISSUED,
            account_id=account_id,
            at_s=self.at_s,
            cycle_id=cycle.cycle_id,
            subject=invoice.invoice_id,
            data={"total": total, "due_at_s": invoice.due_at_s, "currency": account.currency},
        )
        return BillOutcome(
            result=result,
            account_id=account_id,
            invoices=(invoice,),
            entries=invoice_entries(invoice, self.at_s),
            state=BillingState(
                billed=merge_billed(
                    state.billed, self._deltas_of(row), self.config.late_cycles_max
                ),
                last_final_cycle=cycle.cycle_id,
                draft=None,
            ),
            notifications=(notice,),
        )

    def outcomes(self) -> list[BillOutcome]:
        """Every account's outcome, by row."""
        return [self.outcome(row) for row in range(self.table.size)]

    def _deltas_of(self, row: int) -> dict[str, dict[str, UsageTotal]]:
        rows, cycles, classes, values = self.deltas
        lo, hi = np.searchsorted(rows, row), np.searchsorted(rows, row + 1)
        out: dict[str, dict[str, UsageTotal]] = {}
        names, class_names = self.table.cycles.names, self.table.classes.names
        for c, u, v in zip(cycles[lo:hi].tolist(), classes[lo:hi].tolist(),
                           values[:, lo:hi].T.tolist(), strict=True):  # fmt: skip
            out.setdefault(names[c], {})[class_names[u]] = UsageTotal._make(v)
        return out

    def postings(self) -> dict[str, int]:
        """The run's postings summed per ledger account, on the columns (the reference's
        accounts added from their entries)."""
        table = self.table
        issued = self.result == _RESULTS.index(BillResult.ISSUED)
        if self.reference:
            issued[list(self.reference)] = False
        c = self.lines.columns
        on = issued[c["rows"]] if len(c["rows"]) else np.zeros(0, dtype=bool)
        out: dict[str, int] = {}

        def post(key: str, amount: int) -> None:
            if amount:
                out[key] = out.get(key, 0) + amount

        kinds = c["kind"]
        usage = on & np.isin(kinds, [LINE_KINDS.index(LineKind.USAGE),
                                     LINE_KINDS.index(LineKind.LATE_USAGE)])  # fmt: skip
        recurring = on & (kinds == LINE_KINDS.index(LineKind.RECURRING))
        credit = on & (kinds == LINE_KINDS.index(LineKind.CREDIT))
        receivable: dict[int, int] = {}
        for mask, book in ((usage, Book.UNBILLED), (recurring, None), (credit, Book.CREDIT)):
            groups = Groups(c["rows"][mask])
            for row, amount in zip(groups.keys_of.tolist(), groups.sum(c["amount"][mask]).tolist(),
                                   strict=True):  # fmt: skip
                if not amount:
                    continue
                source = REVENUE_RECURRING if book is None else account_key(table.ids[row], book)
                post(source, amount)
                receivable[row] = receivable.get(row, 0) - amount
        for row in np.flatnonzero(issued & (self.total < 0)).tolist():
            note = int(self.total[row])
            receivable[row] = receivable.get(row, 0) + note
            post(account_key(table.ids[row], Book.CREDIT), -note)
        for row, amount in receivable.items():
            post(account_key(table.ids[row], Book.RECEIVABLE), amount)
        for outcome in self.reference.values():
            for entry in outcome.entries:
                for posting in entry.postings:
                    post(posting.account, posting.amount)
        return {k: v for k, v in out.items() if v}
