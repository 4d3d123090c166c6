"""The real :class:`~cluster.api.backend.Backend`: each RPC routed to the Ray actor owning its data.

Routing (``cluster.backend.router``): account operations go to the account
shard ``shard_of(account_id)``; usage and directory operations to the rating
partition ``partition_of(msisdn)``; fan-out operations (bill runs,
reconciliation, rejects, notification streams) to every unit concurrently.
Each engine call goes through the owning host's ``call(unit, epoch, method,
...)``; stale routes and dead hosts are retried within the call's time, then
answered ``UNAVAILABLE`` (the client retries with the same ids).

The service parts live in ``backend_usage``, ``backend_accounts``,
``backend_charging``, ``backend_billing`` and ``backend_admin``; the one
table from business results to status codes in ``backend_status``.

Recovery contract: the backend holds nothing durable, only a cache of routes
and actor handles, rebuilt on demand; every write it forwards is idempotent
by its request or record id, so a call cut short (cancelled, timed out) is
safely retried by the client.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from actors.store.tariffs import current_tariffs_dir
from billing.rating import load_catalogue
from cluster.backend.accounts import AccountOps
from cluster.backend.admin import AdminOps, TariffOps
from cluster.backend.billing import BillingOps, NotificationOps
from cluster.backend.charging import ChargingOps
from cluster.backend.core import Clock
from cluster.backend.router import UnitRouter
from cluster.backend.usage import UsageOps

__all__ = ["RayBackend"]


class RayBackend(
    UsageOps, ChargingOps, AccountOps, BillingOps, TariffOps, NotificationOps, AdminOps
):
    """The cluster's backend for one gateway process (needs ``ray.init`` done).

    ``tariffs_dir`` is the catalogue the hosts rate with; the backend loads it
    too, for price enquiries, session quotes and GetTariffs. ``data_dir`` (the
    cluster's) is where LoadTariffs persists a catalogue and backups go; with
    it, a catalogue loaded there earlier takes the place of ``tariffs_dir``.
    """

    def __init__(
        self,
        shards: int,
        partitions: int,
        *,
        tariffs_dir: str | Path,
        clock: Clock = time.time,
        backoff_s: float = 0.05,
        data_dir: str | Path | None = None,
    ) -> None:
        if data_dir is not None:
            tariffs_dir = current_tariffs_dir(data_dir, tariffs_dir)
        super().__init__(
            router=UnitRouter(shards=shards, partitions=partitions, backoff_s=backoff_s),
            catalogue=load_catalogue(str(tariffs_dir)),
            tariffs_dir=str(tariffs_dir),
            clock=clock,
            data_dir=None if data_dir is None else str(data_dir),
        )

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> RayBackend:
        """From the plain settings every actor is built from (``deploy.runtime.settings_of``);
        ``functools.partial(RayBackend.from_settings, settings)`` is a picklable factory."""
        return cls(
            int(settings["shards"]),
            int(settings["partitions"]),
            tariffs_dir=settings["tariffs_dir"],
            data_dir=settings.get("data_dir"),
        )
