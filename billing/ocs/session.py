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
  (``TERMINATED``); the session shows in the usage history as one line
  (:func:`billing.ocs.reservations.session_line`: its units and cost in all).
- :func:`expire` releases every open reservation whose validity ended
  (``expires_at_s <= at_s``), exactly once: the session becomes ``EXPIRED``,
  a second call finds nothing to do. The account shard's owner calls it as a
  duty on its clock (``actors.shard.duties``).

**Time.** A grant's validity runs on the service's clock (``now_s``), not on the
event time a client may put in ``at_s`` (RFC 4006: the Validity-Time counts from
the answer); ``at_s`` still dates the usage (cycle, rating). Without ``now_s``
the two are one.

**Late steps** (the validity ended before the step, whether or not the expiry
duty has run; a step first expires the session exactly as the duty would, with
the same entry, so the outcome never depends on which came first):

- an UPDATE within the session supervision — RFC 4006's Tcc, two validity
  times after the last grant, since a client *must* report with an UPDATE when
  the Validity-Time ends — is served as a new initial request: its used units
  are charged (nothing is held any more: from the balance, else as debt) and
  quota is granted anew from what is available. After it, the session is over
  for the server: ``SESSION_CLOSED`` (the gateway's ``UNKNOWN_SESSION``, Diameter
  5002), nothing written;
- a TERMINATE still charges its reported units (the usage happened), until the
  expired session is dropped (:data:`EXPIRED_KEEP_S` after its validity).

**Answers.** Each step's :class:`Grant` is its whole answer and the result its
idempotency mark keeps: what *this* step charged (``charged_now``), the grant's
validity, the money held after it and the step's result. A retry with the same
request id gets it back unchanged (``DUPLICATE``); other content under the id
is ``exists_with_different_<field>``.

**Settling** ``used`` units: held bundle units first (they become consumed),
then money. Money units are priced *cumulatively* over the session —
``price(total money units) − already charged`` — so connect fees and
increments apply once per session, not per update. The cost is taken from
the held money (``reserved → revenue``), then from the credit hold
(``unbilled``), and usage beyond the grant is charged like offline usage under
the ``debt`` policy (it has happened). Each settle posts one ``settle`` entry.

Blocked and closed accounts get no quota; direct debit (an immediate event)
is :func:`billing.charging.batch.charge` with ``offline=False``.

**Layout.** The session data and quota arithmetic are in
:mod:`billing.ocs.reservations`; refunds and balance checks in
:mod:`billing.ocs.events`. Their public names are re-exported here.
"""

from __future__ import annotations

from dataclasses import replace

from billing.accounts import AccountState, AccountStatus
from billing.bundles import Tariff
from billing.charging.config import ChargingConfig, calendar_for
from billing.charging.rows import Charge
from billing.history import appended
from billing.idempotency import Mark, mark
from billing.ledger import Entry, EntryKind
from billing.notifications import Notification, NotificationKind, make_notification
from billing.ocs.events import BalanceView, Refund, balance_check, refund
from billing.ocs.reservations import (
    EXPIRED_KEEP_S,
    Grant,
    Quote,
    Reservation,
    SessionStatus,
    grant,
    grant_of,
    lapse,
    release,
    session_entry,
    session_line,
    settle,
    step_fields,
)
from billing.outcome import Effects, Outcome, Result, replayed
from billing.reminders import check_low_balance

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


def _finish(
    new: AccountState,
    res: Reservation,
    result: Result,
    request_id: str,
    fields: dict[str, object],
    entries: list[Entry | None],
    notes: list[Notification],
    at_s: int,
    now_s: int,
    config: ChargingConfig,
    lines: tuple[Charge, ...] = (),
    charged_now: int = 0,
) -> Outcome[Grant]:
    grant = grant_of(res, now_s=now_s, charged_now=charged_now, result=result)
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
            charges=lines,
            notifications=tuple(notes),
        ),
    )


def _replayed(existing: Mark[Grant] | None, fields: dict[str, object]) -> Outcome[Grant] | None:
    if (early := replayed(existing, fields)) is not None:
        return early
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
    now_s: int | None = None,
) -> Outcome[Grant]:
    """Open ``session_id`` and reserve up to ``requested_units``, valid ``validity_s``
    from ``now_s`` (the service's clock; ``None``: the event time ``at_s``)."""
    fields = step_fields(state, session_id, "initial", (requested_units, quote.price_key))
    replayed = _replayed(existing, fields)
    if replayed is not None:
        return replayed
    refused = _refused(state)
    if refused is not None:
        return Outcome(result=refused)
    if requested_units <= 0 or validity_s <= 0 or session_id in state.reservations:
        return Outcome(result=Result.INVALID_ARGUMENT)
    clock = at_s if now_s is None else now_s
    new = state.copy()
    cycle_id = calendar_for(config.tz).cycle_of(at_s).cycle_id
    res = Reservation(
        session_id=session_id,
        account_id=new.account.account_id,
        quote=quote,
        cycle_id=cycle_id,
        status=SessionStatus.OPEN,
        validity_s=validity_s,
        expires_at_s=clock + validity_s,
        opened_at_s=clock,
    )
    res, postings = grant(new, res, requested_units, clock, tariff)
    if res.granted_units == 0:
        return Outcome(result=Result.INSUFFICIENT_BALANCE)
    key = (cycle_id, quote.usage_class)
    old = new.usage.get(key, (0, 0, 0, 0, 0))
    new.usage[key] = (old[0] + 1, *old[1:])
    entry = session_entry(
        f"reserve:{session_id}:0", EntryKind.RESERVE, new, at_s, cycle_id, postings
    )
    return _finish(new, res, Result.GRANTED, request_id, fields, [entry], [], at_s, clock, config)


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
    now_s: int | None = None,
) -> Outcome[Grant]:
    """Settle ``used_units`` of ``session_id`` and reserve up to ``requested_units`` more.

    Late (the validity ended by ``now_s``, the service's clock; ``None``: ``at_s``):
    served as a new initial request while the session is supervised (RFC 4006: at
    the end of the Validity-Time the client must report with an UPDATE; Tcc is two
    validity times), refused ``SESSION_CLOSED`` after that (module docstring).
    """
    fields = step_fields(state, session_id, "update", (used_units, requested_units))
    replayed = _replayed(existing, fields)
    if replayed is not None:
        return replayed
    res = state.reservations.get(session_id)
    if res is None:
        return Outcome(result=Result.UNKNOWN_SESSION)
    clock = at_s if now_s is None else now_s
    late = not res.is_open or res.expires_at_s <= clock
    if res.status is SessionStatus.CLOSED or (late and clock >= res.supervised_until_s):
        return Outcome(result=Result.SESSION_CLOSED)
    if used_units < 0 or requested_units < 0:
        return Outcome(result=Result.INVALID_ARGUMENT)
    new = state.copy()
    notes: list[Notification] = []
    lapsed: Entry | None = None
    if res.is_open and late:
        # The owner's expiry duty has not come round yet: release as it would have.
        res, lapsed = lapse(new, res)
    if late:
        res = replace(res, status=SessionStatus.OPEN, final=False)
    charged_before = res.charged
    res, settle_entry = settle(new, res, used_units, at_s, tariff, config, notes)
    res, release_postings = release(new, res)
    step = res.used_units
    release_entry = session_entry(
        f"release:{session_id}:{step}", EntryKind.RELEASE, new, at_s, res.cycle_id, release_postings
    )
    result = Result.GRANTED
    reserve = None
    if _refused(new) is not None:
        result = _refused(new) or Result.ACCOUNT_BLOCKED
        res = replace(res, final=True, expires_at_s=clock + res.validity_s)
    elif requested_units:
        res, postings = grant(new, res, requested_units, clock, tariff)
        reserve = session_entry(
            f"reserve:{session_id}:{step}", EntryKind.RESERVE, new, at_s, res.cycle_id, postings
        )
    else:
        res = replace(res, expires_at_s=clock + res.validity_s)
    entries = [lapsed, settle_entry, release_entry, reserve]
    return _finish(
        new, res, result, request_id, fields, entries, notes, at_s, clock, config,
        charged_now=res.charged - charged_before,
    )  # fmt: skip


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
    now_s: int | None = None,
) -> Outcome[Grant]:
    """Settle the final ``used_units`` of ``session_id``, release the rest, close it.

    A late terminate (the validity ended by ``now_s``; ``None``: ``at_s``) still
    charges the reported units: the usage happened.
    """
    fields = step_fields(state, session_id, "terminate", used_units)
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
    clock = at_s if now_s is None else now_s
    new = state.copy()
    notes: list[Notification] = []
    lapsed: Entry | None = None
    if res.is_open and res.expires_at_s <= clock:
        res, lapsed = lapse(new, res)  # as the expiry duty would have: then settle late
    charged_before = res.charged
    res, settle_entry = settle(new, res, used_units, at_s, tariff, config, notes)
    res, release_postings = release(new, res)
    release_entry = session_entry(
        f"release:{session_id}:final", EntryKind.RELEASE, new, at_s, res.cycle_id, release_postings
    )
    res = replace(res, status=SessionStatus.CLOSED, final=False)
    entries = [lapsed, settle_entry, release_entry]
    line = session_line(res, at_s, new.account.currency)
    new.history = appended(new.history, line, config.history_max)
    return _finish(
        new, res, Result.TERMINATED, request_id, fields, entries, notes, at_s, clock, config,
        (line,), charged_now=res.charged - charged_before,
    )  # fmt: skip


def expire(state: AccountState, *, at_s: int) -> Outcome[tuple[str, ...]]:
    """Release every open reservation whose validity ended by ``at_s`` (the service's
    clock), exactly once: each one's release is :func:`~billing.ocs.reservations.lapse`,
    the same entry a late step would write. Idempotent by state: an expired session is
    not open, so a second call (or the next owner after a takeover) finds nothing.

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
        expired, entry = lapse(new, res)
        new.reservations[res.session_id] = expired
        if entry is not None:
            entries.append(entry)
    for res in stale:
        del new.reservations[res.session_id]
    return Outcome(
        result=Result.EXPIRED,
        receipt=tuple(sorted(r.session_id for r in due)),
        effects=Effects(accounts=(new,), explicit_entries=tuple(entries)),
    )
