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
from collections.abc import Mapping
from typing import Any

from actors.host import UnitHost
from actors.router import HostUnreachable

__all__ = ["LocalTransport"]


class LocalTransport:
    """Calls hosts (by node name) and the coordinator of this process on threads."""

    def __init__(self, hosts: Mapping[str, UnitHost], coordinator: Any) -> None:
        self.hosts = hosts
        self.coordinator = coordinator

    async def host_call(self, node: str, method: str, *args: Any, timeout_s: float) -> Any:
        host = self.hosts.get(node)
        if host is None:
            raise HostUnreachable(f"no host on {node}")
        return await asyncio.wait_for(asyncio.to_thread(getattr(host, method), *args), timeout_s)

    async def coordinator_call(self, method: str, *args: Any, timeout_s: float) -> Any:
        call = asyncio.to_thread(getattr(self.coordinator, method), *args)
        return await asyncio.wait_for(call, timeout_s)

    async def routes(self, timeout_s: float) -> dict[str, tuple[str, int]]:
        routes: dict[str, tuple[str, int]] = await self.coordinator_call(
            "routes", timeout_s=timeout_s
        )
        return routes
