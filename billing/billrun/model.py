"""The bill run's values: configuration, the account view, billing state and outcomes.

The bill run itself is :mod:`billing.billrun.run`; these types are re-exported there.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from billing.cycle import DAY_S
from billing.invoice import Invoice, LineItem, LineKind
from billing.ledger import Entry
from billing.money import RoundingMode
from billing.notifications import Notification
from billing.proration import DEFAULT_DECIMALS, DEFAULT_MODE, FeePeriod

__all__ = [
    "ZERO",
    "BillOutcome",
    "BillResult",
    "BillRunConfig",
    "BillRunSummary",
    "BillingAccount",
    "BillingMode",
    "BillingState",
    "ClassTotals",
    "ExtraCharge",
    "Statement",
    "UsageTotal",
    "invoice_id_for",
]


class BillingMode(enum.StrEnum):
    PREPAID = "prepaid"
    POSTPAID = "postpaid"
    HYBRID = "hybrid"


class BillResult(enum.StrEnum):
    """What a bill run did for one account."""

    ISSUED = "issued"  # a final invoice was made and posted
    DRAFT = "draft"  # inside the grace period: a draft, nothing posted
    REPLAYED = "replayed"  # the cycle's invoice was already final: returned as it is
    STATEMENT = "statement"  # prepaid: a statement, nothing posted
    CURRENCY_MISMATCH = "currency_mismatch"  # a fee or charge in another currency
    NOT_STARTED = "not_started"  # the subscription starts after the cycle: no bill for it


@dataclass(frozen=True, slots=True, kw_only=True)
class BillRunConfig:
    payment_terms_s: int = 14 * DAY_S
    grace_s: int = 3 * DAY_S
    late_cycles_max: int = 3
    fee_decimals: int = DEFAULT_DECIMALS
    fee_mode: RoundingMode = DEFAULT_MODE
    tz: str = "UTC"  # the operator time zone of the monthly cycles


class UsageTotal(NamedTuple):
    """Usage of one usage class in one cycle: records, units, bundle units, money charged
    (``amount``) and the part of it posted to ``unbilled`` (what an invoice bills).

    A named tuple, field for field the ABM's usage tuple (``AccountState.usage``),
    because the bill run makes one per account and class: tuples are cheap.
    """

    records: int = 0  # how many records (``count`` in the ABM tuple)
    units: int = 0
    bundle_units: int = 0
    amount: int = 0
    unbilled: int = 0

    @classmethod
    def of(cls, totals: Sequence[int]) -> UsageTotal:
        """From the ABM's ``(count, units, bundle_units, amount, unbilled)`` tuple."""
        return cls._make(totals) if len(totals) == 5 else cls(*totals)

    def minus(self, other: Sequence[int]) -> UsageTotal:
        a, b = self, other
        return UsageTotal(a[0] - b[0], a[1] - b[1], a[2] - b[2], a[3] - b[3], a[4] - b[4])

    def plus(self, other: Sequence[int]) -> UsageTotal:
        a, b = self, other
        return UsageTotal(a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3], a[4] + b[4])

    def is_zero(self) -> bool:
        return not any(self)


ZERO = UsageTotal()
ClassTotals = Mapping[str, UsageTotal]


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtraCharge:
    """A one-off, discount or adjustment for a cycle; discounts are negative amounts."""

    ref: str
    kind: LineKind
    description: str
    amount: int
    currency: str
    cycle_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BillingAccount:
    """What the bill run needs to know of one account (built from the ABM's state).

    ``usage`` maps cycle id to usage class to the totals whose ``amount`` is
    the money posted to ``unbilled`` (postpaid part); for prepaid accounts it
    is the money taken from the prepaid balance.
    """

    account_id: str
    currency: str
    mode: BillingMode
    usage: Mapping[str, ClassTotals]
    fee_periods: Sequence[FeePeriod] = ()
    extras: Sequence[ExtraCharge] = ()
    credit_balance: int = 0
    unbilled_balance: int | None = None  # Book.UNBILLED (<= 0); None: trust usage totals
    prepaid_balance: int = 0
    topups: int = 0  # top-ups in the cycle (statements only)
    # When the account's first subscription starts; None: unknown (billed as started).
    starts_s: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BillingState:
    """Per account: what final invoices billed per cycle and class, and the open draft."""

    billed: Mapping[str, ClassTotals] = field(default_factory=dict)
    last_final_cycle: str | None = None
    draft: Invoice | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Statement:
    """A prepaid account's cycle summary; nothing is owed, nothing is posted."""

    account_id: str
    cycle_id: str
    currency: str
    lines: tuple[LineItem, ...]
    usage_charges: int
    topups: int
    closing_balance: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BillOutcome:
    """Effects of billing one account: persist all of it in one batch.

    ``invoices`` are new or changed invoices (a finalised earlier draft comes
    first); ``state`` replaces the account's :class:`BillingState`.
    """

    result: BillResult
    account_id: str
    invoices: tuple[Invoice, ...] = ()
    statement: Statement | None = None
    entries: tuple[Entry, ...] = ()
    state: BillingState | None = None
    notifications: tuple[Notification, ...] = ()


def invoice_id_for(account_id: str, cycle_id: str) -> str:
    return f"INV-{cycle_id}-{account_id}"


@dataclass(frozen=True, slots=True, kw_only=True)
class BillRunSummary:
    """Counts and totals of a batch bill run, for progress and reconciliation."""

    accounts: int
    results: Mapping[BillResult, int]
    invoiced: int  # sum of the totals of invoices issued by this run
    entries: int
