"""Coalescing: concurrent operations bound for one host travel in one host call.

A gateway serving many small concurrent requests (online-charging steps) would
pay a Ray call, a lock round and a synced commit per request. A :class:`Coalescer`
queues each operation by the host process that serves its unit (the router's map
and the unit's slot, :mod:`actors.slots`) and sends what has queued as one
``run_many`` call to that host (``actors.host_many``) as
soon as fewer than ``inflight_max`` calls to it are under way: no timer, so a lone
request leaves at once, and under load a batch is whatever arrived during the
previous round trip (the group-commit pattern of databases). Operations whose type
can ``coalesce`` (``SessionStep`` → ``SessionSteps``) are merged per unit into one
operation, which the shard commits once.

Every caller keeps its own operation, deadline and answer. What the batch cannot
answer for a caller — its host gone, its unit taken over (``StaleRoute``), the
batch call itself failed — that caller sends again alone through the router's one
retry loop (:meth:`UnitRouter.run`), with the same operation and so the same
idempotency keys. An exception the engine raised for one operation is that
caller's answer, as it would have been alone.

One coalescer serves one event loop (a gateway's); a call from another loop goes
straight to the router.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import structlog

from actors.host import StaleRoute
from actors.op import Op
from actors.router import HostUnreachable, UnitRouter, deadline_after, time_left

__all__ = ["CALLS_MAX", "INFLIGHT_MAX", "Coalescer"]

log = structlog.get_logger("petribill.coalesce")

R = TypeVar("R")

#: Host calls under way to one host process at once; more operations wait for the next batch.
INFLIGHT_MAX: Final = 2
#: Operations in one host call at most (the rest go in the next).
CALLS_MAX: Final = 256


class _Alone(Exception):
    """Set on a caller's future when the batch could not answer it: send it alone."""


@dataclass(slots=True)
class _Call:
    unit_id: str
    epoch: int
    op: Op[Any]
    future: asyncio.Future[Any]
    deadline: float


class Coalescer:
    """Sends concurrent operations bound for one host together (see the module docstring)."""

    def __init__(
        self, router: UnitRouter, *, inflight_max: int = INFLIGHT_MAX, calls_max: int = CALLS_MAX
    ) -> None:
        self.router = router
        self.inflight_max = inflight_max
        self.calls_max = calls_max
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[str, list[_Call]] = {}
        self._inflight: dict[str, int] = {}
        self._sending: set[asyncio.Task[None]] = set()  # held until done (asyncio keeps weak refs)
        # Counters for tests and the operations notes: host calls made, operations sent.
        self.batches = 0
        self.calls = 0

    async def run(self, unit_id: str, op: Op[R], *, timeout_s: float) -> R:
        """``op`` on ``unit_id``, in the next batch to its host; :class:`~actors.router.NoOwner`
        when no owner answered in time, the engine's exception when it raised one."""
        deadline = deadline_after(timeout_s)
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        route = self.router.route(unit_id)
        if route is None or loop is not self._loop:
            return await self.router.run(unit_id, op, timeout_s=timeout_s)
        node, epoch = route
        host = self.router.host_of(unit_id, node)
        future: asyncio.Future[R] = loop.create_future()
        self._pending.setdefault(host, []).append(_Call(unit_id, epoch, op, future, deadline))
        if self._inflight.get(host, 0) < self.inflight_max:
            self._flush(host)
        try:
            return await future
        except (_Alone, StaleRoute, HostUnreachable):
            # Taken over, host gone, or the batch failed: the router's own retry loop.
            return await self.router.run(unit_id, op, timeout_s=time_left(deadline))

    def _flush(self, host: str) -> None:
        queued = self._pending.pop(host, [])
        calls = [c for c in queued if not c.future.done()]  # a caller that gave up is not sent
        if len(calls) > self.calls_max:
            self._pending[host] = calls[self.calls_max :]
            calls = calls[: self.calls_max]
        if not calls:
            return
        self._inflight[host] = self._inflight.get(host, 0) + 1
        self.batches += 1
        self.calls += len(calls)
        task = asyncio.ensure_future(self._send(host, calls))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, host: str, calls: list[_Call]) -> None:
        try:
            batch, members, merged = _merged(calls)
            timeout_s = max(c.deadline for c in calls) - time.monotonic()
            try:
                answers = await self.router.transport.host_call(
                    host, "run_many", batch, timeout_s=max(timeout_s, 0.001)
                )
            except Exception as exc:  # the host is gone or the call failed: each alone
                log.debug("batch_failed", host=host, calls=len(calls), error=repr(exc))
                for call in calls:
                    _settle(call.future, _Alone(str(exc)))
                return
            for answer, group, many in zip(answers, members, merged, strict=True):
                _answer(answer, group, many)
        finally:
            self._inflight[host] -= 1
            if self._pending.get(host):
                self._flush(host)


def _merged(
    calls: Sequence[_Call],
) -> tuple[list[tuple[str, int, Op[Any]]], list[list[_Call]], list[bool]]:
    """The batch to send (one entry per operation, those that coalesce merged per unit),
    per entry the callers it answers, and whether it is merged (answers a list)."""
    members: list[list[_Call]] = []
    slots: dict[tuple[str, int, type], int] = {}
    for call in calls:
        kind = type(call.op)
        if getattr(kind, "coalesce", None) is None:
            members.append([call])
            continue
        key = (call.unit_id, call.epoch, kind)
        slot = slots.get(key)
        if slot is None:
            slots[key] = len(members)
            members.append([call])
        else:
            members[slot].append(call)
    batch: list[tuple[str, int, Op[Any]]] = []
    merged: list[bool] = []
    for group in members:
        first = group[0]
        merge: Callable[[list[Op[Any]]], Op[Any]] | None = getattr(type(first.op), "coalesce", None)
        batch.append((first.unit_id, first.epoch, first.op if merge is None else merge(
            [c.op for c in group])))  # fmt: skip
        merged.append(merge is not None)
    return batch, members, merged


def _answer(answer: Any, group: list[_Call], merged: bool) -> None:
    """Hand an entry's answer to its callers: a merged entry's list, one item each."""
    if isinstance(answer, BaseException) or not merged:
        for call in group:
            _settle(call.future, answer)
        return
    for call, item in zip(group, answer, strict=True):
        _settle(call.future, item)


def _settle(future: asyncio.Future[Any], answer: Any) -> None:
    if future.done():  # its caller gave up (cancelled): nobody to tell
        return
    if isinstance(answer, BaseException):
        future.set_exception(answer)
    else:
        future.set_result(answer)
