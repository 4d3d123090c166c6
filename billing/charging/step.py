"""The general charging path: one record at a time, every rule of ``billing.charging.batch``.

:class:`ChargeBatch` holds the working state of one charging call — working
copies of the touched accounts, the rows, notifications and forwards — and
charges one record with :meth:`ChargeBatch.charge` (a sponsor's line with
:meth:`ChargeBatch.charge_sponsor`). ``charge``, ``charge_sponsored`` and the
uncommon records of ``charge_batch`` go through it; ``charge_batch`` handles
the common records inline (``billing.charging.batch``) and must agree with this path
row for row (tests/test_charging_fast.py holds it to that).

**Working copies.** An account is copied once per batch, on first touch
(:func:`working_copy`): the containers charging writes on every record
(``bundle_used``, ``usage``) are copied, those it never writes
(``bundle_held``, ``reservations``) are shared with the handed-in state, the
usage history is a read-only sequence that charging replaces
(``billing.history``), and the reminder containers (``reminders``,
``crossings``) are shared until a reminder may write them
(:meth:`ChargeBatch.own`). The handed-in states and their containers are
never mutated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from billing.accounts import AccountState, AccountStatus
from billing.bundles import Bundle, Tariff
from billing.charging.config import ChargingConfig, calendar_for
from billing.charging.rows import Charge, MarkStore, add_usage, charge_fields
from billing.funding import post_money, split_money
from billing.idempotency import Conflict, Mark, Replay, check
from billing.notifications import Notification
from billing.outcome import CHARGED_RESULTS, Effects, Outcome, Result, conflict_result
from billing.rated import RatedRecord
from billing.reminders import check_bundle
from billing.sponsor import SponsoredUsage, Sponsorship, resolve_sponsor

__all__ = ["ChargeBatch", "price_after_bundles", "working_copy"]


def price_after_bundles(rated: RatedRecord, covered: int, tariff: Tariff) -> int:
    """What a record costs once bundles covered ``covered`` of its units."""
    if not covered:
        return rated.amount
    if covered == rated.units:
        return 0  # a zero-length remainder costs nothing (billing.bundles, "Units")
    return tariff.reprice(rated, rated.units - covered)


def working_copy(state: AccountState) -> AccountState:
    """A copy of ``state`` for one charging batch (module docstring, "Working copies")."""
    new = AccountState.__new__(AccountState)
    new.account = state.account
    new.prepaid = state.prepaid
    new.reserved = state.reserved
    new.unbilled = state.unbilled
    new.receivable = state.receivable
    new.credit = state.credit
    new.debt = state.debt
    new.bundle_used = dict(state.bundle_used)
    new.bundle_held = state.bundle_held
    new.usage = dict(state.usage)
    new.reservations = state.reservations
    new.reminders = state.reminders
    new.crossings = state.crossings
    new.reminder_cycle = state.reminder_cycle
    new.history = state.history  # read-only: appended to by billing.history.appended
    return new


class ChargeBatch:
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
        "owned",
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
        self.owned: set[str] = set()
        self.rows: list[Charge] = []
        self.notes: list[Notification] = []
        self.forwards: list[SponsoredUsage] = []
        self.seen: dict[str, Charge] = {}

    def state(self, account_id: str, *, owned: bool = True) -> AccountState | None:
        """The batch's working copy of ``account_id``; ``owned`` (the default) gives it its
        own reminder containers first, so any rule may write it."""
        found = self.changed.get(account_id)
        if found is None:
            original = self.accounts.get(account_id)
            if original is None:
                return None
            found = self.changed[account_id] = working_copy(original)
        if owned and account_id not in self.owned:
            self.own(found)
        return found

    def own(self, state: AccountState) -> None:
        """Give ``state`` its own reminder containers before a reminder may write them."""
        state.reminders = set(state.reminders)
        state.crossings = dict(state.crossings)
        self.owned.add(state.account.account_id)

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
            return found._replace(result=Result.DUPLICATE, rated=None, replay_of=found.result)
        if isinstance(decision, Conflict):
            return conflict_result(decision)
        return None  # pragma: no cover - check returns one of three

    def charge(self, rated: RatedRecord, account_id: str, at_s: int, offline: bool) -> Charge:
        """Charge one record to ``account_id`` (the subscriber)."""
        record_id = rated.record.record_id
        # Not owned yet: refusals and sponsored lines write no reminder (the copy is owned
        # below, before bundles and money).
        state = self.state(account_id, owned=False)
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
        if account_id not in self.owned:
            self.own(state)
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
        amount = price_after_bundles(rated, covered, tariff)
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
            elif sponsor_row.result is not Result.DUPLICATE:
                # Refused here: forwarded like a remote sponsor's half, so the sponsor's
                # shard keeps the refusal (sponsor_refused) until it is reprocessed.
                self.forwards.append(usage)
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
