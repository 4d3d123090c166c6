"""The AccountShard engine: one account shard's durable state around the pure billing core.

An :class:`AccountShard` owns one :class:`~actors.storage.ShardStore` (a
raw-mode RocksDB, epoch-fenced) and is a thin shell: it loads what an
operation needs (account states through a bounded LRU of decoded rows, marks,
invoices, bill-run state), calls the pure core (``billing.*``), writes **all**
the effects of the call in one :class:`~actors.storage.Batch` committed with
one synced WAL write, updates its cache only after that commit returned, and
answers. Storage layout: :mod:`actors.shard_codec`.

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
    switch, session steps, refund, payment, reversal); a repeat answers
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

    *Forwards*: see :mod:`actors.outbox`. The host delivers
    ``ChargeBatchAnswer.forwards`` (and, after a restart, ``pending_forwards()``)
    to the sponsor's shard with ``apply_forwards`` and then calls
    ``ack_forwards`` here.

Not thread-safe: the host serialises calls into one unit. This module is
longer than the usual 400 lines because the work unit, the lazy views the core
reads through and the shard's operations are one concept: one synced batch
per call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from actors.codec import (
    ACCOUNT_PREFIX,
    IDEMPOTENCY_PREFIX,
    LEDGER_PREFIX,
    account_key,
    decode_u64,
    encode_u64,
    idempotency_key,
    ledger_prefix,
    split_ledger_key,
)
from actors.outbox import OUTBOX_PREFIX, REFUSED_PREFIX, Forward
from actors.shard_codec import (
    AccountRow,
    decode_account,
    decode_ledger_row,
    decode_mark,
    decode_value,
    encode_account,
    encode_charge_mark,
    encode_charge_row,
    encode_entry,
    encode_value,
    key_after,
    ledger_seq_key,
    prefixed,
    prefixed_seq,
)
from actors.storage import Batch, LruCache, ShardStore
from billing.accounts import (
    CHARGED_RESULTS,
    Account,
    AccountState,
    AccountStatus,
    Effects,
    Outcome,
    Result,
    create_account,
    set_credit_limit,
    set_status,
)
from billing.billrun import (
    BillingState,
    BillResult,
    BillRunConfig,
    ExtraCharge,
    bill_run,
    billing_account,
    interim_invoice,
    invoice_id_for,
    ledger_difference,
)
from billing.bundles import Tariff
from billing.charging import (
    Charge,
    ChargingConfig,
    TopUp,
    charge,
    charge_batch,
    charge_fields,
    top_up,
)
from billing.cycle import cycle_containing, monthly_cycle
from billing.idempotency import Mark
from billing.invariant import invariant
from billing.invoice import Invoice, InvoiceStatus
from billing.ledger import Entry, EntryKind, is_valid_account_id
from billing.notifications import Notification
from billing.ocs import (
    EXPIRED_KEEP_S,
    BalanceView,
    Grant,
    Quote,
    Refund,
    balance_check,
    expire,
    refund,
    session_initial,
    session_terminate,
    session_update,
)
from billing.rated import RatedRecord
from billing.settlement import ItemLine, ProviderSettlement, content_share_entry, provider_key
from billing.sponsor import SponsoredUsage, charge_sponsored, resolve_sponsor
from billing.switching import KEEP_LIMIT, Switch, switch_mode
from billing.tariffs.model import Catalogue, PaymentMode
from billing.writeoff import (
    PAYABLE,
    Payment,
    WriteoffOutcome,
    age_invoices,
    apply_payment,
    reverse_payment,
)

__all__ = [
    "AccountShard",
    "AuditReport",
    "BillRunReport",
    "ChargeBatchAnswer",
]

T = TypeVar("T")

BILLING_PREFIX: Final = b"b/"
INVOICE_PREFIX: Final = b"v/"
INVOICE_INDEX_PREFIX: Final = b"V/"
AGEING_PREFIX: Final = b"o/"
NOTIFICATION_PREFIX: Final = b"N/"
ACCOUNT_NOTIFICATION_PREFIX: Final = b"n/"
NOTIFICATION_ID_PREFIX: Final = b"d/"
RESERVATION_PREFIX: Final = b"r/"
NOTIFICATION_SEQ_KEY: Final = b"c/notifications"
AGEING: Final = frozenset({InvoiceStatus.OPEN, InvoiceStatus.PARTIALLY_PAID})
PROBLEMS_MAX: Final = 100


def _prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _owner_of(entry: Entry, context: str | None) -> str:
    """The account whose ledger stream stores ``entry``: its first customer posting's."""
    for posting in entry.postings:
        if not posting.account.startswith("op/"):
            return posting.account.split("/", 1)[0]
    invariant(context is not None, f"entry {entry.ref}: no customer account to store it under")
    assert context is not None  # for mypy; the invariant above always runs
    return context


class ChargeBatchAnswer(list[Charge]):
    """The answer of :meth:`AccountShard.charge_batch`: a list with one row per record,
    in order (``row.result`` is the per-record result), and ``forwards``, the sponsor
    charges for other shards this batch stored in the outbox, for the host to deliver."""

    def __init__(self, rows: Iterable[Charge], forwards: list[Forward]) -> None:
        super().__init__(rows)
        self.forwards = forwards

    @property
    def rows(self) -> list[Charge]:
        return list(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class BillRunReport:
    """What one :meth:`AccountShard.bill_run` call did. ``refused`` is set (and nothing
    was done) when the cycle has not ended at ``at_s``."""

    cycle_id: str
    accounts: int = 0
    results: Mapping[str, int] = field(default_factory=dict)
    invoiced: int = 0
    entries: int = 0
    commits: int = 0
    refused: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditReport:
    """Revenue-assurance view of one shard: ``ok`` when no problem was found.

    Checked: every account's books equal the replay of its stored ledger;
    ledger sequences are gap-free; the postings of the shard sum to zero; every
    final invoice equals its ledger entries and each account's receivable
    equals minus what its final invoices still owe.
    """

    ok: bool
    problems: tuple[str, ...]
    accounts: int
    ledger_rows: int
    entries: int
    usage_lines: int
    marks: int
    invoices: int
    notifications: int
    forwards_pending: int
    forwards_refused: int
    postings_total: int
    op_balances: Mapping[str, int]


class _Work:
    """The writes of one call, committed in one synced batch: the account rows it
    read (before-images) and wrote, its marks, invoices and notifications."""

    def __init__(self, shard: AccountShard, *, track_marks: bool = False) -> None:
        self.shard = shard
        self.batch = Batch()
        self.before: dict[str, AccountRow | None] = {}
        self.rows: dict[str, AccountRow] = {}
        self.track_marks = track_marks
        self.marks: dict[str, Mark[Any]] = {}
        self.invoices: dict[tuple[str, str], tuple[Invoice, tuple[str, ...]]] = {}
        self.billing: dict[str, BillingState] = {}
        self.note_ids: set[str] = set()
        self.notification_seq = shard._notification_seq
        self.forwards: list[Forward] = []

    # -- reads through the work --------------------------------------------------------

    def row(self, account_id: str) -> AccountRow | None:
        found = self.rows.get(account_id)
        if found is not None:
            return found
        if account_id in self.before:
            return self.before[account_id]
        loaded = self.shard._load(account_id)
        self.before[account_id] = loaded
        return loaded

    def state(self, account_id: str) -> AccountState | None:
        row = self.row(account_id)
        return None if row is None else row.state

    def mark(self, key: str) -> Mark[Any] | None:
        found = self.marks.get(key)
        if found is not None:
            return found
        if not key or "\x00" in key:
            return None
        raw = self.shard.store.get(IDEMPOTENCY_PREFIX + key.encode())
        return None if raw is None else decode_mark(raw, self.shard._charge_row)

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
        found = {inv.invoice_id: inv for inv in self.shard._stored_invoices(account_id)}
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
        current = self.row(state.account_id)
        if current is None:
            self.rows[state.account_id] = AccountRow(state=state, next_seq=0)
        else:
            self.rows[state.account_id] = AccountRow(
                state=state,
                next_seq=current.next_seq,
                profile=current.profile,
                profile_of=current.profile_of,
                ledger_head=current.ledger_head,
            )

    def _append(self, account_id: str, value: bytes) -> int:
        row = self.rows.get(account_id)
        if row is None:
            current = self.row(account_id)
            invariant(current is not None, f"ledger row for unknown account {account_id}")
            assert current is not None  # for mypy; the invariant above always runs
            self.set_state(current.state)
            row = self.rows[account_id]
        seq = row.next_seq
        row.next_seq = seq + 1
        self.batch.put(row.ledger_key(seq), value)
        return seq

    def put_charge(self, row: Charge, explicit_refs: set[str]) -> None:
        seq = self._append(row.account_id, encode_charge_row(row))
        rated = row.rated
        if rated is None or not row.is_usage_line:
            return
        key = row.record_id if row.sponsor_of is None else row.ref
        fields = charge_fields(row.account_id, rated)
        # Record ids were checked for NUL on the way in (charge_batch); no re-check per key.
        self.batch.put(
            IDEMPOTENCY_PREFIX + key.encode(), encode_charge_mark(row.account_id, seq, fields)
        )
        if self.track_marks:
            self.marks[key] = Mark(fields, row._replace(rated=None))
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
        for account_id, row in self.rows.items():
            batch.put(account_key(account_id), encode_account(row))
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
        if self.notification_seq != shard._notification_seq:
            batch.put(NOTIFICATION_SEQ_KEY, encode_u64(self.notification_seq))
        if batch.records == 0:
            return  # a pure replay or refusal: nothing to make durable
        try:
            shard.store.commit(batch)
        except BaseException:
            for account_id in (*self.before, *self.rows):
                shard._cache.pop(account_id)
            raise
        for account_id, row in self.rows.items():
            row.state.history = []  # the usage history lives in the ledger stream
            shard._cache.put(account_id, row)
        shard._notification_seq = self.notification_seq


class _AccountView(Mapping[str, AccountState]):
    """The shard's accounts as the core sees them: loaded on demand through the work.

    Iteration lists only the accounts loaded so far (the core never iterates).
    """

    def __init__(self, work: _Work) -> None:
        self._work = work

    def __getitem__(self, account_id: str) -> AccountState:
        found = self._work.state(account_id)
        if found is None:
            raise KeyError(account_id)
        return found

    def get(self, account_id: str, default: Any = None) -> Any:
        found = self._work.state(account_id)
        return default if found is None else found

    def __contains__(self, account_id: object) -> bool:
        return isinstance(account_id, str) and self._work.state(account_id) is not None

    def __iter__(self) -> Iterator[str]:
        work = self._work
        loaded = {**work.before, **work.rows}
        return iter([aid for aid, row in loaded.items() if row is not None])

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _Marks:
    """The core's ``MarkStore`` over the shard's RocksDB (and the marks of this work)."""

    __slots__ = ("get",)

    def __init__(self, work: _Work) -> None:
        self.get: Callable[[str], Mark[Any] | None] = work.mark


def _refusal(rated: RatedRecord, account_id: str, result: Result, at_s: int) -> Charge:
    record = rated.record
    return Charge(
        record.record_id, "usage:" + record.record_id, account_id, result, "",
        record.service.value, rated.usage_class, rated.units, 0, 0, 0, 0, 0, rated.currency, at_s,
    )  # fmt: skip


def _segments(
    items: Sequence[tuple[str, RatedRecord]],
) -> list[list[tuple[int, str, RatedRecord]]]:
    """Split records into runs whose msisdns map to one account each (the core's directory)."""
    segments: list[list[tuple[int, str, RatedRecord]]] = [[]]
    directory: dict[str, str] = {}
    for index, (account_id, rated) in enumerate(items):
        msisdn = rated.record.served_msisdn
        known = directory.get(msisdn)
        if known is not None and known != account_id:
            segments.append([])
            directory = {}
        directory[msisdn] = account_id
        segments[-1].append((index, account_id, rated))
    return segments


class AccountShard:
    """One account shard (e.g. ``acct-07``): the pure core over one ShardStore."""

    def __init__(
        self,
        store: ShardStore,
        *,
        tariff: Tariff,
        unit_id: str = "",
        charging: ChargingConfig | None = None,
        billing: BillRunConfig | None = None,
        catalogue: Catalogue | None = None,
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
        self.chunk_accounts = chunk_accounts
        self._cache: LruCache[str, AccountRow] = LruCache(cache_accounts_max)
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
        **options: Any,
    ) -> AccountShard:
        """Open the unit's database as owner at ``epoch`` (see ``ShardStore.open``).

        The store's byte cache is off: this class caches decoded rows instead.
        """
        store = ShardStore.open(path, epoch=epoch, fence=fence, cache_entries_max=0)
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
        self, account_id: str, run: Callable[[_Work, AccountState], Outcome[T]]
    ) -> Outcome[T]:
        work = _Work(self)
        state = work.state(account_id)
        if state is None:
            return Outcome(result=Result.UNKNOWN_ACCOUNT)
        out = run(work, state)
        work.apply(out.effects, account_id)
        work.commit()
        return out

    # -- usage -------------------------------------------------------------------------

    def charge_batch(
        self, items: Sequence[tuple[str, RatedRecord]], *, at_s: int, offline: bool = True
    ) -> ChargeBatchAnswer:
        """Charge rated records to their accounts (``(account_id, rated)`` pairs, the
        subscriber's account as the partition's directory resolved it): one commit."""
        rows: list[Charge | None] = [None] * len(items)
        valid: list[tuple[str, RatedRecord]] = []
        positions: list[int] = []
        for index, (account_id, rated) in enumerate(items):
            record_id = rated.record.record_id
            if not record_id or "\x00" in record_id:
                rows[index] = _refusal(rated, account_id, Result.INVALID_ARGUMENT, at_s)
            else:
                valid.append((account_id, rated))
                positions.append(index)
        segments = _segments(valid)
        work = _Work(self, track_marks=len(segments) > 1)
        view, marks = _AccountView(work), _Marks(work)
        for segment in segments:
            if not segment:
                continue
            directory = {rated.record.served_msisdn: aid for _, aid, rated in segment}
            out = charge_batch(
                (rated for _, _, rated in segment),
                accounts=view,
                directory=directory,
                marks=marks,
                tariff=self.tariff,
                config=self.charging,
                at_s=at_s,
                offline=offline,
            )
            work.apply(out.effects, None)
            receipt = out.receipt or ()
            for (index, _, _), row in zip(segment, receipt, strict=True):
                rows[positions[index]] = row if row.rated is None else row._replace(rated=None)
        work.commit()
        answer = [row for row in rows if row is not None]
        invariant(len(answer) == len(items), "one row per record")
        return ChargeBatchAnswer(answer, work.forwards)

    def apply_forwards(self, forwards: Sequence[Forward], *, at_s: int) -> list[tuple[str, Result]]:
        """Apply sponsor charges forwarded by other shards (idempotent by forward id).

        A forward this shard cannot apply (unknown or closed sponsor, currency
        mismatch) is kept under ``x/`` with its result for revenue assurance
        (``refused_forwards``), so acknowledging it upstream loses nothing.
        """
        work = _Work(self, track_marks=True)
        marks = _Marks(work)
        results: list[tuple[str, Result]] = []
        for forward in forwards:
            usage = forward.usage
            state = work.state(usage.sponsor_account_id)
            if state is None:
                result = Result.UNKNOWN_ACCOUNT
            else:
                out = charge_sponsored(
                    state, usage, marks=marks, tariff=self.tariff, config=self.charging, at_s=at_s
                )
                work.apply(out.effects, usage.sponsor_account_id)
                result = out.result
            if result not in CHARGED_RESULTS and result is not Result.DUPLICATE:
                work.batch.put(
                    prefixed(REFUSED_PREFIX, forward.forward_id),
                    encode_value((usage, result)),
                )
            results.append((forward.forward_id, result))
        work.commit()
        return results

    def pending_forwards(self, limit: int = 1000) -> list[Forward]:
        """Forwards stored in the outbox and not yet acknowledged, oldest id first."""
        return [
            Forward.of(decode_value(raw))
            for _, raw in self.store.scan_prefix(OUTBOX_PREFIX, limit=limit)
        ]

    def ack_forwards(self, forward_ids: Iterable[str]) -> int:
        """Delete delivered forwards from the outbox (one commit); returns how many."""
        batch = Batch()
        count = 0
        for forward_id in forward_ids:
            key = prefixed(OUTBOX_PREFIX, forward_id)
            if self.store.get(key) is not None:
                batch.delete(key)
                count += 1
        if count:
            self.store.commit(batch)
        return count

    def refused_forwards(self, limit: int = 1000) -> list[tuple[SponsoredUsage, Result]]:
        """Forwards received here that could not be charged, with their result."""
        out: list[tuple[SponsoredUsage, Result]] = []
        for _, raw in self.store.scan_prefix(REFUSED_PREFIX, limit=limit):
            usage, result = decode_value(raw)
            out.append((usage, Result(result)))
        return out

    def direct_debit(self, *, account_id: str, rated: RatedRecord, at_s: int) -> Outcome[Charge]:
        """An immediate online event (content purchase, one-shot): never below the
        balance or over the limit; idempotent by ``record_id``."""

        def run(work: _Work, state: AccountState) -> Outcome[Charge]:
            others: dict[str, AccountState] = {}
            sponsorship = resolve_sponsor(state.account, rated, self.tariff)
            if sponsorship is not None:
                sponsor = work.state(sponsorship.sponsor_account_id)
                if sponsor is not None:
                    others[sponsorship.sponsor_account_id] = sponsor
            return charge(
                state, rated, marks=_Marks(work), tariff=self.tariff, config=self.charging,
                at_s=at_s, offline=False, others=others,
            )  # fmt: skip

        return self._single(account_id, run)

    # -- accounts ----------------------------------------------------------------------

    def create_account(self, *, request_id: str, account: Account) -> Outcome[Account]:
        """Create ``account`` (idempotent by ``request_id``; the account id must be new)."""
        work = _Work(self)
        out = create_account(
            request_id=request_id,
            account=account,
            current=work.state(account.account_id),
            existing=work.mark(request_id),
        )
        work.apply(out.effects, account.account_id)
        work.commit()
        return out

    def set_credit_limit(
        self, *, request_id: str, account_id: str, credit_limit: int | None
    ) -> Outcome[Account]:
        return self._single(
            account_id,
            lambda work, state: set_credit_limit(
                request_id=request_id,
                state=state,
                credit_limit=credit_limit,
                existing=work.mark(request_id),
            ),
        )

    def set_status(
        self, *, request_id: str, account_id: str, status: AccountStatus
    ) -> Outcome[Account]:
        return self._single(
            account_id,
            lambda work, state: set_status(
                request_id=request_id, state=state, status=status, existing=work.mark(request_id)
            ),
        )

    def top_up(
        self, *, request_id: str, account_id: str, amount: int, currency: str, at_s: int
    ) -> Outcome[TopUp]:
        return self._single(
            account_id,
            lambda work, state: top_up(
                request_id=request_id, state=state, amount=amount, currency=currency,
                at_s=at_s, existing=work.mark(request_id), config=self.charging,
            ),
        )  # fmt: skip

    def switch_mode(
        self,
        *,
        request_id: str,
        account_id: str,
        to_mode: PaymentMode,
        at_s: int,
        credit_limit: int | None = KEEP_LIMIT,
    ) -> Outcome[Switch]:
        """Switch the payment mode; a switch to prepaid issues its interim invoice in
        the same batch (``billing.billrun.interim_invoice``)."""
        work = _Work(self)
        state = work.state(account_id)
        if state is None:
            return Outcome(result=Result.UNKNOWN_ACCOUNT)
        out = switch_mode(
            request_id=request_id, state=state, to_mode=to_mode, at_s=at_s,
            existing=work.mark(request_id), config=self.charging, credit_limit=credit_limit,
        )  # fmt: skip
        work.apply(out.effects, account_id)
        switch = out.receipt
        if out.result is Result.SWITCHED and switch is not None and switch.interim is not None:
            new = work.state(account_id)
            assert new is not None  # set just above
            view = billing_account(
                new, cycle=cycle_containing(at_s, self.billing.tz), catalogue=self.catalogue
            )
            bill = interim_invoice(
                switch.interim, view, work.billing_state(account_id), config=self.billing
            )
            for invoice in bill.invoices:
                work.put_invoice(invoice, (f"switch:{request_id}",))
            if bill.state is not None:
                work.put_billing_state(account_id, bill.state)
            work.post(bill.entries, account_id)
            for note in bill.notifications:
                work.put_notification(note)
        work.commit()
        return out

    # -- online charging ----------------------------------------------------------------

    def session_initial(
        self, *, request_id: str, account_id: str, session_id: str, quote: Quote,
        requested_units: int, validity_s: int, at_s: int,
    ) -> Outcome[Grant]:  # fmt: skip
        return self._single(
            account_id,
            lambda work, state: session_initial(
                request_id=request_id, state=state, session_id=session_id, quote=quote,
                requested_units=requested_units, validity_s=validity_s, at_s=at_s,
                existing=work.mark(request_id), tariff=self.tariff, config=self.charging,
            ),
        )  # fmt: skip

    def session_update(
        self, *, request_id: str, account_id: str, session_id: str, used_units: int,
        requested_units: int, at_s: int,
    ) -> Outcome[Grant]:  # fmt: skip
        return self._single(
            account_id,
            lambda work, state: session_update(
                request_id=request_id, state=state, session_id=session_id,
                used_units=used_units, requested_units=requested_units, at_s=at_s,
                existing=work.mark(request_id), tariff=self.tariff, config=self.charging,
            ),
        )  # fmt: skip

    def session_terminate(
        self, *, request_id: str, account_id: str, session_id: str, used_units: int, at_s: int
    ) -> Outcome[Grant]:
        return self._single(
            account_id,
            lambda work, state: session_terminate(
                request_id=request_id, state=state, session_id=session_id,
                used_units=used_units, at_s=at_s, existing=work.mark(request_id),
                tariff=self.tariff, config=self.charging,
            ),
        )  # fmt: skip

    def expire_reservations(self, at_s: int) -> dict[str, tuple[str, ...]]:
        """Release every reservation whose validity ended by ``at_s``, exactly once
        (one commit per chunk of accounts); returns the sessions expired per account."""
        expired: dict[str, tuple[str, ...]] = {}
        start = RESERVATION_PREFIX
        end = _prefix_end(RESERVATION_PREFIX)
        while True:
            chunk = list(self.store.scan(start, end, limit=self.chunk_accounts))
            if not chunk:
                return expired
            start = key_after(chunk[-1][0])
            work = _Work(self)
            for key, raw in chunk:
                if decode_u64(raw) > at_s:
                    continue
                account_id = key[len(RESERVATION_PREFIX) :].decode()
                state = work.state(account_id)
                if state is None:
                    continue
                out = expire(state, at_s=at_s)
                work.apply(out.effects, account_id)
                if out.receipt:
                    expired[account_id] = out.receipt
            work.commit()

    def refund(
        self, *, request_id: str, account_id: str, amount: int, service: str, reason_ref: str,
        at_s: int,
    ) -> Outcome[Refund]:  # fmt: skip
        return self._single(
            account_id,
            lambda work, state: refund(
                request_id=request_id, state=state, amount=amount, service=service,
                reason_ref=reason_ref, at_s=at_s, existing=work.mark(request_id),
                config=self.charging,
            ),
        )  # fmt: skip

    def balance_check(
        self, account_id: str, *, at_s: int, quote: Quote | None = None
    ) -> Outcome[BalanceView]:
        """Read-only: balances by book, what can be spent, bundles left for ``quote``."""
        row = self._load(account_id)
        if row is None:
            return Outcome(result=Result.UNKNOWN_ACCOUNT)
        return balance_check(
            row.state, at_s=at_s, tariff=self.tariff, config=self.charging, quote=quote
        )

    def balance(self, account_id: str, *, at_s: int) -> BalanceView | None:
        return self.balance_check(account_id, at_s=at_s).receipt

    # -- billing -----------------------------------------------------------------------

    def _account_chunks(self, account_ids: Sequence[str] | None) -> Iterator[list[str]]:
        size = self.chunk_accounts
        if account_ids is not None:
            for i in range(0, len(account_ids), size):
                yield list(account_ids[i : i + size])
            return
        start, end = ACCOUNT_PREFIX, _prefix_end(ACCOUNT_PREFIX)
        while True:
            keys = [key for key, _ in self.store.scan(start, end, limit=size)]
            if not keys:
                return
            start = key_after(keys[-1])
            yield [key[len(ACCOUNT_PREFIX) :].decode() for key in keys]

    def bill_run(
        self,
        cycle_id: str,
        *,
        at_s: int,
        account_ids: Sequence[str] | None = None,
        extras: Mapping[str, Sequence[ExtraCharge]] | None = None,
    ) -> BillRunReport:
        """Bill ``cycle_id`` for the given accounts (default: all of the shard, read by
        key prefix in chunks, one commit per chunk). Idempotent per (account, cycle)."""
        year, month = (int(part) for part in cycle_id.split("-"))
        cycle = monthly_cycle(year, month, self.billing.tz)
        if at_s < cycle.end_s:
            return BillRunReport(cycle_id=cycle_id, refused="cycle_not_ended")
        results: dict[str, int] = {}
        accounts = invoiced = entries = commits = 0
        for chunk in self._account_chunks(account_ids):
            work = _Work(self)
            items = []
            for account_id in chunk:
                state = work.state(account_id)
                if state is None:
                    results["unknown_account"] = results.get("unknown_account", 0) + 1
                    continue
                view = billing_account(
                    state,
                    cycle=cycle,
                    catalogue=self.catalogue,
                    extras=tuple((extras or {}).get(account_id, ())),
                )
                stored = work.invoice(account_id, invoice_id_for(account_id, cycle_id))
                items.append(
                    (view, work.billing_state(account_id), None if stored is None else stored[0])
                )
            outcomes, summary = bill_run(items, cycle, at_s=at_s, config=self.billing)
            for out in outcomes:
                if out.result is BillResult.REPLAYED:
                    continue
                for invoice in out.invoices:
                    work.put_invoice(invoice)
                if out.state is not None:
                    work.put_billing_state(out.account_id, out.state)
                work.post(out.entries, out.account_id)
                for note in out.notifications:
                    work.put_notification(note)
            work.commit()
            commits += 1
            accounts += summary.accounts
            invoiced += summary.invoiced
            entries += summary.entries
            for result, count in summary.results.items():
                results[result.value] = results.get(result.value, 0) + count
        return BillRunReport(
            cycle_id=cycle_id,
            accounts=accounts,
            results=results,
            invoiced=invoiced,
            entries=entries,
            commits=commits,
        )

    def apply_payment(
        self, *, request_id: str, account_id: str, amount: int, currency: str, at_s: int
    ) -> WriteoffOutcome | Result:
        """Pay ``account_id``'s open invoices oldest first (excess to credit). Returns
        ``Result.UNKNOWN_ACCOUNT`` / ``CURRENCY_MISMATCH`` when it cannot apply."""
        work = _Work(self)
        state = work.state(account_id)
        if state is None:
            return Result.UNKNOWN_ACCOUNT
        existing = work.mark(request_id)
        if existing is None and currency != state.account.currency:
            return Result.CURRENCY_MISMATCH
        out = apply_payment(
            request_id=request_id, account_id=account_id, amount=amount, currency=currency,
            at_s=at_s, invoices=work.invoices_of(account_id), existing=existing,
        )  # fmt: skip
        work.apply_writeoff(out, account_id)
        work.commit()
        return out

    def reverse_payment(
        self, *, request_id: str, account_id: str, payment_id: str, at_s: int
    ) -> WriteoffOutcome | Result:
        """Undo payment ``payment_id`` exactly (idempotent by ``request_id``)."""
        work = _Work(self)
        state = work.state(account_id)
        if state is None:
            return Result.UNKNOWN_ACCOUNT
        payment_mark = work.mark(payment_id)
        if payment_mark is not None and not isinstance(payment_mark.result, Payment):
            payment_mark = None  # the id names another kind of operation
        out = reverse_payment(
            request_id=request_id, account_id=account_id, payment_id=payment_id, at_s=at_s,
            payment_mark=payment_mark, invoices=work.invoices_of(account_id),
            credit_balance=state.credit, existing=work.mark(request_id),
        )  # fmt: skip
        work.apply_writeoff(out, account_id)
        work.commit()
        return out

    def age_invoices(self, at_s: int) -> int:
        """Mark open invoices due by ``at_s`` overdue (one notice each); returns how many."""
        changed_total = 0
        end = AGEING_PREFIX + encode_u64(at_s + 1)
        while True:
            chunk = list(self.store.scan(AGEING_PREFIX, end, limit=self.chunk_accounts))
            if not chunk:
                return changed_total
            work = _Work(self)
            invoices = []
            for key, raw in chunk:
                found = work.invoice(raw.decode(), key[len(AGEING_PREFIX) + 8 :].decode())
                if found is None:
                    work.batch.delete(key)  # an index row without its invoice: drop it
                else:
                    invoices.append(found[0])
            changed, notices = age_invoices(invoices, at_s)
            for invoice in changed:
                work.put_invoice(invoice)  # OVERDUE: put_invoice drops its index row
            for note in notices:
                work.put_notification(note)
            done = {i.invoice_id for i in changed}
            for invoice in invoices:
                if invoice.invoice_id not in done:  # no longer ageing (paid meanwhile)
                    key = AGEING_PREFIX + encode_u64(invoice.due_at_s) + invoice.invoice_id.encode()
                    work.batch.delete(key)
            work.commit()
            changed_total += len(changed)

    # -- queries -----------------------------------------------------------------------

    def get_account(self, account_id: str) -> AccountState | None:
        """A copy of the account's state (its ``history`` is empty: see ``list_usage``)."""
        row = self._load(account_id)
        return None if row is None else row.state.copy()

    def ledger_rows(self, account_id: str) -> Iterator[Charge | Entry]:
        """The account's ledger stream in order: charge rows (usage lines) and entries."""
        if not is_valid_account_id(account_id):
            return
        for _, raw in self.store.scan_prefix(ledger_prefix(account_id)):
            yield decode_ledger_row(raw)

    def ledger_entries(self, account_id: str) -> list[Entry]:
        """Every ledger entry stored in the account's stream, in order."""
        out: list[Entry] = []
        for item in self.ledger_rows(account_id):
            entry = item.to_entry() if isinstance(item, Charge) else item
            if entry is not None:
                out.append(entry)
        return out

    def list_usage(self, account_id: str, limit: int = 50) -> list[Charge]:
        """The newest ``limit`` usage lines of the account, newest first."""
        row = self._load(account_id)
        if row is None or limit <= 0:
            return []
        found: list[Charge] = []
        end = row.next_seq
        window = limit
        while end > 0 and len(found) < limit:
            start = max(end - window, 0)
            chunk = [
                item
                for _, raw in self.store.scan(
                    ledger_seq_key(account_id, start), ledger_seq_key(account_id, end)
                )
                if isinstance(item := decode_ledger_row(raw), Charge)
            ]
            found.extend(reversed(chunk))
            end, window = start, window * 2
        return found[:limit]

    def list_invoices(self, account_id: str, open_only: bool = False) -> list[Invoice]:
        """The account's invoices (drafts included unless ``open_only``), oldest first."""
        invoices = sorted(
            self._stored_invoices(account_id), key=lambda i: (i.cycle_id, i.issued_at_s)
        )
        if open_only:
            return [i for i in invoices if i.status in PAYABLE and i.open_amount > 0]
        return invoices

    def get_invoice(self, invoice_id: str) -> Invoice | None:
        if not invoice_id or "\x00" in invoice_id:
            return None
        owner = self.store.get(prefixed(INVOICE_INDEX_PREFIX, invoice_id))
        if owner is None:
            return None
        raw = self.store.get(prefixed(INVOICE_PREFIX, owner.decode(), invoice_id))
        return None if raw is None else decode_value(raw)[0]

    def list_notifications(self, account_id: str, limit: int = 50) -> list[Notification]:
        """The account's newest ``limit`` notifications, oldest of them first."""
        if not is_valid_account_id(account_id) or limit <= 0:
            return []
        head = ACCOUNT_NOTIFICATION_PREFIX + account_id.encode() + b"\x00"
        seqs = [decode_u64(key[-8:]) for key, _ in self.store.scan_prefix(head)][-limit:]
        out = []
        for seq in seqs:
            raw = self.store.get(prefixed_seq(NOTIFICATION_PREFIX, None, seq))
            if raw is not None:
                out.append(decode_value(raw))
        return out

    def notifications_since(self, seq: int, limit: int = 1000) -> list[tuple[int, Notification]]:
        """Notifications stored after shard sequence ``seq`` (for the server stream)."""
        start = prefixed_seq(NOTIFICATION_PREFIX, None, seq + 1)
        return [
            (decode_u64(key[len(NOTIFICATION_PREFIX) :]), decode_value(raw))
            for key, raw in self.store.scan(start, _prefix_end(NOTIFICATION_PREFIX), limit=limit)
        ]

    def settlement_report(self, cycle_id: str) -> tuple[ProviderSettlement, ...]:
        """Content sold in ``cycle_id`` per (provider, currency), from the stored
        ``content_share`` entries and the charge rows of the same purchases."""
        lines: dict[tuple[str, str], dict[str, list[int]]] = {}
        start, end = LEDGER_PREFIX, _prefix_end(LEDGER_PREFIX)
        gross: dict[str, int] = {}
        for _, raw in self.store.scan(start, end):
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
        report = []
        for (provider, currency), items in sorted(lines.items()):
            item_lines = tuple(
                ItemLine(item_id=item, count=c, gross=g, provider_share=s)
                for item, (c, g, s) in sorted(items.items())
            )
            report.append(
                ProviderSettlement(
                    provider=provider,
                    cycle_id=cycle_id,
                    currency=currency,
                    items=item_lines,
                    count=sum(x.count for x in item_lines),
                    gross=sum(x.gross for x in item_lines),
                    provider_share=sum(x.provider_share for x in item_lines),
                )
            )
        return tuple(report)

    # -- audit -------------------------------------------------------------------------

    def audit(self) -> AuditReport:
        """Replay every account's stored ledger and check it against the stored state."""
        problems: list[str] = []

        def problem(text: str) -> None:
            if len(problems) < PROBLEMS_MAX:
                problems.append(text)

        op: dict[str, int] = {}
        foreign: dict[str, int] = {}
        total = accounts = ledger_rows = entries = usage_lines = invoices = 0
        for _, raw in self.store.scan_prefix(ACCOUNT_PREFIX):
            row = decode_account(raw)
            aid = row.state.account_id
            accounts += 1
            own = aid + "/"
            books: dict[str, int] = {}
            billing: list[Entry] = []
            expected = 0
            for key, lraw in self.store.scan_prefix(ledger_prefix(aid)):
                _, seq = split_ledger_key(key)
                if seq != expected:
                    problem(f"{aid}: ledger seq {seq}, expected {expected}")
                expected = seq + 1
                ledger_rows += 1
                item = decode_ledger_row(lraw)
                if isinstance(item, Charge):
                    usage_lines += 1
                    entry = item.to_entry()
                else:
                    entry = item
                if entry is None:
                    continue
                entries += 1
                if entry.ref.startswith(("bill:", "switch:")):
                    billing.append(entry)
                for posting in entry.postings:
                    total += posting.amount
                    name = posting.account
                    if name.startswith(own):
                        books[name] = books.get(name, 0) + posting.amount
                    elif name.startswith("op/"):
                        op[name] = op.get(name, 0) + posting.amount
                    else:
                        foreign[name] = foreign.get(name, 0) + posting.amount
            if expected != row.next_seq:
                problem(f"{aid}: {expected} ledger rows, account says {row.next_seq}")
            view = row.state.ledger_view()
            replayed = {k: v for k, v in books.items() if v}
            if view != replayed:
                problem(f"{aid}: books {view} != ledger replay {replayed}")
            owed = 0
            for invoice_row in self.store.scan_prefix(INVOICE_PREFIX + aid.encode() + b"\x00"):
                invoice, refs = decode_value(invoice_row[1])
                invoices += 1
                if invoice.status is InvoiceStatus.DRAFT:
                    continue
                owed += invoice.open_amount
                diff = ledger_difference(invoice, billing, also_refs=tuple(refs))
                if diff:
                    problem(f"{invoice.invoice_id}: invoice and ledger differ by {diff}")
            if row.state.receivable != -owed:
                problem(f"{aid}: receivable {row.state.receivable} != -open invoices {owed}")
        for name, amount in foreign.items():
            if amount:
                problem(f"posting to {name} stored outside its account's stream: {amount}")
        if total != 0:
            problem(f"postings of the shard sum to {total}, not 0")
        return AuditReport(
            ok=not problems,
            problems=tuple(problems),
            accounts=accounts,
            ledger_rows=ledger_rows,
            entries=entries,
            usage_lines=usage_lines,
            marks=sum(1 for _ in self.store.scan_prefix(IDEMPOTENCY_PREFIX)),
            invoices=invoices,
            notifications=self._notification_seq,
            forwards_pending=sum(1 for _ in self.store.scan_prefix(OUTBOX_PREFIX)),
            forwards_refused=sum(1 for _ in self.store.scan_prefix(REFUSED_PREFIX)),
            postings_total=total,
            op_balances=dict(sorted(op.items())),
        )
