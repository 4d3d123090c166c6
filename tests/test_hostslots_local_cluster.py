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
from tests import hostslots_support as support
from tests.local_cluster import running

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def assert_each_slot_serves_its_units(units: set[str]) -> None:
    for slot in range(support.HOSTS):
        served = set(support.host_call("n0", slot, "units"))
        assert served == {u for u in units if slot_of(u, support.HOSTS) == slot}, (slot, served)


def test_one_node_local_storage_spreads_its_units_and_survives_a_slot_killed(
    tmp_path: Path,
) -> None:
    """Local storage, one node, 2 slots over one data folder: each slot's process serves the
    units of its slot; one slot killed under top-ups, the units come back on the node at
    a higher epoch and every acknowledged top-up is in the balances."""
    accounts = range(support.ACCOUNTS)
    runtime = support.slots_runtime(tmp_path / "data", nodes=1)
    with running(runtime) as info:
        assert runtime.storage_mode == "local"
        units = {u["unit"]: u["epoch"] for u in runtime.status()["units"]}
        assert_each_slot_serves_its_units(set(units))
        client = support.client_with_accounts(info.gateways)
        results = client.submit_usage([support.voice(n) for n in accounts]).results
        assert [r.status for r in results] == [usage_pb2.RECORD_STATUS_CHARGED] * len(accounts)
        start = {i: support.total(client, support.account(i)) for i in accounts}
        load = support.TopUps(client).start()
        try:
            time.sleep(1.0)
            os.kill(host_pids("n0", support.HOSTS)[1], signal.SIGKILL)
            support.wait_until(
                lambda: support.taken_over(runtime, units),
                "the node's units not served again after one slot died",
            )
            time.sleep(1.0)
        finally:
            load.stop()
        assert sum(load.acked.values()) > 0
        for i in accounts:
            expected = start[i] + load.acked[i] * 1_000_000
            assert support.total(client, support.account(i)) == expected, i
        assert_each_slot_serves_its_units(set(units))
