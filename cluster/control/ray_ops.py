"""ClusterOps over Ray: how the coordinator observes nodes and drives hosts."""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from dataclasses import asdict
from typing import Any

import ray
import structlog
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError
from ray.experimental import internal_kv

from actors import metrics
from actors.remote import NAMESPACE, host_name, spawn_host
from actors.slots import host_key, node_hosts, unit_host
from actors.store.backup import BackupRefused, RestoreRefused
from actors.store.control_copy import ControlCopy
from actors.store.fencing import StaleEpoch
from cluster.control.coordinator import UnitOpenError
from cluster.gateway.names import gateway_handles
from cluster.logging import process_logging

__all__ = ["RayOps", "node_name"]

log = structlog.get_logger("petribill.ray_ops")

# How long a round waits for the pings it sent. A ping left unanswered stays in
# flight (one per host, never a pile): later rounds look whether it came back, and
# the coordinator reads the silence (``host_silent_s``) against its own, longer bound.
_PING_WAIT_S = 0.5
_OPEN_TIMEOUT_S = 30.0
# Units are not opened on a host silent for longer than this (a hung host would hold
# the loop for _OPEN_TIMEOUT_S); a busy one answers opens from its placement threads,
# and on two loaded cores its ping can take longer than _PING_WAIT_S.
_OPEN_SILENT_S = 1.0
_NODE_RESOURCE_PREFIX = "petribill_node_"
# How long the loop waits for gateways to say their address (they answer at once
# when serving; a restarted one starts serving when asked).
_GATEWAY_WAIT_S = 0.5
# Where the last address each gateway said is kept (Ray's internal key-value store),
# so a restarted coordinator still lists a gateway that is restarting by its address.
_GATEWAY_ADDRESS_KEY = "petribill/gateway-address/{prefix}"


def node_name(node: Mapping[str, Any]) -> str:
    """A petribill node's name: its simulated-node resource, else its Ray id prefix."""
    for resource in node.get("Resources", {}):
        if resource.startswith(_NODE_RESOURCE_PREFIX):
            return str(resource[len(_NODE_RESOURCE_PREFIX) :])
    return "node-" + str(node["NodeID"])[:10]


class RayOps:
    """Starts the ``hosts_per_node`` host processes of every alive node and answers the
    coordinator's questions.

    Hosts are kept by their key (:mod:`actors.slots`); what the coordinator asks about a
    node, it answers for all of the node's hosts together (the node's host is ok only
    while every one is, its silence the longest of theirs: docs/operations-notes.md,
    "Failure detection"), and a call about a unit goes to the unit's slot. Node-wide
    things — the control replica, the count of the node's unit folders — stay with
    slot 0, so a node keeps one control copy however many processes it runs.
    """

    def __init__(self, *, data_dir: str, settings: dict[str, Any]) -> None:
        self._data_dir = data_dir
        self._settings = settings
        self._hosts_per_node = int(settings.get("hosts_per_node", 1))
        self._hosts: dict[str, Any] = {}  # host key -> handle
        self._host_node: dict[str, str] = {}  # host key -> its node
        self._gone: set[str] = set()  # hosts whose process died (its ping raised)
        # host key -> (the ping in flight, when it was sent); none while the host answers.
        self._pings: dict[str, tuple[Any, float]] = {}
        # Short Ray node id -> the address its gateway last said.
        self._gateway_addresses: dict[str, str] = {}
        # (node, unit) -> epoch a live host confirmed serving. The coordinator
        # converges every round; only opens not yet confirmed go out, so a hung
        # host cannot stall the loop with calls it will never answer.
        self._opened: dict[tuple[str, str], int] = {}
        self._replicas = _ReplicaCalls(self)
        self._control = _ControlCalls(self)
        self._alive: dict[str, str] = {}  # node -> Ray node id, as last seen

    def alive_nodes(self) -> Mapping[str, str]:
        alive = {node_name(n): n["NodeID"] for n in ray.nodes() if n.get("Alive")}  # type: ignore[no-untyped-call]
        self._probe(alive)
        self._alive = alive
        return alive

    def _probe(self, alive: Mapping[str, str]) -> None:
        """Ping every host of every alive node that has no ping in flight; start hosts
        that are missing. A ping that raises means the process is gone (Ray says so); one
        not answered yet only makes the host silent for longer (``host_silent_s``)."""
        now = time.monotonic()
        keys = {key: node for node in alive for key in self.node_hosts(node)}
        for key in [k for k in self._pings if k not in keys]:
            del self._pings[key]  # Ray declared the node dead: nothing to wait for
        self._gone.clear()
        sent = []
        for key, node in keys.items():
            handle = self._hosts.get(key) or self._lookup(key)
            if handle is None:
                slot = self.node_hosts(node).index(key)
                handle = spawn_host(
                    node,
                    alive[node],
                    data_dir=self._data_dir,
                    settings=self._settings,
                    setup=process_logging(self._settings, f"host-{key}"),
                    slot=slot,
                )
                self._forget(node)
                log.info("host_started", node=node, slot=slot)
            self._hosts[key] = handle
            self._host_node[key] = node
            if key not in self._pings:
                ref = handle.ping.remote()
                self._pings[key] = (ref, now)
                sent.append(ref)
        if sent:  # a host that answers does so in milliseconds, from its liveness thread
            ray.wait(sent, num_returns=len(sent), timeout=_PING_WAIT_S)
        refs = [ref for ref, _ in self._pings.values()]
        done = set(ray.wait(refs, num_returns=len(refs), timeout=0)[0]) if refs else set()
        for key, (ref, sent_at) in list(self._pings.items()):
            if ref not in done:
                continue
            del self._pings[key]
            try:
                ray.get(ref)
            except ActorUnavailableError:
                # Unreachable, not known dead: still silent, counted from the first ping.
                self._pings[key] = (self._hosts[key].ping.remote(), sent_at)
                continue
            except RayActorError:
                self._gone.add(key)
                self._hosts.pop(key, None)
                self._forget(keys[key])
                log.warning("host_gone", node=keys[key], host=key)
                continue
            silent_s = time.monotonic() - sent_at
            if silent_s > 2 * _PING_WAIT_S:
                log.info("host_answering", node=keys[key], host=key, silent_s=round(silent_s, 1))

    def nodes(self) -> set[str]:
        """The nodes with a host process known (started or found)."""
        return {self._host_node[key] for key in self._hosts}

    def node_hosts(self, node: str) -> list[str]:
        """The keys of ``node``'s host processes, slot 0 first."""
        return node_hosts(node, self._hosts_per_node)

    def _forget(self, node: str) -> None:
        """Forget what the hosts of ``node`` confirmed (one of them started or died: the
        coordinator fails the node's host over as a whole, and sends everything again)."""
        for key in [k for k in self._opened if k[0] == node]:
            del self._opened[key]
        self._replicas.forget(node)

    def _lookup(self, host: str) -> Any:
        try:
            return ray.get_actor(host_name(host), namespace=NAMESPACE)
        except ValueError:
            return None

    def host_ok(self, node: str) -> bool:
        """Every host process of ``node`` runs (k = 1: its one host)."""
        return all(key in self._hosts and key not in self._gone for key in self.node_hosts(node))

    def host_silent_s(self, node: str) -> float:
        """The longest any host process of ``node`` has left a ping unanswered."""
        now = time.monotonic()
        sent = [self._pings[key][1] for key in self.node_hosts(node) if key in self._pings]
        return now - min(sent) if sent else 0.0

    def unit_handle(self, node: str, unit_id: str) -> Any:
        """The handle of the host process that serves ``unit_id`` on ``node`` (None: none)."""
        return self._hosts.get(unit_host(node, unit_id, self._hosts_per_node))

    def open_unit(self, node: str, unit_id: str, epoch: int) -> None:
        if self._opened.get((node, unit_id)) == epoch:
            return
        handle = self.unit_handle(node, unit_id)
        if handle is None or not self.host_ok(node) or self.host_silent_s(node) > _OPEN_SILENT_S:
            raise UnitOpenError(f"{node}: no answering host")
        try:
            ray.get(handle.open_unit.remote(unit_id, epoch), timeout=_OPEN_TIMEOUT_S)
            self._opened[(node, unit_id)] = epoch
        except (RayActorError, GetTimeoutError) as exc:
            raise UnitOpenError(f"{node}: {exc}") from exc
        except Exception as exc:  # the store refused: locked, stale epoch, disk
            stale = isinstance(getattr(exc, "cause", exc), StaleEpoch)
            raise UnitOpenError(f"{node}: {type(exc).__name__}: {exc}", stale=stale) from exc

    def close_unit(self, node: str, unit_id: str) -> None:
        self._opened.pop((node, unit_id), None)
        handle = self.unit_handle(node, unit_id)
        if handle is not None:
            ray.get(handle.close_unit.remote(unit_id), timeout=_OPEN_TIMEOUT_S)

    def host(self, node: str) -> Any:
        """The handle of ``node``'s slot 0: node-wide calls (its control replica) go there."""
        return self._hosts.get(host_key(node, 0))

    def gateways(self) -> list[dict[str, str]]:
        """Ask each gateway of an alive node its address, waiting at most
        ``_GATEWAY_WAIT_S``: an answer is ``serving``; no answer yet is ``restarting``
        (Ray restarts a dead gateway's process, ``max_restarts=-1``, but a new process
        does not serve until asked: ``address()`` starts it, on the address it had).
        The gateway of a node Ray declared dead can never come back (it is pinned
        there): it is ended, so that no call queues up for it."""
        nodes = {n["NodeID"][:12]: n for n in ray.nodes()}  # type: ignore[no-untyped-call]
        asked: dict[str, Any] = {}
        for prefix, handle in gateway_handles().items():
            node = nodes.get(prefix)
            if node is not None and node.get("Alive"):
                asked[prefix] = handle.address.remote()
            else:
                ray.kill(handle, no_restart=True)
                self._gateway_addresses.pop(prefix, None)
                log.info("gateway_ended", node=prefix, reason="node dead")
        ready, _ = ray.wait(list(asked.values()), num_returns=len(asked), timeout=_GATEWAY_WAIT_S)
        done = set(ready)
        found = []
        for prefix, ref in sorted(asked.items()):
            state = "restarting"
            if ref in done:
                try:
                    self._note_address(prefix, str(ray.get(ref)))
                    state = "serving"
                except Exception as exc:  # its process died again: Ray restarts it
                    log.info("gateway_unanswering", node=prefix, error=type(exc).__name__)
            address = self._gateway_address(prefix)
            found.append({"node": node_name(nodes[prefix]), "address": address, "state": state})
        return found

    def _note_address(self, prefix: str, address: str) -> None:
        if self._gateway_addresses.get(prefix) != address:
            self._gateway_addresses[prefix] = address
            key = _GATEWAY_ADDRESS_KEY.format(prefix=prefix).encode()
            internal_kv._internal_kv_put(key, address.encode(), overwrite=True)

    def _gateway_address(self, prefix: str) -> str:
        """The address the gateway last said, to this coordinator or an earlier one
        ("" if it never said one: it has not served yet)."""
        address = self._gateway_addresses.get(prefix)
        if address is None:
            key = _GATEWAY_ADDRESS_KEY.format(prefix=prefix).encode()
            found = internal_kv._internal_kv_get(key)
            address = found.decode() if found else ""
            if address:
                self._gateway_addresses[prefix] = address
        return address

    def metrics_urls(self) -> dict[str, str]:
        return metrics.metrics_urls()

    # -- replicated units (cluster.control.replicas.ReplicaOps) ---------------------------

    def replica_reports(self) -> dict[str, dict[str, dict[str, Any]]]:
        return self._replicas.reports()

    def replica_ready(self, node: str) -> bool:
        return self.host_ok(node) and self._replicas.answered_lately(node)

    def set_replicas(self, node: str, unit_id: str, epoch: int, followers: dict[str, str]) -> None:
        self._replicas.set_replicas(node, unit_id, epoch, followers)

    def replica_pin(self, node: str, unit_id: str, epoch: int, follower: str) -> bool:
        return self._replicas.pin(node, unit_id, epoch, follower)

    def release_unit(self, node: str, unit_id: str) -> None:
        self._replicas.release(node, unit_id)

    def replica_fence(self, node: str, unit_id: str, epoch: int) -> None:
        handle = self.unit_handle(node, unit_id)
        if handle is not None:
            handle.replica_fence.remote(unit_id, epoch)  # best effort: not waited for

    def replica_drop(self, node: str, unit_id: str) -> None:
        handle = self.unit_handle(node, unit_id)
        if handle is not None:
            ray.get(handle.replica_drop.remote(unit_id), timeout=_OPEN_TIMEOUT_S)

    def unit_on_disk(self, node: str, unit_id: str) -> int | None:
        handle = self.unit_handle(node, unit_id)
        if handle is None:
            raise UnitOpenError(f"{node}: no host")
        found: int | None = ray.get(handle.unit_on_disk.remote(unit_id), timeout=_PIN_TIMEOUT_S)
        return found

    def restore_stage(self, node: str, unit_id: str, folder: str) -> dict[str, Any]:
        handle = self.unit_handle(node, unit_id)
        if handle is None:
            raise UnitOpenError(f"{node}: no host")
        try:
            info = ray.get(handle.restore_stage.remote(unit_id, folder), timeout=_RESTORE_TIMEOUT_S)
        except Exception as exc:  # the host's refusal, as itself (Ray wraps it)
            cause = getattr(exc, "cause", exc)
            if isinstance(cause, (RestoreRefused, BackupRefused)):
                raise cause from None
            raise
        return asdict(info)

    # -- control replicas (cluster.control.mirror.ControlReplicaOps) ----------------------

    def control_send(
        self, node: str, generation: int, state: bytes, events: list[dict[str, Any]]
    ) -> None:
        self._control.send(node, generation, state, events)

    def control_in_flight(self, node: str) -> bool:
        return self._control.in_flight(node)

    def control_answers(
        self, nodes: Collection[str], needed: int, timeout_s: float
    ) -> dict[str, int | BaseException]:
        return self._control.answers(nodes, needed, timeout_s)

    def control_copies(
        self, nodes: Collection[str], timeout_s: float
    ) -> dict[str, ControlCopy | BaseException]:
        return self._control.copies(nodes, timeout_s)

    def control_local_node(self) -> str | None:
        """The node on the coordinator's own Ray node (the head): its disk is the one a
        replica must survive, so that node's acknowledgements never make a save durable."""
        own = ray.get_runtime_context().get_node_id()
        return next((node for node, ray_id in self._alive.items() if ray_id == own), None)


class _ControlCalls:
    """The coordinator's calls to the hosts' control replicas: at most one save and one
    read in flight per node, waited for only as long as the caller says."""

    def __init__(self, ops: RayOps) -> None:
        self._ops = ops
        self._saves: dict[str, Any] = {}
        self._reads: dict[str, Any] = {}

    def send(self, node: str, generation: int, state: bytes, events: list[dict[str, Any]]) -> None:
        handle = self._ops.host(node)
        if handle is not None and node not in self._saves:
            self._saves[node] = handle.control_save.remote(generation, state, events)

    def in_flight(self, node: str) -> bool:
        return node in self._saves

    def answers(
        self, nodes: Collection[str], needed: int, timeout_s: float
    ) -> dict[str, int | BaseException]:
        waited = [self._saves[n] for n in nodes if n in self._saves]
        if waited and needed > 0:
            ray.wait(waited, num_returns=min(needed, len(waited)), timeout=timeout_s)
        return _collect(self._saves)

    def copies(
        self, nodes: Collection[str], timeout_s: float
    ) -> dict[str, ControlCopy | BaseException]:
        for node in nodes:
            handle = self._ops.host(node)
            if handle is not None and node not in self._reads:
                self._reads[node] = handle.control_copy.remote()
        if self._reads:
            refs = list(self._reads.values())
            ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        return _collect(self._reads)


def _collect(calls: dict[str, Any]) -> dict[str, Any]:
    """Take the answered calls out of ``calls``: node -> answer, or the error raised
    (a host's own refusal unwrapped from Ray's task error)."""
    refs = list(calls.values())
    done = set(ray.wait(refs, num_returns=len(refs), timeout=0)[0]) if refs else set()
    answers: dict[str, Any] = {}
    for node, ref in list(calls.items()):
        if ref not in done:
            continue
        del calls[node]
        try:
            answers[node] = ray.get(ref)
        except Exception as exc:
            cause = getattr(exc, "cause", None)
            answers[node] = cause if isinstance(cause, BaseException) else exc
    return answers


_REPORT_WAIT_S = 0.3
_ANSWERED_LATELY_S = 3.0
_PIN_TIMEOUT_S = 2.0
# A restore copies a unit's checkpoint: allowed the time of a large copy.
_RESTORE_TIMEOUT_S = 600.0


class _ReplicaCalls:
    """The coordinator's replica calls to hosts, never blocking its loop for long.

    ``set_replicas`` is sent without waiting and confirmed on a later round; at most
    one is in flight per (node, unit), and a pin waits until none is, so a host
    applies a unit's follower lists in the order the coordinator decided them (a
    threaded actor may run two calls of one caller in either order). Reports are
    asked at most once at a time per host process, and a node's report is its
    processes' reports merged, given only while every one of them answers.
    """

    def __init__(self, ops: RayOps) -> None:
        self._ops = ops
        Value = tuple[int, tuple[tuple[str, str], ...]]
        self._confirmed: dict[tuple[str, str], Value] = {}
        self._pending: dict[tuple[str, str], tuple[Value, Any]] = {}
        self._report_refs: dict[str, Any] = {}
        self._reports: dict[str, dict[str, dict[str, Any]]] = {}
        self._answered: dict[str, float] = {}  # host key -> when it last answered a report
        self._releasing: dict[tuple[str, str], Any] = {}

    def release(self, node: str, unit_id: str) -> None:
        """close_unit on ``node`` without waiting; at most one in flight per unit there."""
        key = (node, unit_id)
        ref = self._releasing.get(key)
        if ref is not None and not ray.wait([ref], timeout=0)[0]:
            return
        handle = self._ops.unit_handle(node, unit_id)
        if handle is not None:
            self._releasing[key] = handle.close_unit.remote(unit_id)

    def _answered_lately(self, host: str) -> bool:
        return time.monotonic() - self._answered.get(host, -1e9) < _ANSWERED_LATELY_S

    def answered_lately(self, node: str) -> bool:
        """Every host process of ``node`` answered a report lately."""
        return all(self._answered_lately(host) for host in self._ops.node_hosts(node))

    def forget(self, node: str) -> None:
        for table in (self._confirmed, self._pending):
            for key in [k for k in table if k[0] == node]:
                del table[key]
        for host in self._ops.node_hosts(node):
            self._report_refs.pop(host, None)
            self._reports.pop(host, None)
            self._answered.pop(host, None)

    def _settled(self, key: tuple[str, str]) -> bool:
        """Whether no set_replicas is in flight for ``key`` (recording how it ended)."""
        pending = self._pending.get(key)
        if pending is None:
            return True
        value, ref = pending
        if not ray.wait([ref], timeout=0)[0]:
            return False
        del self._pending[key]
        try:
            ray.get(ref)
            self._confirmed[key] = value
        except Exception as exc:  # not served there (yet): sent again next round
            log.debug("set_replicas_refused", node=key[0], shard=key[1], error=str(exc))
        return True

    def set_replicas(self, node: str, unit_id: str, epoch: int, followers: dict[str, str]) -> None:
        key = (node, unit_id)
        value = (epoch, tuple(sorted(followers.items())))
        if not self._settled(key) or self._confirmed.get(key) == value:
            return
        handle = self._ops.unit_handle(node, unit_id)
        if handle is None:
            return
        self._confirmed.pop(key, None)
        self._pending[key] = (value, handle.set_replicas.remote(unit_id, epoch, followers))

    def pin(self, node: str, unit_id: str, epoch: int, follower: str) -> bool:
        key = (node, unit_id)
        handle = self._ops.unit_handle(node, unit_id)
        if handle is None or not self._settled(key):
            return False
        pinned = bool(
            ray.get(handle.replica_pin.remote(unit_id, epoch, follower), timeout=_PIN_TIMEOUT_S)
        )
        # Whatever comes next (the join, or not), the follower list goes out again.
        self._confirmed.pop(key, None)
        return pinned

    def reports(self) -> dict[str, dict[str, dict[str, Any]]]:
        """node -> unit -> report, from the nodes whose every host answered lately."""
        sent = []
        for host, handle in list(self._ops._hosts.items()):
            if host in self._ops._gone or host in self._report_refs:
                continue
            self._report_refs[host] = ref = handle.replica_report.remote()
            sent.append(ref)
        if sent:
            ray.wait(sent, num_returns=len(sent), timeout=_REPORT_WAIT_S)
        refs = list(self._report_refs.values())
        done = set(ray.wait(refs, num_returns=len(refs), timeout=0)[0]) if refs else set()
        for host, ref in list(self._report_refs.items()):
            if ref not in done:
                continue
            del self._report_refs[host]
            try:
                self._reports[host] = ray.get(ref)
                self._answered[host] = time.monotonic()
            except Exception as exc:
                self._reports.pop(host, None)
                log.debug("replica_report_failed", host=host, error=str(exc))
        # Only nodes whose hosts all answered lately: a paused one's last report is history.
        merged: dict[str, dict[str, dict[str, Any]]] = {}
        for node in self._ops.nodes():
            hosts = self._ops.node_hosts(node)
            if all(h in self._ops._hosts and h in self._reports for h in hosts) and (
                self.answered_lately(node)
            ):
                merged[node] = {u: r for h in hosts for u, r in self._reports[h].items()}
        return merged
