"""``petribill node add`` and ``node list``: the nodes of a running cluster.

``node add`` grows a cluster started with ``petribill up --detach --nodes N`` by
one simulated node on this machine (``Runtime.add_node``, the path the chaos
harness takes for a replacement node): a Ray node with a temp folder and ports
of its own, a data folder of its own (``DATA/nodes/<node>/``, made by its host),
and its gateway. On real machines a node joins with ``ray start --address=...``
instead (docs/operations-notes.md, "Adding or replacing a node").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from cluster.cli.console import make_console
from cluster.cli.ops import SetupError, cluster_config, conf_option, data_option, fetch_status

__all__ = ["copies_by_node", "register"]


@click.group()
def node() -> None:
    """The nodes of a running cluster: list them, add one."""


def copies_by_node(status: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per node of the coordinator's status: the primaries and the follower copies it holds."""
    found = {n["node"]: {"primaries": 0, "followers": 0} for n in status["nodes"]}
    for unit in status["units"]:
        if unit["state"] == "owned" and unit["node"] in found:
            found[unit["node"]]["primaries"] += 1
        for follower in unit.get("followers", {}):
            found.setdefault(follower, {"primaries": 0, "followers": 0})["followers"] += 1
    return found


@node.command("add")
@click.option(
    "--wait", "wait_s", default=180.0, show_default=True, help="Seconds to wait for it to join."
)
@data_option
@conf_option
def add(wait_s: float, data_dir: Path, conf_dir: Path) -> None:
    """Start one more simulated node (and its gateway) in the local cluster of DATA.

    Waits until the coordinator counts it alive and every unit that is not lost
    has its copies again (followers that a lost node held are placed on it,
    caught up and joined), then prints its name, gateway address and the copies
    it holds. The cluster must have been started on this machine with
    `petribill up --detach --nodes N`; give the --conf it was started with (its
    gateway's [security] comes from there, every other setting from
    DATA/runtime.json).
    """
    from cluster.deploy.localray import LocalRay, LocalRayError
    from cluster.deploy.runtime import Runtime, StartError, read_info

    config = cluster_config(conf_dir)
    info = read_info(data_dir)
    if info is None:
        raise SetupError(f"no running cluster in {data_dir} (no {data_dir}/runtime.json)")
    if info.local_temp_dir is None:
        raise SetupError(
            f"the cluster of {data_dir} joined Ray at {info.address}: a node joins it with "
            f"`ray start --address={info.address}` on the new machine"
        )
    if info.settings.get("storage_mode") == "local":
        raise SetupError(
            f"the cluster of {data_dir} keeps its units on its one node (storage.mode "
            "'local'): a node added could never take them over; start it with --nodes 2 "
            "or more (replicated) to grow it"
        )
    local = LocalRay.reattach(
        temp_dir=Path(info.local_temp_dir), address=info.address, config=config
    )
    if not local.nodes:  # no process of it left (the machine restarted, say)
        raise SetupError(
            f"the cluster recorded in {data_dir}/runtime.json is not running (no process "
            f"of {info.local_temp_dir} is left): `petribill down --data {data_dir}` clears it"
        )
    try:
        runtime = Runtime.attach(config, data_dir)
    except Exception as exc:  # its Ray does not answer: a cluster that died
        raise SetupError(
            f"the cluster recorded in {data_dir}/runtime.json does not answer: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    try:
        handle, address = runtime.add_node(timeout_s=wait_s)
        click.echo(f"{handle.name} started (ray node {handle.node_id[:16]}), gateway {address}")
        status = runtime.wait_node(handle.name, wait_s)
    except (StartError, LocalRayError) as exc:  # the node did not start, or not join
        raise click.ClickException(str(exc)) from None
    finally:
        runtime.stop()  # attached: only disconnects
    held = copies_by_node(status).get(handle.name, {"primaries": 0, "followers": 0})
    click.echo(
        f"{handle.name} joined: {held['primaries']} primaries, {held['followers']} follower "
        f"copies, gateway {address}"
        + (
            ""
            if held["primaries"] or held["followers"]
            else " (every unit has its copies on the other nodes; it takes copies when a "
            "node is lost)"
        )
    )


@node.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
@data_option
def list_nodes(as_json: bool, data_dir: Path) -> None:
    """Every node the coordinator knows, with its status and the copies it holds."""
    status = fetch_status(data_dir)
    copies = copies_by_node(status)
    gateways = {g["node"]: g["address"] for g in status["gateways"] if g.get("node")}
    rows = [
        {
            "node": n["node"],
            "status": n["status"],
            "hosts": n.get("hosts", 1),
            **copies.get(n["node"], {"primaries": 0, "followers": 0}),
            "gateway": gateways.get(n["node"], ""),
            "ray_node_id": n["ray_node_id"],
        }
        for n in status["nodes"]
    ]
    if as_json:
        click.echo(json.dumps(rows))
        return
    table = Table(title="nodes")
    for column in ("node", "status", "hosts", "primaries", "followers", "gateway", "ray node id"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["node"],
            row["status"],
            str(row["hosts"]),
            str(row["primaries"]),
            str(row["followers"]),
            row["gateway"] or "-",
            row["ray_node_id"][:16],
        )
    make_console().print(table)


def register(group: click.Group) -> None:
    group.add_command(node)
