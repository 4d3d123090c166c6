"""Replicated units on a real three-node Ray cluster under load: a node and its disk lost,
a paused primary resumed after its promotion away, a follower killed mid-catch-up.

One cluster for the module (``storage.mode = "replicated"``, RF 2, ``min_in_sync`` 2:
the default for 2+ nodes), each node in its own folder ``DATA/nodes/<node>``; a load
streams usage through the gateways with the SDK (same record ids on every retry).
After each fault: every acknowledged record is charged exactly once, and every unit's
in-sync copies equal its primary key for key (read-only opens of each node's folder,
by this test, which plays the auditor; no node ever opens another's).
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from petribill.v1 import usage_pb2
from rocksdict import AccessType, Options, Rdict

from actors.host import StaleRoute
from actors.remote import COORDINATOR_NAME, NAMESPACE, host_name
from actors.routing import shard_of
from actors.shard import ops
from actors.store.codec import EPOCH_KEY
from cluster.client import PetribillClient
from cluster.control.coordinator import unit_specs
from cluster.control.state import load_state, read_journal
from cluster.deploy.runtime import Runtime
from petri import NetConfig, PetriModel, check_trace, marking_from_json
from tests.local_cluster import running, small_runtime

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SHARDS, PARTITIONS = 4, 2
T_NOV = 1_793_700_000
ACCOUNTS = 16
CHARGED = {
    usage_pb2.RECORD_STATUS_CHARGED,
    usage_pb2.RECORD_STATUS_CHARGED_AS_DEBT,
    usage_pb2.RECORD_STATUS_CHARGED_OVER_LIMIT,
}


def msisdn(i: int) -> str:
    return f"49151600{i:05d}"


def account(i: int) -> str:
    return f"rep-{i}"


class Load:
    """Streams small usage batches until stopped; remembers what was acknowledged."""

    def __init__(self, client: PetribillClient, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.acked: set[str] = set()
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Load:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                batch = []
                for _ in range(20):
                    n = next(self._ids)
                    batch.append({
                        "record_id": f"{self.prefix}:{n}", "service": "voice",
                        "served_msisdn": msisdn(n % ACCOUNTS),
                        "record_opening_time_s": T_NOV + n, "called_number": "4930123456",
                        "duration_s": 30 + n % 300,
                    })  # fmt: skip
                while True:  # the same ids until acknowledged: exactly once
                    try:
                        response = self.client.submit_usage(batch)
                        break
                    except Exception:
                        time.sleep(0.2)
                for record, result in zip(batch, response.results, strict=True):
                    assert result.status in CHARGED, result
                    self.acked.add(record["record_id"])
                time.sleep(0.01)
        except BaseException as exc:  # handed to the test by stop()
            self.failure = exc

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=180)
        assert not self._thread.is_alive(), "the load generator is stuck"
        if self.failure is not None:
            raise AssertionError(f"the load generator failed: {self.failure!r}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    data_dir = tmp_path_factory.mktemp("replicated") / "data"
    runtime = small_runtime(data_dir, shards=SHARDS, partitions=PARTITIONS, nodes=3, port=0)
    with running(runtime) as info:
        assert runtime.storage_mode == "replicated"
        client = PetribillClient(info.gateways, timeout_s=60, retries=40)
        for i in range(ACCOUNTS):
            client.create_account(
                account(i), payment_mode="postpaid", plan_id="business",
                msisdns=[msisdn(i)], request_id=f"rep-create-{i}",
            )  # fmt: skip
        yield runtime


@pytest.fixture(scope="module")
def client(cluster: Runtime) -> Iterator[PetribillClient]:
    assert cluster.info is not None
    with PetribillClient(cluster.info.gateways, timeout_s=60, retries=40) as sdk:
        yield sdk


def coordinator() -> Any:
    return ray.get_actor(COORDINATOR_NAME, namespace=NAMESPACE)


def replicas() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = ray.get(coordinator().replicas.remote(), timeout=30)
    return found


def wait_until(what: Any, why: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        assert time.monotonic() < deadline, f"{why}: {replicas()}"
        time.sleep(0.2)


def fully_replicated(runtime: Runtime) -> bool:
    status = runtime.status()
    return bool(status["healthy"] and status["fully_replicated"])


def assert_exactly_once(client: PetribillClient, acked: set[str]) -> None:
    """Every acknowledged record is in its account's usage history exactly once."""
    seen: dict[str, int] = {}
    for i in range(ACCOUNTS):
        for line in client.iter_usage(account(i)):
            seen[line.record_id] = seen.get(line.record_id, 0) + 1
    twice = [r for r, n in seen.items() if n > 1]
    assert not twice, f"charged twice: {twice[:5]}"
    missing = [r for r in acked if r not in seen]
    assert not missing, f"acknowledged but not charged: {missing[:5]}"
    report = client.reconcile()
    assert report.balanced and report.ledger_total.micros == 0, report.detail


def rows(path: Path) -> dict[bytes, bytes]:
    """A copy's rows but its own epoch key, read-only (a snapshot as of the open)."""
    db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
    try:
        return {k: v for k, v in db.items() if k != EPOCH_KEY}
    finally:
        db.close()


def assert_copies_equal(runtime: Runtime) -> int:
    """Each unit's in-sync copies hold, key for key, what its primary holds (balances,
    ledger, marks, write log); the number of copies compared. A batch may be on its way
    when the snapshots are taken: compared again a few times before failing."""
    nodes = runtime.data_dir / "nodes"
    for attempt in range(5):
        differ = []
        compared = 0
        for unit, view in replicas().items():
            want = rows(nodes / view["primary"] / "units" / unit)
            for follower in view["isr"]:
                compared += 1
                if rows(nodes / follower / "units" / unit) != want:
                    differ.append((unit, follower))
        if not differ:
            return compared
        time.sleep(1.0 + attempt)
    raise AssertionError(f"in-sync copies differ from their primaries: {differ}")


def test_a_node_and_its_folder_lost_under_load(cluster: Runtime, client: PetribillClient) -> None:
    """Kill every process of a node and delete its folder while usage streams in: its
    units are promoted to their in-sync followers, new followers restore RF on the
    replacement node, every acknowledged record is charged once, copies are equal."""
    assert cluster.local is not None
    wait_until(lambda: fully_replicated(cluster), "not fully replicated at start")
    load = Load(client, "lose").start()
    try:
        time.sleep(3)
        # The victim is a worker node (the head carries Ray's GCS) that is some unit's
        # primary: units placed while the workers' hosts were starting are spread to
        # them by rebalancing.
        workers = {n.name for n in cluster.local.nodes if not n.is_head}
        wait_until(
            lambda: any(v["primary"] in workers for v in replicas().values()),
            "no worker node is any unit's primary",
        )
        before = replicas()
        generation = load_state(cluster.data_dir).generation
        primaries = [v["primary"] for v in before.values() if v["primary"] in workers]
        victim = max(sorted(workers), key=primaries.count)
        index = next(n.index for n in cluster.local.nodes if n.name == victim)
        assert victim in primaries, "victim owns no unit"
        for pid in cluster.local.node_pids(index):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(cluster.data_dir / "nodes" / victim)
        cluster.local.add_node()  # as an operator would: an empty node

        def healed() -> bool:
            views = replicas().values()
            return fully_replicated(cluster) and all(
                v["primary"] != victim and victim not in v["isr"] for v in views
            )

        wait_until(healed, "not healed after the node and its folder were lost")
        after = replicas()
        promoted = {
            e["shard"]: e["node"]
            for e in read_journal(cluster.data_dir)
            if e["generation"] > generation and e["event"] == "promote"
        }
        for unit, view in before.items():
            if view["primary"] == victim:
                assert promoted[unit] in view["isr"], f"{unit} promoted from outside its ISR"
                assert after[unit]["epoch"] > view["epoch"]
        assert all(len(v["isr"]) == 1 for v in after.values()), "RF not restored"
        assert not (cluster.data_dir / "nodes" / victim).exists(), "the lost folder came back"
        time.sleep(2)  # acknowledged after the healing too
    finally:
        load.stop()
    assert len(load.acked) > 100
    assert_exactly_once(client, load.acked)
    assert assert_copies_equal(cluster) == SHARDS + PARTITIONS


def test_a_paused_primary_resumed_after_its_promotion_gets_nothing_acknowledged(
    cluster: Runtime, client: PetribillClient
) -> None:
    """SIGSTOP the host process of a unit's primary until the coordinator has promoted
    the unit's follower, queue a write on the paused host at its old epoch, SIGCONT it:
    the write is refused (its follower, now primary, refuses its epoch), never charged."""
    target = next(i for i in range(ACCOUNTS) if shard_of(account(i), SHARDS) == "acct-00")
    unit = "acct-00"
    balance = client.get_balance(account(target))
    before = (balance.prepaid.micros, balance.credit.micros)
    view = replicas()[unit]
    primary, old_epoch = view["primary"], view["epoch"]
    host = ray.get_actor(host_name(primary), namespace=NAMESPACE)
    pid = int(ray.get(host.pid.remote(), timeout=30))
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(
            lambda: replicas()[unit]["primary"] not in ("", primary),
            f"{unit} not promoted away from the paused {primary}",
        )
        zombie = ops.TopUp(
            request_id="zombie-1", account_id=account(target), amount=7_000_000,
            currency="EUR", at_s=T_NOV,
        )  # fmt: skip
        queued = host.run.remote(unit, old_epoch, zombie)
    finally:
        os.kill(pid, signal.SIGCONT)
    with pytest.raises(StaleRoute) as refused:  # NotReplicated is a StaleRoute
        ray.get(queued, timeout=120)
    print(f"the resumed primary's write: {type(refused.value).__name__}: {refused.value}")
    wait_until(lambda: fully_replicated(cluster), "not healed after the pause")
    after = client.get_balance(account(target))
    assert (after.prepaid.micros, after.credit.micros) == before
    # Had the zombie's top-up been stored anywhere, its id with another amount would be
    # refused as a conflict; it is a new request.
    answer = client.top_up(account(target), "1.00", request_id="zombie-1")
    assert answer.prepaid.micros + answer.credit.micros - sum(before) == 1_000_000, answer
    assert_copies_equal(cluster)


def test_a_follower_killed_mid_catch_up_is_never_promoted(
    cluster: Runtime, client: PetribillClient
) -> None:
    """A new follower's host is paused while it is being caught up, then SIGKILLed: it
    never joins the in-sync set, the unit keeps its data, and RF is restored later."""
    assert cluster.local is not None
    wait_until(lambda: fully_replicated(cluster), "not fully replicated before")
    unit = "acct-01"
    view = replicas()[unit]
    primary, (follower,) = view["primary"], view["isr"]
    third = next(
        n.name for n in cluster.local.nodes
        if n.name not in (primary, follower) and any(
            x["node"] == n.name and x["status"] == "alive" for x in cluster.status()["nodes"]
        )
    )  # fmt: skip
    load = Load(client, "catchup").start()
    try:
        time.sleep(2)
        third_host = ray.get_actor(host_name(third), namespace=NAMESPACE)
        third_pid = int(ray.get(third_host.pid.remote(), timeout=30))
        follower_pid = int(
            ray.get(ray.get_actor(host_name(follower), namespace=NAMESPACE).pid.remote())
        )
        # The third node is paused first (its host keeps looking alive for a moment), then
        # the follower's host is killed: the unit's new follower goes to the paused node,
        # whose catch-up cannot finish.
        os.kill(third_pid, signal.SIGSTOP)
        os.kill(follower_pid, signal.SIGKILL)
        try:
            wait_until(
                lambda: replicas()[unit]["followers"].get(third, {}).get("state") == "catching_up",
                f"no catch-up of {unit} on {third}",
                timeout_s=60,
            )
            assert third not in replicas()[unit]["isr"]
        finally:
            os.kill(third_pid, signal.SIGKILL)  # killed in the middle of its catch-up
        wait_until(lambda: fully_replicated(cluster), "not healed after the kills")
        assert replicas()[unit]["primary"] == primary, "a catching-up copy was promoted"
        time.sleep(2)
    finally:
        load.stop()
    assert_exactly_once(client, load.acked)
    assert_copies_equal(cluster)


def test_the_status_rpc_shows_each_unit_s_copies(cluster: Runtime, client: PetribillClient) -> None:
    """ClusterStatus over gRPC names each unit's primary, followers (state, lag) and
    in-sync set as the coordinator holds them, and says the cluster is fully replicated."""
    wait_until(lambda: fully_replicated(cluster), "not fully replicated")
    status = client.cluster_status()
    view = replicas()
    assert status.replication_factor == 2 and status.writable and status.fully_replicated
    assert {s.shard_id for s in status.shards} == set(view)
    for shard in status.shards:
        copies = view[shard.shard_id]
        assert shard.owner_node == copies["primary"], shard
        assert list(shard.in_sync) == copies["isr"] and len(shard.in_sync) == 1, shard
        assert {f.node_id: f.state for f in shard.followers} == {
            node: f["state"] for node, f in copies["followers"].items()
        }, shard
        assert all(f.lag >= 0 and (f.lag_known or f.lag == 0) for f in shard.followers)
    assert status.schedule.next_cycle, status.schedule


def test_the_journal_replays_through_the_replicated_net(cluster: Runtime) -> None:
    """The coordinator's journal of this module's run (promotions, shrinks, re-adds,
    joins) is a path of the replicated net to the marking it persisted."""
    for _ in range(20):
        state = load_state(cluster.data_dir)
        journal = read_journal(cluster.data_dir)
        if journal and journal[-1]["generation"] == state.generation:
            break
        time.sleep(0.2)
    fired = {event["event"] for event in journal}
    assert fired >= {
        "assign", "replica_add", "catch_up", "join_isr", "node_fail", "fence", "promote",
        "shrink_isr", "replica_drop",
    }, fired  # fmt: skip
    assert "takeover" not in fired
    config = NetConfig(
        nodes=tuple(state.nodes),
        shards=unit_specs(SHARDS, PARTITIONS),
        initial_nodes=frozenset(),
        replication_factor=2,
    )
    result = check_trace(PetriModel(config), journal, strict=True)
    assert result.ok, result.rejection
    assert state.marking_json is not None
    assert result.final == marking_from_json(state.marking_json)
