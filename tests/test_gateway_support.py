"""Support for the gateway and client tests: the real backend and gateways on a loop thread.

The backend is the production one over a whole cluster in this process
(``cluster.deploy.inprocess``: the coordinator, hosts and engines on real
RocksDB, no Ray), wrapped so that tests may script failures, delay and block
calls. What is under test is the gateway and the SDK, over real gRPC on
loopback.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
from collections import Counter
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.message import Message

from cluster.backend.backend import Backend
from cluster.backend.rpcs import Rpc
from cluster.client.calls import method_name
from cluster.deploy.inprocess import InProcessCluster
from cluster.gateway.guard import SecuritySettings
from cluster.gateway.limits import GatewayLimits
from cluster.gateway.server import Gateway

T = TypeVar("T")

TARIFFS = Path(__file__).resolve().parent.parent / "conf" / "tariffs"
#: A time inside the sample catalogue's plans: Tuesday 2026-11-03, 09:20 UTC.
T_NOV = 1_793_700_000


class LoopThread:
    """An asyncio loop on a daemon thread, for servers that tests call synchronously."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def call(self, fn: Any, *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def close(self) -> None:
        if self.loop.is_closed():  # grpc.aio may close it with its last server
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


class HookedBackend(Backend):
    """The real backend over an in-process cluster, with hooks a test can script.

    ``gate`` (an event every call waits on), ``delay_s``, ``failures`` (exceptions the
    next calls of that method raise, in turn, by SDK method name; ``None`` lets one
    through) and a log of ``calls`` (method, request) and their ``timeouts``.
    """

    def __init__(self, cluster: InProcessCluster) -> None:
        super().__init__(cluster.backend().cluster)
        self.in_process = cluster  # its hosts and coordinator, for tests that look inside
        self.gate: asyncio.Event | None = None
        self.delay_s = 0.0
        self.failures: dict[str, list[BaseException | None]] = {}
        self.calls: list[tuple[str, Message]] = []
        self.timeouts: list[float | None] = []
        self.entered = 0
        self.streams_open = 0
        # Engine operations run for the handlers, by operation name.
        self.ops_run: Counter[str] = Counter()
        run = self.cluster.run

        async def counted(unit_id: str, op: Any, *, timeout_s: float) -> Any:
            self.ops_run[op.name] += 1
            return await run(unit_id, op, timeout_s=timeout_s)

        self.cluster.run = counted  # type: ignore[method-assign]

    async def _enter(self, rpc: Rpc, request: Message, timeout_s: float | None) -> None:
        method = method_name(rpc.method)
        self.calls.append((method, request))
        self.timeouts.append(timeout_s)
        self.entered += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        scripted = self.failures.get(method)
        if scripted:
            failure = scripted.pop(0)  # None: this call goes through
            if failure is not None:
                raise failure

    async def call(self, rpc: Rpc, request: Any, timeout_s: float) -> Message:
        await self._enter(rpc, request, timeout_s)
        return await super().call(rpc, request, timeout_s)

    async def stream(
        self, rpc: Rpc, request: Any, timeout_s: float | None
    ) -> AsyncIterator[Message]:
        await self._enter(rpc, request, timeout_s)
        self.streams_open += 1
        try:
            async for item in super().stream(rpc, request, timeout_s):
                yield item
        finally:
            self.streams_open -= 1


def in_process_backend(data_dir: str) -> Backend:
    """A backend over a new in-process cluster in ``data_dir`` (a picklable factory's body:
    ``functools.partial(in_process_backend, folder)``, e.g. for a gateway actor)."""
    return InProcessCluster(Path(data_dir), TARIFFS).start().backend()


@contextmanager
def in_process_cluster(tariffs: Path = TARIFFS, **options: Any) -> Iterator[InProcessCluster]:
    """A cluster of real engines on RocksDB in a temp folder, in this process, rating with
    the catalogue in ``tariffs`` (``options``: those of ``InProcessCluster``)."""
    with tempfile.TemporaryDirectory(prefix="pbgw") as folder:
        cluster = InProcessCluster(Path(folder) / "data", tariffs, **options).start()
        try:
            yield cluster
        finally:
            cluster.close()


@contextmanager
def running_gateways(
    count: int = 1,
    *,
    limits: GatewayLimits | None = None,
    security: SecuritySettings | None = None,
    settings: dict[str, Any] | None = None,
    tariffs: Path = TARIFFS,
) -> Iterator[tuple[LoopThread, HookedBackend, list[Gateway]]]:
    """``count`` gateways on free loopback ports sharing one backend over an in-process
    cluster (with ``settings``, e.g. its backup root or its charging policies, rating
    with the catalogue in ``tariffs``), guarded by ``security`` (tokens, TLS, audit);
    all stopped afterwards."""
    loop = LoopThread()
    with in_process_cluster(tariffs, settings=settings) as cluster:
        backend = HookedBackend(cluster)
        gateways = [
            Gateway(backend, "127.0.0.1", 0, limits, security=security) for _ in range(count)
        ]
        try:
            for gateway in gateways:
                loop.run(gateway.start())
            yield loop, backend, gateways
        finally:
            for gateway in gateways:
                loop.run(gateway.stop(0.5))
            loop.close()
        loop.close()
