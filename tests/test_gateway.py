"""The gateway over real gRPC on loopback: every RPC relayed, health, reflection, errors."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from petribill.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    billing_pb2,
    billing_pb2_grpc,
    common_pb2,
    notifications_pb2,
    notifications_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)
from test_gateway_support import T_NOV, HookedBackend, in_process_cluster, running_gateways

from cluster.api.errors import BackendError
from cluster.gateway.server import SERVICE_NAMES, Gateway, GatewayError
from cluster.gateway.servicers import SERVICERS

pytestmark = pytest.mark.timeout(30)

Code = grpc.StatusCode


@pytest.fixture
def served() -> Iterator[tuple[Any, HookedBackend, Gateway, grpc.Channel]]:
    with (
        running_gateways() as (loop, backend, gateways),
        grpc.insecure_channel(gateways[0].address) as channel,
    ):
        yield loop, backend, gateways[0], channel


def _account(channel: grpc.Channel, account_id: str = "a1", msisdn: str = "4915100000001") -> None:
    accounts_pb2_grpc.AccountServiceStub(channel).CreateAccount(
        accounts_pb2.CreateAccountRequest(
            request_id=f"create-{account_id}",
            account_id=account_id,
            payment_mode=common_pb2.PAYMENT_MODE_PREPAID,
            currency="EUR",
            msisdns=[msisdn],
        ),
        timeout=5,
    )


def _top_up(channel: grpc.Channel, request_id: str, micros: int, account_id: str = "a1") -> Any:
    return accounts_pb2_grpc.AccountServiceStub(channel).TopUp(
        accounts_pb2.TopUpRequest(
            request_id=request_id,
            account_id=account_id,
            amount=common_pb2.Money(micros=micros, currency="EUR"),
        ),
        timeout=5,
    )


def _voice(record_id: str, duration_s: int = 60, msisdn: str = "4915100000001") -> Any:
    return common_pb2.UsageRecord(
        record_id=record_id,
        service=common_pb2.SERVICE_VOICE,
        served_msisdn=msisdn,
        record_opening_time_s=T_NOV,
        called_number="4930123456",
        duration_s=duration_s,
    )


def test_every_rpc_of_every_service_is_relayed(served: Any) -> None:
    """Each RPC of petribill.v1 has a relay, and each answers over gRPC (never UNIMPLEMENTED)."""
    _loop, _backend, _gateway, channel = served
    servicer_bases = {cls.__mro__[2].__name__.removesuffix("Servicer") for cls, _ in SERVICERS}
    assert {name.rsplit(".", 1)[1] for name in SERVICE_NAMES} == servicer_bases
    for servicer, _register in SERVICERS:
        base = servicer.__mro__[2]
        rpcs = [name for name in vars(base) if not name.startswith("_")]
        assert rpcs, base
        for rpc in rpcs:
            assert getattr(servicer, rpc) is not getattr(base, rpc), f"{base.__name__}.{rpc}"
    # An empty request to every unary RPC gets an answer or a precise refusal.
    pool = descriptor_pool.Default()
    for service_name in SERVICE_NAMES:
        service = pool.FindServiceByName(service_name)
        for method in service.methods:
            if method.client_streaming or method.server_streaming:
                continue
            request_class = message_factory.GetMessageClass(method.input_type)
            response_class = message_factory.GetMessageClass(method.output_type)
            call = channel.unary_unary(
                f"/{service_name}/{method.name}",
                request_serializer=request_class.SerializeToString,
                response_deserializer=response_class.FromString,
            )
            try:
                call(request_class(), timeout=5)
            except grpc.RpcError as exc:
                assert exc.code() in (Code.INVALID_ARGUMENT, Code.NOT_FOUND), method.full_name


def test_health_is_serving_per_service_and_not_serving_once_stopping() -> None:
    """Health is SERVING for the server and each service; a watcher sees NOT_SERVING on stop."""
    with running_gateways() as (loop, _backend, gateways):
        gateway = gateways[0]
        with grpc.insecure_channel(gateway.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", *SERVICE_NAMES):
                reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
            with pytest.raises(grpc.RpcError) as unknown:
                health.Check(health_pb2.HealthCheckRequest(service="nope.Service"), timeout=5)
            assert unknown.value.code() == Code.NOT_FOUND
            watch = health.Watch(
                health_pb2.HealthCheckRequest(service="petribill.v1.UsageService"), timeout=10
            )
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            loop.run(gateway.drain())
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()
            loop.run(gateway.stop(0.5))
            with pytest.raises(grpc.RpcError) as gone:
                health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
            assert gone.value.code() == Code.UNAVAILABLE


def test_reflection_lists_the_petribill_services(served: Any) -> None:
    """Server reflection lists every petribill.v1 service and health, as grpcurl needs."""
    _loop, _backend, _gateway, channel = served
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    answers = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
    names = {s.name for s in answers[0].list_services_response.service}
    assert set(SERVICE_NAMES) <= names
    assert "grpc.health.v1.Health" in names
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="petribill.v1.Money")
    answers = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
    assert answers[0].file_descriptor_response.file_descriptor_proto


def test_backend_errors_keep_their_status_and_message(served: Any) -> None:
    """BackendError reaches the client as its own code; ALREADY_EXISTS names the differing field."""
    _loop, _backend, _gateway, channel = served
    _account(channel)
    assert _top_up(channel, "t1", 5_000_000).prepaid.micros == 5_000_000
    assert _top_up(channel, "t1", 5_000_000).prepaid.micros == 5_000_000  # replayed
    with pytest.raises(grpc.RpcError) as reused:
        _top_up(channel, "t1", 7_000_000)
    assert reused.value.code() == Code.ALREADY_EXISTS
    assert "amount" in reused.value.details()
    with pytest.raises(grpc.RpcError) as missing:
        _top_up(channel, "t2", 1, account_id="nobody")
    assert missing.value.code() == Code.NOT_FOUND


def test_unexpected_backend_exception_is_internal_and_the_gateway_goes_on(served: Any) -> None:
    """A bug in the backend answers INTERNAL with an error id; the next call is served."""
    _loop, backend, _gateway, channel = served
    _account(channel)
    backend.failures["get_balance"] = [ZeroDivisionError("bug")]
    stub = accounts_pb2_grpc.AccountServiceStub(channel)
    request = accounts_pb2.GetAccountRequest(account_id="a1")
    with pytest.raises(grpc.RpcError) as failed:
        stub.GetBalance(request, timeout=5)
    assert failed.value.code() == Code.INTERNAL
    assert "internal error" in failed.value.details()
    assert "bug" not in failed.value.details()  # details stay in the log
    assert stub.GetBalance(request, timeout=5).account_id == "a1"


def test_backend_error_refuses_transport_codes() -> None:
    """BackendError cannot pretend to be a transport failure or a success."""
    for code in (Code.OK, Code.INTERNAL, Code.CANCELLED, Code.UNKNOWN):
        with pytest.raises(ValueError):
            BackendError(code, "x")
    assert BackendError(Code.UNAVAILABLE, "takeover").retryable
    assert not BackendError(Code.ALREADY_EXISTS, "amount").retryable


def test_malformed_requests_are_refused_before_the_backend(served: Any) -> None:
    """Empty or oversized batches and writes without request_id are INVALID_ARGUMENT, unrelayed."""
    _loop, backend, _gateway, channel = served
    usage = usage_pb2_grpc.UsageServiceStub(channel)
    with pytest.raises(grpc.RpcError) as empty:
        usage.SubmitUsage(usage_pb2.SubmitUsageRequest(), timeout=5)
    assert empty.value.code() == Code.INVALID_ARGUMENT
    assert "empty" in empty.value.details()
    big = usage_pb2.SubmitUsageRequest(records=[_voice(f"r{i}") for i in range(10_001)])
    with pytest.raises(grpc.RpcError) as oversized:
        usage.SubmitUsage(big, timeout=5)
    assert oversized.value.code() == Code.INVALID_ARGUMENT
    assert "batch_records_max=10000" in oversized.value.details()
    with pytest.raises(grpc.RpcError) as anonymous:
        _top_up(channel, "", 100)
    assert anonymous.value.code() == Code.INVALID_ARGUMENT
    assert "request_id" in anonymous.value.details()
    with pytest.raises(grpc.RpcError) as negative:
        _top_up(channel, "t-neg", -100)
    assert negative.value.code() == Code.INVALID_ARGUMENT
    unreadable = usage_pb2.StoreUnreadableRequest(
        lines=[usage_pb2.UnreadableLine(source_file="f.csv", source_line=0, raw="x")]
    )
    with pytest.raises(grpc.RpcError) as no_line:
        usage.StoreUnreadable(unreadable, timeout=5)
    assert no_line.value.code() == Code.INVALID_ARGUMENT
    assert "StoreUnreadableRequest.lines[0].source_line" in no_line.value.details()
    bill = billing_pb2_grpc.BillingServiceStub(channel)
    with pytest.raises(grpc.RpcError) as cycle:
        list(bill.RunBilling(billing_pb2.BillRunRequest(request_id="b", cycle_id="24-1")))
    assert cycle.value.code() == Code.INVALID_ARGUMENT
    assert backend.calls == []


def test_stream_usage_answers_each_batch_in_order(served: Any) -> None:
    """StreamUsage answers every batch in order with its batch id; resent records are duplicates."""
    _loop, _backend, _gateway, channel = served
    _account(channel)
    _top_up(channel, "t1", 100_000_000)
    batches = [
        usage_pb2.SubmitUsageRequest(
            batch_id=f"b{n}", records=[_voice(f"sw:{n}:{i}") for i in range(3)]
        )
        for n in range(6)
    ]
    usage = usage_pb2_grpc.UsageServiceStub(channel)
    answers = list(usage.StreamUsage(iter(batches), timeout=10))
    assert [a.batch_id for a in answers] == [f"b{n}" for n in range(6)]
    assert all(r.status == usage_pb2.RECORD_STATUS_CHARGED for a in answers for r in a.results)
    again = list(usage.StreamUsage(iter(batches[:2]), timeout=10))
    resent = [r for a in again for r in a.results]
    assert {(r.status, r.replay) for r in resent} == {(usage_pb2.RECORD_STATUS_CHARGED, True)}


def test_stream_usage_ends_with_the_status_of_the_first_bad_batch(served: Any) -> None:
    """Batches before a malformed one are answered; then the stream ends INVALID_ARGUMENT."""
    _loop, _backend, gateway, channel = served
    _account(channel)
    batches = [
        usage_pb2.SubmitUsageRequest(batch_id="ok1", records=[_voice("x:1")]),
        usage_pb2.SubmitUsageRequest(batch_id="ok2", records=[_voice("x:2")]),
        usage_pb2.SubmitUsageRequest(batch_id="bad"),
        usage_pb2.SubmitUsageRequest(batch_id="never", records=[_voice("x:3")]),
    ]
    stream = usage_pb2_grpc.UsageServiceStub(channel).StreamUsage(iter(batches), timeout=10)
    got = []
    with pytest.raises(grpc.RpcError) as failed:
        for answer in stream:
            got.append(answer.batch_id)
    assert got == ["ok1", "ok2"]
    assert failed.value.code() == Code.INVALID_ARGUMENT
    assert gateway.admission.usage_streams == 0


def test_subscribe_streams_new_notifications_and_frees_its_slot(served: Any) -> None:
    """Subscribe delivers a notification raised by usage; cancelling frees the subscription."""
    _loop, backend, gateway, channel = served
    _account(channel)
    _top_up(channel, "t1", 1_100_000)
    stub = notifications_pb2_grpc.NotificationServiceStub(channel)
    stream = stub.Subscribe(notifications_pb2.SubscribeRequest(account_ids=["a1"]))
    received: list[Any] = []
    reader = threading.Thread(target=lambda: received.append(next(stream)), daemon=True)
    reader.start()
    # The subscription has found where each shard stands and polled a few rounds since.
    _wait(lambda: backend.ops_run["NotificationsSince"] >= 20)
    usage = usage_pb2_grpc.UsageServiceStub(channel)
    call = _voice("n:1", 60)
    call.called_number = "447700900123"  # to the UK: no bundle, 0.19 a minute
    # In the current cycle (the top-up's): a late cycle's usage raises no reminder.
    call.record_opening_time_s = int(time.time()) - 60
    usage.SubmitUsage(usage_pb2.SubmitUsageRequest(records=[call]), timeout=5)
    reader.join(5)
    assert received and received[0].kind == notifications_pb2.NOTIFICATION_KIND_LOW_BALANCE
    stream.cancel()
    _wait(lambda: gateway.admission.subscriptions == 0 and not backend.streams_open)


def test_run_billing_streams_progress_to_finished(served: Any) -> None:
    """RunBilling streams a progress per shard as it finishes; the last is finished."""
    _loop, _backend, _gateway, channel = served
    _account(channel, "a1", "4915100000001")
    _account(channel, "a2", "4915100000002")
    stub = billing_pb2_grpc.BillingServiceStub(channel)
    request = billing_pb2.BillRunRequest(request_id="run-1", cycle_id="2026-10", at_s=T_NOV)
    progress = list(stub.RunBilling(request))
    done = [p.accounts_done for p in progress]
    assert done == sorted(done) and len(progress) == 4  # one per shard of the cluster
    assert progress[-1].finished and progress[-1].accounts_done == 2


def test_port_zero_picks_a_free_port_and_a_taken_port_is_an_error() -> None:
    """Port 0 reports the port bound; a port already taken fails start with GatewayError."""
    with running_gateways(2) as (loop, backend, gateways):
        assert gateways[0].port != gateways[1].port > 0
        clash = Gateway(backend, "127.0.0.1", gateways[0].port)
        with pytest.raises(GatewayError):
            loop.run(clash.start())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        loop_gateway = Gateway(backend, "127.0.0.1", sock.getsockname()[1])
        with pytest.raises(GatewayError):
            asyncio.run(loop_gateway.start())


def _wait(condition: Any, timeout_s: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_gateway_actor_is_a_plain_class_usable_without_ray() -> None:
    """GatewayActor starts once however often asked, reports its address, and stops."""
    from cluster.gateway.actor import GatewayActor

    async def scenario(cluster: Any) -> tuple[str, str, dict[str, int], dict[str, int]]:
        actor = GatewayActor(cluster.backend, host="127.0.0.1", port=0)
        first, second = await asyncio.gather(actor.start(), actor.start())
        assert first == second == await actor.address()
        stats = await actor.stats()
        await actor.stop(0.1)
        return first, second, stats, await actor.stats()

    with in_process_cluster() as cluster:
        address, _same, running, stopped = asyncio.run(scenario(cluster))
    assert address.startswith("127.0.0.1:")
    assert running["requests"] == 0 and stopped == {}
