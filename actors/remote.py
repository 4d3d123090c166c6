"""The one place where petribill classes become Ray actors.

The classes stay plain Python (unit-tested without a cluster); this module
adds what only a running cluster has: names, placement on a node, and the
router's way to peer hosts and the coordinator (:class:`RayTransport`).
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.clock import clock_from_settings
from actors.duties import DutyConfig, DutyRunner
from actors.host import Engine, UnitHost
from actors.op import Op
from actors.replication import PeerUnreachable, ReplicationSettings
from actors.router import HostUnreachable, UnitRouter
from actors.slots import host_key, node_hosts, unit_host
from actors.store.backup import UnitBackup
from actors.store.control_copy import ControlCopy
from actors.store.replica import CopyState
from actors.store.tariffs import current_tariffs_dir

__all__ = [
    "CONTROL_GROUP",
    "CONTROL_STATE_GROUP",
    "COORDINATOR_NAME",
    "INNER_GROUP",
    "LIVENESS_GROUP",
    "NAMESPACE",
    "READS_GROUP",
    "REPLICAS_GROUP",
    "REPLICA_CONTROL_GROUP",
    "RayPeers",
    "RayTransport",
    "RoutedHost",
    "host_name",
    "host_pids",
    "spawn_host",
]

NAMESPACE = "petribill"
COORDINATOR_NAME = "petribill-coordinator"
# Queries (UnitHost.read) run on threads of their own, so that they start even
# when every thread of the default group is busy with a write batch.
READS_GROUP = "reads"
_READ_THREADS = 4
# Follower calls (a primary elsewhere shipping a batch) and the coordinator's replica
# calls run on threads of their own: a primary's call waits for its followers' answers,
# so if they queued behind the default group, two hosts whose threads all wait on each
# other's followers would stall until the acknowledgement timeout.
REPLICAS_GROUP = "replicas"
_REPLICA_THREADS = 6
# The coordinator's calls about replication (a primary's followers, pins, reports) get
# threads of their own too, so they never queue behind follower calls.
REPLICA_CONTROL_GROUP = "replica_control"
_REPLICA_CONTROL_THREADS = 2
# Calls a host makes into units on other hosts (a partition's claims and its charges
# on account shards, a shard's sponsor forwards) run there on threads of their own.
# The caller holds its unit's lock while it waits for them: were they queued behind
# the default group, two hosts whose default threads all wait, on unit locks held by
# such callers or in such calls, would stall each other until the call's timeout
# (seen with 2 nodes under 8 concurrent 1,000-record usage batches: every thread busy,
# no claim ever answered).
INNER_GROUP = "inner"
_INNER_THREADS = 8
# The coordinator's ping runs on a thread of its own that no unit call can take,
# so a host busy with work (a reconcile, a bill run, a full default group) still
# answers at once; docs/operations-notes.md, "Failure detection".
LIVENESS_GROUP = "liveness"
# Placement (open, close, list units) must not queue behind data-plane calls either:
# the coordinator waits for it, and routes are not given out meanwhile.
CONTROL_GROUP = "control"
_CONTROL_THREADS = 2
# The coordinator's saves to this node's control replica (and the read of it when the
# coordinator rebuilds its own copy): a thread no unit call, replica batch or placement
# can take, so a busy host holds a save up for the length of an fsync, not of a batch.
CONTROL_STATE_GROUP = "control_state"
# The host process runs write batches on several threads that hold the GIL for
# long stretches; a query thread waits for the GIL up to the switch interval at
# each hand-off (Python's default is 5 ms). bench/host_reads.py: lock-free
# queries under ingestion, p99 0.74 ms at 5 ms and 0.28 ms at 0.5 ms.
_SWITCH_INTERVAL_S = 0.0005

R = TypeVar("R")


def host_name(host: str) -> str:
    """The Ray actor name of a host process, by its key (:mod:`actors.slots`): a node's
    name for its slot 0, so one host per node is named as it always was."""
    return f"petribill-host-{host}"


def host_pids(node: str, hosts_per_node: int, *, timeout_s: float = 30.0) -> dict[int, int]:
    """Slot -> process id of each of ``node``'s host processes that answers (a driver's
    call: chaos faults and tests kill or pause exactly one of them)."""
    refs: dict[int, Any] = {}
    for slot, key in enumerate(node_hosts(node, hosts_per_node)):
        try:
            refs[slot] = ray.get_actor(host_name(key), namespace=NAMESPACE).pid.remote()
        except ValueError:  # not started (yet), or gone
            continue
    pids: dict[int, int] = {}
    for slot, ref in refs.items():
        try:
            pids[slot] = int(ray.get(ref, timeout=timeout_s))
        except (RayActorError, GetTimeoutError):
            continue
    return pids


class RayTransport:
    """How a router reaches hosts and the coordinator in a Ray cluster (by actor name,
    from the host key the router gives: it knows the unit's slot, this does not guess).

    Handles are cached: a named-actor lookup is a GCS round trip, not a per-call
    cost. A host that fails is looked up again on the next call.
    """

    def __init__(self, *, inner: bool = False) -> None:
        """``inner``: the transport of a host's own router, whose ``run`` calls go to the
        other hosts' :data:`INNER_GROUP` threads (``run_inner``)."""
        self._hosts: dict[str, Any] = {}
        self._coordinator: Any = None
        self._inner = inner

    async def _await(self, ref: Any, timeout_s: float) -> Any:
        return await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout_s)

    async def _host(self, host: str) -> Any:
        handle = self._hosts.get(host)
        if handle is None:
            handle = await asyncio.to_thread(ray.get_actor, host_name(host), namespace=NAMESPACE)
            self._hosts[host] = handle
        return handle

    async def host_call(self, host: str, method: str, *args: Any, timeout_s: float) -> Any:
        if self._inner and method == "run":
            method = "run_inner"
        try:
            handle = await self._host(host)
            return await self._await(getattr(handle, method).remote(*args), timeout_s)
        except (RayActorError, GetTimeoutError, ValueError) as exc:
            # ValueError: no actor of that name (ray.get_actor); the others: it died.
            self._hosts.pop(host, None)
            raise HostUnreachable(f"host {host}: {type(exc).__name__}: {exc}") from exc

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


class RayPeers:
    """How a host reaches other nodes' hosts for replication (``actors.replication.Peers``):
    Ray actor calls by name, handles cached; a gone or silent host is
    :class:`~actors.replication.PeerUnreachable`.

    Every replica call names its unit first (``replica_apply(unit_id, ...)``): the copy
    of that unit on a node is kept by the unit's slot there (:mod:`actors.slots`)."""

    def __init__(self, hosts_per_node: int = 1) -> None:
        self._handles: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._hosts_per_node = hosts_per_node

    def _key(self, node: str, args: Sequence[Any]) -> str:
        return unit_host(node, str(args[0]), self._hosts_per_node)

    def _handle(self, host: str) -> Any:
        with self._lock:
            handle = self._handles.get(host)
        if handle is None:
            try:
                handle = ray.get_actor(host_name(host), namespace=NAMESPACE)
            except ValueError as exc:
                raise PeerUnreachable(f"no host {host}") from exc
            with self._lock:
                self._handles[host] = handle
        return handle

    def _unreachable(self, host: str, exc: BaseException) -> PeerUnreachable:
        with self._lock:
            self._handles.pop(host, None)
        return PeerUnreachable(f"host {host}: {type(exc).__name__}: {exc}")

    def call(self, node: str, method: str, *args: Any, timeout_s: float) -> Any:
        host = self._key(node, args)
        try:
            ref = getattr(self._handle(host), method).remote(*args)
            return ray.get(ref, timeout=timeout_s)
        except (RayActorError, GetTimeoutError) as exc:
            raise self._unreachable(host, exc) from exc

    def call_all(
        self, calls: Sequence[tuple[str, str, tuple[Any, ...]]], *, timeout_s: float
    ) -> list[Any]:
        refs: list[Any] = []
        hosts = [self._key(node, args) for node, _, args in calls]
        for host, (_, method, args) in zip(hosts, calls, strict=True):
            try:
                refs.append(getattr(self._handle(host), method).remote(*args))
            except PeerUnreachable as exc:
                refs.append(exc)
        pending = [r for r in refs if not isinstance(r, BaseException)]
        ready = (
            set(ray.wait(pending, num_returns=len(pending), timeout=timeout_s)[0])
            if pending
            else set()
        )
        answers: list[Any] = []
        for host, (_, method, _), ref in zip(hosts, calls, refs, strict=True):
            if isinstance(ref, BaseException):
                answers.append(ref)
            elif ref not in ready:
                answers.append(
                    self._unreachable(host, TimeoutError(f"{method}: no answer in {timeout_s} s"))
                )
            else:
                try:
                    answers.append(ray.get(ref))
                except RayActorError as exc:
                    answers.append(self._unreachable(host, exc))
                except Exception as exc:  # the follower's own refusal (fenced, gap)
                    answers.append(exc)
        return answers


class RoutedHost(UnitHost):
    """A UnitHost that reaches units on other nodes through the router over Ray; one of
    its node's ``hosts_per_node`` host processes (``slot``), over the node's folder."""

    def __init__(
        self,
        *,
        node: str,
        data_dir: str,
        settings: dict[str, Any],
        setup: Callable[[], None] | None = None,
        slot: int = 0,
    ) -> None:
        if setup is not None:
            setup()  # the process's logging, given by the control plane, before anything logs
        sys.setswitchinterval(_SWITCH_INTERVAL_S)
        self._settings = settings
        self._tariffs_dir = ""
        self._inner: Any = None
        shards = int(settings["shards"])
        hosts_per_node = int(settings.get("hosts_per_node", 1))
        self.slot = slot
        super().__init__(
            node=node,
            data_dir=data_dir,
            shards=shards,
            factory=self._open_engine,
            router=UnitRouter(
                RayTransport(inner=True),
                shards=shards,
                partitions=int(settings["partitions"]),
                hosts_per_node=hosts_per_node,
            ),
            backup_root=settings.get("backup_root"),
            mode=str(settings.get("storage_mode", "local")),
            peers=RayPeers(hosts_per_node),
            replication=ReplicationSettings.of(settings),
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

    @ray.method(concurrency_group=INNER_GROUP)
    def run_inner(self, unit_id: str, epoch: int, op: Op[R]) -> R:
        """:meth:`UnitHost.run` for a call from another host (see :data:`INNER_GROUP`)."""
        return super().run(unit_id, epoch, op)

    @ray.method(concurrency_group=READS_GROUP)
    def read(self, unit_id: str, epoch: int, op: Op[R]) -> R:  # type: ignore[override]
        """:meth:`UnitHost.read` on the host's own query threads."""
        return super().read(unit_id, epoch, op)

    # -- replication, on the replicas group (see REPLICAS_GROUP) --------------------------

    @ray.method(concurrency_group=REPLICAS_GROUP)
    def replica_attach(self, unit_id: str, epoch: int) -> CopyState:  # type: ignore[override]
        return super().replica_attach(unit_id, epoch)

    @ray.method(concurrency_group=REPLICAS_GROUP)
    def replica_apply(self, unit_id: str, epoch: int, seq: int, payload: bytes) -> int:  # type: ignore[override]
        return super().replica_apply(unit_id, epoch, seq, payload)

    @ray.method(concurrency_group=REPLICAS_GROUP)
    def replica_stage(  # type: ignore[override]
        self, unit_id: str, epoch: int, token: str, name: str, offset: int, data: bytes
    ) -> None:
        super().replica_stage(unit_id, epoch, token, name, offset, data)

    @ray.method(concurrency_group=REPLICAS_GROUP)
    def replica_install(self, unit_id: str, epoch: int, token: str, seq: int) -> CopyState:  # type: ignore[override]
        return super().replica_install(unit_id, epoch, token, seq)

    @ray.method(concurrency_group=REPLICAS_GROUP)
    def replica_fence(self, unit_id: str, epoch: int) -> None:  # type: ignore[override]
        super().replica_fence(unit_id, epoch)

    @ray.method(concurrency_group=REPLICAS_GROUP)
    def replica_drop(self, unit_id: str) -> None:  # type: ignore[override]
        super().replica_drop(unit_id)

    @ray.method(concurrency_group=REPLICAS_GROUP)
    def replica_copies(self) -> dict[str, CopyState]:  # type: ignore[override]
        return super().replica_copies()

    @ray.method(concurrency_group=REPLICA_CONTROL_GROUP)
    def unit_on_disk(self, unit_id: str) -> int | None:  # type: ignore[override]
        return super().unit_on_disk(unit_id)

    @ray.method(concurrency_group=REPLICA_CONTROL_GROUP)
    def set_replicas(self, unit_id: str, epoch: int, followers: dict[str, str]) -> None:  # type: ignore[override]
        super().set_replicas(unit_id, epoch, followers)

    @ray.method(concurrency_group=REPLICA_CONTROL_GROUP)
    def replica_pin(self, unit_id: str, epoch: int, node: str) -> bool:  # type: ignore[override]
        return super().replica_pin(unit_id, epoch, node)

    @ray.method(concurrency_group=REPLICA_CONTROL_GROUP)
    def replica_report(self) -> dict[str, dict[str, Any]]:  # type: ignore[override]
        return super().replica_report()

    # -- the control replica (see CONTROL_STATE_GROUP) ------------------------------------

    @ray.method(concurrency_group=CONTROL_STATE_GROUP)
    def control_save(self, generation: int, state: bytes, events: list[dict[str, Any]]) -> int:  # type: ignore[override]
        return super().control_save(generation, state, events)

    @ray.method(concurrency_group=CONTROL_STATE_GROUP)
    def control_copy(self) -> ControlCopy:  # type: ignore[override]
        return super().control_copy()

    # -- liveness and placement (see LIVENESS_GROUP, CONTROL_GROUP) -------------------------

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
    def restore_stage(self, unit_id: str, folder: str) -> UnitBackup:  # type: ignore[override]
        """:meth:`UnitHost.restore_stage` on the placement threads."""
        return super().restore_stage(unit_id, folder)

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
    slot: int = 0,
) -> Any:
    """Start the detached host actor ``slot`` of ``node``, pinned to that Ray node;
    ``setup`` runs first in its process (the control plane passes the logging set-up)."""
    # Concurrency groups are fixed when the class is made remote, not in .options().
    groups = {
        READS_GROUP: _READ_THREADS,
        LIVENESS_GROUP: 1,
        CONTROL_GROUP: _CONTROL_THREADS,
        INNER_GROUP: _INNER_THREADS,
        REPLICAS_GROUP: _REPLICA_THREADS,
        REPLICA_CONTROL_GROUP: _REPLICA_CONTROL_THREADS,
        CONTROL_STATE_GROUP: 1,
    }
    cls = ray.remote(concurrency_groups=groups)(RoutedHost)  # type: ignore[call-overload]
    return cls.options(
        name=host_name(host_key(node, slot)),
        namespace=NAMESPACE,
        lifetime="detached",
        max_restarts=0,
        max_concurrency=16,
        num_cpus=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=ray_node_id, soft=False),
    ).remote(node=node, data_dir=data_dir, settings=settings, setup=setup, slot=slot)
