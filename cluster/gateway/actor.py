"""The gateway as a Ray actor: a plain class, made remote in :func:`gateway_actor_class` only.

Ray runs the async methods of an actor on one event loop in the actor's
process; the grpc.aio server lives on that loop, so :meth:`GatewayActor.start`
simply starts it there and returns. The backend is built inside the actor
(from a picklable factory), since what it holds (actor handles, a loop-bound
cache) belongs to that process.

Recovery contract: the gateway holds no state. If its process dies, Ray starts
a new one on the same node (``max_restarts=-1``, ``actors/remote.py``) and the
coordinator's loop asks it to serve; it binds the port its first process bound
(remembered in Ray's internal key-value store, so a gateway started on port 0
keeps the address clients know). Meanwhile clients fail over to another
gateway address; calls in flight get UNAVAILABLE and are retried by the SDK
with the same idempotency keys.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from cluster.gateway.guard import SecuritySettings
from cluster.gateway.limits import GatewayLimits
from cluster.gateway.server import Gateway, GatewayError
from cluster.gateway.servicers import Backend

__all__ = ["GatewayActor", "gateway_actor_class", "spawn_gateway"]

_SWITCH_INTERVAL_S = 0.0005
_LAG_PROBE_S = 0.005
_LAGS_KEPT = 4096


class GatewayActor:
    """Owns one :class:`Gateway`; every method is async, so Ray makes this an async actor."""

    def __init__(
        self,
        backend_factory: Callable[[], Backend],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: GatewayLimits | None = None,
        advertise_host: str | None = None,
        security: SecuritySettings | None = None,
        setup: Callable[[], None] | None = None,
    ) -> None:
        if setup is not None:
            setup()  # the process's logging (cluster.logging), before anything logs
        # The loop answers queries between the CPU work of usage batches (decoding,
        # encoding, Ray's serialisation); a short GIL switch interval keeps a query
        # from waiting the default 5 ms at each hand-off between threads.
        sys.setswitchinterval(_SWITCH_INTERVAL_S)
        self._backend_factory = backend_factory
        self._host = host
        self._advertise_host = advertise_host
        self._port = port
        self._limits = limits
        self._security = security
        self._gateway: Gateway | None = None
        self._starting = asyncio.Lock()  # two concurrent start() calls start one server
        # How late the loop wakes a 5 ms sleep (s): how long any call, a query included,
        # may wait for the loop behind the CPU work of others (``stats``).
        self._loop_lags: deque[float] = deque(maxlen=_LAGS_KEPT)
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> str:
        """Start serving (idempotent); returns the address clients use, ``host:port``."""
        async with self._starting:
            return await self._start()

    async def _start(self) -> str:
        if self._gateway is None:
            key = _port_key()
            port = self._port or _remembered_port(key)
            try:
                gateway = await self._serve(port)
            except GatewayError:
                if port == self._port:
                    raise
                gateway = await self._serve(self._port)  # the remembered port is taken
            if key is not None:
                _remember_port(key, gateway.port)
            self._gateway = gateway
            self._watch = asyncio.ensure_future(self._watch_loop())
        return self._gateway.address

    async def _serve(self, port: int) -> Gateway:
        gateway = Gateway(
            self._backend_factory(),
            self._host,
            port,
            self._limits,
            advertise_host=self._advertise_host or _node_ip(self._host),
            security=self._security,
        )
        await gateway.start()
        return gateway

    async def _watch_loop(self) -> None:
        while True:
            asked = time.perf_counter()
            await asyncio.sleep(_LAG_PROBE_S)
            self._loop_lags.append(time.perf_counter() - asked - _LAG_PROBE_S)

    async def address(self) -> str:
        """The serving address, starting the gateway first if it is not serving yet."""
        if self._gateway is None:
            return await self.start()
        return self._gateway.address

    async def stats(self) -> dict[str, float]:
        """In-flight counters, the loop's lag (ms), the local reads; for status pages,
        benchmarks and tests."""
        if self._gateway is None:
            return {}
        lags = sorted(self._loop_lags) or [0.0]
        admission = self._gateway.admission
        # Host calls the backend coalesced (actors.coalesce) and the operations they carried.
        cluster = getattr(self._gateway.backend, "cluster", None)
        coalescer = getattr(cluster, "coalescer", None)
        # Queries answered from this node's copies, and those passed to the hosts.
        reads = getattr(cluster, "reads", None)
        return {
            **({} if reads is None else reads.stats()),
            "loop_lag_p50_ms": round(1000 * lags[len(lags) // 2], 3),
            "loop_lag_p99_ms": round(1000 * lags[int(0.99 * (len(lags) - 1))], 3),
            "requests": admission.requests,
            "records": admission.records,
            "usage_streams": admission.usage_streams,
            "subscriptions": admission.subscriptions,
            "bill_runs": admission.bill_runs,
            "coalesced_batches": getattr(coalescer, "batches", 0),
            "coalesced_calls": getattr(coalescer, "calls", 0),
        }

    async def stop(self, grace_s: float = 5.0) -> None:
        """Report NOT_SERVING, then stop; calls in flight get ``grace_s`` to finish."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._gateway is not None:
            await self._gateway.stop(grace_s)
            reads = getattr(getattr(self._gateway.backend, "cluster", None), "reads", None)
            if reads is not None:
                reads.close()  # its views of the node's copies, and its scratch folder
            self._gateway = None


def _node_ip(host: str) -> str | None:
    """This node's IP for a gateway bound to every interface; None for a specific host."""
    if host not in ("", "0.0.0.0", "::", "[::]"):
        return None
    import ray

    ip: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
    return ip


def _port_key() -> bytes | None:
    """The key under which this gateway actor remembers its port; None outside a Ray actor."""
    import ray

    if not ray.is_initialized():
        return None
    name = ray.get_runtime_context().get_actor_name()
    return f"petribill/gateway-port/{name}".encode() if name else None


def _remembered_port(key: bytes | None) -> int:
    """The port an earlier process of this actor bound (0: none)."""
    if key is None:
        return 0
    from ray.experimental import internal_kv

    found = internal_kv._internal_kv_get(key)
    return int(found) if found else 0


def _remember_port(key: bytes, port: int) -> None:
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(key, str(port).encode(), overwrite=True)


def gateway_actor_class(**options: Any) -> Any:
    """The Ray actor class of :class:`GatewayActor` — the one place ``ray.remote`` is applied.

    ``options`` go to ``ray.remote`` (e.g. ``num_cpus=0``, ``max_restarts=-1``);
    per-instance options (name, node affinity) are for ``.options(...)``.
    """
    import ray  # imported here so the gateway runs, and is tested, without Ray

    defaults: dict[str, Any] = {"num_cpus": 0, "max_concurrency": 10_000}
    return ray.remote(**{**defaults, **options})(GatewayActor)


def spawn_gateway(
    *,
    node_id: str,
    host: str,
    port: int,
    settings: dict[str, Any],
    limits: Any = None,
    security: SecuritySettings | None = None,
) -> Any:
    """Start the gateway of one Ray node: a grpc.aio server with a Backend inside.

    Give it a fixed ``port`` (not 0): a restarted gateway binds the same one, so the
    address clients know stays good."""
    from functools import partial

    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from actors.remote import NAMESPACE
    from cluster.backend.backend import Backend
    from cluster.gateway.names import gateway_name
    from cluster.logging import process_logging

    return (
        gateway_actor_class()
        .options(
            name=gateway_name(node_id),
            namespace=NAMESPACE,
            lifetime="detached",
            # Ray restarts a dead gateway's process on its node, with the same port;
            # the coordinator's loop then makes it serve (``CoordinatorService``).
            max_restarts=-1,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        )
        .remote(
            partial(Backend.from_settings, settings),
            host=host,
            port=port,
            limits=limits,
            security=security,
            setup=process_logging(settings, f"gateway-{node_id[:12]}"),
        )
    )
