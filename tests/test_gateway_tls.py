"""TLS and mutual TLS on the gateway over real gRPC on loopback, with the SDK and the CLI
speaking them: a plaintext client, a client trusting another CA and, under mutual TLS, a
client without a certificate are refused in the handshake; the right one is answered."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_gateway_support import running_gateways

from cluster.cli.main import main
from cluster.client import PetribillClient, PetribillError
from cluster.gateway.guard import SecuritySettings
from cluster.security.certs import DevCerts, write_dev_certs
from cluster.security.roles import Role
from cluster.security.tls import TlsConfigError
from cluster.security.tokens import create_token

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("restore_logging")]

Code = grpc.StatusCode


@dataclass
class Tls:
    address: str
    certs: DevCerts
    other: DevCerts  # a second development CA, which the gateway does not trust
    token: str


def _serve(tmp_path: Path, *, mutual: bool) -> Iterator[Tls]:
    certs = write_dev_certs(tmp_path / "certs")
    other = write_dev_certs(tmp_path / "other")
    tokens = tmp_path / "tokens.jsonl"
    token = create_token(tokens, role=Role.CRM).bearer
    settings = SecuritySettings(
        tokens_file=str(tokens),
        tls_cert=str(certs.server_cert),
        tls_key=str(certs.server_key),
        client_ca=str(certs.ca) if mutual else None,
    )
    with running_gateways(security=settings) as (_loop, _backend, [gateway]):
        yield Tls(gateway.address, certs, other, token)


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[Tls]:
    yield from _serve(tmp_path, mutual=False)


@pytest.fixture
def mtls(tmp_path: Path) -> Iterator[Tls]:
    yield from _serve(tmp_path, mutual=True)


def _health(channel: grpc.Channel) -> grpc.StatusCode:
    try:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.RpcError as exc:
        return exc.code()
    return Code.OK


def _refused(client: PetribillClient) -> grpc.StatusCode:
    with client, pytest.raises(PetribillError) as refused:
        client.get_tariffs()
    return refused.value.code


def test_tls_refuses_plaintext_and_a_wrong_ca_and_answers_the_right_client(tls: Tls) -> None:
    """Under TLS even the health check needs the handshake: plaintext and a client that
    trusts another CA never reach a call; a client trusting the gateway's CA is answered."""
    with grpc.insecure_channel(tls.address) as plaintext:
        assert _health(plaintext) is Code.UNAVAILABLE
    assert _refused(PetribillClient(tls.address, token=tls.token, retries=0)) is Code.UNAVAILABLE
    wrong_ca = PetribillClient(tls.address, token=tls.token, ca=tls.other.ca, retries=0)
    assert _refused(wrong_ca) is Code.UNAVAILABLE
    with PetribillClient(tls.address, token=tls.token, ca=tls.certs.ca) as client:
        assert client.get_tariffs().default_plan == "smart"
        assert client.health() == {tls.address: "SERVING"}
    assert _refused(PetribillClient(tls.address, ca=tls.certs.ca)) is Code.UNAUTHENTICATED


def test_mutual_tls_refuses_a_client_without_a_certificate_of_its_ca(mtls: Tls) -> None:
    """With a client CA: no client certificate, or one of another CA, fails the handshake;
    the CA's client certificate (and a token) is answered."""
    without = PetribillClient(mtls.address, token=mtls.token, ca=mtls.certs.ca, retries=0)
    assert _refused(without) is Code.UNAVAILABLE
    foreign = PetribillClient(
        mtls.address, token=mtls.token, ca=mtls.certs.ca,
        cert=mtls.other.client_cert, key=mtls.other.client_key, retries=0,
    )  # fmt: skip
    assert _refused(foreign) is Code.UNAVAILABLE
    with PetribillClient(
        mtls.address, token=mtls.token, ca=mtls.certs.ca,
        cert=mtls.certs.client_cert, key=mtls.certs.client_key,
    ) as client:  # fmt: skip
        assert client.get_tariffs().default_plan == "smart"


def test_the_client_names_a_bad_credential_file() -> None:
    """A missing CA file or a certificate without its key is a ValueError naming it."""
    with pytest.raises(TlsConfigError, match=r"nowhere\.pem"):
        PetribillClient("127.0.0.1:1", ca="nowhere.pem")
    with pytest.raises(TlsConfigError, match="needs its key"):
        PetribillClient("127.0.0.1:1", cert="client.pem")
    with pytest.raises(ValueError, match="one word"):
        PetribillClient("127.0.0.1:1", token="two words")


def test_cli_commands_speak_tls_and_tokens_by_options_or_environment(mtls: Tls) -> None:
    """`petribill --token --ca --cert --key accounts create` works, as do the PETRIBILL_*
    variables; without them the same command is one line with the gRPC code, exit 1."""
    runner = CliRunner()
    flags = [
        "--token", mtls.token, "--ca", str(mtls.certs.ca),
        "--cert", str(mtls.certs.client_cert), "--key", str(mtls.certs.client_key),
    ]  # fmt: skip
    create = ["accounts", "create", "cli-1", "--msisdn", "4915100000077", "--gateway", mtls.address]
    done = runner.invoke(main, [*flags, *create, "--json"])
    assert done.exit_code == 0, done.output
    env = {
        "PETRIBILL_TOKEN": mtls.token + "\n",  # as read from a file
        "PETRIBILL_CA": str(mtls.certs.ca),
        "PETRIBILL_CERT": str(mtls.certs.client_cert),
        "PETRIBILL_KEY": str(mtls.certs.client_key),
    }
    shown = runner.invoke(main, ["accounts", "show", "cli-1", "--gateway", mtls.address], env=env)
    assert shown.exit_code == 0 and "cli-1" in shown.stdout, shown.output
    refused = runner.invoke(
        main, ["accounts", "show", "cli-1", "--gateway", mtls.address, "--timeout", "3"]
    )
    # The SDK retries UNAVAILABLE until its timeout; the message keeps the last refusal.
    assert refused.exit_code == 1 and refused.stderr.startswith("petribill: error: "), (
        refused.stderr
    )
    assert "UNAVAILABLE" in refused.stderr and len(refused.stderr.splitlines()) == 1
    bad = runner.invoke(
        main, ["--ca", "/nowhere/ca.pem", "accounts", "show", "x", "--gateway", mtls.address]
    )
    assert bad.exit_code == 2 and bad.stderr.startswith("petribill: error: /nowhere/ca.pem")
