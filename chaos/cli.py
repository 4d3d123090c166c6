"""``petribill chaos``: run a seeded chaos scenario on a local cluster (fresh, or the one
given) and audit it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from chaos.runner import ChaosOptions, Report, run
from chaos.scenarios import SCENARIOS
from cluster.cli.client import client_credentials

__all__ = ["chaos", "register"]


def _print_report(report: Report, *, err: bool = False) -> None:
    s = report.summary()

    def echo(line: str) -> None:
        click.echo(line, err=err)

    echo("")
    echo(f"scenario {s['scenario']}, seed {s['seed']}, {s['duration_s']:g} s of load")
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(s["faults_by_kind"].items())) or "none"
    echo(f"  faults injected   {s['faults']} ({kinds})")
    for skipped in s["faults_skipped"]:
        echo(f"  fault skipped     {skipped}")
    echo(f"  acknowledged      {s['acked']} ({s['charged']} charged, {s['rejected']} rejected)")
    echo(f"  lost              {s['lost']}")
    echo(f"  duplicated        {s['duplicated']}")
    echo(f"  money delta       {s['money_delta_minor']} minor units")
    if s["takeover_s_p50"] is not None:
        echo(f"  takeover          p50 {s['takeover_s_p50']} s, max {s['takeover_s_max']} s")
    echo(f"  spurious takeovers {s['spurious_takeovers']}")
    for line in report.spurious[:10]:
        echo(f"  SPURIOUS {line}")
    operator = ", ".join(f"{k} {n}" for k, n in sorted(s["operator_calls"].items())) or "none"
    echo(f"  operator calls    {operator}")
    refusals = ", ".join(f"{k} {n}" for k, n in sorted(s["refusals"].items())) or "none"
    echo(f"  client gave up    {refusals} (each retried until answered)")
    for check, texts in sorted(report.audit.violations.items()):
        for text in texts[:10]:
            echo(f"  VIOLATION {check}: {text}")
    for error in report.errors:
        echo(f"  ERROR {error}")
    echo(f"  verdict           {'ok' if report.ok else 'FAILED'}")
    echo(f"  replay with       {s['replay']}")


@click.command()
@click.option(
    "--scenario", type=click.Choice(sorted(SCENARIOS)), required=True, help="Which faults."
)
@click.option("--duration", "duration_s", type=float, default=60.0, show_default=True,
              help="Seconds of load.")  # fmt: skip
@click.option("--seed", type=int, default=1, show_default=True, help="Fixes faults and load.")
@click.option("--nodes", type=int, default=3, show_default=True, help="Simulated Ray nodes.")
@click.option("--every", "every_s", type=float, default=8.0, show_default=True,
              help="Mean seconds between faults.")  # fmt: skip
@click.option(
    "--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Use the running cluster recorded in this data folder instead of starting one "
    "(started on this machine with `petribill up --detach --nodes 3 --conf chaos --data "
    "DIR`: the chaos catalogue); it is left running, with this run's accounts billed.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="End with one JSON object.")
def chaos(
    scenario: str, duration_s: float, seed: int, nodes: int, every_s: float,
    data_dir: Path | None, as_json: bool,
) -> None:  # fmt: skip
    """Start a local cluster (or use the one of --data), run load and faults, audit; exit 1
    on any violation."""
    if duration_s <= 0 or nodes < 3 or every_s <= 0:
        raise click.UsageError("--duration and --every must be positive and --nodes at least 3")
    if data_dir is not None and not (data_dir / "runtime.json").exists():
        raise click.UsageError(f"no running cluster recorded in {data_dir}/runtime.json")
    options = ChaosOptions(
        scenario=scenario, duration_s=duration_s, seed=seed, nodes=nodes, every_s=every_s,
        data_dir=data_dir, attach=data_dir is not None,
        client=client_credentials(),  # petribill --token --ca --cert --key chaos ...
    )  # fmt: skip
    report = run(options, echo=lambda line: click.echo(line, err=as_json))
    _print_report(report, err=as_json)
    if as_json:
        click.echo(json.dumps(report.summary()))
    sys.exit(0 if report.ok else 1)


def register(group: click.Group) -> None:
    group.add_command(chaos)
