"""Replicated hosts in one process, on real RocksDB, for the data-plane tests.

Three ``UnitHost`` objects in ``storage.mode = "replicated"``, each in its own node
folder under one data folder, reaching each other for replication through
``actors.local.LocalPeers`` (plain calls on threads) and for routing through the
real router. The tests play the coordinator: they place primaries, tell them their
followers, and wait for catch-up, as ``cluster/control/replicas.py`` does. At the
end, helpers for the tests of a whole ``InProcessCluster`` in replicated mode.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rocksdict import AccessType, Options, Rdict

from actors.engines import engine_factory
from actors.host import UnitHost
from actors.local import LocalPeers, LocalTransport
from actors.op import Op
from actors.replication import ReplicationSettings
from actors.router import UnitRouter
from actors.shard import ops
from actors.store.codec import EPOCH_KEY
from billing.accounts import Account, PaymentMode
from cluster.deploy.inprocess import InProcessCluster

ROOT = Path(__file__).resolve().parent.parent
SHARDS, PARTITIONS = 2, 1
AT = 1_793_700_000


class Routes:
    """The coordinator as routers see it: the map of who serves what."""

    def __init__(self) -> None:
        self.map: dict[str, tuple[str, int]] = {}

    def routes(self) -> dict[str, tuple[str, int]]:
        return dict(self.map)


class ReplicatedHosts:
    """Hosts ``n1..nN`` over ``data_dir``; a missing entry in ``reachable`` is a dead node
    as the others see it (its object lives on, like a paused process)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        nodes: tuple[str, ...] = ("n1", "n2", "n3"),
        min_in_sync: int = 2,
        ack_timeout_s: float = 1.0,
    ) -> None:
        self.data_dir = data_dir
        settings = {
            "shards": SHARDS,
            "partitions": PARTITIONS,
            "tariffs_dir": str(ROOT / "conf" / "tariffs"),
        }
        self.factory = engine_factory(settings)
        self.routes = Routes()
        self.hosts: dict[str, UnitHost] = {}
        self.reachable: dict[str, UnitHost] = {}
        self.peers = LocalPeers(self.reachable)
        self.transport = LocalTransport(self.reachable, coordinator=self.routes)
        self.replication = ReplicationSettings(
            min_in_sync=min_in_sync, ack_timeout_s=ack_timeout_s, retry_s=0.05
        )
        for node in nodes:
            self.add(node)

    def add(self, node: str) -> UnitHost:
        host = UnitHost(
            node=node,
            data_dir=str(self.data_dir),
            shards=SHARDS,
            factory=self.factory,
            router=UnitRouter(self.transport, shards=SHARDS, partitions=PARTITIONS),
            mode="replicated",
            peers=self.peers,
            replication=self.replication,
        )
        self.hosts[node] = self.reachable[node] = host
        return host

    def place(self, unit: str, node: str, epoch: int) -> None:
        self.hosts[node].open_unit(unit, epoch)
        self.routes.map[unit] = (node, epoch)

    def on(self, unit: str, op: Op[Any]) -> Any:
        node, epoch = self.routes.map[unit]
        return self.hosts[node].run(unit, epoch, op)

    def report(self, unit: str) -> dict[str, Any]:
        node, _ = self.routes.map[unit]
        return self.hosts[node].replica_report()[unit]

    def wait_caught_up(self, unit: str, follower: str, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.report(unit)["followers"].get(follower, {})
            if state.get("caught_up"):
                return
            time.sleep(0.01)
        raise TimeoutError(f"{follower} did not catch up on {unit}: {self.report(unit)}")

    def replicate(self, unit: str, followers: list[str]) -> None:
        """What the coordinator does: add the followers, wait until each caught up, pin
        it, then say they are in sync (``replica_add``, ``catch_up``, ``join_isr``)."""
        node, epoch = self.routes.map[unit]
        primary = self.hosts[node]
        current = {n: s["isr"] for n, s in self.report(unit)["followers"].items()}
        wanted = {n: ("in_sync" if current.get(n) else "catching_up") for n in followers}
        primary.set_replicas(unit, epoch, wanted)
        for follower in followers:
            self.wait_caught_up(unit, follower)
            assert primary.replica_pin(unit, epoch, follower)
        primary.set_replicas(unit, epoch, dict.fromkeys(followers, "in_sync"))

    def close(self) -> None:
        for host in self.hosts.values():
            host.close_all()
        self.peers.close()


def rows(path: Path) -> dict[bytes, bytes]:
    """Every row of a closed unit database but its own epoch key (a copy keeps its own)."""
    db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
    try:
        return {k: v for k, v in db.items() if k != EPOCH_KEY}
    finally:
        db.close()


# -- an InProcessCluster in replicated mode (the coordinator's tests) -------------------


def wait(what: Callable[[], bool], timeout_s: float = 60.0, why: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        if time.monotonic() > deadline:
            raise TimeoutError(why or "condition not met")
        time.sleep(0.02)


def replicated_cluster(data_dir: Path) -> Iterator[InProcessCluster]:
    """An ``InProcessCluster`` of nodes n1..n3 in replicated mode (RF 2, ``min_in_sync``
    2), 2 shards and a partition, started and fully replicated; closed afterwards."""
    inproc = InProcessCluster(
        data_dir,
        ROOT / "conf" / "tariffs",
        shards=SHARDS,
        partitions=PARTITIONS,
        nodes=("n1", "n2", "n3"),
        settings={"storage_mode": "replicated", "replication_factor": 2, "min_in_sync": 2},
    )
    inproc.start()
    assert inproc.coordinator is not None
    wait(inproc.coordinator.fully_replicated, why="not fully replicated")
    yield inproc
    inproc.close()


def run_on(cluster: InProcessCluster, unit: str, op: Any) -> Any:
    return cluster.router().run_blocking(unit, op, timeout_s=30)


def top_ups(cluster: InProcessCluster, account_id: str, count: int, start: int = 0) -> None:
    router = cluster.router()
    unit = router.shard(account_id)
    for n in range(start, start + count):
        op = ops.TopUp(
            request_id=f"t-{account_id}-{n}", account_id=account_id, amount=1_000_000,
            currency="EUR", at_s=AT,
        )  # fmt: skip
        router.run_blocking(unit, op, timeout_s=30)


def create_account(cluster: InProcessCluster, account_id: str) -> None:
    router = cluster.router()
    account = Account(account_id=account_id, currency="EUR", payment_mode=PaymentMode.PREPAID)
    router.run_blocking(
        router.shard(account_id),
        ops.CreateAccount(request_id=f"c-{account_id}", account=account),
        timeout_s=30,
    )


def equal_replicas(cluster: InProcessCluster, replicas: dict[str, dict[str, Any]]) -> int:
    """Compare every unit's in-sync copies with its primary, key for key; the count."""
    compared = 0
    for unit, view in replicas.items():
        primary = cluster.data_dir / "nodes" / view["primary"] / "units" / unit
        want = rows(primary)
        for node in view["isr"]:
            assert rows(cluster.data_dir / "nodes" / node / "units" / unit) == want, (unit, node)
            compared += 1
    return compared
