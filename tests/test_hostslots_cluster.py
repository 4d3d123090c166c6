"""Two host processes per node (``hosts_per_node = 2``) on a real two-node replicated cluster.

One cluster for the module: every unit is served, by the slot :mod:`actors.slots`
gives it, on its primary and on its follower alike; both slots of a node serve units
from processes of their own; usage and top-ups through the gateways are charged and
answered; and when ONE slot's process of a node is SIGKILLed, the coordinator fails
the node's host over (its units are promoted on the other node) and every top-up
that was acknowledged is in the balances, nothing more, nothing less; chaos's kill-host
hits the slot its pick names. Local storage:
tests/test_hostslots_local_cluster.py.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import ray
from petribill.v1 import usage_pb2

from actors.remote import NAMESPACE, host_pids
from actors.slots import slot_of
from chaos.faults import Fault, Injector
from cluster.client import PetribillClient
from cluster.control.state import read_journal
from cluster.deploy.runtime import Runtime
from tests.hostslots_support import (
    ACCOUNTS,
    HOSTS,
    NODES,
    PARTITIONS,
    SHARDS,
    TopUps,
    account,
    client_with_accounts,
    fully_replicated,
    host_call,
    slots_runtime,
    taken_over,
    total,
    voice,
    wait_until,
)
from tests.local_cluster import running

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    data_dir = tmp_path_factory.mktemp("hostslots") / "data"
    runtime = slots_runtime(data_dir, nodes=len(NODES))
    with running(runtime):
        assert runtime.storage_mode == "replicated"
        yield runtime


@pytest.fixture(scope="module")
def client(cluster: Runtime) -> PetribillClient:
    assert cluster.info is not None
    client = client_with_accounts(cluster.info.gateways)
    wait_until(lambda: fully_replicated(cluster), "not fully replicated after the set-up")
    return client


def test_every_unit_is_served_by_its_slot_on_its_primary_and_its_follower(
    cluster: Runtime, client: PetribillClient
) -> None:
    """Each node's two slots are two processes that each serve the units of their slot as
    primaries and keep the follower copies of their slot's units, nothing else."""
    status = cluster.status()
    assert status["hosts_per_node"] == HOSTS
    assert {n["node"]: n["hosts"] for n in status["nodes"]} == dict.fromkeys(NODES, HOSTS)
    units = {u["unit"]: u for u in status["units"]}
    assert len(units) == SHARDS + PARTITIONS
    assert all(u["state"] == "owned" for u in units.values()), units
    assert {u["slot"] for u in units.values()} == set(range(HOSTS))
    for i in range(ACCOUNTS):  # followers attach on a unit's first write
        client.top_up(account(i), "0.01", request_id=f"slot-warm-{i}")
    replicas: Any = ray.get(
        ray.get_actor("petribill-coordinator", namespace=NAMESPACE).replicas.remote(), timeout=30
    )
    for node in NODES:
        pids = host_pids(node, HOSTS)
        assert sorted(pids) == list(range(HOSTS)) and len(set(pids.values())) == HOSTS, pids
        for slot in range(HOSTS):
            assert host_call(node, slot, "pid") == pids[slot]
            served = set(host_call(node, slot, "units"))
            primaries = {
                u for u, info in units.items() if info["node"] == node and info["slot"] == slot
            }
            assert served == primaries, (node, slot, served, primaries)
            copies = set(host_call(node, slot, "replica_copies"))
            followed = {u for u, view in replicas.items() if node in view["isr"] and u in units}
            assert copies == {u for u in followed if slot_of(u, HOSTS) == slot}, (
                node, slot, copies, followed,
            )  # fmt: skip
            # RF 2 on 2 nodes: every node holds every unit, so each slot process holds
            # (serves or follows) exactly the units of its slot, never none.
            assert served | copies == {u for u in units if slot_of(u, HOSTS) == slot}


def test_usage_is_charged_and_answered_through_both_slots(
    cluster: Runtime, client: PetribillClient
) -> None:
    """Usage for every account (so on shards and partitions of both slots) is charged, once,
    and each account's history answers with exactly its records."""
    batch = [voice(n) for n in range(ACCOUNTS * 5)]
    results = client.submit_usage(batch).results
    assert [r.status for r in results] == [usage_pb2.RECORD_STATUS_CHARGED] * len(batch), [
        (r.status, r.reason, r.detail) for r in results[:3]
    ]
    again = client.submit_usage(batch).results  # the same ids: nothing charged twice
    assert len(again) == len(batch)
    for i in range(ACCOUNTS):
        lines = [line.record_id for line in client.iter_usage(account(i))]
        expected = {f"slot-usage:{n}" for n in range(i, ACCOUNTS * 5, ACCOUNTS)}
        assert sorted(lines) == sorted(expected), (i, lines)
    report = client.reconcile()
    assert report.balanced and report.ledger_total.micros == 0, report.detail


def test_one_slot_killed_fails_the_node_over_and_loses_nothing_acknowledged(
    cluster: Runtime, client: PetribillClient
) -> None:
    """SIGKILL slot 1's process of n1 under top-ups: n1's units are promoted on n0 (the
    node's host failed because one of its processes is gone), and every balance is its
    start plus exactly the top-ups acknowledged."""
    wait_until(lambda: fully_replicated(cluster), "not fully replicated before the kill")
    start = {i: total(client, account(i)) for i in range(ACCOUNTS)}
    generation = max(int(e["generation"]) for e in read_journal(cluster.data_dir))
    owned = {u["unit"]: u["epoch"] for u in cluster.status()["units"] if u["node"] == "n1"}
    assert owned, "n1 owns no unit"
    victim = host_pids("n1", HOSTS)[1]
    load = TopUps(client).start()
    try:
        time.sleep(1.0)
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: taken_over(cluster, owned), "n1's units not taken over after one slot died"
        )
        wait_until(lambda: fully_replicated(cluster), "not healed after the kill")
        time.sleep(1.0)  # acknowledged after the healing too
    finally:
        load.stop()
    failures = [
        (e["node"], e["cause"])
        for e in read_journal(cluster.data_dir)
        if int(e["generation"]) > generation and e["event"] == "node_fail"
    ]
    assert failures[:1] == [("n1", "host_gone")], failures
    assert sum(load.acked.values()) > 0
    for i in range(ACCOUNTS):
        assert total(client, account(i)) == start[i] + load.acked[i] * 1_000_000, i
    assert victim not in host_pids("n1", HOSTS).values()
    report = client.reconcile()
    assert report.balanced and report.ledger_total.micros == 0, report.detail


def test_the_kill_host_fault_kills_the_slot_its_pick_names(
    cluster: Runtime, client: PetribillClient
) -> None:
    """Chaos's kill-host with pick 2 on two nodes hits slot 1 of n0, says so, and the node's
    units are taken over; the slot's process is a new one afterwards."""
    before = host_pids("n0", HOSTS)
    result = Injector(cluster).apply(Fault(at_s=0.0, kind="kill-host", pick=2), at_s=0.0)
    assert result.target == "n0" and not result.skipped, result
    assert result.detail == f"slot 1 of {HOSTS}, pid {before[1]}", result
    assert result.takeover_s is not None, result
    after = host_pids("n0", HOSTS)
    assert after[1] != before[1] and sorted(after) == list(range(HOSTS)), (before, after)
