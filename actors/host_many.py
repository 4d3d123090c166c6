"""Several operations in one host call: what a gateway's coalescer sends (``actors.coalesce``).

:func:`run_many` serves ``[(unit_id, epoch, op), ...]`` on one host: each call exactly as
:meth:`UnitHost.run <actors.host.UnitHost.run>` would run it alone (the unit's lock, the
epoch check, ``StaleRoute`` after a takeover; a ``read`` operation without the lock), the
calls of one unit in their order. The answer lists, in the calls' order, each call's
answer or the exception it raised: one unit's failure is its callers', never the whole
batch's.

The units of a batch run one after another in the calling thread. A pool that ran them
at once, so that their synced commits would overlap, overlapped nothing: a synced
rocksdict write holds the GIL through its fsync, so the commits of one process never
overlap, and every hand-off to a pool thread cost a context switch and a GIL hand-off
(docs/operations-notes.md, "Online charging": the host's CPU per step fell by a third
without it). Only a unit whose lock another call holds (a bill run, an audit) goes to a
thread of its own, so that it cannot hold the rest of the batch behind it.

Recovery contract: nothing here holds state; each call is as idempotent as its operation,
and a caller that gets an exception (or none, the host being gone) retries that call alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

__all__ = ["BUSY_UNITS_AT_ONCE", "run_many"]

#: Units of a batch whose lock was busy that wait at once on threads of their own.
BUSY_UNITS_AT_ONCE: Final = 7

_pool: ThreadPoolExecutor | None = None
_pool_guard = threading.Lock()


def _threads() -> ThreadPoolExecutor:
    global _pool
    with _pool_guard:
        if _pool is None:
            _pool = ThreadPoolExecutor(BUSY_UNITS_AT_ONCE, thread_name_prefix="unit-batch")
        return _pool


def run_many(
    run: Callable[[str, int, Any], Any],
    calls: Sequence[tuple[str, int, Any]],
    busy: Callable[[str], bool] = lambda unit_id: False,
) -> list[Any]:
    """Every call through ``run(unit_id, epoch, op)``: per call its answer or its exception.
    ``busy(unit_id)`` says that a unit's lock is held now: its calls wait on another thread."""
    answers: list[Any] = [None] * len(calls)
    by_unit: dict[str, list[int]] = {}
    for index, (unit_id, _, _) in enumerate(calls):
        by_unit.setdefault(unit_id, []).append(index)

    def unit_calls(indices: list[int]) -> None:
        for index in indices:
            unit_id, epoch, op = calls[index]
            try:
                answers[index] = run(unit_id, epoch, op)
            except Exception as exc:  # that call's answer; the others go on
                answers[index] = exc

    inline: list[list[int]] = []
    waiting = []
    for unit_id, group in by_unit.items():  # asked once per unit: each group runs once
        if busy(unit_id):
            waiting.append(_threads().submit(unit_calls, group))
        else:
            inline.append(group)
    for group in inline:
        unit_calls(group)
    for future in waiting:
        future.result()
    return answers
