"""Accounts: the profile and the balance state of one account, and their profile operations.

**Account** (frozen) is the profile: id, payment mode, currency, credit
limit, status, plan subscriptions with history, msisdns and sponsor rules.

**AccountState** is the whole charging state of one account: the profile, the
balances of its ledger books, bundle consumption per cycle, usage totals per
cycle and usage class, open online reservations, reminder state and a bounded
usage history. Its balances are a *view* of the ledger: for every book,
``state.balance(book) == replay(entries)[account_key(id, book)]`` (tests hold
every operation to that).

**Purity.** ``AccountState`` is a mutable object for speed, but operations
never mutate a state they were handed, nor any container it holds: they work
on a :meth:`AccountState.copy` (``charge_batch`` makes one working copy of
each touched account per batch, sharing the containers charging never writes)
and hand the new states back in :attr:`Effects.accounts`. A caller that fails
to persist the effects simply keeps the old states.

**Outcome / Effects / Result** — the uniform answer of every operation — live
in :mod:`billing.outcome` and are re-exported here.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from billing.history import UsageHistory
from billing.idempotency import Mark, mark
from billing.invariant import invariant
from billing.ledger import Book, Entry, account_key, is_valid_account_id
from billing.money import is_currency_code
from billing.outcome import (
    CHARGED_RESULTS,
    NO_EFFECTS,
    Effects,
    Outcome,
    Result,
    conflict_result,
    replayed,
)
from billing.tariffs.model import PaymentMode

if TYPE_CHECKING:
    from billing.charging.rows import Charge
    from billing.ocs.reservations import Reservation

__all__ = [
    "CHARGED_RESULTS",
    "NO_EFFECTS",
    "Account",
    "AccountState",
    "AccountStatus",
    "Effects",
    "Outcome",
    "PaymentMode",
    "Result",
    "SponsorRule",
    "Subscription",
    "conflict_result",
    "create_account",
    "move_number",
    "set_credit_limit",
]


class AccountStatus(enum.StrEnum):
    """Life of an account. Blocked accounts are refused online; closed ones refuse everything."""

    ACTIVE = "active"
    BLOCKED = "blocked"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscription:
    """A plan subscribed in ``[start_s, end_s)``; ``end_s`` ``None`` is open-ended."""

    plan_id: str
    start_s: int
    end_s: int | None = None

    def active_at(self, t_s: int) -> bool:
        return self.start_s <= t_s and (self.end_s is None or t_s < self.end_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class SponsorRule:
    """A third party pays for part of this account's usage (backward billing).

    The rule covers a record when every criterion set matches: ``usage_classes``
    (patterns like ``"data.*"``), ``rating_group``, ``content_provider``, and
    ``msisdn`` (one subscriber number of the account; ``None``: all of them).
    It is valid for records that start in ``[start_s, end_s)``. The sponsor is
    billed ``price_key``'s price for the units when set, else the record's rated
    amount. ``rule_id`` names the rule within its account (to end it). See
    ``billing.sponsor`` and ``billing.sponsor_rules``.
    """

    sponsor_account_id: str
    usage_classes: tuple[str, ...] = ()
    rating_group: int | None = None
    content_provider: str | None = None
    price_key: str | None = None
    start_s: int = 0
    end_s: int | None = None
    rule_id: str = ""
    msisdn: str | None = None

    def valid_at(self, t_s: int) -> bool:
        return self.start_s <= t_s and (self.end_s is None or t_s < self.end_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    """The profile of one account. ``credit_limit`` ``None`` means unlimited (postpaid)."""

    account_id: str
    currency: str
    payment_mode: PaymentMode
    credit_limit: int | None = None
    status: AccountStatus = AccountStatus.ACTIVE
    subscriptions: tuple[Subscription, ...] = ()
    msisdns: tuple[str, ...] = ()
    sponsor_rules: tuple[SponsorRule, ...] = ()
    created_at_s: int = 0

    def __post_init__(self) -> None:
        invariant(is_valid_account_id(self.account_id), f"bad account id {self.account_id!r}")
        invariant(is_currency_code(self.currency), "currency: ISO 4217 code")
        invariant(self.credit_limit is None or self.credit_limit >= 0, "credit limit >= 0")

    def plan_at(self, t_s: int) -> str | None:
        """The plan of the latest subscription active at ``t_s``."""
        found = None
        for subscription in self.subscriptions:
            if subscription.active_at(t_s):
                found = subscription.plan_id
        return found


class AccountState:
    """The charging state of one account (see the module docstring for the rules of use).

    ``bundle_used`` / ``bundle_held`` map ``(cycle_id, bundle_id)`` to units
    consumed / held by open reservations. ``usage`` maps ``(cycle_id,
    usage_class)`` to ``(count, units, bundle_units, amount, unbilled)``: ``amount``
    is all money charged, ``unbilled`` the part posted to ``Book.UNBILLED`` and
    not yet on an interim invoice (what the bill run invoices). ``reminders``
    holds the keys of thresholds currently crossed and ``crossings`` how often
    each was crossed (it numbers the notification ids). ``history`` keeps the
    last ``history_max`` usage lines (``Charge`` rows), newest last: a read-only
    sequence, extended with ``billing.history.appended``.
    """

    __slots__ = (
        "account",
        "bundle_held",
        "bundle_used",
        "credit",
        "crossings",
        "debt",
        "history",
        "prepaid",
        "receivable",
        "reminder_cycle",
        "reminders",
        "reservations",
        "reserved",
        "unbilled",
        "usage",
    )

    def __init__(self, account: Account) -> None:
        self.account = account
        self.prepaid = 0
        self.reserved = 0
        self.unbilled = 0
        self.receivable = 0
        self.credit = 0
        self.debt = 0
        self.bundle_used: dict[tuple[str, str], int] = {}
        self.bundle_held: dict[tuple[str, str], int] = {}
        self.usage: dict[tuple[str, str], tuple[int, int, int, int, int]] = {}
        self.reservations: dict[str, Reservation] = {}
        self.reminders: set[str] = set()
        self.crossings: dict[str, int] = {}
        self.reminder_cycle: str | None = None
        self.history: Sequence[Charge] = []

    @property
    def account_id(self) -> str:
        return self.account.account_id

    def copy(self) -> AccountState:
        """An independent copy (containers copied, immutable values shared)."""
        new = AccountState.__new__(AccountState)
        new.account = self.account
        new.prepaid = self.prepaid
        new.reserved = self.reserved
        new.unbilled = self.unbilled
        new.receivable = self.receivable
        new.credit = self.credit
        new.debt = self.debt
        new.bundle_used = dict(self.bundle_used)
        new.bundle_held = dict(self.bundle_held)
        new.usage = dict(self.usage)
        new.reservations = dict(self.reservations)
        new.reminders = set(self.reminders)
        new.crossings = dict(self.crossings)
        new.reminder_cycle = self.reminder_cycle
        # A UsageHistory is an immutable view: shared, not copied (billing.history).
        history = self.history
        new.history = history if type(history) is UsageHistory else list(history)
        return new

    def balance(self, book: Book) -> int:
        value: int = getattr(self, book.value)
        return value

    def add(self, book: Book, amount: int) -> None:
        setattr(self, book.value, getattr(self, book.value) + amount)

    def balances(self) -> dict[Book, int]:
        return {book: self.balance(book) for book in Book}

    def ledger_view(self) -> dict[str, int]:
        """Non-zero books keyed like the ledger (``"<id>/<book>"``), to compare with ``replay``."""
        return {
            account_key(self.account.account_id, book): amount
            for book, amount in self.balances().items()
            if amount
        }

    def apply_entry(self, entry: Entry) -> None:
        """Add ``entry``'s postings to this account's books (postings of others are skipped)."""
        prefix = self.account.account_id + "/"
        for posting in entry.postings:
            if posting.account.startswith(prefix):
                self.add(Book(posting.account[len(prefix) :]), posting.amount)

    @property
    def credit_hold(self) -> int:
        """Credit held by open reservations of the postpaid part (no money moves for it)."""
        return sum(r.credit_hold for r in self.reservations.values() if r.is_open)

    def owed(self) -> int:
        """What the account owes net of its credit: the credit-limit exposure (may be < 0)."""
        return -(self.unbilled + self.receivable + self.debt) - self.credit

    def credit_available(self) -> int | None:
        """How much more postpaid usage fits under the limit (``None``: unlimited)."""
        limit = self.account.credit_limit
        if limit is None:
            return None
        return max(limit - self.owed() - self.credit_hold, 0)

    def usage_of(self, cycle_id: str) -> dict[str, tuple[int, int, int, int, int]]:
        """Usage of one cycle by class: ``(count, units, bundle_units, amount, unbilled)``."""
        return {cls: totals for (cyc, cls), totals in self.usage.items() if cyc == cycle_id}

    def bundle_remaining(self, cycle_id: str, bundle_id: str, units: int) -> int:
        key = (cycle_id, bundle_id)
        return units - self.bundle_used.get(key, 0) - self.bundle_held.get(key, 0)

    def __repr__(self) -> str:
        return (
            f"AccountState({self.account.account_id}, {self.account.payment_mode.value}, "
            f"prepaid={self.prepaid}, reserved={self.reserved}, unbilled={self.unbilled}, "
            f"receivable={self.receivable}, credit={self.credit}, debt={self.debt})"
        )


def _account_fields(account: Account) -> dict[str, object]:
    return {
        "account": account.account_id,
        "currency": account.currency,
        "mode": account.payment_mode.value,
        "content": (account.credit_limit, account.subscriptions, account.msisdns),
    }


def create_account(
    *,
    request_id: str,
    account: Account,
    current: AccountState | None,
    existing: Mark[Account] | None,
) -> Outcome[Account]:
    """Create ``account`` (idempotent by ``request_id``; the id must be new).

    ``current`` is the state stored under ``account.account_id``, if any: an
    account id taken by another request is ``ACCOUNT_EXISTS``.
    """
    fields = _account_fields(account)
    if (early := replayed(existing, fields)) is not None:
        return early
    if current is not None:
        return Outcome(result=Result.ACCOUNT_EXISTS, receipt=current.account)
    state = AccountState(account)
    return Outcome(
        result=Result.CREATED,
        receipt=account,
        effects=Effects(accounts=(state,), explicit_marks=((request_id, mark(fields, account)),)),
    )


def _update(
    request_id: str,
    state: AccountState,
    fields: Mapping[str, object],
    existing: Mark[Account] | None,
    new_account: Account,
) -> Outcome[Account]:
    if (early := replayed(existing, fields)) is not None:
        return early
    new = state.copy()
    new.account = new_account
    return Outcome(
        result=Result.UPDATED,
        receipt=new_account,
        effects=Effects(accounts=(new,), explicit_marks=((request_id, mark(fields, new_account)),)),
    )


def set_credit_limit(
    *,
    request_id: str,
    state: AccountState,
    credit_limit: int | None,
    existing: Mark[Account] | None,
) -> Outcome[Account]:
    """Change the credit limit (idempotent by ``request_id``). Nothing is re-evaluated now:
    the next charge sees the new limit."""
    if credit_limit is not None and credit_limit < 0:
        return Outcome(result=Result.INVALID_ARGUMENT)
    fields = {"account": state.account_id, "amount": credit_limit}
    return _update(
        request_id, state, fields, existing, replace(state.account, credit_limit=credit_limit)
    )


def move_number(
    *,
    request_id: str,
    state: AccountState,
    msisdn: str,
    gained: bool,
    existing: Mark[Account] | None,
) -> Outcome[Account]:
    """Add ``msisdn`` to the account's numbers (``gained``) or take it off, for a number
    moved between accounts (idempotent by ``request_id``; the subscriber directory is the
    authority on who holds a number: this keeps the account's own list in step)."""
    fields = {"account": state.account_id, "content": ("+" if gained else "-") + msisdn}
    numbers = tuple(m for m in state.account.msisdns if m != msisdn)
    if gained:
        numbers = (*numbers, msisdn)
    return _update(request_id, state, fields, existing, replace(state.account, msisdns=numbers))
