"""Long operator calls as series of short ones: bounded steps, a few units at a time.

A reconcile, a bill run or a backup touches every unit, and a unit's part of it
can be long (a shard's audit reads every row it has). Done as one engine call
per unit, it would hold the unit's lock — and a thread of its host — for all
that time, and with every unit at once, every thread of every host: ingestion
would stall and the coordinator could take the busy hosts for dead ones. So
each unit's part is a series of bounded steps (engine calls that each stop
after a bound on rows or time: :class:`~actors.shard.ops.AuditStep`,
:class:`~actors.shard.ops.BillRun` with ``accounts_max``), and only
:data:`UNITS_AT_ONCE` units are worked on at a time. Between two steps of a
unit its writes go on, and each step is retried across a takeover by the
router like any call (a step holds plain values, so another host resumes it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, TypeVar

from actors.router import time_left
from actors.shard import ops
from actors.shard.audit import AuditReport
from cluster.backend.context import Cluster

__all__ = ["UNITS_AT_ONCE", "audit_in_steps", "each_unit"]

R = TypeVar("R")

#: How many units one long call works on at the same time (out of 16 default threads
#: per host: most stay free for ingestion).
UNITS_AT_ONCE: Final = 4


async def each_unit(
    units: Sequence[str], work: Callable[[str], Awaitable[R]], *, at_once: int = UNITS_AT_ONCE
) -> dict[str, R]:
    """``work(unit)`` for every unit, at most ``at_once`` at a time: ``{unit: answer}``."""
    gate = asyncio.Semaphore(at_once)

    async def one(unit: str) -> R:
        async with gate:
            return await work(unit)

    answers = await asyncio.gather(*(one(unit) for unit in units))
    return dict(zip(units, answers, strict=True))


async def audit_in_steps(cluster: Cluster, unit: str, deadline: float) -> AuditReport:
    """The audit of one account shard, as a series of :class:`~actors.shard.ops.AuditStep`."""
    step = ops.AuditStep()
    while True:
        progress = await cluster.run(unit, step, timeout_s=time_left(deadline))
        if progress.report is not None:
            return progress.report
        step = ops.AuditStep(progress=progress)
