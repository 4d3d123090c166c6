"""The shard's accounts as one columnar table, for charging bulk batches (issue #13 item 1).

Columnar charging (``billing.charging.columnar``) reads accounts from an
:class:`~billing.charging.table.AccountTable`. A shard keeps ONE such table
(:class:`AccountTableCache`, held by :class:`~actors.shard.core.ShardCore`)
instead of building one per batch: an account is loaded into it when a batch
first charges it, and stays.

**Kept in step by identity.** Every row of the table remembers the
:class:`~actors.shard.codec.AccountRow` it was loaded from: the object the
shard's row cache held. Every commit that changes an account, on any path
(per-record charging, top-ups, payments, bill runs, duties, sessions), puts a
*new* ``AccountRow`` into the row cache (:meth:`~actors.shard.work.Work.commit`;
no path mutates a cached row's state), and a failed commit, an eviction or a
reopened unit leaves the cache without the old object. So before a batch
charges, :meth:`AccountTableCache.load` compares each of its accounts' cached
row with the one its table row was loaded from, and reloads the table row when
they differ: no per-path hook to forget, no per-batch copy of account state.
A batch's own commit hands the table its update (:meth:`committed`), and the
rows it wrote become the table rows' sources. The table lives and dies with
the :class:`~actors.shard.core.ShardCore`: an epoch change or a reopen (a
promoted follower, a resumed unit) opens a new core, with an empty table.

The table keeps no usage totals (``keeps_usage=False``): charging never reads
them, and the account rows the batch writes carry them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from actors.shard.codec import AccountRow
from billing.accounts import AccountState
from billing.charging.table import AccountTable, TableUpdate
from billing.invariant import invariant

__all__ = ["AccountTableCache"]


class AccountTableCache:
    """One :class:`AccountTable` of a shard's accounts and the row each was loaded from."""

    __slots__ = ("limit", "sources", "table")

    def __init__(self, limit: int) -> None:
        invariant(limit > 0, "the table holds some accounts")
        self.limit = limit
        self.table = AccountTable(keeps_usage=False)
        self.sources: list[AccountRow | None] = []

    def drop(self) -> None:
        """Forget every account (loaded again as batches charge them)."""
        self.table = AccountTable(keeps_usage=False)
        self.sources = []

    def load(self, rows: Mapping[str, AccountRow], missing: Iterable[str]) -> AccountTable:
        """The table, with every account of ``rows`` (the shard's current rows) as it is
        now; ``missing``: ids the batch names that the shard does not hold, which the
        table must not hold either (it answers them ``unknown_account``)."""
        table = self.table
        if table.size + len(rows) > self.limit or any(a in table.index for a in missing):
            self.drop()
            table = self.table
        index, sources = table.index, self.sources
        new: list[AccountRow] = []
        for account_id, row in rows.items():
            at = index.get(account_id)
            if at is None:
                new.append(row)
            elif sources[at] is not row:  # changed since it was loaded: reload it
                table.put(row.state)
                sources[at] = row
        if new:
            table.extend([row.state for row in new])
            sources.extend(new)
        invariant(len(sources) == table.size, "one source per table row")
        return table

    def committed(
        self, update: TableUpdate, rows: Mapping[str, AccountRow], built: Mapping[str, AccountState]
    ) -> None:
        """A charging batch is durable: apply its ``update`` to the table. ``rows``: every
        account row its work committed (now the row cache's); ``built``: the state the
        batch made for each account from the update. A row whose committed state is
        another one (something else in the same work changed the account after charging,
        e.g. a fraud rule blocked it) is reloaded from what was committed."""
        try:
            table = self.table
            table.apply(update)
            index, sources = table.index, self.sources
            for account_id, row in rows.items():
                at = index.get(account_id)
                if at is None:
                    continue
                if row.state is not built.get(account_id):
                    table.put(row.state)
                sources[at] = row
        except BaseException:
            self.drop()  # half applied: start again from the rows
            raise
