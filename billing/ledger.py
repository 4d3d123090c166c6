"""The double-entry ledger: every change of money is an immutable, balanced entry.

A ledger *account* is a string key. Customer accounts have several books,
``"<account_id>/<book>"``; the operator's own accounts are ``"op/<name>"``.
Every :class:`Entry` holds postings that sum to zero, so the sum over all
ledger accounts — customers and operator together — is always zero: money is
never created or destroyed, only moved. Account state (balances) is a pure
fold over entries: :func:`replay`.

Sign convention: a positive balance is what the operator owes the holder; a
negative balance is what the holder owes. A prepaid balance of 10 EUR is
``+10``; unbilled postpaid usage of 3 EUR is ``-3``; ``op/cash`` goes negative
as customers pay in (cash the operator holds against its liabilities), and
``op/revenue/<service>`` grows positive as usage is charged.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from billing.invariant import invariant

__all__ = [
    "Book",
    "Entry",
    "EntryKind",
    "Ledger",
    "Posting",
    "account_key",
    "is_valid_account_id",
    "op_key",
    "replay",
]

_ACCOUNT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


class Book(enum.StrEnum):
    """The books of one customer account."""

    PREPAID = "prepaid"  # prepaid money balance (>= 0 except by debt policy)
    RESERVED = "reserved"  # prepaid money held by open online-charging reservations
    UNBILLED = "unbilled"  # postpaid charges of the open cycle, not yet invoiced (<= 0)
    RECEIVABLE = "receivable"  # invoiced and not yet paid (<= 0)
    CREDIT = "credit"  # credit from overpayments, refunds and mode switches (>= 0)
    DEBT = "debt"  # offline usage a prepaid balance could not cover (<= 0)


class EntryKind(enum.StrEnum):
    """What an entry records; the reason column of every statement."""

    CHARGE = "charge"
    TOPUP = "topup"
    RESERVE = "reserve"
    RELEASE = "release"
    SETTLE = "settle"
    REFUND = "refund"
    BILL = "bill"
    RECURRING = "recurring"
    ONE_OFF = "one_off"
    DISCOUNT = "discount"
    PAYMENT = "payment"
    PAYMENT_REVERSAL = "payment_reversal"
    MODE_SWITCH = "mode_switch"
    CONTENT_SHARE = "content_share"
    ADJUSTMENT = "adjustment"


def is_valid_account_id(account_id: str) -> bool:
    """Account ids are 1–64 characters of letters, digits and ``_.:-``; no ``/``."""
    return bool(_ACCOUNT_ID.match(account_id))


def account_key(account_id: str, book: Book) -> str:
    """The ledger key of one book of a customer account."""
    return f"{account_id}/{book.value}"


def op_key(name: str) -> str:
    """The ledger key of an operator account, e.g. ``op_key("revenue/voice")``."""
    return f"op/{name}"


@dataclass(frozen=True, slots=True)
class Posting:
    """One side of an entry: ``amount`` micro-units credited to ``account``."""

    account: str
    amount: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """A balanced, immutable ledger entry.

    ``ref`` is the id of the operation that made it (record id, request id,
    invoice id...): the idempotency key, so replaying an operation can find
    its entry. ``cycle_id`` ties usage and fees to a billing cycle so an
    invoice can be reconciled with the ledger to the minor unit.
    """

    ref: str
    kind: EntryKind
    currency: str
    at_s: int
    postings: tuple[Posting, ...]
    cycle_id: str | None = None
    memo: str = ""

    def __post_init__(self) -> None:
        invariant(len(self.postings) >= 2, f"entry {self.ref}: needs two postings or more")
        invariant(
            sum(p.amount for p in self.postings) == 0,
            f"entry {self.ref}: postings sum to {sum(p.amount for p in self.postings)}, not 0",
        )

    def amount_for(self, account: str) -> int:
        """The net amount this entry posts to ``account``."""
        return sum(p.amount for p in self.postings if p.account == account)


def replay(entries: Iterable[Entry]) -> dict[str, int]:
    """Balances of every ledger account after applying ``entries`` in order."""
    balances: dict[str, int] = {}
    for entry in entries:
        for posting in entry.postings:
            balances[posting.account] = balances.get(posting.account, 0) + posting.amount
    return balances


class Ledger:
    """An append-only list of entries with running balances.

    This in-memory ledger is the reference the actors mirror in RocksDB: the
    same entries in the same order give the same balances.
    """

    __slots__ = ("_balances", "_entries")

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self._entries: list[Entry] = []
        self._balances: dict[str, int] = {}
        for entry in entries:
            self.append(entry)

    def append(self, entry: Entry) -> None:
        self._entries.append(entry)
        balances = self._balances
        for posting in entry.postings:
            balances[posting.account] = balances.get(posting.account, 0) + posting.amount

    def balance(self, account: str) -> int:
        return self._balances.get(account, 0)

    @property
    def balances(self) -> Mapping[str, int]:
        return self._balances

    @property
    def entries(self) -> tuple[Entry, ...]:
        return tuple(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def total(self) -> int:
        """The sum over every ledger account; zero unless a bug broke double entry."""
        return sum(self._balances.values())
