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

**Batch and purity.** :func:`charge_batch` makes one working copy of each
touched account per batch (``billing.charging.step.working_copy``) and works on
the copies; the handed-in states and their containers are never mutated. It
emits one compact :class:`Charge` row per record; the row derives its ledger
entry and idempotency mark on demand (``Effects.entries`` / ``Effects.marks``).

**Two paths, one behaviour.** :func:`charge_batch` handles the common record
inline — a fresh id, an active account in the record's currency, no sponsor,
bundles and money decided without a refusal, no reminder threshold near — and
hands every other record to the general path
(:class:`billing.charging.step.ChargeBatch`, which :func:`charge` uses too).
Both produce the same rows, states, notifications and effects in the same
order; tests/test_charging_fast.py compares them on random batches.

**Layout.** The rows and what derives from them are in
:mod:`billing.charging.rows`, the policy and calendar in
:mod:`billing.charging.config`, the money decision in :mod:`billing.funding`,
top-ups in :mod:`billing.topup`; their names are re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from billing.accounts import AccountState, AccountStatus, PaymentMode
from billing.bundles import Tariff
from billing.charging.config import Calendar, ChargingConfig, OfflinePolicy, calendar_for
from billing.charging.rows import (
    CASH,
    Charge,
    MarkStore,
    add_usage,
    billing_usage,
    charge_fields,
    new_row,
    revenue_key,
)
from billing.charging.step import ChargeBatch, price_after_bundles, working_copy
from billing.funding import post_money, split_money
from billing.history import appended
from billing.notifications import NotificationKind
from billing.outcome import CHARGED_RESULTS, Outcome, Result
from billing.rated import RatedRecord
from billing.reminders import (
    check_bundle,
    check_credit,
    check_low_balance,
    enter_cycle,
    reminder_key,
)
from billing.topup import TopUp, top_up

__all__ = [
    "CASH",
    "Calendar",
    "Charge",
    "ChargingConfig",
    "MarkStore",
    "OfflinePolicy",
    "TopUp",
    "add_usage",
    "billing_usage",
    "calendar_for",
    "charge",
    "charge_batch",
    "charge_fields",
    "post_money",
    "revenue_key",
    "split_money",
    "top_up",
]

# What the inline path needs to know of a (plan, plan version, usage class) in one cycle:
# the usage-totals key ``(cycle_id, usage_class)``; the bundles in consumption order as
# ``((cycle_id, bundle_id), bundle_id, allowance, bundle reminder keys)``; and whether the
# inline path may charge the class at all (not when a catalogue sponsor pays for it, nor
# when a plan lists one bundle id twice). The keys are built once per batch and shared by
# every account's containers, so copying a container does not touch a key of its own.
_Bundles = tuple[tuple[tuple[str, str], str, int, tuple[str, ...]], ...]
_ClassInfo = tuple[tuple[str, str], _Bundles, bool]


def _class_info(
    tariff: Tariff,
    cycle_id: str,
    class_key: tuple[str, str, str],
    bundle_percents: tuple[int, ...],
) -> _ClassInfo:
    plan_id, plan_version, usage_class = class_key
    bundles = tariff.bundles_for(plan_id, plan_version, usage_class)
    ids = [b.bundle_id for b in bundles]
    inline = tariff.sponsor_for(usage_class) is None and len(set(ids)) == len(ids)
    return (
        (cycle_id, usage_class),
        tuple(
            (
                (cycle_id, b.bundle_id),
                b.bundle_id,
                b.units,
                tuple(
                    reminder_key(cycle_id, NotificationKind.BUNDLE_USAGE, f"{b.bundle_id}@{p}")
                    for p in bundle_percents
                ),
            )
            for b in bundles
        ),
        inline,
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
    # The loop below is the hot path of the whole system: everything it touches is bound
    # to a local first, every record it is not sure about goes to the general path, which
    # applies all the rules, and it allocates as few containers as it can, since each one
    # costs again when the cyclic GC traverses it.
    batch = ChargeBatch(accounts, marks, tariff, config)
    answer: list[Charge] = []
    answer_append = answer.append
    rows_append = batch.rows.append
    notes = batch.notes
    seen = batch.seen
    changed = batch.changed
    changed_get = changed.get
    owned = batch.owned
    own = batch.own
    general = batch.charge
    refuse = batch.refuse
    directory_get = directory.get
    accounts_get = accounts.get
    marks_get = marks.get
    class_memos: dict[str, dict[tuple[str, str, str], _ClassInfo]] = {}
    class_memo: dict[tuple[str, str, str], _ClassInfo] = {}
    cycle_memo: dict[str, tuple[str, tuple[str, ...]]] = {}
    calendar = batch.calendar
    reminder_config = config.reminders
    low_threshold = reminder_config.low_balance_micros
    low_subject = str(low_threshold)
    bundle_percents = reminder_config.bundle_percents
    bundle_floor = min(bundle_percents) if bundle_percents else None
    credit_percents = reminder_config.credit_percents
    credit_floor = min(credit_percents) if credit_percents else None
    history_max = config.history_max
    ACTIVE = AccountStatus.ACTIVE
    PREPAID = PaymentMode.PREPAID
    POSTPAID = PaymentMode.POSTPAID
    CHARGED = Result.CHARGED
    cycle_start = cycle_end = 0
    cycle_id = ""
    low_key = ""
    credit_keys: tuple[str, ...] = ()
    row: Charge

    for rated in records:
        record = rated.record
        account_id = directory_get(record.served_msisdn)
        if account_id is None:
            answer_append(refuse(rated, "", Result.UNKNOWN_ACCOUNT, at_s))
            continue
        state = changed_get(account_id)
        if state is None:
            original = accounts_get(account_id)
            if original is not None:
                state = changed[account_id] = working_copy(original)
        record_id = record.record_id
        t_s = record.record_opening_time_s
        if not cycle_start <= t_s < cycle_end:
            cycle = calendar.cycle_of(t_s)
            cycle_start, cycle_end, cycle_id = cycle.start_s, cycle.end_s, cycle.cycle_id
            cycle_keys = cycle_memo.get(cycle_id)
            if cycle_keys is None:
                cycle_keys = cycle_memo[cycle_id] = (
                    reminder_key(cycle_id, NotificationKind.LOW_BALANCE, low_subject),
                    tuple(
                        reminder_key(cycle_id, NotificationKind.CREDIT_LIMIT, str(percent))
                        for percent in credit_percents
                    ),
                )
                class_memos[cycle_id] = {}
            low_key, credit_keys = cycle_keys
            class_memo = class_memos[cycle_id]
        usage_class = rated.usage_class
        class_key = (rated.plan_id, rated.plan_version, usage_class)
        info = class_memo.get(class_key)
        if info is None:
            info = class_memo[class_key] = _class_info(tariff, cycle_id, class_key, bundle_percents)
        usage_key, bundles, inline = info
        account = state.account if state is not None else None
        if (
            state is None
            or account is None
            or not inline
            or account.sponsor_rules
            or account.status is not ACTIVE
            or rated.currency != account.currency
            or record_id in seen
            or marks_get(record_id) is not None
        ):
            row = general(rated, account_id, at_s, offline)
            answer_append(row)
            if row.rated is not None:
                rows_append(row)
            continue

        # Bundles first, narrowest first: how much they cover. The units are taken below,
        # once money is settled (the same walk again: nothing changes the bundles between).
        units = rated.units
        covered = 0
        if bundles and units:
            used_get = state.bundle_used.get
            held = state.bundle_held
            left = units
            for key, _, allowance, _ in bundles:
                free = allowance - used_get(key, 0)
                if held:
                    free -= held.get(key, 0)
                if free > 0:
                    if free >= left:
                        left = 0
                        break
                    left -= free
            covered = units - left
        amount = price_after_bundles(rated, covered, tariff) if covered else rated.amount

        # Money: the common cases inline, the rest by split_money.
        result = CHARGED
        prepaid = unbilled = debt = 0
        if amount:
            mode = account.payment_mode
            limit = account.credit_limit
            if mode is PREPAID and amount <= state.prepaid:
                prepaid = amount
            elif (mode is POSTPAID and limit is None) or (
                mode is POSTPAID
                and limit is not None
                and not state.reservations
                and amount <= limit - state.owed()
            ):
                unbilled = amount
            else:
                result, prepaid, unbilled, debt = split_money(state, amount, offline, config)
                if result not in CHARGED_RESULTS:
                    answer_append(refuse(rated, account_id, result, at_s))
                    continue

        row = new_row(
            Charge,
            (
                record_id,
                "usage:" + record_id,
                account_id,
                result,
                cycle_id,
                record.service._value_,
                usage_class,
                units,
                covered,
                amount,
                prepaid,
                unbilled,
                debt,
                rated.currency,
                at_s,
                None,
                None,
                rated,
                None,
            ),
        )
        if covered:
            used = state.bundle_used
            used_get = used.get
            held = state.bundle_held
            left = covered
            for key, bundle_id, allowance, keys in bundles:
                free = allowance - used_get(key, 0)
                if held:
                    free -= held.get(key, 0)
                if free <= 0:
                    continue
                take = free if free < left else left
                now = used[key] = used_get(key, 0) + take
                left -= take
                # A reminder check that cannot change anything is skipped: below the lowest
                # threshold and none of this bundle's thresholds marked crossed. Entering the
                # cycle is done here as the check would do it first; it replaces the reminder
                # containers instead of writing them, so the state need not be owned for it.
                # A late record (an earlier cycle) evaluates no reminders.
                if state.reminder_cycle == cycle_id or enter_cycle(state, cycle_id):
                    reminders = state.reminders
                    if (bundle_floor is not None and now * 100 >= allowance * bundle_floor) or (
                        reminders and not reminders.isdisjoint(keys)
                    ):
                        if account_id not in owned:
                            own(state)
                        check_bundle(
                            state, reminder_config, cycle_id, bundle_id, allowance, at_s, notes
                        )
                if not left:
                    break
        if amount:
            if result is CHARGED and not debt:
                if prepaid:
                    balance = state.prepaid = state.prepaid - prepaid
                    if (state.reminder_cycle == cycle_id or enter_cycle(state, cycle_id)) and (
                        balance < low_threshold or low_key in state.reminders
                    ):
                        if account_id not in owned:
                            own(state)
                        check_low_balance(state, reminder_config, cycle_id, at_s, notes)
                if unbilled:
                    state.unbilled -= unbilled
                    limit = account.credit_limit
                    if limit is not None and (
                        state.reminder_cycle == cycle_id or enter_cycle(state, cycle_id)
                    ):
                        owed = state.owed()
                        reminders = state.reminders
                        if (
                            credit_floor is not None
                            and owed > 0
                            and owed * 100 >= limit * credit_floor
                        ) or (reminders and not reminders.isdisjoint(credit_keys)):
                            if account_id not in owned:
                                own(state)
                            check_credit(state, reminder_config, cycle_id, at_s, notes)
            else:
                if account_id not in owned:
                    own(state)
                post_money(state, result, prepaid, unbilled, debt, cycle_id, at_s, config, notes)

        # Usage totals and history (billing.charging.rows.add_usage, inlined).
        usage = state.usage
        old = usage.get(usage_key)
        if old is None:
            usage[usage_key] = (1, units, covered, amount, unbilled)
        else:
            usage[usage_key] = (
                old[0] + 1,
                old[1] + units,
                old[2] + covered,
                old[3] + amount,
                old[4] + unbilled,
            )
        state.history = appended(state.history, row, history_max)
        seen[record_id] = row
        rows_append(row)
        answer_append(row)
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
    batch = ChargeBatch(accounts, marks, tariff, config)
    row = batch.charge(rated, state.account.account_id, at_s, offline)
    if row.rated is None:
        return Outcome(result=row.result, receipt=row)  # refused or replayed: nothing changed
    batch.rows.append(row)
    outcome = batch.outcome((row,))
    return Outcome(result=row.result, receipt=row, effects=outcome.effects)
