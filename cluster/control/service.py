"""The coordinator as a long-running service: a loop thread around :class:`Coordinator`.

Runs inside a detached, named, restartable Ray actor (:func:`spawn_coordinator`),
or in one process with the hosts (``cluster.deploy.inprocess``): what it
observes and drives is its :class:`~cluster.control.coordinator.ClusterOps`.
Its durable state is the coordinator's (control/state.json); a restarted
service reloads it and carries on, so killing the coordinator loses nothing.

Beside the loop, a second thread runs the coordinator's time-driven work
(scheduled bill runs, the automatic inspection: ``cluster.control.duties``) on
the service's clock, so neither ever delays a failover.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import structlog

from actors import metrics
from actors.clock import Clock, clock_from_settings
from actors.remote import COORDINATOR_NAME, NAMESPACE, RayTransport
from actors.router import Transport, UnitRouter
from actors.slots import slot_of
from actors.store.backup import BackupRefused, RestoreRefused
from actors.store.tariffs import current_tariffs_dir
from billing.rating import load_catalogue
from cluster.control.coordinator import ClusterOps, Coordinator
from cluster.control.duties import CoordinatorDuties, InspectionSettings, OwnRoutes
from cluster.control.ray_ops import RayOps
from cluster.control.schedule import BillSchedule
from cluster.control.state import StaleCoordinator
from cluster.logging import process_logging

__all__ = ["CoordinatorService", "spawn_coordinator"]

log = structlog.get_logger("petribill.coordinator")

#: The resource Ray gives its head node only: asking for a sliver of it pins an actor there.
HEAD_RESOURCE = "node:__internal_head__"

#: How often the loop wakes gateways that Ray restarted (and looks for them).
GATEWAY_CHECK_S = 1.0


class CoordinatorService:
    """Reconciles every ``interval_s``; answers routes and status meanwhile."""

    def __init__(
        self,
        *,
        data_dir: str,
        settings: dict[str, Any],
        interval_s: float = 0.2,
        ops: ClusterOps | None = None,
        setup: Callable[[], None] | None = None,
        transport: Transport | None = None,
        clock: Clock | None = None,
    ) -> None:
        if setup is not None:
            setup()  # the process's logging (the Ray shell passes it), before anything logs
        # In a Ray actor, a coordinator found stale ends its process (see _loop).
        self._exit_when_stale = ops is None
        self._ops = ops if ops is not None else RayOps(data_dir=data_dir, settings=settings)
        replicated = settings.get("storage_mode") == "replicated"
        self._coordinator = Coordinator(
            data_dir=Path(data_dir),
            shards=int(settings["shards"]),
            partitions=int(settings["partitions"]),
            ops=self._ops,
            replication_factor=int(settings.get("replication_factor", 2)) if replicated else 1,
            min_in_sync=int(settings.get("min_in_sync", 2)),
            lag_max_s=float(settings.get("replica_lag_max_s", 5.0)),
            control_acks=_control_acks(settings) if replicated else 0,
        )
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._rounds = 0
        self._gateways_checked = 0.0
        self._gateways: list[dict[str, str]] = []
        self._takeovers: list[float] = []
        self._thread = threading.Thread(target=self._loop, name="reconcile", daemon=True)
        self._thread.start()
        shards, partitions = int(settings["shards"]), int(settings["partitions"])
        self._hosts_per_node = int(settings.get("hosts_per_node", 1))
        own = OwnRoutes(transport if transport is not None else RayTransport(), self.routes)
        self.duties = CoordinatorDuties(
            coordinator=self._coordinator,
            lock=self._lock,
            router=UnitRouter(
                own,
                shards=shards,
                partitions=partitions,
                hosts_per_node=self._hosts_per_node,
            ),
            data_dir=Path(data_dir),
            schedule=BillSchedule.from_settings(settings, tz=_cycle_tz(data_dir, settings)),
            inspection=InspectionSettings.from_settings(settings),
            units=self._units_now,
            clock=clock if clock is not None else clock_from_settings(settings),
            storage_mode=str(settings.get("storage_mode", "shared")),
        ).start()

    def _loop(self) -> None:
        # Gateways once before the first reconcile: a status asked for right after a
        # (re)start lists them, however long that first round takes. Later checks come
        # after each round, so they never delay a takeover.
        self._check_gateways()
        while not self._stop.is_set():
            try:
                with self._lock:
                    self._coordinator.check_current()
                    self._coordinator.reconcile()
                    self._rounds += 1
                    self._note_recoveries()
            except StaleCoordinator as stale:
                self._stale(stale)
                return
            except Exception:
                log.exception("reconcile_failed")
            self._check_gateways()
            self._stop.wait(self._interval_s)

    def _check_gateways(self) -> None:
        try:
            self._wake_gateways()
        except Exception:  # Ray's GCS busy: the next round tries again
            log.exception("gateways_check_failed")

    def _stale(self, stale: StaleCoordinator) -> None:
        """Another coordinator took over while this one was paused: it must never act
        again. In a Ray actor the process ends: if Ray still counts it as the current
        incarnation it restarts it, and the new process loads the newest state."""
        log.error("stale_coordinator", reason=str(stale))
        self._stop.set()
        if self._exit_when_stale:
            os._exit(75)  # EX_TEMPFAIL: not a crash of ours, a replaced incarnation

    def _wake_gateways(self) -> None:
        """Every ``GATEWAY_CHECK_S``, have the ops wake restarted gateways and note every
        gateway of an alive node with its state (``ClusterStatus`` lists them)."""
        now = time.monotonic()
        if now < self._gateways_checked + GATEWAY_CHECK_S:
            return
        self._gateways_checked = now
        gateways = self._ops.gateways()
        with self._lock:
            self._gateways = gateways

    def _note_recoveries(self) -> None:
        """Record how long each node failure took to be fully taken over."""
        if self._coordinator.failover_started and self._coordinator.healthy():
            now = time.monotonic()
            for node, started in self._coordinator.failover_started.items():
                self._takeovers.append(now - started)
                metrics.takeover(now - started)
                log.info("takeover_complete", node=node, takeover_s=round(now - started, 3))
            self._coordinator.failover_started.clear()

    def ping(self) -> int:
        return self._rounds

    def routes(self) -> dict[str, tuple[str, int]]:
        """What routers follow: unit -> (node, epoch); a lost unit is ``("", 0)``, so its
        callers are told it is lost at once instead of waiting for an owner."""
        with self._lock:
            routes = {u: (r.node, r.epoch) for u, r in self._coordinator.routes().items()}
            return routes | dict.fromkeys(self._coordinator.lost(), ("", 0))

    def healthy(self) -> bool:
        with self._lock:
            return self._coordinator.healthy()

    def writable(self) -> bool:
        """Healthy, and every unit can acknowledge writes (replicated: enough in sync)."""
        with self._lock:
            return self._coordinator.writable()

    def fully_replicated(self) -> bool:
        """Healthy, and every unit has all its followers in sync (replicated)."""
        with self._lock:
            return self._coordinator.fully_replicated()

    def replicas(self) -> dict[str, dict[str, Any]]:
        """Per unit: primary, followers with state and lag, in-sync set, lost."""
        with self._lock:
            return self._coordinator.replicas()

    def takeover_times(self) -> list[float]:
        with self._lock:
            return list(self._takeovers)

    def _units(self) -> list[dict[str, Any]]:
        """Every unit with its state, owner and epoch (the caller holds the lock)."""
        marking = self._coordinator.marking
        owned = {u: (n, e) for u, n, e in marking.owned()}
        recovering = {u: (n, e) for u, n, e in marking.recovering()}
        epochs = dict(marking.epochs())
        units = []
        for unit in sorted(epochs):
            if unit in owned:
                state, (node, epoch) = "owned", owned[unit]
            elif unit in recovering:
                state, (node, epoch) = "recovering", recovering[unit]
            else:
                state, node, epoch = "free", "", epochs[unit]
            units.append(
                {
                    "unit": unit,
                    "state": state,
                    "node": node,
                    "epoch": epoch,
                    # Which of its node's host processes serves it (actors.slots).
                    "slot": slot_of(unit, self._hosts_per_node),
                }
            )
        return units

    def _units_now(self) -> list[dict[str, Any]]:
        with self._lock:
            try:
                return self._units()
            except RuntimeError:  # no node has joined yet: nothing is owned
                return []

    def status(self) -> dict[str, Any]:
        """Nodes, units with owners and epochs, the marking, and the schedule (the next
        and last bill runs, the last inspection)."""
        with self._lock:
            try:
                marking = self._coordinator.marking
            except RuntimeError:
                return {
                    "nodes": [],
                    "units": [],
                    "marking": None,
                    "healthy": False,
                    "control": self._coordinator.control(),
                }
            from petri import marking_to_json

            units = self._units()
            owned = {u: (n, e) for u, n, e in marking.owned()}
            ray_ids = self._coordinator.node_ids()
            urls = self._ops.metrics_urls()
            nodes = [
                {
                    "node": name,
                    "status": status,
                    "ray_node_id": ray_ids.get(name, ""),
                    "metrics_url": urls.get(ray_ids.get(name, ""), ""),
                    "units": sum(1 for n, _e in owned.values() if n == name),
                    "hosts": self._hosts_per_node,
                }
                for name, status in marking.nodes()
            ]
            replicas = self._coordinator.replicas()
            for entry in units:
                replica = replicas.get(str(entry["unit"]))
                if replica is not None:
                    entry["followers"] = {n: f["state"] for n, f in replica["followers"].items()}
                    # Batches the primary has committed that the follower has not
                    # acknowledged (None: the primary has not reported it yet).
                    entry["lag"] = {n: f["lag"] for n, f in replica["followers"].items()}
                    entry["isr"] = replica["isr"]
                    if replica["lost"]:
                        entry["state"] = "lost"
            return {
                "nodes": nodes,
                "units": units,
                "marking": marking_to_json(marking),
                "healthy": self._coordinator.healthy(),
                "writable": self._coordinator.writable(),
                "fully_replicated": self._coordinator.fully_replicated(),
                "replication_factor": self._coordinator.replication_factor,
                "hosts_per_node": self._hosts_per_node,
                "locks_held": [list(x) for x in marking.locks_held()],
                "gateways": list(self._gateways),
                "schedule": self.duties.status(),
                "control": self._coordinator.control(),
            }

    def drain(self, node: str) -> bool:
        """Start draining ``node``; the loop migrates its units off without refusing work."""
        with self._lock:
            return self._coordinator.drain(node)

    def undrain(self, node: str) -> bool:
        with self._lock:
            return self._coordinator.undrain(node)

    def lock(self, unit: str, kind: str) -> bool:
        """Take a unit's lock (``bill_run``); False while a migration holds it."""
        with self._lock:
            return self._coordinator.lock(unit, kind)

    def unlock(self, unit: str, kind: str) -> bool:
        with self._lock:
            return self._coordinator.unlock(unit, kind)

    def renew(self, unit: str, kind: str) -> bool:
        """Extend the lease of a unit's held lock; False when it is not held any more."""
        with self._lock:
            return self._coordinator.renew(unit, kind)

    def restore_units(
        self, folder: str, units: list[str], request_id: str, available: list[str]
    ) -> dict[str, Any]:
        """Bring lost units back from the backup in ``folder`` (relative to the backup
        root; ``available``: the units it holds): each ``units`` (empty: every lost
        unit) is staged by the host of an alive node into its own folder, then
        ``restore`` is fired (a new epoch above the unit's last), and the loop opens it
        there and repairs its followers. ``{"restored": {unit: record}}``, or
        ``{"refused": [status code name, message]}``; a retry of ``request_id`` is
        answered from the persisted record. Staging runs outside the loop's lock."""
        with self._lock:
            done = self._coordinator.restored(request_id)
            lost = sorted(self._coordinator.lost())
            wanted = [unit for unit in (units or lost) if unit not in done]
            if done and not wanted:  # a retry of a restore that completed
                return {"restored": done}
            refused = self._restore_refusal(wanted, available)
            if refused is not None:
                return {"refused": refused}
            busy = self._coordinator.hold_restore(wanted)
            if busy:
                return {"refused": ["ABORTED", f"a restore of {', '.join(busy)} is under way"]}
        try:
            return self._restore_each(wanted, folder, request_id, dict(done))
        finally:
            with self._lock:
                self._coordinator.release_restore(wanted)

    def _restore_each(
        self, wanted: list[str], folder: str, request_id: str, restored: dict[str, Any]
    ) -> dict[str, Any]:
        """Stage then fire each of ``wanted`` in turn (see :meth:`restore_units`)."""
        for unit in wanted:
            with self._lock:
                target = self._coordinator.restore_target()
            if target is None:
                return {"refused": ["UNAVAILABLE", "no alive node whose host answers: retry"]}
            try:
                backup = self._ops.restore_stage(target, unit, folder)  # type: ignore[attr-defined]
            except (RestoreRefused, BackupRefused) as exc:
                return {"refused": ["INVALID_ARGUMENT", str(exc)]}
            except Exception as exc:  # the host did not answer: nothing was fired
                detail = f"{target} could not stage {unit}: {type(exc).__name__}: {exc}"
                return {"refused": ["UNAVAILABLE", f"{detail}; retry with the same request id"]}
            with self._lock:
                record = self._coordinator.restore(unit, target, request_id, backup)
            if record is None:  # the net refused: the target left meanwhile
                self._drop_staged(target, unit)
                detail = f"{unit} could not be restored on {target} (it left?)"
                return {"refused": ["UNAVAILABLE", f"{detail}; retry with the same request id"]}
            restored[unit] = record
        return {"restored": restored}

    def _restore_refusal(self, wanted: list[str], available: list[str]) -> list[str] | None:
        """Why a restore of ``wanted`` from a backup holding ``available`` cannot start:
        ``[status code name, message]``, or None. (The caller holds the lock.)"""
        coordinator = self._coordinator
        if coordinator.replication_factor < 2:
            return [
                "FAILED_PRECONDITION",
                "restore brings back lost units of a replicated cluster; this one keeps a "
                "single copy (see actors/store/backup.py to restore one offline)",
            ]
        if not wanted:
            return ["FAILED_PRECONDITION", "no unit is lost: nothing to restore"]
        lost = set(coordinator.lost())
        states = {u["unit"]: u for u in self._units()}
        for unit in wanted:
            if unit not in states:
                return ["INVALID_ARGUMENT", f"units: no unit {unit!r} in this cluster"]
            if unit not in lost:
                entry = states[unit]
                return [
                    "FAILED_PRECONDITION",
                    f"{unit} is not lost ({entry['state']} by {entry['node'] or 'no node'} at "
                    f"epoch {entry['epoch']}): a restore never overwrites a live unit",
                ]
        absent = sorted(set(wanted) - set(available))
        if absent:
            return ["INVALID_ARGUMENT", f"the backup holds no copy of {', '.join(absent)}"]
        return None

    def _drop_staged(self, node: str, unit: str) -> None:
        try:
            self._ops.replica_drop(node, unit)  # type: ignore[attr-defined]
        except Exception as exc:  # a copy that is not a follower's: the next add replaces it
            log.warning("staged_copy_left", shard=unit, node=node, error=str(exc))

    def inspect(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Run the automatic inspection now (``petribill inspect``); its report."""
        return self.duties.inspect_now(timeout_s).to_dict()

    def stop(self) -> None:
        self._stop.set()
        self.duties.stop()
        self._thread.join(timeout=5)


def _control_acks(settings: dict[str, Any]) -> int:
    """How many nodes' control replicas make a save durable (0: none kept): the units'
    rule, ``min_in_sync − 1`` copies besides the coordinator's own, at least one."""
    if not settings.get("control_replicas", True):
        return 0
    return max(1, int(settings.get("min_in_sync", 2)) - 1)


def _cycle_tz(data_dir: str, settings: dict[str, Any]) -> str:
    """The time zone of the billing cycles: the catalogue's (the one in force)."""
    configured = settings.get("tariffs_dir")
    if not configured:
        return "UTC"
    return load_catalogue(current_tariffs_dir(data_dir, configured)).timezone


def spawn_coordinator(*, data_dir: str, settings: dict[str, Any], interval_s: float) -> Any:
    """Start (or find) the detached coordinator; Ray restarts it if its process dies.

    It runs on Ray's head node, beside the GCS, whose loss ends the Ray cluster
    anyway (without GCS fault tolerance): so the coordinator never outlives the
    head, its control folder is the head's, and a paused worker node cannot take a
    coordinator down with it and leave a zombie behind (the generation fence of
    :mod:`cluster.control.state` refuses one all the same)."""
    cls = ray.remote(CoordinatorService)
    return cls.options(
        name=COORDINATOR_NAME,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        max_concurrency=8,
        num_cpus=0,
        resources={HEAD_RESOURCE: 0.001},
    ).remote(
        data_dir=data_dir,
        settings=settings,
        interval_s=interval_s,
        setup=process_logging(settings, "coordinator"),
    )
