"""``reconcile`` over a unit whose data is gone: an account shard emptied under its
partitions (as a unit reopened empty would be) is reported, never "balanced".

Real parts: an in-process cluster on RocksDB in a temp folder, a gateway on loopback,
the SDK. The shard is emptied through its own store (every row but the store's
metadata deleted in one synced commit), which is what a takeover that opened a new,
empty database would leave: the partitions still route usage to its accounts.
"""

from __future__ import annotations

from test_gateway_support import HookedBackend, LoopThread, in_process_cluster

from actors.routing import shard_of
from actors.store.codec import META_PREFIX
from actors.store.storage import Batch
from cluster.client import PetribillClient
from cluster.deploy.inprocess import InProcessCluster
from cluster.gateway.server import Gateway

SHARDS = 4


def empty_unit(cluster: InProcessCluster, unit_id: str) -> int:
    """Delete every data row of ``unit_id`` on the node serving it; the rows deleted."""
    for host in cluster.hosts.values():
        unit = host._units.get(unit_id)
        if unit is None:
            continue
        store = unit.engine.store
        batch = Batch()
        keys = [k for k, _ in store.scan(b"") if not k.startswith(META_PREFIX)]
        for key in keys:
            batch.delete(key)
        with unit.lock:
            store.commit(batch)
        return len(keys)
    raise AssertionError(f"{unit_id} is served nowhere")


def test_reconcile_reports_an_emptied_account_shard() -> None:
    """Accounts on every shard, then one shard's rows deleted: reconcile is not balanced
    and names the shard and its missing accounts; before, it was balanced."""
    loop = LoopThread()
    with in_process_cluster() as cluster:
        gateway = Gateway(HookedBackend(cluster), "127.0.0.1", 0, None)
        loop.run(gateway.start())
        try:
            with PetribillClient([gateway.address]) as client:
                accounts = [f"lost-{i}" for i in range(12)]
                for i, account_id in enumerate(accounts):
                    client.create_account(account_id, msisdns=[f"4915170000{i:03d}"])
                    client.top_up(account_id, "10.00")
                before = client.reconcile()
                assert before.balanced, before.detail
                victim = shard_of(accounts[0], SHARDS)
                on_victim = [a for a in accounts if shard_of(a, SHARDS) == victim]
                assert empty_unit(cluster, victim) > 0
                after = client.reconcile()
        finally:
            loop.run(gateway.stop(0.5))
            loop.close()
    assert not after.balanced, after.detail
    assert f"{victim}: {len(on_victim)} accounts in the directory" in after.detail, after.detail
