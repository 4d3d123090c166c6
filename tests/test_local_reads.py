"""Local reads: a gateway answers single-account queries from its node's own copies.

Real parts throughout: a whole cluster in this process on real RocksDB
(``InProcessCluster``: coordinator, hosts, engines; ``local`` with one node and
``replicated`` with three), real gateways on loopback gRPC and the SDK. A gateway
given ``reads_node`` reads that node's copies as RocksDB secondaries
(``actors.reader``); one without it asks the hosts, as before. The answers of the
two must be equal, a query must see a write acknowledged just before it, and a
copy that is not the primary's or an in-sync follower's must never answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from actors.clock import ManualClock
from actors.reader import NotLocal, Placement
from actors.shard import ops
from cluster.backend.backend import Backend
from cluster.backend.reads import GatewayReads
from cluster.client import PetribillClient
from cluster.deploy.inprocess import InProcessCluster
from cluster.gateway.server import Gateway
from tests.test_gateway_support import T_NOV, TARIFFS, LoopThread

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("restore_logging")]

REPLICATED = {"storage_mode": "replicated", "replication_factor": 2, "min_in_sync": 2}
UK = "447700900123"  # an SMS abroad: charged from the balance


def wait(what: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@contextmanager
def gateway(loop: LoopThread, backend: Backend) -> Iterator[PetribillClient]:
    """A gateway over ``backend`` on a free loopback port, and a client of it."""
    server = Gateway(backend, "127.0.0.1", 0)
    loop.run(server.start())
    try:
        with PetribillClient([server.address], timeout_s=20) as client:
            yield client
    finally:
        loop.run(server.stop(0.5))


def reads_of(backend: Backend) -> GatewayReads:
    reads = backend.cluster.reads
    assert reads is not None
    return reads


@contextmanager
def served(
    tmp_path: Path, nodes: tuple[str, ...], settings: dict[str, Any] | None = None
) -> Iterator[tuple[InProcessCluster, LoopThread, dict[str, Backend], dict[str, PetribillClient]]]:
    """A cluster of ``nodes``; per node a gateway reading its copies (``clients[node]``)
    and one gateway asking the hosts (``clients["hosts"]``)."""
    cluster = InProcessCluster(
        tmp_path / "data", TARIFFS, nodes=nodes, settings=settings, clock=ManualClock(T_NOV),
        duties=False,
    )  # fmt: skip
    cluster.start()
    loop = LoopThread()
    backends = {node: cluster.backend(reads_node=node) for node in nodes}
    backends["hosts"] = cluster.backend()
    try:
        assert cluster.coordinator is not None
        if settings is not None:
            wait(cluster.coordinator.fully_replicated)
        with ExitStack() as stack:
            clients = {key: stack.enter_context(gateway(loop, b)) for key, b in backends.items()}
            for node in nodes:
                loop.run(reads_of(backends[node]).refresh())
            yield cluster, loop, backends, clients
    finally:
        for backend in backends.values():
            if backend.cluster.reads is not None:
                backend.cluster.reads.close()
        loop.close()
        cluster.close()


def customers(client: PetribillClient, count: int) -> list[str]:
    """``count`` prepaid accounts with a top-up and an SMS each; their ids."""
    ids = []
    for n in range(count):
        account_id, msisdn = f"r{n}", f"4915100000{n:02d}"
        client.create_account(account_id, "prepaid", msisdns=[msisdn], request_id=f"c-{n}")
        client.top_up(account_id, "20", request_id=f"t-{n}")
        sms = {
            "record_id": f"sms-{n}",
            "service": "sms",
            "served_msisdn": msisdn,
            "record_opening_time_s": T_NOV,
            "called_number": UK,
            "sms_count": 1,
        }
        client.submit_usage([sms])
        ids.append(account_id)
    return ids


def answers(client: PetribillClient, account_id: str) -> tuple[Any, ...]:
    return (
        client.get_balance(account_id),
        client.get_account(account_id),
        client.list_usage(account_id),
        client.list_invoices(account_id),
    )


def test_local_reads_answer_what_the_hosts_answer(tmp_path: Path) -> None:
    """On a one-node cluster, GetBalance, GetAccount, ListUsage and ListInvoices answered
    from the node's own copies equal the hosts' answers, and none went to a host."""
    with served(tmp_path, ("n0",)) as (_cluster, _loop, backends, clients):
        ids = customers(clients["hosts"], 6)
        reads = reads_of(backends["n0"])
        for account_id in ids:
            assert answers(clients["n0"], account_id) == answers(clients["hosts"], account_id)
        assert reads.served >= 4 * len(ids)  # (ListUsage reads the account too, and so on)
        assert reads.passed == {}


def test_a_local_read_sees_a_top_up_acknowledged_just_before(tmp_path: Path) -> None:
    """Read-your-writes: each top-up acknowledged through one gateway is in the balance the
    next GetBalance reads from the node's copy through another."""
    with served(tmp_path, ("n0",)) as (_cluster, _loop, backends, clients):
        (account_id,) = customers(clients["hosts"], 1)
        before = clients["n0"].get_balance(account_id).prepaid.micros
        for n in range(25):
            clients["hosts"].top_up(account_id, "1", request_id=f"ryw-{n}")
            seen = clients["n0"].get_balance(account_id).prepaid.micros
            assert seen == before + (n + 1) * 1_000_000, f"top-up {n} not seen"
        assert reads_of(backends["n0"]).served == 26


def test_followers_in_sync_answer_and_other_nodes_ask_the_host(tmp_path: Path) -> None:
    """Replicated over three nodes: a node that holds a unit's primary or an in-sync
    follower answers from it (seeing a top-up just acknowledged); a node with no copy
    passes the query to the host; every answer equals the hosts'."""
    nodes = ("n1", "n2", "n3")
    with served(tmp_path, nodes, REPLICATED) as (cluster, _loop, backends, clients):
        assert cluster.coordinator is not None
        ids = customers(clients["hosts"], 8)
        replicas = cluster.coordinator.replicas()
        router = cluster.router()
        answered = 0
        for account_id in ids:
            view = replicas[router.shard(account_id)]
            clients["hosts"].top_up(account_id, "2", request_id=f"again-{account_id}")
            want = answers(clients["hosts"], account_id)
            for node in nodes:
                reads = reads_of(backends[node])
                before = reads.served, sum(reads.passed.values())
                assert answers(clients[node], account_id) == want, (account_id, node)
                local, passed = reads.served - before[0], sum(reads.passed.values()) - before[1]
                if node == view["primary"] or node in view["isr"]:
                    assert local >= 4 and passed == 0, (account_id, node)
                    answered += 1
                else:
                    assert local == 0 and passed >= 4, (account_id, node)
        assert answered == 2 * len(ids)  # RF 2: two nodes answer each account
        for node in nodes:
            assert set(reads_of(backends[node]).passed) <= {"no in-sync copy here"}


def test_a_copy_out_of_sync_fenced_or_missing_never_answers(tmp_path: Path) -> None:
    """The reader refuses a follower copy that is not in the in-sync set, a copy whose
    epoch is not the placement's (a takeover), and a placement naming a copy this node
    does not have; with the true placement the same copy answers."""
    nodes = ("n1", "n2", "n3")
    with served(tmp_path, nodes, REPLICATED) as (cluster, _loop, backends, clients):
        assert cluster.coordinator is not None
        (account_id,) = customers(clients["hosts"], 1)
        unit = cluster.router().shard(account_id)
        view = cluster.coordinator.replicas()[unit]
        (follower,) = view["isr"]
        (other,) = set(nodes) - {view["primary"], follower}
        reader = reads_of(backends[follower]).reader
        assert reader is not None
        op = ops.GetAccount(account_id=account_id)
        true = Placement(
            primary=view["primary"], epoch=view["epoch"], in_sync=frozenset(view["isr"])
        )
        cases = {
            "no in-sync copy here": Placement(primary=view["primary"], epoch=view["epoch"]),
            "fenced or replaced": Placement(
                primary=view["primary"], epoch=view["epoch"] + 1, in_sync=frozenset({follower})
            ),
        }
        for reason, placement in cases.items():
            reader.set_placement({unit: placement})
            with pytest.raises(NotLocal) as refused:
                reader.read(unit, op)
            assert refused.value.reason == reason
        elsewhere = reads_of(backends[other]).reader
        assert elsewhere is not None
        claimed = Placement(
            primary=view["primary"], epoch=view["epoch"], in_sync=frozenset({other})
        )
        elsewhere.set_placement({unit: claimed})
        with pytest.raises(NotLocal) as refused:
            elsewhere.read(unit, op)
        assert refused.value.reason == "no copy"
        reader.set_placement({unit: true})
        state = reader.read(unit, op)
        assert state is not None and state.account.account_id == account_id


def test_after_a_takeover_the_promoted_copy_answers_what_was_acknowledged(
    tmp_path: Path,
) -> None:
    """The primary's node is lost: the gateway of the follower's node never answers from a
    copy at the old epoch, and once it has the new placement answers from the promoted
    copy, with every top-up acknowledged before and after the takeover."""
    nodes = ("n1", "n2", "n3")
    with served(tmp_path, nodes, REPLICATED) as (cluster, loop, backends, clients):
        coordinator = cluster.coordinator
        assert coordinator is not None
        (account_id,) = customers(clients["hosts"], 1)
        unit = cluster.router().shard(account_id)
        before = coordinator.replicas()[unit]
        (follower,) = before["isr"]
        reads = reads_of(backends[follower])
        want = clients["hosts"].get_balance(account_id).prepaid.micros
        assert clients[follower].get_balance(account_id).prepaid.micros == want
        cluster.remove_node(before["primary"])
        wait(lambda: coordinator.replicas()[unit]["primary"] == follower)
        # Still the old placement: the promoted copy's EPOCH is the new epoch.
        refused = reads.passed.get("fenced or replaced", 0)
        assert clients[follower].get_balance(account_id).prepaid.micros == want
        assert reads.passed.get("fenced or replaced", 0) == refused + 1
        wait(coordinator.fully_replicated)
        loop.run(reads.refresh())
        local = reads.served
        for n in range(5):
            clients["hosts"].top_up(account_id, "1", request_id=f"after-{n}")
            seen = clients[follower].get_balance(account_id).prepaid.micros
            assert seen == want + (n + 1) * 1_000_000
        assert reads.served == local + 5


def test_a_gateway_without_a_fresh_placement_asks_the_hosts(tmp_path: Path) -> None:
    """A placement older than its bound (the coordinator unreachable) answers nothing
    locally: every query goes to the host, and its answer is the host's."""
    with served(tmp_path, ("n0",)) as (cluster, loop, backends, clients):
        ids = customers(clients["hosts"], 2)
        reader = reads_of(backends["n0"]).reader
        assert reader is not None
        stale = GatewayReads(
            cluster.transport, lambda _node: reader, _node_n0, placement_age_max_s=0.0
        )
        loop.run(stale.refresh())
        for account_id in ids:
            op = ops.GetAccount(account_id=account_id)
            assert loop.run(stale.read(cluster.router().shard(account_id), op)) == (False, None)
        assert stale.served == 0 and stale.passed == {"placement": len(ids)}


async def _node_n0() -> str:
    return "n0"
