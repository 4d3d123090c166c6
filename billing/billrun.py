"""Bill run (出账): closing a cycle into an invoice (postpaid, hybrid) or a statement (prepaid).

**What an invoice holds.** For account ``A`` and cycle ``C``: one ``USAGE``
line per service with the money part of the cycle's usage (what was posted to
``A/unbilled``), one ``BUNDLE`` line per service showing bundle-covered units
at zero, ``RECURRING`` plan fees prorated by days (:mod:`billing.proration`),
``ONE_OFF`` charges and ``DISCOUNT``/``ADJUSTMENT`` lines given for ``C``,
``LATE_USAGE`` lines for usage of earlier cycles that arrived after their own
invoice was final, and a ``CREDIT`` line applying account credit (never more
than the invoice would otherwise total). Due date: issue time + payment terms.

**Late usage and grace.** Usage belongs to the cycle of its record's start
time. Until ``grace_s`` after the cycle's end the bill run only makes a
``DRAFT``: it posts nothing, may be re-run as often as wanted and picks up
usage that arrives meanwhile. The first run at or after ``end + grace_s``
makes the invoice final (``OPEN``, or ``PAID`` when it totals zero or less),
posts its entries and records per usage class what it billed
(:class:`BillingState`). Usage of a cycle that arrives after its invoice is
final is the difference between the cycle's totals and what was billed; it
lands on the next invoice as ``LATE_USAGE``, for up to ``late_cycles_max``
earlier cycles. A bill run of ``C`` finalises a draft of an earlier cycle
first (its grace has necessarily passed), so nothing is billed twice.

**The unbilled book is the truth.** Given the account's ``Book.UNBILLED``
balance, a final invoice moves all of it except the charges of later cycles:
what the usage totals do not explain (debt a prepaid→postpaid switch moved in,
charges older than the late window) is one more ``LATE_USAGE`` line, "earlier
unbilled charges". A switch to prepaid bills at once: :func:`interim_invoice`.

**Postings** (one entry per kind, all tagged ``cycle_id=C``, refs
``bill:<invoice_id>:<kind>``): usage ``A/unbilled +U`` ↔ ``A/receivable −U``;
recurring ``op/revenue/recurring +F`` ↔ receivable; one-offs
``op/revenue/one_off``; discounts and adjustments ``op/revenue/discount``
(negative) ↔ receivable; credit applied ``A/credit −c`` ↔ receivable ``+c``.
A total below zero (a credit note) goes to ``A/credit`` rather than leaving
the receivable positive. So the receivable postings of an invoice's entries
sum to ``−total`` (:func:`ledger_difference`).

**Idempotency.** Per (account, cycle): the invoice id is
``INV-<cycle>-<account>``; a run for a cycle whose invoice is final returns it
unchanged (``REPLAYED``) with no entries; a draft re-run with nothing new
returns an equal draft.

Prepaid accounts get a :class:`Statement` instead: usage, top-ups and charges
of the cycle, and no receivable.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple, cast

from billing.accounts import Account, AccountState, PaymentMode
from billing.cycle import DAY_S, Cycle, monthly_cycle
from billing.invariant import invariant
from billing.invoice import Invoice, InvoiceStatus, LineItem, LineKind
from billing.ledger import Book, Entry, EntryKind, Posting, account_key, op_key
from billing.money import RoundingMode
from billing.notifications import Notification, NotificationKind, make_notification
from billing.proration import DEFAULT_DECIMALS, DEFAULT_MODE, FeePeriod, prorate_periods
from billing.switching import InterimBill
from billing.tariffs.model import Catalogue

__all__ = [
    "BillOutcome",
    "BillResult",
    "BillRunConfig",
    "BillRunSummary",
    "BillingAccount",
    "BillingMode",
    "BillingState",
    "ExtraCharge",
    "Statement",
    "UsageTotal",
    "bill_account",
    "bill_run",
    "billing_account",
    "calendar_cycle",
    "fee_periods",
    "interim_invoice",
    "invoice_id_for",
    "ledger_difference",
]

REVENUE_RECURRING = op_key("revenue/recurring")
REVENUE_ONE_OFF = op_key("revenue/one_off")
REVENUE_DISCOUNT = op_key("revenue/discount")


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


def _service(usage_class: str) -> str:
    return usage_class.split(".", 1)[0]


def _by_service(totals: ClassTotals) -> list[tuple[str, list[int]]]:
    """Totals summed per service, sorted by service: ``[count, units, bundle, amount,
    unbilled]`` lists (the bill run's hot loop; plain lists avoid a tuple per sum)."""
    out: dict[str, list[int]] = {}
    for usage_class, total in totals.items():
        service = usage_class.partition(".")[0]
        found = out.get(service)
        if found is None:
            out[service] = list(total)
        else:
            for i in range(5):
                found[i] += total[i]
    return sorted(out.items())


@functools.lru_cache(maxsize=256)
def _label(service: str, suffix: str) -> str:
    return service + suffix


_USAGE = LineKind.USAGE
_BUNDLE = LineKind.BUNDLE


def _usage_lines(totals: ClassTotals, *, money: str) -> list[LineItem]:
    """USAGE and BUNDLE lines per service; ``money`` names the amount field shown."""
    lines: list[LineItem] = []
    field_index = 4 if money == "unbilled" else 3
    for service, sums in _by_service(totals):
        count, units, bundle_units = sums[0], sums[1], sums[2]
        amount = sums[field_index]
        charged_units = units - bundle_units
        if amount or charged_units:
            lines.append(
                LineItem(
                    kind=_USAGE,
                    description=_label(service, " usage"),
                    amount=amount,
                    service=service,
                    units=charged_units,
                    count=count,
                )
            )
        if bundle_units:
            lines.append(
                LineItem(
                    kind=_BUNDLE,
                    description=_label(service, " in bundle"),
                    amount=0,
                    service=service,
                    units=bundle_units,
                )
            )
    return lines


@functools.lru_cache(maxsize=64)
def _window(cycle: Cycle, config: BillRunConfig) -> tuple[str, ...]:
    """The cycle ids a bill run of ``cycle`` looks at: it and ``late_cycles_max`` before."""
    ids = [cycle.cycle_id]
    earlier = cycle
    for _ in range(config.late_cycles_max):
        earlier = earlier.previous()
        ids.append(earlier.cycle_id)
    return tuple(ids)


def _deltas(
    account: BillingAccount, state: BillingState, cycle_ids: Iterable[str]
) -> dict[str, dict[str, UsageTotal]]:
    """Per cycle and usage class: usage not yet on any final or interim invoice."""
    out: dict[str, dict[str, UsageTotal]] = {}
    for cid in cycle_ids:
        usage = account.usage.get(cid)
        if not usage:
            continue
        billed = state.billed.get(cid)
        if not billed:
            out[cid] = {c: UsageTotal._make(t) for c, t in usage.items() if any(t)}
            continue
        for usage_class, total in usage.items():
            delta = UsageTotal.minus(total, billed.get(usage_class, ZERO))
            if any(delta):
                out.setdefault(cid, {})[usage_class] = delta
    return out


def _future_unbilled(account: BillingAccount, state: BillingState, cycle_id: str) -> int:
    """Unbilled charges of cycles after ``cycle_id`` (not this bill run's business)."""
    total = 0
    for cid, per in account.usage.items():
        if cid > cycle_id:
            billed = state.billed.get(cid, {})
            total += sum(t[4] - billed.get(c, ZERO)[4] for c, t in per.items())
    return total


def _usage_part(
    account: BillingAccount,
    state: BillingState,
    cycle: Cycle,
    config: BillRunConfig,
    book_to_bill: int | None,
) -> tuple[list[LineItem], dict[str, dict[str, UsageTotal]]]:
    """Usage lines of ``cycle`` and late lines of earlier cycles, and the deltas they bill.

    ``book_to_bill`` is what ``Book.UNBILLED`` holds for this invoice (a
    positive magnitude); what the usage lines do not explain — charges of
    cycles beyond the late window, debt moved in by a mode switch — is billed
    as one more ``LATE_USAGE`` line, so the invoice always empties the book.
    """
    window = _window(cycle, config)
    deltas = _deltas(account, state, window)
    lines = _usage_lines(deltas.get(cycle.cycle_id, {}), money="unbilled")
    for cid in sorted(deltas):
        if cid == cycle.cycle_id:
            continue
        for service, (count, units, bundle_units, _, unbilled) in _by_service(deltas[cid]):
            if unbilled:
                lines.append(
                    LineItem(
                        kind=LineKind.LATE_USAGE,
                        description=f"{service} usage of {cid}",
                        amount=unbilled,
                        service=service,
                        units=units - bundle_units,
                        count=count,
                    )
                )
    if book_to_bill is not None:
        rest = book_to_bill - sum(line.amount for line in lines)
        if rest:
            lines.append(
                LineItem(
                    kind=LineKind.LATE_USAGE,
                    description="earlier unbilled charges",
                    amount=rest,
                )
            )
    return lines, deltas


def _lines(
    account: BillingAccount,
    state: BillingState,
    cycle: Cycle,
    config: BillRunConfig,
) -> tuple[list[LineItem], dict[str, dict[str, UsageTotal]]]:
    """Lines before credit, and the usage deltas they bill."""
    book_to_bill = None
    if account.unbilled_balance is not None:
        book_to_bill = -account.unbilled_balance - _future_unbilled(account, state, cycle.cycle_id)
    lines, deltas = _usage_part(account, state, cycle, config, book_to_bill)
    fees = prorate_periods(
        cycle, account.fee_periods, decimals=config.fee_decimals, mode=config.fee_mode
    )
    for fee in fees:
        days = "" if fee.is_full else f" ({fee.days}/{fee.cycle_days} days)"
        lines.append(
            LineItem(kind=LineKind.RECURRING, description=f"{fee.label}{days}", amount=fee.amount)
        )
    for extra in account.extras:
        if extra.cycle_id == cycle.cycle_id:
            lines.append(
                LineItem(kind=extra.kind, description=extra.description, amount=extra.amount)
            )
    return lines, deltas


# The parts of an invoice's postings: name (in the entry ref), entry kind, line kinds.
_PARTS: tuple[tuple[str, EntryKind, tuple[LineKind, ...]], ...] = (
    ("usage", EntryKind.BILL, (LineKind.USAGE, LineKind.LATE_USAGE)),
    ("recurring", EntryKind.RECURRING, (LineKind.RECURRING,)),
    ("one_off", EntryKind.ONE_OFF, (LineKind.ONE_OFF,)),
    ("discount", EntryKind.DISCOUNT, (LineKind.DISCOUNT, LineKind.ADJUSTMENT)),
    ("credit", EntryKind.ADJUSTMENT, (LineKind.CREDIT,)),
)
# Operator accounts the parts post against; the customer's own books are per account.
_PART_SOURCES = {
    "recurring": REVENUE_RECURRING,
    "one_off": REVENUE_ONE_OFF,
    "discount": REVENUE_DISCOUNT,
}


def _entries(invoice: Invoice, at_s: int) -> tuple[Entry, ...]:
    """The postings of a final invoice, one entry per kind; see the module docstring."""
    acct = invoice.account_id
    receivable = account_key(acct, Book.RECEIVABLE)
    sums: dict[LineKind, int] = {}
    for line in invoice.lines:
        sums[line.kind] = sums.get(line.kind, 0) + line.amount
    entries: list[Entry] = []
    for name, kind, kinds in _PARTS:
        amount = 0
        for line_kind in kinds:
            amount += sums.get(line_kind, 0)
        if amount:
            source = _PART_SOURCES.get(name) or account_key(
                acct, Book.UNBILLED if name == "usage" else Book.CREDIT
            )
            entries.append(
                Entry(
                    ref=f"bill:{invoice.invoice_id}:{name}",
                    kind=kind,
                    currency=invoice.currency,
                    at_s=at_s,
                    cycle_id=invoice.cycle_id,
                    postings=(Posting(source, amount), Posting(receivable, -amount)),
                )
            )
    if invoice.total < 0:
        # A credit note: what the customer is owed becomes credit, not a positive receivable.
        entries.append(
            Entry(
                ref=f"bill:{invoice.invoice_id}:credit_note",
                kind=EntryKind.ADJUSTMENT,
                currency=invoice.currency,
                at_s=at_s,
                cycle_id=invoice.cycle_id,
                postings=(
                    Posting(receivable, invoice.total),
                    Posting(account_key(acct, Book.CREDIT), -invoice.total),
                ),
            )
        )
    return tuple(entries)


def ledger_difference(
    invoice: Invoice, entries: Iterable[Entry], *, also_refs: Iterable[str] = ()
) -> int:
    """``total`` minus what the ledger says the invoice bills: zero when they agree.

    The ledger side is minus the receivable postings, plus the credit-note
    posting, of the entries the bill run made for this invoice (tagged with its
    cycle and referring to its id), plus entries named in ``also_refs`` (an
    interim invoice's ``switch:<request_id>`` entry, see :func:`interim_invoice`).
    """
    receivable = account_key(invoice.account_id, Book.RECEIVABLE)
    prefix = f"bill:{invoice.invoice_id}:"
    extra = set(also_refs)
    billed = 0
    for entry in entries:
        if entry.ref in extra:
            billed -= entry.amount_for(receivable)
        elif entry.cycle_id == invoice.cycle_id and entry.ref.startswith(prefix):
            if entry.ref.endswith(":credit_note"):
                continue
            billed -= entry.amount_for(receivable)
    return invoice.total - billed


def _statement(account: BillingAccount, cycle: Cycle) -> Statement:
    lines = tuple(_usage_lines(account.usage.get(cycle.cycle_id, {}), money="amount"))
    return Statement(
        account_id=account.account_id,
        cycle_id=cycle.cycle_id,
        currency=account.currency,
        lines=lines,
        usage_charges=sum(line.amount for line in lines),
        topups=account.topups,
        closing_balance=account.prepaid_balance,
    )


def _merge_billed(
    billed: Mapping[str, ClassTotals],
    deltas: Mapping[str, Mapping[str, UsageTotal]],
    keep_cycles: int,
) -> dict[str, ClassTotals]:
    out: dict[str, ClassTotals] = dict(billed)
    for cid, per in deltas.items():
        before = out.get(cid)
        if not before:
            out[cid] = per
            continue
        merged = dict(before)
        for usage_class, delta in per.items():
            found = merged.get(usage_class)
            merged[usage_class] = delta if found is None else UsageTotal.plus(found, delta)
        out[cid] = merged
    # Keep the snapshots late usage can still refer to; older cycles are closed for good.
    if len(out) > keep_cycles + 1:
        for cid in sorted(out)[: len(out) - keep_cycles - 1]:
            del out[cid]
    return out


def _bill_one(
    account: BillingAccount,
    state: BillingState,
    cycle: Cycle,
    at_s: int,
    config: BillRunConfig,
) -> BillOutcome:
    invoice_id = invoice_id_for(account.account_id, cycle.cycle_id)
    lines, deltas = _lines(account, state, cycle, config)
    pre_credit = sum(line.amount for line in lines)
    credit = min(max(account.credit_balance, 0), max(pre_credit, 0))
    if credit:
        lines.append(LineItem(kind=LineKind.CREDIT, description="credit applied", amount=-credit))
    total = pre_credit - credit
    final = at_s >= cycle.end_s + config.grace_s
    issued_at_s = at_s
    if not final and state.draft is not None and state.draft.invoice_id == invoice_id:
        issued_at_s = state.draft.issued_at_s  # a re-run of an unchanged draft is equal
    status = InvoiceStatus.DRAFT
    if final:
        status = InvoiceStatus.OPEN if total > 0 else InvoiceStatus.PAID
    invoice = Invoice(
        invoice_id=invoice_id,
        account_id=account.account_id,
        cycle_id=cycle.cycle_id,
        currency=account.currency,
        period_start_s=cycle.start_s,
        period_end_s=cycle.end_s,
        issued_at_s=issued_at_s,
        due_at_s=issued_at_s + config.payment_terms_s,
        lines=tuple(lines),
        total=total,
        status=status,
    )
    if not final:
        return BillOutcome(
            result=BillResult.DRAFT,
            account_id=account.account_id,
            invoices=(invoice,),
            state=replace(state, draft=invoice),
        )
    new_state = BillingState(
        billed=_merge_billed(state.billed, deltas, config.late_cycles_max),
        last_final_cycle=cycle.cycle_id,
        draft=None,
    )
    notice = make_notification(
        NotificationKind.INVOICE_ISSUED,
        account_id=account.account_id,
        at_s=at_s,
        cycle_id=cycle.cycle_id,
        subject=invoice_id,
        data={"total": total, "due_at_s": invoice.due_at_s, "currency": account.currency},
    )
    return BillOutcome(
        result=BillResult.ISSUED,
        account_id=account.account_id,
        invoices=(invoice,),
        entries=_entries(invoice, at_s),
        state=new_state,
        notifications=(notice,),
    )


def _currencies_ok(account: BillingAccount) -> bool:
    return all(extra.currency == account.currency for extra in account.extras) and all(
        fee.currency in (None, account.currency) for fee in account.fee_periods
    )


def bill_account(
    account: BillingAccount,
    state: BillingState,
    cycle: Cycle,
    *,
    at_s: int,
    config: BillRunConfig,
    existing: Invoice | None = None,
) -> BillOutcome:
    """Bill ``account`` for ``cycle`` at ``at_s``; ``existing`` is its stored final
    invoice for the cycle, if any (looked up by :func:`invoice_id_for`)."""
    invariant(at_s >= cycle.end_s, f"bill run of {cycle.cycle_id} before its end")
    if account.mode is BillingMode.PREPAID:
        return BillOutcome(
            result=BillResult.STATEMENT,
            account_id=account.account_id,
            statement=_statement(account, cycle),
        )
    if existing is not None and existing.status is not InvoiceStatus.DRAFT:
        return BillOutcome(
            result=BillResult.REPLAYED, account_id=account.account_id, invoices=(existing,)
        )
    if state.last_final_cycle is not None and state.last_final_cycle >= cycle.cycle_id:
        # Final already, but the caller did not hand the invoice in: nothing to do again.
        return BillOutcome(result=BillResult.REPLAYED, account_id=account.account_id)
    if not _currencies_ok(account):
        return BillOutcome(result=BillResult.CURRENCY_MISMATCH, account_id=account.account_id)
    before: BillOutcome | None = None
    draft = state.draft
    if draft is not None and draft.cycle_id < cycle.cycle_id:
        # An earlier cycle's draft is past its grace by now: finalise it first.
        earlier = cycle
        while earlier.cycle_id > draft.cycle_id:
            earlier = earlier.previous()
        before = _bill_one(account, state, earlier, at_s, config)
        invariant(before.state is not None, "finalising a draft yields a state")
        assert before.state is not None  # for mypy; the invariant above always runs
        state = before.state
        account = replace(
            account,
            credit_balance=account.credit_balance + _moved(before, Book.CREDIT),
            unbilled_balance=(
                None
                if account.unbilled_balance is None
                else account.unbilled_balance + _moved(before, Book.UNBILLED)
            ),
        )
    outcome = _bill_one(account, state, cycle, at_s, config)
    if before is None:
        return outcome
    return replace(
        outcome,
        invoices=before.invoices + outcome.invoices,
        entries=before.entries + outcome.entries,
        notifications=before.notifications + outcome.notifications,
    )


def _moved(outcome: BillOutcome, book: Book) -> int:
    key = account_key(outcome.account_id, book)
    return sum(entry.amount_for(key) for entry in outcome.entries)


@dataclass(frozen=True, slots=True, kw_only=True)
class BillRunSummary:
    """Counts and totals of a batch bill run, for progress and reconciliation."""

    accounts: int
    results: Mapping[BillResult, int]
    invoiced: int  # sum of the totals of invoices issued by this run
    entries: int


def bill_run(
    items: Iterable[tuple[BillingAccount, BillingState, Invoice | None]],
    cycle: Cycle,
    *,
    at_s: int,
    config: BillRunConfig,
) -> tuple[list[BillOutcome], BillRunSummary]:
    """Bill many accounts for ``cycle``: one :class:`BillOutcome` per account, in order.

    Each item is an account, its billing state and its stored invoice for the
    cycle (if any). Accounts are independent; a shard persists each outcome
    (or a group of them) in one batch and may stop and resume anywhere, since
    every account's run is idempotent.
    """
    outcomes: list[BillOutcome] = []
    results: dict[BillResult, int] = {}
    invoiced = entries = 0
    for account, state, existing in items:
        outcome = bill_account(account, state, cycle, at_s=at_s, config=config, existing=existing)
        outcomes.append(outcome)
        results[outcome.result] = results.get(outcome.result, 0) + 1
        entries += len(outcome.entries)
        if outcome.result is BillResult.ISSUED:
            invoiced += sum(i.total for i in outcome.invoices if i.cycle_id == cycle.cycle_id)
    summary = BillRunSummary(
        accounts=len(outcomes), results=results, invoiced=invoiced, entries=entries
    )
    return outcomes, summary


def interim_invoice(
    interim: InterimBill,
    account: BillingAccount,
    state: BillingState,
    *,
    config: BillRunConfig,
) -> BillOutcome:
    """The invoice of a switch to prepaid (``billing.switching``): the switch has moved
    ``interim.amount`` from unbilled to receivable (entry ``switch:<request_id>``);
    this bills it at once, applying credit, and records it as billed so the cycle's
    bill run does not bill it again. Idempotent by the switch: the invoice id is
    ``INV-<cycle>-<account>-<request_id>`` and the caller stores it.
    """
    cycle = calendar_cycle(interim.cycle_id, config.tz)
    lines, deltas = _usage_part(account, state, cycle, config, interim.amount)
    pre_credit = sum(line.amount for line in lines)
    credit = min(max(account.credit_balance, 0), max(pre_credit, 0))
    if credit:
        lines.append(LineItem(kind=LineKind.CREDIT, description="credit applied", amount=-credit))
    total = pre_credit - credit
    invoice = Invoice(
        invoice_id=f"{invoice_id_for(account.account_id, interim.cycle_id)}-{interim.request_id}",
        account_id=account.account_id,
        cycle_id=interim.cycle_id,
        currency=account.currency,
        period_start_s=cycle.start_s,
        period_end_s=interim.at_s,
        issued_at_s=interim.at_s,
        due_at_s=interim.at_s + config.payment_terms_s,
        lines=tuple(lines),
        total=total,
        status=InvoiceStatus.OPEN if total > 0 else InvoiceStatus.PAID,
    )
    entries: tuple[Entry, ...] = ()
    if credit:
        entries = (
            Entry(
                ref=f"bill:{invoice.invoice_id}:credit",
                kind=EntryKind.ADJUSTMENT,
                currency=invoice.currency,
                at_s=interim.at_s,
                cycle_id=invoice.cycle_id,
                postings=(
                    Posting(account_key(account.account_id, Book.CREDIT), -credit),
                    Posting(account_key(account.account_id, Book.RECEIVABLE), credit),
                ),
            ),
        )
    notice = make_notification(
        NotificationKind.INVOICE_ISSUED,
        account_id=account.account_id,
        at_s=interim.at_s,
        cycle_id=interim.cycle_id,
        subject=invoice.invoice_id,
        data={"total": total, "due_at_s": invoice.due_at_s, "currency": account.currency},
    )
    new_state = replace(state, billed=_merge_billed(state.billed, deltas, config.late_cycles_max))
    return BillOutcome(
        result=BillResult.ISSUED,
        account_id=account.account_id,
        invoices=(invoice,),
        entries=entries,
        state=new_state,
        notifications=(notice,),
    )


def calendar_cycle(cycle_id: str, tz: str) -> Cycle:
    """The monthly cycle named ``cycle_id`` in the configured time zone."""
    year, month = (int(part) for part in cycle_id.split("-"))
    return monthly_cycle(year, month, tz)


def fee_periods(
    account: Account, catalogue: Catalogue | None, cycle: Cycle
) -> tuple[FeePeriod, ...]:
    """Recurring fee periods of ``account``'s subscriptions overlapping ``cycle``, split
    where the plan's version (and so its monthly fee) changes, in start order."""
    if catalogue is None:
        return ()
    periods: list[FeePeriod] = []
    for sub in sorted(account.subscriptions, key=lambda s: s.start_s):
        if sub.start_s >= cycle.end_s or (sub.end_s is not None and sub.end_s <= cycle.start_s):
            continue
        periods.extend(_plan_periods(catalogue, sub.plan_id, sub.start_s, sub.end_s, cycle))
    return tuple(periods)


@functools.lru_cache(maxsize=4096)
def _plan_periods(
    catalogue: Catalogue, plan_id: str, start_s: int, end_s: int | None, cycle: Cycle
) -> tuple[FeePeriod, ...]:
    # Memoised: most subscriptions of a cycle share a plan and a start before the cycle.
    plan = catalogue.plans.get(plan_id)
    if plan is None:
        return ()
    periods: list[FeePeriod] = []
    for version in plan.versions:
        start = max(start_s, version.valid_from_s, cycle.start_s)
        ends = [e for e in (end_s, version.valid_until_s) if e is not None]
        end = min([*ends, cycle.end_s])
        if start >= end or version.monthly_fee == 0:
            continue
        periods.append(
            FeePeriod(
                label=plan.name or plan.plan_id,
                fee=version.monthly_fee,
                from_s=start,
                until_s=None if end >= cycle.end_s else end,
                currency=version.currency,
            )
        )
    return tuple(periods)


_MODES = {PaymentMode(mode.value): mode for mode in BillingMode}


def billing_account(
    state: AccountState,
    *,
    cycle: Cycle,
    catalogue: Catalogue | None,
    extras: Sequence[ExtraCharge] = (),
    topups: int = 0,
) -> BillingAccount:
    """The bill run's view of an ABM :class:`~billing.accounts.AccountState`."""
    account = state.account
    usage: dict[str, dict[str, UsageTotal]] = {}
    for (cycle_id, usage_class), totals in state.usage.items():
        per = usage.get(cycle_id)
        if per is None:
            per = usage[cycle_id] = {}
        # The ABM's 5-tuples are UsageTotal field for field; the bill run reads them
        # by index, so they are passed through without a copy.
        per[usage_class] = cast(UsageTotal, totals)
    return BillingAccount(
        account_id=account.account_id,
        currency=account.currency,
        mode=_MODES[account.payment_mode],
        usage=usage,
        fee_periods=fee_periods(account, catalogue, cycle),
        extras=extras,
        credit_balance=state.credit,
        unbilled_balance=state.unbilled,
        prepaid_balance=state.prepaid,
        topups=topups,
    )
