"""The gateway's limits over real gRPC: message size, in-flight requests and records, deadlines."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from petribill.v1 import accounts_pb2, accounts_pb2_grpc, common_pb2, usage_pb2, usage_pb2_grpc
from test_gateway_support import running_gateways

from cluster.gateway.limits import GatewayLimits

pytestmark = pytest.mark.timeout(30)

Code = grpc.StatusCode


def _batch(prefix: str, count: int, *, pad_chars: int = 0) -> usage_pb2.SubmitUsageRequest:
    return usage_pb2.SubmitUsageRequest(
        records=[
            common_pb2.UsageRecord(
                record_id=f"{prefix}:{i}",
                service=common_pb2.SERVICE_SMS,
                served_msisdn="4915100000001",
                sms_count=1,
                content_item_id="x" * pad_chars,
            )
            for i in range(count)
        ]
    )


def _wait(condition: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_a_message_over_the_size_limit_is_refused_by_grpc() -> None:
    """A request over message_bytes_max gets RESOURCE_EXHAUSTED and never reaches a servicer."""
    limits = GatewayLimits(message_bytes_max=64 * 1024)
    with running_gateways(limits=limits) as (_loop, backend, gateways):
        options = [("grpc.max_send_message_length", 8 * 1024 * 1024)]
        with grpc.insecure_channel(gateways[0].address, options=options) as channel:
            usage = usage_pb2_grpc.UsageServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                usage.SubmitUsage(_batch("big", 10, pad_chars=10_000), timeout=5)
            assert refused.value.code() == Code.RESOURCE_EXHAUSTED
            assert backend.calls == []
            usage.SubmitUsage(_batch("small", 2), timeout=5)  # the gateway still serves
            assert len(backend.calls) == 1


def test_a_full_gateway_refuses_the_next_request_then_recovers() -> None:
    """With requests_inflight_max calls blocked in the backend, the next is RESOURCE_EXHAUSTED."""
    limits = GatewayLimits(requests_inflight_max=2)
    with running_gateways(limits=limits) as (loop, backend, gateways):
        backend.gate = asyncio.Event()
        with grpc.insecure_channel(gateways[0].address) as channel:
            accounts = accounts_pb2_grpc.AccountServiceStub(channel)
            request = accounts_pb2.GetAccountRequest(account_id="a1")
            blocked = [accounts.GetAccount.future(request, timeout=10) for _ in range(2)]
            _wait(lambda: backend.entered == 2)
            with pytest.raises(grpc.RpcError) as refused:
                accounts.GetAccount(request, timeout=5)
            assert refused.value.code() == Code.RESOURCE_EXHAUSTED
            assert "requests_inflight_max=2" in refused.value.details()
            assert backend.entered == 2
            loop.call(backend.gate.set)
            for future in blocked:
                assert future.exception().code() == Code.NOT_FOUND  # answered, not dropped
            assert gateways[0].admission.requests == 0
            with pytest.raises(grpc.RpcError) as served:
                accounts.GetAccount(request, timeout=5)
            assert served.value.code() == Code.NOT_FOUND


def test_records_in_flight_are_bounded() -> None:
    """A batch that would take the gateway past records_inflight_max is RESOURCE_EXHAUSTED."""
    limits = GatewayLimits(records_inflight_max=10)
    with running_gateways(limits=limits) as (loop, backend, gateways):
        backend.gate = asyncio.Event()
        with grpc.insecure_channel(gateways[0].address) as channel:
            usage = usage_pb2_grpc.UsageServiceStub(channel)
            first = usage.SubmitUsage.future(_batch("a", 8), timeout=10)
            _wait(lambda: gateways[0].admission.records == 8)
            with pytest.raises(grpc.RpcError) as refused:
                usage.SubmitUsage(_batch("b", 5), timeout=5)
            assert refused.value.code() == Code.RESOURCE_EXHAUSTED
            assert "records_inflight_max=10" in refused.value.details()
            assert "same record ids" in refused.value.details()
            loop.call(backend.gate.set)
            assert len(first.result().results) == 8
            assert len(usage.SubmitUsage(_batch("b", 5), timeout=5).results) == 5
            assert gateways[0].admission.records == 0


def test_open_streams_are_bounded() -> None:
    """Beyond usage_streams_max open StreamUsage streams, a new one is RESOURCE_EXHAUSTED."""
    limits = GatewayLimits(usage_streams_max=1)
    with (
        running_gateways(limits=limits) as (_loop, _backend, gateways),
        grpc.insecure_channel(gateways[0].address) as channel,
    ):
        usage = usage_pb2_grpc.UsageServiceStub(channel)
        release = threading.Event()
        holding = usage.StreamUsage(_held(_batch("s", 1), release))
        next(holding)
        with pytest.raises(grpc.RpcError) as refused:
            list(usage.StreamUsage(iter([_batch("t", 1)]), timeout=5))
        assert refused.value.code() == Code.RESOURCE_EXHAUSTED
        assert "usage_streams_max=1" in refused.value.details()
        holding.cancel()
        release.set()
        _wait(lambda: gateways[0].admission.usage_streams == 0)


def _held(batch: usage_pb2.SubmitUsageRequest, release: threading.Event) -> Iterator[Any]:
    """Send one batch, then keep the request stream open until released."""
    yield batch
    release.wait(10)


def test_a_slow_backend_gets_deadline_exceeded_within_the_clients_deadline() -> None:
    """The backend gets the client's remaining time; overrunning it is DEADLINE_EXCEEDED."""
    with running_gateways() as (_loop, backend, gateways):
        backend.delay_s = 5.0
        with grpc.insecure_channel(gateways[0].address) as channel:
            accounts = accounts_pb2_grpc.AccountServiceStub(channel)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as late:
                accounts.GetAccount(accounts_pb2.GetAccountRequest(account_id="a1"), timeout=0.5)
            assert late.value.code() == Code.DEADLINE_EXCEEDED
            # Answered long before the backend's 5 s would have ended (not a speed bound).
            assert time.monotonic() - started < 4.5
            # The client's half second, not the gateway's 30 s default. grpc-core's own
            # deadline arithmetic may leave a hair over the 0.5 s the client sent (once
            # 0.5006 s on a loaded machine), so the bound says "the client's", not "exactly".
            assert backend.timeouts[0] is not None and 0 < backend.timeouts[0] < 1.0
            _wait(lambda: gateways[0].admission.requests == 0)


def test_without_a_client_deadline_the_gateway_default_applies() -> None:
    """A call without a deadline is cut at request_timeout_default_s with the gateway's message."""
    limits = GatewayLimits(request_timeout_default_s=0.3)
    with running_gateways(limits=limits) as (_loop, backend, gateways):
        backend.delay_s = 5.0
        with grpc.insecure_channel(gateways[0].address) as channel:
            accounts = accounts_pb2_grpc.AccountServiceStub(channel)
            with pytest.raises(grpc.RpcError) as late:
                accounts.GetAccount(accounts_pb2.GetAccountRequest(account_id="a1"))
            assert late.value.code() == Code.DEADLINE_EXCEEDED
            assert "retry with the same ids" in late.value.details()
            assert backend.timeouts == [0.3]
            assert gateways[0].admission.requests == 0


def test_limits_must_be_positive() -> None:
    """A zero or negative limit is refused when the limits are built."""
    from billing.invariant import InvariantViolation

    with pytest.raises(InvariantViolation):
        GatewayLimits(records_inflight_max=0)
    with pytest.raises(InvariantViolation):
        GatewayLimits(request_timeout_default_s=10, request_timeout_max_s=5)
