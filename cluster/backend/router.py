"""Routing engine calls to the host that owns a unit, following takeovers, without blocking.

The coordinator's map (``routes() -> {unit_id: (node, epoch)}``) is cached;
every call names the epoch it routes by. A host that does not serve the unit
at that epoch answers ``StaleRoute``; a dead or unreachable host surfaces as
``RayActorError``. Either way the router refreshes the map (one refresh shared
by every caller that needs it) and retries with backoff until the call's time
runs out, then answers ``UNAVAILABLE`` so the client retries with the same
idempotency keys. Everything is awaited on the caller's event loop: Ray's
object refs are awaitable, and the one blocking lookup (a named actor) runs
in a worker thread.

The queries an account shard may answer while a write batch is in flight
(``actors.shard.queries.CONCURRENT_READS``) go to the host's ``read``, which
runs them on their own threads without the unit's lock; everything else goes
to ``call``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

import grpc
import ray
import structlog
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from actors.host import StaleRoute
from actors.remote import COORDINATOR_NAME, NAMESPACE, host_name
from actors.routing import partition_id, partition_of, shard_id, shard_of
from actors.shard.queries import CONCURRENT_READS
from cluster.api.backend import BackendError

__all__ = ["UnitRouter", "deadline_after", "time_left"]

log = structlog.get_logger("petribill.backend")

# Kept back from the caller's time so the backend answers before the gateway cancels it.
_MARGIN_S: Final = 0.05


def deadline_after(timeout_s: float) -> float:
    """The monotonic time by which a call given ``timeout_s`` must have answered."""
    return time.monotonic() + max(timeout_s - min(_MARGIN_S, timeout_s * 0.1), 0.001)


def time_left(deadline: float) -> float:
    """Seconds left until ``deadline`` (at least a millisecond, so a call still fails fast)."""
    return max(deadline - time.monotonic(), 0.001)


def _is_stale(exc: BaseException) -> bool:
    """Whether a failed host call means the unit moved: the host raised StaleRoute (it
    also turns a store's StaleEpoch/StoreClosed into one)."""
    return isinstance(exc, StaleRoute) or isinstance(getattr(exc, "cause", None), StaleRoute)


class UnitRouter:
    """Calls engine methods of units (``acct-07``, ``part-3``) through their owning hosts."""

    def __init__(
        self,
        *,
        shards: int,
        partitions: int,
        backoff_s: float = 0.05,
        backoff_max_s: float = 1.0,
    ) -> None:
        self.shards = shards
        self.partitions = partitions
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._routes: dict[str, tuple[str, int]] = {}
        self._hosts: dict[str, Any] = {}
        self._coordinator: Any = None
        self._refreshing: asyncio.Future[None] | None = None

    # -- which unit --------------------------------------------------------------

    def shard(self, account_id: str) -> str:
        return shard_of(account_id, self.shards)

    def partition(self, msisdn: str) -> str:
        return partition_of(msisdn, self.partitions)

    def all_shards(self) -> list[str]:
        return [shard_id(i) for i in range(self.shards)]

    def all_partitions(self) -> list[str]:
        return [partition_id(i) for i in range(self.partitions)]

    # -- the coordinator ---------------------------------------------------------

    async def coordinator(self) -> Any:
        if self._coordinator is None:
            self._coordinator = await asyncio.to_thread(
                ray.get_actor, COORDINATOR_NAME, namespace=NAMESPACE
            )
        return self._coordinator

    async def coordinator_call(self, method: str, *args: Any, timeout_s: float) -> Any:
        """One coordinator method; UNAVAILABLE when it does not answer in time."""
        try:
            coordinator = await self.coordinator()
            ref = getattr(coordinator, method).remote(*args)
            return await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout_s)
        except (TimeoutError, RayActorError, ValueError) as exc:
            self._coordinator = None
            raise BackendError(
                grpc.StatusCode.UNAVAILABLE, f"coordinator did not answer {method}: {exc}"
            ) from exc

    async def _fetch_routes(self) -> None:
        routes = await self.coordinator_call("routes", timeout_s=10.0)
        self._routes = dict(routes)

    async def refresh(self) -> None:
        """Reload the unit map; concurrent callers share one request."""
        task = self._refreshing
        if task is None or task.done():
            task = self._refreshing = asyncio.ensure_future(self._fetch_routes())
        await asyncio.shield(task)

    async def _host(self, node: str) -> Any:
        handle = self._hosts.get(node)
        if handle is None:
            handle = await asyncio.to_thread(ray.get_actor, host_name(node), namespace=NAMESPACE)
            self._hosts[node] = handle
        return handle

    async def owner_hosts(self) -> dict[str, Any]:
        """Handles of the hosts that own units now, by node (after a fresh map)."""
        await self.refresh()
        nodes = sorted({node for node, _ in self._routes.values()})
        return {node: await self._host(node) for node in nodes}

    # -- calls -------------------------------------------------------------------

    async def call(
        self, unit_id: str, method: str, /, *args: Any, timeout_s: float, **kwargs: Any
    ) -> Any:
        """``method(*args, **kwargs)`` on ``unit_id``'s engine, retried across takeovers.

        Raises ``BackendError(UNAVAILABLE)`` when no owner answered within
        ``timeout_s`` (the outcome of a write may then be unknown: the client
        retries with the same ids). Any other engine exception propagates.
        """
        entry = "read" if method in CONCURRENT_READS else "call"
        return await self.on_host(
            unit_id, entry, method, *args, timeout_s=timeout_s, _label=method, **kwargs
        )

    async def on_host(
        self,
        unit_id: str,
        host_method: str,
        /,
        *args: Any,
        timeout_s: float,
        _label: str = "",
        **kwargs: Any,
    ) -> Any:
        """``host_method(unit_id, epoch, *args, **kwargs)`` on the host that owns
        ``unit_id`` (e.g. ``backup_unit``), retried across takeovers as :meth:`call`."""
        method = _label or host_method
        deadline = deadline_after(timeout_s)
        attempt = 0
        last: str = "no route yet"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BackendError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"{unit_id}: no owner answered {method} within {timeout_s:.1f} s ({last})",
                )
            try:
                if attempt or unit_id not in self._routes:
                    await asyncio.wait_for(self.refresh(), remaining)
                route = self._routes.get(unit_id)
                if route is not None:
                    node, epoch = route
                    host = await self._host(node)
                    entry = getattr(host, host_method)
                    ref = entry.remote(unit_id, epoch, *args, **kwargs)
                    left = max(deadline - time.monotonic(), 0.001)
                    return await asyncio.wait_for(asyncio.wrap_future(ref.future()), left)
                last = f"{unit_id} has no owner"
            except RayTaskError as exc:
                if not _is_stale(exc):
                    raise
                last = f"stale route: {getattr(exc, 'cause', exc)}"
            except (RayActorError, GetTimeoutError, ValueError) as exc:
                # ValueError: the named host actor is gone (ray.get_actor).
                self._hosts.clear()
                last = f"{type(exc).__name__}: {exc}"
            except TimeoutError:
                last = "timed out"
            except BackendError as exc:  # the coordinator itself did not answer
                last = exc.message
            attempt += 1
            log.debug("route_retry", unit=unit_id, method=method, attempt=attempt, reason=last)
            pause = min(self._backoff_s * 2 ** min(attempt - 1, 8), self._backoff_max_s)
            await asyncio.sleep(max(min(pause, deadline - time.monotonic()), 0))

    async def call_each(
        self, unit_ids: list[str], method: str, *args: Any, timeout_s: float, **kwargs: Any
    ) -> dict[str, Any]:
        """The same method on several units, concurrently: ``{unit_id: answer}``."""
        answers = await asyncio.gather(
            *(self.call(u, method, *args, timeout_s=timeout_s, **kwargs) for u in unit_ids)
        )
        return dict(zip(unit_ids, answers, strict=True))
