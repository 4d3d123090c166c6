"""Starting and stopping a petribill cluster: the embedded default, or joining a Ray cluster.

``Runtime.start`` brings up (or joins) Ray, starts the coordinator (which
starts a host per node and places the units), waits until every unit is
served, then starts one gateway per node. ``runtime.json`` in the data folder
records what ``petribill down`` needs to stop a detached cluster, and the
settings its actors were built with (a node added later gets the same).
``Runtime.add_node`` starts one more simulated node and its gateway: for
``petribill node add`` and for the chaos harness's replacement nodes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray
import structlog
from ray.exceptions import RayActorError

from actors.remote import COORDINATOR_NAME, NAMESPACE, host_name
from actors.store.files import write_atomic
from cluster.config import ClusterConfig, storage_mode
from cluster.control.service import spawn_coordinator
from cluster.deploy.localray import LOCAL_AUTH_ENV, LocalRay, NodeHandle
from cluster.deploy.loopback import use_loopback
from cluster.gateway.names import gateway_handles

__all__ = [
    "Runtime",
    "RuntimeInfo",
    "StartError",
    "auto_hosts_per_node",
    "hosts_per_node_of",
    "read_info",
]

log = structlog.get_logger("petribill.runtime")

RUNTIME_FILE = "runtime.json"


class StartError(RuntimeError):
    """Raised when the cluster does not become healthy in time; says what is missing."""


@dataclass(slots=True, kw_only=True)
class RuntimeInfo:
    """What a later ``petribill down``, ``node add`` or client needs to find this cluster
    (``settings``: those its actors were built with; empty in a file of an older start)."""

    address: str
    data_dir: str
    gateways: list[str] = field(default_factory=list)
    local_temp_dir: str | None = None
    started_at_s: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)


def connect(info: RuntimeInfo) -> None:
    """Connect this process to the recorded cluster as a driver."""
    if info.local_temp_dir is not None:
        os.environ.update(LOCAL_AUTH_ENV)
    use_loopback(info.local_temp_dir is not None)
    ray.init(address=info.address, namespace=NAMESPACE, log_to_driver=False)


def read_info(data_dir: Path) -> RuntimeInfo | None:
    path = data_dir / RUNTIME_FILE
    if not path.exists():
        return None
    return RuntimeInfo(**json.loads(path.read_text()))


def settings_of(
    config: ClusterConfig,
    *,
    data_dir: Path,
    tariffs_dir: Path,
    mode: str | None = None,
    hosts_per_node: int = 1,
) -> dict[str, Any]:
    """The plain settings every actor is built from (they cross process boundaries);
    ``mode`` is the storage mode the cluster runs in (``config.storage.mode`` or local),
    ``hosts_per_node`` the host processes per node (``"auto"`` already resolved:
    :func:`hosts_per_node_of`)."""
    storage = config.storage
    return {
        "storage_mode": mode or storage.mode or "local",
        "hosts_per_node": hosts_per_node,
        "replication_factor": storage.replication_factor,
        "min_in_sync": storage.min_in_sync,
        "replica_ack_timeout_s": storage.replica_ack_timeout_ms / 1000,
        "replica_lag_max_s": storage.replica_lag_max_ms / 1000,
        "control_replicas": storage.control_replicas,
        "shards": config.sharding.shards,
        "partitions": config.sharding.partitions,
        "data_dir": str(data_dir),
        "tariffs_dir": str(tariffs_dir),
        "cache_entries_max": config.storage.read_cache_entries_max,
        "batch_records_max": config.batch.records_max,
        "local_reads": config.gateway.local_reads,
        "fence_timeout_s": config.storage.takeover_fence_timeout_ms / 1000,
        # The [fraud] rules as a plain table (None: off); actors.engines builds the FraudConfig.
        "fraud": None if config.fraud is None else config.fraud.mapping(),
        # Where client-named paths may lead (None: DATA/backups, and the conf folder).
        "backup_root": _text(config.security.backup_root),
        "tariffs_root": _text(config.security.tariffs_root),
        # The [charging] policies; actors.engines builds the ChargingConfig.
        "charging": config.charging.mapping(),
        # Time-driven work: the shards' duties (actors.duties), the coordinator's bill-run
        # schedule and inspection (cluster.control.duties).
        "session_validity_s": config.charging.session_validity_s,
        "clock_adjustable": config.clock.adjustable,
        "duties": config.duties.model_dump(),
        "bill_runs": config.bill_runs.model_dump(),
        "inspection": config.inspection.model_dump(),
    }


def auto_hosts_per_node(nodes: list[dict[str, Any]]) -> int:
    """``hosts_per_node = "auto"``: the CPUs every node has to itself, from Ray's node
    table — a node's CPU resource divided by the petribill nodes on its machine (simulated
    nodes share one address), the smallest over the alive nodes, at least 1. One value for
    the whole cluster: every router then finds a unit's host from the unit alone."""
    alive = [n for n in nodes if n.get("Alive")]
    per_machine: dict[str, int] = {}
    for node in alive:
        address = str(node.get("NodeManagerAddress", ""))
        per_machine[address] = per_machine.get(address, 0) + 1
    own = [
        float(n.get("Resources", {}).get("CPU", 1.0))
        / per_machine[str(n.get("NodeManagerAddress", ""))]
        for n in alive
    ]
    return max(1, int(min(own, default=1.0)))


def hosts_per_node_of(config: ClusterConfig, nodes: list[dict[str, Any]]) -> int:
    """The cluster's host processes per node: the setting, or "auto" resolved over ``nodes``
    (Ray's node table when the cluster starts)."""
    setting = config.sharding.hosts_per_node
    return auto_hosts_per_node(nodes) if setting == "auto" else setting


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path.absolute())


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`StartError` when ``host:port`` cannot be bound (another process has it,
    or the host is not this machine's): checked before Ray starts, so ``up`` fails in
    milliseconds instead of after the cluster came up without its gateway."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            reason = "in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
            raise StartError(
                f"the gateway cannot listen on {host}:{port}: {reason} "
                "(stop what holds it, or choose another port with --port)"
            ) from None


class Runtime:
    """One running cluster, from this process's point of view."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        data_dir: Path,
        tariffs_dir: Path,
        nodes: int = 1,
        address: str | None = None,
        port: int | None = None,
        gateways: bool = True,
    ) -> None:
        self.config = config
        self.data_dir = data_dir.resolve()
        self.tariffs_dir = tariffs_dir.resolve()
        self._nodes = nodes
        self._address = address
        self._port = config.gateway.port if port is None else port
        self._with_gateways = gateways
        # Replicated with 2+ nodes, local with one, unless cluster.toml says otherwise.
        self.storage_mode = storage_mode(config, nodes=nodes, address=address)
        self.local: LocalRay | None = None
        self.coordinator: Any = None
        self.gateways: dict[str, Any] = {}
        self.info: RuntimeInfo | None = None
        self.attached = False  # attach(): a cluster this object did not start
        self._recorded: dict[str, Any] = {}  # attach(): the settings the cluster runs with
        self._hosts_per_node: int | None = None  # settings(): resolved at the first call

    @classmethod
    def attach(cls, config: ClusterConfig, data_dir: Path) -> Runtime:
        """The running cluster recorded in ``data_dir`` (``petribill up --detach``), as a
        driver: gateways, coordinator and, for a local cluster, its nodes' processes.
        :meth:`stop` only disconnects; the cluster goes on."""
        info = read_info(data_dir)
        if info is None:
            raise StartError(f"no cluster recorded in {data_dir}/{RUNTIME_FILE}")
        self = cls(config, data_dir=data_dir, tariffs_dir=data_dir, address=info.address)
        connect(info)
        self.attached = True
        self.info = info
        if info.settings:
            self._recorded = dict(info.settings)
            self.storage_mode = str(info.settings["storage_mode"])
        if info.local_temp_dir is not None:
            self.local = LocalRay.reattach(
                temp_dir=Path(info.local_temp_dir), address=info.address, config=config
            )
        self.coordinator = ray.get_actor(COORDINATOR_NAME, namespace=NAMESPACE)
        by_prefix = {n["NodeID"][:12]: n["NodeID"] for n in ray.nodes()}  # type: ignore[no-untyped-call]
        for prefix, handle in gateway_handles().items():
            if prefix in by_prefix:
                self.gateways[by_prefix[prefix]] = handle
        return self

    def start(self, *, timeout_s: float = 120.0) -> RuntimeInfo:
        """Start (or join) Ray and petribill's actors. If a start of a local Ray fails,
        that Ray is stopped again, so a failed start leaves no processes behind (a
        joined cluster is left as it is)."""
        try:
            return self._start(timeout_s)
        except BaseException:
            if self.local is not None:
                if ray.is_initialized():
                    with contextlib.suppress(Exception):
                        stop_cluster_actors()
                ray.shutdown()
                self.local.shutdown()
            raise

    def _start(self, timeout_s: float) -> RuntimeInfo:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._address is None:
            self.local = LocalRay(self._nodes, config=self.config).start()
            address = self.local.address
            os.environ.update(LOCAL_AUTH_ENV)
        else:
            address = self._address
        use_loopback(self.local is not None)
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
        settings = self.settings()
        self.coordinator = spawn_coordinator(
            data_dir=str(self.data_dir), settings=settings, interval_s=0.2
        )
        self.wait_healthy(timeout_s)
        if self._with_gateways:
            self._start_gateways(settings, timeout_s)
        self.info = RuntimeInfo(
            address=address,
            data_dir=str(self.data_dir),
            gateways=sorted(self.gateway_addresses()),
            local_temp_dir=None if self.local is None else str(self.local.temp_dir),
            started_at_s=time.time(),
            settings=settings,
        )
        self._write_info()
        log.info("cluster_up", address=address, gateways=self.info.gateways)
        return self.info

    def _write_info(self) -> None:
        assert self.info is not None
        write_atomic(self.data_dir / RUNTIME_FILE, json.dumps(asdict(self.info), indent=1).encode())

    def settings(self) -> dict[str, Any]:
        """The settings of this cluster's actors: those recorded when it started (an
        attached cluster), else :func:`settings_of` in its storage mode."""
        if self._recorded:
            return dict(self._recorded)
        if self._hosts_per_node is None:  # resolved once, from the nodes at the start
            self._hosts_per_node = hosts_per_node_of(self.config, ray.nodes())  # type: ignore[no-untyped-call]
        return settings_of(
            self.config,
            data_dir=self.data_dir,
            tariffs_dir=self.tariffs_dir,
            mode=self.storage_mode,
            hosts_per_node=self._hosts_per_node,
        )

    def wait_healthy(self, timeout_s: float) -> None:
        """Until every unit is served and can acknowledge writes (replicated: each has
        enough followers in sync), or :class:`StartError`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._coordinator_call("writable", timeout_s):
                return
            time.sleep(0.1)
        status = self.status()
        # Said only at the end: a refusal for a node that does not answer yet may end
        # when it does (a host slow to start), and the coordinator tries every round.
        _refused(status)
        missing = [u["unit"] for u in status["units"] if u["state"] != "owned"]
        raise StartError(f"units not served after {timeout_s:.0f} s: {missing}")

    def _start_gateways(self, settings: dict[str, Any], timeout_s: float) -> None:
        head = ray.get_runtime_context().get_node_id()
        alive = [n for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]
        alive.sort(key=lambda n: n["NodeID"] != head)  # the head's gateway takes the port
        for index, node in enumerate(alive):
            self._spawn_gateway(node["NodeID"], self._port if index == 0 else 0, settings)
        ready = [g.start.remote() for g in self.gateways.values()]
        ray.get(ready, timeout=timeout_s)

    def _spawn_gateway(self, node_id: str, port: int, settings: dict[str, Any]) -> Any:
        """Spawn the gateway of Ray node ``node_id`` (not started yet) and keep its handle."""
        from cluster.gateway.actor import spawn_gateway
        from cluster.gateway.guard import SecuritySettings
        from cluster.gateway.limits import GatewayLimits

        handle = spawn_gateway(
            node_id=node_id,
            host=self.config.gateway.host,
            port=port,
            settings=settings,
            limits=GatewayLimits.from_config(self.config),
            security=SecuritySettings.from_config(self.config.security, data_dir=self.data_dir),
        )
        self.gateways[node_id] = handle
        return handle

    def add_node(self, *, timeout_s: float = 120.0) -> tuple[NodeHandle, str]:
        """Start one more simulated node (``LocalRay.add_node``: a folder and ports of its
        own) and its gateway on a free port; returns the node and the gateway's address.

        The coordinator sees the node at its next round, starts its host and places
        copies on it (:meth:`wait_node`). Only a local cluster can be grown so: on
        real machines a node joins with ``ray start --address=...``.
        """
        if self.local is None:
            raise StartError(
                "only a local cluster (petribill up --nodes N) can be given a simulated "
                "node; on another machine run `ray start --address=HEAD:PORT` instead"
            )
        handle = self.local.add_node()
        gateway = self._spawn_gateway(handle.node_id, 0, self.settings())
        address: str = ray.get(gateway.start.remote(), timeout=timeout_s)
        if self.info is not None:  # a client reading runtime.json finds the new gateway
            self.info.gateways = sorted({*self.info.gateways, address})
            self._write_info()
        log.info("node_added", node=handle.name, gateway=address)
        return handle, address

    def wait_node(self, node: str, timeout_s: float) -> dict[str, Any]:
        """Until the coordinator counts ``node`` alive and every unit that is not lost is
        served with its copies (:func:`copies_complete`: followers a lost node held are
        placed again, on ``node`` among others); returns the coordinator's status then,
        or raises :class:`StartError`."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.status(timeout_s=timeout_s)
            alive = any(n["node"] == node and n["status"] == "alive" for n in status["nodes"])
            if alive and copies_complete(status):
                return status
            if time.monotonic() > deadline:
                what = "has not placed every copy yet" if alive else f"has not seen {node} join"
                raise StartError(f"after {timeout_s:.0f} s the coordinator {what}")
            time.sleep(0.2)

    def gateway_addresses(self) -> list[str]:
        if not self.gateways:
            return []
        return list(ray.get([g.address.remote() for g in self.gateways.values()], timeout=30))

    def status(self, *, timeout_s: float = 60.0) -> dict[str, Any]:
        """The coordinator's status, waiting out a coordinator restart."""
        return dict(self._coordinator_call("status", timeout_s))

    def _coordinator_call(self, method: str, timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return ray.get(getattr(self.coordinator, method).remote(), timeout=30)
            except RayActorError:  # restarting (ActorUnavailableError) or gone
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        """Stop gateways, coordinator and hosts (closing every store), then Ray; an
        attached cluster is only disconnected from."""
        if self.attached:
            ray.shutdown()
            return
        stop_cluster_actors()
        ray.shutdown()
        if self.local is not None:
            self.local.shutdown()
        (self.data_dir / RUNTIME_FILE).unlink(missing_ok=True)
        log.info("cluster_down", data_dir=str(self.data_dir))


def _refused(status: dict[str, Any]) -> None:
    """Raise :class:`StartError` if the coordinator refused to start: its control state
    is gone and the nodes' replicas could not rebuild it (nothing is served then)."""
    refused = status.get("control", {}).get("error")
    if refused:
        raise StartError(f"the coordinator did not start: {refused}")


def copies_complete(status: dict[str, Any]) -> bool:
    """Whether every unit of a coordinator's status that is not lost is owned and (when
    replicated) has RF−1 in-sync followers: all a new node can help with (a lost unit
    waits for ``petribill restore``)."""
    factor = int(status.get("replication_factor") or 1)
    return all(
        unit["state"] == "lost"
        or (unit["state"] == "owned" and len(unit.get("isr", ())) >= factor - 1)
        for unit in status["units"]
    )


def stop_cluster_actors() -> None:
    """Gracefully end petribill's detached actors in the connected Ray cluster."""
    for gateway in _named(prefix="petribill-gateway-"):
        _quiet(lambda g=gateway: ray.get(g.stop.remote(), timeout=10))
        ray.kill(gateway)
    try:
        coordinator = ray.get_actor(COORDINATOR_NAME, namespace=NAMESPACE)
        _quiet(lambda: ray.get(coordinator.stop.remote(), timeout=10))
        ray.kill(coordinator, no_restart=True)
    except ValueError:
        pass
    for host in _named(prefix=host_name("")):
        _quiet(lambda h=host: ray.get(h.close_all.remote(), timeout=30))
        ray.kill(host)


def _named(*, prefix: str) -> list[Any]:
    handles = []
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == NAMESPACE and actor["name"].startswith(prefix):
            handles.append(ray.get_actor(actor["name"], namespace=NAMESPACE))
    return handles


def _quiet(step: Any) -> None:
    try:
        step()
    except Exception as exc:  # stopping must go on past a dead actor
        log.warning("stop_step_failed", error=f"{type(exc).__name__}: {exc}")


def stop_detached(data_dir: Path, config: ClusterConfig) -> bool:
    """``petribill down``: stop the cluster recorded in ``data_dir``; False if none."""
    info = read_info(data_dir)
    if info is None:
        return False
    try:
        connect(info)
        stop_cluster_actors()
    except Exception as exc:
        log.warning("cluster_unreachable", address=info.address, error=str(exc))
    finally:
        ray.shutdown()
    if info.local_temp_dir is not None:
        LocalRay.reattach(
            temp_dir=Path(info.local_temp_dir), address=info.address, config=config
        ).shutdown()
    (data_dir / RUNTIME_FILE).unlink(missing_ok=True)
    return True
