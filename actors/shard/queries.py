"""Read-only queries of an account shard: accounts, ledger, usage, invoices, notifications.

The queries whose operations are marked ``read`` (``actors.shard.ops``) may run
while a write call of the same shard is in flight (the host runs them without
the unit's lock). They
read only committed state, straight from RocksDB: a ``WriteBatch`` is applied
atomically, so a query sees a batch whole or not at all, never half of it.
They neither read nor fill the shard's decoded-row cache: a row decoded by a
query just before a commit must never be cached over the committed one.

They need nothing of the shard but its store's reads (:class:`QuerySource`), so
the same code answers on the owner (``AccountShard.queries``) and on a read-only
view of the unit's database in a gateway (``actors.shard.view``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from actors.shard import ops
from actors.shard.codec import AccountRow, decode_account, decode_ledger_row, decode_value
from actors.shard.core import stored_invoices
from actors.shard.keys import (
    ACCOUNT_NOTIFICATION_PREFIX,
    INVOICE_INDEX_PREFIX,
    INVOICE_PREFIX,
    LEDGER_PREFIX,
    NOTIFICATION_PREFIX,
    account_key,
    ledger_key,
    ledger_prefix,
    prefix_end,
    prefixed,
    prefixed_seq,
    split_ledger_key,
)
from actors.store.codec import decode_u64
from actors.store.storage import ReadableStore
from billing.accounts import AccountState
from billing.charging.batch import Charge
from billing.invoice import Invoice
from billing.ledger import Entry, EntryKind, is_valid_account_id
from billing.notifications import Notification
from billing.settlement import ProviderSettlement, build_report, provider_key
from billing.writeoff import PAYABLE

__all__ = ["QuerySource", "ShardQueries"]


class QuerySource(Protocol):
    """What the queries read from: a unit's store (the owner's or a read-only view)."""

    @property
    def store(self) -> ReadableStore: ...


class ShardQueries:
    """Reads only: nothing here writes or changes the cache contents."""

    def __init__(self, core: QuerySource) -> None:
        self.core = core

    def _committed(self, account_id: str) -> AccountRow | None:
        """The account's committed row, read from the store (not through the row cache)."""
        if not is_valid_account_id(account_id):
            return None
        raw = self.core.store.get_data(account_key(account_id))
        return None if raw is None else decode_account(raw)

    # -- queries -----------------------------------------------------------------------

    def get_account(self, op: ops.GetAccount) -> AccountState | None:
        """The account's committed state (its ``history`` is empty: see ``usage_page``)."""
        row = self._committed(op.account_id)
        return None if row is None else row.state

    def missing_accounts(self, op: ops.MissingAccounts) -> tuple[str, ...]:
        """Those of the asked accounts that have no committed row here."""
        return tuple(a for a in op.account_ids if self._committed(a) is None)

    def ledger_rows(self, account_id: str) -> Iterator[Charge | Entry]:
        """The account's ledger stream in order: charge rows (usage lines) and entries."""
        if not is_valid_account_id(account_id):
            return
        for _, raw in self.core.store.scan_prefix(ledger_prefix(account_id)):
            yield decode_ledger_row(raw)

    def ledger_entries(self, account_id: str) -> list[Entry]:
        """Every ledger entry stored in the account's stream, in order."""
        out: list[Entry] = []
        for item in self.ledger_rows(account_id):
            entry = item.to_entry() if isinstance(item, Charge) else item
            if entry is not None:
                out.append(entry)
        return out

    def usage_page(self, op: ops.UsagePage) -> tuple[list[Charge], int]:
        """Up to ``limit`` usage lines stored before ledger row ``before_seq`` (None: the
        newest), newest first, and the row to continue before (0: none older)."""
        account_id, limit, before_seq = op.account_id, op.limit, op.before_seq
        row = self._committed(account_id)
        if row is None or limit <= 0:
            return [], 0
        end = row.next_seq if before_seq is None else min(before_seq, row.next_seq)
        found: list[Charge] = []
        rows_max = max(op.rows_max, 1)  # every page moves on by a row at least
        window = min(limit, rows_max)
        scanned = 0
        while end > 0:
            # A page reads at most ``rows_max`` rows: where usage lines are sparse among
            # other entries it ends short, and the caller continues from ``start``.
            if scanned >= rows_max:
                return found, end
            start = max(end - min(window, rows_max - scanned), 0)
            rows = list(
                self.core.store.scan(ledger_key(account_id, start), ledger_key(account_id, end))
            )
            scanned += len(rows)
            for key, raw in reversed(rows):
                item = decode_ledger_row(raw)
                if isinstance(item, Charge):
                    if len(found) == limit:
                        return found, split_ledger_key(key)[1] + 1
                    found.append(item)
            end, window = start, window * 2
        return found, 0

    def list_invoices(self, op: ops.ListInvoices) -> list[Invoice]:
        """The account's invoices (drafts included unless ``open_only``), oldest first."""
        invoices = sorted(
            stored_invoices(self.core.store, op.account_id),
            key=lambda i: (i.cycle_id, i.issued_at_s),
        )
        if op.open_only:
            return [i for i in invoices if i.status in PAYABLE and i.open_amount > 0]
        return invoices

    def get_invoice(self, op: ops.GetInvoice) -> Invoice | None:
        invoice_id = op.invoice_id
        if not invoice_id or "\x00" in invoice_id:
            return None
        owner = self.core.store.get_data(prefixed(INVOICE_INDEX_PREFIX, invoice_id))
        if owner is None:
            return None
        raw = self.core.store.get_data(prefixed(INVOICE_PREFIX, owner.decode(), invoice_id))
        return None if raw is None else decode_value(raw)[0]

    def list_notifications(self, op: ops.ListNotifications) -> list[Notification]:
        """The account's newest ``limit`` notifications, oldest of them first."""
        account_id, limit = op.account_id, op.limit
        if not is_valid_account_id(account_id) or limit <= 0:
            return []
        head = ACCOUNT_NOTIFICATION_PREFIX + account_id.encode() + b"\x00"
        seqs = [decode_u64(key[-8:]) for key, _ in self.core.store.scan_prefix(head)][-limit:]
        out = []
        for seq in seqs:
            raw = self.core.store.get_data(prefixed_seq(NOTIFICATION_PREFIX, None, seq))
            if raw is not None:
                out.append(decode_value(raw))
        return out

    def notifications_since(self, op: ops.NotificationsSince) -> list[tuple[int, Notification]]:
        """Notifications stored after shard sequence ``seq`` (for the server stream)."""
        start = prefixed_seq(NOTIFICATION_PREFIX, None, op.seq + 1)
        return [
            (decode_u64(key[len(NOTIFICATION_PREFIX) :]), decode_value(raw))
            for key, raw in self.core.store.scan(
                start, prefix_end(NOTIFICATION_PREFIX), limit=op.limit
            )
        ]

    def settlement_report(self, op: ops.SettlementReport) -> tuple[ProviderSettlement, ...]:
        """Content sold in ``cycle_id`` per (provider, currency), from the stored
        ``content_share`` entries and the charge rows of the same purchases."""
        cycle_id = op.cycle_id
        lines: dict[tuple[str, str], dict[str, list[int]]] = {}
        start, end = LEDGER_PREFIX, prefix_end(LEDGER_PREFIX)
        gross: dict[str, int] = {}
        for _, raw in self.core.store.scan(start, end):
            item = decode_ledger_row(raw)
            if isinstance(item, Charge):
                if item.service == "content" and item.cycle_id == cycle_id:
                    gross[item.record_id] = item.amount
                continue
            if item.kind is not EntryKind.CONTENT_SHARE or item.cycle_id != cycle_id:
                continue
            record_id = item.ref.split(":", 1)[1]
            for posting in item.postings:
                if posting.account.startswith(provider_key("")):
                    provider = posting.account[len(provider_key("")) :]
                    items = lines.setdefault((provider, item.currency), {})
                    line = items.setdefault(item.memo or "?", [0, 0, 0])
                    line[0] += 1
                    line[1] += gross.pop(record_id, 0)
                    line[2] += posting.amount
        return build_report(lines, cycle_id=cycle_id)
