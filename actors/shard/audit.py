"""Revenue assurance of an account shard: replay the stored ledger against the stored state."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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
    ledger_prefix,
    split_ledger_key,
)
from billing.billrun.run import ledger_difference
from billing.charging.batch import Charge
from billing.invoice import InvoiceStatus
from billing.ledger import Entry

__all__ = ["AuditReport", "ShardAudit"]

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


class ShardAudit:
    """The shard's self-audit."""

    def __init__(self, core: ShardCore) -> None:
        self.core = core

    # -- audit -------------------------------------------------------------------------

    def audit(self, _op: ops.Audit) -> AuditReport:
        """Replay every account's stored ledger and check it against the stored state."""
        problems: list[str] = []

        def problem(text: str) -> None:
            if len(problems) < PROBLEMS_MAX:
                problems.append(text)

        op: dict[str, int] = {}
        foreign: dict[str, int] = {}
        total = accounts = ledger_rows = entries = usage_lines = invoices = 0
        for _, raw in self.core.store.scan_prefix(ACCOUNT_PREFIX):
            row = decode_account(raw)
            aid = row.state.account_id
            accounts += 1
            own = aid + "/"
            books: dict[str, int] = {}
            billing: list[Entry] = []
            expected = 0
            for key, lraw in self.core.store.scan_prefix(ledger_prefix(aid)):
                _, seq = split_ledger_key(key)
                if seq != expected:
                    problem(f"{aid}: ledger seq {seq}, expected {expected}")
                expected = seq + 1
                ledger_rows += 1
                item = decode_ledger_row(lraw)
                if isinstance(item, Charge):
                    usage_lines += 1
                    entry = item.to_entry()
                else:
                    entry = item
                if entry is None:
                    continue
                entries += 1
                if entry.ref.startswith(("bill:", "switch:")):
                    billing.append(entry)
                for posting in entry.postings:
                    total += posting.amount
                    name = posting.account
                    if name.startswith(own):
                        books[name] = books.get(name, 0) + posting.amount
                    elif name.startswith("op/"):
                        op[name] = op.get(name, 0) + posting.amount
                    else:
                        foreign[name] = foreign.get(name, 0) + posting.amount
            if expected != row.next_seq:
                problem(f"{aid}: {expected} ledger rows, account says {row.next_seq}")
            view = row.state.ledger_view()
            replayed = {k: v for k, v in books.items() if v}
            if view != replayed:
                problem(f"{aid}: books {view} != ledger replay {replayed}")
            owed = 0
            for invoice_row in self.core.store.scan_prefix(INVOICE_PREFIX + aid.encode() + b"\x00"):
                invoice, refs = decode_value(invoice_row[1])
                invoices += 1
                if invoice.status is InvoiceStatus.DRAFT:
                    continue
                owed += invoice.open_amount
                diff = ledger_difference(invoice, billing, also_refs=tuple(refs))
                if diff:
                    problem(f"{invoice.invoice_id}: invoice and ledger differ by {diff}")
            if row.state.receivable != -owed:
                problem(f"{aid}: receivable {row.state.receivable} != -open invoices {owed}")
        for name, amount in foreign.items():
            if amount:
                problem(f"posting to {name} stored outside its account's stream: {amount}")
        if total != 0:
            problem(f"postings of the shard sum to {total}, not 0")
        return AuditReport(
            ok=not problems,
            problems=tuple(problems),
            accounts=accounts,
            ledger_rows=ledger_rows,
            entries=entries,
            usage_lines=usage_lines,
            marks=sum(1 for _ in self.core.store.scan_prefix(IDEMPOTENCY_PREFIX)),
            invoices=invoices,
            notifications=self.core.notification_seq,
            forwards_pending=sum(1 for _ in self.core.store.scan_prefix(OUTBOX_PREFIX)),
            forwards_refused=sum(1 for _ in self.core.store.scan_prefix(REFUSED_PREFIX)),
            postings_total=total,
            op_balances=dict(sorted(op.items())),
        )
