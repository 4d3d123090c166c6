"""The one place where petribill classes become Ray actors.

The classes stay plain Python (unit-tested without a cluster); this module
adds what only a running cluster has: names, placement on a node, routing to
peer hosts through the coordinator's map, and retries on stale routes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.host import StaleRoute, UnitHost

__all__ = [
    "COORDINATOR_NAME",
    "NAMESPACE",
    "RoutedHost",
    "gateway_name",
    "host_name",
    "spawn_coordinator",
    "spawn_gateway",
    "spawn_host",
]

NAMESPACE = "petribill"
COORDINATOR_NAME = "petribill-coordinator"
_ROUTE_RETRIES = 20
_ROUTE_BACKOFF_S = 0.05


def host_name(node: str) -> str:
    """The Ray actor name of a node's host."""
    return f"petribill-host-{node}"


class RoutedHost(UnitHost):
    """A UnitHost that reaches shards on other nodes through Ray."""

    def __init__(self, *, node: str, data_dir: str, settings: dict[str, Any]) -> None:
        from actors.engines import engine_factory

        super().__init__(
            node=node,
            data_dir=data_dir,
            shards=int(settings["shards"]),
            factory=engine_factory(settings),
            router=self._remote,
        )
        self._routes: dict[str, tuple[str, int]] = {}
        # Peer hosts by node: a named-actor lookup is a GCS round trip, not a
        # per-batch cost. A peer that failed is looked up again next time.
        self._peers: dict[str, Any] = {}

    def _peer(self, node: str) -> Any:
        peer = self._peers.get(node)
        if peer is None:
            peer = self._peers[node] = ray.get_actor(host_name(node), namespace=NAMESPACE)
        return peer

    def _refresh(self) -> None:
        coordinator = ray.get_actor(COORDINATOR_NAME, namespace=NAMESPACE)
        routes: Any = ray.get(coordinator.routes.remote(), timeout=10)
        self._routes = dict(routes)

    def _remote(self, shard_id: str, method: str, items: Sequence[Any], at_s: int) -> list[Any]:
        """Run host ``method`` for ``shard_id`` on the host that owns it, following takeovers."""
        last: Exception | None = None
        for attempt in range(_ROUTE_RETRIES):
            if attempt or shard_id not in self._routes:
                self._refresh()
            route = self._routes.get(shard_id)
            if route is None:
                time.sleep(_ROUTE_BACKOFF_S)
                continue
            node, epoch = route
            try:
                if node == self.node:
                    local: list[Any] = getattr(self, method)(shard_id, epoch, list(items), at_s)
                    return local
                ref = getattr(self._peer(node), method).remote(shard_id, epoch, list(items), at_s)
                return list(ray.get(ref, timeout=30))
            except (StaleRoute, RayActorError, GetTimeoutError, ValueError) as exc:
                last = exc
                self._peers.pop(node, None)
                time.sleep(_ROUTE_BACKOFF_S * (attempt + 1))
        raise StaleRoute(shard_id, -1, None) from last


def spawn_host(node: str, ray_node_id: str, *, data_dir: str, settings: dict[str, Any]) -> Any:
    """Start the detached host actor of ``node``, pinned to that Ray node."""
    cls = ray.remote(RoutedHost)
    return cls.options(
        name=host_name(node),
        namespace=NAMESPACE,
        lifetime="detached",
        max_restarts=0,
        max_concurrency=16,
        num_cpus=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=ray_node_id, soft=False),
    ).remote(node=node, data_dir=data_dir, settings=settings)


def spawn_coordinator(*, data_dir: str, settings: dict[str, Any], interval_s: float) -> Any:
    """Start (or find) the detached coordinator; Ray restarts it if its process dies."""
    from cluster.coordinator_service import CoordinatorService

    cls = ray.remote(CoordinatorService)
    return cls.options(
        name=COORDINATOR_NAME,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        max_concurrency=8,
        num_cpus=0,
    ).remote(data_dir=data_dir, settings=settings, interval_s=interval_s)


def gateway_name(ray_node_id: str) -> str:
    return f"petribill-gateway-{ray_node_id[:12]}"


def spawn_gateway(
    *, node_id: str, host: str, port: int, settings: dict[str, Any], limits: Any = None
) -> Any:
    """Start the gateway of one Ray node: a grpc.aio server with a RayBackend inside."""
    from functools import partial

    from cluster.backend import RayBackend
    from cluster.gateway.actor import gateway_actor_class

    return (
        gateway_actor_class()
        .options(
            name=gateway_name(node_id),
            namespace=NAMESPACE,
            lifetime="detached",
            max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        )
        .remote(partial(RayBackend.from_settings, settings), host=host, port=port, limits=limits)
    )
