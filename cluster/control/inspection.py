"""The automatic inspection: a scheduled self-check of the whole cluster.

Each check counts what is wrong (0: it held) and says what in ``detail``:

=============================  ==============================================================
``reconcile``                  revenue assurance: every partition's records settled
                               (received = rated + rejected + duplicates), every shard's
                               ledger replay equal to its books, postings summing to zero
``reservations_stuck``         open reservations ``late_s`` past their validity: the
                               owner's expiry duty did not release them
``reservations_over_old``      sessions open longer than ``session_age_max_s``
``invoices_unaged``            open invoices ``late_s`` past their due date: not aged
``overdue_without_reminder``   overdue invoices whose ``payment_overdue`` reminder is missing
``units_without_owner``        units not owned by an alive node (free or being recovered)
``replica_lag``                followers behind their primary: not checked in storage mode
                               ``shared``, which has no replicas (reported as skipped)
=============================  ==============================================================

It runs through the router like any caller (one operation per unit, each with
the call's time limit; a shard's audit a series of bounded steps, a few shards
at once) and reads committed state only; a unit that does not answer in time is
itself a finding of ``units_without_owner``. The coordinator
runs it every ``[inspection] every_s`` (``cluster.control.duties``), records the
counts as metrics, and notifies the operator when a check fails;
``petribill inspect`` runs one now.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from actors.partition.ops import Counters
from actors.router import NoOwner, UnitRouter, deadline_after, time_left
from actors.shard.audit import AuditReport
from actors.shard.ops import AUDIT_STEP_ROWS_MAX, AuditStep, InspectShard
from billing.preprocess import Reconciliation

__all__ = ["CHECKS", "Finding", "InspectionReport", "inspect"]

CHECKS: Final = (
    "reconcile",
    "reservations_stuck",
    "reservations_over_old",
    "invoices_unaged",
    "overdue_without_reminder",
    "units_without_owner",
    "replica_lag",
)
_DETAILS_MAX: Final = 5
#: Shards audited at the same time. A shard's audit reads every row it holds: it runs as
#: bounded AuditSteps, a few shards at once, so no host's threads all go to it and
#: ingestion goes on between the steps (issue #16; as Reconcile does).
AUDITS_AT_ONCE: Final = 4
#: Rows one audit step reads at most (tests make it small to cross many steps).
AUDIT_STEP_ROWS: int = AUDIT_STEP_ROWS_MAX


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One check's result: ``count`` things wrong (0: held), ``detail`` says which."""

    check: str
    count: int = 0
    detail: str = ""
    skipped: bool = False

    @property
    def ok(self) -> bool:
        return self.count == 0


@dataclass(frozen=True, slots=True, kw_only=True)
class InspectionReport:
    """Every check at ``at_s`` (the cluster's clock), in :data:`CHECKS` order."""

    at_s: int
    findings: tuple[Finding, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    def counts(self) -> dict[str, int]:
        return {f.check: f.count for f in self.findings}

    def to_dict(self) -> dict[str, Any]:
        return {
            "at_s": self.at_s,
            "ok": self.ok,
            "findings": [
                {"check": f.check, "count": f.count, "detail": f.detail, "skipped": f.skipped}
                for f in self.findings
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InspectionReport:
        return cls(
            at_s=int(data["at_s"]),
            findings=tuple(Finding(**f) for f in data["findings"]),
        )


def _listed(items: Sequence[str], total: int) -> str:
    shown = ", ".join(items[:_DETAILS_MAX])
    return shown + (f" (+{total - len(items[:_DETAILS_MAX])} more)" if total > _DETAILS_MAX else "")


async def _each(
    router: UnitRouter, units: Sequence[str], op: Any, deadline: float
) -> tuple[dict[str, Any], list[str]]:
    """``op`` on every unit at once: the answers, and the units that did not answer."""
    answers = await asyncio.gather(
        *(router.run(u, op, timeout_s=time_left(deadline)) for u in units),
        return_exceptions=True,
    )
    return _sorted_out(units, answers)


def _sorted_out(units: Sequence[str], answers: Sequence[Any]) -> tuple[dict[str, Any], list[str]]:
    """Each unit's answer, and the units that did not answer (no owner, out of time);
    any other failure is raised."""
    found: dict[str, Any] = {}
    missing: list[str] = []
    for unit, answer in zip(units, answers, strict=True):
        if isinstance(answer, NoOwner | TimeoutError):
            missing.append(unit)
        elif isinstance(answer, BaseException):
            raise answer
        else:
            found[unit] = answer
    return found, missing


async def _audits(
    router: UnitRouter, shards: Sequence[str], deadline: float
) -> tuple[dict[str, AuditReport], list[str]]:
    """Every shard's audit as a series of :class:`~actors.shard.ops.AuditStep`, at most
    :data:`AUDITS_AT_ONCE` shards at a time: the reports, and the shards that did not
    answer in time."""
    gate = asyncio.Semaphore(AUDITS_AT_ONCE)

    async def one(unit: str) -> AuditReport:
        async with gate:
            step = AuditStep(rows_max=AUDIT_STEP_ROWS)
            while True:
                progress = await router.run(unit, step, timeout_s=time_left(deadline))
                if progress.report is not None:
                    return progress.report
                step = AuditStep(progress=progress, rows_max=AUDIT_STEP_ROWS)

    answers = await asyncio.gather(*(one(u) for u in shards), return_exceptions=True)
    return _sorted_out(shards, answers)


async def inspect(
    router: UnitRouter,
    units: Sequence[Mapping[str, Any]],
    *,
    now_s: int,
    late_s: int,
    session_age_max_s: int,
    timeout_s: float,
    storage_mode: str = "shared",
) -> InspectionReport:
    """Run every check (module docstring). ``units`` is the coordinator's view
    (``{"unit", "state", "node"}`` per unit, as ``status()`` lists them)."""
    deadline = deadline_after(timeout_s)
    shards, partitions = router.all_shards(), router.all_partitions()
    (counters, c_missing), (audits, a_missing), (shard_views, s_missing) = await asyncio.gather(
        _each(router, partitions, Counters(), deadline),
        _audits(router, shards, deadline),
        _each(
            router,
            shards,
            InspectShard(now_s=now_s, late_s=late_s, session_age_max_s=session_age_max_s),
            deadline,
        ),
    )
    findings = [_reconcile(counters, audits)]
    views = list(shard_views.values())
    for check, count_field, examples_field, what in (
        ("reservations_stuck", "reservations_stuck", "stuck_examples",
         f"held over {late_s} s past their validity"),
        ("reservations_over_old", "reservations_over_old", "over_old_examples",
         f"open longer than {session_age_max_s} s"),
        ("invoices_unaged", "invoices_unaged", "unaged_examples",
         f"open over {late_s} s past their due date"),
        ("overdue_without_reminder", "overdue_without_reminder", "unreminded_examples",
         "overdue without a payment_overdue reminder"),
    ):  # fmt: skip
        count = sum(int(getattr(v, count_field)) for v in views)
        examples = [str(e) for v in views for e in getattr(v, examples_field)]
        detail = f"{count} {what}: {_listed(examples, count)}" if count else ""
        findings.append(Finding(check=check, count=count, detail=detail))
    unowned = sorted(
        {str(u["unit"]) for u in units if u.get("state") != "owned"}
        | set(c_missing)
        | set(a_missing)
        | set(s_missing)
    )
    findings.append(
        Finding(
            check="units_without_owner",
            count=len(unowned),
            detail=f"not served: {_listed(unowned, len(unowned))}" if unowned else "",
        )
    )
    findings.append(
        Finding(
            check="replica_lag",
            skipped=storage_mode != "replicated",
            detail=f"no replicas in storage mode {storage_mode}"
            if storage_mode != "replicated"
            else "",
        )
    )
    return InspectionReport(at_s=now_s, findings=tuple(findings))


def _reconcile(counters: Mapping[str, Reconciliation], audits: Mapping[str, Any]) -> Finding:
    total = sum(counters.values(), Reconciliation())
    problems = [f"{unit}: {p}" for unit, a in sorted(audits.items()) for p in a.problems]
    ledger = sum(a.postings_total for a in audits.values())
    notes = []
    if total.pending:
        notes.append(f"{total.pending} records received but not settled")
    if ledger:
        notes.append(f"ledger postings sum to {ledger}, not 0")
    notes.extend(problems[:_DETAILS_MAX])
    count = len(problems) + (1 if total.pending else 0) + (1 if ledger else 0)
    return Finding(check="reconcile", count=count, detail="; ".join(notes))
