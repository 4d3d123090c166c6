"""Operator commands: ``petribill up``, ``down``, ``status`` and ``net``."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from cluster.cli.console import make_console
from cluster.config import ClusterConfig, load_config
from cluster.config import ConfigError as ClusterConfigError

__all__ = ["register"]

DEFAULT_DATA = Path("data")


class SetupError(click.ClickException):
    """What was given (configuration, data folder, port) does not allow the command: exit 2,
    one line (``petribill: error: ...``), like any usage error (the README's rule)."""

    exit_code = 2


def cluster_config(conf_dir: Path) -> ClusterConfig:
    """DIR/cluster.toml (defaults when missing); a broken one is a :class:`SetupError`."""
    try:
        return load_config(conf_dir / "cluster.toml", missing_ok=True)
    except ClusterConfigError as exc:
        raise SetupError(str(exc)) from None


def conf_option(func: Any) -> Any:
    return click.option(
        "--conf",
        "conf_dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("conf"),
        show_default=True,
        help="Folder with cluster.toml and tariffs/.",
    )(func)


def data_option(func: Any) -> Any:
    return click.option(
        "--data",
        "data_dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=DEFAULT_DATA,
        show_default=True,
        help="Data folder (one RocksDB per unit, the control state, runtime.json).",
    )(func)


@click.command()
@click.option("--nodes", default=1, show_default=True, help="Simulated Ray nodes on this machine.")
@click.option("--port", type=int, default=None, help="Gateway port of the first node [50051].")
@click.option("--address", default=None, help="Join a Ray cluster started with `ray start`.")
@click.option("--detach", is_flag=True, help="Return once the gateways answer health checks.")
@click.option(
    "--insecure",
    is_flag=True,
    help="Serve gateways beyond loopback without TLS and tokens, or join a Ray cluster "
    "beyond loopback without Ray's token authentication (refused otherwise).",
)
@data_option
@conf_option
def up(
    nodes: int,
    port: int | None,
    address: str | None,
    detach: bool,
    insecure: bool,
    data_dir: Path,
    conf_dir: Path,
) -> None:
    """Start a cluster: local Ray (or --address), coordinator, hosts, gateways.

    The gateways use the [security] table of DIR/cluster.toml (tokens, TLS,
    mutual TLS; docs/security.md). Beyond loopback they need TLS and tokens,
    and a Ray cluster joined beyond loopback needs Ray's token authentication,
    unless --insecure.
    """
    from billing.rating import TariffError, load_catalogue
    from cluster.deploy.exposure import exposure_problem
    from cluster.deploy.runtime import Runtime, StartError, check_port_free, read_info

    # Everything that can be wrong with what was given is checked before any process
    # starts or any file is written: one line, exit 2, nothing left behind.
    config = cluster_config(conf_dir)
    problem = exposure_problem(config, address)
    if problem is not None and not insecure:
        raise SetupError(problem)
    _check_security_files(config, data_dir)
    running = read_info(data_dir)
    if running is not None:
        raise SetupError(
            f"{data_dir} is the data folder of a running cluster (gateways "
            f"{', '.join(running.gateways) or 'none'}; {data_dir}/runtime.json): "
            f"`petribill down --data {data_dir}` first, or choose another --data"
        )
    try:
        load_catalogue(str(conf_dir / "tariffs"))
    except TariffError as exc:
        raise SetupError(str(exc)) from None
    try:
        check_port_free(config.gateway.host, config.gateway.port if port is None else port)
    except StartError as exc:
        raise SetupError(str(exc)) from None
    made_data_dir = not data_dir.exists()
    _log_to_data_dir(data_dir)
    try:
        runtime = Runtime(
            config,
            data_dir=data_dir,
            tariffs_dir=conf_dir / "tariffs",
            nodes=nodes,
            address=address,
            port=port,
        )
    except ClusterConfigError as exc:  # e.g. storage.mode = "local" with several nodes
        raise click.ClickException(str(exc)) from exc
    try:
        info = runtime.start()
    except StartError as exc:
        _failed_start(runtime, data_dir, made_data_dir)
        raise click.ClickException(str(exc)) from None
    except BaseException:
        _failed_start(runtime, data_dir, made_data_dir)
        raise
    click.echo(f"petribill is up: ray {info.address}, gateways {', '.join(info.gateways)}")
    if detach:
        click.echo(f"stop it with: petribill down --data {data_dir}")
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        click.echo("Ctrl-C stops the cluster.")
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        runtime.stop()


def _check_security_files(config: ClusterConfig, data_dir: Path) -> None:
    """Read the tokens file and the TLS files now, as each gateway will: a broken one is
    one line naming it, before any process starts."""
    from cluster.gateway.guard import Guard, SecuritySettings
    from cluster.security.tls import TlsConfigError
    from cluster.security.tokens import TokenFileError

    settings = SecuritySettings.from_config(config.security, data_dir=data_dir)
    try:  # without the audit folder: a check must not create one
        Guard(dataclasses.replace(settings, audit_dir=None)).close()
    except (TokenFileError, TlsConfigError) as exc:
        raise SetupError(str(exc)) from None


def _log_to_data_dir(data_dir: Path) -> None:
    """``up`` logs like every process of the cluster: JSON lines in ``<data>/logs/up.log``."""
    from cluster.logging import configure_logging, logs_dir

    root = click.get_current_context().find_root()
    configure_logging(
        root.params.get("log_level", "WARNING"), log_dir=logs_dir(data_dir), process="up"
    )


def _failed_start(runtime: Any, data_dir: Path, made_data_dir: bool) -> None:
    """Stop what a failed start began; a data folder this ``up`` made goes too."""
    with contextlib.suppress(Exception):
        runtime.stop()
    if made_data_dir:
        shutil.rmtree(data_dir, ignore_errors=True)


@click.command()
@data_option
@conf_option
def down(data_dir: Path, conf_dir: Path) -> None:
    """Stop the cluster started on a data folder (by `up --detach`)."""
    from cluster.deploy.runtime import stop_detached

    if not stop_detached(data_dir, cluster_config(conf_dir)):
        raise click.ClickException(f"no cluster recorded in {data_dir}/runtime.json")
    click.echo("petribill is down")


def fetch_status(data_dir: Path) -> dict[str, Any]:
    """Ask the running cluster's coordinator for nodes, units and the marking."""
    import ray

    from actors.metrics import metrics_urls
    from actors.remote import COORDINATOR_NAME, NAMESPACE
    from cluster.deploy.runtime import connect, read_info

    info = read_info(data_dir)
    if info is None:
        raise click.ClickException(f"no cluster recorded in {data_dir}/runtime.json")
    # What Ray prints while this process is its driver (a node marked dead, say) goes to
    # stderr: stdout carries only what the command prints (`status --json` is one object).
    with contextlib.redirect_stdout(sys.stderr):
        connect(info)
        try:
            coordinator = ray.get_actor(COORDINATOR_NAME, namespace=NAMESPACE)
            status: Any = ray.get(coordinator.status.remote(), timeout=30)
            urls = metrics_urls()
        finally:
            ray.shutdown()
    # The coordinator's list: every gateway of every alive node, with its state. A
    # gateway recorded at start that it does not list (its node died) is left out.
    status["gateways"] = status.get("gateways") or [
        {"node": "", "address": address, "state": "unknown"} for address in info.gateways
    ]
    for node in status["nodes"]:
        node["metrics_url"] = urls.get(node.get("ray_node_id", ""), "")
    return status


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of tables.")
@data_option
def status(as_json: bool, data_dir: Path) -> None:
    """Nodes, units with their owners and epochs, and a summary of the Petri-net marking."""
    found = fetch_status(data_dir)
    if as_json:
        click.echo(json.dumps(found))
        return
    console = make_console()
    nodes = Table(title="nodes")
    for column in ("node", "status", "units", "hosts", "ray node id", "metrics"):
        nodes.add_column(column)
    for node in found["nodes"]:
        nodes.add_row(
            node["node"],
            node["status"],
            str(node["units"]),
            str(node.get("hosts", 1)),
            node["ray_node_id"][:16],
            node["metrics_url"],
        )
    units = Table(title="units")
    replicated = any("followers" in unit for unit in found["units"])
    columns = ("unit", "state", "primary" if replicated else "owner", "slot", "epoch")
    for column in columns + (("followers (state, lag)", "in sync") if replicated else ()):
        units.add_column(column)
    for unit in found["units"]:
        row = [unit["unit"], unit["state"], unit["node"], str(unit.get("slot", 0))]
        row.append(str(unit["epoch"]))
        if replicated:
            row += [follower_text(unit), ", ".join(unit.get("isr", ())) or "-"]
        units.add_row(*row)
    gateways = Table(title="gateways")
    for column in ("node", "address", "state"):
        gateways.add_column(column)
    for gateway in found["gateways"]:
        gateways.add_row(gateway["node"], gateway["address"] or "-", gateway["state"])
    console.print(nodes)
    console.print(units)
    console.print(gateways)
    states = [u["state"] for u in found["units"]]
    serving = sum(1 for g in found["gateways"] if g["state"] == "serving")
    console.print(
        f"marking: {states.count('owned')} owned, {states.count('recovering')} recovering, "
        f"{states.count('free')} free; locks held: {len(found['locks_held'])}; "
        f"healthy: {found['healthy']}; gateways serving: {serving} of {len(found['gateways'])}"
    )
    if replicated:
        console.print(
            f"replication factor {found.get('replication_factor')}; "
            f"writable: {found.get('writable')}; "
            f"fully replicated: {found.get('fully_replicated')}; "
            f"lost: {states.count('lost')}"
        )
    control = found.get("control") or {}
    if control.get("replicated"):
        console.print(
            f"control state: generation {control['generation']}, durable "
            f"{control['durable_generation']} (on {control['acks_needed']}+ node replicas); "
            f"replicas {control['replicas'] or '-'}; short saves {control['short_saves']}"
        )
    for line in schedule_lines(found.get("schedule")):
        console.print(line)


def follower_text(unit: dict[str, Any]) -> str:
    """A replicated unit's followers, each with its state and its lag in batches
    (``?`` until its primary has reported it)."""
    lags = unit.get("lag", {})
    parts = []
    for node, state in sorted(unit.get("followers", {}).items()):
        lag = lags.get(node)
        parts.append(f"{node} ({state}, {'?' if lag is None else lag})")
    return ", ".join(parts) or "-"


def schedule_lines(schedule: dict[str, Any] | None) -> list[str]:
    """The coordinator's schedule in words: the next and last bill runs, the last
    inspection (``status()["schedule"]``, ``cluster.control.duties``)."""
    from cluster.cli.render import when_text

    if not schedule:
        return []
    runs = schedule["bill_runs"]
    lines = []
    if not runs["scheduled"]:
        lines.append("bill runs: not scheduled ([bill_runs] scheduled = false)")
    else:
        upcoming = runs["next"]
        text = f"bill runs: next {upcoming['cycle']} at {when_text(upcoming['at_s'])}"
        running = runs.get("running")
        if running:
            text += (
                f"; running {running['cycle']} ({len(running['done'])} shards done"
                + (f", billing {running['holding']}" if running.get("holding") else "")
                + ")"
            )
        last = runs.get("last")
        if last:
            text += (
                f"; last {last['cycle']} finished {when_text(last['finished_s'])} "
                f"({last.get('accounts', 0)} accounts, {last.get('invoices', 0)} invoices issued)"
            )
        else:
            text += "; none run yet"
        lines.append(text)
    inspection = schedule.get("inspection")
    if inspection is None:
        lines.append("inspection: none run yet")
    elif inspection["ok"]:
        lines.append(f"inspection: every check held at {when_text(inspection['at_s'])}")
    else:
        failing = ", ".join(inspection["failing"])
        lines.append(f"inspection: FAILED at {when_text(inspection['at_s'])}: {failing}")
    return lines


@click.command(name="metrics")
@click.option("--grep", "pattern", default="", help="Only lines containing this text.")
@data_option
def metrics_cmd(pattern: str, data_dir: Path) -> None:
    """Print petribill's Prometheus series (ray_petribill_*) from every node's metrics agent.

    Ray's agents publish what processes record every few seconds; a series
    appears after its first recording.
    """
    import urllib.request

    from actors.metrics import petribill_series

    found = fetch_status(data_dir)
    for node in found["nodes"]:
        url = node["metrics_url"]
        if not url:
            continue
        try:
            with urllib.request.urlopen(url, timeout=10) as page:
                text = page.read().decode()
        except OSError as exc:
            click.echo(f"# {node['node']}: {url} did not answer: {exc}", err=True)
            continue
        for line in petribill_series(text):
            if pattern in line:
                click.echo(f"{line}" if line.startswith("#") else f"{line}  # {node['node']}")


@click.command()
@click.option("--svg", type=click.Path(dir_okay=False, path_type=Path), help="Write an SVG here.")
@data_option
def net(svg: Path | None, data_dir: Path) -> None:
    """Draw the control-plane Petri net with the current marking (DOT, or SVG with --svg).

    Reads the coordinator's persisted state, so it works with the cluster up or down.
    """
    from cluster.control.coordinator import unit_specs
    from cluster.control.state import load_state
    from petri import NetConfig, PetriModel, marking_from_json, render_dot, render_svg

    state = load_state(data_dir)
    if not state.nodes or state.marking_json is None:
        raise click.ClickException(f"no control state in {data_dir}/control/ (never started?)")
    marking = marking_from_json(state.marking_json)
    units = [t if isinstance(t, str) else str(t[0]) for t in marking.tokens("shard_epoch")]
    shards = sum(1 for u in units if u.startswith("acct-"))
    config = NetConfig(
        nodes=tuple(state.nodes),
        shards=unit_specs(shards, len(units) - shards),
        initial_nodes=frozenset(),
    )
    dot = render_dot(PetriModel(config), marking)
    if svg is None:
        click.echo(dot)
        return
    result = render_svg(dot, svg)
    click.echo(result.message)


@click.command()
@click.argument("node")
@click.option("--undo", is_flag=True, help="Put a draining node back in service.")
@click.option("--wait", "wait_s", default=60.0, show_default=True, help="Seconds to wait.")
@data_option
def drain(node: str, undo: bool, wait_s: float, data_dir: Path) -> None:
    """Move every unit off NODE (maintenance) without refusing work."""
    import time

    import ray

    from actors.remote import COORDINATOR_NAME, NAMESPACE
    from cluster.deploy.runtime import connect, read_info

    info = read_info(data_dir)
    if info is None:
        raise click.ClickException(f"no cluster recorded in {data_dir}/runtime.json")
    connect(info)
    try:
        coordinator = ray.get_actor(COORDINATOR_NAME, namespace=NAMESPACE)
        method: Any = coordinator.undrain if undo else coordinator.drain
        if not ray.get(method.remote(node), timeout=30):
            raise click.ClickException(f"refused by the control net: {node} cannot change so")
        deadline = time.monotonic() + wait_s
        while not undo and time.monotonic() < deadline:
            found: Any = ray.get(coordinator.status.remote(), timeout=30)
            left = [u["unit"] for u in found["units"] if u["node"] == node]
            if not left:
                click.echo(f"{node} is drained: it serves no unit")
                return
            time.sleep(0.2)
        if not undo:
            raise click.ClickException(f"{node} still serves units after {wait_s:.0f} s")
        click.echo(f"{node} is back in service")
    finally:
        ray.shutdown()


def register(group: click.Group) -> None:
    for command in (up, down, status, metrics_cmd, net, drain):
        group.add_command(command)
