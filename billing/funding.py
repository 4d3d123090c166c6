"""Funding a charge: which books pay an amount, and posting it with its reminders.

:func:`split_money` is the money decision of ``billing.charging.batch``'s rule 3
(prepaid, postpaid, hybrid; online or offline); it is pure. :func:`post_money`
applies a split to a working copy of the account and evaluates the low-balance,
credit-limit and debt reminders, and the block-over-limit policy. Charging,
sponsor charging and the settling of online sessions share both.
"""

from __future__ import annotations

from dataclasses import replace

from billing.accounts import AccountState, AccountStatus, PaymentMode
from billing.charging.config import ChargingConfig, OfflinePolicy
from billing.notifications import Notification, NotificationKind, make_notification
from billing.outcome import Result
from billing.reminders import check_credit, check_debt, check_low_balance, reminder_key

__all__ = ["post_money", "split_money"]


def split_money(
    state: AccountState, amount: int, offline: bool, config: ChargingConfig
) -> tuple[Result, int, int, int]:
    """Decide how ``amount`` is paid: ``(result, prepaid part, unbilled part, debt part)``.

    A refusal result comes with zero parts. Pure: reads ``state`` only.
    """
    mode = state.account.payment_mode
    if mode is PaymentMode.PREPAID:
        have = state.prepaid
        if amount <= have:
            return Result.CHARGED, amount, 0, 0
        if not offline:
            return Result.INSUFFICIENT_BALANCE, 0, 0, 0
        if config.offline_policy is OfflinePolicy.REJECT:
            return Result.REJECTED_OFFLINE, 0, 0, 0
        have = max(have, 0)
        return Result.CHARGED_TO_DEBT, have, 0, amount - have
    prepaid_part = 0
    if mode is PaymentMode.HYBRID:
        prepaid_part = min(max(state.prepaid, 0), amount)
    rest = amount - prepaid_part
    if rest == 0:
        return Result.CHARGED, prepaid_part, 0, 0
    available = state.credit_available()
    if available is None or rest <= available:
        return Result.CHARGED, prepaid_part, rest, 0
    if not offline:
        if mode is PaymentMode.HYBRID:
            return Result.INSUFFICIENT_BALANCE, 0, 0, 0
        return Result.CREDIT_LIMIT_EXCEEDED, 0, 0, 0
    return Result.CHARGED_OVER_LIMIT, prepaid_part, rest, 0


def post_money(
    state: AccountState,
    result: Result,
    prepaid: int,
    unbilled: int,
    debt: int,
    cycle_id: str,
    at_s: int,
    config: ChargingConfig,
    notes: list[Notification],
) -> None:
    """Apply a money split to ``state`` (a working copy) and evaluate its reminders."""
    reminders = config.reminders
    if prepaid:
        state.prepaid -= prepaid
        check_low_balance(state, reminders, cycle_id, at_s, notes)
    if unbilled:
        state.unbilled -= unbilled
        if state.account.credit_limit is not None:
            check_credit(state, reminders, cycle_id, at_s, notes)
    if debt:
        state.debt -= debt
        check_debt(state, cycle_id, at_s, notes)
    if (
        result is Result.CHARGED_OVER_LIMIT
        and config.block_over_limit
        and state.account.status is AccountStatus.ACTIVE
    ):
        state.account = replace(state.account, status=AccountStatus.BLOCKED)
        # Each block is a crossing of its own: blocked again after an operator unblocked
        # the account, it is told again (the next seq, so not the first notice's id).
        key = reminder_key(cycle_id, NotificationKind.ACCOUNT_BLOCKED, "credit_limit")
        seq = state.crossings.get(key, 0)
        state.crossings[key] = seq + 1
        notes.append(
            make_notification(
                NotificationKind.ACCOUNT_BLOCKED,
                account_id=state.account.account_id,
                at_s=at_s,
                cycle_id=cycle_id,
                subject="credit_limit",
                seq=seq,
                data={"owed": state.owed()},
            )
        )
