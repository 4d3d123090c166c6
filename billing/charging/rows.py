"""The charge row: one compact tuple per charged record, and what is derived from it.

Charging (:mod:`billing.charging.batch`) emits one :class:`Charge` per record. The
row is the per-record answer, the usage-history line kept on the account,
and — derived on demand, not on the hot path — the record's ledger entry
(:meth:`Charge.to_entry`) and idempotency mark (:meth:`Charge.to_mark`). The
usage totals of an account (``AccountState.usage``) are folded from rows by
:func:`add_usage`.

A row is a ``NamedTuple`` so building it costs one tuple; charging builds it
with ``tuple.__new__`` directly (see :data:`new_row`), which skips the
generated keyword-argument constructor.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

from billing.accounts import AccountState
from billing.history import appended
from billing.idempotency import Mark
from billing.ledger import Book, Entry, EntryKind, Posting, account_key, op_key
from billing.outcome import CHARGED_RESULTS, Result
from billing.rated import RatedRecord

__all__ = [
    "CASH",
    "Charge",
    "MarkStore",
    "add_usage",
    "billing_usage",
    "charge_fields",
    "new_row",
    "revenue_key",
]

CASH = op_key("cash")
_REVENUE: dict[str, str] = {}


def revenue_key(service: str) -> str:
    """``op/revenue/<service>``, interned."""
    key = _REVENUE.get(service)
    if key is None:
        key = _REVENUE[service] = op_key(f"revenue/{service}")
    return key


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
    ``replay_of`` is set on the answer to a repeat (``result`` ``DUPLICATE``): the
    result the record had when it was first charged, so the caller can answer
    the stored result as first decided; it is never stored either.
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
    replay_of: Result | None = None

    @property
    def is_usage_line(self) -> bool:
        return self.result in CHARGED_RESULTS or self.result is Result.SPONSORED

    def to_entry(self) -> Entry | None:
        """The ledger entry of this charge (``None`` when no money moved)."""
        if self.amount == 0 or self.result not in CHARGED_RESULTS:
            return None
        postings = [Posting(revenue_key(self.service), self.amount)]
        account_id = self.account_id
        if self.prepaid:
            postings.append(Posting(account_key(account_id, Book.PREPAID), -self.prepaid))
        if self.unbilled:
            postings.append(Posting(account_key(account_id, Book.UNBILLED), -self.unbilled))
        if self.debt:
            postings.append(Posting(account_key(account_id, Book.DEBT), -self.debt))
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
        rated = self.rated
        if rated is None or not self.is_usage_line:
            return None
        key = self.record_id if self.sponsor_of is None else self.ref
        # The stored result is this row without its transient ``rated`` and ``replay_of``.
        stored = new_row(Charge, (*self[:17], None, None))
        return key, Mark(charge_fields(self.account_id, rated), stored)


new_row = tuple.__new__
"""``new_row(Charge, (...all 19 fields...))``: a row without the keyword constructor."""


def charge_fields(account_id: str, rated: RatedRecord) -> tuple[tuple[str, object], ...]:
    """The idempotency fields of a record charged to ``account_id`` (sorted by name)."""
    return (
        ("account", account_id),
        ("amount", rated.amount),
        ("content", rated.record.content_key()),
    )


def add_usage(state: AccountState, row: Charge, history_max: int) -> None:
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
    state.history = appended(state.history, row, history_max)


def billing_usage(state: AccountState) -> dict[str, dict[str, tuple[int, int, int, int, int]]]:
    """Usage totals grouped by cycle, then usage class (for the bill run's ``BillingAccount``)."""
    grouped: dict[str, dict[str, tuple[int, int, int, int, int]]] = {}
    for (cycle_id, usage_class), totals in state.usage.items():
        grouped.setdefault(cycle_id, {})[usage_class] = totals
    return grouped
