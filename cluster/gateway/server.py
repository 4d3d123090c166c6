"""The gateway server: grpc.aio with every petribill.v1 service, health checking and reflection.

One gateway runs per node (inside a Ray actor, see :mod:`cluster.gateway.actor`)
and holds no state of its own: every call is a row of the RPC table
(``cluster.backend.rpcs``) served by the backend, once the guard admits it
(tokens, roles, TLS: :mod:`cluster.gateway.guard`). Health
is reported per service (``grpc.health.v1``): NOT_SERVING until the server has
started, SERVING while it serves, NOT_SERVING from the moment it begins to
stop, so a load balancer watching it moves traffic before calls are refused.
"""

from __future__ import annotations

from typing import Any

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from cluster.backend.rpcs import PACKAGE, SERVICES
from cluster.gateway.calls import Calls
from cluster.gateway.guard import Guard, SecuritySettings
from cluster.gateway.limits import Admission, GatewayLimits
from cluster.gateway.servicers import Backend, add_servicers

__all__ = ["SERVICE_NAMES", "Gateway", "GatewayError"]

log = structlog.get_logger("petribill.gateway")

#: Full names of the petribill.v1 services, as health checks and reflection know them.
SERVICE_NAMES: tuple[str, ...] = tuple(f"{PACKAGE}.{service}" for service in SERVICES)
_HEALTH_NAME: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class GatewayError(RuntimeError):
    """Raised by :meth:`Gateway.start` when the server cannot listen (port taken, bad host)."""


class Gateway:
    """A grpc.aio server relaying petribill.v1 to a backend. ``port=0`` picks a free port.

    Start and stop on one event loop; :attr:`port` and :attr:`address` are the
    bound ones after :meth:`start`.
    """

    def __init__(
        self,
        backend: Backend,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: GatewayLimits | None = None,
        *,
        advertise_host: str | None = None,
        security: SecuritySettings | None = None,
    ) -> None:
        self.backend = backend
        self.security = security or SecuritySettings()
        self.host = host
        # Where clients reach a gateway bound to a wildcard such as 0.0.0.0.
        self.advertise_host = advertise_host or host
        self.limits = limits or GatewayLimits()
        self.admission = Admission(self.limits)
        self._port_wanted = port
        self._port: int | None = None
        self._server: Any = None
        self._health: Any = None
        self._guard: Guard | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise GatewayError("the gateway has not started")
        return self._port

    @property
    def address(self) -> str:
        """``host:port`` to give clients (the advertised host, if one was given)."""
        host = self.advertise_host
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{self.port}"

    def _options(self) -> list[tuple[str, int]]:
        size = self.limits.message_bytes_max
        return [
            ("grpc.max_send_message_length", size),
            ("grpc.max_receive_message_length", size),
            # Without this, a second gateway on a taken port would share it silently.
            ("grpc.so_reuseport", 0),
            # Find dead clients of long streams (Subscribe) within a minute.
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
        ]

    async def start(self) -> str:
        """Listen and serve; answer SERVING once up. Returns :attr:`address`."""
        if self._server is not None:
            return self.address
        guard = Guard(self.security)  # reads the tokens file and the TLS files, or raises
        server = grpc.aio.server(interceptors=guard.interceptors(), options=self._options())
        add_servicers(server, self.backend, Calls(self.limits, self.admission), guard)
        health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, _HEALTH_NAME, reflection.SERVICE_NAME), server
        )
        for name in ("", *SERVICE_NAMES):
            await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        where = f"{self.host}:{self._port_wanted}"
        credentials = guard.server_credentials()
        try:
            if credentials is None:
                port = server.add_insecure_port(where)
            else:
                port = server.add_secure_port(where, credentials)
        except RuntimeError as exc:
            guard.close()
            raise GatewayError(f"cannot listen on {where}: {exc}") from exc
        if port == 0:
            guard.close()
            raise GatewayError(f"cannot listen on {where}")
        await server.start()
        self._server, self._health, self._port, self._guard = server, health, port, guard
        for name in ("", *SERVICE_NAMES):
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "gateway_started",
            address=self.address,
            limits=_limits_dict(self.limits),
            tls=credentials is not None,
            mutual_tls=self.security.client_ca is not None,
            tokens=self.security.tokens_file is not None,
        )
        return self.address

    async def drain(self) -> None:
        """Report NOT_SERVING for every service (for good) while still answering calls."""
        if self._health is not None:
            await self._health.enter_graceful_shutdown()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Drain, then stop: calls in flight get ``grace_s`` to finish, then are cancelled."""
        if self._server is None:
            return
        await self.drain()
        await self._server.stop(grace_s)
        self._server = None
        if self._guard is not None:
            self._guard.close()
            self._guard = None
        log.info("gateway_stopped", address=self.address, grace_s=grace_s)

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


def _limits_dict(limits: GatewayLimits) -> dict[str, Any]:
    return {name: getattr(limits, name) for name in limits.__dataclass_fields__}
