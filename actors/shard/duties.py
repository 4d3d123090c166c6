"""The time-driven duties of an account shard, run by its owner in bounded steps.

Two duties act on the shard's own clock reading (``now_s``, handed in by the
caller: the host's duty runner, :mod:`actors.duties`, or a test):

- **reservation expiry**: every open online-charging reservation whose validity
  ended is released (``billing.ocs.session.expire``: held money back to prepaid,
  bundle units and credit holds freed, the session ``EXPIRED``);
- **invoice ageing**: every open invoice whose due date passed becomes
  ``OVERDUE`` with one ``payment_overdue`` reminder (``billing.writeoff.age_invoices``).

Each is an idempotent write with its own id — the release entry
``expire:<session>:<expires_at_s>``, the reminder
``<account>:payment_overdue:<cycle>:<invoice>:0`` — decided from the stored state:
a session already expired is not open, an invoice already overdue is not open,
so a step run twice, or again by the next owner after a takeover, does nothing
the second time. Every step is one synced commit under the shard's epoch
fence, so a zombie owner's duty step is refused like any of its writes.

**Bounded steps.** :meth:`ShardDuties.run_duties` does at most one chunk of
each duty and says whether more is left; the host takes the unit's lock per
step only, so calls interleave with the duties. Reservations are found through
the ``r/<account> -> earliest due`` rows, visited from a cursor that wraps
around (a full pass over the accounts holding reservations per round); open
invoices through the ``o/<due><invoice>`` rows, which are in due order, so a
step reads only what is due.

:meth:`ShardDuties.inspect` is the shard's part of the automatic inspection: what
the duties should have dealt with and did not (a reservation held past its
validity plus a bound, an invoice past due and still open, an overdue invoice
without its reminder, a session open for very long).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from actors.shard import ops
from actors.shard.codec import decode_account, decode_value
from actors.shard.core import ShardCore
from actors.shard.keys import (
    AGEING_PREFIX,
    INVOICE_PREFIX,
    NOTIFICATION_ID_PREFIX,
    RESERVATION_PREFIX,
    account_key,
    key_after,
    prefix_end,
    prefixed,
)
from actors.shard.work import Work
from actors.store.codec import decode_u64, encode_u64
from billing.invoice import InvoiceStatus
from billing.ocs.session import expire
from billing.writeoff import age_invoices, overdue_notice

__all__ = ["DutyStep", "ShardDuties", "ShardInspection"]

#: Examples a finding names (the count is exact; the list is a sample).
EXAMPLES_MAX: Final = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class DutyStep:
    """What one :class:`~actors.shard.ops.RunDuties` step did.

    ``expired``: account -> the sessions released now; ``overdue``: invoices aged
    into ``OVERDUE`` now; ``more``: a duty has more to look at (call again).
    """

    expired: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    overdue: int = 0
    more: bool = False

    @property
    def sessions_expired(self) -> int:
        return sum(len(s) for s in self.expired.values())


@dataclass(frozen=True, slots=True, kw_only=True)
class ShardInspection:
    """The shard's findings at ``now_s`` (see :meth:`ShardDuties.inspect`); each
    ``*_examples`` names a few of what its count counts."""

    now_s: int
    open_reservations: int = 0
    reserved_total: int = 0
    reservations_stuck: int = 0
    stuck_examples: tuple[str, ...] = ()
    reservations_over_old: int = 0
    over_old_examples: tuple[str, ...] = ()
    invoices_unaged: int = 0
    unaged_examples: tuple[str, ...] = ()
    overdue_without_reminder: int = 0
    unreminded_examples: tuple[str, ...] = ()


def _sample(found: list[str], item: str) -> None:
    if len(found) < EXAMPLES_MAX:
        found.append(item)


class ShardDuties:
    """Reservation expiry and invoice ageing, in steps; the shard's self-inspection."""

    def __init__(self, core: ShardCore) -> None:
        self.core = core
        # Where the next expiry step resumes its walk over the r/ rows. In memory
        # only: a new owner starts from the first row, which costs one extra pass.
        self._cursor = RESERVATION_PREFIX

    # -- one bounded step of each duty ---------------------------------------------------

    def run_duties(self, op: ops.RunDuties) -> DutyStep:
        """One step: expire the due reservations among the next ``accounts_max`` accounts
        that hold any, and age up to ``invoices_max`` invoices due by ``now_s``."""
        expired, cursor = self._expire_chunk(self._cursor, op.now_s, op.accounts_max)
        self._cursor = RESERVATION_PREFIX if cursor is None else cursor
        overdue, ageing_left = self._age_chunk(op.now_s, op.invoices_max)
        return DutyStep(expired=expired, overdue=overdue, more=cursor is not None or ageing_left)

    def _expire_chunk(
        self, start: bytes, now_s: int, limit: int
    ) -> tuple[dict[str, tuple[str, ...]], bytes | None]:
        """Expire what is due among the next ``limit`` r/ rows from ``start`` (one commit);
        the key to resume from, or None when the rows ran out."""
        core = self.core
        chunk = list(core.store.scan(start, prefix_end(RESERVATION_PREFIX), limit=limit))
        expired: dict[str, tuple[str, ...]] = {}
        if not chunk:
            return expired, None
        work = Work(core)
        for key, raw in chunk:
            if decode_u64(raw) > now_s:
                continue
            account_id = key[len(RESERVATION_PREFIX) :].decode()
            state = work.state(account_id)
            if state is None:
                continue
            out = expire(state, at_s=now_s)
            work.apply(out.effects, account_id)
            if out.receipt:
                expired[account_id] = out.receipt
        work.commit()
        return expired, key_after(chunk[-1][0]) if len(chunk) == limit else None

    def _age_chunk(self, now_s: int, limit: int) -> tuple[int, bool]:
        """Age up to ``limit`` open invoices due by ``now_s`` (one commit); how many became
        overdue, and whether more may be due."""
        core = self.core
        end = AGEING_PREFIX + encode_u64(now_s + 1)
        chunk = list(core.store.scan(AGEING_PREFIX, end, limit=limit))
        if not chunk:
            return 0, False
        work = Work(core)
        invoices = []
        for key, raw in chunk:
            found = work.invoice(raw.decode(), key[len(AGEING_PREFIX) + 8 :].decode())
            if found is None:
                work.batch.delete(key)  # an index row without its invoice: drop it
            else:
                invoices.append(found[0])
        changed, notices = age_invoices(invoices, now_s)
        for invoice in changed:
            work.put_invoice(invoice)  # OVERDUE: put_invoice drops its index row
        for note in notices:
            work.put_notification(note)
        done = {i.invoice_id for i in changed}
        for invoice in invoices:
            if invoice.invoice_id not in done:  # no longer ageing (paid meanwhile)
                key = AGEING_PREFIX + encode_u64(invoice.due_at_s) + invoice.invoice_id.encode()
                work.batch.delete(key)
        work.commit()
        return len(changed), len(chunk) == limit

    # -- the whole of a duty in one call (operator and test operations) ---------------------

    def expire_reservations(self, op: ops.ExpireReservations) -> dict[str, tuple[str, ...]]:
        """Release every reservation whose validity ended by ``at_s``, exactly once
        (one commit per chunk of accounts); returns the sessions expired per account."""
        expired: dict[str, tuple[str, ...]] = {}
        start: bytes | None = RESERVATION_PREFIX
        while start is not None:
            found, start = self._expire_chunk(start, op.at_s, self.core.chunk_accounts)
            expired.update(found)
        return expired

    def age_invoices(self, op: ops.AgeInvoices) -> int:
        """Mark open invoices due by ``at_s`` overdue (one notice each); returns how many."""
        total, more = 0, True
        while more:
            changed, more = self._age_chunk(op.at_s, self.core.chunk_accounts)
            total += changed
        return total

    # -- the shard's part of the automatic inspection ---------------------------------------

    def inspect(self, op: ops.InspectShard) -> ShardInspection:
        """What the duties should have done by ``now_s`` and did not, read from committed
        state: reservations held ``late_s`` past their validity, sessions open longer
        than ``session_age_max_s``, invoices open ``late_s`` past their due date, and
        overdue invoices without their ``payment_overdue`` reminder."""
        store, now_s = self.core.store, op.now_s
        open_count = reserved = stuck = over_old = 0
        stuck_ex: list[str] = []
        old_ex: list[str] = []
        for key, _raw in store.scan(RESERVATION_PREFIX, prefix_end(RESERVATION_PREFIX)):
            account_id = key[len(RESERVATION_PREFIX) :].decode()
            raw_row = store.get(account_key(account_id))
            if raw_row is None:
                continue
            for res in decode_account(raw_row).state.reservations.values():
                if not res.is_open:
                    continue
                open_count += 1
                reserved += res.money_held
                name = f"{account_id}/{res.session_id}"
                if res.expires_at_s + op.late_s <= now_s:
                    stuck += 1
                    _sample(stuck_ex, name)
                if res.opened_at_s and now_s - res.opened_at_s > op.session_age_max_s:
                    over_old += 1
                    _sample(old_ex, name)
        unaged = 0
        unaged_ex: list[str] = []
        late_end = AGEING_PREFIX + encode_u64(max(now_s - op.late_s, 0) + 1)
        for key, _raw in store.scan(AGEING_PREFIX, late_end):
            unaged += 1
            _sample(unaged_ex, key[len(AGEING_PREFIX) + 8 :].decode())
        unreminded = 0
        unreminded_ex: list[str] = []
        for _key, raw in store.scan(INVOICE_PREFIX, prefix_end(INVOICE_PREFIX)):
            invoice = decode_value(raw)[0]
            if invoice.status is not InvoiceStatus.OVERDUE:
                continue
            note_id = overdue_notice(invoice, now_s).notification_id
            if store.get(prefixed(NOTIFICATION_ID_PREFIX, note_id)) is None:
                unreminded += 1
                _sample(unreminded_ex, invoice.invoice_id)
        return ShardInspection(
            now_s=now_s,
            open_reservations=open_count,
            reserved_total=reserved,
            reservations_stuck=stuck,
            stuck_examples=tuple(stuck_ex),
            reservations_over_old=over_old,
            over_old_examples=tuple(old_ex),
            invoices_unaged=unaged,
            unaged_examples=tuple(unaged_ex),
            overdue_without_reminder=unreminded,
            unreminded_examples=tuple(unreminded_ex),
        )
