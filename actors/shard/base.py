"""The common state of an account shard: its store, its row cache, its configuration and loaders.

:class:`ShardBase` is the base of the parts :class:`~actors.shard.engine.AccountShard`
is assembled from (usage, accounts, billing, queries, audit); each part adds
operations, this class owns the state they share.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self, TypeVar

from actors.shard.codec import (
    AccountRow,
    decode_account,
    decode_ledger_row,
    decode_value,
    ledger_seq_key,
    new_packer,
)
from actors.shard.work import INVOICE_PREFIX, NOTIFICATION_SEQ_KEY, Work
from actors.store.codec import account_key, decode_u64
from actors.store.storage import LruCache, ShardStore
from billing.accounts import AccountState, Outcome, Result
from billing.billrun.run import BillRunConfig
from billing.bundles import Tariff
from billing.charging.batch import Charge, ChargingConfig
from billing.fraud import FraudConfig
from billing.invariant import invariant
from billing.invoice import Invoice
from billing.ledger import is_valid_account_id
from billing.tariffs.model import Catalogue

__all__ = ["ShardBase", "T"]

T = TypeVar("T")


class ShardBase:
    """The state every part of an AccountShard works on: the store, the cache, the
    configuration, and the loaders."""

    def __init__(
        self,
        store: ShardStore,
        *,
        tariff: Tariff,
        unit_id: str = "",
        charging: ChargingConfig | None = None,
        billing: BillRunConfig | None = None,
        catalogue: Catalogue | None = None,
        fraud: FraudConfig | None = None,
        cache_accounts_max: int = 50_000,
        chunk_accounts: int = 500,
    ) -> None:
        invariant(chunk_accounts > 0, "chunk_accounts must be positive")
        self.store = store
        self.unit_id = unit_id
        self.tariff = tariff
        self.charging = charging or ChargingConfig()
        self.billing = billing or BillRunConfig(tz=self.charging.tz)
        self.catalogue = catalogue
        # None: no fraud rules run (no evaluation, no risk rows); see actors.shard.risk.
        self.fraud = fraud
        self.chunk_accounts = chunk_accounts
        self._cache: LruCache[str, AccountRow] = LruCache(cache_accounts_max)
        self._pack = new_packer()  # this shard's own: calls into one unit are serialised
        raw = store.get(NOTIFICATION_SEQ_KEY)
        self._notification_seq = 0 if raw is None else decode_u64(raw)

    @classmethod
    def open(
        cls,
        path: Path | str,
        *,
        epoch: int,
        tariff: Tariff,
        fence: bool = True,
        resume: bool = False,
        **options: Any,
    ) -> Self:
        """Open the unit's database as owner at ``epoch`` (see ``ShardStore.open``).

        The store's byte cache is off: this class caches decoded rows instead.
        """
        store = ShardStore.open(path, epoch=epoch, fence=fence, cache_entries_max=0, resume=resume)
        try:
            return cls(store, tariff=tariff, **options)
        except BaseException:
            store.close()
            raise

    @property
    def epoch(self) -> int:
        return self.store.epoch

    @property
    def cached_accounts(self) -> int:
        return len(self._cache)

    def close(self) -> None:
        self._cache.clear()
        self.store.close()

    # -- loading -----------------------------------------------------------------------

    def _load(self, account_id: str) -> AccountRow | None:
        found = self._cache.get(account_id)
        if found is not None:
            return found
        if not is_valid_account_id(account_id):
            return None
        raw = self.store.get(account_key(account_id))
        if raw is None:
            return None
        row = decode_account(raw)
        self._cache.put(account_id, row)
        return row

    def _charge_row(self, account_id: str, seq: int) -> Charge:
        raw = self.store.get(ledger_seq_key(account_id, seq))
        invariant(raw is not None, f"mark points at missing ledger row {account_id}#{seq}")
        assert raw is not None  # for mypy; the invariant above always runs
        row = decode_ledger_row(raw)
        invariant(isinstance(row, Charge), f"ledger row {account_id}#{seq} is not a charge")
        assert isinstance(row, Charge)  # for mypy; the invariant above always runs
        return row

    def _stored_invoices(self, account_id: str) -> Iterator[Invoice]:
        if not is_valid_account_id(account_id):
            return
        for _, raw in self.store.scan_prefix(INVOICE_PREFIX + account_id.encode() + b"\x00"):
            yield decode_value(raw)[0]

    def _single(
        self, account_id: str, run: Callable[[Work, AccountState], Outcome[T]]
    ) -> Outcome[T]:
        work = Work(self)
        state = work.state(account_id)
        if state is None:
            return Outcome(result=Result.UNKNOWN_ACCOUNT)
        out = run(work, state)
        work.apply(out.effects, account_id)
        work.commit()
        return out
