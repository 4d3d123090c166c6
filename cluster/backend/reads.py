"""A gateway's local reads: queries answered from its node's copies, placement kept fresh.

:class:`GatewayReads` wraps an :class:`actors.reader.LocalReader` for the
backend's event loop. It keeps the reader's placement (per unit: primary,
epoch, in-sync followers) fresh from the coordinator in the background — the
replicas view in ``replicated`` mode, the routes otherwise — never on a query's
path, and answers nothing from a placement older than ``placement_age_max_s``.
The reads themselves (a RocksDB catch-up and a few gets, about 2 ms) run on the
loop. What a read may answer and why it is consistent: docs/architecture.md,
"Local reads".
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import structlog

from actors.op import Op
from actors.reader import LocalReader, NotLocal, Placement, serves
from actors.router import Transport

__all__ = ["GatewayReads", "local_reads", "placement_of"]

log = structlog.get_logger("petribill.reads")

R = TypeVar("R")

_TIMES_KEPT: Final = 4096
# How long a coordinator call for the placement may take.
_PLACEMENT_TIMEOUT_S: Final = 5.0


def placement_of(
    replicas: dict[str, dict[str, Any]], routes: dict[str, tuple[str, int]]
) -> dict[str, Placement]:
    """The placement from the coordinator's replicas view (replicated: primaries and
    in-sync sets) or, when that is empty, from its routes (one copy per unit)."""
    if replicas:
        return {
            unit: Placement(
                primary=view["primary"], epoch=int(view["epoch"]), in_sync=frozenset(view["isr"])
            )
            for unit, view in replicas.items()
            if view.get("primary") and not view.get("lost")
        }
    return {unit: Placement(primary=node, epoch=epoch) for unit, (node, epoch) in routes.items()}


class GatewayReads:
    """Local reads for one gateway. ``reader`` is built once this node's name is known
    (``make_reader(node)``; ``find_node()`` asks for it, None while unknown)."""

    def __init__(
        self,
        transport: Transport,
        make_reader: Callable[[str], LocalReader],
        find_node: Callable[[], Awaitable[str | None]],
        *,
        refresh_s: float = 0.5,
        placement_age_max_s: float = 2.0,
    ) -> None:
        self._transport = transport
        self._make_reader = make_reader
        self._find_node = find_node
        self._refresh_s = refresh_s
        self._age_max_s = placement_age_max_s
        self.reader: LocalReader | None = None
        self._placed_at = float("-inf")  # monotonic time the placement was fetched
        self._refreshing: asyncio.Task[None] | None = None
        #: Queries answered here, and those passed to the hosts by reason.
        self.served = 0
        self.passed: dict[str, int] = {}
        # Seconds the latest local reads took (catch-up and query).
        self._times: deque[float] = deque(maxlen=_TIMES_KEPT)

    async def read(self, unit_id: str, op: Op[R]) -> tuple[bool, R | None]:
        """``(True, answer)`` when this node's copy answered ``op``; ``(False, None)``
        when the caller must ask the unit's host."""
        if not serves(op):
            return False, None
        age_s = time.monotonic() - self._placed_at
        if age_s >= self._refresh_s:
            self._refresh_soon()
        reader = self.reader
        if reader is None or age_s > self._age_max_s:
            self._count("placement")
            return False, None
        # On the loop itself: RocksDB's catch-up holds the GIL throughout (rocksdict
        # does not release it), so a thread would stall the loop just the same, and
        # would add two thread wake-ups to every query.
        started = time.perf_counter()
        try:
            answer = reader.read(unit_id, op)
        except NotLocal as exc:
            self._count(exc.reason)
            return False, None
        self.served += 1
        self._times.append(time.perf_counter() - started)
        return True, answer

    def _count(self, reason: str) -> None:
        self.passed[reason] = self.passed.get(reason, 0) + 1

    def _refresh_soon(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self.refresh())

    async def refresh(self) -> None:
        """Fetch the placement now (the node's name first, once); a failure leaves the
        old one, which ages out."""
        try:
            if self.reader is None:
                node = await self._find_node()
                if node is None:
                    return
                self.reader = self._make_reader(node)
            started = time.monotonic()
            call = self._transport.coordinator_call
            replicas = await call("replicas", timeout_s=_PLACEMENT_TIMEOUT_S)
            routes = {} if replicas else await self._transport.routes(_PLACEMENT_TIMEOUT_S)
            self.reader.set_placement(placement_of(replicas, routes))
            self._placed_at = started
            # Views open here, not on a query's path (a first open replays a long WAL).
            await asyncio.to_thread(self.reader.prepare)
        except Exception as exc:  # the coordinator is away: the hosts answer meanwhile
            log.info("placement_refresh_failed", error=f"{type(exc).__name__}: {exc}")

    def stats(self) -> dict[str, float]:
        """Counts, and where the latest local reads spent their time (p50 and p99, ms)."""
        found: dict[str, float] = {
            "local_reads": self.served,
            "local_reads_passed": sum(self.passed.values()),
            "local_views_open": 0 if self.reader is None else self.reader.views_open,
        }
        spent = sorted(self._times)
        if spent:
            found["local_read_p50_ms"] = round(1000 * spent[len(spent) // 2], 3)
            found["local_read_p99_ms"] = round(1000 * spent[int(0.99 * len(spent))], 3)
        return found

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()


def local_reads(
    settings: dict[str, Any],
    transport: Transport,
    find_node: Callable[[], Awaitable[str | None]],
) -> GatewayReads | None:
    """The local reads of a gateway over the cluster of ``settings``; None where they are
    off (``local_reads = false``) or where a node's copies are not its own (``shared``)."""
    mode = str(settings.get("storage_mode", "local"))
    if not settings.get("local_reads", True) or mode not in ("local", "replicated"):
        return None
    data = Path(str(settings["data_dir"])).resolve()

    def make_reader(node: str) -> LocalReader:
        root = data / "nodes" / node if mode == "replicated" else data
        scratch = root / "readers" / f"gateway-{os.getpid()}-{id(transport):x}"
        return LocalReader(node=node, root=root, scratch=scratch)

    return GatewayReads(transport, make_reader, find_node)
