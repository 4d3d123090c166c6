"""The work unit of one AccountShard call: what it read and what it writes, in one batch.

A :class:`Work` stages every effect of a call (account rows, ledger rows,
marks, invoices, notifications, outbox forwards) in one
:class:`~actors.store.storage.Batch`; :meth:`Work.commit` writes it with one synced
commit and only then updates the shard's cache. :class:`AccountView` and
:class:`MarkView` are the lazy views the pure core reads through. Key layout:
:mod:`actors.shard.codec`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

from actors.shard.codec import (
    AccountRow,
    decode_mark,
    decode_value,
    encode_account,
    encode_charge_mark,
    encode_charge_row,
    encode_entry,
    encode_value,
)
from actors.shard.keys import (
    ACCOUNT_NOTIFICATION_PREFIX,
    AGEING_PREFIX,
    BILLING_PREFIX,
    IDEMPOTENCY_PREFIX,
    INVOICE_INDEX_PREFIX,
    INVOICE_PREFIX,
    NOTIFICATION_ID_PREFIX,
    NOTIFICATION_PREFIX,
    NOTIFICATION_SEQ_KEY,
    OUTBOX_PREFIX,
    RESERVATION_PREFIX,
    idempotency_key,
    prefixed,
    prefixed_seq,
)
from actors.shard.outbox import Forward
from actors.store.codec import encode_u64
from actors.store.storage import Batch
from billing.accounts import CHARGED_RESULTS, AccountState, Effects
from billing.billrun.run import BillingState
from billing.charging.batch import Charge, charge_fields
from billing.idempotency import Mark
from billing.invariant import invariant
from billing.invoice import Invoice, InvoiceStatus
from billing.ledger import Entry
from billing.notifications import Notification
from billing.ocs.session import EXPIRED_KEEP_S
from billing.settlement import content_share_entry
from billing.sponsor import SponsoredUsage
from billing.writeoff import WriteoffOutcome

if TYPE_CHECKING:
    from actors.shard.core import ShardCore

__all__ = ["AccountView", "MarkView", "Work", "without_rated"]

AGEING: Final = frozenset({InvoiceStatus.OPEN, InvoiceStatus.PARTIALLY_PAID})


def without_rated(row: Charge) -> Charge:
    """``row._replace(rated=None)`` at a sixth of the cost (the answer and mark rows)."""
    return tuple.__new__(Charge, (*row[:17], None, row[18]))


def _owner_of(entry: Entry, context: str | None) -> str:
    """The account whose ledger stream stores ``entry``: its first customer posting's."""
    for posting in entry.postings:
        if not posting.account.startswith("op/"):
            return posting.account.split("/", 1)[0]
    invariant(context is not None, f"entry {entry.ref}: no customer account to store it under")
    assert context is not None  # for mypy; the invariant above always runs
    return context


class Work:
    """The writes of one call, committed in one synced batch: the account rows it
    read (before-images) and wrote, its marks, invoices and notifications."""

    def __init__(self, shard: ShardCore, *, track_marks: bool = False) -> None:
        self.shard = shard
        self.pack = shard.pack
        self.batch = Batch()
        self.before: dict[str, AccountRow | None] = {}
        self.rows: dict[str, AccountRow] = {}
        self.track_marks = track_marks
        self.marks: dict[str, Mark[Any]] = {}
        # Marks read ahead for a batch (prefetch_marks): stored ones, and keys stored nowhere.
        self.fetched: dict[str, Mark[Any]] = {}
        self.unmarked: frozenset[str] = frozenset()
        self.invoices: dict[tuple[str, str], tuple[Invoice, tuple[str, ...]]] = {}
        self.billing: dict[str, BillingState] = {}
        self.note_ids: set[str] = set()
        self.notification_seq = shard.notification_seq
        self.forwards: list[Forward] = []

    # -- reads through the work --------------------------------------------------------

    def row(self, account_id: str) -> AccountRow | None:
        found = self.rows.get(account_id)
        if found is not None:
            return found
        before = self.before
        if account_id in before:
            return before[account_id]
        loaded = before[account_id] = self.shard.load(account_id)
        return loaded

    def state(self, account_id: str) -> AccountState | None:
        row = self.row(account_id)
        return None if row is None else row.state

    def mark(self, key: str) -> Mark[Any] | None:
        found = self.marks.get(key)
        if found is not None:
            return found
        if key in self.unmarked:
            return None
        found = self.fetched.get(key)
        if found is not None:
            return found
        if not key or "\x00" in key:
            return None
        raw = self.shard.store.get_data(IDEMPOTENCY_PREFIX + key.encode())
        return None if raw is None else decode_mark(raw, self.shard.charge_row)

    def prefetch_marks(self, keys: list[str]) -> None:
        """Read the stored marks of ``keys`` with one RocksDB multi-get, before a batch asks
        for them one by one: a batch of N fresh records costs one read call, not N. What
        this work writes is still found first (:attr:`marks`); nothing is written until
        the commit, so what the store said stays true for this work."""
        wanted = [k for k in dict.fromkeys(keys) if k and "\x00" not in k]
        if not wanted:
            return
        raws = self.shard.store.get_many([IDEMPOTENCY_PREFIX + k.encode() for k in wanted])
        unmarked: set[str] = set()
        charge_row = self.shard.charge_row
        for key, raw in zip(wanted, raws, strict=True):
            if raw is None:
                unmarked.add(key)
            else:
                self.fetched[key] = decode_mark(raw, charge_row)
        self.unmarked = frozenset(unmarked)

    def invoice(self, account_id: str, invoice_id: str) -> tuple[Invoice, tuple[str, ...]] | None:
        found = self.invoices.get((account_id, invoice_id))
        if found is not None:
            return found
        raw = self.shard.store.get(prefixed(INVOICE_PREFIX, account_id, invoice_id))
        if raw is None:
            return None
        invoice, refs = decode_value(raw)
        return invoice, tuple(refs)

    def invoices_of(self, account_id: str) -> list[Invoice]:
        found = {inv.invoice_id: inv for inv in self.shard.stored_invoices(account_id)}
        for (aid, invoice_id), (invoice, _) in self.invoices.items():
            if aid == account_id:
                found[invoice_id] = invoice
        return list(found.values())

    def billing_state(self, account_id: str) -> BillingState:
        found = self.billing.get(account_id)
        if found is not None:
            return found
        raw = self.shard.store.get(prefixed(BILLING_PREFIX, account_id))
        return BillingState() if raw is None else decode_value(raw)

    # -- writes ------------------------------------------------------------------------

    def set_state(self, state: AccountState) -> None:
        account_id = state.account.account_id
        rows = self.rows
        written = rows.get(account_id)
        if written is not None:
            written.state = state  # a row of this work, not shared with the cache
            return
        current = self.row(account_id)
        rows[account_id] = (
            AccountRow(state=state, next_seq=0) if current is None else current.successor(state)
        )

    def _written(self, account_id: str) -> AccountRow:
        """The row this work writes for ``account_id`` (created from the stored one)."""
        row = self.rows.get(account_id)
        if row is None:
            current = self.row(account_id)
            invariant(current is not None, f"ledger row for unknown account {account_id}")
            assert current is not None  # for mypy; the invariant above always runs
            row = self.rows[account_id] = current.successor(current.state)
        return row

    def _append(self, account_id: str, value: bytes) -> int:
        row = self._written(account_id)
        seq = row.next_seq
        row.next_seq = seq + 1
        self.batch.put_data(row.ledger_key(seq), value)
        return seq

    def put_line(
        self,
        account_id: str,
        value: bytes,
        mark_key: str | None = None,
        fields: tuple[tuple[str, object], ...] = (),
    ) -> None:
        """Stage an encoded charge row as the account's next ledger row and, with a
        ``mark_key``, the pointer mark (``fields``) of the record it charged."""
        written = self.rows.get(account_id) or self._written(account_id)
        seq = written.next_seq
        written.next_seq = seq + 1
        put = self.batch.put_data
        put(written.ledger_key(seq), value)
        if mark_key is not None:
            # Record ids were checked for NUL on the way in; no re-check per key.
            mark = encode_charge_mark(account_id, seq, fields, self.pack)
            put(IDEMPOTENCY_PREFIX + mark_key.encode(), mark)

    def put_charge(self, row: Charge, explicit_refs: set[str]) -> None:
        """Stage a charge row and, for a usage line, its pointer mark (once per record)."""
        account_id = row.account_id
        value = encode_charge_row(row, self.pack)
        rated = row.rated
        if rated is None or not row.is_usage_line:
            self.put_line(account_id, value)
            return
        key = row.record_id if row.sponsor_of is None else row.ref
        fields = charge_fields(account_id, rated)
        self.put_line(account_id, value, key, fields)
        if self.track_marks:
            self.marks[key] = Mark(fields, without_rated(row))
        if (
            rated.content_provider is not None
            and row.sponsor_of is None
            and row.result in CHARGED_RESULTS
            and 0 < rated.provider_share <= row.amount
            and "content_share:" + row.record_id not in explicit_refs
        ):
            # The provider's share leaves content revenue in the same batch as the purchase.
            share = content_share_entry(rated, at_s=row.at_s, cycle_id=row.cycle_id)
            if share is not None:
                self._append(row.account_id, encode_entry(share))

    def put_entry(self, entry: Entry, context: str | None) -> None:
        self._append(_owner_of(entry, context), encode_entry(entry))

    def post(self, entries: Iterable[Entry], context: str) -> None:
        """Store entries that the core did not apply to account states (bill run, write-off)."""
        for entry in entries:
            touched = {
                p.account.split("/", 1)[0]
                for p in entry.postings
                if not p.account.startswith("op/")
            }
            for account_id in sorted(touched):
                current = self.state(account_id)
                invariant(current is not None, f"entry {entry.ref} posts to unknown {account_id}")
                assert current is not None  # for mypy; the invariant above always runs
                new = current.copy()
                new.apply_entry(entry)
                self.set_state(new)
            self.put_entry(entry, context)

    def put_mark(self, key: str, mark: Mark[Any]) -> None:
        self.batch.put(idempotency_key(key), encode_value(mark))
        self.marks[key] = mark

    def put_notification(self, note: Notification) -> None:
        note_id = note.notification_id
        if note_id in self.note_ids:
            return
        if self.shard.store.get(prefixed(NOTIFICATION_ID_PREFIX, note_id)) is not None:
            return  # already stored: a notification is kept once per crossing
        self.note_ids.add(note_id)
        self.notification_seq += 1
        seq = self.notification_seq
        self.batch.put(prefixed_seq(NOTIFICATION_PREFIX, None, seq), encode_value(note))
        self.batch.put(prefixed_seq(ACCOUNT_NOTIFICATION_PREFIX, note.account_id, seq), b"")
        self.batch.put(prefixed(NOTIFICATION_ID_PREFIX, note_id), encode_u64(seq))

    def put_invoice(self, invoice: Invoice, refs: tuple[str, ...] | None = None) -> None:
        old = self.invoice(invoice.account_id, invoice.invoice_id)
        if refs is None:
            refs = old[1] if old is not None else ()
        aid, iid = invoice.account_id, invoice.invoice_id
        self.batch.put(prefixed(INVOICE_PREFIX, aid, iid), encode_value((invoice, refs)))
        if old is None:
            self.batch.put(prefixed(INVOICE_INDEX_PREFIX, iid), aid.encode())
        elif old[0].status in AGEING:
            self.batch.delete(AGEING_PREFIX + encode_u64(old[0].due_at_s) + iid.encode())
        if invoice.status in AGEING:
            self.batch.put(
                AGEING_PREFIX + encode_u64(invoice.due_at_s) + iid.encode(), aid.encode()
            )
        self.invoices[(aid, iid)] = (invoice, refs)

    def put_billing_state(self, account_id: str, state: BillingState) -> None:
        self.batch.put(prefixed(BILLING_PREFIX, account_id), encode_value(state))
        self.billing[account_id] = state

    def put_forward(self, usage: SponsoredUsage) -> None:
        forward = Forward.of(usage)
        self.batch.put(prefixed(OUTBOX_PREFIX, forward.forward_id), encode_value(usage))
        self.forwards.append(forward)

    def apply(self, effects: Effects, context: str | None) -> None:
        """Stage every effect of one core outcome."""
        for state in effects.accounts:
            self.set_state(state)
        explicit = effects.explicit_entries
        refs = {e.ref for e in explicit} if explicit else set()
        for row in effects.charges:
            self.put_charge(row, refs)
        for entry in explicit:
            self.put_entry(entry, context)
        for key, mark in effects.explicit_marks:
            self.put_mark(key, mark)
        for note in effects.notifications:
            self.put_notification(note)
        for usage in effects.forwards:
            self.put_forward(usage)

    def apply_writeoff(self, out: WriteoffOutcome, account_id: str) -> None:
        for invoice in out.invoices:
            self.put_invoice(invoice)
        for key, mark in out.marks:
            self.put_mark(key, mark)
        self.post(out.entries, account_id)
        for note in out.notifications:
            self.put_notification(note)

    def commit(self) -> None:
        """One synced commit of everything staged, then the cache; nothing on failure."""
        shard = self.shard
        batch = self.batch
        put, pack = batch.put, self.pack
        for account_id, row in self.rows.items():
            put(row.row_key(), encode_account(row, pack))
            reservations = row.state.reservations
            if reservations:
                due = min(
                    r.expires_at_s if r.is_open else r.expires_at_s + EXPIRED_KEEP_S
                    for r in reservations.values()
                )
                batch.put(prefixed(RESERVATION_PREFIX, account_id), encode_u64(max(due, 0)))
            else:
                before = self.before.get(account_id)
                if before is not None and before.state.reservations:
                    batch.delete(prefixed(RESERVATION_PREFIX, account_id))
        if self.notification_seq != shard.notification_seq:
            batch.put(NOTIFICATION_SEQ_KEY, encode_u64(self.notification_seq))
        if batch.records == 0:
            return  # a pure replay or refusal: nothing to make durable
        try:
            shard.store.commit(batch)
        except BaseException:
            for account_id in (*self.before, *self.rows):
                shard.cache.pop(account_id)
            raise
        rows = self.rows
        for row in rows.values():
            row.state.history = []  # the usage history lives in the ledger stream
        shard.cache.put_many(rows.items())
        shard.notification_seq = self.notification_seq


class AccountView(Mapping[str, AccountState]):
    """The shard's accounts as the core sees them: loaded on demand through the work.

    Iteration lists only the accounts loaded so far (the core never iterates).
    """

    def __init__(self, work: Work) -> None:
        self._work = work

    def __getitem__(self, account_id: str) -> AccountState:
        found = self._work.state(account_id)
        if found is None:
            raise KeyError(account_id)
        return found

    def get(self, account_id: str, default: Any = None) -> Any:
        work = self._work
        row = work.rows.get(account_id) or work.row(account_id)
        return default if row is None else row.state

    def __contains__(self, account_id: object) -> bool:
        return isinstance(account_id, str) and self._work.state(account_id) is not None

    def __iter__(self) -> Iterator[str]:
        work = self._work
        loaded = {**work.before, **work.rows}
        return iter([aid for aid, row in loaded.items() if row is not None])

    def __len__(self) -> int:
        return sum(1 for _ in self)


class MarkView:
    """The core's ``MarkStore`` over the shard's RocksDB (and the marks of this work)."""

    __slots__ = ("get",)

    def __init__(self, work: Work) -> None:
        self.get: Callable[[str], Mark[Any] | None] = work.mark
