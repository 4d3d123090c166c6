"""The GatewayActor inside a real local Ray: it starts a gateway that answers health checks."""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

import grpc
import pytest
import ray
import test_gateway_support
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cluster.client import PetribillClient
from cluster.gateway.actor import gateway_actor_class
from cluster.gateway.limits import GatewayLimits

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


def test_gateway_actor_serves_health_and_calls_inside_ray() -> None:
    """A Ray async actor hosts the grpc.aio gateway; health is SERVING, calls work, stop ends it."""
    temp_dir = Path(tempfile.mkdtemp(prefix="pb-gw-", dir="/tmp"))
    # The backend's factory lives in a test module the workers cannot import: ship it by value.
    ray.cloudpickle.register_pickle_by_value(test_gateway_support)  # type: ignore[no-untyped-call]
    ray.init(
        num_cpus=1,
        include_dashboard=False,
        _temp_dir=str(temp_dir),
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        actor = gateway_actor_class().remote(
            functools.partial(test_gateway_support.in_process_backend, str(temp_dir / "data")),
            host="127.0.0.1",
            port=0,
            limits=GatewayLimits(requests_inflight_max=8),
        )
        address = ray.get(actor.start.remote(), timeout=60)
        assert ray.get(actor.address.remote(), timeout=10) == address
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="petribill.v1.UsageService"), timeout=10
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with PetribillClient(address) as client:
            assert client.create_account("a1", msisdns=["4915100000001"]).account_id == "a1"
            assert client.top_up("a1", "2").prepaid.micros == 2_000_000
        assert ray.get(actor.stats.remote(), timeout=10)["requests"] == 0
        ray.get(actor.stop.remote(0.5), timeout=30)
        with PetribillClient(address, retries=0, timeout_s=2) as client:
            assert client.health() == {address: "UNAVAILABLE"}
    finally:
        ray.cloudpickle.unregister_pickle_by_value(test_gateway_support)  # type: ignore[no-untyped-call]
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
