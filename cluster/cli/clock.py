"""``petribill clock``: move a test cluster's clock forward (``[clock] adjustable = true``).

A cluster started with an adjustable clock adds the offset in
``<data_dir>/control/clock_offset_s`` to the system time in every process
(``actors.clock``): this is how to watch time-driven work happen without waiting
for it — reservations expiring, invoices ageing, a cycle's bill run starting on
its own. A cluster with the system clock ignores the file. Time only moves forward.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from actors.clock import clock_offset_path, set_clock_offset
from cluster.cli.ops import data_option
from cluster.cli.render import when_text

__all__ = ["register"]


def _offset(data_dir: Path) -> float:
    path = clock_offset_path(data_dir)
    return float(path.read_text()) if path.exists() else 0.0


@click.group()
def clock() -> None:
    """Show or move the clock of a cluster started with `[clock] adjustable = true`."""


@clock.command()
@data_option
def show(data_dir: Path) -> None:
    """The cluster's time now: the system time plus the offset set so far."""
    offset = _offset(data_dir)
    click.echo(f"{when_text(int(time.time() + offset))} (offset {offset:+.0f} s)")


@clock.command()
@click.argument("seconds", type=click.FloatRange(min=0))
@data_option
def advance(seconds: float, data_dir: Path) -> None:
    """Move the cluster's clock SECONDS forward (every process follows within 0.2 s)."""
    offset = _offset(data_dir) + seconds
    set_clock_offset(data_dir, offset)
    click.echo(f"{when_text(int(time.time() + offset))} (offset {offset:+.0f} s)")


def register(group: click.Group) -> None:
    group.add_command(clock)
