"""Local reads in a real Ray cluster: each node's gateway answers from its own copies.

Two simulated Ray nodes in ``replicated`` mode (RF 2: every unit has a copy on
both nodes), real gateway actors and the SDK. Each gateway finds its node's name
from the coordinator's status and its copies in that node's folder; the in-process
tests (tests/test_local_reads.py) hold the rules themselves.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import ray

from cluster.client import PetribillClient
from tests.local_cluster import running, small_runtime

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]


def test_every_nodes_gateway_answers_queries_from_its_own_copies(tmp_path: Path) -> None:
    """Each node's gateway finds its node and answers GetBalance from its node's copy (RF 2
    on two nodes: every node holds every unit), a top-up acknowledged just before
    included."""
    runtime = small_runtime(tmp_path / "data", nodes=2, port=0)
    with running(runtime) as info:
        assert runtime.storage_mode == "replicated"
        addresses = {
            node: ray.get(g.address.remote(), timeout=30) for node, g in runtime.gateways.items()
        }
        assert len(addresses) == 2
        with PetribillClient(info.gateways, timeout_s=60, retries=40) as writer:
            for n in range(4):
                writer.create_account(f"ray-{n}", "prepaid", request_id=f"c-{n}")
            for node, address in addresses.items():
                gateway = runtime.gateways[node]
                with PetribillClient([address], timeout_s=60, retries=40) as reader:
                    deadline = time.monotonic() + 120
                    while local_reads(gateway) == 0:  # until it has its placement
                        assert time.monotonic() < deadline, ray.get(gateway.stats.remote())
                        reader.get_balance("ray-0")
                        time.sleep(0.2)
                    before = local_reads(gateway)
                    for n in range(4):
                        paid = writer.top_up(f"ray-{n}", "1", request_id=f"t-{node}-{n}")
                        seen = reader.get_balance(f"ray-{n}")
                        assert seen.prepaid.micros == paid.prepaid.micros, (node, n)
                    assert local_reads(gateway) > before


def local_reads(gateway: Any) -> int:
    """Queries the gateway answered from its node's copies so far."""
    found: int = ray.get(gateway.stats.remote(), timeout=30).get("local_reads", 0)
    return found
