"""Notifications: the value every reminder, alert and bill-run notice is carried in.

A :class:`Notification` is emitted by a pure operation (charging, online
charging, a bill run, ageing) as part of its effects; the shard stores it with
the operation's WriteBatch and streams it to subscribers. Its id is
*deterministic*: built from the account, the kind, the cycle, the threshold or
subject, and the crossing number, so an operation replayed after a crash emits
the very same ids and a store keyed by id drops the duplicates.

``make_notification`` is the one constructor; other modules (``billing.billrun.run``,
``billing.writeoff``) call it with ``kind=INVOICE_ISSUED`` / ``PAYMENT_OVERDUE``
and the invoice id as ``subject``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Notification", "NotificationKind", "make_notification", "notification_id"]


class NotificationKind(enum.StrEnum):
    """What a notification tells; one to one with the proto enum."""

    LOW_BALANCE = "low_balance"  # prepaid balance fell below the configured threshold
    BUNDLE_USAGE = "bundle_usage"  # a bundle reached a percentage of its allowance
    CREDIT_LIMIT = "credit_limit"  # postpaid exposure reached a percentage of the credit limit
    DEBT_POSTED = "debt_posted"  # offline usage a prepaid balance could not cover went to debt
    ACCOUNT_BLOCKED = "account_blocked"  # blocked: credit limit policy, fraud rule or operator
    FINAL_UNITS = "final_units"  # online session got its final unit indication
    INVOICE_ISSUED = "invoice_issued"  # emitted by the bill run
    PAYMENT_OVERDUE = "payment_overdue"  # emitted by write-off ageing
    FRAUD_ALERT = "fraud_alert"  # a fraud or risk rule with action "alert" fired (billing.fraud)
    ACCOUNT_UNBLOCKED = "account_unblocked"  # an operator unblocked the account
    ACCOUNT_CLOSED = "account_closed"  # an operator closed the account


def notification_id(
    account_id: str, kind: NotificationKind, cycle_id: str | None, subject: str, seq: int
) -> str:
    """``"<account>:<kind>:<cycle or ->:<subject or ->:<seq>"`` — equal inputs, equal id."""
    return f"{account_id}:{kind.value}:{cycle_id or '-'}:{subject or '-'}:{seq}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Notification:
    """One notification for one account.

    ``subject`` is what the notification is about inside its kind: a threshold
    (``"80"``), a bundle and threshold (``"voice-100min@80"``), an invoice id.
    ``seq`` counts the crossings of the same threshold inside one cycle (a
    reminder is re-armed when the value goes back), so each crossing has its own
    id. ``data`` carries display values (amounts in micro-units, units).
    """

    notification_id: str
    kind: NotificationKind
    account_id: str
    at_s: int
    cycle_id: str | None
    subject: str
    seq: int
    data: tuple[tuple[str, str | int], ...] = ()

    def value(self, name: str) -> str | int | None:
        """The data value called ``name``, if any."""
        for key, found in self.data:
            if key == name:
                return found
        return None


def make_notification(
    kind: NotificationKind,
    *,
    account_id: str,
    at_s: int,
    cycle_id: str | None = None,
    subject: str = "",
    seq: int = 0,
    data: Mapping[str, str | int] | None = None,
) -> Notification:
    """Build a notification whose id is derived from its identifying fields."""
    return Notification(
        notification_id=notification_id(account_id, kind, cycle_id, subject, seq),
        kind=kind,
        account_id=account_id,
        at_s=at_s,
        cycle_id=cycle_id,
        subject=subject,
        seq=seq,
        data=tuple(sorted((data or {}).items())),
    )
