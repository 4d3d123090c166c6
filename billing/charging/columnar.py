"""Columnar charging: a batch of rated records as columns against an account table.

:func:`charge_columns` charges a :class:`~billing.charging.charge_input.ChargeInput`
batch against an :class:`~billing.charging.table.AccountTable` and answers
with :class:`ChargeColumns`: per-record columns (result, cycle, bundle
units, amount and its parts by book), the :class:`~billing.charging.table.TableUpdate`
to apply once the batch is durable, and the few Python values only a
boundary produces (notifications, rows of the reference path). It gives what
:func:`billing.charging.batch.charge_batch` (the reference) gives for the
same records and states — rows, states, entries, marks, usage lines,
notifications and forwards, in the same order — which
tests/test_charging_columns.py holds it to.

**Which record goes where** (docs/billing-rules.md, "Columnar charging"):

1. an account the table does not hold: ``unknown_account``, in columns;
2. an id with a stored mark: the reference's replay or conflict answer;
3. the *reference path* (:mod:`billing.charging.fallback`) takes every record
   of an account that has sponsor rules, reservations or bundle holds, that
   shares a record id with another record of the batch, whose records are
   sponsored by an account of the same table (and that sponsor), whose plan
   lists one bundle twice, or that the vectorised path declines;
4. every other account is charged by the *vectorised path*
   (:mod:`billing.charging.vector`), which declines an account whose batch
   crosses a boundary (a bundle running out, a balance or credit limit, a
   reminder threshold, more than one cycle).

The derived values — :class:`~billing.charging.rows.Charge` rows, ledger
entries, marks, forwards — are built on demand (``rows()``, ``charges()``,
``entries()``, ``marks()``, ``forwards()``); :meth:`ChargeColumns.postings`
sums the batch's postings per ledger account with array operations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import is_not
from typing import Any

import numpy as np

from billing.bundles import Tariff
from billing.charging.charge_input import SERVICES, ChargeInput
from billing.charging.codes import I64, Codes, Groups, Ints
from billing.charging.config import ChargingConfig, calendar_for
from billing.charging.fallback import KnownMarks, charge_reference, replays
from billing.charging.rows import Charge, MarkStore, new_row, revenue_key
from billing.charging.table import AccountTable, TableUpdate
from billing.charging.vector import RESULTS, Chains, code_of, decide
from billing.idempotency import Mark
from billing.ledger import Book, Entry, account_key
from billing.notifications import Notification
from billing.outcome import CHARGED_RESULTS, Result
from billing.sponsor import SponsoredUsage

__all__ = ["ChargeColumns", "charge_columns", "merge_updates"]

_USAGE_LINE = frozenset({*CHARGED_RESULTS, Result.SPONSORED})


@dataclass(frozen=True, slots=True, kw_only=True)
class ChargeColumns:
    """The answer of :func:`charge_columns` (module docstring).

    Per record ``i``: ``result`` (codes of :data:`billing.charging.vector.RESULTS`),
    ``cycle`` (a code of the table's cycles, ``-1`` for a refusal), ``bundle_units``,
    ``amount``, ``prepaid``, ``unbilled``, ``debt`` and ``sponsor`` (a code of
    ``sponsors``, ``-1``: none). ``reference`` holds the rows the reference path or a
    replay decided (they win over the columns), ``extras`` the sponsor lines charged
    before a record's row, ``forward_amount`` what an off-table sponsor owes for a
    record sponsored in columns. ``paths`` counts the records per path, ``declined``
    the accounts the vectorised path declined, per reason.
    """

    batch: ChargeInput
    table: AccountTable
    at_s: int
    result: Ints
    cycle: Ints
    bundle_units: Ints
    amount: Ints
    prepaid: Ints
    unbilled: Ints
    debt: Ints
    sponsor: Ints
    sponsors: tuple[str, ...]
    forward_amount: Ints
    reference: dict[int, Charge]
    extras: dict[int, tuple[Charge, ...]]
    notifications: tuple[Notification, ...]
    reference_forwards: dict[int, tuple[SponsoredUsage, ...]]
    update: TableUpdate
    paths: dict[str, int]
    declined: dict[str, int]

    def __len__(self) -> int:
        return len(self.result)

    def results(self) -> list[Result]:
        """The result of every record, in order."""
        return [RESULTS[c] for c in self.result.tolist()]

    def row(self, i: int) -> Charge:
        """Record ``i``'s answer row; ``rated`` is set on a fresh usage line (as in
        the reference, where it derives the mark)."""
        found = self.reference.get(i)
        if found is not None:
            return found
        batch, table = self.batch, self.table
        record_id = batch.record_ids[i]
        result = RESULTS[int(self.result[i])]
        cycle = int(self.cycle[i])
        sponsor = int(self.sponsor[i])
        account = int(batch.account[i])
        return new_row(
            Charge,
            (
                record_id,
                "usage:" + record_id,
                table.ids[account] if account >= 0 else batch.account_ids[i],
                result,
                table.cycles.names[cycle] if cycle >= 0 else "",
                SERVICES[int(batch.service[i])].value,
                table.classes.names[int(batch.usage_class[i])],
                int(batch.units[i]),
                int(self.bundle_units[i]),
                int(self.amount[i]),
                int(self.prepaid[i]),
                int(self.unbilled[i]),
                int(self.debt[i]),
                table.currencies.names[int(batch.currency[i])],
                self.at_s,
                self.sponsors[sponsor] if sponsor >= 0 and result is Result.SPONSORED else None,
                None,
                batch.source[i] if result in _USAGE_LINE else None,
                None,  # replay_of: only a replay, which the reference answers, has one
            ),
        )

    def rows(self) -> list[Charge]:
        """One answer row per record, in order (``charge_batch``'s receipt)."""
        return [self.row(i) for i in range(len(self))]

    def charges(self) -> list[Charge]:
        """The rows the batch stores, in the reference's order (``Effects.charges``):
        per record, the sponsor lines it charged, then its own fresh line."""
        out: list[Charge] = []
        for i in range(len(self)):
            out.extend(self.extras.get(i, ()))
            row = self.row(i)
            if row.rated is not None:
                out.append(row)
        return out

    def entries(self) -> list[Entry]:
        """The ledger entries of the batch (one per money charge), in order."""
        return [e for c in self.charges() if (e := c.to_entry()) is not None]

    def marks(self) -> list[tuple[str, Mark[Any]]]:
        """The idempotency marks to store, in order."""
        return [m for c in self.charges() if (m := c.to_mark()) is not None]

    def usage_lines(self) -> list[Charge]:
        """The usage-history lines of the batch, in order."""
        return [c for c in self.charges() if c.is_usage_line]

    def forwards(self) -> list[SponsoredUsage]:
        """Sponsor charges for other shards, in record order."""
        table, batch = self.table, self.batch
        keyed: list[tuple[int, SponsoredUsage]] = []
        sponsored = (self.sponsor >= 0) & (self.result == code_of(Result.SPONSORED))
        for i in np.flatnonzero(sponsored).tolist():
            if i in self.reference:
                continue
            usage = SponsoredUsage(
                rated=batch.source[i],
                subscriber_account_id=table.ids[int(batch.account[i])],
                sponsor_account_id=self.sponsors[int(self.sponsor[i])],
                amount=int(self.forward_amount[i]),
                cycle_id=table.cycles.names[int(self.cycle[i])],
            )
            keyed.append((i, usage))
        for i, usages in self.reference_forwards.items():
            keyed.extend((i, u) for u in usages)
        keyed.sort(key=lambda item: item[0])  # stable: a record's own order is kept
        return [u for _, u in keyed]

    def postings(self) -> dict[str, int]:
        """The batch's postings summed per ledger account (``op/revenue/<service>`` and
        each customer book), computed on the columns; the reference path's rows added."""
        out: dict[str, int] = {}
        batch, table = self.batch, self.table
        columnar = np.ones(len(self), dtype=bool)
        if self.reference:
            columnar[list(self.reference)] = False
        money = columnar & np.isin(self.result, _CHARGED_CODES) & (self.amount != 0)
        services = Groups(batch.service[money])
        for service, total in zip(
            services.keys_of.tolist(), services.sum(self.amount[money]).tolist(), strict=True
        ):
            key = revenue_key(SERVICES[service].value)
            out[key] = out.get(key, 0) + total
        accounts = Groups(batch.account[money])
        for book, column in ((Book.PREPAID, self.prepaid), (Book.UNBILLED, self.unbilled),
                             (Book.DEBT, self.debt)):  # fmt: skip
            for row, total in zip(
                accounts.keys_of.tolist(), accounts.sum(column[money]).tolist(), strict=True
            ):
                if total:
                    key = account_key(table.ids[row], book)
                    out[key] = out.get(key, 0) - total
        for i, row_ in self.reference.items():
            for charge in (*self.extras.get(i, ()), row_):
                entry = charge.to_entry() if charge.rated is not None else None
                for posting in entry.postings if entry is not None else ():
                    out[posting.account] = out.get(posting.account, 0) + posting.amount
        return {k: v for k, v in out.items() if v}


_CHARGED_CODES = np.array([code_of(r) for r in CHARGED_RESULTS], dtype=I64)


def _cycles(batch: ChargeInput, table: AccountTable, tz: str) -> Ints:
    """Each record's cycle code: one calendar lookup per distinct cycle of the batch."""
    times = batch.time_s
    if not len(times):
        return np.zeros(0, dtype=I64)
    calendar = calendar_for(tz)
    ordered = np.sort(times)
    starts: list[int] = []
    codes: list[int] = []
    at = int(ordered[0])
    while True:
        cycle = calendar.cycle_of(at)
        starts.append(cycle.start_s)
        codes.append(table.cycles.code(cycle.cycle_id))
        nxt = int(np.searchsorted(ordered, cycle.end_s))
        if nxt >= len(ordered):
            break
        at = int(ordered[nxt])
    position = np.searchsorted(np.array(starts, dtype=I64), times, side="right") - 1
    return np.array(codes, dtype=I64)[position]


def _rank(table: AccountTable) -> Ints:
    """The chronological rank of every cycle code (cycle ids compare as strings)."""
    names = table.cycles.names
    rank = np.zeros(len(names), dtype=I64)
    rank[sorted(range(len(names)), key=names.__getitem__)] = np.arange(len(names))
    return rank


def _lookup(marks: MarkStore, ids: Sequence[str]) -> dict[str, Mark[Any]]:
    """The stored marks of ``ids``: one batch call where the store has one. Most ids
    have none, so the misses are skipped without a Python step per id."""
    many = getattr(marks, "get_many", None)
    got: list[Mark[Any] | None] = many(ids) if many is not None else list(map(marks.get, ids))
    hits = np.flatnonzero(np.fromiter(map(is_not, got, repeat(None)), bool, len(got)))
    found: dict[str, Mark[Any]] = {}
    for i in hits.tolist():
        mark = got[i]
        if mark is not None:
            found[ids[i]] = mark
    return found


def merge_updates(parts: Sequence[TableUpdate]) -> TableUpdate:
    """One update of several that touch disjoint rows."""
    if len(parts) == 1:
        return parts[0]

    def cat(name: str) -> Any:
        return np.concatenate([getattr(p, name) for p in parts])

    return TableUpdate(
        rows=cat("rows"),
        books=cat("books"),
        bundle_cycles=cat("bundle_cycles"),
        bundle_ids=cat("bundle_ids"),
        bundle_rows=cat("bundle_rows"),
        bundle_used=cat("bundle_used"),
        usage_keys=cat("usage_keys"),
        usage_values=cat("usage_values"),
        entered_rows=cat("entered_rows"),
        entered_cycles=cat("entered_cycles"),
        reminders={k: v for p in parts for k, v in p.reminders.items()},
        profiles={k: v for p in parts for k, v in p.profiles.items()},
    )


def charge_columns(
    batch: ChargeInput,
    table: AccountTable,
    *,
    marks: MarkStore,
    tariff: Tariff,
    config: ChargingConfig,
    at_s: int,
    offline: bool = True,
) -> ChargeColumns:
    """Charge ``batch`` against ``table`` (read only; apply ``.update`` after the commit).

    ``marks`` holds the stored marks of (at least) the batch's record ids; a store
    with ``get_many(keys)`` is asked once for the whole batch.
    """
    n = len(batch)
    rows = batch.account
    result = np.full(n, code_of(Result.CHARGED), dtype=I64)
    zeros = [np.zeros(n, dtype=I64) for _ in range(6)]
    out_cycle = np.full(n, -1, dtype=I64)
    bundle_units, amount, prepaid, unbilled, debt, forward_amount = zeros
    known = rows >= 0
    result[~known] = code_of(Result.UNKNOWN_ACCOUNT)
    cycle = _cycles(batch, table, config.tz)
    ids = batch.record_ids
    known_at = np.flatnonzero(known)
    every = len(known_at) == n
    looked_up = ids if every else [ids[i] for i in known_at.tolist()]
    found = _lookup(marks, looked_up)
    marked = np.zeros(n, dtype=bool)
    if found:
        marked[[i for i in known_at.tolist() if ids[i] in found]] = True
    live = known & ~marked

    # Accounts for the reference path (module docstring, step 3).
    exotic = np.zeros(table.size, dtype=bool)
    live_rows = rows[live]
    exotic[live_rows[table.sponsored[live_rows] | table.held[live_rows]]] = True
    live_at = np.flatnonzero(live)
    live_ids = ids if every and not found else [ids[i] for i in live_at.tolist()]
    if len(set(live_ids)) != len(live_ids):
        count: dict[str, int] = {}
        for record_id in live_ids:
            count[record_id] = count.get(record_id, 0) + 1
        exotic[[int(rows[i]) for i in live_at.tolist() if count[ids[i]] > 1]] = True
    for row in np.unique(live_rows[table.sponsored[live_rows]]).tolist():
        for rule in table.profiles[row].sponsor_rules:
            sponsor_row = table.index.get(rule.sponsor_account_id)
            if sponsor_row is not None:
                exotic[sponsor_row] = True
    sponsors: Codes[str] = Codes()
    sponsor = np.full(n, -1, dtype=I64)
    sponsor_price: dict[int, str] = {}
    classes = np.unique(batch.usage_class[live]).tolist()
    for usage_class in classes:
        found_sponsor = tariff.sponsor_for(table.classes.names[usage_class])
        if found_sponsor is None:
            continue
        sponsor_id, price_key = found_sponsor
        of_class = live & (batch.usage_class == usage_class)
        sponsor_row = table.index.get(sponsor_id)
        if sponsor_row is not None:
            exotic[rows[of_class]] = True
            exotic[sponsor_row] = True
        else:
            code = sponsors.code(sponsor_id)
            sponsor[of_class] = code
            sponsor_price[code] = price_key
    chains = Chains(batch, table, tariff)
    exotic[rows[live & chains.repeated]] = True

    candidates = np.flatnonzero(live & ~exotic[np.maximum(rows, 0)])
    vector = decide(
        batch,
        table,
        candidates,
        cycle=cycle,
        rank=_rank(table),
        chains=chains,
        sponsored=sponsor >= 0,
        config=config,
        offline=offline,
    )
    exotic[vector.failed] = True
    at = vector.records
    result[at], out_cycle[at], bundle_units[at] = vector.result, vector.cycle, vector.covered
    amount[at], prepaid[at], unbilled[at], debt[at] = (
        vector.amount, vector.prepaid, vector.unbilled, vector.debt
    )  # fmt: skip
    spons_at = at[vector.result == code_of(Result.SPONSORED)]
    for code, price_key in sponsor_price.items():
        picked = spons_at[sponsor[spons_at] == code]
        if len(picked):
            forward_amount[picked] = _price_many(tariff, price_key, batch.units[picked])

    # Replays, then the reference path over the remaining accounts, in batch order.
    slow_at = np.flatnonzero(live & exotic[np.maximum(rows, 0)])
    prefetch = getattr(batch.source, "prefetch", None)
    if prefetch is not None and (found or len(slow_at)):
        prefetch([*np.flatnonzero(marked).tolist(), *slow_at.tolist()])
    reference = replays(
        batch,
        np.flatnonzero(marked).tolist(),
        found,
        table=table,
        marks=marks,
        tariff=tariff,
        config=config,
        at_s=at_s,
    )
    updates = [vector.update]
    notes: list[Notification] = []
    extras: dict[int, tuple[Charge, ...]] = {}
    reference_forwards: dict[int, tuple[SponsoredUsage, ...]] = {}
    if len(slow_at):
        slow = charge_reference(
            batch,
            slow_at.tolist(),
            np.flatnonzero(exotic).tolist(),
            cycle=cycle,
            table=table,
            marks=KnownMarks(marks, set(looked_up), found),
            tariff=tariff,
            config=config,
            at_s=at_s,
            offline=offline,
        )
        reference.update(slow.rows)
        extras = slow.extras
        notes = slow.notes  # in batch order: the vectorised path makes none
        for i, usage in slow.forwards:
            reference_forwards[i] = (*reference_forwards.get(i, ()), usage)
        updates.append(slow.update)
    for i, charge in reference.items():
        result[i] = code_of(charge.result)
        out_cycle[i] = table.cycles.code(charge.cycle_id) if charge.cycle_id else -1
        bundle_units[i], amount[i] = charge.bundle_units, charge.amount
        prepaid[i], unbilled[i], debt[i] = charge.prepaid, charge.unbilled, charge.debt
    return ChargeColumns(
        batch=batch,
        table=table,
        at_s=at_s,
        result=result,
        cycle=out_cycle,
        bundle_units=bundle_units,
        amount=amount,
        prepaid=prepaid,
        unbilled=unbilled,
        debt=debt,
        sponsor=sponsor,
        sponsors=tuple(sponsors.names),
        forward_amount=forward_amount,
        reference=reference,
        extras=extras,
        notifications=tuple(notes),
        reference_forwards=reference_forwards,
        update=merge_updates(updates),
        paths={
            "vector": len(at),
            "reference": len(slow_at),
            "replay": int(marked.sum()),
            "unknown": int((~known).sum()),
        },
        declined=vector.declined,
    )


def _price_many(tariff: Tariff, price_key: str, units: Ints) -> Ints:
    """``tariff.price_units(price_key, u)`` for each ``u``: once per distinct value, or
    in one call where the tariff prices arrays (``price_units_many``)."""
    many = getattr(tariff, "price_units_many", None)
    if many is not None:
        priced: Ints = np.asarray(many(price_key, units), dtype=I64)
        return priced
    distinct, inverse = np.unique(units, return_inverse=True)
    prices = np.array([tariff.price_units(price_key, u) for u in distinct.tolist()], dtype=I64)
    return prices[inverse.reshape(len(units))]
