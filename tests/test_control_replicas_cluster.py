"""A real three-node replicated Ray cluster loses its control folder between two runs.

``down``, ``<data>/control/`` deleted (the coordinator's disk lost), ``up`` again: the
coordinator rebuilds its state from the nodes' control replicas (each in its own node
folder, written by its host), so the accounts, balances and usage are all there, the
journal goes on from where it was, and the cluster is healthy.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

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


def test_a_cluster_whose_control_folder_is_lost_comes_back_whole(tmp_path: Path) -> None:
    """Accounts and usage on a 3-node replicated cluster; ``down``; ``<data>/control/``
    deleted; ``up``: the same accounts, balances and usage, the journal continued from
    the last generation (so every unit's epoch went on from the one it had), healthy."""
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
        before = _snapshot(client)
        epochs = {u["unit"]: u["epoch"] for u in first.status()["units"]}
        deadline = time.monotonic() + 60
        while (control := first.status()["control"])["durable_generation"] < control["generation"]:
            assert time.monotonic() < deadline, control
            time.sleep(0.2)
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
