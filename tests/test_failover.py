"""Failures under load on a real three-node cluster, each followed by the exactly-once check.

The cluster runs in ``storage.mode = "shared"`` (one data folder every node reaches,
a takeover reopens the database): the mode this sequence of faults — a drain, then a
node lost while the drained node still holds units — was written for. The default
for 2+ nodes, ``replicated``, is tested under load with its own faults (a node's
folder deleted, a paused primary, a follower killed mid-catch-up) in
tests/test_replication_cluster.py.

One cluster, one load generator streaming usage through the gateways with the
SDK (which retries with the same record ids and fails over between gateway
addresses), and a sequence of faults: a whole node paused with SIGSTOP and
resumed (then replaced), the coordinator killed, a node drained, a node's
raylet SIGKILLed, and a host's worker process SIGKILLed.
After every fault: the cluster heals by itself, and every acknowledged record
is charged exactly once — each appears once in its account's usage history,
and reconciliation balances with the ledger summing to zero.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import ray
from petribill.v1 import usage_pb2

from actors.remote import COORDINATOR_NAME, NAMESPACE, host_name
from cluster.client import PetribillClient
from cluster.control.coordinator import unit_specs
from cluster.control.state import load_state, read_journal
from cluster.deploy.localray import pid_running
from cluster.deploy.runtime import Runtime
from petri import NetConfig, PetriModel, check_trace, marking_from_json
from tests.local_cluster import running, small_runtime

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

T_NOV = 1_793_700_000
ACCOUNTS = 24
CHARGED = {
    usage_pb2.RECORD_STATUS_CHARGED,
    usage_pb2.RECORD_STATUS_CHARGED_AS_DEBT,
    usage_pb2.RECORD_STATUS_CHARGED_OVER_LIMIT,
}


def msisdn(i: int) -> str:
    return f"49151700{i:05d}"


class Load:
    """Streams small usage batches until stopped; remembers what was acknowledged."""

    def __init__(self, client: PetribillClient) -> None:
        self.client = client
        self.acked: dict[str, int] = {}  # record id -> account index
        self.errors: list[str] = []
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Load:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self._submit_until_stopped()
        except BaseException as exc:  # handed to the test by stop(): a thread cannot fail it
            self.failure = exc

    def _submit_until_stopped(self) -> None:
        while not self._stop.is_set():
            batch = []
            for _ in range(20):
                n = next(self._ids)
                batch.append({
                    "record_id": f"load:{n}", "service": "voice",
                    "served_msisdn": msisdn(n % ACCOUNTS), "record_opening_time_s": T_NOV + n,
                    "called_number": "4930123456", "duration_s": 30 + n % 300,
                })  # fmt: skip
            try:
                response = self.client.submit_usage(batch)
            except Exception as exc:  # the SDK gave up: not acknowledged, retried below
                self.errors.append(f"{type(exc).__name__}: {exc}")
                response = self.client.submit_usage(batch)  # same ids: exactly-once
            for record, result in zip(batch, response.results, strict=True):
                assert result.status in CHARGED, result  # a replay answers its first status
                self.acked[record["record_id"]] = int(record["record_id"].split(":")[1])
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
        assert not self._thread.is_alive(), "the load generator is stuck"
        if self.failure is not None:
            raise AssertionError(f"the load generator failed: {self.failure!r}") from self.failure


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    data_dir = tmp_path_factory.mktemp("failover") / "data"
    runtime = small_runtime(
        data_dir, shards=6, partitions=3, nodes=3, port=0, tables={"storage": {"mode": "shared"}}
    )
    with running(runtime):
        yield runtime


def wait_healthy(
    runtime: Runtime, *, away_from: str | None = None, timeout_s: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = runtime.status()
        owners = {u["node"] for u in status["units"]}
        if status["healthy"] and (away_from is None or away_from not in owners):
            return status
        time.sleep(0.2)
    raise AssertionError(f"not healthy after {timeout_s} s: {runtime.status()}")


def wait_node(runtime: Runtime, node: str, state: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(n["node"] == node and n["status"] == state for n in runtime.status()["nodes"]):
            return
        time.sleep(0.2)
    raise AssertionError(f"{node} not {state} after {timeout_s} s: {runtime.status()['nodes']}")


def assert_exactly_once(client: PetribillClient, load: Load) -> None:
    """Every acknowledged record is in its account's usage history exactly once."""
    acked = dict(load.acked)  # before reading: records acked later may not be read yet
    seen: dict[str, int] = {}
    for i in range(ACCOUNTS):
        for line in client.iter_usage(f"fo-{i}"):
            seen[line.record_id] = seen.get(line.record_id, 0) + 1
    assert all(count == 1 for count in seen.values()), "a record was charged twice"
    missing = [r for r in acked if r not in seen]
    assert not missing, f"acknowledged but not charged: {missing[:5]}"
    report = client.reconcile()
    assert report.balanced and report.ledger_total.micros == 0, report.detail


def host_pid(node: str) -> int:
    host = ray.get_actor(host_name(node), namespace=NAMESPACE)
    return int(ray.get(host.pid.remote(), timeout=30))


def test_faults_under_load_lose_nothing_and_charge_nothing_twice(cluster: Runtime) -> None:
    """Host pause, coordinator kill, drain, node kill, host kill and gateway kill, under
    load: healed every time, exactly once."""
    assert cluster.info is not None and cluster.local is not None
    client = PetribillClient(cluster.info.gateways, timeout_s=60, retries=40)
    for i in range(ACCOUNTS):
        client.create_account(
            f"fo-{i}", payment_mode="postpaid", plan_id="business", msisdns=[msisdn(i)],
            request_id=f"fo-create-{i}",
        )  # fmt: skip
    load = Load(client).start()
    try:
        time.sleep(2)
        # 1. A whole node paused (SIGSTOP of its raylet and every worker): declared
        #    dead, its units taken over; the new owners' opens kill the zombie host,
        #    so it can never write again. Resumed, the raylet learns it was declared
        #    dead and exits; a fresh node replaces it.
        owned_by_n1 = {
            u["unit"]: u["epoch"] for u in cluster.status()["units"] if u["node"] == "n1"
        }
        assert owned_by_n1, "n1 should own units before it is paused"
        zombie = host_pid("n1")
        cluster.local.pause_node(1)
        try:
            wait_healthy(cluster, away_from="n1")
        finally:
            cluster.local.resume_node(1)
        after = {u["unit"]: u["epoch"] for u in cluster.status()["units"]}
        assert all(after[u] > e for u, e in owned_by_n1.items()), "taken over at new epochs"
        wait_node(cluster, "n1", "dead")
        _wait_gone(zombie)
        fresh = cluster.local.add_node().name
        wait_node(cluster, fresh, "alive")
        wait_healthy(cluster)
        assert_exactly_once(client, load)
        # 2. The coordinator's process killed: Ray restarts it from its persisted state.
        coordinator = ray.get_actor(COORDINATOR_NAME, namespace=NAMESPACE)
        before = cluster.status()["marking"]
        ray.kill(coordinator, no_restart=False)
        time.sleep(1)
        after = wait_healthy(cluster)
        assert after["marking"] is not None and before is not None
        assert_exactly_once(client, load)
        # 3. Drain a node: its units move off without refusing work.
        assert ray.get(coordinator.drain.remote(fresh), timeout=30)
        wait_healthy(cluster, away_from=fresh)
        assert_exactly_once(client, load)
        # 4. A node's raylet SIGKILLed: its units are taken over by the others.
        owned_by_n2 = [u for u in cluster.status()["units"] if u["node"] == "n2"]
        assert owned_by_n2, "n2 should own units before it is killed"
        cluster.local.kill_node(2, signal.SIGKILL)
        wait_healthy(cluster, away_from="n2")
        assert_exactly_once(client, load)
        # 5. A host's worker process SIGKILLed: a new host starts on the node, which
        #    recovers and takes units back; nothing acknowledged is lost.
        assert ray.get(coordinator.undrain.remote(fresh), timeout=30)
        killed = host_pid(fresh)
        os.kill(killed, signal.SIGKILL)
        wait_node(cluster, fresh, "dead")
        wait_node(cluster, fresh, "alive")
        wait_healthy(cluster)
        assert_exactly_once(client, load)
        # 6. A gateway's process SIGKILLed mid-stream: nobody here restarts it. Ray
        #    starts a new process and the coordinator makes it serve on the same address.
        node0 = cluster.local.node(0).node_id  # n0 is alive throughout; the driver may not be on it
        address = ray.get(cluster.gateways[node0].address.remote(), timeout=30)
        gateway_pid = cluster.local.worker_pid(0, "GatewayActor")
        assert gateway_pid is not None
        os.kill(gateway_pid, signal.SIGKILL)
        _wait_gone(gateway_pid)
        with PetribillClient(address, retries=0, timeout_s=2) as probe:
            deadline = time.monotonic() + 60
            while probe.health() != {address: "SERVING"}:
                assert time.monotonic() < deadline, _gateways_report(address)
                time.sleep(0.2)
        assert_exactly_once(client, load)
    finally:
        load.stop()
    assert len(load.acked) > 200
    assert_exactly_once(client, load)
    assert_journal_replays(cluster)


def assert_journal_replays(runtime: Runtime) -> None:
    """The coordinator's journal of this run — kills, restart, drain — is a path of the net
    from the empty cluster to the marking it persisted."""
    for _ in range(20):
        state = load_state(runtime.data_dir)
        journal = read_journal(runtime.data_dir)
        if journal and journal[-1]["generation"] == state.generation:
            break
        time.sleep(0.2)
    fired = {event["event"] for event in journal}
    assert fired >= {"join", "assign", "node_fail", "fence", "takeover", "drain", "migrate"}
    config = NetConfig(nodes=tuple(state.nodes), shards=unit_specs(6, 3), initial_nodes=frozenset())
    result = check_trace(PetriModel(config), journal, strict=True)
    assert result.ok, result.rejection
    assert state.marking_json is not None
    assert result.final == marking_from_json(state.marking_json)


def _wait_gone(pid: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while pid_running(pid):
        assert time.monotonic() < deadline, f"the paused host {pid} is still running"
        time.sleep(0.1)


def _gateways_report(address: str) -> str:
    """Why ``address`` is not serving: each gateway actor's answer to ``address()``."""
    from cluster.gateway.names import gateway_handles

    found = []
    for node, handle in gateway_handles().items():
        try:
            found.append((node, ray.get(handle.address.remote(), timeout=10)))
        except Exception as exc:
            found.append((node, f"{type(exc).__name__}: {str(exc)[:300]}"))
    return f"{address} not serving again; gateways: {found}"
