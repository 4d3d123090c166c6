"""A small real grpc.aio server for the security tests: health, reflection and a probe service.

The probe service has raw-bytes methods (no protobuf needed) and counts the
calls its handlers actually ran, so a test can tell a refusal before the
handler (interceptor, TLS handshake) from one inside it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from cluster.security.auth import (
    AuthError,
    Principal,
    check_account,
    check_role,
    current_principal,
)
from cluster.security.roles import Role

T = TypeVar("T")

PROBE_SERVICE = "petribill.test.Probe"
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
#: The roles of ReadAccount, checked inside its handler as the gateway will.
READ_ACCOUNT_ROLES = frozenset({Role.CRM, Role.SELFCARE, Role.OPERATOR})


def method(name: str) -> str:
    return f"/{PROBE_SERVICE}/{name}"


class LoopThread:
    """An asyncio loop on a daemon thread, for a server that tests call synchronously."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@dataclass
class Probe:
    """The probe service's handlers, and what they saw."""

    calls: list[str] = field(default_factory=list)
    principals: list[Principal | None] = field(default_factory=list)

    def _saw(self, name: str) -> None:
        self.calls.append(name)
        self.principals.append(current_principal())

    async def echo(self, request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        self._saw("Echo")
        return request

    async def admin(self, request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        self._saw("Admin")
        return b"done"

    async def watch(
        self, request: bytes, _context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        self._saw("Watch")
        yield request
        yield request

    async def read_account(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """The request is an account id; role and account are checked here, as a gateway does."""
        principal = current_principal()
        try:
            if principal is None:
                raise AssertionError("the interceptor admitted a call without a principal")
            check_role(principal, READ_ACCOUNT_ROLES, "ReadAccount")
            check_account(principal, request.decode())
        except AuthError as exc:
            await context.abort(exc.code, exc.message)
        self._saw("ReadAccount")
        return b"account " + request

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            PROBE_SERVICE,
            {
                "Echo": grpc.unary_unary_rpc_method_handler(self.echo),
                "Admin": grpc.unary_unary_rpc_method_handler(self.admin),
                "Watch": grpc.unary_stream_rpc_method_handler(self.watch),
                "ReadAccount": grpc.unary_unary_rpc_method_handler(self.read_account),
            },
        )


@dataclass
class Served:
    probe: Probe
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextmanager
def probe_server(
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    credentials: grpc.ServerCredentials | None = None,
) -> Iterator[Served]:
    """A server on a free loopback port (TLS if ``credentials``), stopped afterwards."""
    loop = LoopThread()
    probe = Probe()

    async def start() -> tuple[Any, int]:
        server = grpc.aio.server(interceptors=list(interceptors))
        server.add_generic_rpc_handlers((probe.handler(),))
        health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        reflection.enable_server_reflection(
            (PROBE_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server
        )
        address = "127.0.0.1:0"
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
        await server.start()
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
        return server, port

    server, port = loop.run(start())
    try:
        yield Served(probe=probe, port=port)
    finally:
        loop.run(server.stop(0))
        loop.close()


def health_status(channel: grpc.Channel, timeout_s: float = 5.0) -> Any:
    """The health check's answer (the one RPC that needs no token)."""
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout_s).status


def call(
    channel: grpc.Channel,
    name: str,
    request: bytes = b"hi",
    *,
    metadata: Sequence[tuple[str, str]] | None = None,
    timeout_s: float = 5.0,
) -> bytes:
    """Call a unary probe method with raw bytes."""
    answer: bytes = channel.unary_unary(method(name))(request, metadata=metadata, timeout=timeout_s)
    return answer


def status_of(fn: Any, *args: Any, **kwargs: Any) -> tuple[grpc.StatusCode, str]:
    """The status code and details a call ended with (OK and '' if it succeeded)."""
    try:
        fn(*args, **kwargs)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""
