"""A client in another language — JavaScript, tests/clients/node/client.js, written from
the .proto files alone with @grpc/grpc-js — submits usage and reads balances, usage
and invoices from a real local cluster secured as docs/security.md says (mutual TLS and
a token per role); the Python SDK reads the same.

Needs ``node`` and ``npm`` (and the npm registry, for the two packages); skipped
where they are missing, saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from actors.clock import set_clock_offset
from cluster.client import PetribillClient
from cluster.security.certs import DevCerts, write_dev_certs
from cluster.security.roles import Role
from cluster.security.tokens import create_token
from tests.local_cluster import running, small_runtime

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "tests" / "clients" / "node"
#: client.js dates its November bill run 2026-12-20 00:00 UTC, past the grace period.
DEC_20 = 1797724800

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


@dataclass
class Secured:
    gateway: str
    certs: DevCerts
    tokens: dict[Role, str]

    def tls(self) -> dict[str, str]:
        return {
            "PETRIBILL_CA": str(self.certs.ca),
            "PETRIBILL_CERT": str(self.certs.client_cert),
            "PETRIBILL_KEY": str(self.certs.client_key),
        }


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """A cluster with tokens, TLS and mutual TLS; a token for each role the client needs."""
    folder = tmp_path_factory.mktemp("node")
    certs = write_dev_certs(folder / "certs")
    tokens_file = folder / "tokens.jsonl"
    roles = (Role.CRM, Role.MEDIATION, Role.BILLING)
    tokens = {role: create_token(tokens_file, role=role).bearer for role in roles}
    security = {
        "tokens_file": str(tokens_file),
        "tls_cert": str(certs.server_cert),
        "tls_key": str(certs.server_key),
        "client_ca": str(certs.ca),
    }
    # The cluster's clock stands a minute after the client's bill run date, whatever day
    # the test runs (a bill run may not be dated beyond the cluster's clock).
    tables = {"clock": {"adjustable": True}, "bill_runs": {"scheduled": False}}
    set_clock_offset(folder / "data", DEC_20 + 60 - time.time())
    runtime = small_runtime(folder / "data", port=0, security=security, tables=tables)
    with running(runtime) as info:
        yield Secured(info.gateways[0], certs, tokens)


def _node(node_client: Path, secured: Secured, env: dict[str, str], *args: str) -> Any:
    return subprocess.run(
        ["node", "client.js", secured.gateway, str(ROOT / "proto"), *args],
        cwd=node_client, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, **env},
    )  # fmt: skip


def test_a_javascript_client_submits_usage_and_reads_balances_and_invoices(
    node_client: Path, secured: Secured
) -> None:
    """Over mutual TLS with the token of each role, the JavaScript client does a month's
    work; without its client certificate it cannot connect, without tokens it is refused."""
    tokens = {f"PETRIBILL_TOKEN_{role.name}": token for role, token in secured.tokens.items()}
    done = _node(node_client, secured, {**secured.tls(), **tokens}, "js-1", "4915133300001")
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
    with PetribillClient(  # the Python SDK reads the same
        secured.gateway, token=secured.tokens[Role.CRM], ca=secured.certs.ca,
        cert=secured.certs.client_cert, key=secured.certs.client_key,
    ) as client:  # fmt: skip
        assert client.get_balance("js-1").unbilled.micros == 0  # invoiced now
        [same] = client.list_invoices("js-1").invoices
        assert same.total.micros == int(invoice["total_micros"])
    only_ca = {"PETRIBILL_CA": str(secured.certs.ca), **tokens}
    no_certificate = _node(node_client, secured, only_ca, "js-2", "4915133300002")
    assert no_certificate.returncode == 1 and "UNAVAILABLE" in no_certificate.stderr
    no_token = _node(node_client, secured, secured.tls(), "js-3", "4915133300003")
    assert no_token.returncode == 1 and "UNAUTHENTICATED" in no_token.stderr
