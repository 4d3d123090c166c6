"""Charging: applying rated records to accounts — bundles first, then money — and top-ups.

Rules (docs/billing-rules.md has them with examples):

1. **Idempotency.** A record is keyed by its ``record_id``; its mark holds
   ``account``, ``amount`` (the rated amount) and ``content``
   (``UsageRecord.content_key()``). A repeat is ``DUPLICATE`` with the first
   charge's figures and no effects; a changed repeat is
   ``exists_with_different_<field>``. Refusals (insufficient balance, unknown
   or closed account) are not marked: a retry after a top-up can succeed.
2. **Bundles first** (``billing.bundles``), narrowest first; the uncovered
   units are priced with ``Tariff.reprice``. A fully covered record charges no
   money and posts no entry; it still counts in the usage totals.
3. **Money by payment mode.** *Prepaid*: from ``Book.PREPAID``, never below
   zero. If the balance does not cover the amount, an *online* charge is
   ``INSUFFICIENT_BALANCE``; an *offline* record (usage that already happened)
   follows ``ChargingConfig.offline_policy``: ``debt`` (the default) takes what
   the prepaid balance has and posts the rest to ``Book.DEBT``
   (``CHARGED_TO_DEBT``, a ``debt_posted`` reminder); ``reject`` answers
   ``REJECTED_OFFLINE`` and the caller queues the record. *Postpaid*: to
   ``Book.UNBILLED``; beyond the credit limit an online charge is
   ``CREDIT_LIMIT_EXCEEDED``, an offline one is still posted
   (``CHARGED_OVER_LIMIT``), reminded, and the account is blocked if
   ``block_over_limit``. *Hybrid*: prepaid balance first, the rest to
   unbilled under the postpaid rules.
4. **Status.** Closed accounts refuse everything (``ACCOUNT_CLOSED``); blocked
   accounts refuse online charges (``ACCOUNT_BLOCKED``) but offline records,
   whose usage already happened, are charged.
5. **Postings.** One balanced entry per money charge, ref ``usage:<record_id>``,
   kind ``charge``, tagged with the record's cycle: the customer books
   (``prepaid``, ``unbilled``, ``debt``) ``−`` their parts, ``op/revenue/<service>``
   ``+amount``.
6. **Top-up** (idempotent by ``request_id``): ``op/cash −A``; a prepaid or
   hybrid account first repays its debt, the rest goes to ``prepaid``; a
   postpaid account's top-up goes to ``Book.CREDIT`` (the bill run applies it
   to the next invoice).

**Batch and purity.** :func:`charge_batch` copies each touched account once
and works on the copies; the handed-in states are never mutated. It emits one
compact :class:`Charge` row per record; the row derives its ledger entry and
idempotency mark on demand (``Effects.entries`` / ``Effects.marks``), so the
hot path allocates one tuple per record.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, Protocol

from billing.accounts import (
    CHARGED_RESULTS,
    AccountState,
    AccountStatus,
    Effects,
    Outcome,
    PaymentMode,
    Result,
    conflict_result,
)
from billing.bundles import Bundle, Tariff
from billing.cycle import Cycle, cycle_containing
from billing.idempotency import Conflict, Mark, Replay, check, mark
from billing.ledger import Book, Entry, EntryKind, Posting, account_key, op_key
from billing.notifications import Notification, NotificationKind, make_notification
from billing.rated import RatedRecord
from billing.reminders import (
    ReminderConfig,
    check_bundle,
    check_credit,
    check_debt,
    check_low_balance,
)
from billing.sponsor import SponsoredUsage, Sponsorship, resolve_sponsor

__all__ = [
    "CASH",
    "Calendar",
    "Charge",
    "ChargingConfig",
    "MarkStore",
    "OfflinePolicy",
    "TopUp",
    "billing_usage",
    "charge",
    "charge_batch",
    "charge_fields",
    "revenue_key",
    "split_money",
    "top_up",
]

CASH = op_key("cash")
_REVENUE: dict[str, str] = {}


def revenue_key(service: str) -> str:
    """``op/revenue/<service>``, interned."""
    key = _REVENUE.get(service)
    if key is None:
        key = _REVENUE[service] = op_key(f"revenue/{service}")
    return key


class OfflinePolicy(enum.StrEnum):
    """What an offline prepaid record does when the balance does not cover it."""

    DEBT = "debt"  # post the uncovered part to Book.DEBT (default: the usage happened)
    REJECT = "reject"  # answer REJECTED_OFFLINE; the caller queues the record


@dataclass(frozen=True, slots=True, kw_only=True)
class ChargingConfig:
    """Charging policy. ``tz`` names the operator time zone of the monthly cycles."""

    tz: str = "UTC"
    offline_policy: OfflinePolicy = OfflinePolicy.DEBT
    block_over_limit: bool = False
    history_max: int = 50
    reminders: ReminderConfig = field(default_factory=ReminderConfig)


class Calendar:
    """Cycle lookup with a small memo: ``cycle_containing`` costs microseconds."""

    __slots__ = ("_recent", "tz")

    def __init__(self, tz: str) -> None:
        self.tz = tz
        self._recent: list[Cycle] = []

    def cycle_of(self, at_s: int) -> Cycle:
        for cycle in self._recent:
            if cycle.start_s <= at_s < cycle.end_s:
                return cycle
        found = cycle_containing(at_s, self.tz)
        self._recent.insert(0, found)
        del self._recent[4:]
        return found


_CALENDARS: dict[str, Calendar] = {}


def calendar_for(tz: str) -> Calendar:
    cal = _CALENDARS.get(tz)
    if cal is None:
        cal = _CALENDARS[tz] = Calendar(tz)
    return cal


class MarkStore(Protocol):
    """Where idempotency marks are looked up (a dict, or the shard's RocksDB reader)."""

    def get(self, key: str, /) -> Mark[Any] | None: ...


class Charge(NamedTuple):
    """One charged record: the per-record answer, the usage-history line, and the mark result.

    ``amount`` is the money charged after bundles; ``prepaid``/``unbilled``/
    ``debt`` are its parts by book (magnitudes). ``sponsored_by`` is set on a
    subscriber's zero-money line of sponsored usage, ``sponsor_of`` (the
    subscriber) on the sponsor's money line. ``rated`` is a transient
    reference used to derive the mark; it is not part of the stored result.
    """

    record_id: str
    ref: str
    account_id: str
    result: Result
    cycle_id: str
    service: str
    usage_class: str
    units: int
    bundle_units: int
    amount: int
    prepaid: int
    unbilled: int
    debt: int
    currency: str
    at_s: int
    sponsored_by: str | None = None
    sponsor_of: str | None = None
    rated: RatedRecord | None = None

    @property
    def is_usage_line(self) -> bool:
        return self.result in CHARGED_RESULTS or self.result is Result.SPONSORED

    def to_entry(self) -> Entry | None:
        """The ledger entry of this charge (``None`` when no money moved)."""
        if self.amount == 0 or self.result not in CHARGED_RESULTS:
            return None
        postings = [Posting(revenue_key(self.service), self.amount)]
        for book, part in (
            (Book.PREPAID, self.prepaid),
            (Book.UNBILLED, self.unbilled),
            (Book.DEBT, self.debt),
        ):
            if part:
                postings.append(Posting(account_key(self.account_id, book), -part))
        memo = self.usage_class if self.sponsor_of is None else f"sponsor of {self.sponsor_of}"
        return Entry(
            ref=self.ref,
            kind=EntryKind.CHARGE,
            currency=self.currency,
            at_s=self.at_s,
            postings=tuple(postings),
            cycle_id=self.cycle_id,
            memo=memo,
        )

    def to_mark(self) -> tuple[str, Mark[Charge]] | None:
        """``(key, mark)`` to store, for charged and sponsored rows only."""
        if self.rated is None or not self.is_usage_line:
            return None
        key = self.record_id if self.sponsor_of is None else self.ref
        return key, Mark(charge_fields(self.account_id, self.rated), self._replace(rated=None))


def charge_fields(account_id: str, rated: RatedRecord) -> tuple[tuple[str, object], ...]:
    """The idempotency fields of a record charged to ``account_id`` (sorted by name)."""
    return (
        ("account", account_id),
        ("amount", rated.amount),
        ("content", rated.record.content_key()),
    )


def split_money(
    state: AccountState, amount: int, offline: bool, config: ChargingConfig
) -> tuple[Result, int, int, int]:
    """Decide how ``amount`` is paid: ``(result, prepaid part, unbilled part, debt part)``.

    A refusal result comes with zero parts. Pure: reads ``state`` only.
    """
    mode = state.account.payment_mode
    if mode is PaymentMode.PREPAID:
        have = state.prepaid
        if amount <= have:
            return Result.CHARGED, amount, 0, 0
        if not offline:
            return Result.INSUFFICIENT_BALANCE, 0, 0, 0
        if config.offline_policy is OfflinePolicy.REJECT:
            return Result.REJECTED_OFFLINE, 0, 0, 0
        have = max(have, 0)
        return Result.CHARGED_TO_DEBT, have, 0, amount - have
    prepaid_part = 0
    if mode is PaymentMode.HYBRID:
        prepaid_part = min(max(state.prepaid, 0), amount)
    rest = amount - prepaid_part
    if rest == 0:
        return Result.CHARGED, prepaid_part, 0, 0
    available = state.credit_available()
    if available is None or rest <= available:
        return Result.CHARGED, prepaid_part, rest, 0
    if not offline:
        if mode is PaymentMode.HYBRID:
            return Result.INSUFFICIENT_BALANCE, 0, 0, 0
        return Result.CREDIT_LIMIT_EXCEEDED, 0, 0, 0
    return Result.CHARGED_OVER_LIMIT, prepaid_part, rest, 0


def post_money(
    state: AccountState,
    result: Result,
    prepaid: int,
    unbilled: int,
    debt: int,
    cycle_id: str,
    at_s: int,
    config: ChargingConfig,
    notes: list[Notification],
) -> None:
    """Apply a money split to ``state`` (a working copy) and evaluate its reminders."""
    reminders = config.reminders
    if prepaid:
        state.prepaid -= prepaid
        check_low_balance(state, reminders, cycle_id, at_s, notes)
    if unbilled:
        state.unbilled -= unbilled
        if state.account.credit_limit is not None:
            check_credit(state, reminders, cycle_id, at_s, notes)
    if debt:
        state.debt -= debt
        check_debt(state, cycle_id, at_s, notes)
    if (
        result is Result.CHARGED_OVER_LIMIT
        and config.block_over_limit
        and state.account.status is AccountStatus.ACTIVE
    ):
        state.account = replace(state.account, status=AccountStatus.BLOCKED)
        notes.append(
            make_notification(
                NotificationKind.ACCOUNT_BLOCKED,
                account_id=state.account.account_id,
                at_s=at_s,
                cycle_id=cycle_id,
                subject="credit_limit",
                data={"owed": state.owed()},
            )
        )


def add_usage(
    state: AccountState,
    row: Charge,
    history_max: int,
) -> None:
    """Count ``row`` in the usage totals and the bounded usage history."""
    key = (row.cycle_id, row.usage_class)
    old = state.usage.get(key)
    if old is None:
        state.usage[key] = (1, row.units, row.bundle_units, row.amount, row.unbilled)
    else:
        state.usage[key] = (
            old[0] + 1,
            old[1] + row.units,
            old[2] + row.bundle_units,
            old[3] + row.amount,
            old[4] + row.unbilled,
        )
    history = state.history
    history.append(row)
    if len(history) > 2 * history_max:
        del history[:-history_max]


def billing_usage(state: AccountState) -> dict[str, dict[str, tuple[int, int, int, int, int]]]:
    """Usage totals grouped by cycle, then usage class (for the bill run's ``BillingAccount``)."""
    grouped: dict[str, dict[str, tuple[int, int, int, int, int]]] = {}
    for (cycle_id, usage_class), totals in state.usage.items():
        grouped.setdefault(cycle_id, {})[usage_class] = totals
    return grouped


class _Batch:
    """The working state of one charging call: copies of touched accounts and the effects."""

    __slots__ = (
        "accounts",
        "bundle_memo",
        "calendar",
        "changed",
        "config",
        "cycle",
        "forwards",
        "marks",
        "notes",
        "rows",
        "seen",
        "sponsored_classes",
        "tariff",
    )

    def __init__(
        self,
        accounts: Mapping[str, AccountState],
        marks: MarkStore,
        tariff: Tariff,
        config: ChargingConfig,
    ) -> None:
        self.accounts = accounts
        self.marks = marks
        self.tariff = tariff
        self.config = config
        self.calendar = calendar_for(config.tz)
        self.cycle = self.calendar.cycle_of(0)
        self.bundle_memo: dict[tuple[str, str, str], tuple[Bundle, ...]] = {}
        self.sponsored_classes: dict[str, bool] = {}
        self.changed: dict[str, AccountState] = {}
        self.rows: list[Charge] = []
        self.notes: list[Notification] = []
        self.forwards: list[SponsoredUsage] = []
        self.seen: dict[str, Charge] = {}

    def state(self, account_id: str) -> AccountState | None:
        found = self.changed.get(account_id)
        if found is None:
            original = self.accounts.get(account_id)
            if original is None:
                return None
            found = self.changed[account_id] = original.copy()
        return found

    def refuse(
        self, rated: RatedRecord, account_id: str, result: Result, at_s: int, ref: str = ""
    ) -> Charge:
        record = rated.record
        return Charge(
            record.record_id,
            ref or "usage:" + record.record_id,
            account_id,
            result,
            "",
            record.service.value,
            rated.usage_class,
            rated.units,
            0,
            0,
            0,
            0,
            0,
            rated.currency,
            at_s,
        )

    def previous(self, key: str, account_id: str, rated: RatedRecord) -> Charge | Result | None:
        """A stored charge under ``key`` (a replay), a conflict result, or ``None`` (fresh)."""
        stored = self.seen.get(key)
        existing: Mark[Any] | None
        if stored is not None and stored.rated is not None:
            existing = Mark(charge_fields(stored.account_id, stored.rated), stored)
        else:
            existing = self.marks.get(key)
            if existing is None:
                return None
        decision = check(existing, dict(charge_fields(account_id, rated)))
        if isinstance(decision, Replay):
            found: Charge = decision.result
            return found._replace(result=Result.DUPLICATE, rated=None)
        if isinstance(decision, Conflict):
            return conflict_result(decision)
        return None  # pragma: no cover - check returns one of three

    def charge(self, rated: RatedRecord, account_id: str, at_s: int, offline: bool) -> Charge:
        """Charge one record to ``account_id`` (the subscriber)."""
        record_id = rated.record.record_id
        state = self.state(account_id)
        if state is None:
            return self.refuse(rated, account_id, Result.UNKNOWN_ACCOUNT, at_s)
        account = state.account
        if record_id in self.seen or self.marks.get(record_id) is not None:
            previous = self.previous(record_id, account_id, rated)
            if isinstance(previous, Charge):
                return previous
            if isinstance(previous, Result):
                return self.refuse(rated, account_id, previous, at_s)
        if account.status is not AccountStatus.ACTIVE:
            if account.status is AccountStatus.CLOSED:
                return self.refuse(rated, account_id, Result.ACCOUNT_CLOSED, at_s)
            if not offline:
                return self.refuse(rated, account_id, Result.ACCOUNT_BLOCKED, at_s)
        if rated.currency != account.currency:
            return self.refuse(rated, account_id, Result.CURRENCY_MISMATCH, at_s)
        t_s = rated.record.record_opening_time_s
        cycle = self.cycle
        if not cycle.start_s <= t_s < cycle.end_s:
            cycle = self.cycle = self.calendar.cycle_of(t_s)
        cycle_id = cycle.cycle_id
        usage_class = rated.usage_class
        sponsored = self.sponsored_classes.get(usage_class)
        if sponsored is None:
            sponsored = self.sponsored_classes[usage_class] = (
                self.tariff.sponsor_for(usage_class) is not None
            )
        if account.sponsor_rules or sponsored:
            sponsorship = resolve_sponsor(account, rated, self.tariff)
            if sponsorship is not None:
                return self.sponsored(state, rated, sponsorship, cycle_id, at_s)
        tariff = self.tariff
        units = rated.units
        covered = 0
        takes: list[tuple[str, int, int]] = []
        bundle_key = (rated.plan_id, rated.plan_version, usage_class)
        bundles = self.bundle_memo.get(bundle_key)
        if bundles is None:
            bundles = self.bundle_memo[bundle_key] = tariff.bundles_for(*bundle_key)
        if bundles and units:
            left = units
            for bundle in bundles:
                free = state.bundle_remaining(cycle_id, bundle.bundle_id, bundle.units)
                if free > 0:
                    take = free if free < left else left
                    takes.append((bundle.bundle_id, take, bundle.units))
                    left -= take
                    if not left:
                        break
            covered = units - left
        amount = rated.amount if not covered else tariff.reprice(rated, units - covered)
        if amount:
            result, p, u, d = split_money(state, amount, offline, self.config)
            if result not in CHARGED_RESULTS:
                return self.refuse(rated, account_id, result, at_s)
        else:
            result, p, u, d = Result.CHARGED, 0, 0, 0
        row = Charge(
            record_id,
            "usage:" + record_id,
            account_id,
            result,
            cycle_id,
            rated.record.service.value,
            rated.usage_class,
            units,
            covered,
            amount,
            p,
            u,
            d,
            rated.currency,
            at_s,
            None,
            None,
            rated,
        )
        notes = self.notes
        if takes:
            used = state.bundle_used
            reminders = self.config.reminders
            for bundle_id, take, allowance in takes:
                key = (cycle_id, bundle_id)
                used[key] = used.get(key, 0) + take
                check_bundle(state, reminders, cycle_id, bundle_id, allowance, at_s, notes)
        if amount:
            post_money(state, result, p, u, d, cycle_id, at_s, self.config, notes)
        add_usage(state, row, self.config.history_max)
        self.seen[record_id] = row
        return row

    def sponsored(
        self,
        state: AccountState,
        rated: RatedRecord,
        sponsorship: Sponsorship,
        cycle_id: str,
        at_s: int,
    ) -> Charge:
        """The subscriber's zero-money line; the sponsor's charge is applied or forwarded."""
        record_id = rated.record.record_id
        row = Charge(
            record_id,
            "usage:" + record_id,
            state.account.account_id,
            Result.SPONSORED,
            cycle_id,
            rated.record.service.value,
            rated.usage_class,
            rated.units,
            0,
            0,
            0,
            0,
            0,
            rated.currency,
            at_s,
            sponsorship.sponsor_account_id,
            None,
            rated,
        )
        add_usage(state, row, self.config.history_max)
        self.seen[record_id] = row
        usage = SponsoredUsage(
            rated=rated,
            subscriber_account_id=state.account.account_id,
            sponsor_account_id=sponsorship.sponsor_account_id,
            amount=sponsorship.amount,
            cycle_id=cycle_id,
        )
        if sponsorship.sponsor_account_id in self.accounts:
            sponsor_row = self.charge_sponsor(usage, at_s)
            if sponsor_row.rated is not None:
                self.rows.append(sponsor_row)
        else:
            self.forwards.append(usage)
        return row

    def charge_sponsor(self, usage: SponsoredUsage, at_s: int) -> Charge:
        """Charge the sponsor's money line of a sponsored record (key ``sponsor:<record_id>``)."""
        rated = usage.rated
        key = "sponsor:" + rated.record.record_id
        account_id = usage.sponsor_account_id
        state = self.state(account_id)
        if state is None:
            return self.refuse(rated, account_id, Result.UNKNOWN_ACCOUNT, at_s, key)
        if key in self.seen or self.marks.get(key) is not None:
            previous = self.previous(key, account_id, rated)
            if isinstance(previous, Charge):
                return previous
            if isinstance(previous, Result):
                return self.refuse(rated, account_id, previous, at_s, key)
        if state.account.status is AccountStatus.CLOSED:
            return self.refuse(rated, account_id, Result.ACCOUNT_CLOSED, at_s, key)
        if rated.currency != state.account.currency:
            return self.refuse(rated, account_id, Result.CURRENCY_MISMATCH, at_s, key)
        amount = usage.amount
        if amount:
            result, p, u, d = split_money(state, amount, True, self.config)
            if result not in CHARGED_RESULTS:
                return self.refuse(rated, account_id, result, at_s, key)
        else:
            result, p, u, d = Result.CHARGED, 0, 0, 0
        row = Charge(
            rated.record.record_id,
            key,
            account_id,
            result,
            usage.cycle_id,
            rated.record.service.value,
            rated.usage_class,
            rated.units,
            0,
            amount,
            p,
            u,
            d,
            rated.currency,
            at_s,
            None,
            usage.subscriber_account_id,
            rated,
        )
        if amount:
            post_money(state, result, p, u, d, usage.cycle_id, at_s, self.config, self.notes)
        add_usage(state, row, self.config.history_max)
        self.seen[key] = row
        return row

    def outcome(self, answer: tuple[Charge, ...]) -> Outcome[tuple[Charge, ...]]:
        return Outcome(
            result=Result.CHARGED,
            receipt=answer,
            effects=Effects(
                accounts=tuple(self.changed.values()),
                charges=tuple(self.rows),
                notifications=tuple(self.notes),
                forwards=tuple(self.forwards),
            ),
        )


def charge_batch(
    records: Iterable[RatedRecord],
    *,
    accounts: Mapping[str, AccountState],
    directory: Mapping[str, str],
    marks: MarkStore,
    tariff: Tariff,
    config: ChargingConfig,
    at_s: int,
    offline: bool = True,
) -> Outcome[tuple[Charge, ...]]:
    """Charge many rated records; one :class:`Charge` per record, in order, in ``receipt``.

    ``directory`` maps a served msisdn to its account id; ``marks`` holds the
    stored marks of (at least) the batch's record ids. The outcome's result is
    ``CHARGED`` (the batch was applied); each row carries its own result.
    Records repeated inside the batch are duplicates of their first occurrence.
    """
    batch = _Batch(accounts, marks, tariff, config)
    answer: list[Charge] = []
    rows = batch.rows
    charge_one = batch.charge
    get_account = directory.get
    for rated in records:
        account_id = get_account(rated.record.served_msisdn)
        if account_id is None:
            row = batch.refuse(rated, "", Result.UNKNOWN_ACCOUNT, at_s)
        else:
            row = charge_one(rated, account_id, at_s, offline)
        answer.append(row)
        if row.rated is not None:
            rows.append(row)
    return batch.outcome(tuple(answer))


def charge(
    state: AccountState,
    rated: RatedRecord,
    *,
    marks: MarkStore,
    tariff: Tariff,
    config: ChargingConfig,
    at_s: int,
    offline: bool = True,
    others: Mapping[str, AccountState] | None = None,
) -> Outcome[Charge]:
    """Charge one rated record to ``state``'s account; ``offline=False`` for online events.

    ``others`` are accounts of the same shard a sponsor may be among.
    """
    accounts = {state.account.account_id: state, **(others or {})}
    batch = _Batch(accounts, marks, tariff, config)
    row = batch.charge(rated, state.account.account_id, at_s, offline)
    if row.rated is not None:
        batch.rows.append(row)
    if row.rated is None:
        return Outcome(result=row.result, receipt=row)  # refused or replayed: nothing changed
    outcome = batch.outcome((row,))
    return Outcome(result=row.result, receipt=row, effects=outcome.effects)


@dataclass(frozen=True, slots=True, kw_only=True)
class TopUp:
    """A top-up as applied: where the money went."""

    request_id: str
    account_id: str
    amount: int
    currency: str
    at_s: int
    to_debt: int
    to_prepaid: int
    to_credit: int


def top_up(
    *,
    request_id: str,
    state: AccountState,
    amount: int,
    currency: str,
    at_s: int,
    existing: Mark[TopUp] | None,
    config: ChargingConfig,
) -> Outcome[TopUp]:
    """Pay ``amount`` into the account (rule 6 of the module docstring)."""
    fields = {"account": state.account.account_id, "amount": amount, "currency": currency}
    decision = check(existing, fields)
    if isinstance(decision, Replay):
        return Outcome(result=Result.DUPLICATE, receipt=decision.result)
    if isinstance(decision, Conflict):
        return Outcome(result=conflict_result(decision))
    if state.account.status is AccountStatus.CLOSED:
        return Outcome(result=Result.ACCOUNT_CLOSED)
    if amount <= 0:
        return Outcome(result=Result.INVALID_ARGUMENT)
    if currency != state.account.currency:
        return Outcome(result=Result.CURRENCY_MISMATCH)
    new = state.copy()
    account_id = new.account.account_id
    to_debt = to_prepaid = to_credit = 0
    if new.account.payment_mode is PaymentMode.POSTPAID:
        to_credit = amount
    else:
        to_debt = min(amount, -new.debt)
        to_prepaid = amount - to_debt
    postings = [Posting(CASH, -amount)]
    for book, part in ((Book.DEBT, to_debt), (Book.PREPAID, to_prepaid), (Book.CREDIT, to_credit)):
        if part:
            postings.append(Posting(account_key(account_id, book), part))
            new.add(book, part)
    cycle_id = calendar_for(config.tz).cycle_of(at_s).cycle_id
    entry = Entry(
        ref=f"topup:{request_id}",
        kind=EntryKind.TOPUP,
        currency=currency,
        at_s=at_s,
        postings=tuple(postings),
        cycle_id=cycle_id,
    )
    notes: list[Notification] = []
    check_low_balance(new, config.reminders, cycle_id, at_s, notes)
    check_debt(new, cycle_id, at_s, notes)
    check_credit(new, config.reminders, cycle_id, at_s, notes)
    receipt = TopUp(
        request_id=request_id,
        account_id=account_id,
        amount=amount,
        currency=currency,
        at_s=at_s,
        to_debt=to_debt,
        to_prepaid=to_prepaid,
        to_credit=to_credit,
    )
    return Outcome(
        result=Result.TOPPED_UP,
        receipt=receipt,
        effects=Effects(
            accounts=(new,),
            explicit_entries=(entry,),
            explicit_marks=((request_id, mark(fields, receipt)),),
            notifications=tuple(notes),
        ),
    )
