"""Operators' long calls through a real gateway and the SDK, over an in-process cluster on
real RocksDB: each runs as bounded engine steps, and ClusterStatus tells the truth about
gateways (tests/test_liveness_cluster.py does the same under load on a real Ray cluster)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from test_gateway_support import T_NOV, HookedBackend, LoopThread, in_process_cluster

from cluster.client import PetribillClient
from cluster.deploy.inprocess import InProcessCluster
from cluster.gateway.server import Gateway


@contextmanager
def served() -> Iterator[tuple[InProcessCluster, HookedBackend, PetribillClient]]:
    """An in-process cluster (4 shards, 2 partitions), one gateway on loopback, a client."""
    loop = LoopThread()
    with in_process_cluster() as cluster:
        backend = HookedBackend(cluster)
        gateway = Gateway(backend, "127.0.0.1", 0)
        loop.run(gateway.start())
        try:
            with PetribillClient(gateway.address, timeout_s=60) as client:
                yield cluster, backend, client
        finally:
            loop.run(gateway.stop(0.5))
            loop.close()


def create(client: PetribillClient, count: int, *, mode: str = "postpaid") -> list[str]:
    ids = [f"lc-{mode}-{i:04d}" for i in range(count)]
    for i, account_id in enumerate(ids):
        client.create_account(
            account_id, payment_mode=mode, plan_id="business", msisdns=[f"4915170{i:06d}"],
            request_id=f"lc-create-{account_id}",
        )  # fmt: skip
    return ids


def records(count: int, msisdn: str, prefix: str) -> list[dict[str, object]]:
    return [
        {
            "record_id": f"lc:{prefix}{n}",
            "service": "voice",
            "served_msisdn": msisdn,
            "record_opening_time_s": T_NOV + n,
            "called_number": "4930123456",
            "duration_s": 30,
        }
        for n in range(count)
    ]


def test_reconcile_audits_every_shard_in_bounded_steps() -> None:
    """A shard with more rows than one step reads is audited in several AuditStep calls,
    never the one-call Audit, and the reconcile still balances."""
    with served() as (_cluster, backend, client):
        create(client, 2)
        for start in range(0, 12_000, 1000):
            client.submit_usage(records(1000, "4915170000000", f"rc{start}-"))
        report = client.reconcile()
        assert report.balanced, report.detail
        assert report.received == report.rated == 12_000
        assert backend.ops_run["Audit"] == 0
        assert backend.ops_run["AuditStep"] > 4  # 4 shards, the busy one in several steps


def test_a_bill_run_bills_in_steps_of_at_most_a_hundred_accounts() -> None:
    """Every account is billed once, each shard in calls of at most BILL_RUN_STEP_ACCOUNTS."""
    with served() as (_cluster, backend, client):
        ids = create(client, 480)  # ~120 a shard: more than one step's worth
        final_s = T_NOV + 7 * 86_400  # past the grace period: final invoices
        progress = list(client.run_billing("2026-10", at_s=final_s, request_id="lc-bill"))
        assert progress[-1].finished and progress[-1].accounts_done == 480
        assert backend.ops_run["BillRun"] >= 480 // 100 + 4
        assert all(client.list_invoices(a).invoices for a in ids[:5])
        again = list(client.run_billing("2026-10", at_s=final_s, request_id="lc-bill-2"))
        assert again[-1].accounts_done == 480 and again[-1].invoices_issued == 0


def test_cluster_status_lists_every_gateway_with_its_state() -> None:
    """A restarting gateway is listed by its address and state beside the serving ones,
    and one that has never said its address is still listed (with none)."""
    with served() as (cluster, _backend, client):
        cluster.ops.gateway_list = [
            {"node": "n0", "address": "127.0.0.1:7001", "state": "serving"},
            {"node": "n1", "address": "127.0.0.1:7002", "state": "restarting"},
            {"node": "n2", "address": "", "state": "restarting"},
        ]
        deadline = time.monotonic() + 10
        while not (status := client.cluster_status()).gateway_status:
            assert time.monotonic() < deadline, "the coordinator never noted the gateways"
            time.sleep(0.1)
        assert list(status.gateways) == ["127.0.0.1:7001", "127.0.0.1:7002"]
        assert [(g.node_id, g.address, g.state) for g in status.gateway_status] == [
            ("n0", "127.0.0.1:7001", "serving"),
            ("n1", "127.0.0.1:7002", "restarting"),
            ("n2", "", "restarting"),
        ]


def test_the_client_keeps_every_address_it_was_given() -> None:
    """Learning the gateways from ClusterStatus adds addresses and never drops one, even
    when the status lists none."""
    with served() as (cluster, _backend, client):
        given = [*client.addresses, "127.0.0.1:1"]
        client.add_address("127.0.0.1:1")
        assert client.learn_gateways() == given  # the status lists no gateway yet
        cluster.ops.gateway_list = [{"node": "n1", "address": "127.0.0.1:7002", "state": "serving"}]
        deadline = time.monotonic() + 10
        while "127.0.0.1:7002" not in client.learn_gateways():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert client.addresses == [*given, "127.0.0.1:7002"]
        assert client.cluster_status().nodes  # and calls still go to the first address


def test_a_backup_and_a_page_through_answer_beside_ingestion() -> None:
    """A backup of every unit and a page-through of a long history answer while usage is
    submitted (the in-process transport runs them on the same engines)."""
    with served() as (_cluster, _backend, client):
        create(client, 1)
        for start in range(0, 3000, 1000):
            client.submit_usage(records(1000, "4915170000000", f"bp{start}-"))
        answer = client.backup(request_id="lc-backup")
        assert answer.done and "checkpoints of 6 units" in answer.detail
        lines = [line.record_id for line in client.iter_usage("lc-postpaid-0000", page=700)]
        assert len(lines) == len(set(lines)) == 3000
