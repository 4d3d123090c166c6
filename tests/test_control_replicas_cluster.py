"""A real three-node replicated Ray cluster loses its control folder between two runs.

``down``, ``<data>/control/`` deleted (the coordinator's disk lost), ``up`` again: the
coordinator rebuilds its state from the nodes' control replicas (each in its own node
folder, written by its host), so the accounts, balances and usage are all there, the
journal goes on from where it was, and the cluster is healthy.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import ray

from actors.remote import COORDINATOR_NAME, NAMESPACE, host_name
from cluster.client import PetribillClient
from cluster.control.state import load_state, read_journal
from cluster.deploy.runtime import Runtime
from tests.local_cluster import running, small_runtime

pytestmark = [pytest.mark.cluster]

ACCOUNTS = 6
T_NOV = 1_793_700_000


def _msisdn(i: int) -> str:
    return f"49151700{i:05d}"


def _runtime(data_dir: Path) -> Runtime:
    return small_runtime(data_dir, shards=4, partitions=2, nodes=3, port=0)


def _snapshot(client: PetribillClient) -> dict[str, tuple[str, list[str]]]:
    """Each account's answer (balances, state) and the ids of its usage lines."""
    return {
        f"cr-{i}": (
            str(client.get_account(f"cr-{i}")),
            sorted(line.record_id for line in client.iter_usage(f"cr-{i}")),
        )
        for i in range(ACCOUNTS)
    }


def _control(runtime: Runtime) -> dict[str, Any]:
    found: dict[str, Any] = runtime.status()["control"]
    return found


def _wait(runtime: Runtime, what: Callable[[dict[str, Any]], bool], why: str) -> None:
    deadline = time.monotonic() + 60
    while not what(control := _control(runtime)):
        assert time.monotonic() < deadline, f"{why}: {control}"
        time.sleep(0.2)


def _pause_a_host_while_the_coordinator_saves(runtime: Runtime) -> None:
    """SIGSTOP worker n1's host and have the coordinator save (a bill-run lock taken and
    released): the saves are durable all the same (n2's replica), n1's replica stays
    behind, and after SIGCONT it catches up in the background."""
    host: Any = ray.get_actor(host_name("n1"), namespace=NAMESPACE)
    pid = int(ray.get(host.pid.remote(), timeout=30))
    coordinator = ray.get_actor(COORDINATOR_NAME, namespace=NAMESPACE)
    os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(3):
            assert ray.get(coordinator.lock.remote("acct-00", "bill_run"), timeout=30)
            assert ray.get(coordinator.unlock.remote("acct-00", "bill_run"), timeout=30)
        control = _control(runtime)
        assert control["durable_generation"] == control["generation"], control
        assert control["replicas"].get("n1", 0) < control["generation"], control
    finally:
        os.kill(pid, signal.SIGCONT)
    _wait(runtime, lambda c: c["replicas"].get("n1") == c["generation"], "n1 not caught up")


def test_a_cluster_whose_control_folder_is_lost_comes_back_whole(tmp_path: Path) -> None:
    """Accounts and usage on a 3-node replicated cluster; ``down``; ``<data>/control/``
    deleted; ``up``: the same accounts, balances and usage, the journal continued from
    the last generation (so every unit's epoch went on from the one it had), healthy.
    Before ``down``, a paused host does not keep the coordinator's saves from being
    durable, and catches up once resumed."""
    data = tmp_path / "data"
    first = _runtime(data)
    with running(first) as info:
        assert first.storage_mode == "replicated"
        client = PetribillClient(info.gateways, timeout_s=60, retries=40)
        for i in range(ACCOUNTS):
            client.create_account(
                f"cr-{i}", payment_mode="postpaid", plan_id="business",
                msisdns=[_msisdn(i)], request_id=f"cr-create-{i}",
            )  # fmt: skip
        records = [
            {
                "record_id": f"cr-use-{n}", "service": "voice",
                "served_msisdn": _msisdn(n % ACCOUNTS), "record_opening_time_s": T_NOV + n,
                "called_number": "4930123456", "duration_s": 30 + n,
            }
            for n in range(60)
        ]  # fmt: skip
        client.submit_usage(records)
        _pause_a_host_while_the_coordinator_saves(first)
        before = _snapshot(client)
        epochs = {u["unit"]: u["epoch"] for u in first.status()["units"]}
        _wait(first, lambda c: c["durable_generation"] == c["generation"], "not durable")
        client.close()
    generation, journal = load_state(data).generation, read_journal(data)
    shutil.rmtree(data / "control")

    second = _runtime(data)
    with running(second) as info:
        status = second.status()
        assert status["healthy"] and status["control"]["error"] == "", status["control"]
        with PetribillClient(info.gateways, timeout_s=60, retries=40) as client:
            assert _snapshot(client) == before
        after = read_journal(data)
        assert after[: len(journal)] == journal
        assert after[len(journal)]["generation"] > generation  # not an older state
        now = {u["unit"]: u["epoch"] for u in second.status()["units"]}
        assert all(now[unit] >= epoch for unit, epoch in epochs.items()), (epochs, now)
