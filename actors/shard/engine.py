"""The AccountShard engine: one account shard's durable state around the pure billing core.

An :class:`AccountShard` owns one :class:`~actors.store.storage.ShardStore` (a
raw-mode RocksDB, epoch-fenced) and is a thin shell: it loads what an
operation needs (account states through a bounded LRU of decoded rows, marks,
invoices, bill-run state), calls the pure core (``billing.*``), writes **all**
the effects of the call in one :class:`~actors.store.storage.Batch` committed with
one synced WAL write, updates its cache only after that commit returned, and
answers. Storage layout: :mod:`actors.shard.codec`.

Recovery contract
    *Durable*: everything an answered call changed. A call returns only after
    its single synced commit; a crash before that leaves none of its writes
    (a ``WriteBatch`` is atomic), after it all of them. Multi-chunk calls
    (``bill_run``, ``age_invoices``, ``expire_reservations``, a ``run_duties``
    step) commit per chunk of accounts; each chunk is whole or absent, and
    re-running the call finishes the rest (each account's step is idempotent).

    *Idempotent*: usage by ``record_id`` (``charge_batch``, ``direct_debit``),
    sponsor charges by ``sponsor:<record_id>`` (``apply_forwards``), every
    other write by its ``request_id`` (create, top-up, credit limit, status,
    plan change, switch, session steps, refund, payment, reversal); a repeat answers
    ``duplicate`` with the stored result, a repeat with other content
    ``exists_with_different_<field>``. ``bill_run`` is idempotent per
    (account, cycle), the duties (``age_invoices``, ``expire_reservations``,
    ``run_duties``) by state.
    Refusals (insufficient balance, unknown account...) write nothing.

    *After an error*: if a commit raises (``StaleEpoch`` after a takeover,
    ``StoreClosed``, an IO error such as a full disk) nothing of the call is
    applied — not on disk, not in memory (the touched cache rows are dropped
    and re-read on demand) — and the exception propagates. The host turns
    ``StaleEpoch``/``StoreClosed`` into a stale-route answer and stops serving
    the unit; the caller retries the *same ids* against the new owner, which
    answers ``charged`` or ``duplicate``. For any other exception the host
    should drop this AccountShard and reopen the unit (durable state is the
    truth); a retry is always safe.

    *Forwards*: see :mod:`actors.shard.outbox`. The host delivers
    ``ChargeBatchAnswer.forwards`` (and, after a restart, ``pending_forwards()``)
    to the sponsor's shard with ``apply_forwards`` and then calls
    ``ack_forwards`` here.

Not thread-safe: the host serialises calls into one unit.

Layout: an :class:`AccountShard` holds a :class:`~actors.shard.core.ShardCore`
(the store, the row cache, the configuration, the loaders) and six parts
given that core: ``usage`` (charge batches, forwards, direct debits,
:mod:`actors.shard.usage`), ``accounts`` (lifecycle, top-ups, sessions,
:mod:`actors.shard.accounts`), ``billing`` (bill run, payments,
:mod:`actors.shard.billing`), ``duties`` (reservation expiry, invoice ageing,
the self-inspection, :mod:`actors.shard.duties`), ``queries`` (reads,
:mod:`actors.shard.queries`) and ``audit`` (:mod:`actors.shard.audit`). Callers
ask for an operation of :mod:`actors.shard.ops` (``shard.run(op)``); each names
the part's method that runs it. Every call's writes go through one :class:`~actors.shard.work.Work`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self, TypeVar

from actors.op import Env
from actors.shard.accounts import ShardAccounts
from actors.shard.audit import AuditReport, ShardAudit
from actors.shard.billing import BillRunReport, ShardBilling
from actors.shard.core import ShardCore
from actors.shard.duties import ShardDuties
from actors.shard.ops import ShardOp
from actors.shard.queries import ShardQueries
from actors.shard.usage import ChargeBatchAnswer, ShardUsage
from actors.store.storage import ShardStore
from billing.bundles import CatalogueTariff, Tariff
from billing.tariffs.model import Catalogue

__all__ = [
    "NO_ENV",
    "AccountShard",
    "AuditReport",
    "BillRunReport",
    "ChargeBatchAnswer",
]

R = TypeVar("R")


class _NoEnv:
    """The environment of a shard run outside a host (or of a read view): a shard needs
    none."""

    def charge(self, shard_id: str, items: list[Any], at_s: int) -> list[Any]:
        raise AssertionError("an account shard never charges another unit")

    def fan_out(self, calls: Mapping[str, Any]) -> dict[str, Any]:
        raise AssertionError("an account shard never calls other units")


NO_ENV: Env = _NoEnv()


class AccountShard:
    """One account shard (e.g. ``acct-07``): the pure core over one ShardStore.

    Open with :meth:`open` (as the unit's owner at an epoch) and ask with
    :meth:`run`; see the module docstring for the recovery contract.
    """

    def __init__(self, store: ShardStore, *, tariff: Tariff, **options: Any) -> None:
        self.core = ShardCore(store, tariff=tariff, **options)
        self.usage = ShardUsage(self.core)
        self.accounts = ShardAccounts(self.core)
        self.billing = ShardBilling(self.core)
        self.duties = ShardDuties(self.core)
        self.queries = ShardQueries(self.core)
        self.audit = ShardAudit(self.core)

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

        The store's byte cache is off: the shard caches decoded rows instead.
        """
        store = ShardStore.open(path, epoch=epoch, fence=fence, cache_entries_max=0, resume=resume)
        try:
            return cls(store, tariff=tariff, **options)
        except BaseException:
            store.close()
            raise

    def run(self, op: ShardOp[R], env: Env = NO_ENV) -> R:
        """Run one operation (the caller serialises calls into one shard)."""
        return op.apply(self, env)

    @property
    def store(self) -> ShardStore:
        return self.core.store

    @property
    def epoch(self) -> int:
        return self.core.epoch

    def set_catalogue(self, catalogue: Catalogue) -> None:
        """Charge with ``catalogue`` from the next call on (a tariff reload)."""
        self.core.catalogue = catalogue
        self.core.tariff = CatalogueTariff(catalogue)

    def close(self) -> None:
        self.core.close()
