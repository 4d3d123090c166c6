"""Fault injectors: kill workers and nodes, pause nodes, fill a disk — and time the healing.

Each fault is applied to a local multi-node cluster (:class:`cluster.deploy.runtime.Runtime`
with its :class:`cluster.deploy.localray.LocalRay`) by PID, never by process name:

- ``kill-host``: SIGKILL one host process of a node (with ``hosts_per_node`` k > 1,
  one slot of the k, chosen by the fault's ``pick``; the record says which slot and
  PID); the coordinator fails the whole node's host over (docs/operations-notes.md,
  "Failure detection"). ``kill-node``, ``pause-node`` and ``lose-disk`` take every
  process of the node, hence every slot;
- ``kill-gateway``: SIGKILL a gateway's worker process (clients' streams break
  mid-flight); the cluster heals itself: Ray restarts the process, the
  coordinator's loop makes it serve again on the same port, and the fault
  waits until the address answers the gRPC health check with SERVING;
- ``kill-coordinator``: SIGKILL the coordinator's process (Ray restarts it);
- ``kill-node``: SIGKILL a worker node's raylet; a fresh node replaces it;
- ``pause-node``: SIGSTOP every process of a worker node for ``hold_s``, then
  SIGCONT (a node paused past failure detection is declared dead, its units
  are taken over, its zombie host is fenced; it is then replaced);
- ``disk-full``: fill the tmpfs under one shard's folder (replicated: under the
  head node's folder, which holds primaries and followers) for ``hold_s``, then
  free it;
- ``lose-disk`` (replicated storage only): SIGKILL every process of a worker node
  at once (the machine dies), delete that node's whole data folder
  (``DATA/nodes/<node>``: its disk is gone), then start a fresh, empty node as an
  operator would. Every acknowledged batch of its units must survive on their
  in-sync followers elsewhere.

``takeover_s`` is the time from the fault until every unit the victim owned
is owned again, at a higher epoch, and the cluster reports itself healthy
(replicated: and *writable*, each unit with enough followers in sync to
acknowledge). Before the next fault the injector waits until the cluster is
healthy again (replicated: every unit fully replicated, so that a second fault
never hits a unit that is down to one copy), and before it hits a node, until the
replacement of the last node lost has joined (one node lost at a time).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog

from actors.remote import host_pids
from chaos.disk import TmpfsDisk
from cluster.deploy.localray import LocalRay
from cluster.deploy.runtime import Runtime

__all__ = ["KINDS", "Fault", "FaultResult", "Injector"]

log = structlog.get_logger()

KINDS: Final = (
    "kill-host",
    "kill-gateway",
    "kill-coordinator",
    "kill-node",
    "pause-node",
    "disk-full",
    "lose-disk",
)
HEAL_TIMEOUT_S: Final = 90.0
GATEWAY_POLL_S: Final = 0.2


@dataclass(frozen=True, slots=True)
class Fault:
    """One planned fault: ``kind`` at ``at_s`` seconds into the load; ``pick`` chooses
    the victim among the candidates at that moment; ``hold_s`` for pauses and disks."""

    at_s: float
    kind: str
    pick: int = 0
    hold_s: float = 0.0


@dataclass(slots=True)
class FaultResult:
    kind: str
    target: str
    at_s: float
    takeover_s: float | None = None
    healed_s: float | None = None
    detail: str = ""
    skipped: bool = False
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "at_s": round(self.at_s, 2),
            "takeover_s": None if self.takeover_s is None else round(self.takeover_s, 3),
            "healed_s": None if self.healed_s is None else round(self.healed_s, 3),
            "detail": self.detail,
            "skipped": self.skipped,
        }


def _folder_bytes(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file():
                total += path.stat().st_size
    return total


#: Faults that can take a node away for good (it is then replaced by a fresh one).
_NODE_LOSSES: Final = frozenset({"kill-node", "pause-node", "lose-disk"})


class Injector:
    """Applies faults to one cluster and waits for it to heal after each."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        disk: TmpfsDisk | None = None,
        on_gateway: Callable[[str], None] = lambda _address: None,
        clock: Callable[[], float] = time.monotonic,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        if runtime.local is None:
            raise ValueError("fault injection needs a local cluster (LocalRay)")
        self.runtime = runtime
        self.local: LocalRay = runtime.local
        self.disk = disk
        self._on_gateway = on_gateway  # a new gateway address, for the load's client
        self._clock = clock
        # The token and TLS files of a secured cluster, for the health checks here.
        self._client_options = dict(client_options or {})
        self._dead: set[int] = set()  # node indices killed for good
        self._replacements: list[threading.Thread] = []
        self.replacement_errors: list[str] = []
        self.replicated = runtime.storage_mode == "replicated"

    # -- observation -------------------------------------------------------------

    def _units(self) -> dict[str, tuple[str, int, str]]:
        status = self.runtime.status()
        return {u["unit"]: (u["node"], u["epoch"], u["state"]) for u in status["units"]}

    def _worker_nodes(self) -> list[int]:
        nodes = list(self.local.nodes)  # a replacement may be joining meanwhile
        return [n.index for n in nodes if not n.is_head and n.index not in self._dead]

    def _live_nodes(self) -> list[int]:
        return [n.index for n in list(self.local.nodes) if n.index not in self._dead]

    def wait_healthy(self) -> float:
        """Seconds until the coordinator reports every unit served (replicated: and every
        unit fully replicated again)."""
        return self._wait_taken_over({}, self._clock(), ready="fully_replicated")

    def _wait_taken_over(
        self, before: dict[str, int], started: float, *, ready: str = "writable"
    ) -> float:
        """Seconds from ``started`` until each unit of ``before`` (unit -> epoch) is owned
        at a higher epoch and the cluster is healthy and, in replicated mode, ``ready``
        (``writable`` or ``fully_replicated``, fields of the coordinator's status)."""
        while self._clock() - started < HEAL_TIMEOUT_S:
            try:
                status = self.runtime.status(timeout_s=10)
            except Exception as exc:  # the coordinator itself may be restarting
                log.debug("status_unavailable", error=repr(exc))
                time.sleep(0.05)
                continue
            units = {u["unit"]: u for u in status["units"]}
            if (
                status["healthy"]
                and status.get(ready, True)
                and all(
                    units[u]["state"] == "owned" and units[u]["epoch"] > epoch
                    for u, epoch in before.items()
                )
            ):
                return self._clock() - started
            time.sleep(0.05)
        what = f"units {sorted(before)} not taken over" if before else "the cluster not healthy"
        raise TimeoutError(f"{what} within {HEAL_TIMEOUT_S} s")

    def _owned_by(self, node: str) -> dict[str, int]:
        return {u: e for u, (n, e, s) in self._units().items() if n == node and s == "owned"}

    # -- faults ------------------------------------------------------------------

    def apply(self, fault: Fault, at_s: float) -> FaultResult:
        """Apply ``fault`` now (``at_s``: seconds into the run, for the report) and wait
        until the cluster has healed."""
        if fault.kind in _NODE_LOSSES:
            # A node is not hit while the replacement of the last one lost is still
            # starting: the cluster is a node short until it joins, and with RF 2 a second
            # loss then leaves units one copy (unwritable until a node joins, by design).
            # The failure model is one node lost at a time (docs/architecture.md).
            self.finish()
        self.wait_healthy()  # one failure at a time: never hit a cluster still healing
        handler = getattr(self, "_" + fault.kind.replace("-", "_"))
        result: FaultResult = handler(fault, at_s)
        log.info("fault", **result.as_dict())
        return result

    def _healed(
        self, fault: Fault, target: str, at_s: float, started: float, detail: str,
        took: float | None = None,
    ) -> FaultResult:  # fmt: skip
        """The result of an applied fault, once the cluster is healthy again."""
        self.wait_healthy()
        healed = self._clock() - started
        return FaultResult(fault.kind, target, at_s, took, healed, detail)

    @staticmethod
    def _skipped(fault: Fault, target: str, at_s: float, why: str) -> FaultResult:
        return FaultResult(fault.kind, target, at_s, skipped=True, detail=why)

    def _pick(self, candidates: list[int], fault: Fault) -> int | None:
        return candidates[fault.pick % len(candidates)] if candidates else None

    def _kill_host(self, fault: Fault, at_s: float) -> FaultResult:
        live = self._live_nodes()
        index = self._pick(live, fault)
        if index is None:
            return self._skipped(fault, "-", at_s, "no node left to hit")
        node = f"n{index}"
        before = self._owned_by(node)
        hosts_per_node = int(self.runtime.settings().get("hosts_per_node", 1))
        slot = (fault.pick // len(live)) % hosts_per_node  # the node took pick % len(live)
        pid = host_pids(node, hosts_per_node).get(slot)
        if pid is None:
            return self._skipped(fault, node, at_s, f"no host process in slot {slot}")
        started = self._clock()
        os.kill(pid, signal.SIGKILL)
        took = self._wait_taken_over(before, started) if before else None
        detail = f"slot {slot} of {hosts_per_node}, pid {pid}"
        return self._healed(fault, node, at_s, started, detail, took)

    def _kill_gateway(self, fault: Fault, at_s: float) -> FaultResult:
        index = self._pick(self._live_nodes(), fault)
        if index is None:
            return self._skipped(fault, "-", at_s, "no node left to hit")
        pid = self.local.worker_pid(index, "GatewayActor")
        handle = self.local.node(index)
        address = next(
            (a for nid, a in self._gateway_addresses().items() if nid == handle.node_id), None
        )
        if pid is None or address is None:
            return self._skipped(fault, f"n{index}", at_s, "no gateway")
        started = self._clock()
        os.kill(pid, signal.SIGKILL)
        back_s = self._wait_serving(address, started, pid)
        detail = f"pid {pid}, serving again on {address} after {back_s:.2f} s"
        return self._healed(fault, f"n{index}", at_s, started, detail)

    def _wait_serving(self, address: str, started: float, pid: int) -> float:
        """Seconds until ``address`` answers SERVING from a new process (nothing here
        restarts it: Ray and the coordinator do)."""
        from cluster.client import PetribillClient

        while self._clock() - started < HEAL_TIMEOUT_S:
            time.sleep(GATEWAY_POLL_S)
            with PetribillClient(
                address, timeout_s=1.0, retries=0, **self._client_options
            ) as client:
                if client.health()[address] == "SERVING":
                    return self._clock() - started
        raise TimeoutError(f"gateway {address} (pid {pid}) not serving within {HEAL_TIMEOUT_S} s")

    def _kill_coordinator(self, fault: Fault, at_s: float) -> FaultResult:
        pid = None
        for index in self._live_nodes():
            pid = self.local.worker_pid(index, "CoordinatorService")
            if pid is not None:
                break
        if pid is None:
            return self._skipped(fault, "coordinator", at_s, "not found")
        started = self._clock()
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)  # let Ray notice before asking it again
        return self._healed(fault, "coordinator", at_s, started, f"pid {pid}")

    def _worker_victim(self, fault: Fault) -> tuple[int, str, dict[str, int]] | None:
        """The worker node a node fault hits: index, name and the units it owns."""
        index = self._pick(self._worker_nodes(), fault)
        return None if index is None else (index, f"n{index}", self._owned_by(f"n{index}"))

    def _kill_node(self, fault: Fault, at_s: float) -> FaultResult:
        victim = self._worker_victim(fault)
        if victim is None:
            return self._skipped(fault, "-", at_s, "no node left to hit")
        index, node, before = victim
        started = self._clock()
        try:
            pid = self.local.kill_node(index, signal.SIGKILL)
        except ProcessLookupError:  # its raylet already exited (declared dead meanwhile)
            self._dead.add(index)
            return self._skipped(fault, node, at_s, "the node was already gone")
        self._dead.add(index)
        took = self._wait_taken_over(before, started) if before else None
        detail = f"raylet pid {pid}; replaced by {self._replace_node()}"
        return self._healed(fault, node, at_s, started, detail, took)

    def _pause_node(self, fault: Fault, at_s: float) -> FaultResult:
        victim = self._worker_victim(fault)
        if victim is None:
            return self._skipped(fault, "-", at_s, "no node left to hit")
        index, node, before = victim
        started = self._clock()
        paused = self.local.pause_node(index)
        try:
            took = self._wait_taken_over(before, started) if before else None
            rest = fault.hold_s - (self._clock() - started)
            if rest > 0:
                time.sleep(rest)
        finally:
            self.local.resume_node(index)
        detail = f"{len(paused)} processes stopped for {self._clock() - started:.1f} s"
        if self._node_gone(index):
            self._dead.add(index)
            detail += f"; declared dead, replaced by {self._replace_node()}"
        return self._healed(fault, node, at_s, started, detail, took)

    def _lose_disk(self, fault: Fault, at_s: float) -> FaultResult:
        if not self.replicated:
            return self._skipped(fault, "-", at_s, "needs replicated storage (a disk per node)")
        victim = self._worker_victim(fault)
        if victim is None:
            return self._skipped(fault, "-", at_s, "no node left to hit")
        index, node, before = victim
        started = self._clock()
        pids = self.local.node_pids(index)
        for pid in pids:  # the machine dies: every process at once
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._dead.add(index)
        folder = self.runtime.data_dir / "nodes" / node
        size = _folder_bytes(folder) if folder.exists() else 0  # none: it held nothing yet
        shutil.rmtree(folder, ignore_errors=True)  # and its disk with it
        took = self._wait_taken_over(before, started) if before else None
        detail = (
            f"{len(pids)} processes killed, {folder} deleted ({size // 1024} KiB); "
            f"replaced by {self._replace_node()}"
        )
        return self._healed(fault, node, at_s, started, detail, took)

    def _disk_full(self, fault: Fault, at_s: float) -> FaultResult:
        if self.disk is None:
            return self._skipped(fault, "-", at_s, "no tmpfs (needs root to mount)")
        started = self._clock()
        filled = self.disk.fill()
        time.sleep(fault.hold_s)
        self.disk.free()
        detail = f"filled {filled // 1024} KiB for {fault.hold_s:.1f} s"
        return self._healed(fault, self.disk.path.name, at_s, started, detail)

    # -- supervision (what an operator's process manager would do) ----------------

    def _node_gone(self, index: int, wait_s: float = 10.0) -> bool:
        """After a resume: whether the node's raylet exits (it learns it was declared dead)."""
        deadline = self._clock() + wait_s
        raylet = self.local.node(index).raylet_pid
        while self._clock() < deadline:
            if raylet not in self.local.node_pids(index):
                return True
            status = self.runtime.status(timeout_s=10)
            if any(n["node"] == f"n{index}" and n["status"] == "alive" for n in status["nodes"]):
                return False
            time.sleep(0.2)
        return False

    def _replace_node(self) -> str:
        """Start a fresh node (with its gateway) for one that died, in the background:
        a machine being replaced is not a failure, and the next fault need not wait."""
        thread = threading.Thread(target=self._start_node, name="chaos-replace", daemon=True)
        thread.start()
        self._replacements.append(thread)
        return "a new node (starting)"

    def _start_node(self) -> None:
        try:  # the same path as `petribill node add`
            handle, address = self.runtime.add_node(timeout_s=HEAL_TIMEOUT_S)
        except Exception as exc:  # the run goes on with one node fewer
            log.warning("replacement_failed", error=f"{type(exc).__name__}: {exc}")
            self.replacement_errors.append(str(exc).splitlines()[0])
            return
        self._on_gateway(address)
        log.info("replacement_joined", node=handle.name, gateway=address)

    def finish(self, timeout_s: float = HEAL_TIMEOUT_S) -> None:
        """Wait for the replacement nodes still starting."""
        for thread in self._replacements:
            thread.join(timeout=timeout_s)
        self._replacements = [t for t in self._replacements if t.is_alive()]

    def _gateway_addresses(self) -> dict[str, str]:
        import ray

        gateways = self.runtime.gateways
        addresses: dict[str, str] = {}
        for node_id, handle in list(gateways.items()):
            try:
                addresses[node_id] = ray.get(handle.address.remote(), timeout=5)
            except Exception:  # a dead gateway: nothing to kill there
                continue
        return addresses
