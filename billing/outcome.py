"""Outcome, Effects and Result: the uniform answer of every ABM operation.

Every operation (create, charge, top-up, switch, each online-charging step,
expiry, sponsor charge, plan change) returns an :class:`Outcome`:

- ``result`` — a :class:`Result`, one to one with the proto enum;
- ``receipt`` — the operation's answer (a ``Charge``, a ``Grant``...), also the
  result stored in the idempotency mark, so a retry gets it back;
- ``effects`` — an :class:`Effects`: changed account states, ledger entries,
  idempotency marks ``(key, Mark)``, notifications, and ``forwards`` (charges
  a sponsor on another shard must apply).

The shard actor writes ``effects`` in one atomic WriteBatch and answers with
``result`` and ``receipt``. A replayed request (``DUPLICATE``) and a refusal
have empty effects. Charging rows (:class:`billing.charging.rows.Charge`) derive
their ledger entry and mark lazily (see :attr:`Effects.entries`), which keeps
the batch hot path free of per-record object graphs.

These names are re-exported by ``billing.accounts``, where they were first
defined; both import paths are supported.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from billing.idempotency import Conflict, Mark, Replay, check, mark
from billing.ledger import Entry
from billing.notifications import Notification

if TYPE_CHECKING:
    from billing.accounts import AccountState
    from billing.charging.rows import Charge
    from billing.sponsor import SponsoredUsage

__all__ = [
    "CHARGED_RESULTS",
    "NO_EFFECTS",
    "Effects",
    "Outcome",
    "Result",
    "conflict_result",
    "replayed",
]

T = TypeVar("T")


class Result(enum.StrEnum):
    """Outcomes of every ABM operation; one to one with the proto enum."""

    CREATED = "created"
    UPDATED = "updated"
    CHARGED = "charged"
    CHARGED_TO_DEBT = "charged_to_debt"  # offline prepaid usage partly posted to Book.DEBT
    CHARGED_OVER_LIMIT = "charged_over_limit"  # postpaid/hybrid usage beyond the credit limit
    SPONSORED = "sponsored"  # a third party pays; the subscriber's line is zero-money
    TOPPED_UP = "topped_up"
    SWITCHED = "switched"
    GRANTED = "granted"  # online: quota reserved (initial or update)
    TERMINATED = "terminated"  # online: session settled and closed
    EXPIRED = "expired"  # online: reservations released by validity expiry
    REFUNDED = "refunded"
    BALANCE = "balance"  # read-only answers (balance check, price enquiry)
    DUPLICATE = "duplicate"
    EXISTS_WITH_DIFFERENT_ACCOUNT = "exists_with_different_account"
    EXISTS_WITH_DIFFERENT_AMOUNT = "exists_with_different_amount"
    EXISTS_WITH_DIFFERENT_CURRENCY = "exists_with_different_currency"
    EXISTS_WITH_DIFFERENT_CONTENT = "exists_with_different_content"
    EXISTS_WITH_DIFFERENT_MODE = "exists_with_different_mode"
    EXISTS_WITH_DIFFERENT_UNITS = "exists_with_different_units"
    EXISTS_WITH_DIFFERENT_SESSION = "exists_with_different_session"
    EXISTS_WITH_DIFFERENT_STEP = "exists_with_different_step"
    EXISTS_WITH_DIFFERENT_PLAN = "exists_with_different_plan"
    EXISTS_WITH_DIFFERENT_TIME = "exists_with_different_time"
    ACCOUNT_EXISTS = "account_exists"
    MSISDN_IN_USE = "msisdn_in_use"  # the number is held by another active account
    NOT_HOLDER = "not_holder"  # a number move from an account that does not hold it
    INSUFFICIENT_BALANCE = "insufficient_balance"
    CREDIT_LIMIT_EXCEEDED = "credit_limit_exceeded"  # online request beyond the credit limit
    ACCOUNT_BLOCKED = "account_blocked"
    ACCOUNT_CLOSED = "account_closed"
    UNKNOWN_ACCOUNT = "unknown_account"
    UNKNOWN_SESSION = "unknown_session"
    SESSION_CLOSED = "session_closed"
    CURRENCY_MISMATCH = "currency_mismatch"
    INVALID_ARGUMENT = "invalid_argument"
    BALANCE_LIMIT = "balance_limit"  # a book would pass billing.limits.BALANCE_MAX_MICROS
    UNKNOWN_PLAN = "unknown_plan"  # plan change: no version of the plan in the catalogue then
    SAME_PLAN = "same_plan"  # plan change: the account is on that plan already
    BEFORE_PLAN_START = "before_plan_start"  # plan change dated at/before the current plan's start
    REJECTED_OFFLINE = "rejected_offline"  # offline policy "reject": record goes to the queue
    SPONSOR_RULE_EXISTS = "sponsor_rule_exists"  # a rule id the account has already
    UNKNOWN_SPONSOR_RULE = "unknown_sponsor_rule"  # ending a rule the account does not have
    SPONSOR_RULES_FULL = "sponsor_rules_full"  # the account holds SPONSOR_RULES_MAX rules


CHARGED_RESULTS = frozenset({Result.CHARGED, Result.CHARGED_TO_DEBT, Result.CHARGED_OVER_LIMIT})


def conflict_result(conflict: Conflict) -> Result:
    """The ``exists_with_different_<field>`` result of an idempotency conflict."""
    try:
        return Result(conflict.reason)
    except ValueError:
        return Result.EXISTS_WITH_DIFFERENT_CONTENT


@dataclass(frozen=True, slots=True, kw_only=True)
class Effects:
    """What an operation changed, to be persisted atomically.

    ``explicit_entries``/``explicit_marks`` are built eagerly; ``charges`` are
    charging rows whose entry and mark are derived on demand. Read
    :attr:`entries` and :attr:`marks`, which include both.
    """

    accounts: tuple[AccountState, ...] = ()
    explicit_entries: tuple[Entry, ...] = ()
    explicit_marks: tuple[tuple[str, Mark[Any]], ...] = ()
    charges: tuple[Charge, ...] = ()
    notifications: tuple[Notification, ...] = ()
    forwards: tuple[SponsoredUsage, ...] = ()

    @property
    def entries(self) -> tuple[Entry, ...]:
        """Every ledger entry of the operation: the explicit ones, then one per money charge."""
        derived = [e for c in self.charges if (e := c.to_entry()) is not None]
        return self.explicit_entries + tuple(derived)

    @property
    def marks(self) -> tuple[tuple[str, Mark[Any]], ...]:
        """Every idempotency mark ``(key, mark)`` to store."""
        derived = [m for c in self.charges if (m := c.to_mark()) is not None]
        return self.explicit_marks + tuple(derived)

    @property
    def usage_lines(self) -> tuple[Charge, ...]:
        """The usage-history lines of the operation (charged or sponsored records)."""
        return tuple(c for c in self.charges if c.is_usage_line)


NO_EFFECTS = Effects()


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome(Generic[T]):
    """The answer of one operation: ``result``, ``receipt`` and the ``effects`` to persist."""

    result: Result
    receipt: T | None = None
    effects: Effects = field(default=NO_EFFECTS)


def replayed(existing: Mark[T] | None, fields: Mapping[str, object]) -> Outcome[T] | None:
    """The early answer of a request whose id was seen before, or None for a fresh one.

    A retry with equal fields replays the stored receipt as ``duplicate``; one
    with other fields is ``exists_with_different_<field>``.
    """
    decision = check(existing, fields)
    if isinstance(decision, Replay):
        return Outcome(result=Result.DUPLICATE, receipt=decision.result)
    if isinstance(decision, Conflict):
        return Outcome(result=conflict_result(decision))
    return None


def applied(
    result: Result,
    receipt: T,
    *,
    request_id: str,
    fields: Mapping[str, object],
    account: AccountState,
    entries: tuple[Entry, ...],
    notifications: Sequence[Notification] = (),
) -> Outcome[T]:
    """The answer of a fresh request that changed one account: its new state and ledger
    entries, and the receipt marked under ``request_id`` so that a retry replays it
    (:func:`replayed`)."""
    return Outcome(
        result=result,
        receipt=receipt,
        effects=Effects(
            accounts=(account,),
            explicit_entries=entries,
            explicit_marks=((request_id, mark(fields, receipt)),),
            notifications=tuple(notifications),
        ),
    )
