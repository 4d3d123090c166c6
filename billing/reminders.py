"""Reminders: threshold crossings that notify a customer at most once per crossing per cycle.

Thresholds (``ReminderConfig``):

- **low balance** — the prepaid balance of a prepaid or hybrid account is
  below ``low_balance_micros``;
- **bundle** — a bundle's consumed units reach ``p`` percent of its allowance,
  for each ``p`` in ``bundle_percents`` (default 80 and 100);
- **credit limit** — a postpaid or hybrid account's exposure
  (``AccountState.owed()``) reaches ``p`` percent of its credit limit, for each
  ``p`` in ``credit_percents`` (default 90 and 100); unlimited accounts never;
- **debt** — offline usage was posted to ``Book.DEBT``.

**Once per crossing per cycle.** Each threshold has a key that includes the
cycle id. When the value is past the threshold and the key is not in
``AccountState.reminders`` the notification is emitted and the key added;
when the value is back on the safe side the key is removed (re-armed), so a
second crossing notifies again, with the next ``seq`` in its id. A new cycle
starts with no keys: a balance still low in the new cycle is reminded once
more on the account's first operation of that cycle. Usage of an earlier
cycle (late records) does not evaluate reminders.
"""

from __future__ import annotations

from dataclasses import dataclass

from billing.accounts import AccountState, PaymentMode
from billing.notifications import Notification, NotificationKind, make_notification

__all__ = [
    "ReminderConfig",
    "check_bundle",
    "check_credit",
    "check_debt",
    "check_low_balance",
    "enter_cycle",
    "reminder_key",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReminderConfig:
    """Thresholds of the reminders (amounts in micro-units, percentages as ints)."""

    low_balance_micros: int = 1_000_000
    bundle_percents: tuple[int, ...] = (80, 100)
    credit_percents: tuple[int, ...] = (90, 100)


def enter_cycle(state: AccountState, cycle_id: str) -> bool:
    """Move the reminder state to ``cycle_id``; ``False`` for an earlier (late) cycle."""
    current = state.reminder_cycle
    if current == cycle_id:
        return True
    if current is not None and cycle_id < current:
        return False
    # New containers, never the old ones written: a charging batch shares them with the
    # state it was handed until it owns them (billing.charging.step, "Working copies").
    prefix = cycle_id + "|"
    reminders, crossings = state.reminders, state.crossings
    state.reminders = {key for key in reminders if key.startswith(prefix)} if reminders else set()
    state.crossings = (
        {k: v for k, v in crossings.items() if k.startswith(prefix)} if crossings else {}
    )
    state.reminder_cycle = cycle_id
    return True


def reminder_key(cycle_id: str, kind: NotificationKind, subject: str) -> str:
    """The key of one threshold in one cycle, as held in ``AccountState.reminders``."""
    return f"{cycle_id}|{kind.value}|{subject}"


def _cross(
    state: AccountState,
    past: bool,
    kind: NotificationKind,
    subject: str,
    cycle_id: str,
    at_s: int,
    data: dict[str, str | int],
    out: list[Notification],
) -> None:
    key = reminder_key(cycle_id, kind, subject)
    if past:
        if key not in state.reminders:
            state.reminders.add(key)
            seq = state.crossings.get(key, 0)
            state.crossings[key] = seq + 1
            out.append(
                make_notification(
                    kind,
                    account_id=state.account.account_id,
                    at_s=at_s,
                    cycle_id=cycle_id,
                    subject=subject,
                    seq=seq,
                    data=data,
                )
            )
    elif key in state.reminders:
        state.reminders.discard(key)


def check_low_balance(
    state: AccountState, config: ReminderConfig, cycle_id: str, at_s: int, out: list[Notification]
) -> None:
    """Low-balance reminder of a prepaid or hybrid account."""
    if state.account.payment_mode is PaymentMode.POSTPAID or not enter_cycle(state, cycle_id):
        return
    threshold = config.low_balance_micros
    _cross(
        state,
        state.prepaid < threshold,
        NotificationKind.LOW_BALANCE,
        str(threshold),
        cycle_id,
        at_s,
        {"balance": state.prepaid, "threshold": threshold},
        out,
    )


def check_bundle(
    state: AccountState,
    config: ReminderConfig,
    cycle_id: str,
    bundle_id: str,
    allowance: int,
    at_s: int,
    out: list[Notification],
) -> None:
    """Bundle-usage reminders (80 %, 100 %) of one bundle in one cycle."""
    if allowance <= 0 or not enter_cycle(state, cycle_id):
        return
    used = state.bundle_used.get((cycle_id, bundle_id), 0)
    for percent in config.bundle_percents:
        _cross(
            state,
            used * 100 >= allowance * percent,
            NotificationKind.BUNDLE_USAGE,
            f"{bundle_id}@{percent}",
            cycle_id,
            at_s,
            {"bundle": bundle_id, "used": used, "units": allowance, "percent": percent},
            out,
        )


def check_credit(
    state: AccountState, config: ReminderConfig, cycle_id: str, at_s: int, out: list[Notification]
) -> None:
    """Credit-limit reminders (90 %, 100 %) of a postpaid or hybrid account."""
    limit = state.account.credit_limit
    if limit is None or state.account.payment_mode is PaymentMode.PREPAID:
        return
    if not enter_cycle(state, cycle_id):
        return
    owed = state.owed()
    for percent in config.credit_percents:
        _cross(
            state,
            owed > 0 and owed * 100 >= limit * percent,
            NotificationKind.CREDIT_LIMIT,
            str(percent),
            cycle_id,
            at_s,
            {"owed": owed, "limit": limit, "percent": percent},
            out,
        )


def check_debt(state: AccountState, cycle_id: str, at_s: int, out: list[Notification]) -> None:
    """The debt reminder: emitted when ``Book.DEBT`` becomes negative, re-armed at zero."""
    if not enter_cycle(state, cycle_id):
        return
    _cross(
        state,
        state.debt < 0,
        NotificationKind.DEBT_POSTED,
        "debt",
        cycle_id,
        at_s,
        {"debt": -state.debt},
        out,
    )
