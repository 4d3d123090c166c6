"""What every part of the Ray backend shares: the router, the catalogue, the clock, lookups.

The service parts (``backend_usage``, ``backend_accounts``, ``backend_charging``,
``backend_billing``, ``backend_admin``) are mixins over :class:`BackendCore`;
:class:`cluster.backend.ray_backend.RayBackend` puts them together.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc

from actors.partition.directory import DirectoryEntry
from actors.store.tariffs import current_tariffs_dir
from billing.accounts import AccountState
from billing.ledger import is_valid_account_id
from billing.rating import load_catalogue
from billing.readers import FieldError, normalise_number
from billing.tariffs.model import Catalogue
from cluster.api.backend import BackendError
from cluster.backend.router import UnitRouter

__all__ = ["BackendCore", "Clock"]

Clock = Callable[[], float]

# How often a backend looks whether another gateway loaded a new catalogue.
_CATALOGUE_CHECK_S = 1.0


class BackendCore:
    """State and helpers of the backend; see :class:`cluster.backend.ray_backend.RayBackend`."""

    def __init__(
        self,
        *,
        router: UnitRouter,
        catalogue: Catalogue,
        tariffs_dir: str,
        clock: Clock = time.time,
        data_dir: str | None = None,
    ) -> None:
        self.router = router
        self._catalogue = catalogue
        self.tariffs_dir = tariffs_dir
        self.data_dir = data_dir
        self._clock = clock
        self._catalogue_checked_s = time.monotonic()

    @property
    def catalogue(self) -> Catalogue:
        """The catalogue in force: a LoadTariffs through any gateway moves the data dir's
        pointer (``actors.store.tariffs``); this backend follows it within a second."""
        if self.data_dir is not None:
            now = time.monotonic()
            if now - self._catalogue_checked_s >= _CATALOGUE_CHECK_S:
                self._catalogue_checked_s = now
                current = current_tariffs_dir(self.data_dir, self.tariffs_dir)
                if current != self.tariffs_dir:
                    self.use_catalogue(load_catalogue(current), current)
        return self._catalogue

    def use_catalogue(self, catalogue: Catalogue, tariffs_dir: str) -> None:
        """Answer from ``catalogue`` (loaded from ``tariffs_dir``) from now on."""
        self._catalogue = catalogue
        self.tariffs_dir = tariffs_dir

    def now_s(self, at_s: int = 0) -> int:
        """``at_s`` when the request gave one, else the backend's clock."""
        return at_s if at_s > 0 else int(self._clock())

    @staticmethod
    def check_account_id(account_id: str) -> None:
        if not is_valid_account_id(account_id):
            raise BackendError(
                grpc.StatusCode.INVALID_ARGUMENT, f"account_id: not a valid id: {account_id!r}"
            )

    @staticmethod
    def msisdn(text: str, field: str = "served_msisdn") -> str:
        """E.164 digits, or INVALID_ARGUMENT naming ``field``."""
        try:
            return normalise_number(text)
        except FieldError as exc:
            raise BackendError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {exc.detail}") from None

    async def on_shard(
        self, owner: str, method: str, /, *args: Any, timeout_s: float, **kw: Any
    ) -> Any:
        """``method`` on the shard that owns account ``owner``."""
        return await self.router.call(
            self.router.shard(owner), method, *args, timeout_s=timeout_s, **kw
        )

    async def state(self, account_id: str, *, timeout_s: float) -> AccountState:
        """The account's state, or NOT_FOUND."""
        self.check_account_id(account_id)
        found = await self.on_shard(account_id, "get_account", account_id, timeout_s=timeout_s)
        if found is None:
            raise BackendError(grpc.StatusCode.NOT_FOUND, f"account {account_id} not found")
        return found  # type: ignore[no-any-return]

    async def subscriber(self, msisdn: str, *, timeout_s: float) -> DirectoryEntry | None:
        """The directory entry of an MSISDN (already normalised), from its partition."""
        unit = self.router.partition(msisdn)
        entry = await self.router.call(unit, "get_subscriber", msisdn, timeout_s=timeout_s)
        return entry  # type: ignore[no-any-return]

    async def currency_of(self, account_id: str, given: str, *, timeout_s: float) -> str:
        """``given`` when set, else the account's own currency."""
        if given:
            if len(given) != 3 or not given.isupper():
                raise BackendError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"currency: not an ISO 4217 code: {given!r}"
                )
            return given
        return (await self.state(account_id, timeout_s=timeout_s)).account.currency

    def plan_or_default(self, plan_id: str) -> str:
        plan = plan_id or self.catalogue.default_plan
        if plan not in self.catalogue.plans:
            raise BackendError(grpc.StatusCode.INVALID_ARGUMENT, f"plan_id: unknown plan {plan!r}")
        return plan
