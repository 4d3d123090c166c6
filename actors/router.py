"""The one router: an operation to the host that owns its unit, following takeovers.

Both the gateway's backend and the hosts (a partition charging a shard on
another node, a shard delivering a sponsor's charge) reach units through a
:class:`UnitRouter`. It caches the coordinator's map (``unit -> (node,
epoch)``) and sends every call with the epoch it routes by. A host that does
not serve the unit at that epoch answers :class:`~actors.host.StaleRoute`; a
host that is gone surfaces as :class:`HostUnreachable`. Either way the router
refreshes the map (one refresh shared by the callers that need it) and retries
with backoff until the call's time runs out, then raises
:class:`NoOwner` (the gateway answers UNAVAILABLE and the client retries with
the same idempotency keys). Any other exception is the engine's answer and
propagates.

How hosts are reached is a :class:`Transport`: Ray actors in a cluster
(:class:`actors.remote.RayTransport`), plain objects in one process
(:class:`actors.local.LocalTransport`). The router is asynchronous; a host's
worker thread uses :meth:`UnitRouter.run_blocking`, which drives the same loop
on an event loop of that thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol, TypeVar

import structlog

from actors.host import StaleRoute, UnitLost
from actors.op import Op
from actors.routing import partition_id, partition_of, shard_id, shard_of
from actors.slots import unit_host

__all__ = [
    "HostUnreachable",
    "NoOwner",
    "Transport",
    "UnitRouter",
    "deadline_after",
    "time_left",
]

log = structlog.get_logger("petribill.router")

R = TypeVar("R")

LOST_DETAIL: Final = (
    "no copy with every acknowledged batch is left; an operator must restore it from a backup"
)

# Kept back from the caller's time so an answer arrives before the caller gives up.
_MARGIN_S: Final = 0.05


class HostUnreachable(Exception):
    """Raised by a :class:`Transport` when a host (or the coordinator) cannot be reached:
    its process is gone, it was not found, or it did not answer in time."""


class NoOwner(Exception):
    """Raised by :meth:`UnitRouter.run` when no owner of the unit answered in time.

    The outcome of a write is then unknown: the caller retries with the same ids."""

    def __init__(self, unit_id: str, detail: str) -> None:
        super().__init__(f"{unit_id}: {detail}")
        self.unit_id = unit_id
        self.detail = detail


class Transport(Protocol):
    """How a router reaches the coordinator and the hosts."""

    async def routes(self, timeout_s: float) -> dict[str, tuple[str, int]]:
        """The coordinator's map: unit id -> (node, epoch)."""
        ...

    async def host_call(self, host: str, method: str, *args: Any, timeout_s: float) -> Any:
        """``method(*args)`` on the host process ``host`` (a key of :mod:`actors.slots`:
        the node's name for its slot 0); :class:`HostUnreachable` if it is gone."""
        ...

    async def coordinator_call(self, method: str, *args: Any, timeout_s: float) -> Any:
        """``method(*args)`` on the coordinator; :class:`HostUnreachable` if it is gone."""
        ...


def deadline_after(timeout_s: float) -> float:
    """The monotonic time by which a call given ``timeout_s`` must have answered."""
    return time.monotonic() + max(timeout_s - min(_MARGIN_S, timeout_s * 0.1), 0.001)


def time_left(deadline: float) -> float:
    """Seconds left until ``deadline`` (at least a millisecond, so a call still fails fast)."""
    return max(deadline - time.monotonic(), 0.001)


class UnitRouter:
    """Runs operations on units (``acct-07``, ``part-3``) through their owning hosts."""

    def __init__(
        self,
        transport: Transport,
        *,
        shards: int,
        partitions: int,
        backoff_s: float = 0.05,
        backoff_max_s: float = 1.0,
        hosts_per_node: int = 1,
    ) -> None:
        """``hosts_per_node``: the cluster's setting (its settings' ``hosts_per_node``),
        which decides which host process of a node serves a unit (:mod:`actors.slots`)."""
        self.transport = transport
        self.shards = shards
        self.partitions = partitions
        self.hosts_per_node = hosts_per_node
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._routes: dict[str, tuple[str, int]] = {}
        # One refresh in flight per event loop (a host has a loop per worker thread).
        self._refreshing: dict[asyncio.AbstractEventLoop, asyncio.Future[None]] = {}
        self._loops = threading.local()

    # -- which unit --------------------------------------------------------------------

    def shard(self, account_id: str) -> str:
        return shard_of(account_id, self.shards)

    def partition(self, msisdn: str) -> str:
        return partition_of(msisdn, self.partitions)

    def all_shards(self) -> list[str]:
        return [shard_id(i) for i in range(self.shards)]

    def all_partitions(self) -> list[str]:
        return [partition_id(i) for i in range(self.partitions)]

    def routes(self) -> dict[str, tuple[str, int]]:
        """The map as last fetched."""
        return dict(self._routes)

    def route(self, unit_id: str) -> tuple[str, int] | None:
        """``(node, epoch)`` of ``unit_id`` in the map as last fetched (None: not there)."""
        return self._routes.get(unit_id)

    # -- the map -----------------------------------------------------------------------

    async def _fetch(self) -> None:
        self._routes = dict(await self.transport.routes(timeout_s=10.0))

    async def refresh(self) -> None:
        """Reload the unit map; concurrent callers on one loop share one request."""
        loop = asyncio.get_running_loop()
        task = self._refreshing.get(loop)
        if task is None or task.done():
            task = self._refreshing[loop] = asyncio.ensure_future(self._fetch())
        await asyncio.shield(task)

    def host_of(self, unit_id: str, node: str) -> str:
        """The key of the host process that serves ``unit_id`` on ``node``."""
        return unit_host(node, unit_id, self.hosts_per_node)

    async def owner_hosts(self) -> list[str]:
        """The host processes that own units now (after a fresh map)."""
        await self.refresh()
        return sorted({self.host_of(unit, node) for unit, (node, _) in self._routes.items()})

    # -- calls -------------------------------------------------------------------------

    async def run(self, unit_id: str, op: Op[R], *, timeout_s: float) -> R:
        """``op`` on ``unit_id``, retried across takeovers; :class:`NoOwner` when no
        owner answered within ``timeout_s``. The engine's own exceptions propagate."""
        answer: R = await self.on_host(
            unit_id, "read" if op.read else "run", op, timeout_s=timeout_s, label=op.name
        )
        return answer

    async def run_each(
        self, unit_ids: Sequence[str], op: Op[R], *, timeout_s: float
    ) -> dict[str, R]:
        """The same operation on several units, concurrently: ``{unit_id: answer}``."""
        answers = await asyncio.gather(*(self.run(u, op, timeout_s=timeout_s) for u in unit_ids))
        return dict(zip(unit_ids, answers, strict=True))

    async def on_host(
        self, unit_id: str, method: str, *args: Any, timeout_s: float, label: str = ""
    ) -> Any:
        """``method(unit_id, epoch, *args)`` on the host that owns ``unit_id`` (``run``,
        ``read``, ``backup_unit``), retried across takeovers: the one retry loop."""
        deadline = deadline_after(timeout_s)
        attempt = 0
        last = "no route yet"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NoOwner(
                    unit_id,
                    f"no owner answered {label or method} within {timeout_s:.1f} s ({last})",
                )
            try:
                if attempt or unit_id not in self._routes:
                    await asyncio.wait_for(self.refresh(), remaining)
                route = self._routes.get(unit_id)
                if route is not None and not route[0]:
                    # The coordinator declared the unit lost (no copy with every
                    # acknowledged batch): said at once, after a fresh map.
                    if attempt:
                        raise NoOwner(unit_id, f"unit {unit_id} is lost: {LOST_DETAIL}")
                    route = None
                if route is not None:
                    node, epoch = route
                    return await self.transport.host_call(
                        self.host_of(unit_id, node),
                        method,
                        unit_id,
                        epoch,
                        *args,
                        timeout_s=time_left(deadline),
                    )
                last = f"{unit_id} has no owner"
            except UnitLost as exc:  # its host found its data gone: never opened empty
                raise NoOwner(unit_id, str(exc)) from None
            except StaleRoute as exc:  # Ray re-raises it as an instance of its own class
                last = f"stale route: {exc}"
            except HostUnreachable as exc:
                last = str(exc)
            except TimeoutError:
                last = "timed out"
            attempt += 1
            log.debug(
                "route_retry", unit=unit_id, method=label or method, attempt=attempt, why=last
            )
            pause = min(self._backoff_s * 2 ** min(attempt - 1, 8), self._backoff_max_s)
            await asyncio.sleep(max(min(pause, deadline - time.monotonic()), 0))

    def run_all_blocking(self, calls: Mapping[str, Op[Any]], *, timeout_s: float) -> dict[str, Any]:
        """Several units' operations at once from a host's worker thread (as
        :meth:`run_blocking`): per unit its answer, or the exception it raised."""

        async def all_of() -> dict[str, Any]:
            units = list(calls)
            found = await asyncio.gather(
                *(self.run(u, calls[u], timeout_s=timeout_s) for u in units),
                return_exceptions=True,
            )
            return dict(zip(units, found, strict=True))

        return self._loop().run_until_complete(all_of())

    def _loop(self) -> asyncio.AbstractEventLoop:
        loop: asyncio.AbstractEventLoop | None = getattr(self._loops, "loop", None)
        if loop is None:
            loop = self._loops.loop = asyncio.new_event_loop()
        return loop

    def run_blocking(self, unit_id: str, op: Op[R], *, timeout_s: float) -> R:
        """:meth:`run` from a thread that has no running event loop (a host's worker
        thread): each thread drives its own loop, kept for its later calls."""
        return self._loop().run_until_complete(self.run(unit_id, op, timeout_s=timeout_s))
