"""Petribill's metrics, exported through Ray's metrics agent in Prometheus format.

Every Ray node serves the metrics of the processes on it at
``http://<node address>:<metrics export port>/metrics`` (``petribill status``
shows the address, ``petribill metrics`` prints petribill's series from every
node). Ray prefixes the names with ``ray_``:

=====================================  =========  ==========================================
``petribill_rpc_total``                counter    gateway RPCs (and StreamUsage batches) by
                                                  ``rpc`` and final ``code``
``petribill_rpc_seconds``              histogram  their latency, by ``rpc``
``petribill_unit_call_seconds``        histogram  engine calls on a host, by unit ``kind``
                                                  and ``method`` (lock wait included)
``petribill_records``                  gauge      a partition's reconciliation counters by
                                                  ``unit`` and ``kind`` (received, rated,
                                                  rejected, duplicates): read from the
                                                  partition, so they survive restarts
``petribill_takeovers_total``          counter    node failures taken over by the coordinator
``petribill_takeover_seconds``         histogram  from a node's loss until every unit is
                                                  served again
``petribill_units_missing_total``      counter    opens refused because a unit's data or
                                                  epoch file was gone, by ``unit`` (an
                                                  operator alert: never opened empty)
``petribill_units_lost_total``         counter    units the coordinator declared lost (no
                                                  in-sync copy left), by ``unit``
``petribill_replication_seconds``      histogram  a primary's shipping of one batch to its
                                                  followers, until every answer
``petribill_duty_rounds_total``        counter    duty rounds of the hosts (actors.duties)
``petribill_duty_done_total``          counter    what the duties did, by ``duty``
                                                  (``sessions_expired``, ``invoices_overdue``)
``petribill_bill_runs_total``          counter    scheduled bill runs by ``event`` (started,
                                                  resumed, finished)
``petribill_inspections_total``        counter    automatic inspections by ``result``
                                                  (``ok``, ``problems``)
``petribill_inspection_findings``      gauge      the last inspection's count per ``check``
                                                  (0: the check held); alert on > 0
=====================================  =========  ==========================================

Recording is per call or per batch, never per record. In a process that is
not connected to Ray (a unit test, a benchmark's baseline) every function
here does nothing.
"""

from __future__ import annotations

import threading
from typing import Any

import ray

__all__ = [
    "bill_run_event",
    "duty_round",
    "inspection",
    "metrics_urls",
    "partition_counters",
    "petribill_series",
    "replication",
    "rpc",
    "takeover",
    "unit_call",
    "unit_lost",
    "unit_missing",
]

_LATENCY_S = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0]
_TAKEOVER_S = [0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0]


class _Registry:
    """The metric objects of this process, created on first use once Ray is connected."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._made: dict[str, Any] | None = None

    def get(self) -> dict[str, Any] | None:
        made = self._made
        if made is not None:
            return made
        if not ray.is_initialized():
            return None
        with self._lock:
            if self._made is None:
                self._made = self._make()
        return self._made

    @staticmethod
    def _make() -> dict[str, Any]:
        from ray.util import metrics

        return {
            "rpc_total": metrics.Counter(
                "petribill_rpc_total",
                description="Gateway RPCs and StreamUsage batches by final status code.",
                tag_keys=("rpc", "code"),
            ),
            "rpc_seconds": metrics.Histogram(
                "petribill_rpc_seconds",
                description="Gateway RPC latency (a StreamUsage batch counts as one).",
                boundaries=_LATENCY_S,
                tag_keys=("rpc",),
            ),
            "unit_call_seconds": metrics.Histogram(
                "petribill_unit_call_seconds",
                description="Engine calls on a unit host, waiting for the unit lock included.",
                boundaries=_LATENCY_S,
                tag_keys=("kind", "method"),
            ),
            "records": metrics.Gauge(
                "petribill_records",
                description="A rating partition's reconciliation counters.",
                tag_keys=("unit", "kind"),
            ),
            "takeovers_total": metrics.Counter(
                "petribill_takeovers_total",
                description="Node failures whose units were taken over.",
            ),
            "takeover_seconds": metrics.Histogram(
                "petribill_takeover_seconds",
                description="From a node's loss until every unit is served again.",
                boundaries=_TAKEOVER_S,
            ),
            "units_missing_total": metrics.Counter(
                "petribill_units_missing_total",
                description="Opens refused because a unit's data or epoch file was gone.",
                tag_keys=("unit",),
            ),
            "units_lost_total": metrics.Counter(
                "petribill_units_lost_total",
                description="Units declared lost: no in-sync copy was left to promote.",
                tag_keys=("unit",),
            ),
            "replication_seconds": metrics.Histogram(
                "petribill_replication_seconds",
                description="Shipping one batch to a unit's followers, until every answer.",
                boundaries=_LATENCY_S,
            ),
            "duty_rounds_total": metrics.Counter(
                "petribill_duty_rounds_total",
                description="Rounds of the account shards' time-driven duties on a host.",
            ),
            "duty_done_total": metrics.Counter(
                "petribill_duty_done_total",
                description="Reservations released and invoices aged by the duties.",
                tag_keys=("duty",),
            ),
            "bill_runs_total": metrics.Counter(
                "petribill_bill_runs_total",
                description="Scheduled bill runs started, resumed and finished.",
                tag_keys=("event",),
            ),
            "inspections_total": metrics.Counter(
                "petribill_inspections_total",
                description="Automatic inspections, by result.",
                tag_keys=("result",),
            ),
            "inspection_findings": metrics.Gauge(
                "petribill_inspection_findings",
                description="What the last automatic inspection found, per check (0: held).",
                tag_keys=("check",),
            ),
        }


_REGISTRY = _Registry()


def rpc(name: str, code: str, seconds: float) -> None:
    """One gateway RPC (or stream batch) answered with ``code`` after ``seconds``."""
    made = _REGISTRY.get()
    if made is None:
        return
    made["rpc_total"].inc(1, tags={"rpc": name, "code": code})
    made["rpc_seconds"].observe(seconds, tags={"rpc": name})


def unit_call(kind: str, method: str, seconds: float) -> None:
    """One engine call on a host's unit of ``kind`` (account or partition)."""
    made = _REGISTRY.get()
    if made is not None:
        made["unit_call_seconds"].observe(seconds, tags={"kind": kind, "method": method})


def partition_counters(unit_id: str, partition: Any) -> None:
    """A partition's reconciliation counters (``partition.counters()``) after a call."""
    made = _REGISTRY.get()
    if made is None:
        return
    counters = partition.counters()
    gauge = made["records"]
    for kind in ("received", "rated", "rejected", "duplicates"):
        gauge.set(getattr(counters, kind), tags={"unit": unit_id, "kind": kind})


def takeover(seconds: float) -> None:
    """One node failure taken over, ``seconds`` after the node was lost."""
    made = _REGISTRY.get()
    if made is None:
        return
    made["takeovers_total"].inc(1)
    made["takeover_seconds"].observe(seconds)


def unit_missing(unit_id: str) -> None:
    """A host refused to open ``unit_id``: its data or epoch file is gone."""
    made = _REGISTRY.get()
    if made is not None:
        made["units_missing_total"].inc(1, tags={"unit": unit_id})


def unit_lost(unit_id: str) -> None:
    """The coordinator declared ``unit_id`` lost (no in-sync copy to promote)."""
    made = _REGISTRY.get()
    if made is not None:
        made["units_lost_total"].inc(1, tags={"unit": unit_id})


def replication(seconds: float) -> None:
    """One batch shipped to a unit's followers in ``seconds``."""
    made = _REGISTRY.get()
    if made is not None:
        made["replication_seconds"].observe(seconds)


def duty_round(sessions_expired: int, invoices_overdue: int) -> None:
    """One round of a host's duty runner and what it did."""
    made = _REGISTRY.get()
    if made is None:
        return
    made["duty_rounds_total"].inc(1)
    if sessions_expired:
        made["duty_done_total"].inc(sessions_expired, tags={"duty": "sessions_expired"})
    if invoices_overdue:
        made["duty_done_total"].inc(invoices_overdue, tags={"duty": "invoices_overdue"})


def bill_run_event(event: str) -> None:
    """A scheduled bill run ``started``, ``resumed`` (after a coordinator restart) or
    ``finished``."""
    made = _REGISTRY.get()
    if made is not None:
        made["bill_runs_total"].inc(1, tags={"event": event})


def inspection(findings: dict[str, int]) -> None:
    """One automatic inspection: its count per check (0 where the check held)."""
    made = _REGISTRY.get()
    if made is None:
        return
    ok = not any(findings.values())
    made["inspections_total"].inc(1, tags={"result": "ok" if ok else "problems"})
    for check, count in findings.items():
        made["inspection_findings"].set(count, tags={"check": check})


def metrics_urls() -> dict[str, str]:
    """Ray node id -> the Prometheus address of its metrics agent, for every alive node
    (a blocking GCS call; the caller is connected to the cluster)."""
    urls = {}
    for node in ray.nodes():  # type: ignore[no-untyped-call]
        port = node.get("MetricsExportPort")
        if node.get("Alive") and port:
            urls[node["NodeID"]] = f"http://{node['NodeManagerAddress']}:{port}/metrics"
    return urls


def petribill_series(text: str) -> list[str]:
    """The lines of a Prometheus page that belong to petribill's metrics."""
    return [
        line
        for line in text.splitlines()
        if line.startswith("ray_petribill_")
        or (line.startswith("# ") and " ray_petribill_" in line)
    ]
