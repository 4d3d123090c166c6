"""The gateway's tokens and roles over real gRPC on loopback, with the real backend over an
in-process cluster: every RPC needs a token, each role is allowed exactly the RPCs of its
rows, a selfcare token reads only its account, revocation is followed, calls are audited."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from test_gateway_support import HookedBackend, running_gateways

from cluster.api.errors import BackendError
from cluster.backend.rpcs import PACKAGE, RPCS, Rpc, rpc_named
from cluster.client import PetribillClient, PetribillError
from cluster.client.calls import method_name
from cluster.gateway.guard import SecuritySettings
from cluster.gateway.server import Gateway
from cluster.security.audit import read_events
from cluster.security.auth import bearer_metadata
from cluster.security.roles import ACCOUNT_BOUND_ROLES, Role
from cluster.security.tokens import create_token, revoke_token

pytestmark = pytest.mark.timeout(60)

Code = grpc.StatusCode
SELF = "self-1"  # the account the selfcare token is bound to
#: RPCs a selfcare token may call without naming an account: they read no account's data.
READS_NO_ACCOUNT = frozenset({"TariffService.GetTariffs"})
_REACHED = "reached the backend"


@dataclass
class Secured:
    """A gateway with a tokens file (one token per role) and an audit folder."""

    gateway: Gateway
    backend: HookedBackend
    tokens_file: Path
    audit_dir: Path
    tokens: dict[Role, str]
    token_ids: dict[Role, str]

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.gateway.address)

    def client(self, role: Role | None, **options: Any) -> PetribillClient:
        token = None if role is None else self.tokens[role]
        return PetribillClient(self.gateway.address, token=token, retries=0, **options)


def _issue(tokens_file: Path) -> tuple[dict[Role, str], dict[Role, str]]:
    tokens, ids = {}, {}
    for role in Role:
        account = SELF if role in ACCOUNT_BOUND_ROLES else None
        issued = create_token(tokens_file, role=role, account_id=account, name=f"test {role}")
        tokens[role], ids[role] = issued.bearer, issued.record.token_id
    return tokens, ids


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Secured]:
    tokens_file, audit_dir = tmp_path / "tokens.jsonl", tmp_path / "audit"
    tokens, ids = _issue(tokens_file)
    settings = SecuritySettings(tokens_file=str(tokens_file), audit_dir=str(audit_dir))
    with running_gateways(security=settings) as (_loop, backend, [gateway]):
        yield Secured(gateway, backend, tokens_file, audit_dir, tokens, ids)


# --- calling any RPC by its row -------------------------------------------------------------


def _request(rpc: Rpc) -> Message:
    """A request naming the selfcare token's account in the row's account field, if any."""
    request = rpc.request_type()
    if rpc.account is not None:
        if isinstance(getattr(request, rpc.account), str):
            setattr(request, rpc.account, SELF)
        else:  # repeated: Subscribe's account_ids
            getattr(request, rpc.account).append(SELF)
    return request


def invoke(
    channel: grpc.Channel, rpc: Rpc, request: Message, metadata: Any = None
) -> tuple[grpc.StatusCode, str]:
    """Call ``rpc`` with its generic stub; the status it ended with (OK: answered)."""
    path = f"/{PACKAGE}.{rpc.service}/{rpc.method}"
    kind = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[(rpc.client_streaming, rpc.server_streaming)]
    call = kind(
        path,
        request_serializer=rpc.request_type.SerializeToString,
        response_deserializer=rpc.response_type.FromString,
    )
    sent: Any = iter([request]) if rpc.client_streaming else request
    try:
        answer = call(sent, metadata=metadata, timeout=10)
        if rpc.server_streaming:
            list(answer)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return Code.OK, ""


def _every_call_reaches_and_fails(backend: HookedBackend) -> None:
    """Script the backend so that every call it gets ends FAILED_PRECONDITION at once."""
    reached = BackendError(Code.FAILED_PRECONDITION, _REACHED)
    backend.failures = {method_name(rpc.method): [reached] * 50 for rpc in RPCS}


# --- the tests ------------------------------------------------------------------------------


def test_every_rpc_is_refused_without_a_valid_token(secured: Secured) -> None:
    """No token, a malformed one and an unknown one: every RPC is UNAUTHENTICATED, and
    no call reaches the backend."""
    unknown = "pb1_" + "0" * 12 + "_" + "f" * 64
    with secured.channel() as channel:
        for metadata in (None, (("authorization", "Bearer nonsense"),), bearer_metadata(unknown)):
            for rpc in RPCS:
                code, _ = invoke(channel, rpc, _request(rpc), metadata)
                assert code is Code.UNAUTHENTICATED, (rpc.name, metadata, code)
    assert secured.backend.entered == 0


def test_each_role_is_allowed_exactly_the_rpcs_of_its_rows(secured: Secured) -> None:
    """Every RPC x every role: PERMISSION_DENIED, before the backend, exactly when the
    role is not in the row's roles; otherwise the call goes on (to validation or the
    backend). A new RPC is in RPCS by construction, so it is covered here."""
    _every_call_reaches_and_fails(secured.backend)
    wrong = []
    with secured.channel() as channel:
        for rpc in RPCS:
            for role in Role:
                entered = secured.backend.entered
                code, message = invoke(
                    channel, rpc, _request(rpc), bearer_metadata(secured.tokens[role])
                )
                refused = code is Code.PERMISSION_DENIED
                if refused != (role not in rpc.roles) or code is Code.UNAUTHENTICATED:
                    wrong.append((rpc.name, role.value, code.name, message))
                if refused and secured.backend.entered != entered:
                    wrong.append((rpc.name, role.value, "reached the backend when refused"))
    assert not wrong, wrong


def test_every_row_names_roles_and_the_account_a_selfcare_token_must_name() -> None:
    """Each RPC admits at least one role, and one that admits selfcare names the request
    field holding the account (or reads no account's data at all)."""
    for rpc in RPCS:
        assert rpc.roles, f"{rpc.name}: no role may call it"
        if rpc.roles & ACCOUNT_BOUND_ROLES and rpc.name not in READS_NO_ACCOUNT:
            assert rpc.account, f"{rpc.name}: admits selfcare but names no account field"


def test_a_selfcare_token_reads_only_its_own_account(secured: Secured) -> None:
    """Bound to self-1: it reads self-1's balance, and is refused another account's, a
    Subscribe to all or to several accounts, and a payment (not its role)."""
    with secured.client(Role.CRM) as crm:
        for account, msisdn in ((SELF, "4915100000001"), ("other-1", "4915100000002")):
            crm.create_account(account, msisdns=[msisdn], payment_mode="prepaid")
    with secured.client(Role.SELFCARE) as selfcare:
        assert selfcare.get_balance(SELF).account_id == SELF
        for call in (
            lambda: selfcare.get_balance("other-1"),
            lambda: selfcare.list_invoices("other-1"),
            lambda: selfcare.get_balance(""),
            lambda: selfcare.apply_payment(SELF, "1.00"),
        ):
            with pytest.raises(PetribillError) as refused:
                call()
            assert refused.value.code is Code.PERMISSION_DENIED
    with secured.channel() as channel:
        subscribe = rpc_named("NotificationService.Subscribe")
        for accounts in ([], ["other-1"], [SELF, "other-1"]):
            request = subscribe.request_type(account_ids=accounts)
            code, _ = invoke(
                channel, subscribe, request, bearer_metadata(secured.tokens[Role.SELFCARE])
            )
            assert code is Code.PERMISSION_DENIED, accounts


def test_an_operator_reads_the_status_and_health_needs_no_token(secured: Secured) -> None:
    """The health check answers without a token; ClusterStatus needs the operator's."""
    with secured.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    with secured.client(Role.OPERATOR) as operator:
        assert operator.cluster_status().nodes
    with secured.client(None) as anonymous, pytest.raises(PetribillError) as refused:
        anonymous.cluster_status()
    assert refused.value.code is Code.UNAUTHENTICATED


def test_reflection_needs_a_valid_token_of_any_role(secured: Secured) -> None:
    """Server reflection lists the services for any role's token, and not without one."""
    request = reflection_pb2.ServerReflectionRequest(list_services="")

    def services(metadata: Any) -> list[str]:
        with secured.channel() as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            [answer] = list(
                stub.ServerReflectionInfo(iter([request]), metadata=metadata, timeout=5)
            )
            return [s.name for s in answer.list_services_response.service]

    assert f"{PACKAGE}.AccountService" in services(bearer_metadata(secured.tokens[Role.MEDIATION]))
    with pytest.raises(grpc.RpcError) as refused:
        services(None)
    assert refused.value.code() is Code.UNAUTHENTICATED


def test_a_revoked_token_is_refused_within_a_second_without_a_restart(secured: Secured) -> None:
    """After `token revoke`, the next call made a quarter second later (the store looks at
    the file at most every 250 ms) is UNAUTHENTICATED; another token still works."""
    with secured.client(Role.OPERATOR) as operator:
        assert operator.get_tariffs().default_plan
        revoke_token(secured.tokens_file, secured.token_ids[Role.OPERATOR])
        time.sleep(0.3)
        with pytest.raises(PetribillError) as refused:
            operator.get_tariffs()
        assert refused.value.code is Code.UNAUTHENTICATED
        assert "revoked" in refused.value.details
    with secured.client(Role.CRM) as crm:
        assert crm.get_tariffs().default_plan


def test_money_moving_and_operator_calls_are_audited_with_token_id_never_the_token(
    secured: Secured,
) -> None:
    """A top-up, a refused payment, an unauthenticated top-up and a status read are
    written with token id, role, account, request id and outcome; a balance read is not;
    no file holds a token's secret."""
    with secured.client(Role.CRM) as crm:
        crm.create_account("au-1", msisdns=["4915100000009"], payment_mode="prepaid")
        crm.top_up("au-1", "5.00", request_id="top-1")
        crm.get_balance("au-1")
    with secured.client(Role.SELFCARE) as selfcare, pytest.raises(PetribillError):
        selfcare.apply_payment(SELF, "1.00", request_id="pay-1")
    with secured.client(None) as anonymous, pytest.raises(PetribillError):
        anonymous.top_up("au-1", "5.00", request_id="top-2")
    with secured.client(Role.OPERATOR) as operator:
        operator.cluster_status()
    # The gateway writes an event once its call is done, which is just after the client
    # has its answer: wait for the last one (a bounded wait, not a timing assertion).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        events = read_events(secured.audit_dir)
        if any(e.rpc == "AdminService.ClusterStatus" for e in events):
            break
        time.sleep(0.02)
    seen = [(e.rpc, e.outcome, e.role, e.token_id, e.account_id, e.request_id) for e in events]
    crm, selfcare, operator = (
        secured.token_ids[r] for r in (Role.CRM, Role.SELFCARE, Role.OPERATOR)
    )
    assert ("AccountService.TopUp", "OK", "crm", crm, "au-1", "top-1") in seen
    assert any(s[0] == "AccountService.CreateAccount" and s[4] == "au-1" for s in seen)
    # Refused by role before the handler: the request was not read.
    assert (
        "BillingService.ApplyPayment",
        "PERMISSION_DENIED",
        "selfcare",
        selfcare,
        None,
        None,
    ) in seen
    assert ("AccountService.TopUp", "UNAUTHENTICATED", None, None, None, None) in seen
    assert ("AdminService.ClusterStatus", "OK", "operator", operator, None, None) in seen
    assert not any(e.rpc == "AccountService.GetBalance" for e in events)
    written = "".join(p.read_text() for p in secured.audit_dir.iterdir())
    assert all(token.split("_")[2] not in written for token in secured.tokens.values())
    assert all(json.loads(line)["event"] == "audit" for line in written.splitlines())


def test_without_a_tokens_file_calls_need_no_token() -> None:
    """The embedded default on loopback: no tokens file, no token needed."""
    with running_gateways() as (_loop, _backend, [gateway]), PetribillClient(gateway.address) as c:
        assert c.get_tariffs().default_plan
