"""What every RPC handler of the backend works with: the router, the catalogue, the clock.

A :class:`Cluster` is handed to each handler (``cluster.backend.rpcs``). It runs
engine operations on units through the one router (:mod:`actors.router`),
turning "no owner answered in time" into UNAVAILABLE, and holds the small
lookups several handlers share (an account's state, a subscriber's directory
entry, the catalogue in force).

Recovery contract: nothing here is durable; the route cache and actor handles
are rebuilt on demand, and every write a handler forwards is idempotent by its
request or record id, so a call cut short is safely retried by the client.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc

from actors.clock import SYSTEM_CLOCK, Clock
from actors.coalesce import Coalescer
from actors.op import Op
from actors.partition.directory import DirectoryEntry
from actors.partition.ops import GetSubscriber
from actors.router import HostUnreachable, NoOwner, UnitRouter
from actors.shard.ops import GetAccount
from actors.store.tariffs import current_tariffs_dir
from billing.accounts import AccountState
from billing.ledger import is_valid_account_id
from billing.money import is_currency_code
from billing.rating import load_catalogue
from billing.readers import FieldError, normalise_number
from billing.tariffs.model import Catalogue
from cluster.api.errors import BackendError
from cluster.api.rules import shown
from cluster.backend.reads import GatewayReads

__all__ = ["Clock", "Cluster"]

R = TypeVar("R")

# How often a backend looks whether another gateway loaded a new catalogue.
_CATALOGUE_CHECK_S = 1.0


class Cluster:
    """The cluster as the RPC handlers see it (one per gateway process).

    ``tariffs_dir`` is the catalogue the hosts rate with; the handlers load it too,
    for price enquiries, session quotes and GetTariffs. ``data_dir`` (the
    cluster's) is where LoadTariffs persists a catalogue; a catalogue loaded there
    earlier takes the place of ``tariffs_dir``. Paths a client names stay below
    ``backup_root`` (Backup; default ``<data_dir>/backups``) and ``tariffs_root``
    (LoadTariffs; default the folder holding ``tariffs_dir``, i.e. conf/).
    """

    def __init__(
        self,
        router: UnitRouter,
        *,
        tariffs_dir: str,
        clock: Clock = SYSTEM_CLOCK,
        data_dir: str | None = None,
        backup_root: str | None = None,
        tariffs_root: str | None = None,
        reads: GatewayReads | None = None,
    ) -> None:
        self.tariffs_root = Path(tariffs_root or Path(tariffs_dir).absolute().parent)
        self.backup_root: Path | None = (
            Path(backup_root)
            if backup_root
            else (Path(data_dir) / "backups" if data_dir is not None else None)
        )
        if data_dir is not None:
            tariffs_dir = current_tariffs_dir(data_dir, tariffs_dir)
        self.router = router
        # Queries answered from this node's own copies (None: every query asks a host).
        self.reads = reads
        # Online-charging steps (and their subscriber lookups) go to their hosts in
        # batches: one host call and one commit per shard for the steps that meet.
        self.coalescer = Coalescer(router)
        self.tariffs_dir = tariffs_dir
        self.data_dir = data_dir
        self._catalogue = load_catalogue(tariffs_dir)
        self._clock = clock
        self._catalogue_checked_s = time.monotonic()

    # -- the catalogue and the clock ------------------------------------------------------

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
        """``at_s`` when the request gave one, else the cluster's clock."""
        return at_s if at_s > 0 else int(self._clock())

    # -- running operations ---------------------------------------------------------------

    async def run(self, unit_id: str, op: Op[R], *, timeout_s: float) -> R:
        """``op`` on ``unit_id`` through its owner; UNAVAILABLE when none answered."""
        try:
            return await self.router.run(unit_id, op, timeout_s=timeout_s)
        except NoOwner as exc:
            raise BackendError(grpc.StatusCode.UNAVAILABLE, str(exc)) from None

    async def on_shard(self, account_id: str, op: Op[R], *, timeout_s: float) -> R:
        """``op`` on the account shard that owns ``account_id``; a query this node's copy
        of the shard may answer is answered from it (``cluster.backend.reads``)."""
        unit_id = self.router.shard(account_id)
        if self.reads is not None:
            found, answer = await self.reads.read(unit_id, op)
            if found:
                return answer  # type: ignore[return-value]
        return await self.run(unit_id, op, timeout_s=timeout_s)

    async def coalesced(self, unit_id: str, op: Op[R], *, timeout_s: float) -> R:
        """``op`` on ``unit_id`` in one host call with the concurrent calls bound for the
        same host (``actors.coalesce``); UNAVAILABLE when no owner answered."""
        try:
            return await self.coalescer.run(unit_id, op, timeout_s=timeout_s)
        except NoOwner as exc:
            raise BackendError(grpc.StatusCode.UNAVAILABLE, str(exc)) from None

    async def run_each(
        self, unit_ids: Sequence[str], op: Op[R], *, timeout_s: float
    ) -> dict[str, R]:
        """The same operation on several units, concurrently: ``{unit_id: answer}``."""
        try:
            return await self.router.run_each(unit_ids, op, timeout_s=timeout_s)
        except NoOwner as exc:
            raise BackendError(grpc.StatusCode.UNAVAILABLE, str(exc)) from None

    async def on_host(self, unit_id: str, method: str, *args: Any, timeout_s: float) -> Any:
        """A host method for ``unit_id`` (``backup_unit``) on its owner."""
        try:
            return await self.router.on_host(unit_id, method, *args, timeout_s=timeout_s)
        except NoOwner as exc:
            raise BackendError(grpc.StatusCode.UNAVAILABLE, str(exc)) from None

    async def coordinator(self, method: str, *args: Any, timeout_s: float) -> Any:
        """One coordinator method; UNAVAILABLE when it does not answer in time."""
        try:
            return await self.router.transport.coordinator_call(method, *args, timeout_s=timeout_s)
        except HostUnreachable as exc:
            raise BackendError(grpc.StatusCode.UNAVAILABLE, str(exc)) from None

    # -- lookups ----------------------------------------------------------------------------

    @staticmethod
    def check_account_id(account_id: str) -> None:
        if not is_valid_account_id(account_id):
            raise BackendError(
                grpc.StatusCode.INVALID_ARGUMENT, f"account_id: not a valid id: {shown(account_id)}"
            )

    @staticmethod
    def check_currency(currency: str, field: str = "currency") -> str:
        if not is_currency_code(currency):
            raise BackendError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{field}: not an ISO 4217 code: {shown(currency)}",
            )
        return currency

    @staticmethod
    def msisdn(text: str, field: str = "served_msisdn") -> str:
        """E.164 digits, or INVALID_ARGUMENT naming ``field``."""
        try:
            return normalise_number(text)
        except FieldError as exc:
            raise BackendError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {exc.detail}") from None

    async def state(self, account_id: str, *, timeout_s: float) -> AccountState:
        """The account's committed state, or NOT_FOUND."""
        self.check_account_id(account_id)
        found = await self.on_shard(
            account_id, GetAccount(account_id=account_id), timeout_s=timeout_s
        )
        if found is None:
            raise BackendError(grpc.StatusCode.NOT_FOUND, f"account {account_id} not found")
        return found

    async def subscriber(
        self, msisdn: str, *, timeout_s: float, coalesced: bool = False
    ) -> DirectoryEntry | None:
        """The directory entry of an MSISDN (already normalised), from its partition;
        ``coalesced``: in a batch with the concurrent calls to its host."""
        op = GetSubscriber(msisdn=msisdn)
        run = self.coalesced if coalesced else self.run
        return await run(self.router.partition(msisdn), op, timeout_s=timeout_s)

    async def currency_of(self, account_id: str, given: str, *, timeout_s: float) -> str:
        """``given`` when set, else the account's own currency."""
        if given:
            return self.check_currency(given)
        return (await self.state(account_id, timeout_s=timeout_s)).account.currency

    def plan_or_default(self, plan_id: str) -> str:
        plan = plan_id or self.catalogue.default_plan
        if plan not in self.catalogue.plans:
            raise BackendError(grpc.StatusCode.INVALID_ARGUMENT, f"plan_id: unknown plan {plan!r}")
        return plan
