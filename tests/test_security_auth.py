"""Token authentication and roles over real gRPC on loopback, and the checks on their own."""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import grpc
import pytest
from click.testing import CliRunner
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from security_support import (
    PROBE_SERVICE,
    Served,
    call,
    health_status,
    method,
    probe_server,
    status_of,
)

from cluster.cli import security as security_cli
from cluster.security.auth import (
    PermissionDenied,
    Principal,
    TokenInterceptor,
    Unauthenticated,
    authenticate,
    bearer_metadata,
    check_account,
    check_accounts,
    check_role,
)
from cluster.security.roles import Role
from cluster.security.tokens import TokenStore, create_token

pytestmark = pytest.mark.timeout(60)

Code = grpc.StatusCode


def _admin_roles(name: str) -> Collection[Role] | None:
    # Admin is operator-only at the interceptor; every other method takes any valid token.
    return {Role.OPERATOR} if name == method("Admin") else None


@dataclass
class Setup:
    served: Served
    channel: grpc.Channel
    tokens: Path
    token: dict[str, str]  # role or "selfcare" -> bearer token


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    tokens = tmp_path / "tokens.jsonl"
    token = {
        role.value: create_token(tokens, role=role).bearer
        for role in Role
        if role is not Role.SELFCARE
    }
    token["selfcare"] = create_token(tokens, role=Role.SELFCARE, account_id="a-1").bearer
    store = TokenStore(tokens, check_interval_ms=50)
    interceptor = TokenInterceptor(store, method_roles=_admin_roles)
    with (
        probe_server(interceptors=[interceptor]) as served,
        grpc.insecure_channel(served.address) as channel,
    ):
        yield Setup(served, channel, tokens, token)


def _auth(token: str) -> tuple[tuple[str, str], ...]:
    return bearer_metadata(token)


def test_health_check_needs_no_token(setup: Setup) -> None:
    """The standard health check answers without any authorization metadata."""
    assert health_status(setup.channel) == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    ("metadata", "says"),
    [
        (None, "missing authorization"),
        ((("authorization", "Basic dXNlcjpwYXNz"),), "must be 'Bearer <token>'"),
        ((("authorization", "Bearer"),), "must be 'Bearer <token>'"),
        ((("authorization", "Bearer not-a-token"),), "not a petribill token"),
        ((("authorization", "Bearer pb1_0123456789ab_" + "0" * 64),), "unknown token"),
    ],
    ids=["missing", "basic-scheme", "empty-bearer", "malformed", "unknown"],
)
def test_calls_without_a_valid_token_are_unauthenticated_before_the_handler(
    setup: Setup, metadata: tuple[tuple[str, str], ...] | None, says: str
) -> None:
    """A missing, malformed or unknown token is UNAUTHENTICATED and the handler never runs."""
    code, details = status_of(call, setup.channel, "Echo", metadata=metadata)
    assert code == Code.UNAUTHENTICATED
    assert says in details
    assert setup.served.probe.calls == []


def test_a_wrong_secret_for_a_known_token_id_is_unknown(setup: Setup) -> None:
    """Knowing a token's public id is not enough: the secret must match its hash."""
    token_id = setup.token["crm"].split("_")[1]
    forged = f"pb1_{token_id}_{'f' * 64}"
    code, details = status_of(call, setup.channel, "Echo", metadata=_auth(forged))
    assert (code, details) == (Code.UNAUTHENTICATED, "unknown token")


def test_two_authorization_entries_are_refused(setup: Setup) -> None:
    """Two authorization entries are ambiguous and refused, even if one is valid."""
    metadata = (*_auth(setup.token["crm"]), ("authorization", "Bearer x"))
    code, details = status_of(call, setup.channel, "Echo", metadata=metadata)
    assert code == Code.UNAUTHENTICATED
    assert "more than one" in details


def test_a_valid_token_reaches_the_handler_with_its_principal(setup: Setup) -> None:
    """A valid token's call runs, and its handler sees the token's id and role, no secret."""
    token = setup.token["billing"]
    assert call(setup.channel, "Echo", b"ping", metadata=_auth(token)) == b"ping"
    (principal,) = setup.served.probe.principals
    assert principal == Principal(token_id=token.split("_")[1], role=Role.BILLING)


def test_a_streaming_method_is_refused_in_its_own_shape(setup: Setup) -> None:
    """A server-streaming call without a token ends UNAUTHENTICATED, and with one it streams."""
    stream = setup.channel.unary_stream(method("Watch"))
    code, _ = status_of(lambda: list(stream(b"x", timeout=5)))
    assert code == Code.UNAUTHENTICATED
    assert list(stream(b"x", metadata=_auth(setup.token["crm"]), timeout=5)) == [b"x", b"x"]


def _list_services(
    channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] | None
) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    answers = stub.ServerReflectionInfo(iter([request]), metadata=metadata, timeout=5)
    return [s.name for a in answers for s in a.list_services_response.service]


def test_reflection_needs_a_valid_token_of_any_role(setup: Setup) -> None:
    """Reflection is refused without a token and answers a token of any role."""
    code, _ = status_of(_list_services, setup.channel, None)
    assert code == Code.UNAUTHENTICATED
    assert PROBE_SERVICE in _list_services(setup.channel, _auth(setup.token["selfcare"]))


@pytest.mark.parametrize("role", [r.value for r in Role])
def test_an_operator_only_method_admits_the_operator_role_only(setup: Setup, role: str) -> None:
    """The interceptor's role table: Admin is PERMISSION_DENIED to every role but operator."""
    code, details = status_of(call, setup.channel, "Admin", metadata=_auth(setup.token[role]))
    if role == "operator":
        assert code == Code.OK
    else:
        assert code == Code.PERMISSION_DENIED
        assert f"role {role} is not allowed (allowed: operator)" in details


@pytest.mark.parametrize(
    ("role", "account", "expected"),
    [
        ("selfcare", "a-1", Code.OK),
        ("selfcare", "a-2", Code.PERMISSION_DENIED),
        ("selfcare", "", Code.PERMISSION_DENIED),
        ("crm", "a-2", Code.OK),
        ("operator", "a-2", Code.OK),
        ("billing", "a-1", Code.PERMISSION_DENIED),
        ("mediation", "a-1", Code.PERMISSION_DENIED),
    ],
)
def test_a_handler_checks_role_and_selfcare_account(
    setup: Setup, role: str, account: str, expected: grpc.StatusCode
) -> None:
    """Checked inside a handler as the gateway will: a selfcare token reads only its account."""
    code, _ = status_of(
        call, setup.channel, "ReadAccount", account.encode(), metadata=_auth(setup.token[role])
    )
    assert code == expected


def test_a_token_revoked_with_the_cli_is_refused_within_a_second_without_restart(
    setup: Setup,
) -> None:
    """``petribill token revoke`` on the live tokens file: the running server refuses the token
    within a second, and other tokens keep working."""
    token = setup.token["crm"]
    assert call(setup.channel, "Echo", metadata=_auth(token)) == b"hi"
    group = click.Group("petribill")
    security_cli.register(group)
    token_id = token.split("_")[1]
    result = CliRunner().invoke(group, ["token", "revoke", "--tokens", str(setup.tokens), token_id])
    assert result.exit_code == 0, result.output
    deadline = time.monotonic() + 1.0
    code = Code.OK
    while code == Code.OK and time.monotonic() < deadline:
        code, details = status_of(call, setup.channel, "Echo", metadata=_auth(token))
    assert code == Code.UNAUTHENTICATED
    assert details == f"token {token_id} was revoked"
    assert call(setup.channel, "Echo", metadata=_auth(setup.token["billing"])) == b"hi"


# --- the checks on their own ------------------------------------------------------------


def test_authenticate_reads_grpc_metadata_pairs(tmp_path: Path) -> None:
    """authenticate takes grpc's metadata pairs, any header case, and returns the principal."""
    tokens = tmp_path / "t.jsonl"
    issued = create_token(tokens, role=Role.SELFCARE, account_id="a-9")
    store = TokenStore(tokens)
    principal = authenticate(
        [("user-agent", "x"), ("Authorization", f"bearer {issued.bearer}")], store
    )
    assert principal == Principal(
        token_id=issued.record.token_id, role=Role.SELFCARE, account_id="a-9"
    )
    with pytest.raises(Unauthenticated, match="missing"):
        authenticate([("authorization-x", issued.bearer)], store)
    with pytest.raises(Unauthenticated, match="Bearer"):
        authenticate([("authorization", issued.bearer.encode())], store)


def test_check_role_and_check_account_raise_permission_denied() -> None:
    """The role check names the RPC and the allowed roles; the account check binds selfcare."""
    billing = Principal(token_id="0" * 12, role=Role.BILLING)
    check_role(billing, {Role.BILLING, Role.OPERATOR}, "Pay")
    with pytest.raises(PermissionDenied) as denied:
        check_role(billing, {Role.CRM}, "TopUp")
    assert denied.value.code == Code.PERMISSION_DENIED
    assert denied.value.message == "TopUp: role billing is not allowed (allowed: crm)"
    with pytest.raises(PermissionDenied):
        check_role(billing, (), "Nothing")
    selfcare = Principal(token_id="1" * 12, role=Role.SELFCARE, account_id="a-1")
    check_account(selfcare, "a-1")
    check_account(billing, "a-2")
    with pytest.raises(PermissionDenied, match="bound to"):
        check_account(selfcare, "a-2")


def test_check_accounts_binds_selfcare_to_exactly_its_account() -> None:
    """For a request naming several accounts, selfcare may name its own only, and not none
    (Subscribe to no account ids means every account)."""
    selfcare = Principal(token_id="1" * 12, role=Role.SELFCARE, account_id="a-1")
    check_accounts(selfcare, ["a-1"])
    check_accounts(selfcare, ["a-1", "a-1"])
    for names in ([], ["a-1", "a-2"], ["a-2"]):
        with pytest.raises(PermissionDenied):
            check_accounts(selfcare, names)
    check_accounts(Principal(token_id="2" * 12, role=Role.CRM), [])
