"""Reservations: the data of an online-charging session and the quota arithmetic on it.

:class:`Reservation` is one session of an account (``AccountState.reservations``)
and what it holds: bundle units, money moved ``prepaid → reserved``, a credit
hold on the postpaid part. The functions here are the steps ``billing.ocs.session``
composes — :func:`grant` reserves quota, :func:`settle` charges used units
("Settling" in ``billing.ocs.session``), :func:`release` gives back what is held — and
each works on a working copy of the account and returns the postings to book.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from billing.accounts import AccountState, PaymentMode
from billing.bundles import Tariff
from billing.charging.config import ChargingConfig, OfflinePolicy
from billing.charging.rows import Charge, revenue_key
from billing.funding import post_money, split_money
from billing.ledger import Book, Entry, EntryKind, Posting, account_key
from billing.notifications import Notification
from billing.outcome import Result
from billing.rating import UNITS_MAX_DEFAULT
from billing.reminders import check_bundle

__all__ = [
    "EXPIRED_KEEP_S",
    "Grant",
    "Quote",
    "Reservation",
    "SessionStatus",
    "available_funds",
    "grant",
    "grant_of",
    "lapse",
    "release",
    "session_entry",
    "session_line",
    "settle",
    "step_fields",
]

EXPIRED_KEEP_S = 86_400  # an expired session is kept this long for a late terminate


class SessionStatus(enum.StrEnum):
    """Life of a session: open, closed by terminate, or expired (kept for a late terminate)."""

    OPEN = "open"
    CLOSED = "closed"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True, kw_only=True)
class Quote:
    """What the session charges for, from rating a prototype record (price enquiry)."""

    service: str
    usage_class: str
    price_key: str
    plan_id: str
    plan_version: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Reservation:
    """One online-charging session of an account and what it holds."""

    session_id: str
    account_id: str
    quote: Quote
    cycle_id: str
    status: SessionStatus
    validity_s: int
    expires_at_s: int
    granted_units: int = 0
    bundle_held: tuple[tuple[str, int], ...] = ()
    money_held: int = 0
    credit_hold: int = 0
    used_units: int = 0
    money_units: int = 0
    charged: int = 0
    final: bool = False
    # What ``charged`` came from, by book (magnitudes): for the session's usage line.
    paid_prepaid: int = 0
    paid_unbilled: int = 0
    paid_debt: int = 0
    # When the session was opened, on the service's clock (0: stored before it was kept).
    opened_at_s: int = 0

    @property
    def is_open(self) -> bool:
        return self.status is SessionStatus.OPEN

    @property
    def supervised_until_s(self) -> int:
        """The end of the session supervision (RFC 4006 Tcc, two validity times after
        the last grant): a late UPDATE is served until then, refused after."""
        return self.expires_at_s + self.validity_s


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """The answer to a session step: quota granted now and the session's totals so far.

    It is the result stored in the step's idempotency mark, so it holds the whole
    answer a retry must get back unchanged: what this step charged, the validity
    of its grant, the money held after it and the step's own result.
    """

    session_id: str
    granted_units: int
    final: bool
    expires_at_s: int
    used_units: int
    charged: int
    # Money the session holds after this step (prepaid moved to reserved); 0 once closed.
    money_held: int = 0
    # Money this step charged for the units it reported (``charged`` is the session's total).
    charged_now: int = 0
    # Validity-Time of this grant, seconds (0 when nothing was granted).
    validity_s: int = 0
    # The step's result as first decided (a replay answers it again).
    result: Result = Result.GRANTED


def step_fields(
    state: AccountState, session_id: str, step: str, units: object
) -> dict[str, object]:
    return {
        "account": state.account.account_id,
        "session": session_id,
        "step": step,
        "units": units,
    }


def session_entry(
    ref: str,
    kind: EntryKind,
    state: AccountState,
    at_s: int,
    cycle_id: str,
    postings: list[Posting],
) -> Entry | None:
    postings = [p for p in postings if p.amount]
    if not postings:
        return None
    return Entry(
        ref=ref,
        kind=kind,
        currency=state.account.currency,
        at_s=at_s,
        postings=tuple(postings),
        cycle_id=cycle_id,
    )


def release(new: AccountState, res: Reservation) -> tuple[Reservation, list[Posting]]:
    """Give back what ``res`` holds: bundle units, the credit hold, and its money to the
    book the account's mode uses *now*: prepaid, or, on an account switched to postpaid
    since the grant, ``Book.CREDIT`` (where that switch moved the prepaid balance, and
    which the bill run applies), since a postpaid account spends no prepaid money."""
    aid = new.account.account_id
    postings: list[Posting] = []
    if res.money_held:
        to = Book.CREDIT if new.account.payment_mode is PaymentMode.POSTPAID else Book.PREPAID
        new.reserved -= res.money_held
        new.add(to, res.money_held)
        postings = [
            Posting(account_key(aid, Book.RESERVED), -res.money_held),
            Posting(account_key(aid, to), res.money_held),
        ]
    for bundle_id, units in res.bundle_held:
        key = (res.cycle_id, bundle_id)
        new.bundle_held[key] -= units
        if not new.bundle_held[key]:
            del new.bundle_held[key]
    released = replace(res, money_held=0, credit_hold=0, bundle_held=(), granted_units=0)
    return released, postings


def settle(
    new: AccountState,
    res: Reservation,
    used: int,
    at_s: int,
    tariff: Tariff,
    config: ChargingConfig,
    notes: list[Notification],
) -> tuple[Reservation, Entry | None]:
    """Charge ``used`` units of ``res`` (module docstring, "Settling")."""
    aid = new.account.account_id
    quote = res.quote
    cycle_id = res.cycle_id
    left = used
    held: list[tuple[str, int]] = []
    for bundle_id, units in res.bundle_held:
        take = min(units, left)
        left -= take
        if take:
            key = (cycle_id, bundle_id)
            new.bundle_held[key] -= take
            if not new.bundle_held[key]:
                del new.bundle_held[key]
            new.bundle_used[key] = new.bundle_used.get(key, 0) + take
            for bundle in tariff.bundles_for(quote.plan_id, quote.plan_version, quote.usage_class):
                if bundle.bundle_id == bundle_id:
                    check_bundle(
                        new, config.reminders, cycle_id, bundle_id, bundle.units, at_s, notes
                    )
        if units - take:
            held.append((bundle_id, units - take))
    bundle_units = used - left
    money_units = res.money_units + left
    cost = tariff.price_units(quote.price_key, money_units) - res.charged if left else 0
    from_held = min(cost, res.money_held)
    from_hold = min(cost - from_held, res.credit_hold)
    beyond = cost - from_held - from_hold
    postings = [Posting(revenue_key(quote.service), cost)]
    if from_held:
        new.reserved -= from_held
        postings.append(Posting(account_key(aid, Book.RESERVED), -from_held))
    if from_hold:
        new.unbilled -= from_hold
        postings.append(Posting(account_key(aid, Book.UNBILLED), -from_hold))
    unbilled_part = from_hold
    prepaid_part = debt_part = 0
    if beyond:
        # Usage beyond the grant has happened: charge it as offline usage under the debt policy.
        debt_config = replace(config, offline_policy=OfflinePolicy.DEBT)
        result, p, u, d = split_money(new, beyond, True, debt_config)
        post_money(new, result, p, u, d, cycle_id, at_s, config, notes)
        unbilled_part += u
        prepaid_part, debt_part = p, d
        for book, part in ((Book.PREPAID, p), (Book.UNBILLED, u), (Book.DEBT, d)):
            if part:
                postings.append(Posting(account_key(aid, book), -part))
    key = (cycle_id, quote.usage_class)
    old = new.usage.get(key, (0, 0, 0, 0, 0))
    new.usage[key] = (
        old[0],
        old[1] + used,
        old[2] + bundle_units,
        old[3] + cost,
        old[4] + unbilled_part,
    )
    settled = replace(
        res,
        bundle_held=tuple(held),
        money_held=res.money_held - from_held,
        credit_hold=res.credit_hold - from_hold,
        used_units=res.used_units + used,
        money_units=money_units,
        charged=res.charged + cost,
        paid_prepaid=res.paid_prepaid + from_held + prepaid_part,
        paid_unbilled=res.paid_unbilled + unbilled_part,
        paid_debt=res.paid_debt + debt_part,
    )
    entry = (
        session_entry(
            f"settle:{res.session_id}:{settled.used_units}",
            EntryKind.SETTLE,
            new,
            at_s,
            cycle_id,
            postings,
        )
        if cost
        else None
    )
    return settled, entry


def session_line(res: Reservation, at_s: int, currency: str) -> Charge:
    """The usage line of a session closed by terminate: what it used and cost in all.

    Its result is ``TERMINATED``, so it derives no ledger entry and no mark: the
    session's money was posted by its ``settle`` entries and its steps are marked
    by request id. The line exists for the usage history (ListUsage), where the
    session shows as one line like an offline record (``record_id`` is the session id).
    """
    quote = res.quote
    return Charge(
        record_id=res.session_id,
        ref="session:" + res.session_id,
        account_id=res.account_id,
        result=Result.TERMINATED,
        cycle_id=res.cycle_id,
        service=quote.service,
        usage_class=quote.usage_class,
        units=res.used_units,
        bundle_units=res.used_units - res.money_units,
        amount=res.charged,
        prepaid=res.paid_prepaid,
        unbilled=res.paid_unbilled,
        debt=res.paid_debt,
        currency=currency,
        at_s=at_s,
    )


def available_funds(new: AccountState) -> int | None:
    mode = new.account.payment_mode
    if mode is PaymentMode.PREPAID:
        return max(new.prepaid, 0)
    credit = new.credit_available()
    if mode is PaymentMode.POSTPAID or credit is None:
        return credit
    return max(new.prepaid, 0) + credit


def grant(
    new: AccountState, res: Reservation, requested: int, now_s: int, tariff: Tariff
) -> tuple[Reservation, list[Posting]]:
    """Reserve up to ``requested`` units for ``res`` (which holds nothing), valid from
    ``now_s`` (the service's clock) for the session's validity."""
    quote = res.quote
    left = requested
    held: list[tuple[str, int]] = []
    for bundle in tariff.bundles_for(quote.plan_id, quote.plan_version, quote.usage_class):
        if not left:
            break
        free = new.bundle_remaining(res.cycle_id, bundle.bundle_id, bundle.units)
        take = min(max(free, 0), left)
        if take:
            key = (res.cycle_id, bundle.bundle_id)
            new.bundle_held[key] = new.bundle_held.get(key, 0) + take
            held.append((bundle.bundle_id, take))
            left -= take
    money_units = 0
    hold = 0
    if left:
        available = available_funds(new)
        base = tariff.price_units(quote.price_key, res.money_units) if res.money_units else 0
        wanted = res.money_units + left
        whole = -1  # the price of the whole ask, once known
        if available is not None and wanted <= UNITS_MAX_DEFAULT:
            whole = tariff.price_units(quote.price_key, wanted)
        if available is None or 0 <= whole <= available + base:
            # Prices never fall as units grow, so when the whole ask fits, the most
            # units the funds cover (the search below) is at least the ask: skip it.
            money_units = left
        else:
            fits = tariff.units_for_amount(quote.price_key, available + base) - res.money_units
            money_units = max(min(left, fits), 0)
        if money_units == left and whole >= 0:
            hold = whole - base
        elif money_units:
            hold = tariff.price_units(quote.price_key, res.money_units + money_units) - base
    from_prepaid = 0
    if new.account.payment_mode is not PaymentMode.POSTPAID:
        from_prepaid = min(hold, max(new.prepaid, 0))
    aid = new.account.account_id
    postings: list[Posting] = []
    if from_prepaid:
        new.prepaid -= from_prepaid
        new.reserved += from_prepaid
        postings = [
            Posting(account_key(aid, Book.PREPAID), -from_prepaid),
            Posting(account_key(aid, Book.RESERVED), from_prepaid),
        ]
    granted = requested - left + money_units
    granted_res = replace(
        res,
        granted_units=granted,
        bundle_held=tuple(held),
        money_held=from_prepaid,
        credit_hold=hold - from_prepaid,
        expires_at_s=now_s + res.validity_s,
        final=granted < requested,
    )
    return granted_res, postings


def grant_of(
    res: Reservation, *, now_s: int, charged_now: int = 0, result: Result = Result.GRANTED
) -> Grant:
    """The answer of a step that left ``res`` at ``now_s`` and charged ``charged_now``."""
    validity = max(res.expires_at_s - now_s, 0) if res.is_open and res.granted_units else 0
    return Grant(
        session_id=res.session_id,
        granted_units=res.granted_units,
        final=res.final,
        expires_at_s=res.expires_at_s,
        used_units=res.used_units,
        charged=res.charged,
        money_held=res.money_held if res.is_open else 0,
        charged_now=charged_now,
        validity_s=validity,
        result=result,
    )


def lapse(new: AccountState, res: Reservation) -> tuple[Reservation, Entry | None]:
    """Expire ``res`` (open, its validity over): give back what it holds and mark it
    ``EXPIRED``. The release entry is dated at the end of the validity and named by
    it (``expire:<session>:<expires_at_s>``), so it is the same entry whether the
    owner's expiry duty or a late step of the session found it first."""
    released, postings = release(new, res)
    expired = replace(released, status=SessionStatus.EXPIRED)
    ref = f"expire:{res.session_id}:{res.expires_at_s}"
    entry = session_entry(ref, EntryKind.RELEASE, new, res.expires_at_s, res.cycle_id, postings)
    return expired, entry
