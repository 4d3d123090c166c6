"""Revenue assurance of an account shard: replay the stored ledger against the stored state.

The audit reads every row of the shard, so on a large shard it is long. It runs
in bounded steps (:class:`~actors.shard.ops.AuditStep`): each step reads at most
a number of rows or for at most a time budget, under the unit's lock like any
call, and answers an :class:`AuditProgress` that the next step resumes from —
on this host or, after a takeover, on another (it holds plain values only).
So an audit over millions of rows never holds the unit for long, and writes go
on between its steps.

Why the result is still exact: an account's ledger is append-only, and the
step that reaches the end of an account's ledger reads the account's row and
invoices under the same lock hold, so each account is checked against a state
that includes exactly the ledger rows replayed. Every ledger entry balances on
its own and is read once, so the shard's postings still sum to zero. Accounts
created behind the cursor while the audit runs are not in it (as if created
after it).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Final

from actors.shard import ops
from actors.shard.codec import decode_account, decode_ledger_row, decode_value
from actors.shard.core import ShardCore
from actors.shard.keys import (
    ACCOUNT_PREFIX,
    IDEMPOTENCY_PREFIX,
    INVOICE_PREFIX,
    OUTBOX_PREFIX,
    REFUSED_PREFIX,
    account_key,
    key_after,
    ledger_key,
    ledger_prefix,
    prefix_end,
    split_ledger_key,
)
from billing.billrun.run import ledger_difference
from billing.charging.batch import Charge
from billing.invoice import InvoiceStatus
from billing.ledger import Entry

__all__ = ["AuditPhase", "AuditProgress", "AuditReport", "ShardAudit"]

PROBLEMS_MAX: Final = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditReport:
    """Revenue-assurance view of one shard: ``ok`` when no problem was found.

    Checked: every account's books equal the replay of its stored ledger;
    ledger sequences are gap-free; the postings of the shard sum to zero; every
    final invoice equals its ledger entries and each account's receivable
    equals minus what its final invoices still owe.
    """

    ok: bool
    problems: tuple[str, ...]
    accounts: int
    ledger_rows: int
    entries: int
    usage_lines: int
    marks: int
    invoices: int
    notifications: int
    forwards_pending: int
    forwards_refused: int
    postings_total: int
    op_balances: Mapping[str, int]


class AuditPhase(enum.StrEnum):
    """What an audit step reads: accounts (with their ledgers), then counts of rows."""

    ACCOUNTS = "accounts"
    MARKS = "marks"
    OUTBOX = "outbox"
    REFUSED = "refused"
    DONE = "done"


# Each counting phase: the prefix it counts and the phase after it.
_COUNTED: Final = {
    AuditPhase.MARKS: (IDEMPOTENCY_PREFIX, AuditPhase.OUTBOX),
    AuditPhase.OUTBOX: (OUTBOX_PREFIX, AuditPhase.REFUSED),
    AuditPhase.REFUSED: (REFUSED_PREFIX, AuditPhase.DONE),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Replay:
    """The account whose ledger a step left half replayed: the next row to read and
    what the rows read so far sum to (its own books, its billing entries)."""

    account_id: str
    next_seq: int = 0
    books: Mapping[str, int] = field(default_factory=dict)
    billing: tuple[Entry, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditProgress:
    """An audit between two steps: the phase, the key its next scan starts at, the
    account in progress, and the sums so far. ``report`` is set once ``done``."""

    phase: AuditPhase = AuditPhase.ACCOUNTS
    resume: bytes = ACCOUNT_PREFIX
    replay: Replay | None = None
    problems: tuple[str, ...] = ()
    accounts: int = 0
    ledger_rows: int = 0
    entries: int = 0
    usage_lines: int = 0
    invoices: int = 0
    counted: Mapping[AuditPhase, int] = field(default_factory=dict)
    postings_total: int = 0
    op_balances: Mapping[str, int] = field(default_factory=dict)
    foreign: Mapping[str, int] = field(default_factory=dict)
    steps: int = 0
    report: AuditReport | None = None

    @property
    def done(self) -> bool:
        return self.report is not None


class _Budget:
    """How much one step may still read: rows, and time (None: unbounded). The first
    row is always granted, so every step makes progress."""

    def __init__(self, rows_max: int | None, budget_s: float | None) -> None:
        self.rows_left = rows_max
        self.deadline = None if budget_s is None else time.monotonic() + budget_s
        self.taken = 0

    def take(self) -> bool:
        """Count one row; False once the step must stop (the row is not to be read)."""
        if self.taken and (
            (self.rows_left is not None and self.rows_left <= 0)
            or (self.deadline is not None and time.monotonic() >= self.deadline)
        ):
            return False
        self.taken += 1
        if self.rows_left is not None:
            self.rows_left -= 1
        return True


class _Step:
    """The mutable sums of one step, started from an :class:`AuditProgress`."""

    def __init__(self, progress: AuditProgress) -> None:
        self.progress = progress
        self.phase = progress.phase
        self.resume = progress.resume
        self.replay = progress.replay
        self.problems = list(progress.problems)
        self.accounts = progress.accounts
        self.ledger_rows = progress.ledger_rows
        self.entries = progress.entries
        self.usage_lines = progress.usage_lines
        self.invoices = progress.invoices
        self.counted = dict(progress.counted)
        self.total = progress.postings_total
        self.op = dict(progress.op_balances)
        self.foreign = dict(progress.foreign)

    def problem(self, text: str) -> None:
        if len(self.problems) < PROBLEMS_MAX:
            self.problems.append(text)

    def progress_after(self) -> AuditProgress:
        return replace(
            self.progress,
            phase=self.phase,
            resume=self.resume,
            replay=self.replay,
            problems=tuple(self.problems),
            accounts=self.accounts,
            ledger_rows=self.ledger_rows,
            entries=self.entries,
            usage_lines=self.usage_lines,
            invoices=self.invoices,
            counted=self.counted,
            postings_total=self.total,
            op_balances=self.op,
            foreign=self.foreign,
            steps=self.progress.steps + 1,
        )


class ShardAudit:
    """The shard's self-audit."""

    def __init__(self, core: ShardCore) -> None:
        self.core = core

    # -- audit -------------------------------------------------------------------------

    def audit(self, _op: ops.Audit) -> AuditReport:
        """Replay every account's stored ledger and check it against the stored state,
        in one call (the caller holds the unit for the whole of it)."""
        progress = AuditProgress()
        while progress.report is None:
            progress = self._step(progress, _Budget(None, None))
        return progress.report

    def audit_step(self, op: ops.AuditStep) -> AuditProgress:
        """One bounded step of :meth:`audit`, resuming ``op.progress``."""
        return self._step(op.progress or AuditProgress(), _Budget(op.rows_max, op.budget_s))

    def _step(self, progress: AuditProgress, budget: _Budget) -> AuditProgress:
        if progress.report is not None:
            return progress
        step = _Step(progress)
        while step.phase is not AuditPhase.DONE:
            if step.phase is AuditPhase.ACCOUNTS:
                finished = self._accounts(step, budget)
            else:
                finished = self._count(step, budget)
            if not finished:
                return step.progress_after()
        after = step.progress_after()
        return replace(after, report=self._report(step))

    def _accounts(self, step: _Step, budget: _Budget) -> bool:
        """Replay accounts from ``step.resume`` on; False when the budget ran out first."""
        store = self.core.store
        end = prefix_end(ACCOUNT_PREFIX)
        while True:
            if step.replay is None:
                found = next(store.scan(step.resume, end, limit=1), None)
                if found is None:
                    step.phase, step.resume = AuditPhase.MARKS, IDEMPOTENCY_PREFIX
                    return True
                if not budget.take():
                    return False
                step.replay = Replay(account_id=found[0][len(ACCOUNT_PREFIX) :].decode())
                step.resume = key_after(found[0])
            if not self._replay(step, step.replay, budget):
                return False
            step.replay = None

    def _replay(self, step: _Step, replay: Replay, budget: _Budget) -> bool:
        """Replay the rest of one account's ledger and, having reached its end, check the
        account (its row and invoices read in this same step); False when out of budget."""
        aid = replay.account_id
        own = aid + "/"
        books = dict(replay.books)
        billing = list(replay.billing)
        expected = replay.next_seq
        prefix = ledger_prefix(aid)
        for key, lraw in self.core.store.scan(ledger_key(aid, expected), prefix_end(prefix)):
            if not budget.take():
                step.replay = Replay(
                    account_id=aid, next_seq=expected, books=books, billing=tuple(billing)
                )
                return False
            _, seq = split_ledger_key(key)
            if seq != expected:
                step.problem(f"{aid}: ledger seq {seq}, expected {expected}")
            expected = seq + 1
            step.ledger_rows += 1
            item = decode_ledger_row(lraw)
            if isinstance(item, Charge):
                step.usage_lines += 1
                entry = item.to_entry()
            else:
                entry = item
            if entry is None:
                continue
            step.entries += 1
            if entry.ref.startswith(("bill:", "switch:")):
                billing.append(entry)
            for posting in entry.postings:
                step.total += posting.amount
                name = posting.account
                if name.startswith(own):
                    books[name] = books.get(name, 0) + posting.amount
                elif name.startswith("op/"):
                    step.op[name] = step.op.get(name, 0) + posting.amount
                else:
                    step.foreign[name] = step.foreign.get(name, 0) + posting.amount
        raw = self.core.store.get_data(account_key(aid))
        if raw is None:  # gone since it was listed: accounts are never deleted
            step.problem(f"{aid}: account row missing")
            return True
        row = decode_account(raw)
        step.accounts += 1
        if expected != row.next_seq:
            step.problem(f"{aid}: {expected} ledger rows, account says {row.next_seq}")
        view = row.state.ledger_view()
        replayed = {k: v for k, v in books.items() if v}
        if view != replayed:
            step.problem(f"{aid}: books {view} != ledger replay {replayed}")
        owed = 0
        for invoice_row in self.core.store.scan_prefix(INVOICE_PREFIX + aid.encode() + b"\x00"):
            invoice, refs = decode_value(invoice_row[1])
            step.invoices += 1
            if invoice.status is InvoiceStatus.DRAFT:
                continue
            owed += invoice.open_amount
            diff = ledger_difference(invoice, billing, also_refs=tuple(refs))
            if diff:
                step.problem(f"{invoice.invoice_id}: invoice and ledger differ by {diff}")
        if row.state.receivable != -owed:
            step.problem(f"{aid}: receivable {row.state.receivable} != -open invoices {owed}")
        return True

    def _count(self, step: _Step, budget: _Budget) -> bool:
        """Count the rows of the phase's prefix from ``step.resume``; False when out of
        budget (the count so far is kept)."""
        prefix, following = _COUNTED[step.phase]
        count = step.counted.get(step.phase, 0)
        for key, _ in self.core.store.scan(step.resume, prefix_end(prefix)):
            if not budget.take():
                step.counted[step.phase] = count
                step.resume = key
                return False
            count += 1
        step.counted[step.phase] = count
        step.phase = following
        step.resume = _COUNTED[following][0] if following in _COUNTED else b""
        return True

    def _report(self, step: _Step) -> AuditReport:
        for name, amount in step.foreign.items():
            if amount:
                step.problem(f"posting to {name} stored outside its account's stream: {amount}")
        if step.total != 0:
            step.problem(f"postings of the shard sum to {step.total}, not 0")
        return AuditReport(
            ok=not step.problems,
            problems=tuple(step.problems),
            accounts=step.accounts,
            ledger_rows=step.ledger_rows,
            entries=step.entries,
            usage_lines=step.usage_lines,
            marks=step.counted.get(AuditPhase.MARKS, 0),
            invoices=step.invoices,
            notifications=self.core.notification_seq,
            forwards_pending=step.counted.get(AuditPhase.OUTBOX, 0),
            forwards_refused=step.counted.get(AuditPhase.REFUSED, 0),
            postings_total=step.total,
            op_balances=dict(sorted(step.op.items())),
        )
