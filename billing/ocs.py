"""Online charging (RFC 4006 Gy / Nchf): sessions that reserve, report and settle quota.

**Steps**, each idempotent by its ``request_id`` (mark fields ``account``,
``session``, ``step``, ``units``):

- :func:`session_initial` reserves quota for a new session: units from the
  covering bundles first (held, not consumed), then money units — the most
  units whose price the available funds cover (``Tariff.units_for_amount``).
  Available funds: the prepaid balance (prepaid), the free credit
  (postpaid, unlimited if no limit), both (hybrid, prepaid first). Held money
  moves ``prepaid → reserved`` with a ``reserve`` entry; the postpaid part is
  a credit hold that counts against the limit but moves no money.
  Fewer units than requested sets ``final`` (final unit indication); no unit
  at all is ``INSUFFICIENT_BALANCE`` and opens no session.
- :func:`session_update` settles the used units, releases what is left, and
  grants anew (``GRANTED``).
- :func:`session_terminate` settles the final used units and releases the rest
  (``TERMINATED``).
- :func:`expire` releases every open reservation whose validity ended
  (``expires_at_s <= at_s``), exactly once: the session becomes ``EXPIRED``,
  a second call finds nothing to do. A later terminate of an expired session
  still charges its reported units; a later update is ``SESSION_CLOSED``.

**Settling** ``used`` units: held bundle units first (they become consumed),
then money. Money units are priced *cumulatively* over the session —
``price(total money units) − already charged`` — so connect fees and
increments apply once per session, not per update. The cost is taken from
the held money (``reserved → revenue``), then from the credit hold
(``unbilled``), and usage beyond the grant is charged like offline usage under
the ``debt`` policy (it has happened). Each settle posts one ``settle`` entry.

Blocked and closed accounts get no quota; direct debit (an immediate event)
is :func:`billing.charging.charge` with ``offline=False``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from billing.accounts import (
    AccountState,
    AccountStatus,
    Effects,
    Outcome,
    PaymentMode,
    Result,
    conflict_result,
)
from billing.bundles import Tariff
from billing.charging import (
    ChargingConfig,
    OfflinePolicy,
    calendar_for,
    post_money,
    revenue_key,
    split_money,
)
from billing.idempotency import Conflict, Mark, Replay, check, mark
from billing.ledger import Book, Entry, EntryKind, Posting, account_key
from billing.notifications import Notification, NotificationKind, make_notification
from billing.reminders import check_bundle, check_low_balance

__all__ = [
    "EXPIRED_KEEP_S",
    "BalanceView",
    "Grant",
    "Quote",
    "Refund",
    "Reservation",
    "SessionStatus",
    "balance_check",
    "expire",
    "refund",
    "session_initial",
    "session_terminate",
    "session_update",
]

EXPIRED_KEEP_S = 86_400  # an expired session is kept this long for a late terminate


class SessionStatus(enum.StrEnum):
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

    @property
    def is_open(self) -> bool:
        return self.status is SessionStatus.OPEN


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """The answer to a session step: quota granted now and the session's totals so far."""

    session_id: str
    granted_units: int
    final: bool
    expires_at_s: int
    used_units: int
    charged: int


def _fields(state: AccountState, session_id: str, step: str, units: object) -> dict[str, object]:
    return {
        "account": state.account.account_id,
        "session": session_id,
        "step": step,
        "units": units,
    }


def _entry(
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


def _release(new: AccountState, res: Reservation) -> tuple[Reservation, list[Posting]]:
    """Give back what ``res`` holds: money to prepaid, bundle units, the credit hold."""
    aid = new.account.account_id
    postings: list[Posting] = []
    if res.money_held:
        new.reserved -= res.money_held
        new.prepaid += res.money_held
        postings = [
            Posting(account_key(aid, Book.RESERVED), -res.money_held),
            Posting(account_key(aid, Book.PREPAID), res.money_held),
        ]
    for bundle_id, units in res.bundle_held:
        key = (res.cycle_id, bundle_id)
        new.bundle_held[key] -= units
        if not new.bundle_held[key]:
            del new.bundle_held[key]
    released = replace(res, money_held=0, credit_hold=0, bundle_held=(), granted_units=0)
    return released, postings


def _settle(
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
    if beyond:
        # Usage beyond the grant has happened: charge it as offline usage under the debt policy.
        debt_config = replace(config, offline_policy=OfflinePolicy.DEBT)
        result, p, u, d = split_money(new, beyond, True, debt_config)
        post_money(new, result, p, u, d, cycle_id, at_s, config, notes)
        unbilled_part += u
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
    )
    entry = (
        _entry(
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


def _available(new: AccountState) -> int | None:
    mode = new.account.payment_mode
    if mode is PaymentMode.PREPAID:
        return max(new.prepaid, 0)
    credit = new.credit_available()
    if mode is PaymentMode.POSTPAID or credit is None:
        return credit
    return max(new.prepaid, 0) + credit


def _grant(
    new: AccountState, res: Reservation, requested: int, at_s: int, tariff: Tariff
) -> tuple[Reservation, list[Posting]]:
    """Reserve up to ``requested`` units for ``res`` (which holds nothing)."""
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
        available = _available(new)
        base = tariff.price_units(quote.price_key, res.money_units) if res.money_units else 0
        if available is None:
            money_units = left
        else:
            fits = tariff.units_for_amount(quote.price_key, available + base) - res.money_units
            money_units = max(min(left, fits), 0)
        if money_units:
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
        expires_at_s=at_s + res.validity_s,
        final=granted < requested,
    )
    return granted_res, postings


def _grant_of(res: Reservation) -> Grant:
    return Grant(
        session_id=res.session_id,
        granted_units=res.granted_units,
        final=res.final,
        expires_at_s=res.expires_at_s,
        used_units=res.used_units,
        charged=res.charged,
    )


def _finish(
    new: AccountState,
    res: Reservation,
    result: Result,
    request_id: str,
    fields: dict[str, object],
    entries: list[Entry | None],
    notes: list[Notification],
    at_s: int,
    config: ChargingConfig,
) -> Outcome[Grant]:
    grant = _grant_of(res)
    if res.is_open:
        new.reservations[res.session_id] = res
    else:
        new.reservations.pop(res.session_id, None)
    if res.final and res.is_open:
        notes.append(
            make_notification(
                NotificationKind.FINAL_UNITS,
                account_id=new.account.account_id,
                at_s=at_s,
                cycle_id=res.cycle_id,
                subject=f"{res.session_id}:{res.used_units}",
                data={"granted": res.granted_units},
            )
        )
    check_low_balance(new, config.reminders, res.cycle_id, at_s, notes)
    return Outcome(
        result=result,
        receipt=grant,
        effects=Effects(
            accounts=(new,),
            explicit_entries=tuple(e for e in entries if e is not None),
            explicit_marks=((request_id, mark(fields, grant)),),
            notifications=tuple(notes),
        ),
    )


def _replayed(existing: Mark[Grant] | None, fields: dict[str, object]) -> Outcome[Grant] | None:
    decision = check(existing, fields)
    if isinstance(decision, Replay):
        return Outcome(result=Result.DUPLICATE, receipt=decision.result)
    if isinstance(decision, Conflict):
        return Outcome(result=conflict_result(decision))
    return None


def _refused(state: AccountState) -> Result | None:
    status = state.account.status
    if status is AccountStatus.CLOSED:
        return Result.ACCOUNT_CLOSED
    if status is AccountStatus.BLOCKED:
        return Result.ACCOUNT_BLOCKED
    return None


def session_initial(
    *,
    request_id: str,
    state: AccountState,
    session_id: str,
    quote: Quote,
    requested_units: int,
    validity_s: int,
    at_s: int,
    existing: Mark[Grant] | None,
    tariff: Tariff,
    config: ChargingConfig,
) -> Outcome[Grant]:
    """Open ``session_id`` and reserve up to ``requested_units``."""
    fields = _fields(state, session_id, "initial", (requested_units, quote.price_key))
    replayed = _replayed(existing, fields)
    if replayed is not None:
        return replayed
    refused = _refused(state)
    if refused is not None:
        return Outcome(result=refused)
    if requested_units <= 0 or validity_s <= 0 or session_id in state.reservations:
        return Outcome(result=Result.INVALID_ARGUMENT)
    new = state.copy()
    cycle_id = calendar_for(config.tz).cycle_of(at_s).cycle_id
    res = Reservation(
        session_id=session_id,
        account_id=new.account.account_id,
        quote=quote,
        cycle_id=cycle_id,
        status=SessionStatus.OPEN,
        validity_s=validity_s,
        expires_at_s=at_s + validity_s,
    )
    res, postings = _grant(new, res, requested_units, at_s, tariff)
    if res.granted_units == 0:
        return Outcome(result=Result.INSUFFICIENT_BALANCE)
    key = (cycle_id, quote.usage_class)
    old = new.usage.get(key, (0, 0, 0, 0, 0))
    new.usage[key] = (old[0] + 1, *old[1:])
    entry = _entry(f"reserve:{session_id}:0", EntryKind.RESERVE, new, at_s, cycle_id, postings)
    return _finish(new, res, Result.GRANTED, request_id, fields, [entry], [], at_s, config)


def session_update(
    *,
    request_id: str,
    state: AccountState,
    session_id: str,
    used_units: int,
    requested_units: int,
    at_s: int,
    existing: Mark[Grant] | None,
    tariff: Tariff,
    config: ChargingConfig,
) -> Outcome[Grant]:
    """Settle ``used_units`` of ``session_id`` and reserve up to ``requested_units`` more."""
    fields = _fields(state, session_id, "update", (used_units, requested_units))
    replayed = _replayed(existing, fields)
    if replayed is not None:
        return replayed
    res = state.reservations.get(session_id)
    if res is None:
        return Outcome(result=Result.UNKNOWN_SESSION)
    if not res.is_open:
        return Outcome(result=Result.SESSION_CLOSED)
    if used_units < 0 or requested_units < 0:
        return Outcome(result=Result.INVALID_ARGUMENT)
    new = state.copy()
    notes: list[Notification] = []
    res, settle_entry = _settle(new, res, used_units, at_s, tariff, config, notes)
    res, release_postings = _release(new, res)
    step = res.used_units
    release = _entry(
        f"release:{session_id}:{step}", EntryKind.RELEASE, new, at_s, res.cycle_id, release_postings
    )
    result = Result.GRANTED
    reserve = None
    if _refused(new) is not None:
        result = _refused(new) or Result.ACCOUNT_BLOCKED
        res = replace(res, final=True, expires_at_s=at_s + res.validity_s)
    elif requested_units:
        res, postings = _grant(new, res, requested_units, at_s, tariff)
        reserve = _entry(
            f"reserve:{session_id}:{step}", EntryKind.RESERVE, new, at_s, res.cycle_id, postings
        )
    else:
        res = replace(res, expires_at_s=at_s + res.validity_s)
    entries = [settle_entry, release, reserve]
    return _finish(new, res, result, request_id, fields, entries, notes, at_s, config)


def session_terminate(
    *,
    request_id: str,
    state: AccountState,
    session_id: str,
    used_units: int,
    at_s: int,
    existing: Mark[Grant] | None,
    tariff: Tariff,
    config: ChargingConfig,
) -> Outcome[Grant]:
    """Settle the final ``used_units`` of ``session_id``, release the rest, close it."""
    fields = _fields(state, session_id, "terminate", used_units)
    replayed = _replayed(existing, fields)
    if replayed is not None:
        return replayed
    res = state.reservations.get(session_id)
    if res is None:
        return Outcome(result=Result.UNKNOWN_SESSION)
    if res.status is SessionStatus.CLOSED:
        return Outcome(result=Result.SESSION_CLOSED)
    if used_units < 0:
        return Outcome(result=Result.INVALID_ARGUMENT)
    new = state.copy()
    notes: list[Notification] = []
    res, settle_entry = _settle(new, res, used_units, at_s, tariff, config, notes)
    res, release_postings = _release(new, res)
    release = _entry(
        f"release:{session_id}:final", EntryKind.RELEASE, new, at_s, res.cycle_id, release_postings
    )
    res = replace(res, status=SessionStatus.CLOSED, final=False)
    entries = [settle_entry, release]
    return _finish(new, res, Result.TERMINATED, request_id, fields, entries, notes, at_s, config)


def expire(state: AccountState, *, at_s: int) -> Outcome[tuple[str, ...]]:
    """Release every open reservation whose validity ended by ``at_s`` (idempotent).

    The receipt lists the sessions expired now; with none the outcome has no
    effects. Expired sessions older than :data:`EXPIRED_KEEP_S` are dropped.
    """
    due = [r for r in state.reservations.values() if r.is_open and r.expires_at_s <= at_s]
    stale = [
        r
        for r in state.reservations.values()
        if r.status is SessionStatus.EXPIRED and r.expires_at_s + EXPIRED_KEEP_S <= at_s
    ]
    if not due and not stale:
        return Outcome(result=Result.EXPIRED, receipt=())
    new = state.copy()
    entries: list[Entry] = []
    for res in sorted(due, key=lambda r: r.session_id):
        released, postings = _release(new, res)
        new.reservations[res.session_id] = replace(released, status=SessionStatus.EXPIRED)
        entry = _entry(
            f"expire:{res.session_id}", EntryKind.RELEASE, new, at_s, res.cycle_id, postings
        )
        if entry is not None:
            entries.append(entry)
    for res in stale:
        del new.reservations[res.session_id]
    return Outcome(
        result=Result.EXPIRED,
        receipt=tuple(sorted(r.session_id for r in due)),
        effects=Effects(accounts=(new,), explicit_entries=tuple(entries)),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Refund:
    """A refund as applied: ``amount`` back from ``op/revenue/<service>`` to ``book``."""

    request_id: str
    account_id: str
    amount: int
    service: str
    book: Book
    at_s: int


def refund(
    *,
    request_id: str,
    state: AccountState,
    amount: int,
    service: str,
    reason_ref: str,
    at_s: int,
    existing: Mark[Refund] | None,
    config: ChargingConfig,
) -> Outcome[Refund]:
    """Give ``amount`` of ``service`` revenue back: to prepaid (prepaid, hybrid) or credit
    (postpaid). ``reason_ref`` names what is refunded (a record or session id)."""
    fields = {
        "account": state.account.account_id,
        "amount": amount,
        "content": (service, reason_ref),
    }
    decision = check(existing, fields)
    if isinstance(decision, Replay):
        return Outcome(result=Result.DUPLICATE, receipt=decision.result)
    if isinstance(decision, Conflict):
        return Outcome(result=conflict_result(decision))
    if state.account.status is AccountStatus.CLOSED:
        return Outcome(result=Result.ACCOUNT_CLOSED)
    if amount <= 0:
        return Outcome(result=Result.INVALID_ARGUMENT)
    new = state.copy()
    book = Book.CREDIT if new.account.payment_mode is PaymentMode.POSTPAID else Book.PREPAID
    new.add(book, amount)
    cycle_id = calendar_for(config.tz).cycle_of(at_s).cycle_id
    entry = Entry(
        ref=f"refund:{request_id}",
        kind=EntryKind.REFUND,
        currency=new.account.currency,
        at_s=at_s,
        postings=(
            Posting(revenue_key(service), -amount),
            Posting(account_key(new.account.account_id, book), amount),
        ),
        cycle_id=cycle_id,
        memo=reason_ref,
    )
    receipt = Refund(
        request_id=request_id,
        account_id=new.account.account_id,
        amount=amount,
        service=service,
        book=book,
        at_s=at_s,
    )
    notes: list[Notification] = []
    check_low_balance(new, config.reminders, cycle_id, at_s, notes)
    return Outcome(
        result=Result.REFUNDED,
        receipt=receipt,
        effects=Effects(
            accounts=(new,),
            explicit_entries=(entry,),
            explicit_marks=((request_id, mark(fields, receipt)),),
            notifications=tuple(notes),
        ),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class BalanceView:
    """A balance check: money by book, what can be spent now, bundles left this cycle."""

    account_id: str
    currency: str
    payment_mode: PaymentMode
    books: tuple[tuple[str, int], ...]
    spendable: int | None
    credit_available: int | None
    bundles_left: tuple[tuple[str, int], ...]


def balance_check(
    state: AccountState,
    *,
    at_s: int,
    tariff: Tariff,
    config: ChargingConfig,
    quote: Quote | None = None,
) -> Outcome[BalanceView]:
    """Read-only: the account's balances; with a ``quote``, the bundles left for its class."""
    cycle_id = calendar_for(config.tz).cycle_of(at_s).cycle_id
    bundles: list[tuple[str, int]] = []
    if quote is not None:
        for bundle in tariff.bundles_for(quote.plan_id, quote.plan_version, quote.usage_class):
            left = state.bundle_remaining(cycle_id, bundle.bundle_id, bundle.units)
            bundles.append((bundle.bundle_id, left))
    view = BalanceView(
        account_id=state.account.account_id,
        currency=state.account.currency,
        payment_mode=state.account.payment_mode,
        books=tuple((book.value, amount) for book, amount in state.balances().items()),
        spendable=_available(state),
        credit_available=state.credit_available(),
        bundles_left=tuple(bundles),
    )
    return Outcome(result=Result.BALANCE, receipt=view)
