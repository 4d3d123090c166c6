"""Scheduled bill runs: each monthly cycle billed once, by the coordinator, on its own.

**When.** Cycle ``C`` is due at ``C.end + after_end_s`` (``[bill_runs]``; at
least the grace period, before which a run only makes drafts). The coordinator
bills the *latest* due cycle unless a run of it finished, after finishing any
run a crash left unfinished; an older cycle that was never billed (the cluster
was down for over a month) needs an operator's bill run. The schedule begins
with the first cycle that falls due after the cluster first ran it
(``bill_runs_from``): a new cluster does not bill a month that ended before it
existed. The bill run's time (``at_s``, the invoices' issue time) is the due
time itself, not the moment the coordinator got to it, so a resumed or repeated
run issues the very same invoices.

**How.** Shard by shard, each under the net's bill-run lock of that shard
(``bill_run_lock``/``unlock``: no migration moves a shard in the middle of its
run), with the :class:`~actors.shard.ops.BillRun` operation through the router, in
steps of a hundred accounts that each renew the lock's lease.
A shard whose lock is taken (a migration, an operator's bill run) is tried again
at the next check.

**Exactly once per cycle, across coordinator crashes.** The run's record lives in
the control state (``ControlState.schedule["bill_runs"][C]``), saved atomically
with the marking: ``started`` before the first shard, each shard ``done``
together with the unlock transition that ends it, the shard being billed
(``holding``) together with the lock transition that starts it, and
``finished`` at the end. A restarted coordinator finds the record and resumes
with the shards not done (a lock it held is still its own); a cycle whose record
is finished is never started again. A shard billed twice (a crash between its
bill run and its ``done``) bills nothing twice: a bill run is idempotent per
(account, cycle).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import structlog

from actors import metrics
from actors.router import UnitRouter
from actors.shard.billing import BillRunReport
from actors.shard.ops import BILL_RUN_STEP_ACCOUNTS, BillRun
from billing.cycle import Cycle, cycle_containing, monthly_cycle
from cluster.control.coordinator import Coordinator

__all__ = ["BillSchedule", "ScheduledBillRuns"]

log = structlog.get_logger("petribill.schedule")

#: Records kept in the control state (the newest cycles).
RECORDS_MAX: Final = 24
#: How long one step of a shard's bill run may take, retries across takeovers included.
SHARD_TIMEOUT_S: Final = 3600.0
LOCK: Final = "bill_run"


@dataclass(frozen=True, slots=True, kw_only=True)
class BillSchedule:
    """When cycles are billed: ``after_end_s`` after their end, in time zone ``tz``."""

    scheduled: bool = True
    after_end_s: int = 3 * 86_400
    check_every_s: float = 5.0
    tz: str = "UTC"

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], tz: str) -> BillSchedule:
        return cls(**dict(settings.get("bill_runs") or {}), tz=tz)

    def due(self, now_s: float) -> Cycle:
        """The latest cycle whose bill run is due at ``now_s``."""
        # The cycle holding ``now - after_end_s`` has not ended that long ago; the one
        # before it ended at its start, which is at most that.
        return cycle_containing(int(now_s) - self.after_end_s, self.tz).previous()

    def run_at(self, cycle: Cycle) -> int:
        """When ``cycle`` is billed (its bill run's ``at_s``)."""
        return cycle.end_s + self.after_end_s

    def cycle(self, cycle_id: str) -> Cycle:
        year, month = (int(part) for part in cycle_id.split("-"))
        return monthly_cycle(year, month, self.tz)


class ScheduledBillRuns:
    """Starts, resumes and finishes the scheduled bill runs (module docstring).

    ``coordinator`` and ``lock`` are the service's: every change of the record is
    made under ``lock`` and saved with the marking. :meth:`check` does the work due
    at ``now_s`` and returns; the caller (``cluster.control.duties``) calls it
    every ``check_every_s``.
    """

    def __init__(
        self,
        schedule: BillSchedule,
        *,
        coordinator: Coordinator,
        lock: threading.Lock,
        router: UnitRouter,
        on_event: Callable[[str, str], None] | None = None,
    ) -> None:
        self.schedule = schedule
        self._coordinator = coordinator
        self._lock = lock
        self._router = router
        self._on_event = on_event
        self._resumed: set[str] = set()

    def _records(self) -> dict[str, dict[str, Any]]:
        records: dict[str, dict[str, Any]] = self._coordinator.schedule.setdefault("bill_runs", {})
        return records

    def _event(self, event: str, cycle_id: str, **fields: Any) -> None:
        log.info(f"bill_run_{event}", cycle=cycle_id, scheduled=True, **fields)
        metrics.bill_run_event(event)
        if self._on_event is not None:
            self._on_event(event, cycle_id)

    # -- the work ------------------------------------------------------------------------

    def check(self, now_s: float) -> list[str]:
        """Finish what a crash left unfinished, then start the bill run due at ``now_s``
        unless it finished; the cycles finished now (none while a lock is taken)."""
        if not self.schedule.scheduled:
            return []
        due = self.schedule.due(now_s)
        with self._lock:
            schedule = self._coordinator.schedule
            if "bill_runs_from" not in schedule:
                schedule["bill_runs_from"] = due.next().cycle_id  # a new cluster: from now on
                self._coordinator.save()
            first = schedule["bill_runs_from"]
            records = self._records()
            cycles = sorted(c for c, r in records.items() if r.get("finished_s") is None)
        if due.cycle_id >= first and due.cycle_id not in cycles:
            cycles.append(due.cycle_id)
        finished = []
        for cycle_id in cycles:
            if not self._run(self.schedule.cycle(cycle_id), now_s):
                break
            finished.append(cycle_id)
        return finished

    def _run(self, cycle: Cycle, now_s: float) -> bool:
        """Bill ``cycle`` shard by shard; False when a shard's lock is taken (next check)."""
        record = self._begin(cycle, now_s)
        if record is None:
            return True  # finished before
        for unit in self._router.all_shards():
            if unit in record["done"]:
                continue
            if not self._take(record, unit):
                return False  # a migration or an operator's run holds it: next check
            report = self._bill_shard(cycle, unit, int(record["at_s"]))
            if report.refused:  # cannot happen for a due cycle; never mark it done
                log.error("bill_run_refused", cycle=cycle.cycle_id, shard=unit, why=report.refused)
                self._give_back(record, unit, done=False)
                return False
            record["accounts"] = int(record.get("accounts", 0)) + report.accounts
            record["invoices"] = int(record.get("invoices", 0)) + report.results.get("issued", 0)
            self._give_back(record, unit, done=True)
            log.info(
                "bill_run_shard_done", cycle=cycle.cycle_id, shard=unit, accounts=report.accounts
            )
        with self._lock:
            record["finished_s"] = int(now_s)
            self._coordinator.save()
        self._event("finished", cycle.cycle_id, shards=len(record["done"]))
        return True

    def _bill_shard(self, cycle: Cycle, unit: str, at_s: int) -> BillRunReport:
        """One shard's run in steps of at most BILL_RUN_STEP_ACCOUNTS accounts (one commit
        each), renewing the lock's lease after each: a step holds the shard and a thread
        of its host only briefly (docs/operations-notes.md, "Long calls in bounded steps")."""
        report: BillRunReport | None = None
        after = None
        while True:
            op = BillRun(
                cycle_id=cycle.cycle_id,
                at_s=at_s,
                after=after,
                accounts_max=BILL_RUN_STEP_ACCOUNTS,
            )
            step = self._router.run_blocking(unit, op, timeout_s=SHARD_TIMEOUT_S)
            report = step if report is None else report.plus(step)
            if step.refused or step.resume_after is None:
                return report
            after = step.resume_after
            with self._lock:
                self._coordinator.renew(unit, LOCK)

    def _begin(self, cycle: Cycle, now_s: float) -> dict[str, Any] | None:
        """The record of ``cycle``'s run, created (and saved) if it never started; None
        when its run finished."""
        with self._lock:
            records = self._records()
            record = records.get(cycle.cycle_id)
            if record is not None and record.get("finished_s") is not None:
                return None
            fresh = record is None
            if record is None:
                record = records[cycle.cycle_id] = {
                    "cycle": cycle.cycle_id,
                    "at_s": self.schedule.run_at(cycle),
                    "started_s": int(now_s),
                    "finished_s": None,
                    "done": [],
                    "holding": None,
                    "accounts": 0,
                    "invoices": 0,
                }
                for old in sorted(records)[:-RECORDS_MAX]:
                    del records[old]
                self._coordinator.save()
        if fresh:
            self._event("started", cycle.cycle_id, at_s=record["at_s"])
        elif cycle.cycle_id not in self._resumed:
            self._event("resumed", cycle.cycle_id, done=len(record["done"]))
        self._resumed.add(cycle.cycle_id)
        return record

    def _take(self, record: dict[str, Any], unit: str) -> bool:
        """Hold ``unit``'s bill-run lock; the record says so in the same save."""
        with self._lock:
            held = (unit, LOCK) in self._coordinator.marking.locks_held()
            if record.get("holding") == unit and held:
                return True  # taken before a restart: still this run's
            record["holding"] = unit
            if self._coordinator.lock(unit, LOCK):
                return True
            record["holding"] = None
            return False

    def _give_back(self, record: dict[str, Any], unit: str, *, done: bool) -> None:
        """Release ``unit``'s lock; the record notes the shard done in the same save."""
        with self._lock:
            if done:
                record["done"].append(unit)
            record["holding"] = None
            if not self._coordinator.unlock(unit, LOCK):
                self._coordinator.save()  # the lock's lease had run out: save anyway

    # -- what status shows ---------------------------------------------------------------

    def status(self, now_s: float) -> dict[str, Any]:
        """The next scheduled run, the one under way and the last one (call under the
        service's lock)."""
        due = self.schedule.due(now_s)
        schedule = self._coordinator.schedule
        records = self._records()
        first = schedule.get("bill_runs_from")
        upcoming = due if due.cycle_id not in records else due.next()
        if first is not None and upcoming.cycle_id < first:
            upcoming = self.schedule.cycle(first)
        running = sorted(c for c, r in records.items() if r.get("finished_s") is None)
        finished = sorted(c for c, r in records.items() if r.get("finished_s") is not None)
        return {
            "scheduled": self.schedule.scheduled,
            "after_end_s": self.schedule.after_end_s,
            "next": {"cycle": upcoming.cycle_id, "at_s": self.schedule.run_at(upcoming)},
            "running": dict(records[running[0]]) if running else None,
            "last": dict(records[finished[-1]]) if finished else None,
        }
