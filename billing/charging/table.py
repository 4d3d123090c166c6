"""The charging state of many accounts as columns: one row per account, plain values.

:class:`AccountTable` holds what :class:`~billing.accounts.AccountState` holds,
for every account of a shard, laid out for columnar charging
(:mod:`billing.charging.columnar`):

- **numeric columns**, one int64/int8/bool numpy array each, indexed by row:
  the six books, the payment mode, credit limit (``limited`` false: none),
  status, currency code, whether the account has sponsor rules
  (``sponsored``), open reservations or bundle holds (``held``), the
  reminder cycle code (``-1``: none), whether any reminder key is set
  (``reminded``) or any crossing counted (``counted``), and the code of its
  subscriptions and currency (``fee_set``: the bill run prorates fees once
  per distinct set);
- **bundle consumption**, one int64 column per (cycle, bundle) slot that any
  account used, so a batch reads "units left" with one gather per slot;
- **usage totals** in a :class:`~billing.charging.usage_store.UsageTotals`;
- **sparse Python values** for what few rows hold: the reminder keys and
  crossing counts, the reservations and bundle holds, and the profile
  (:class:`~billing.accounts.Account`) of every row, which charging reads
  only through the columns derived from it.

Strings (cycle ids, usage classes, bundle ids, currencies, plans) are
interned to codes (:class:`~billing.charging.codes.Codes`) and only turned
back into strings for output.

**Purity.** Charging reads a table and never writes it: it returns a
:class:`TableUpdate` (new values for the rows it touched), and
:meth:`AccountTable.apply` writes that once the caller has made the batch
durable, as a shard updates its cache after the commit. There is no
per-batch copy of account state.

**The usage history** (``AccountState.history``) is not kept: a shard keeps
it in the account's ledger stream already, and the charged rows of a batch
are its new lines (``ChargeColumns.usage_lines``).

**Usage totals kept or not.** A table made with ``keeps_usage=False`` neither
loads nor adds usage totals: an account shard keeps one table as its cache
(``actors.shard.table_cache``) and its account rows hold the totals, which
charging never reads from the table.

**Interchange.** :meth:`AccountTable.put` loads an ``AccountState`` (a new
row, or a reload of its account's row); :meth:`AccountTable.extend` adds many
new accounts at once;
:meth:`AccountTable.state` materialises one (for the operations that stay
object-based: top-ups, sessions, switches, and charging's own fallback).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from billing.accounts import Account, AccountState, AccountStatus, PaymentMode, Subscription
from billing.charging.codes import I64, Codes, Ints
from billing.charging.usage_store import UsageTotals, usage_key
from billing.invariant import invariant

if TYPE_CHECKING:
    from billing.ocs.reservations import Reservation

__all__ = ["BOOKS", "MODES", "STATUSES", "AccountTable", "TableUpdate"]

MODES: tuple[PaymentMode, ...] = tuple(PaymentMode)
STATUSES: tuple[AccountStatus, ...] = tuple(AccountStatus)
BOOKS = ("prepaid", "reserved", "unbilled", "receivable", "credit", "debt")
_MODE_CODE = {m: i for i, m in enumerate(MODES)}
_STATUS_CODE = {s: i for i, s in enumerate(STATUSES)}
_NUMERIC = (
    *BOOKS, "mode", "limit", "limited", "status", "currency", "sponsored", "held",
    "reminder_cycle", "reminded", "counted", "fee_set",
)  # fmt: skip
_DTYPES: dict[str, type[np.generic]] = {
    "mode": np.int8,
    "status": np.int8,
    "limited": np.bool_,
    "sponsored": np.bool_,
    "held": np.bool_,
    "reminded": np.bool_,
    "counted": np.bool_,
}

Bools = npt.NDArray[np.bool_]
Small = npt.NDArray[np.int8]


@dataclass(frozen=True, slots=True, kw_only=True)
class TableUpdate:
    """What one charging batch changes in a table; :meth:`AccountTable.apply` writes it.

    ``rows``/``books``: the new six books (columns in :data:`BOOKS` order) of the
    rows whose money moved; ``bundle_*``: new consumption per (cycle code, bundle
    code, row);
    ``usage_*``: usage totals to add (keys of :func:`~billing.charging.usage_store.usage_key`);
    ``entered_*``: rows whose reminder state moved to a new cycle with no key set;
    ``reminders``: rows whose reminder state is replaced whole (cycle code, keys,
    crossings); ``profiles``: rows whose profile changed (an account blocked).
    """

    rows: Ints = field(default_factory=lambda: np.zeros(0, dtype=I64))
    books: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros((0, 6), dtype=I64))
    bundle_cycles: Ints = field(default_factory=lambda: np.zeros(0, dtype=I64))
    bundle_ids: Ints = field(default_factory=lambda: np.zeros(0, dtype=I64))
    bundle_rows: Ints = field(default_factory=lambda: np.zeros(0, dtype=I64))
    bundle_used: Ints = field(default_factory=lambda: np.zeros(0, dtype=I64))
    usage_keys: Ints = field(default_factory=lambda: np.zeros(0, dtype=I64))
    usage_values: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros((0, 5), dtype=I64))
    entered_rows: Ints = field(default_factory=lambda: np.zeros(0, dtype=I64))
    entered_cycles: Ints = field(default_factory=lambda: np.zeros(0, dtype=I64))
    reminders: Mapping[int, tuple[int, frozenset[str], Mapping[str, int]]] = field(
        default_factory=dict
    )
    profiles: Mapping[int, Account] = field(default_factory=dict)


class AccountTable:
    """Columns of account state, one row per account (module docstring)."""

    def __init__(self, capacity: int = 1024, *, keeps_usage: bool = True) -> None:
        self.size = 0
        # False: the usage totals are neither loaded nor added to (a shard's cache keeps
        # them in its account rows, and charging never reads them from the table).
        self.keeps_usage = keeps_usage
        self.capacity = max(capacity, 16)
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self.profiles: list[Account] = []
        for name in _NUMERIC:
            setattr(self, name, np.zeros(self.capacity, dtype=_DTYPES.get(name, I64)))
        # The numeric columns, declared for the type checker (set just above).
        self.prepaid: Ints
        self.reserved: Ints
        self.unbilled: Ints
        self.receivable: Ints
        self.credit: Ints
        self.debt: Ints
        self.mode: Small
        self.limit: Ints
        self.limited: Bools
        self.status: Small
        self.currency: Ints
        self.sponsored: Bools
        self.held: Bools
        self.reminder_cycle: Ints
        self.reminded: Bools
        self.counted: Bools
        self.fee_set: Ints
        self.reminders: dict[int, frozenset[str]] = {}
        self.crossings: dict[int, dict[str, int]] = {}
        self.holds: dict[int, tuple[dict[tuple[str, str], int], dict[str, Reservation]]] = {}
        self.cycles: Codes[str] = Codes()
        self.classes: Codes[str] = Codes()
        self.bundles: Codes[str] = Codes()
        self.currencies: Codes[str] = Codes()
        self.plans: Codes[tuple[str, str]] = Codes()
        self.fee_sets: Codes[tuple[tuple[Subscription, ...], str]] = Codes()
        self.bundle_slots: Codes[tuple[int, int]] = Codes()  # (cycle code, bundle code)
        self.bundle_used: list[Ints] = []
        self.usage = UsageTotals()

    # -- loading -------------------------------------------------------------------------

    @classmethod
    def from_states(cls, states: Iterable[AccountState]) -> AccountTable:
        """A table of ``states`` (rows in the given order; account ids unique)."""
        listed = list(states)
        table = cls(capacity=len(listed) + 16)
        table.extend(listed)
        return table

    def extend(self, states: Iterable[AccountState]) -> None:
        """Add ``states``, accounts the table does not hold yet, as new rows in the given
        order: one usage chunk for all of them."""
        table = self
        rows: list[int] = []
        cycles: list[int] = []
        classes: list[int] = []
        totals: list[tuple[int, int, int, int, int]] = []
        cycle_code, class_code = table.cycles.code, table.classes.code
        for state in states:
            invariant(state.account.account_id not in table.index, "a new account")
            row = table._put_values(state)
            if not table.keeps_usage:
                continue
            for (cycle_id, usage_class), values in state.usage.items():
                rows.append(row)
                cycles.append(cycle_code(cycle_id))
                classes.append(class_code(usage_class))
                totals.append(values)
        if rows:
            table.usage.add(
                usage_key(np.array(rows, I64), np.array(cycles, I64), np.array(classes, I64)),
                np.array(totals, dtype=I64),
            )

    def _grow(self, size: int) -> None:
        if size <= self.capacity:
            return
        capacity = max(size, 2 * self.capacity)
        for name in _NUMERIC:
            old = getattr(self, name)
            new = np.zeros(capacity, dtype=old.dtype)
            new[: self.size] = old[: self.size]
            setattr(self, name, new)
        for slot, old in enumerate(self.bundle_used):
            new = np.zeros(capacity, dtype=I64)
            new[: self.size] = old[: self.size]
            self.bundle_used[slot] = new
        self.capacity = capacity

    def put(self, state: AccountState) -> int:
        """Load ``state`` into its account's row (a new row for a new account); its row."""
        row = self._put_values(state)
        if not self.keeps_usage:
            return row
        stored = self.usage.of_row(row)
        wanted = {
            (self.cycles.code(c), self.classes.code(u)): totals
            for (c, u), totals in state.usage.items()
        }
        keys = list(dict.fromkeys([*stored, *wanted]))
        if keys:
            old = np.array([stored.get(k, (0, 0, 0, 0, 0)) for k in keys], dtype=I64)
            new = np.array([wanted.get(k, (0, 0, 0, 0, 0)) for k in keys], dtype=I64)
            cycles = np.array([k[0] for k in keys], dtype=I64)
            classes = np.array([k[1] for k in keys], dtype=I64)
            rows = np.full(len(keys), row, dtype=I64)
            self.usage.add(usage_key(rows, cycles, classes), new - old)
        return row

    def _put_values(self, state: AccountState) -> int:
        """Everything of ``state`` but its usage totals into its row; the row."""
        account = state.account
        row = self.index.get(account.account_id)
        if row is None:
            row = self.size
            self._grow(row + 1)
            self.size += 1
            self.ids.append(account.account_id)
            self.profiles.append(account)
            self.index[account.account_id] = row
        for book in BOOKS:
            getattr(self, book)[row] = getattr(state, book)
        self.set_profile(row, account)
        self.held[row] = bool(state.reservations or state.bundle_held)
        if self.held[row]:
            self.holds[row] = (dict(state.bundle_held), dict(state.reservations))
        else:
            self.holds.pop(row, None)
        self.set_reminders(
            row,
            -1 if state.reminder_cycle is None else self.cycles.code(state.reminder_cycle),
            frozenset(state.reminders),
            state.crossings,
        )
        for column in self.bundle_used:
            column[row] = 0
        for (cycle_id, bundle_id), used in state.bundle_used.items():
            slot = self.slot(self.cycles.code(cycle_id), self.bundles.code(bundle_id))
            self.bundle_used[slot][row] = used
        return row

    def set_profile(self, row: int, account: Account) -> None:
        """Replace ``row``'s profile and the columns derived from it."""
        self.profiles[row] = account
        self.mode[row] = _MODE_CODE[account.payment_mode]
        self.limited[row] = account.credit_limit is not None
        self.limit[row] = account.credit_limit or 0
        self.status[row] = _STATUS_CODE[account.status]
        self.currency[row] = self.currencies.code(account.currency)
        self.sponsored[row] = bool(account.sponsor_rules)
        self.fee_set[row] = self.fee_sets.code((account.subscriptions, account.currency))

    def set_reminders(
        self, row: int, cycle: int, keys: frozenset[str], crossings: Mapping[str, int]
    ) -> None:
        """Replace ``row``'s reminder state: its cycle code, keys set and crossing counts."""
        self.reminder_cycle[row] = cycle
        self.reminded[row] = bool(keys)
        if keys:
            self.reminders[row] = keys
        else:
            self.reminders.pop(row, None)
        self.counted[row] = bool(crossings)
        if crossings:
            self.crossings[row] = dict(crossings)
        else:
            self.crossings.pop(row, None)

    def used(self, cycles: Ints, bundles: Ints, rows: Ints) -> Ints:
        """Units consumed per (cycle code, bundle code, row), elementwise; 0 where no
        account has used that bundle in that cycle yet (no column is made)."""
        out = np.zeros(len(rows), dtype=I64)
        if not len(rows):
            return out
        pairs = cycles << 32 | bundles
        for pair in np.unique(pairs).tolist():
            slot = self.bundle_slots.index.get((pair >> 32, pair & 0xFFFFFFFF))
            if slot is not None:
                picked = pairs == pair
                out[picked] = self.bundle_used[slot][rows[picked]]
        return out

    def slot(self, cycle: int, bundle: int) -> int:
        """The bundle-consumption column of (cycle code, bundle code), made if new."""
        slot = self.bundle_slots.code((cycle, bundle))
        if slot == len(self.bundle_used):
            self.bundle_used.append(np.zeros(self.capacity, dtype=I64))
        return slot

    # -- reading -------------------------------------------------------------------------

    def state(
        self, row: int, *, usage: bool = True, cycles: frozenset[int] | None = None
    ) -> AccountState:
        """A new :class:`AccountState` of ``row`` (history empty; ``usage=False``: usage
        totals empty too, for an operation that only adds to them). Bundle consumption
        of zero units is not listed: charging never stores it. ``cycles`` (codes) limits
        the bundle consumption listed to those cycles: all that charging records of those
        cycles reads or writes."""
        state = AccountState(self.profiles[row])
        for book in BOOKS:
            setattr(state, book, int(getattr(self, book)[row]))
        names, bundles, within = self.cycles.names, self.bundles.names, cycles
        for slot, column in enumerate(self.bundle_used):
            cycle, bundle = self.bundle_slots.names[slot]
            if within is not None and cycle not in within:
                continue
            used = int(column[row])
            if used:
                state.bundle_used[(names[cycle], bundles[bundle])] = used
        hold = self.holds.get(row)
        if hold is not None:
            state.bundle_held = dict(hold[0])
            state.reservations = dict(hold[1])
        if usage:
            invariant(self.keeps_usage, "a table without usage totals lists none")
            classes = self.classes.names
            state.usage = {
                (names[c], classes[u]): totals for (c, u), totals in self.usage.of_row(row).items()
            }
        cycle = int(self.reminder_cycle[row])
        state.reminder_cycle = None if cycle < 0 else names[cycle]
        state.reminders = set(self.reminders.get(row, ()))
        state.crossings = dict(self.crossings.get(row, {}))
        return state

    def row_of(self, account_id: str) -> int | None:
        return self.index.get(account_id)

    # -- writing -------------------------------------------------------------------------

    def apply(self, update: TableUpdate) -> None:
        """Write a charging batch's :class:`TableUpdate` (after the batch is durable)."""
        rows = update.rows
        if len(rows):
            for position, book in enumerate(BOOKS):
                getattr(self, book)[rows] = update.books[:, position]
        if len(update.bundle_rows):
            pairs = update.bundle_cycles << 32 | update.bundle_ids
            for pair in np.unique(pairs).tolist():
                picked = pairs == pair
                column = self.bundle_used[self.slot(pair >> 32, pair & 0xFFFFFFFF)]
                column[update.bundle_rows[picked]] = update.bundle_used[picked]
        if self.keeps_usage:
            self.usage.add(update.usage_keys, update.usage_values)
        entered = update.entered_rows
        if len(entered):
            self.reminder_cycle[entered] = update.entered_cycles
            self.reminded[entered] = False
            self.counted[entered] = False
            held_keys, held_counts = self.reminders, self.crossings
            for row in entered.tolist():
                held_keys.pop(row, None)
                held_counts.pop(row, None)
        for row, (cycle, keys, crossings) in update.reminders.items():
            self.set_reminders(row, cycle, keys, crossings)
        for row, account in update.profiles.items():
            self.set_profile(row, account)

    def column(self, name: str) -> npt.NDArray[Any]:
        """The live part (``size`` rows) of a numeric column."""
        found: npt.NDArray[Any] = getattr(self, name)[: self.size]
        return found
