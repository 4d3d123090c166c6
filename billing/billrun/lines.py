"""The lines of a bill: usage and bundle lines per service, late usage, fees and extras.

Pure functions of a :class:`~billing.billrun.model.BillingAccount` and its
:class:`~billing.billrun.model.BillingState`; :mod:`billing.billrun.run` turns the
lines into invoices and statements (rules in its module docstring).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from operator import attrgetter

from billing.billrun.model import (
    ZERO,
    BillingAccount,
    BillingState,
    BillRunConfig,
    ClassTotals,
    Statement,
    UsageTotal,
)
from billing.cycle import Cycle
from billing.invoice import LineItem, LineKind
from billing.proration import prorate_periods

__all__ = ["line_sum", "lines_before_credit", "merge_billed", "statement_of", "usage_part"]

_amount = attrgetter("amount")
_new_total = tuple.__new__  # ``_new_total(UsageTotal, t)``: ``UsageTotal._make`` without a call


def line_sum(lines: Iterable[LineItem]) -> int:
    """The sum of the lines' amounts."""
    return sum(map(_amount, lines))


def _by_service(totals: ClassTotals) -> list[tuple[str, list[int]]]:
    """Totals summed per service, sorted by service: ``[count, units, bundle, amount,
    unbilled]`` lists (the bill run's hot loop; plain lists avoid a tuple per sum)."""
    out: dict[str, list[int]] = {}
    for usage_class, total in totals.items():
        service = usage_class.partition(".")[0]
        found = out.get(service)
        if found is None:
            out[service] = list(total)
        else:
            for i in range(5):
                found[i] += total[i]
    return sorted(out.items())


@functools.lru_cache(maxsize=256)
def _label(service: str, suffix: str) -> str:
    return service + suffix


_USAGE = LineKind.USAGE
_BUNDLE = LineKind.BUNDLE


def _usage_lines(totals: ClassTotals, *, money: str) -> list[LineItem]:
    """USAGE and BUNDLE lines per service; ``money`` names the amount field shown."""
    lines: list[LineItem] = []
    field_index = 4 if money == "unbilled" else 3
    for service, sums in _by_service(totals):
        count, units, bundle_units = sums[0], sums[1], sums[2]
        amount = sums[field_index]
        charged_units = units - bundle_units
        if amount or charged_units:
            lines.append(
                LineItem(
                    kind=_USAGE,
                    description=_label(service, " usage"),
                    amount=amount,
                    service=service,
                    units=charged_units,
                    count=count,
                )
            )
        if bundle_units:
            lines.append(
                LineItem(
                    kind=_BUNDLE,
                    description=_label(service, " in bundle"),
                    amount=0,
                    service=service,
                    units=bundle_units,
                )
            )
    return lines


@functools.lru_cache(maxsize=64)
def _window(cycle: Cycle, config: BillRunConfig) -> tuple[str, ...]:
    """The cycle ids a bill run of ``cycle`` looks at: it and ``late_cycles_max`` before."""
    ids = [cycle.cycle_id]
    earlier = cycle
    for _ in range(config.late_cycles_max):
        earlier = earlier.previous()
        ids.append(earlier.cycle_id)
    return tuple(ids)


def _deltas(
    account: BillingAccount, state: BillingState, cycle_ids: Iterable[str]
) -> dict[str, dict[str, UsageTotal]]:
    """Per cycle and usage class: usage not yet on any final or interim invoice."""
    out: dict[str, dict[str, UsageTotal]] = {}
    for cid in cycle_ids:
        usage = account.usage.get(cid)
        if not usage:
            continue
        billed = state.billed.get(cid)
        if not billed:
            out[cid] = {c: _new_total(UsageTotal, t) for c, t in usage.items() if any(t)}
            continue
        for usage_class, total in usage.items():
            delta = UsageTotal.minus(total, billed.get(usage_class, ZERO))
            if any(delta):
                out.setdefault(cid, {})[usage_class] = delta
    return out


def _future_unbilled(account: BillingAccount, state: BillingState, cycle_id: str) -> int:
    """Unbilled charges of cycles after ``cycle_id`` (not this bill run's business)."""
    total = 0
    for cid, per in account.usage.items():
        if cid > cycle_id:
            billed = state.billed.get(cid, {})
            total += sum(t[4] - billed.get(c, ZERO)[4] for c, t in per.items())
    return total


def usage_part(
    account: BillingAccount,
    state: BillingState,
    cycle: Cycle,
    config: BillRunConfig,
    book_to_bill: int | None,
) -> tuple[list[LineItem], dict[str, dict[str, UsageTotal]]]:
    """Usage lines of ``cycle`` and late lines of earlier cycles, and the deltas they bill.

    ``book_to_bill`` is what ``Book.UNBILLED`` holds for this invoice (a
    positive magnitude); what the usage lines do not explain — charges of
    cycles beyond the late window, debt moved in by a mode switch — is billed
    as one more ``LATE_USAGE`` line, so the invoice always empties the book.
    """
    window = _window(cycle, config)
    deltas = _deltas(account, state, window)
    lines = _usage_lines(deltas.get(cycle.cycle_id, {}), money="unbilled")
    for cid in sorted(deltas):
        if cid == cycle.cycle_id:
            continue
        for service, (count, units, bundle_units, _, unbilled) in _by_service(deltas[cid]):
            if unbilled:
                lines.append(
                    LineItem(
                        kind=LineKind.LATE_USAGE,
                        description=f"{service} usage of {cid}",
                        amount=unbilled,
                        service=service,
                        units=units - bundle_units,
                        count=count,
                    )
                )
    if book_to_bill is not None:
        rest = book_to_bill - line_sum(lines)
        if rest:
            lines.append(
                LineItem(
                    kind=LineKind.LATE_USAGE,
                    description="earlier unbilled charges",
                    amount=rest,
                )
            )
    return lines, deltas


def lines_before_credit(
    account: BillingAccount,
    state: BillingState,
    cycle: Cycle,
    config: BillRunConfig,
) -> tuple[list[LineItem], dict[str, dict[str, UsageTotal]]]:
    """Lines before credit, and the usage deltas they bill."""
    book_to_bill = None
    if account.unbilled_balance is not None:
        book_to_bill = -account.unbilled_balance - _future_unbilled(account, state, cycle.cycle_id)
    lines, deltas = usage_part(account, state, cycle, config, book_to_bill)
    fees = prorate_periods(
        cycle, account.fee_periods, decimals=config.fee_decimals, mode=config.fee_mode
    )
    for fee in fees:
        days = "" if fee.is_full else f" ({fee.days}/{fee.cycle_days} days)"
        lines.append(
            LineItem(kind=LineKind.RECURRING, description=f"{fee.label}{days}", amount=fee.amount)
        )
    for extra in account.extras:
        if extra.cycle_id == cycle.cycle_id:
            lines.append(
                LineItem(kind=extra.kind, description=extra.description, amount=extra.amount)
            )
    return lines, deltas


def statement_of(account: BillingAccount, cycle: Cycle) -> Statement:
    lines = tuple(_usage_lines(account.usage.get(cycle.cycle_id, {}), money="amount"))
    return Statement(
        account_id=account.account_id,
        cycle_id=cycle.cycle_id,
        currency=account.currency,
        lines=lines,
        usage_charges=line_sum(lines),
        topups=account.topups,
        closing_balance=account.prepaid_balance,
    )


def merge_billed(
    billed: Mapping[str, ClassTotals],
    deltas: Mapping[str, Mapping[str, UsageTotal]],
    keep_cycles: int,
) -> dict[str, ClassTotals]:
    out: dict[str, ClassTotals] = dict(billed)
    for cid, per in deltas.items():
        before = out.get(cid)
        if not before:
            out[cid] = per
            continue
        merged = dict(before)
        for usage_class, delta in per.items():
            found = merged.get(usage_class)
            merged[usage_class] = delta if found is None else UsageTotal.plus(found, delta)
        out[cid] = merged
    # Keep the snapshots late usage can still refer to; older cycles are closed for good.
    if len(out) > keep_cycles + 1:
        for cid in sorted(out)[: len(out) - keep_cycles - 1]:
            del out[cid]
    return out
