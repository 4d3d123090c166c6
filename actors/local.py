"""Hosts and a coordinator in this process: the router's transport without Ray.

:class:`LocalTransport` reaches plain :class:`~actors.host.UnitHost` objects and
a coordinator object directly, each call on a worker thread (hosts block on
their units' locks and on RocksDB). It is how the whole data plane — router,
hosts, engines on real RocksDB — runs in one process: the gateway and SDK
tests, the request fuzzer, and an embedded cluster
(``cluster.deploy.inprocess``). Errors travel as in Ray: a host's
``StaleRoute`` reaches the router as itself; a node without a host is
:class:`~actors.router.HostUnreachable`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from actors.host import UnitHost
from actors.replication import PeerUnreachable
from actors.router import HostUnreachable

__all__ = ["LocalPeers", "LocalTransport"]


class LocalTransport:
    """Calls hosts (by node name) and the coordinator of this process on threads."""

    def __init__(self, hosts: Mapping[str, UnitHost], coordinator: Any) -> None:
        self.hosts = hosts
        self.coordinator = coordinator

    async def host_call(self, host: str, method: str, *args: Any, timeout_s: float) -> Any:
        # One host per node in one process: a host's key is its node's name (actors.slots).
        target = self.hosts.get(host)
        if target is None:
            raise HostUnreachable(f"no host on {host}")
        call = asyncio.to_thread(getattr(target, method), *args)
        return await asyncio.wait_for(call, timeout_s)

    async def coordinator_call(self, method: str, *args: Any, timeout_s: float) -> Any:
        call = asyncio.to_thread(getattr(self.coordinator, method), *args)
        return await asyncio.wait_for(call, timeout_s)

    async def routes(self, timeout_s: float) -> dict[str, tuple[str, int]]:
        routes: dict[str, tuple[str, int]] = await self.coordinator_call(
            "routes", timeout_s=timeout_s
        )
        return routes


class LocalPeers:
    """How hosts of this process reach each other for replication (``actors.replication.Peers``):
    plain method calls on a thread pool, with the caller's timeout. A node missing from
    ``hosts`` (a test took it away) is :class:`~actors.replication.PeerUnreachable`."""

    def __init__(self, hosts: Mapping[str, UnitHost], *, threads: int = 16) -> None:
        self.hosts = hosts
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="peer")

    def _submit(
        self, node: str, method: str, args: tuple[Any, ...]
    ) -> concurrent.futures.Future[Any]:
        host = self.hosts.get(node)
        if host is None:
            failed: Future[Any] = Future()
            failed.set_exception(PeerUnreachable(f"no host on {node}"))
            return failed
        return self._pool.submit(getattr(host, method), *args)

    def call(self, node: str, method: str, *args: Any, timeout_s: float) -> Any:
        try:
            return self._submit(node, method, args).result(timeout_s)
        except concurrent.futures.TimeoutError:
            raise PeerUnreachable(f"{node}: {method} did not answer in {timeout_s} s") from None

    def call_all(
        self, calls: Sequence[tuple[str, str, tuple[Any, ...]]], *, timeout_s: float
    ) -> list[Any]:
        futures = [self._submit(node, method, args) for node, method, args in calls]
        deadline = time.monotonic() + timeout_s
        answers: list[Any] = []
        for (node, method, _), future in zip(calls, futures, strict=True):
            try:
                answers.append(future.result(max(deadline - time.monotonic(), 0.0)))
            except concurrent.futures.TimeoutError:
                answers.append(PeerUnreachable(f"{node}: {method} did not answer in {timeout_s} s"))
            except Exception as exc:
                answers.append(exc)
        return answers

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
