"""The coordinator's time-driven work: scheduled bill runs and the automatic inspection.

One thread beside the reconciliation loop (``cluster.control.service``), so that a
bill run of many shards or a slow inspection never delays a failover. It wakes
every ``[bill_runs] check_every_s``, reads the time from its
:class:`~actors.clock.Clock`, and

- lets :class:`~cluster.control.schedule.ScheduledBillRuns` start, resume or
  finish the bill run due (each shard under the net's bill-run lock; the record
  saved with the marking);
- every ``[inspection] every_s`` (the first one ``every_s`` after start) runs
  :func:`~cluster.control.inspection.inspect`, records its counts as metrics and
  in the control state (``petribill status``), and when a check fails notifies
  the operator: an ``inspection_alert`` error event in the coordinator's log
  and a line in ``control/alerts.jsonl`` (both name every failing check), and
  ``petribill_inspection_findings`` above zero for an alerting rule.

It reaches units through its own router, whose map is the coordinator's own
(no round trip to itself). Recovery contract: everything it must not forget is
in the control state; a restarted coordinator resumes an unfinished bill run and
inspects again one period after starting.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog

from actors import metrics
from actors.clock import SYSTEM_CLOCK, Clock
from actors.router import HostUnreachable, Transport, UnitRouter
from cluster.control.coordinator import Coordinator
from cluster.control.inspection import InspectionReport, inspect
from cluster.control.schedule import BillSchedule, ScheduledBillRuns

__all__ = ["CoordinatorDuties", "DutiesStopped", "InspectionSettings", "OwnRoutes", "alerts_path"]

log = structlog.get_logger("petribill.coordinator")

ALERTS_BYTES_MAX: Final = 4 * 1024 * 1024
#: How long a scheduled inspection may take in all.
INSPECTION_TIMEOUT_S: Final = 300.0


def alerts_path(data_dir: Path) -> Path:
    """Where the operator's inspection alerts are appended (one JSON object a line)."""
    return data_dir / "control" / "alerts.jsonl"


class DutiesStopped(RuntimeError):
    """Raised into a call of the coordinator's duties when the coordinator stops: the
    router does not retry it, so the call ends at once instead of at its time limit."""


class OwnRoutes:
    """A :class:`~actors.router.Transport` for the coordinator's own calls: the unit map
    from the coordinator itself, hosts through ``inner`` (Ray or in-process)."""

    def __init__(
        self,
        inner: Transport,
        routes: Callable[[], dict[str, tuple[str, int]]],
        stopped: threading.Event | None = None,
    ) -> None:
        self._inner = inner
        self._routes = routes
        self.stopped = stopped if stopped is not None else threading.Event()

    async def routes(self, timeout_s: float) -> dict[str, tuple[str, int]]:
        if self.stopped.is_set():
            raise DutiesStopped("the coordinator stopped")
        return self._routes()

    async def host_call(self, host: str, method: str, *args: Any, timeout_s: float) -> Any:
        if self.stopped.is_set():
            raise DutiesStopped("the coordinator stopped")
        return await self._inner.host_call(host, method, *args, timeout_s=timeout_s)

    async def coordinator_call(self, method: str, *args: Any, timeout_s: float) -> Any:
        raise HostUnreachable(f"the coordinator does not call itself ({method})")


@dataclass(frozen=True, slots=True, kw_only=True)
class InspectionSettings:
    """``[inspection]``: ``every_s`` (0: not scheduled), ``late_s``, ``session_age_max_s``."""

    every_s: float = 600.0
    late_s: int = 60
    session_age_max_s: int = 86_400

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> InspectionSettings:
        """The ``inspection`` table of the plain settings (defaults for what it lacks)."""
        return cls(**dict(settings.get("inspection") or {}))


class CoordinatorDuties:
    """Runs the scheduled bill runs and inspections on a thread (module docstring)."""

    def __init__(
        self,
        *,
        coordinator: Coordinator,
        lock: threading.Lock,
        router: UnitRouter,
        data_dir: Path,
        schedule: BillSchedule,
        inspection: InspectionSettings,
        units: Callable[[], list[dict[str, Any]]],
        clock: Clock = SYSTEM_CLOCK,
        storage_mode: str = "shared",
    ) -> None:
        self._coordinator = coordinator
        self._lock = lock
        self.router = router
        self._data_dir = data_dir
        self.bill_runs = ScheduledBillRuns(
            schedule, coordinator=coordinator, lock=lock, router=router
        )
        self.inspection = inspection
        self._units = units
        self.clock = clock
        self._storage_mode = storage_mode
        self._next_inspection = time.monotonic() + inspection.every_s
        transport = router.transport
        # Stopping ends the calls in flight too (OwnRoutes raises DutiesStopped into them).
        self._stop = transport.stopped if isinstance(transport, OwnRoutes) else threading.Event()
        self._thread: threading.Thread | None = None
        self._inspecting = threading.Lock()
        self._ticking = threading.Lock()  # one wake-up at a time (the thread's, a test's)
        # One event loop per calling thread, kept (the router keeps state per loop).
        self._loops = threading.local()

    def start(self) -> CoordinatorDuties:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="duties", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        wait_s = self.bill_runs.schedule.check_every_s
        if self.inspection.every_s > 0:
            wait_s = min(wait_s, self.inspection.every_s)
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(wait_s)

    def tick(self) -> None:
        """One wake-up: the bill run due (once every unit is served), then the inspection
        if its time has come."""
        with self._ticking:
            self._tick()

    def _tick(self) -> None:
        with self._lock:
            healthy = self._coordinator.healthy()
        try:
            if healthy:
                self.bill_runs.check(self.clock())
        except DutiesStopped:
            return
        except Exception:  # the next check resumes from the saved record
            log.exception("bill_run_check_failed")
        every = self.inspection.every_s
        if every > 0 and time.monotonic() >= self._next_inspection:
            self._next_inspection = time.monotonic() + every
            try:
                self.inspect_now(INSPECTION_TIMEOUT_S)
            except DutiesStopped:
                return
            except Exception:
                log.exception("inspection_failed")

    # -- the inspection -----------------------------------------------------------------

    def inspect_now(self, timeout_s: float) -> InspectionReport:
        """Run the inspection now (one at a time), record it, notify if a check fails."""
        with self._inspecting:
            now_s = int(self.clock())
            loop = getattr(self._loops, "loop", None)
            if loop is None:
                loop = self._loops.loop = asyncio.new_event_loop()
            report = loop.run_until_complete(
                inspect(
                    self.router,
                    self._units(),
                    now_s=now_s,
                    late_s=self.inspection.late_s,
                    session_age_max_s=self.inspection.session_age_max_s,
                    timeout_s=timeout_s,
                    storage_mode=self._storage_mode,
                )
            )
        metrics.inspection(report.counts())
        with self._lock:
            self._coordinator.schedule["inspection"] = report.to_dict()
            self._coordinator.save()
        if report.ok:
            log.info("inspection_ok", at_s=report.at_s)
        else:
            self._alert(report)
        return report

    def _alert(self, report: InspectionReport) -> None:
        failing = {f.check: f.detail for f in report.findings if not f.ok}
        log.error("inspection_alert", at_s=report.at_s, failing=failing)
        path = alerts_path(self._data_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size > ALERTS_BYTES_MAX:
            os.replace(path, path.with_suffix(".jsonl.1"))
        line = json.dumps({"event": "inspection_alert", "at_s": report.at_s, "failing": failing})
        with open(path, "a") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def last_inspection(self) -> InspectionReport | None:
        """The last recorded inspection (call under the service's lock)."""
        found = self._coordinator.schedule.get("inspection")
        return None if found is None else InspectionReport.from_dict(found)

    def status(self) -> dict[str, Any]:
        """What ``petribill status`` shows of the schedule (under the service's lock)."""
        last = self.last_inspection()
        return {
            "bill_runs": self.bill_runs.status(self.clock()),
            "inspection": None
            if last is None
            else {
                "at_s": last.at_s,
                "ok": last.ok,
                "failing": [f.check for f in last.findings if not f.ok],
                "every_s": self.inspection.every_s,
            },
        }
