"""The one place where petribill classes become Ray actors.

The classes stay plain Python (unit-tested without a cluster); this module
adds what only a running cluster has: names, placement on a node, routing to
peer hosts through the coordinator's map, and retries on stale routes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.host import Engine, StaleRoute, UnitHost
from actors.store.tariffs import current_tariffs_dir

__all__ = [
    "COORDINATOR_NAME",
    "NAMESPACE",
    "READS_GROUP",
    "RoutedHost",
    "host_name",
    "spawn_host",
]

NAMESPACE = "petribill"
COORDINATOR_NAME = "petribill-coordinator"
_ROUTE_RETRIES = 20
_ROUTE_BACKOFF_S = 0.05
# Queries (UnitHost.read) run on threads of their own, so that they start even
# when every thread of the default group is busy with a write batch.
READS_GROUP = "reads"
_READ_THREADS = 4
# The host process runs write batches on several threads that hold the GIL for
# long stretches; a query thread waits for the GIL up to the switch interval at
# each hand-off (Python's default is 5 ms). bench/host_reads.py: lock-free
# queries under ingestion, p99 0.74 ms at 5 ms and 0.28 ms at 0.5 ms.
_SWITCH_INTERVAL_S = 0.0005


def host_name(node: str) -> str:
    """The Ray actor name of a node's host."""
    return f"petribill-host-{node}"


class RoutedHost(UnitHost):
    """A UnitHost that reaches shards on other nodes through Ray."""

    def __init__(self, *, node: str, data_dir: str, settings: dict[str, Any]) -> None:
        sys.setswitchinterval(_SWITCH_INTERVAL_S)
        self._settings = settings
        self._tariffs_dir = ""
        self._inner: Any = None
        super().__init__(
            node=node,
            data_dir=data_dir,
            shards=int(settings["shards"]),
            factory=self._open_engine,
            router=self._remote,
        )
        self._routes: dict[str, tuple[str, int]] = {}
        # Peer hosts by node: a named-actor lookup is a GCS round trip, not a
        # per-batch cost. A peer that failed is looked up again next time.
        self._peers: dict[str, Any] = {}

    def _open_engine(
        self, unit_id: str, path: Path, epoch: int, /, *, resume: bool = False
    ) -> Engine:
        """Open a unit with the catalogue in force for the data dir (the last one
        LoadTariffs persisted there, else the configured one), so a takeover or a new
        node rates and charges as the units already running do."""
        from actors.engines import engine_factory

        tariffs_dir = current_tariffs_dir(self._data_dir, self._settings["tariffs_dir"])
        if tariffs_dir != self._tariffs_dir or self._inner is None:
            self._inner = engine_factory({**self._settings, "tariffs_dir": tariffs_dir})
            self._tariffs_dir = tariffs_dir
        return self._inner(unit_id, path, epoch, resume=resume)  # type: ignore[no-any-return]

    def load_catalogue(self, tariffs_dir: str, kind: str) -> list[str]:
        """Rate (partitions) or charge (account shards) with the catalogue in
        ``tariffs_dir`` from each unit's next call on; returns the units switched."""
        from billing.bundles import CatalogueTariff
        from billing.rating import load_catalogue

        catalogue = load_catalogue(tariffs_dir)
        if kind == "partition":
            return self.update_engines(kind, lambda engine: engine.set_catalogue(catalogue))
        tariff = CatalogueTariff(catalogue)

        def switch(engine: Any) -> None:
            # AccountShard reads both on every call; it has no setter of its own yet.
            engine.tariff = tariff
            engine.catalogue = catalogue

        return self.update_engines(kind, switch)

    @ray.method(concurrency_group=READS_GROUP)
    def read(self, unit_id: str, epoch: int, method: str, *args: Any, **kwargs: Any) -> Any:
        """:meth:`UnitHost.read` on the host's own query threads."""
        return super().read(unit_id, epoch, method, *args, **kwargs)

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
    # Concurrency groups are fixed when the class is made remote, not in .options().
    cls = ray.remote(concurrency_groups={READS_GROUP: _READ_THREADS})(RoutedHost)  # type: ignore[call-overload]
    return cls.options(
        name=host_name(node),
        namespace=NAMESPACE,
        lifetime="detached",
        max_restarts=0,
        max_concurrency=16,
        num_cpus=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=ray_node_id, soft=False),
    ).remote(node=node, data_dir=data_dir, settings=settings)
