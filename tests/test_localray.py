"""Local Ray launcher: real multi-node clusters on this machine, node death and hangs.

These start real Ray processes (~5 s per node on 2 cores), so they are marked
``slow`` and ``cluster``; one cluster serves the whole scenario to keep it short.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import ray
from ray.exceptions import RayActorError

from cluster.config import ClusterConfig
from cluster.deploy.localray import LocalRay, node_resource, pid_running

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


@ray.remote(max_restarts=0)
class _Where:
    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


def _seconds_until_dead(node_id: str, started: float, timeout_s: float = 60.0) -> float:
    while time.monotonic() - started < timeout_s:
        alive = {n["NodeID"]: n["Alive"] for n in ray.nodes()}  # type: ignore[no-untyped-call]
        if not alive.get(node_id, False):
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"node {node_id} not declared dead within {timeout_s}s")


def test_node_kill_and_hang_are_detected_and_shutdown_leaves_nothing(tmp_path: Path) -> None:
    """Actors land on the chosen node; a killed or paused raylet is declared dead in
    seconds, its actor's calls raise RayActorError, and shutdown ends every PID we started."""
    started = time.monotonic()
    cluster = LocalRay(nodes=3, temp_root="/tmp", config=ClusterConfig())
    with cluster:
        print(f"3 nodes up in {time.monotonic() - started:.1f}s at {cluster.address}")
        assert [n.name for n in cluster.nodes] == ["n0", "n1", "n2"]
        assert len({n.raylet_pid for n in cluster.nodes}) == 3
        assert str(cluster.temp_dir).startswith("/tmp/pb")
        cluster.connect(namespace="test-localray")
        assert len([n for n in ray.nodes() if n["Alive"]]) == 3  # type: ignore[no-untyped-call]

        on = {
            name: _Where.options(resources={node_resource(name): 0.01}).remote()  # type: ignore[attr-defined]
            for name in ("n1", "n2")
        }
        for i, name in ((1, "n1"), (2, "n2")):
            assert ray.get(on[name].node_id.remote(), timeout=60) == cluster.nodes[i].node_id
        worker_pid = ray.get(on["n2"].pid.remote())

        killed_at = time.monotonic()
        cluster.kill_node(2, signal.SIGKILL)
        dead_s = _seconds_until_dead(cluster.nodes[2].node_id, killed_at)
        print(f"SIGKILLed raylet of n2 declared dead after {dead_s:.2f}s")
        with pytest.raises(RayActorError):
            ray.get(on["n2"].pid.remote(), timeout=60)

        paused_at = time.monotonic()
        cluster.kill_node(1, signal.SIGSTOP)
        hung_s = _seconds_until_dead(cluster.nodes[1].node_id, paused_at)
        print(f"SIGSTOPped raylet of n1 declared dead after {hung_s:.2f}s")
        with pytest.raises(RayActorError):
            ray.get(on["n1"].pid.remote(), timeout=60)
        ours = cluster.pids()
        assert cluster.nodes[1].raylet_pid in ours
    assert not cluster.temp_dir.exists()
    leftovers = {pid for pid in ours | {worker_pid} if pid_running(pid)}
    assert not leftovers, f"processes left behind: {sorted(leftovers)}"


def test_head_kill_is_refused() -> None:
    """Killing the head would end the cluster, so kill_node refuses it."""
    cluster = LocalRay(nodes=1, temp_root="/tmp")
    with cluster:
        with pytest.raises(ValueError):
            cluster.kill_node(0)
        assert cluster.nodes[0].is_head
    assert not cluster.pids()
