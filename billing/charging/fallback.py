"""The reference path inside columnar charging: the accounts the vectorised path does not take.

:func:`charge_reference` materialises the states of a few table rows
(:meth:`~billing.charging.table.AccountTable.state`, usage totals left empty
so that what charging adds to them is the delta), charges their records in
batch order through the reference implementation itself —
:func:`~billing.charging.batch.charge_batch`, or its general path
(:class:`~billing.charging.step.ChargeBatch`) record by record when one msisdn
names two accounts in the batch — and turns the resulting states back into
table changes. Accounts are independent of each other but for a sponsor
held in the same table, which the caller routes here together with its
subscribers, so charging this subset in batch order gives each account what
charging the whole batch in order gives it.

:func:`replays` answers records whose id already has a stored mark: a
duplicate (the stored row) or a conflict, decided by the reference's own
:meth:`~billing.charging.step.ChargeBatch.previous`; neither changes a state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from billing.accounts import AccountState
from billing.bundles import Tariff
from billing.charging.batch import charge_batch
from billing.charging.charge_input import ChargeInput
from billing.charging.codes import I64, Ints
from billing.charging.config import ChargingConfig
from billing.charging.rows import Charge, MarkStore
from billing.charging.step import ChargeBatch
from billing.charging.table import BOOKS, AccountTable, TableUpdate
from billing.charging.usage_store import usage_key
from billing.idempotency import Mark
from billing.notifications import Notification
from billing.outcome import Result
from billing.sponsor import SponsoredUsage

__all__ = ["KnownMarks", "ReferenceOutcome", "charge_reference", "replays"]


class KnownMarks:
    """A ``MarkStore`` that answers the batch's record ids from the lookup already made
    (``found``: the ids that have a mark) and asks ``store`` for any other key."""

    __slots__ = ("found", "looked_up", "store")

    def __init__(self, store: MarkStore, looked_up: set[str], found: Mapping[str, Mark[Any]]):
        self.store = store
        self.looked_up = looked_up
        self.found = found

    def get(self, key: str, /) -> Mark[Any] | None:
        if key in self.looked_up:
            return self.found.get(key)
        return self.store.get(key)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReferenceOutcome:
    """The reference path's answer for its records: ``rows[i]`` per batch position,
    ``extras[i]`` the sponsor lines charged before record ``i``'s row, notifications
    in charging order, forwards with their record's position, and the table changes
    of its accounts."""

    rows: dict[int, Charge]
    extras: dict[int, tuple[Charge, ...]]
    notes: list[Notification]
    forwards: list[tuple[int, SponsoredUsage]]
    update: TableUpdate


def replays(
    batch: ChargeInput,
    positions: Sequence[int],
    found: Mapping[str, Mark[Any]],
    *,
    table: AccountTable,
    marks: MarkStore,
    tariff: Tariff,
    config: ChargingConfig,
    at_s: int,
) -> dict[int, Charge]:
    """The answers of records whose id has a stored mark (``found``): the stored row as
    ``DUPLICATE``, or the refusal naming the field that differs."""
    answers: dict[int, Charge] = {}
    if not positions:
        return answers
    checker = ChargeBatch({}, marks, tariff, config)
    for i in positions:
        rated = batch.source[i]
        account_id = table.ids[int(batch.account[i])]
        previous = checker.previous(batch.record_ids[i], account_id, rated)
        if isinstance(previous, Charge):
            answers[i] = previous
        else:
            assert previous is not None  # a stored mark is a replay or a conflict
            answers[i] = checker.refuse(rated, account_id, previous, at_s)
    return answers


def charge_reference(
    batch: ChargeInput,
    positions: Sequence[int],
    rows: Sequence[int],
    *,
    cycle: Ints,
    table: AccountTable,
    marks: MarkStore,
    tariff: Tariff,
    config: ChargingConfig,
    at_s: int,
    offline: bool,
) -> ReferenceOutcome:
    """Charge the records at ``positions`` (ascending) through the general path, over
    the states of table ``rows`` (their accounts and any sponsor among them);
    ``cycle`` holds every record's cycle code (the states list the bundle use of the
    cycles of these records only: nothing else is read or written)."""
    cycles = frozenset(cycle[list(positions)].tolist())
    states = {table.ids[r]: table.state(r, usage=False, cycles=cycles) for r in rows}
    source, account_ids = batch.source, batch.account_ids
    directory: dict[str, str] = {}
    for i in positions:
        if directory.setdefault(source[i].record.served_msisdn, account_ids[i]) != account_ids[i]:
            break  # one msisdn, two accounts: charge_batch's directory cannot say that
    else:
        return _through_charge_batch(
            batch, positions, states, directory, table=table, marks=marks, tariff=tariff,
            config=config, at_s=at_s, offline=offline,
        )  # fmt: skip
    batch_state = ChargeBatch(states, marks, tariff, config)
    answers: dict[int, Charge] = {}
    extras: dict[int, tuple[Charge, ...]] = {}
    forwards: list[tuple[int, SponsoredUsage]] = []
    charged = batch_state.rows
    for i in positions:
        before, forwards_before = len(charged), len(batch_state.forwards)
        row = batch_state.charge(source[i], account_ids[i], at_s, offline)
        if len(charged) > before:
            extras[i] = tuple(charged[before:])
        answers[i] = row
        if row.rated is not None:
            charged.append(row)
        forwards.extend((i, f) for f in batch_state.forwards[forwards_before:])
    return ReferenceOutcome(
        rows=answers,
        extras=extras,
        notes=list(batch_state.notes),
        forwards=forwards,
        update=_update(table, batch_state.changed),
    )


def _through_charge_batch(
    batch: ChargeInput,
    positions: Sequence[int],
    states: Mapping[str, AccountState],
    directory: Mapping[str, str],
    *,
    table: AccountTable,
    marks: MarkStore,
    tariff: Tariff,
    config: ChargingConfig,
    at_s: int,
    offline: bool,
) -> ReferenceOutcome:
    """The reference's own :func:`charge_batch` (its inline path included) over the
    records at ``positions``, its answer sorted back to batch positions."""
    source = batch.source
    out = charge_batch(
        [source[i] for i in positions],
        accounts=states,
        directory=directory,
        marks=marks,
        tariff=tariff,
        config=config,
        at_s=at_s,
        offline=offline,
    )
    effects = out.effects
    charges = effects.charges
    answers: dict[int, Charge] = {}
    extras: dict[int, tuple[Charge, ...]] = {}
    sponsored_at: dict[str, int] = {}
    at = 0
    for i, row in zip(positions, out.receipt or (), strict=True):
        answers[i] = row
        if row.rated is None:
            continue
        # A fresh line is stored after the sponsor lines its record charged (Effects.charges).
        start = at
        while charges[at] is not row:
            at += 1
        if at > start:
            extras[i] = tuple(charges[start:at])
        at += 1
        if row.result is Result.SPONSORED:
            sponsored_at[row.record_id] = i
    return ReferenceOutcome(
        rows=answers,
        extras=extras,
        notes=list(effects.notifications),
        forwards=[(sponsored_at[f.rated.record.record_id], f) for f in effects.forwards],
        update=_update(table, {s.account_id: s for s in effects.accounts}),
    )


def _update(table: AccountTable, changed: Mapping[str, AccountState]) -> TableUpdate:
    """The table changes that turn the rows of ``changed`` into those states (whose
    usage totals, having started empty, are what to add)."""
    row_list: list[int] = []
    books: list[list[int]] = []
    bundle: list[tuple[int, int, int, int]] = []
    usage: list[tuple[int, int, int, tuple[int, int, int, int, int]]] = []
    reminders: dict[int, tuple[int, frozenset[str], Mapping[str, int]]] = {}
    profiles = {}
    cycle_code, class_code, bundle_code = (
        table.cycles.code, table.classes.code, table.bundles.code
    )  # fmt: skip
    for account_id, state in changed.items():
        row = table.index[account_id]
        row_list.append(row)
        books.append([getattr(state, b) for b in BOOKS])
        for (cycle_id, bundle_id), used in state.bundle_used.items():
            bundle.append((cycle_code(cycle_id), bundle_code(bundle_id), row, used))
        for (cycle_id, usage_class), totals in state.usage.items():
            usage.append((row, cycle_code(cycle_id), class_code(usage_class), totals))
        reminders[row] = (
            -1 if state.reminder_cycle is None else cycle_code(state.reminder_cycle),
            frozenset(state.reminders),
            dict(state.crossings),
        )
        if state.account is not table.profiles[row]:
            profiles[row] = state.account
    b = np.array(bundle, dtype=I64).reshape(-1, 4)
    keys: Ints = usage_key(
        np.array([u[0] for u in usage], dtype=I64),
        np.array([u[1] for u in usage], dtype=I64),
        np.array([u[2] for u in usage], dtype=I64),
    )
    return TableUpdate(
        rows=np.array(row_list, dtype=I64),
        books=np.array(books, dtype=I64).reshape(-1, 6),
        bundle_cycles=b[:, 0],
        bundle_ids=b[:, 1],
        bundle_rows=b[:, 2],
        bundle_used=b[:, 3],
        usage_keys=keys,
        usage_values=np.array([u[3] for u in usage], dtype=I64).reshape(-1, 5),
        reminders=reminders,
        profiles=profiles,
    )
