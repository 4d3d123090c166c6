"""Counting and showing the outcomes of ``petribill rate``: the summary and the table.

The summary is the revenue-assurance view of one run: per service, records
received, rated, rejected and duplicate (which must add up), and the amounts
rated per currency.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TextIO

from rich.table import Table
from rich.text import Text

from billing.invariant import invariant
from billing.money import format_amount
from billing.preprocess import Conflict, Duplicate, Reconciliation
from billing.rated import RatedRecord, RatingFailure
from billing.readers import Reject
from cluster.cli.console import make_console

__all__ = ["UNREADABLE", "Tally", "render_table"]

# The service bucket of lines that could not be read, so their service is unknown.
UNREADABLE = "unreadable"


class Tally:
    """Per-service :class:`Reconciliation` counts and rated amounts, built one outcome at a time."""

    __slots__ = ("amounts", "counts")

    def __init__(self) -> None:
        self.counts: dict[str, Reconciliation] = {}
        # service -> currency -> micro-units
        self.amounts: dict[str, dict[str, int]] = {}

    def count(self, outcome: Reject | Duplicate | Conflict | RatedRecord | RatingFailure) -> None:
        service = UNREADABLE if isinstance(outcome, Reject) else outcome.record.service.value
        counts = self.counts.get(service, Reconciliation()).add(received=1)
        if isinstance(outcome, Duplicate):
            counts = counts.add(duplicates=1)
        elif isinstance(outcome, RatedRecord):
            counts = counts.add(rated=1)
            by_currency = self.amounts.setdefault(service, {})
            by_currency[outcome.currency] = by_currency.get(outcome.currency, 0) + outcome.amount
        else:
            counts = counts.add(rejected=1)
        self.counts[service] = counts

    @property
    def total(self) -> Reconciliation:
        return sum(self.counts.values(), Reconciliation())

    def summary(self) -> dict[str, Any]:
        """The summary object: totals, per-service counts and amounts (decimal strings)."""
        total = self.total
        invariant(total.is_balanced(), f"outcomes do not reconcile: {total}")
        overall: dict[str, int] = {}
        by_service: dict[str, Any] = {}
        for service in sorted(self.counts):
            amounts = self.amounts.get(service, {})
            for currency, micros in amounts.items():
                overall[currency] = overall.get(currency, 0) + micros
            by_service[service] = {
                **self.counts[service].as_dict(),
                "amount": {c: format_amount(m) for c, m in sorted(amounts.items())},
            }
        return {
            **total.as_dict(),
            "balanced": total.is_balanced(),
            "amount": {c: format_amount(m) for c, m in sorted(overall.items())},
            "by_service": by_service,
        }


_STYLE = {"rated": "", "rejected": "red", "duplicate": "dim"}


def _what(row: dict[str, Any]) -> str:
    if row["outcome"] == "rated":
        parts = [row.get("destination") or row["usage_class"], row.get("time_band")]
        if row.get("sponsor"):
            parts.append(f"sponsor {row['sponsor']}")
        if row.get("capped"):
            parts.append("capped at max_cost")
        if row.get("disconnect"):
            parts.append("over max_cost: disconnect")
        return " · ".join(p for p in parts if p)
    if row["outcome"] == "duplicate":
        first = row["duplicate_of"]
        return f"duplicate of {Path(first['file'] or '?').name}:{first['line']}"
    error = row["error"]
    return f"{error.get('code') or error['reason']}: {error['message']}"


def render_table(rows: list[dict[str, Any]], summary: dict[str, Any], out: TextIO) -> None:
    """Print the outcomes and the summary as rich tables for a person.

    Every cell is whole (see :mod:`cluster.cli.console`) and plain text: a ``[``
    in a reject's raw value is printed, not read as markup.
    """
    console = make_console(file=out)
    table = Table(title="Rated usage", show_lines=False, header_style="bold")
    for name, justify in [
        ("record", "left"),
        ("file:line", "left"),
        ("service", "left"),
        ("subscriber", "left"),
        ("units", "right"),
        ("billed", "right"),
        ("amount", "right"),
        ("rate / reason", "left"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        rated = row["outcome"] == "rated"
        cells = (
            row.get("record_id") or "—",
            f"{Path(row['file'] or '?').name}:{row['line']}",
            row.get("service", "—"),
            row.get("served_msisdn", "—"),
            str(row["units"]) if rated else "",
            str(row["billed_units"]) if rated else "",
            f"{row['amount']} {row['currency']}" if rated else "",
            _what(row),
        )
        table.add_row(*map(Text, cells), style=_STYLE[row["outcome"]])
    console.print(table)

    totals = Table(title="Summary", header_style="bold")
    for name in ("service", "received", "rated", "rejected", "duplicates", "amount"):
        totals.add_column(name, justify="left" if name == "service" else "right")

    def amount(by_currency: dict[str, str]) -> str:
        return ", ".join(f"{value} {currency}" for currency, value in by_currency.items()) or "—"

    for service, entry in summary["by_service"].items():
        totals.add_row(
            Text(service),
            *(Text(str(entry[k])) for k in ("received", "rated", "rejected", "duplicates")),
            Text(amount(entry["amount"])),
        )
    totals.add_row(
        Text("total", style="bold"),
        *(
            Text(str(summary[k]), style="bold")
            for k in ("received", "rated", "rejected", "duplicates")
        ),
        Text(amount(summary["amount"]), style="bold"),
    )
    console.print(totals)
    verdict = "balanced" if summary["balanced"] else "NOT balanced"
    console.print(f"received = rated + rejected + duplicates: {verdict}")
