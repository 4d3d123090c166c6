"""``petribill settlement CYCLE``: what each content provider is owed for a billing cycle.

It asks the cluster's ``BillingService.GetSettlement`` through a gateway, like
every client command (``--gateway``, ``--data``, ``--json``;
:mod:`cluster.cli.client`), and prints per provider the purchases, revenue,
share owed, operator's share and rounding, then the items. Amounts are exact
(micro-units, shown with every decimal the system keeps).
"""

from __future__ import annotations

import click
from petribill.v1 import billing_pb2
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from billing.money import format_amount
from cluster.cli.client import Session, cluster_command, proto_json

__all__ = ["register", "show_settlement"]

_MONEY = ("revenue", "share_owed", "operator_share", "rounding")


def show_settlement(c: Console, report: billing_pb2.SettlementReport) -> None:
    if not report.providers:
        c.print(f"No content settled in {escape(report.cycle_id)}.")
        return
    table = Table(
        title=f"Content settlement {report.cycle_id}: what each provider is owed",
        title_justify="left",
    )
    for column in ("provider", "item", "purchases", *_MONEY, "currency"):
        right = column == "purchases" or column in _MONEY
        table.add_column(column.replace("_", " "), justify="right" if right else "left")
    for line in report.providers:
        table.add_row(
            f"[bold]{escape(line.provider_id)}[/]",
            escape(line.name),
            str(line.purchases),
            *(f"[bold]{format_amount(getattr(line, m).micros)}[/]" for m in _MONEY),
            escape(line.revenue.currency),
        )
        for item in line.items:
            table.add_row(
                "",
                escape(item.item_id),
                str(item.purchases),
                *(format_amount(getattr(item, m).micros) for m in _MONEY),
                escape(line.revenue.currency),
            )
    c.print(table)


@click.command()
@click.argument("cycle_id", metavar="CYCLE")
@click.option("--provider", "provider_id", default="", help="Only this content provider.")
@cluster_command
def settlement(s: Session, cycle_id: str, provider_id: str) -> None:
    """What each content provider is owed for CYCLE (YYYY-MM), from the ledger.

    Per provider: purchases, revenue, the share owed (each purchase's share
    rounded down to the micro-unit), the operator's share, and the rounding
    those shares left to the operator; then the same per item.
    """
    report = s.client.get_settlement(cycle_id, provider_id)
    s.emit(proto_json(report), lambda c: show_settlement(c, report))


def register(group: click.Group) -> None:
    group.add_command(settlement)
