"""Client commands that act on the whole cluster: ``petribill backup``, ``restore`` and
``load-tariffs``.

They go through a gateway like the other client commands (``--gateway``,
``--data``, ``--json``; see :mod:`cluster.cli.client`). Their folders are read
or written by the cluster's processes, not by this command: a relative path is
made absolute here, and must name the same place on the cluster's (shared)
filesystem, below the root the cluster allows for it (``[security]
backup_root``, default DATA/backups; ``tariffs_root``, default the conf
folder). What this command can see wrong is refused before any call, with
exit code 2: a DEST that is a file, a tariff folder the loader refuses (the
message names the file and the key).
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from billing.rating import TariffError, load_catalogue
from cluster.cli.client import (
    Session,
    UsageError,
    cluster_command,
    proto_json,
    request_id_option,
)
from cluster.cli.render import when_text

__all__ = ["register"]


@click.command()
@click.argument("dest", type=click.Path(path_type=Path), required=False)
@request_id_option
@cluster_command
def backup(s: Session, dest: Path | None, request_id: str | None) -> None:
    """Checkpoint every shard and partition into the folder DEST (one holding no backup yet).

    DEST must lie below the cluster's backup root ([security] backup_root,
    default DATA/backups); without DEST the backup goes to a folder of the
    root named after the request id. Each unit is copied at a batch boundary,
    online, without stopping writes (actors/store/backup.py says how to
    restore). A retry with the same --request-id completes the same backup.
    """
    if dest is not None and dest.exists() and not dest.is_dir():
        raise UsageError(f"{dest}: exists and is not a folder")
    path = "" if dest is None else str(dest.resolve())
    answer = s.client.backup(path, request_id=request_id)
    s.emit(proto_json(answer), lambda c: c.print(f"backup {answer.request_id}: {answer.detail}"))


@click.command("load-tariffs")
@click.argument("folder", metavar="DIR", type=click.Path(path_type=Path))
@request_id_option
@cluster_command
def load_tariffs(s: Session, folder: Path, request_id: str | None) -> None:
    """Make the tariff catalogue in DIR (e.g. conf/tariffs) the one the cluster rates with.

    DIR is checked here first, then by the cluster, which reads it only below
    its tariffs root ([security] tariffs_root, default the conf folder), keeps
    a copy under its data folder and switches every unit to it between two of
    its calls.
    """
    try:
        load_catalogue(folder)
    except TariffError as exc:
        raise UsageError(str(exc)) from None
    summary = s.client.load_tariffs(str(folder.resolve()), request_id=request_id)

    def show(c: Console) -> None:
        c.print(
            f"catalogue {summary.catalogue_version} in force: {summary.prefixes} prefixes, "
            f"{summary.content_items} content items, default plan {summary.default_plan}"
        )
        for plan in summary.plans:
            until = when_text(plan.valid_until_s) if plan.valid_until_s else "open"
            c.print(
                f"  {plan.plan_id:<16} {plan.version:<8} {plan.currency}  "
                f"{when_text(plan.valid_from_s)} .. {until}"
            )

    s.emit(proto_json(summary), show)


@click.command()
@click.argument("backup_dir", metavar="BACKUP_DIR", type=click.Path(path_type=Path))
@click.option(
    "--unit", "units", multiple=True, help="A lost unit to restore (repeatable); default: all."
)
@request_id_option
@cluster_command
def restore(s: Session, backup_dir: Path, units: tuple[str, ...], request_id: str | None) -> None:
    """Bring lost units back from BACKUP_DIR, a folder made by `petribill backup`.

    Each unit is copied by the host of an alive node into that node's own
    folder and served again at an epoch above every one it had; the
    coordinator then adds its followers (`petribill status` shows them catch up).
    Only lost units are restored: a unit that is served is refused, never
    overwritten. BACKUP_DIR must lie below the backup root, as for backup.
    A retry with the same --request-id answers the same restore.
    """
    if backup_dir.exists() and not backup_dir.is_dir():
        raise UsageError(f"{backup_dir}: exists and is not a folder")
    answer = s.client.restore_units(str(backup_dir.resolve()), list(units), request_id=request_id)

    def show(c: Console) -> None:
        for unit in answer.units:
            c.print(
                f"{unit.unit} restored on {unit.node} at epoch {unit.epoch} (backup: epoch "
                f"{unit.backup_epoch}, sequence {unit.backup_sequence}, taken "
                f"{when_text(unit.taken_at_s)})"
            )

    s.emit(proto_json(answer), show)


def register(group: click.Group) -> None:
    """Add the cluster-wide client commands to the ``petribill`` group."""
    for command in (backup, restore, load_tariffs):
        group.add_command(command)
