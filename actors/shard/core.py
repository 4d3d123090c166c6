"""The common state of an account shard: its store, its row cache, its configuration and loaders.

:class:`ShardCore` is what the parts an :class:`~actors.shard.engine.AccountShard`
holds (usage, accounts, billing, queries, audit) share: each part is given the
core and adds operations; the core owns the state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

from actors.shard.codec import (
    AccountRow,
    decode_account,
    decode_ledger_row,
    decode_value,
    new_packer,
)
from actors.shard.keys import INVOICE_PREFIX, NOTIFICATION_SEQ_KEY, account_key, ledger_key
from actors.shard.ops import Applied
from actors.shard.table_cache import AccountTableCache
from actors.shard.work import Work
from actors.store.codec import decode_u64
from actors.store.storage import LruCache, ReadableStore, ShardStore
from billing.accounts import AccountState, Outcome, Result
from billing.billrun.run import BillRunConfig
from billing.bundles import Tariff
from billing.charging.batch import Charge, ChargingConfig
from billing.fraud import FraudConfig
from billing.invariant import invariant
from billing.invoice import Invoice
from billing.ledger import is_valid_account_id
from billing.tariffs.model import Catalogue

__all__ = ["ShardCore", "T", "stored_invoices"]

T = TypeVar("T")


def stored_invoices(store: ReadableStore, account_id: str) -> Iterator[Invoice]:
    """The account's invoices as stored, in key order."""
    if not is_valid_account_id(account_id):
        return
    for _, raw in store.scan_prefix(INVOICE_PREFIX + account_id.encode() + b"\x00"):
        yield decode_value(raw)[0]


class ShardCore:
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
        session_validity_s: int = 300,
    ) -> None:
        invariant(chunk_accounts > 0, "chunk_accounts must be positive")
        invariant(session_validity_s > 0, "session_validity_s must be positive")
        self.store = store
        self.unit_id = unit_id
        self.tariff = tariff
        self.charging = charging or ChargingConfig()
        self.bill_config = billing or BillRunConfig(tz=self.charging.tz)
        self.catalogue = catalogue
        # None: no fraud rules run (no evaluation, no risk rows); see actors.shard.risk.
        self.fraud = fraud
        self.chunk_accounts = chunk_accounts
        # The Validity-Time of an online grant when the caller names none (RFC 4006).
        self.session_validity_s = session_validity_s
        self.cache: LruCache[str, AccountRow] = LruCache(cache_accounts_max)
        # The accounts as columns, for charging bulk batches (actors.shard.table_cache).
        self.account_table = AccountTableCache(limit=2 * cache_accounts_max)
        self.pack = new_packer()  # this shard's own: calls into one unit are serialised
        raw = store.get(NOTIFICATION_SEQ_KEY)
        self.notification_seq = 0 if raw is None else decode_u64(raw)

    @property
    def epoch(self) -> int:
        return self.store.epoch

    @property
    def cached_accounts(self) -> int:
        return len(self.cache)

    def close(self) -> None:
        self.cache.clear()
        self.account_table.drop()
        self.store.close()

    # -- loading -----------------------------------------------------------------------

    def load(self, account_id: str) -> AccountRow | None:
        found = self.cache.get(account_id)
        if found is not None:
            return found
        if not is_valid_account_id(account_id):
            return None
        raw = self.store.get(account_key(account_id))
        if raw is None:
            return None
        row = decode_account(raw)
        self.cache.put(account_id, row)
        return row

    def charge_row(self, account_id: str, seq: int) -> Charge:
        raw = self.store.get(ledger_key(account_id, seq))
        invariant(raw is not None, f"mark points at missing ledger row {account_id}#{seq}")
        assert raw is not None  # for mypy; the invariant above always runs
        row = decode_ledger_row(raw)
        invariant(isinstance(row, Charge), f"ledger row {account_id}#{seq} is not a charge")
        assert isinstance(row, Charge)  # for mypy; the invariant above always runs
        return row

    def stored_invoices(self, account_id: str) -> Iterator[Invoice]:
        return stored_invoices(self.store, account_id)

    def single(
        self, account_id: str, run: Callable[[Work, AccountState], Outcome[T]]
    ) -> Applied[T]:
        """One core step on one account, committed; the outcome and the account after it."""
        work = Work(self)
        state = work.state(account_id)
        if state is None:
            return Applied(Outcome(result=Result.UNKNOWN_ACCOUNT), None)
        out = run(work, state)
        work.apply(out.effects, account_id)
        work.commit()
        return Applied(out, work.state(account_id))
