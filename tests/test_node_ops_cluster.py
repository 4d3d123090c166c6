"""``petribill node add`` and ``petribill restore`` on a real local cluster, with the
commands an operator runs (each a subprocess, as in tests/test_chaos_run.py).

One cluster of 3 simulated nodes (replicated, RF 2, ``min_in_sync`` 2) gets a backup,
then more top-ups. Then a unit is lost the cheapest real way: the head's host is
paused (SIGSTOP) while a top-up waits on the unit, so its primary on a worker drops its
follower on the head from the in-sync set; then the primary's node dies with its
folder, leaving no in-sync copy (beyond the failure model, as any loss is). The head's
host resumes. ``node add`` starts a fresh node, which takes the followers the dead node
held; ``restore`` brings the lost units back from the backup. ``down`` then leaves no
process of the cluster behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from actors.routing import shard_of
from cluster.cli.nodes import copies_by_node
from cluster.client import PetribillClient
from cluster.deploy.localray import LocalRay

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parent.parent
ACCOUNTS = [f"na-{i}" for i in range(12)]
SHARDS, PARTITIONS = 4, 2


def petribill(*args: Any, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "cluster.cli.main", *map(str, args)]
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
    )


def status(data: Path) -> dict[str, Any]:
    shown = petribill("status", "--json", "--data", data)
    assert shown.returncode == 0, shown.stderr[-2000:]
    found: dict[str, Any] = json.loads(shown.stdout)
    return found


def wait_status(data: Path, what: Any, why: str, timeout_s: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = status(data)
        if what(found):
            return found
        assert time.monotonic() < deadline, f"{why}: {json.dumps(found['units'])}"
        time.sleep(1.0)


def balances(client: PetribillClient) -> dict[str, int]:
    return {a: client.get_balance(a).prepaid.micros for a in ACCOUNTS}


def _top_up_quietly(info: dict[str, Any], account: str) -> None:
    """A top-up that waits on a unit about to be lost: never acknowledged, so its
    failure is expected and left unsaid."""
    with contextlib.suppress(Exception), PetribillClient(info["gateways"], timeout_s=30) as client:
        client.top_up(account, "1", request_id=f"t3-{account}")


def test_a_node_added_takes_copies_and_lost_units_come_back_from_a_backup(
    tmp_path: Path,
) -> None:
    """`node add` on a cluster that lost a node: a new node joins, alive, and holds
    followers that restore RF; `restore` brings the lost units back at new epochs with
    the balances of the backup (later top-ups of them died with their copies), every
    other balance as it was; `down` leaves no process behind."""
    conf, data = tmp_path / "conf", tmp_path / "data"
    conf.mkdir()
    shutil.copytree(ROOT / "conf" / "tariffs", conf / "tariffs")
    (conf / "cluster.toml").write_text(  # a lagging follower leaves the ISR within ~1.5 s
        f"[sharding]\nshards = {SHARDS}\npartitions = {PARTITIONS}\n[gateway]\nport = 0\n"
        "[storage]\nreplica_ack_timeout_ms = 500\nreplica_lag_max_ms = 1000\n"
    )
    started = petribill("up", "--detach", "--nodes", 3, "--conf", conf, "--data", data)
    assert started.returncode == 0, started.stderr[-3000:]
    info = json.loads((data / "runtime.json").read_text())
    local = LocalRay.reattach(temp_dir=Path(info["local_temp_dir"]), address=info["address"])
    try:
        with PetribillClient(info["gateways"], timeout_s=60, retries=40) as client:
            for account in ACCOUNTS:
                client.create_account(account, "prepaid", request_id=f"c-{account}")
                client.top_up(account, "10", request_id=f"t1-{account}")
            backed_up = balances(client)
            taken = petribill("backup", "--data", data, "--request-id", "bk-1")
            assert taken.returncode == 0, taken.stderr[-2000:]
            for account in ACCOUNTS:
                client.top_up(account, "1", request_id=f"t2-{account}")
            latest = balances(client)

        units = {u["unit"]: u for u in status(data)["units"]}
        victim = next(
            (u for u, v in sorted(units.items()) if u.startswith("acct-") and v["node"] != "n0"),
            None,
        )
        assert victim is not None, f"no account shard has its primary on a worker: {units}"
        worker = int(units[victim]["node"][1:])
        account = next(a for a in ACCOUNTS if shard_of(a, SHARDS) == victim)
        host = local.worker_pid(0, "RoutedHost")
        assert host is not None
        os.kill(host, signal.SIGSTOP)
        try:
            waiting = threading.Thread(target=_top_up_quietly, args=(info, account), daemon=True)
            waiting.start()  # waits on the paused follower: the primary reports it lagging
            wait_status(
                data,
                lambda s: {u["unit"]: u for u in s["units"]}[victim]["isr"] == [],
                f"{victim} kept its paused follower in sync",
                timeout_s=60,
            )
            for pid in local.node_pids(worker):  # its primary's machine dies, disk and all
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            shutil.rmtree(data / "nodes" / f"n{worker}", ignore_errors=True)
            wait_status(
                data,
                lambda s: {u["unit"]: u for u in s["units"]}[victim]["state"] == "lost",
                f"{victim} is not lost",
                timeout_s=60,
            )
        finally:
            os.kill(host, signal.SIGCONT)

        added = petribill("node", "add", "--data", data, "--conf", conf)
        assert added.returncode == 0, added.stderr[-3000:]
        assert "n3 joined" in added.stdout, added.stdout
        waiting.join(timeout=120)  # the waiting top-up has failed, never to land later
        assert not waiting.is_alive()
        found = status(data)
        lost = {u["unit"] for u in found["units"] if u["state"] == "lost"}
        assert victim in lost, found["units"]
        alive = {n["node"] for n in found["nodes"] if n["status"] == "alive"}
        assert len(alive) == 3 and "n3" in alive and f"n{worker}" not in alive, found["nodes"]
        shown = re.search(r"gateway (\S+)", added.stdout)
        assert shown is not None, added.stdout
        gateway = shown.group(1)
        with PetribillClient(gateway, timeout_s=30) as client:  # the new node's gateway
            assert client.health()[gateway] == "SERVING"
        listed = petribill("node", "list", "--json", "--data", data)
        assert {r["node"]: r["status"] for r in json.loads(listed.stdout)}["n3"] == "alive"

        restored = petribill("restore", data / "backups" / "bk-1", "--data", data, "--json")
        assert restored.returncode == 0, restored.stderr[-3000:]
        answer = json.loads(restored.stdout)
        assert {u["unit"] for u in answer["units"]} == lost
        for unit in answer["units"]:
            assert int(unit["epoch"]) > units[unit["unit"]]["epoch"], unit
            assert unit["node"] in alive
        healed = wait_status(
            data, lambda s: s["healthy"] and s["fully_replicated"], "not replicated again"
        )
        held = copies_by_node(healed)["n3"]
        assert held["primaries"] + held["followers"] > 0, healed["units"]
        with PetribillClient(info["gateways"], timeout_s=60, retries=40) as client:
            now = balances(client)
        for account in ACCOUNTS:
            unit = shard_of(account, SHARDS)
            want = backed_up[account] if unit in lost else latest[account]
            assert now[account] == want, (account, unit)
    finally:
        stopped = petribill("down", "--data", data, "--conf", conf)
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert not local.pids(), "processes of the cluster left after down"
