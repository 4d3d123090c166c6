"""Several operations in one host call: what a gateway's coalescer sends (``actors.coalesce``).

:func:`run_many` serves ``[(unit_id, epoch, op), ...]`` on one host: each call exactly as
:meth:`UnitHost.run <actors.host.UnitHost.run>` would run it alone (the unit's lock, the
epoch check, ``StaleRoute`` after a takeover; a ``read`` operation without the lock), the
calls of one unit in their order, the units at once on a small pool of threads so that
their synced commits overlap (a RocksDB write releases the GIL while it syncs). The
answer lists, in the calls' order, each call's answer or the exception it raised: one
unit's failure is its callers', never the whole batch's.

Recovery contract: nothing here holds state; each call is as idempotent as its operation,
and a caller that gets an exception (or none, the host being gone) retries that call alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

__all__ = ["UNITS_AT_ONCE", "run_many"]

#: Units whose calls one batch runs at once (the rest wait for a thread of the pool).
UNITS_AT_ONCE: Final = 8

_pool: ThreadPoolExecutor | None = None
_pool_guard = threading.Lock()


def _threads() -> ThreadPoolExecutor:
    global _pool
    with _pool_guard:
        if _pool is None:
            _pool = ThreadPoolExecutor(UNITS_AT_ONCE - 1, thread_name_prefix="unit-batch")
        return _pool


def run_many(
    run: Callable[[str, int, Any], Any], calls: Sequence[tuple[str, int, Any]]
) -> list[Any]:
    """Every call through ``run(unit_id, epoch, op)``: per call its answer or its exception."""
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

    groups = list(by_unit.values())
    if not groups:
        return answers
    others = [_threads().submit(unit_calls, group) for group in groups[1:]]
    unit_calls(groups[0])  # this thread takes the first unit itself
    for future in others:
        future.result()
    return answers
