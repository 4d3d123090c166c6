"""A client in another language — JavaScript, tests/clients/node/client.js, written from
the .proto files alone with @grpc/grpc-js — submits usage and reads balances, usage
and invoices from a real local cluster; the Python SDK reads the same.

Needs ``node`` and ``npm`` (and the npm registry, for the two packages); skipped
where they are missing, saying so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.client import PetribillClient
from tests.local_cluster import running, small_runtime

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "tests" / "clients" / "node"

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.timeout(400),
    pytest.mark.skipif(
        shutil.which("node") is None or shutil.which("npm") is None, reason="no node and npm"
    ),
]


@pytest.fixture(scope="module")
def node_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client and its two npm packages, installed in a temp folder."""
    folder = tmp_path_factory.mktemp("node-client")
    for name in ("package.json", "client.js"):
        shutil.copy(CLIENT / name, folder / name)
    done = subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--silent"],
        cwd=folder, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"npm install failed (no registry?): {done.stderr[-500:]}")
    return folder


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running(small_runtime(tmp_path_factory.mktemp("node") / "data", port=0)) as info:
        yield info.gateways[0]


def test_a_javascript_client_submits_usage_and_reads_balances_and_invoices(
    node_client: Path, gateway: str
) -> None:
    done = subprocess.run(
        ["node", "client.js", gateway, str(ROOT / "proto"), "js-1", "4915133300001"],
        cwd=node_client, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    good, bad = seen["results"]
    assert good["status"] == "RECORD_STATUS_CHARGED"  # a bundle may cover it: amount >= 0
    assert bad["status"] == "RECORD_STATUS_REJECTED" and bad["reason"]
    assert seen["history"] == ["node:js-1-1"]
    assert int(seen["unbilled_micros"]) == int(good["amount_micros"])
    assert seen["not_found"] == "NOT_FOUND"
    assert seen["bill_run_finished"] is True
    [invoice] = seen["invoices"]
    assert invoice["cycle_id"] == "2026-11" and int(invoice["total_micros"]) > 0
    with PetribillClient(gateway) as client:  # the Python SDK reads the same
        assert client.get_balance("js-1").unbilled.micros == 0  # invoiced now
        [same] = client.list_invoices("js-1").invoices
        assert same.total.micros == int(invoice["total_micros"])
