"""Two host processes per node in local storage: one node, its two slots over the one
data folder (``DATA/units``), each serving the units of its slot; one slot killed under
top-ups, the units come back on the node and nothing acknowledged is lost."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from petribill.v1 import usage_pb2

from actors.remote import host_pids
from actors.slots import slot_of
from cluster.client import PetribillClient
from tests.hostslots_support import (
    ACCOUNTS,
    HOSTS,
    PARTITIONS,
    SHARDS,
    TopUps,
    account,
    host_call,
    msisdn,
    taken_over,
    total,
    voice,
    wait_until,
)
from tests.local_cluster import running, small_runtime

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_one_node_local_storage_spreads_its_units_and_survives_a_slot_killed(
    tmp_path: Path,
) -> None:
    """Local storage, one node, 2 slots over one data folder: each slot's process serves the
    units of its slot; one slot killed under top-ups, the units come back on the node at
    a higher epoch and every acknowledged top-up is in the balances."""
    runtime = small_runtime(
        tmp_path / "data",
        shards=SHARDS,
        partitions=PARTITIONS,
        port=0,
        tables={"sharding": {"shards": SHARDS, "partitions": PARTITIONS, "hosts_per_node": HOSTS}},
    )
    with running(runtime) as info:
        assert runtime.storage_mode == "local"
        units = {u["unit"]: u["epoch"] for u in runtime.status()["units"]}
        for slot in range(HOSTS):
            served = set(host_call("n0", slot, "units"))
            assert served == {u for u in units if slot_of(u, HOSTS) == slot}, (slot, served)
        client = PetribillClient(info.gateways, timeout_s=60, retries=40)
        for i in range(ACCOUNTS):
            client.create_account(
                account(i), payment_mode="postpaid", plan_id="business",
                msisdns=[msisdn(i)], request_id=f"slot-create-{i}",
            )  # fmt: skip
        results = client.submit_usage([voice(n) for n in range(ACCOUNTS)]).results
        assert [r.status for r in results] == [usage_pb2.RECORD_STATUS_CHARGED] * ACCOUNTS
        start = {i: total(client, account(i)) for i in range(ACCOUNTS)}
        load = TopUps(client).start()
        try:
            time.sleep(1.0)
            os.kill(host_pids("n0", HOSTS)[1], signal.SIGKILL)
            wait_until(
                lambda: taken_over(runtime, units),
                "the node's units not served again after one slot died",
            )
            time.sleep(1.0)
        finally:
            load.stop()
        assert sum(load.acked.values()) > 0
        for i in range(ACCOUNTS):
            assert total(client, account(i)) == start[i] + load.acked[i] * 1_000_000, i
        for slot in range(HOSTS):
            served = set(host_call("n0", slot, "units"))
            assert served == {u for u in units if slot_of(u, HOSTS) == slot}, (slot, served)
