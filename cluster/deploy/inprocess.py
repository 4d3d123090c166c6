"""A whole petribill cluster in one process: coordinator, hosts and engines, no Ray.

The same coordinator (with its Petri net), the same hosts and engines on real
RocksDB, the same router and RPC handlers as a Ray cluster; only the transport
differs (:class:`actors.local.LocalTransport`: calls are plain method calls on
worker threads). It starts in well under a second, so the gateway and SDK
tests, and the request fuzzer, run over the real backend rather than a test
double. It is not fault tolerant (one process) and is not what ``petribill up``
starts.

Time-driven work runs here too, on the one ``clock`` the cluster is given (a
:class:`~actors.clock.ManualClock` in tests, moved by hand): each host's duty
runner (``actors.duties``), the coordinator's scheduled bill runs and
inspection, and the handlers' "now".
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from actors.clock import SYSTEM_CLOCK, Clock
from actors.duties import DutyConfig, DutyRunner
from actors.engines import engine_factory
from actors.host import UnitHost
from actors.local import LocalPeers, LocalTransport
from actors.replication import ReplicationSettings
from actors.router import UnitRouter
from actors.store.control_copy import ControlCopy
from actors.store.fencing import StaleEpoch
from cluster.backend.backend import Backend
from cluster.backend.context import Cluster
from cluster.backend.reads import local_reads
from cluster.control.coordinator import UnitOpenError
from cluster.control.service import CoordinatorService

__all__ = ["InProcessCluster", "LocalOps"]


class LocalOps:
    """:class:`~cluster.control.coordinator.ClusterOps` over hosts of this process."""

    def __init__(self, hosts: Mapping[str, UnitHost]) -> None:
        self._hosts = hosts
        self.gateway_list: list[dict[str, str]] = []
        self._control_answers: dict[str, int | BaseException] = {}

    def alive_nodes(self) -> Mapping[str, str]:
        return {node: node for node in self._hosts}

    def host_ok(self, node: str) -> bool:
        return node in self._hosts

    def host_silent_s(self, node: str) -> float:
        return 0.0  # a host of this process answers plain method calls at once

    def open_unit(self, node: str, unit_id: str, epoch: int) -> None:
        try:
            self._hosts[node].open_unit(unit_id, epoch)
        except StaleEpoch as exc:
            raise UnitOpenError(f"{node}: {exc}", stale=True) from exc

    def close_unit(self, node: str, unit_id: str) -> None:
        self._hosts[node].close_unit(unit_id)

    def gateways(self) -> list[dict[str, str]]:
        return list(self.gateway_list)

    # -- replicated units (cluster.control.replicas.ReplicaOps) ---------------------------

    def replica_reports(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {node: host.replica_report() for node, host in list(self._hosts.items())}

    def replica_ready(self, node: str) -> bool:
        return node in self._hosts

    def set_replicas(self, node: str, unit_id: str, epoch: int, followers: dict[str, str]) -> None:
        self._hosts[node].set_replicas(unit_id, epoch, followers)

    def replica_pin(self, node: str, unit_id: str, epoch: int, follower: str) -> bool:
        return self._hosts[node].replica_pin(unit_id, epoch, follower)

    def replica_fence(self, node: str, unit_id: str, epoch: int) -> None:
        self._hosts[node].replica_fence(unit_id, epoch)

    def replica_drop(self, node: str, unit_id: str) -> None:
        self._hosts[node].replica_drop(unit_id)

    def release_unit(self, node: str, unit_id: str) -> None:
        self._hosts[node].close_unit(unit_id)

    def unit_on_disk(self, node: str, unit_id: str) -> int | None:
        return self._hosts[node].unit_on_disk(unit_id)

    def restore_stage(self, node: str, unit_id: str, folder: str) -> dict[str, Any]:
        return asdict(self._hosts[node].restore_stage(unit_id, folder))

    def metrics_urls(self) -> dict[str, str]:
        return {}

    # -- control replicas (cluster.control.mirror.ControlReplicaOps) ----------------------

    def control_send(
        self, node: str, generation: int, state: bytes, events: list[dict[str, Any]]
    ) -> None:
        host = self._hosts.get(node)
        if host is not None:  # a plain call: answered before control_answers asks
            try:
                self._control_answers[node] = host.control_save(generation, state, events)
            except Exception as exc:
                self._control_answers[node] = exc

    def control_in_flight(self, node: str) -> bool:
        return False

    def control_answers(
        self, nodes: Collection[str], needed: int, timeout_s: float
    ) -> dict[str, int | BaseException]:
        answers, self._control_answers = self._control_answers, {}
        return answers

    def control_copies(
        self, nodes: Collection[str], timeout_s: float
    ) -> dict[str, ControlCopy | BaseException]:
        return {node: self._hosts[node].control_copy() for node in nodes if node in self._hosts}

    def control_local_node(self) -> str | None:
        return None  # one process, one disk: no node shares the coordinator's more than another


async def _named(node: str) -> str:
    """The node a gateway of this process stands for (it knows it from the start)."""
    return node


class InProcessCluster:
    """``nodes`` hosts over ``data_dir`` with ``shards`` account shards and ``partitions``
    rating partitions, rating with the catalogue in ``tariffs_dir``.

    Use as a context manager, or :meth:`start` / :meth:`close`; :meth:`backend` is what
    a gateway serves from. ``duties=False`` starts no duty runners (a test then runs
    rounds itself: ``duty_runners[node].run_round()``).
    """

    def __init__(
        self,
        data_dir: Path,
        tariffs_dir: Path,
        *,
        shards: int = 4,
        partitions: int = 2,
        nodes: tuple[str, ...] = ("n0",),
        clock: Clock = SYSTEM_CLOCK,
        settings: Mapping[str, Any] | None = None,
        duties: bool = True,
    ) -> None:
        self.data_dir = data_dir
        self.tariffs_dir = tariffs_dir
        self.clock = clock
        self.settings: dict[str, Any] = {
            "shards": shards,
            "partitions": partitions,
            "data_dir": str(data_dir),
            "tariffs_dir": str(tariffs_dir),
            **(settings or {}),
        }
        self.hosts: dict[str, UnitHost] = {}
        self.ops = LocalOps(self.hosts)
        self.coordinator: CoordinatorService | None = None
        self.transport = LocalTransport(self.hosts, None)
        # Replicated hosts reach each other's follower copies through these.
        self.peers = LocalPeers(self.hosts)
        self._node_names = nodes
        self._factory: Any = None
        self._duties = duties
        self.duty_runners: dict[str, DutyRunner] = {}

    def router(self) -> UnitRouter:
        return UnitRouter(
            self.transport,
            shards=int(self.settings["shards"]),
            partitions=int(self.settings["partitions"]),
        )

    def start(self, timeout_s: float = 30.0) -> InProcessCluster:
        """Start the hosts and the coordinator; return once every unit is served."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._factory = engine_factory(self.settings)
        for node in self._node_names:
            self.add_node(node)
        duty_config = DutyConfig.from_settings(self.settings)
        for node, host in self.hosts.items():
            self.duty_runners[node] = DutyRunner(host, clock=self.clock, config=duty_config)
        self.coordinator = CoordinatorService(
            data_dir=str(self.data_dir),
            settings=self.settings,
            interval_s=0.05,
            ops=self.ops,
            transport=self.transport,
            clock=self.clock,
        )
        self.transport.coordinator = self.coordinator
        deadline = time.monotonic() + timeout_s
        while not self.coordinator.healthy():
            if time.monotonic() > deadline:
                self.close()
                raise TimeoutError(f"units not served within {timeout_s} s")
            time.sleep(0.02)
        if self._duties:
            for runner in self.duty_runners.values():
                runner.start()
        return self

    def add_node(self, node: str) -> UnitHost:
        """Start a host for ``node`` (a new node joins at the coordinator's next round)."""
        mode = str(self.settings.get("storage_mode", "local"))
        host = self.hosts[node] = UnitHost(
            node=node,
            data_dir=str(self.data_dir),
            shards=int(self.settings["shards"]),
            factory=self._factory,
            router=self.router(),
            backup_root=self.settings.get("backup_root"),
            mode=mode,
            peers=self.peers if mode == "replicated" else None,
            replication=ReplicationSettings.of(self.settings),
        )
        return host

    def remove_node(self, node: str) -> UnitHost:
        """Take ``node`` away as a dead node: nothing reaches its host any more (the object
        lives on, like a process that is cut off); returns it."""
        return self.hosts.pop(node)

    def backend(self, reads_node: str | None = None) -> Backend:
        """A backend over this cluster (one per gateway); ``reads_node``: the gateway runs
        on that node and answers queries from its copies there (``cluster.backend.reads``)."""
        router = self.router()
        reads = None
        if reads_node is not None:
            settings = {**self.settings, "local_reads": True}
            reads = local_reads(settings, self.transport, partial(_named, reads_node))
        cluster = Cluster(
            router,
            tariffs_dir=str(self.tariffs_dir),
            clock=self.clock,
            data_dir=str(self.data_dir),
            backup_root=self.settings.get("backup_root"),
            tariffs_root=self.settings.get("tariffs_root"),
            reads=reads,
        )
        return Backend(cluster)

    def close(self) -> None:
        """Stop the duties and the coordinator and close every unit (stores and locks)."""
        for runner in self.duty_runners.values():
            runner.stop()
        self.duty_runners.clear()
        if self.coordinator is not None:
            self.coordinator.stop()
            self.coordinator = None
        for host in self.hosts.values():
            host.close_all()
        self.hosts.clear()
        self.peers.close()

    def __enter__(self) -> InProcessCluster:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()
