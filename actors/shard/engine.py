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
    (``bill_run``, ``age_invoices``, ``expire_reservations``) commit per chunk
    of accounts; each chunk is whole or absent, and re-running the call
    finishes the rest (each account's step is idempotent).

    *Idempotent*: usage by ``record_id`` (``charge_batch``, ``direct_debit``),
    sponsor charges by ``sponsor:<record_id>`` (``apply_forwards``), every
    other write by its ``request_id`` (create, top-up, credit limit, status,
    plan change, switch, session steps, refund, payment, reversal); a repeat answers
    ``duplicate`` with the stored result, a repeat with other content
    ``exists_with_different_<field>``. ``bill_run`` is idempotent per
    (account, cycle), ``age_invoices`` and ``expire_reservations`` by state.
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

Layout: this module assembles the shard from its parts, each a mixin over
:class:`~actors.shard.base.ShardBase` (the store, the cache, the loaders):
:mod:`actors.shard.usage` (charge batches, forwards), :mod:`actors.shard.accounts`
(lifecycle, top-ups, sessions), :mod:`actors.shard.billing` (bill run,
payments, ageing), :mod:`actors.shard.queries` (reads) and
:mod:`actors.shard.audit`. Every call's writes go through one
:class:`~actors.shard.work.Work`.
"""

from __future__ import annotations

from actors.shard.accounts import ShardAccounts
from actors.shard.audit import AuditReport, ShardAudit
from actors.shard.billing import BillRunReport, ShardBilling
from actors.shard.queries import ShardQueries
from actors.shard.usage import ChargeBatchAnswer, ShardUsage
from actors.shard.work import Work as _Work  # noqa: F401  (re-exported for bench/shard.py)

__all__ = [
    "AccountShard",
    "AuditReport",
    "BillRunReport",
    "ChargeBatchAnswer",
]


class AccountShard(ShardUsage, ShardAccounts, ShardBilling, ShardQueries, ShardAudit):
    """One account shard (e.g. ``acct-07``): the pure core over one ShardStore.

    Open with :meth:`open` (as the unit's owner at an epoch); see the module
    docstring for the recovery contract.
    """
