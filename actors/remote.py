"""The one place where petribill classes become Ray actors.

The classes stay plain Python (unit-tested without a cluster); this module
adds what only a running cluster has: names, placement on a node, and the
router's way to peer hosts and the coordinator (:class:`RayTransport`).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.clock import clock_from_settings
from actors.duties import DutyConfig, DutyRunner
from actors.host import Engine, UnitHost
from actors.op import Op
from actors.router import HostUnreachable, UnitRouter
from actors.store.tariffs import current_tariffs_dir

__all__ = [
    "CONTROL_GROUP",
    "COORDINATOR_NAME",
    "LIVENESS_GROUP",
    "NAMESPACE",
    "READS_GROUP",
    "RayTransport",
    "RoutedHost",
    "host_name",
    "spawn_host",
]

NAMESPACE = "petribill"
COORDINATOR_NAME = "petribill-coordinator"
# Queries (UnitHost.read) run on threads of their own, so that they start even
# when every thread of the default group is busy with a write batch.
READS_GROUP = "reads"
_READ_THREADS = 4
# The coordinator's ping runs on a thread of its own that no unit call can take,
# so a host busy with work (a reconcile, a bill run, a full default group) still
# answers at once; docs/operations-notes.md, "Failure detection".
LIVENESS_GROUP = "liveness"
# Placement (open, close, list units) must not queue behind data-plane calls either:
# the coordinator waits for it, and routes are not given out meanwhile.
CONTROL_GROUP = "control"
_CONTROL_THREADS = 2
# The host process runs write batches on several threads that hold the GIL for
# long stretches; a query thread waits for the GIL up to the switch interval at
# each hand-off (Python's default is 5 ms). bench/host_reads.py: lock-free
# queries under ingestion, p99 0.74 ms at 5 ms and 0.28 ms at 0.5 ms.
_SWITCH_INTERVAL_S = 0.0005

R = TypeVar("R")


def host_name(node: str) -> str:
    """The Ray actor name of a node's host."""
    return f"petribill-host-{node}"


class RayTransport:
    """How a router reaches hosts and the coordinator in a Ray cluster (by actor name).

    Handles are cached: a named-actor lookup is a GCS round trip, not a per-call
    cost. A host that fails is looked up again on the next call.
    """

    def __init__(self) -> None:
        self._hosts: dict[str, Any] = {}
        self._coordinator: Any = None

    async def _await(self, ref: Any, timeout_s: float) -> Any:
        return await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout_s)

    async def _host(self, node: str) -> Any:
        handle = self._hosts.get(node)
        if handle is None:
            handle = await asyncio.to_thread(ray.get_actor, host_name(node), namespace=NAMESPACE)
            self._hosts[node] = handle
        return handle

    async def host_call(self, node: str, method: str, *args: Any, timeout_s: float) -> Any:
        try:
            handle = await self._host(node)
            return await self._await(getattr(handle, method).remote(*args), timeout_s)
        except (RayActorError, GetTimeoutError, ValueError) as exc:
            # ValueError: no actor of that name (ray.get_actor); the others: it died.
            self._hosts.pop(node, None)
            raise HostUnreachable(f"host of {node}: {type(exc).__name__}: {exc}") from exc

    async def coordinator_call(self, method: str, *args: Any, timeout_s: float) -> Any:
        try:
            if self._coordinator is None:
                self._coordinator = await asyncio.to_thread(
                    ray.get_actor, COORDINATOR_NAME, namespace=NAMESPACE
                )
            return await self._await(getattr(self._coordinator, method).remote(*args), timeout_s)
        except (RayActorError, GetTimeoutError, ValueError, TimeoutError) as exc:
            self._coordinator = None
            raise HostUnreachable(f"coordinator ({method}): {type(exc).__name__}: {exc}") from exc

    async def routes(self, timeout_s: float) -> dict[str, tuple[str, int]]:
        routes: dict[str, tuple[str, int]] = await self.coordinator_call(
            "routes", timeout_s=timeout_s
        )
        return routes


class RoutedHost(UnitHost):
    """A UnitHost that reaches units on other nodes through the router over Ray."""

    def __init__(
        self,
        *,
        node: str,
        data_dir: str,
        settings: dict[str, Any],
        setup: Callable[[], None] | None = None,
    ) -> None:
        if setup is not None:
            setup()  # the process's logging, given by the control plane, before anything logs
        sys.setswitchinterval(_SWITCH_INTERVAL_S)
        self._settings = settings
        self._tariffs_dir = ""
        self._inner: Any = None
        shards = int(settings["shards"])
        super().__init__(
            node=node,
            data_dir=data_dir,
            shards=shards,
            factory=self._open_engine,
            router=UnitRouter(
                RayTransport(), shards=shards, partitions=int(settings["partitions"])
            ),
            backup_root=settings.get("backup_root"),
        )
        # The time-driven duties of the account shards this host owns (actors.duties).
        self._duties = DutyRunner(
            self, clock=clock_from_settings(settings), config=DutyConfig.from_settings(settings)
        ).start()

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
        from billing.rating import load_catalogue

        catalogue = load_catalogue(tariffs_dir)
        return self.update_engines(kind, lambda engine: engine.set_catalogue(catalogue))

    @ray.method(concurrency_group=READS_GROUP)
    def read(self, unit_id: str, epoch: int, op: Op[R]) -> R:  # type: ignore[override]
        """:meth:`UnitHost.read` on the host's own query threads."""
        return super().read(unit_id, epoch, op)

    @ray.method(concurrency_group=LIVENESS_GROUP)
    def ping(self) -> str:  # type: ignore[override]
        """:meth:`UnitHost.ping` on the liveness thread, which nothing else uses."""
        return super().ping()

    @ray.method(concurrency_group=CONTROL_GROUP)
    def open_unit(self, unit_id: str, epoch: int) -> None:  # type: ignore[override]
        """:meth:`UnitHost.open_unit` on the placement threads."""
        super().open_unit(unit_id, epoch)

    @ray.method(concurrency_group=CONTROL_GROUP)
    def close_unit(self, unit_id: str) -> None:  # type: ignore[override]
        """:meth:`UnitHost.close_unit` on the placement threads."""
        super().close_unit(unit_id)

    @ray.method(concurrency_group=CONTROL_GROUP)
    def units(self) -> dict[str, int]:  # type: ignore[override]
        """:meth:`UnitHost.units` on the placement threads."""
        return super().units()


def spawn_host(
    node: str,
    ray_node_id: str,
    *,
    data_dir: str,
    settings: dict[str, Any],
    setup: Callable[[], None] | None = None,
) -> Any:
    """Start the detached host actor of ``node``, pinned to that Ray node; ``setup`` runs
    first in its process (the control plane passes the logging set-up)."""
    # Concurrency groups are fixed when the class is made remote, not in .options().
    groups = {READS_GROUP: _READ_THREADS, LIVENESS_GROUP: 1, CONTROL_GROUP: _CONTROL_THREADS}
    cls = ray.remote(concurrency_groups=groups)(RoutedHost)  # type: ignore[call-overload]
    return cls.options(
        name=host_name(node),
        namespace=NAMESPACE,
        lifetime="detached",
        max_restarts=0,
        max_concurrency=16,
        num_cpus=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=ray_node_id, soft=False),
    ).remote(node=node, data_dir=data_dir, settings=settings, setup=setup)
