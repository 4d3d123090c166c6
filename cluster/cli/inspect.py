"""``petribill inspect``: the automatic inspection, run now, as a report.

The coordinator runs the same inspection on its schedule (``[inspection]`` of
conf/cluster.toml) and notifies the operator when a check fails; this command
asks it for one now through a gateway (``AdminService.Inspect``). Exit code 1
when a check failed, so a cron job or a deployment check can act on it.
"""

from __future__ import annotations

import click
from petribill.v1 import admin_pb2
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cluster.cli.client import Session, cluster_command, proto_json
from cluster.cli.render import when_text

__all__ = ["register", "show_inspection"]


def show_inspection(c: Console, answer: admin_pb2.InspectResponse) -> None:
    """Every check with its count and detail, then the verdict."""
    table = Table(title=f"inspection at {when_text(answer.at_s)}", title_justify="left")
    for column in ("check", "found", "detail"):
        table.add_column(column, justify="right" if column == "found" else "left")
    for finding in answer.findings:
        if finding.skipped:
            found = "[dim]skipped[/]"
        elif finding.count:
            found = f"[red]{finding.count}[/]"
        else:
            found = "[green]0[/]"
        table.add_row(finding.check, found, escape(finding.detail))
    c.print(table)
    c.print("[green]every check held[/]" if answer.ok else "[red]some checks failed[/]")


@click.command()
@cluster_command
def inspect(s: Session) -> None:
    """Run the automatic inspection now: reconcile, reservations held past their validity,
    invoices past due and not aged or without reminder, units without an owner.

    Exit code 1 when a check failed.
    """
    answer = s.client.inspect()
    s.emit(proto_json(answer), lambda c: show_inspection(c, answer))
    if not answer.ok:
        raise SystemExit(1)


def register(group: click.Group) -> None:
    group.add_command(inspect)
