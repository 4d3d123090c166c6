"""The duty runner: a host's thread that runs the time-driven duties of its account shards.

Each account shard's duties (reservation expiry, invoice ageing:
:mod:`actors.shard.duties`; and the redelivery of sponsor charges its outbox still
holds, :meth:`UnitHost.deliver_pending`) are run by the shard's *owner*, the host that serves
it at its current epoch, and by nobody else. So a takeover moves the duties with
the unit (the next owner's runner finds it among its units), and a zombie owner
(a paused process that wakes after a takeover) cannot run them: each step is a
commit, and the store refuses a commit at an old epoch, exactly as for any
other write (the host then stops serving the unit).

Why a thread beside the host rather than a caller from outside (the coordinator,
a gateway): the owner is the only process that knows, without a round trip,
which units it serves at which epoch, and duties should not depend on a
control plane being up. Why not inside the engine: an engine has no thread and
no clock; it is run, one operation at a time, under its unit's lock.

**Bounded steps.** A round visits every account unit the host serves and runs
:class:`~actors.shard.ops.RunDuties` steps on it through :meth:`UnitHost.run`
until the unit says nothing more is due (or ``steps_per_round_max`` steps ran);
the unit's lock is taken per step only, so usage batches and session steps
interleave with a long expiry pass rather than wait for all of it. The runner
reads the time from its :class:`~actors.clock.Clock` at every step.

**Bound on lateness.** A reservation is released at most ``every_s`` plus one
round's duration after its validity ended, while its shard is served; across a
takeover add the time until the new owner serves it. Late session steps do not
wait for the runner (``billing.ocs.session``: a step expires the session itself).

Recovery contract: the runner holds nothing durable; a restarted host starts a
new one, which resumes from the stored state (duties are idempotent by state).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from actors import metrics
from actors.clock import SYSTEM_CLOCK, Clock
from actors.host import StaleRoute, UnitHost
from actors.routing import unit_kind
from actors.shard.ops import RunDuties

__all__ = ["DutyConfig", "DutyRunner", "RoundReport"]

log = structlog.get_logger("petribill.duties")

#: How long a round's redelivery waits for one sponsor's shard (a takeover under way
#: takes longer: the forward stays in the outbox for the next round).
_REDELIVERY_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True, kw_only=True)
class DutyConfig:
    """How a host runs its shards' duties (``[duties]`` of conf/cluster.toml)."""

    every_s: float = 1.0
    accounts_per_step: int = 200
    invoices_per_step: int = 200
    steps_per_round_max: int = 1_000

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> DutyConfig:
        """The ``duties`` table of the plain settings (defaults for what it lacks)."""
        table = dict(settings.get("duties") or {})
        return cls(**table)


@dataclass(slots=True)
class RoundReport:
    """What one round did: sessions expired, invoices aged and sponsor charges delivered
    again per unit, steps run, and the units it could not reach (taken over meanwhile, or
    failing)."""

    expired: dict[str, int] = field(default_factory=dict)
    overdue: dict[str, int] = field(default_factory=dict)
    redelivered: dict[str, int] = field(default_factory=dict)
    steps: int = 0
    skipped: list[str] = field(default_factory=list)

    @property
    def sessions_expired(self) -> int:
        return sum(self.expired.values())

    @property
    def invoices_overdue(self) -> int:
        return sum(self.overdue.values())


class DutyRunner:
    """Runs the duties of every account unit ``host`` serves, every ``every_s``.

    :meth:`start` runs rounds on a daemon thread until :meth:`stop`;
    :meth:`run_round` runs one round in the caller's thread (tests).
    """

    def __init__(
        self, host: UnitHost, *, clock: Clock = SYSTEM_CLOCK, config: DutyConfig | None = None
    ) -> None:
        self.host = host
        self.clock = clock
        self.config = config or DutyConfig()
        self.rounds = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> DutyRunner:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name=f"duties-{self.host.node}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_round()
            except Exception:  # a round must never end the thread
                log.exception("duty_round_failed", node=self.host.node)
            self._stop.wait(self.config.every_s)

    def run_round(self) -> RoundReport:
        """One round over the account units served now (each through its own steps)."""
        report = RoundReport()
        units = [(u, e) for u, e in sorted(self.host.units().items()) if unit_kind(u) == "account"]
        for unit_id, epoch in units:
            if self._stop.is_set():
                break
            self._run_unit(unit_id, epoch, report)
        # Redelivery last, each sponsor's shard given a short time: one that a takeover
        # keeps unreachable must not hold up the next round's expiry and ageing.
        for unit_id, epoch in units:
            if self._stop.is_set():
                break
            self._redeliver(unit_id, epoch, report)
        self.rounds += 1
        metrics.duty_round(report.sessions_expired, report.invoices_overdue)
        return report

    def _run_unit(self, unit_id: str, epoch: int, report: RoundReport) -> None:
        config = self.config
        expired = overdue = 0
        for _ in range(config.steps_per_round_max):
            op = RunDuties(
                now_s=int(self.clock()),
                accounts_max=config.accounts_per_step,
                invoices_max=config.invoices_per_step,
            )
            try:
                step = self.host.run(unit_id, epoch, op)
            except StaleRoute:
                # Taken over (the store refused this owner's commit) or closed: the
                # unit's duties are its new owner's now.
                report.skipped.append(unit_id)
                break
            except Exception as exc:  # a failing disk, a closing store: next round
                log.warning("duty_step_failed", shard=unit_id, error=f"{type(exc).__name__}: {exc}")
                report.skipped.append(unit_id)
                break
            report.steps += 1
            expired += step.sessions_expired
            overdue += step.overdue
            if not step.more or self._stop.is_set():
                break
            time.sleep(0)  # hand the unit's lock to a waiting call between two steps
        if expired:
            report.expired[unit_id] = expired
            log.info("reservations_expired", shard=unit_id, epoch=epoch, sessions=expired)
        if overdue:
            report.overdue[unit_id] = overdue
            log.info("invoices_overdue", shard=unit_id, epoch=epoch, invoices=overdue)

    def _redeliver(self, unit_id: str, epoch: int, report: RoundReport) -> None:
        """Sponsor charges still in the unit's outbox go to their sponsors' shards again."""
        try:
            delivered = self.host.deliver_pending(
                unit_id, epoch, int(self.clock()), timeout_s=_REDELIVERY_TIMEOUT_S
            )
        except StaleRoute:
            return  # taken over: the new owner's runner delivers them
        except Exception as exc:  # a failing disk, a closing store: next round
            log.warning("redelivery_failed", shard=unit_id, error=f"{type(exc).__name__}: {exc}")
            return
        if delivered:
            report.redelivered[unit_id] = delivered
            log.info("forwards_redelivered", shard=unit_id, epoch=epoch, forwards=delivered)
