"""A cluster started by `petribill up` with [security] in its --conf folder (a tokens file,
TLS and a client CA made by `petribill certs` and `petribill token create`), as an operator
would: an unauthenticated call is UNAUTHENTICATED, a selfcare token calling Pay is
PERMISSION_DENIED, an operator token reads the status, a plaintext client cannot connect."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cluster.client import PetribillClient, PetribillError

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(400)]

ROOT = Path(__file__).resolve().parent.parent


def petribill(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the `petribill` command line in a child process, as an operator does."""
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli.main", *map(str, args)],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, **(env or {})}, cwd=ROOT,
    )  # fmt: skip


@dataclass
class Up:
    conf: Path
    data: Path
    gateway: str
    operator: str
    selfcare: str

    def tls(self) -> dict[str, str]:
        certs = self.conf / "certs"
        return {
            "ca": str(certs / "ca.pem"),
            "cert": str(certs / "client.pem"),
            "key": str(certs / "client.key"),
        }


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    folder = tmp_path_factory.mktemp("secured")
    conf, data = folder / "conf", folder / "data"
    conf.mkdir()
    shutil.copytree(ROOT / "conf" / "tariffs", conf / "tariffs")
    made = petribill("certs", conf / "certs")
    assert made.returncode == 0, made.stderr
    tokens = conf / "tokens.jsonl"
    issued = {}
    for role, extra in (("operator", ()), ("selfcare", ("--account", "a-1001"))):
        created = petribill("token", "create", "--tokens", tokens, "--role", role, *extra)
        assert created.returncode == 0, created.stderr
        issued[role] = created.stdout.splitlines()[-1]
    (conf / "cluster.toml").write_text(
        "[sharding]\nshards = 4\npartitions = 2\n[gateway]\nport = 0\n"
        '[security]\ntokens_file = "tokens.jsonl"\ntls_cert = "certs/server.pem"\n'
        'tls_key = "certs/server.key"\nclient_ca = "certs/ca.pem"\n'
    )
    started = petribill("up", "--detach", "--conf", conf, "--data", data)
    try:
        assert started.returncode == 0, started.stderr
        [gateway] = json.loads((data / "runtime.json").read_text())["gateways"]
        yield Up(conf, data, gateway, issued["operator"], issued["selfcare"])
    finally:
        stopped = petribill("down", "--conf", conf, "--data", data)
        assert stopped.returncode == 0 or "no cluster recorded" in stopped.stderr, stopped.stderr


def test_an_unauthenticated_call_is_unauthenticated(up: Up) -> None:
    """Over mutual TLS but without a token: UNAUTHENTICATED."""
    with (
        PetribillClient(up.gateway, retries=0, **up.tls()) as client,
        pytest.raises(PetribillError) as refused,
    ):
        client.cluster_status()
    assert refused.value.code is grpc.StatusCode.UNAUTHENTICATED


def test_a_selfcare_token_calling_pay_is_permission_denied(up: Up) -> None:
    """`petribill pay` with a selfcare token (PETRIBILL_* variables): PERMISSION_DENIED."""
    env = {
        "PETRIBILL_TOKEN": up.selfcare,
        "PETRIBILL_CA": up.tls()["ca"],
        "PETRIBILL_CERT": up.tls()["cert"],
        "PETRIBILL_KEY": up.tls()["key"],
    }
    paid = petribill("pay", "a-1001", "1.00", "--data", up.data, env=env)
    assert paid.returncode == 1
    assert paid.stderr.startswith("petribill: error: PERMISSION_DENIED: "), paid.stderr


def test_an_operator_token_reads_the_status(up: Up) -> None:
    """The operator's token over mutual TLS: ClusterStatus answers, every unit owned."""
    with PetribillClient(up.gateway, token=up.operator, **up.tls()) as client:
        status = client.cluster_status()
    assert {s.state for s in status.shards} == {"owned"} and len(status.shards) == 6


def test_a_plaintext_client_cannot_connect(up: Up) -> None:
    """Not even the health check answers a client that does not speak TLS."""
    with grpc.insecure_channel(up.gateway) as channel, pytest.raises(grpc.RpcError) as refused:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
