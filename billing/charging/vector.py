"""The vectorised path of columnar charging: accounts whose batch crosses no boundary.

:func:`decide` charges the records of many accounts at once with array
operations and names the accounts it cannot charge that way (``failed``),
which :mod:`billing.charging.columnar` hands to the reference path whole.
An account is charged here when its records of the batch, taken in order,
provably do what the reference path would do without any of these events:

- **a bundle running out**: per (account, cycle, first bundle of the record's
  chain) the records' units either all fit in what the bundle has left at
  the start of the batch (each record fully covered, nothing repriced), or
  every bundle of the chain had nothing left at the start (nothing covered);
- **a balance or credit limit**: the account stays in one funding regime for
  the whole batch — prepaid money covers every charge; or the prepaid
  balance is at or below zero from the start (prepaid: all to debt, or all
  refused, by policy; hybrid: all under the postpaid rules); or postpaid
  charges all fit under the limit, or the account was at or over its limit
  from the start (all over the limit, or all refused online), and blocking
  over the limit does not apply;
- **a reminder threshold**: for every threshold the batch evaluates (low
  balance, credit percentages, debt, bundle percentages) the value is on
  the same side before and after the batch, and that side agrees with the
  account's reminder keys, so no notification is emitted and no key is
  set or re-armed. The values only move one way during a charging batch,
  so equal sides at both ends mean equal sides at every record. Entering a
  new reminder cycle (it clears the keys) is allowed and recorded;
- **more than one cycle** among the account's charged records, a negative
  value, or one too large to compare in int64 without overflow.

Refusals that depend on nothing but the record and the account's profile
(closed, blocked online, currency mismatch) and sponsored records whose
sponsor is on another shard are decided here too. What this module never
sees (the caller routes them to the reference path first): duplicate or
conflicting record ids, accounts with sponsor rules, reservations or bundle
holds, sponsors held in the same table, and bundle chains that list one
bundle twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from billing.accounts import AccountStatus, PaymentMode
from billing.bundles import Tariff
from billing.charging.charge_input import ChargeInput
from billing.charging.codes import I64, Groups, Ints
from billing.charging.config import ChargingConfig, OfflinePolicy
from billing.charging.table import MODES, STATUSES, AccountTable, TableUpdate
from billing.charging.usage_store import usage_key
from billing.notifications import NotificationKind
from billing.outcome import Result
from billing.reminders import reminder_key

__all__ = ["RESULTS", "Chains", "VectorOutcome", "code_of", "decide"]

RESULTS: tuple[Result, ...] = tuple(Result)
_CODE = {r: i for i, r in enumerate(RESULTS)}
PREPAID, POSTPAID, HYBRID = (MODES.index(m) for m in PaymentMode)
ACTIVE, BLOCKED, CLOSED = (STATUSES.index(s) for s in AccountStatus)
# |values| compared after a multiplication by a percentage stay below 2**63.
_BIG = 1 << 55
_PERCENT_MAX = 255  # (2**55) * 256 would not fit
_SHIFT_CYCLE, _SHIFT_ROW = 16, 32
_CHARGED_CODES = np.array(
    [_CODE[r] for r in (Result.CHARGED, Result.CHARGED_TO_DEBT, Result.CHARGED_OVER_LIMIT)],
    dtype=np.int64,
)

Bools = npt.NDArray[np.bool_]


def code_of(result: Result) -> int:
    """The int code of ``result`` in :data:`RESULTS`."""
    return _CODE[result]


class Chains:
    """The bundle chain (consumption order) of each record, from its plan and usage class.

    ``first``/``allowance``: code and allowance of the chain's first bundle per
    record (``-1``: no bundle); ``later``/``later_allowance``: the rest, padded
    with ``-1``; ``repeated``: the chain lists one bundle id twice.
    """

    __slots__ = ("allowance", "first", "later", "later_allowance", "repeated")

    def __init__(self, batch: ChargeInput, table: AccountTable, tariff: Tariff) -> None:
        n = len(batch)
        pair = batch.plan << 20 | batch.usage_class
        distinct, inverse = np.unique(pair, return_inverse=True)
        chains: list[tuple[list[int], list[int], bool]] = []
        plans, classes = table.plans.names, table.classes.names
        for key in distinct.tolist():
            plan_id, plan_version = plans[key >> 20]
            bundles = tariff.bundles_for(plan_id, plan_version, classes[key & 0xFFFFF])
            ids = [b.bundle_id for b in bundles]
            codes = [table.bundles.code(i) for i in ids]
            chains.append((codes, [b.units for b in bundles], len(set(ids)) != len(ids)))
        width = max([len(c) for c, _, _ in chains] + [1])
        table_codes = np.full((len(chains), width), -1, dtype=I64)
        allowances = np.zeros((len(chains), width), dtype=I64)
        repeated = np.zeros(len(chains), dtype=bool)
        for k, (c, a, dup) in enumerate(chains):
            table_codes[k, : len(c)] = c
            allowances[k, : len(a)] = a
            repeated[k] = dup
        inverse = inverse.reshape(n)
        self.first: Ints = table_codes[inverse, 0] if n else np.zeros(0, dtype=I64)
        self.allowance: Ints = allowances[inverse, 0] if n else np.zeros(0, dtype=I64)
        self.later: Ints = table_codes[inverse, 1:] if n else np.zeros((0, 0), dtype=I64)
        self.later_allowance: Ints = allowances[inverse, 1:] if n else np.zeros((0, 0), dtype=I64)
        self.repeated: Bools = repeated[inverse] if n else np.zeros(0, dtype=bool)


@dataclass(frozen=True, slots=True, kw_only=True)
class VectorOutcome:
    """The records :func:`decide` charged (batch positions ``records``, ascending) with
    their columns, the table rows it could not charge (``failed``), and the table
    changes of the accounts it charged."""

    records: Ints
    result: Ints
    cycle: Ints
    covered: Ints
    amount: Ints
    prepaid: Ints
    unbilled: Ints
    debt: Ints
    failed: Ints
    update: TableUpdate
    declined: dict[str, int]


class _Declines:
    """The accounts declined so far (``fail``) and how many for each reason (an account
    counts under every reason that applies to it)."""

    __slots__ = ("counts", "fail")

    def __init__(self, accounts: int) -> None:
        self.fail = np.zeros(accounts, dtype=bool)
        self.counts: dict[str, int] = {}

    def add(self, reason: str, mask: Bools) -> None:
        hits = int(mask.sum())
        if hits:
            self.counts[reason] = self.counts.get(reason, 0) + hits
            self.fail |= mask


class _KeyMemo:
    """The reminder keys a batch compares, per cycle code and per (cycle, bundle) code."""

    __slots__ = (
        "_accounts",
        "_bundles",
        "bundle_percents",
        "credit_percents",
        "table",
        "threshold",
    )

    def __init__(
        self,
        table: AccountTable,
        threshold: int,
        credit_percents: tuple[int, ...],
        bundle_percents: tuple[int, ...],
    ) -> None:
        self.table = table
        self.threshold = threshold
        self.credit_percents = credit_percents
        self.bundle_percents = bundle_percents
        self._accounts: dict[int, tuple[str, str, tuple[str, ...]]] = {}
        self._bundles: dict[tuple[int, int], tuple[str, ...]] = {}

    def account(self, cycle: int) -> tuple[str, str, tuple[str, ...]]:
        """The low-balance, debt and credit-percent keys of ``cycle``."""
        found = self._accounts.get(cycle)
        if found is None:
            cycle_id = self.table.cycles.names[cycle]
            found = self._accounts[cycle] = (
                reminder_key(cycle_id, NotificationKind.LOW_BALANCE, str(self.threshold)),
                reminder_key(cycle_id, NotificationKind.DEBT_POSTED, "debt"),
                tuple(
                    reminder_key(cycle_id, NotificationKind.CREDIT_LIMIT, str(p))
                    for p in self.credit_percents
                ),
            )
        return found

    def bundle(self, cycle: int, bundle: int) -> tuple[str, ...]:
        """The bundle-percent keys of ``bundle`` in ``cycle``."""
        found = self._bundles.get((cycle, bundle))
        if found is None:
            cycle_id, bundle_id = self.table.cycles.names[cycle], self.table.bundles.names[bundle]
            found = self._bundles[(cycle, bundle)] = tuple(
                reminder_key(cycle_id, NotificationKind.BUNDLE_USAGE, f"{bundle_id}@{p}")
                for p in self.bundle_percents
            )
        return found


def _past_credit(owed: Ints, limit: Ints, percent: int) -> Bools:
    return (owed > 0) & (owed * 100 >= limit * percent)


def decide(
    batch: ChargeInput,
    table: AccountTable,
    candidates: Ints,
    *,
    cycle: Ints,
    rank: Ints,
    chains: Chains,
    sponsored: Bools,
    config: ChargingConfig,
    offline: bool,
) -> VectorOutcome:
    """Charge the records at ``candidates`` whose accounts cross no boundary (module
    docstring). ``cycle``: the cycle code of every record of the batch; ``rank``: the
    chronological rank of each cycle code; ``sponsored``: per record, whether a
    sponsor on another shard pays for it."""
    idx = candidates
    m = len(idx)
    rows = batch.account[idx]
    cyc = cycle[idx]
    units = batch.units[idx]
    rated_amount = batch.amount[idx]
    result = np.full(m, code_of(Result.CHARGED), dtype=I64)

    # Refusals decided by the profile alone, in the reference's order.
    status = table.status[rows]
    refused = status == CLOSED
    result[refused] = code_of(Result.ACCOUNT_CLOSED)
    if not offline:
        blocked = (status == BLOCKED) & ~refused
        result[blocked] = code_of(Result.ACCOUNT_BLOCKED)
        refused |= blocked
    mismatch = (batch.currency[idx] != table.currency[rows]) & ~refused
    result[mismatch] = code_of(Result.CURRENCY_MISMATCH)
    refused |= mismatch
    spons = sponsored[idx] & ~refused
    result[spons] = code_of(Result.SPONSORED)
    live = ~refused & ~spons  # the records that reach bundles and money

    accounts = Groups(rows)
    group = accounts.group
    arow = accounts.keys_of
    declines = _Declines(accounts.count)
    fail = declines.fail
    odd = (units < 0) | (units > _BIG) | (rated_amount < 0) | (rated_amount > _BIG)
    declines.add("value", accounts.any(live & odd))
    lowest = np.iinfo(np.int64).max
    cmin = np.minimum.reduceat(np.where(live, cyc, lowest)[accounts.order], accounts.starts)
    cmax = np.maximum.reduceat(np.where(live, cyc, -1)[accounts.order], accounts.starts)
    declines.add("cycles", (cmax >= 0) & (cmin != cmax))
    acct_cycle = cmax  # the one cycle of an account's charged records (-1: none)

    # Bundles: per (account, cycle, first bundle), all covered or nothing to cover with.
    first = chains.first[idx]
    bundled = live & (first >= 0) & (units > 0)
    covered = np.zeros(m, dtype=I64)
    bi = np.flatnonzero(bundled)
    b_rows, b_cyc, b_first = rows[bi], cyc[bi], first[bi]
    used0 = table.used(b_cyc, b_first, b_rows)
    free0 = chains.allowance[idx][bi] - used0
    later = chains.later[idx][bi]
    later_free = np.full(len(bi), -1, dtype=I64)
    for j in range(later.shape[1] if later.ndim == 2 else 0):
        has = later[:, j] >= 0
        if has.any():
            free_j = chains.later_allowance[idx][bi][has, j] - table.used(
                b_cyc[has], later[has, j], b_rows[has]
            )
            later_free[has] = np.maximum(later_free[has], free_j)
    bgroups = Groups(b_rows << _SHIFT_ROW | b_cyc << _SHIFT_CYCLE | b_first)
    g_total = bgroups.sum(units[bi])
    head = bgroups.order[bgroups.starts] if bgroups.count else np.zeros(0, dtype=I64)
    g_free = free0[head]
    g_full = g_total <= g_free
    g_allowance = chains.allowance[idx][bi][head] if bgroups.count else np.zeros(0, dtype=I64)
    g_used0 = used0[head] if bgroups.count else np.zeros(0, dtype=I64)
    g_big = (g_allowance > _BIG) | (np.abs(g_used0) > _BIG) | (g_total > _BIG)
    g_empty = ~bgroups.any(~((free0 <= 0) & (later_free <= 0)))
    g_account = group[bi][head]
    bad = np.zeros(accounts.count, dtype=bool)
    bad[g_account[~(g_full | g_empty) | g_big]] = True
    declines.add("bundle", bad)
    covered[bi] = np.where(bgroups.spread(g_full), units[bi], 0)
    amount = np.where(live & (covered == 0), rated_amount, 0)

    # Money: one funding regime per account for the whole batch.
    pos = live & (amount > 0)
    total = accounts.sum(np.where(pos, amount, 0))
    mode = table.mode[arow]
    prepaid0, unbilled0, debt0 = table.prepaid[arow], table.unbilled[arow], table.debt[arow]
    owed0 = -(unbilled0 + table.receivable[arow] + debt0) - table.credit[arow]
    limited, limit = table.limited[arow], table.limit[arow]
    huge = (np.abs(prepaid0) > _BIG) | (np.abs(owed0) > _BIG) | (limit > _BIG)
    declines.add("value", huge | (np.abs(debt0) > _BIG) | (total > _BIG))
    money = total > 0
    regime_a = money & (mode != POSTPAID) & (total <= prepaid0)
    prepaid_b = money & (mode == PREPAID) & (prepaid0 <= 0)
    regime_c = money & ((mode == POSTPAID) | ((mode == HYBRID) & (prepaid0 <= 0)))
    available0 = np.maximum(limit - owed0, 0)
    within = regime_c & (~limited | (total <= available0))
    over = regime_c & limited & ~within & (available0 == 0)
    declines.add("funds", money & ~(regime_a | prepaid_b | within | over))
    if offline and config.block_over_limit:
        declines.add("block", over & (table.status[arow] == ACTIVE))

    prepaid = np.where(pos & regime_a[group], amount, 0)
    unbilled = np.where(pos & within[group], amount, 0)
    debt = np.zeros(m, dtype=I64)
    if offline:
        over_rec = pos & over[group]
        unbilled = np.where(over_rec, amount, unbilled)
        result[over_rec] = code_of(Result.CHARGED_OVER_LIMIT)
        b_rec = pos & prepaid_b[group]
        if config.offline_policy is OfflinePolicy.DEBT:
            debt = np.where(b_rec, amount, 0)
            result[b_rec] = code_of(Result.CHARGED_TO_DEBT)
        else:
            result[b_rec] = code_of(Result.REJECTED_OFFLINE)
    else:
        over_rec = pos & over[group]
        result[over_rec & (mode[group] == POSTPAID)] = code_of(Result.CREDIT_LIMIT_EXCEEDED)
        result[over_rec & (mode[group] == HYBRID)] = code_of(Result.INSUFFICIENT_BALANCE)
        result[pos & prepaid_b[group]] = code_of(Result.INSUFFICIENT_BALANCE)
    charged = live & np.isin(result, _CHARGED_CODES)
    money_refused = live & ~charged
    amount = np.where(money_refused, 0, amount)
    p_total, u_total, d_total = accounts.sum(prepaid), accounts.sum(unbilled), accounts.sum(debt)

    # Reminders: every threshold the batch evaluates stays on its side (module docstring).
    rc = table.reminder_cycle[arow]
    has_cycle = acct_cycle >= 0
    safe_cycle = np.where(has_cycle, acct_cycle, 0)
    late = has_cycle & (rc >= 0) & (rank[safe_cycle] < rank[np.maximum(rc, 0)])
    same = has_cycle & (acct_cycle == rc)
    took = accounts.any(covered > 0)
    credit_checked = (u_total > 0) & limited & (mode != PREPAID)
    checks = has_cycle & ~late & (took | (p_total > 0) | (d_total > 0) | credit_checked)
    entering = checks & ~same
    # Entering a cycle keeps the keys and counts already of that cycle (enter_cycle); a
    # state only holds such keys if it was put together by hand, but then the reference
    # decides: the vectorised path clears the reminder state of the accounts it enters.
    holding = np.flatnonzero(entering & (table.reminded[arow] | table.counted[arow]))
    if len(holding):
        keys_held, counts_held, names = table.reminders, table.crossings, table.cycles.names
        ahead = np.zeros(accounts.count, dtype=bool)
        for a in holding.tolist():
            row = int(arow[a])
            prefix = names[int(acct_cycle[a])] + "|"
            listed = (*keys_held.get(row, ()), *counts_held.get(row, {}))
            ahead[a] = any(k.startswith(prefix) for k in listed)
        declines.add("reminder_state", ahead)
    reminders = config.reminders
    threshold = reminders.low_balance_micros
    low_touched = checks & (p_total > 0)
    debt_touched = checks & (d_total > 0)
    credit_touched = checks & credit_checked
    n_acct = accounts.count
    crossed_low = np.zeros(n_acct, dtype=bool)
    crossed_debt = np.zeros(n_acct, dtype=bool)
    crossed_credit = {p: np.zeros(n_acct, dtype=bool) for p in reminders.credit_percents}
    g_took = g_full & (g_total > 0)
    crossed_bundle = {p: np.zeros(bgroups.count, dtype=bool) for p in reminders.bundle_percents}
    lookups = np.flatnonzero(checks & same & table.reminded[arow])
    if len(lookups):
        # The keys depend on the cycle (and bundle) only: built once per batch, then one
        # set-membership test per account and key.
        keys_of = _KeyMemo(table, threshold, reminders.credit_percents, reminders.bundle_percents)
        held = table.reminders
        sets = [held[r] for r in arow[lookups].tolist()]
        wanted = [keys_of.account(c) for c in acct_cycle[lookups].tolist()]
        crossed_low[lookups] = [k[0] in s for k, s in zip(wanted, sets, strict=True)]
        crossed_debt[lookups] = [k[1] in s for k, s in zip(wanted, sets, strict=True)]
        for j, flags in enumerate(crossed_credit.values()):
            flags[lookups] = [k[2][j] in s for k, s in zip(wanted, sets, strict=True)]
        groups_at = np.flatnonzero(g_took & np.isin(g_account, lookups))
        if len(groups_at):
            owner = g_account[groups_at]
            sets = [held[r] for r in arow[owner].tolist()]
            wanted_b = [
                keys_of.bundle(c, b)
                for c, b in zip(
                    acct_cycle[owner].tolist(), b_first[head[groups_at]].tolist(), strict=True
                )
            ]
            for j, flags in enumerate(crossed_bundle.values()):
                flags[groups_at] = [k[j] in s for k, s in zip(wanted_b, sets, strict=True)]
    if max((*reminders.credit_percents, *reminders.bundle_percents), default=0) > _PERCENT_MAX:
        declines.add("value", credit_touched | took)  # products int64 cannot hold
    declines.add(
        "low_balance",
        low_touched
        & (
            ((prepaid0 < threshold) != crossed_low)
            | ((prepaid0 - p_total < threshold) != crossed_low)
        ),
    )
    past_debt = ((debt0 < 0) != crossed_debt) | ((debt0 - d_total < 0) != crossed_debt)
    declines.add("debt", debt_touched & past_debt)
    for p, flags in crossed_credit.items():
        before, after = _past_credit(owed0, limit, p), _past_credit(owed0 + u_total, limit, p)
        declines.add("credit", credit_touched & ((before != flags) | (after != flags)))
    g_checked = g_took & checks[g_account] if bgroups.count else np.zeros(0, dtype=bool)
    for p, flags in crossed_bundle.items():
        before = g_used0 * 100 >= g_allowance * p
        after = (g_used0 + g_total) * 100 >= g_allowance * p
        bad_groups = g_checked & ((before != flags) | (after != flags))
        bad = np.zeros(accounts.count, dtype=bool)
        bad[g_account[bad_groups]] = True
        declines.add("bundle_reminder", bad)

    # What the accounts charged here write: everything of the accounts that did not fail.
    keep = ~fail[group]
    kept = np.flatnonzero(keep)
    decided_cycle = np.where(charged | spons, cyc, -1)
    line = keep & (charged | spons)
    usage_groups = Groups(usage_key(rows[line], cyc[line], batch.usage_class[idx][line]))
    lines = np.stack(
        [
            np.ones(int(line.sum()), dtype=I64),
            units[line],
            covered[line],
            amount[line],
            unbilled[line],
        ],
        axis=1,
    )
    usage_values = (
        np.add.reduceat(lines[usage_groups.order], usage_groups.starts, axis=0)
        if usage_groups.count
        else np.zeros((0, 5), dtype=I64)
    )
    moved = ~fail & ((p_total > 0) | (u_total > 0) | (d_total > 0))
    book_rows = arow[moved]
    books = np.stack(
        [
            table.column(b)[book_rows]
            for b in ("prepaid", "reserved", "unbilled", "receivable", "credit", "debt")
        ],
        axis=1,
    )
    books[:, 0] -= p_total[moved]
    books[:, 2] -= u_total[moved]
    books[:, 5] -= d_total[moved]
    g_keep = g_took & ~fail[g_account] if bgroups.count else np.zeros(0, dtype=bool)
    enter = entering & ~fail
    update = TableUpdate(
        rows=book_rows,
        books=books,
        bundle_cycles=b_cyc[head][g_keep] if bgroups.count else np.zeros(0, dtype=I64),
        bundle_ids=b_first[head][g_keep] if bgroups.count else np.zeros(0, dtype=I64),
        bundle_rows=b_rows[head][g_keep] if bgroups.count else np.zeros(0, dtype=I64),
        bundle_used=(g_used0 + g_total)[g_keep] if bgroups.count else np.zeros(0, dtype=I64),
        usage_keys=usage_groups.keys_of,
        usage_values=usage_values,
        entered_rows=arow[enter],
        entered_cycles=acct_cycle[enter],
    )
    return VectorOutcome(
        records=idx[kept],
        result=result[kept],
        cycle=decided_cycle[kept],
        covered=covered[kept],
        amount=amount[kept],
        prepaid=prepaid[kept],
        unbilled=unbilled[kept],
        debt=debt[kept],
        failed=arow[fail],
        update=update,
        declined=declines.counts,
    )
