"""The auditor: after the chaos, does the cluster agree with what it acknowledged?

It trusts nothing of the cluster's arithmetic. Expected balances come from
:mod:`chaos.reference` (hand-written prices) applied to what the load saw
acknowledged; the cluster is then read through the public API (usage
history, balances, rejects, reconciliation, a bill run, invoices, payments)
and, once stopped, its databases are opened read-only to check the fencing.

Checks, each a list of violations (empty means it held):

- ``lost``: an acknowledged charge missing from its account's usage history;
- ``duplicated``: a record in the usage histories more than once;
- ``phantom``: a charge in a history that the load never acknowledged as one;
- ``mispriced``: a usage line whose amount is not the reference price;
- ``money``: an account whose balance differs from the reference (prepaid:
  top-ups minus charges; postpaid: unbilled charges, then the invoice total,
  then zero owed after paying it);
- ``rejects``: a malformed record not rejected, a valid one rejected, a reject
  without a reason;
- ``reconcile``: the cluster's own revenue assurance (ledger replay equals
  balances on every shard, postings sum to zero, invoices equal the ledger,
  received = rated + rejected + duplicates) not balanced;
- ``epochs``: a unit copy whose commits, in order, go back to an older epoch
  (a write from a fenced owner was accepted), or were made at an epoch the
  coordinator never granted; checked on every copy (replicated: the primary
  and each follower copy in every node folder);
- ``replicas`` (replicated storage): an in-sync follower whose database is not,
  key for key, its primary's (all but the per-copy ``m/epoch``);
- ``reserved`` (with ``replayed`` and ``mispriced`` of online steps): found by
  the abandoned sessions of the load (:mod:`chaos.sessions`), money still
  reserved a bound after a session's validity; :meth:`Auditor.check_reserved`
  adds that no account holds reserved money once they are all over;
- ``inspection``: the cluster's own automatic inspection, run once the faults
  have healed and the sessions are over, found a problem.

Apart from those, :func:`spurious_takeovers` reads the coordinator's journal for
takeovers that no injected fault explains: units fenced because a busy host was
taken for a dead one.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from petribill.v1 import usage_pb2
from rocksdict import AccessType, Options, Rdict

from actors.store.codec import EPOCH_KEY
from actors.store.storage import read_write_log
from billing.money import Money
from chaos.load import CHARGED, Account, Acked
from chaos.reference import MICROS_PER_MINOR, Expected, price
from cluster.client import PetribillClient
from cluster.control.state import journal_path, load_state

__all__ = [
    "Audit",
    "Auditor",
    "audit_epochs",
    "audit_replicas",
    "spurious_takeovers",
    "unit_copies",
]

CYCLE: Final = "2026-11"
# 2026-12-01 plus 4 days: past the 3-day grace, and not beyond the clock (a bill run may
# not be dated in the future).
BILL_AT_S: Final = 1_796_083_200 + 4 * 86_400
# A fault explains a node's failure this long after it at most (a paused node is
# declared dead by Ray in ~3 s, a killed host or node at once; healing is bounded
# by chaos.faults.HEAL_TIMEOUT_S), and this long before it at least (the fault's
# time is taken just before it is applied).
EXPLAINS_WITHIN_S: Final = 90.0
_CLOCK_SLACK_S: Final = 1.0


@dataclass(slots=True)
class Audit:
    """The figures of an audit and its violations, by check."""

    acked: int = 0
    charged: int = 0
    rejected: int = 0
    lost: int = 0
    duplicated: int = 0
    money_delta_micros: int = 0
    violations: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def violate(self, check: str, text: str) -> None:
        self.violations[check].append(text)

    @property
    def ok(self) -> bool:
        return not any(self.violations.values())

    @property
    def money_delta_minor(self) -> int:
        return -(-self.money_delta_micros // MICROS_PER_MINOR)

    def summary(self) -> dict[str, Any]:
        return {
            "acked": self.acked,
            "charged": self.charged,
            "rejected": self.rejected,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "money_delta_minor": self.money_delta_minor,
            "violations": {k: len(v) for k, v in self.violations.items() if v},
        }


class Auditor:
    """Rebuilds the expected state of every account and compares it with the cluster's."""

    def __init__(
        self,
        client: PetribillClient,
        accounts: Iterable[Account],
        acked: dict[str, Acked],
        topups: dict[str, tuple[str, int]],
        *,
        initial_topup_micros: int,
        audit: Audit | None = None,
        online: Mapping[str, int] | None = None,
        reserved_wait_s: float = 0.0,
    ) -> None:
        self.client = client
        self.reserved_wait_s = reserved_wait_s
        self.accounts = {a.account_id: a for a in accounts}
        self.acked = acked
        self.audit = Audit() if audit is None else audit  # it may hold earlier findings
        self.audit.acked = len(acked)
        self.expected: dict[str, Expected] = {
            a.account_id: Expected(
                prepaid=a.prepaid, topped_up=initial_topup_micros if a.prepaid else 0
            )
            for a in self.accounts.values()
        }
        for account_id, micros in topups.values():
            self.expected[account_id].topped_up += micros
        for account_id, micros in (online or {}).items():
            self.expected[account_id].online += micros

    # -- usage -------------------------------------------------------------------

    def check_usage(self) -> None:
        """Every acknowledged charge once in its history, nothing else, at the right price."""
        audit = self.audit
        charged_by: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
        for rid, ack in self.acked.items():
            if ack.status in CHARGED:
                # A first answer may be a replay (an earlier attempt was applied and its
                # answer lost): its stored status, charged once all the same.
                if ack.malformed:
                    audit.violate("rejects", f"{rid}: malformed but answered {ack.status}")
                    continue
                audit.charged += 1
                charged_by[ack.account_id].append((rid, ack.service, ack.units))
            elif ack.status == usage_pb2.RECORD_STATUS_REJECTED:
                audit.rejected += 1
                if not ack.malformed:
                    audit.violate("rejects", f"{rid}: a valid record rejected ({ack.reason})")
                elif not ack.reason:
                    audit.violate("rejects", f"{rid}: rejected without a reason")
            else:
                audit.violate("rejects", f"{rid}: unexpected first answer {ack.status}")
        seen: Counter[str] = Counter()
        for account_id, expected in self.expected.items():
            expected.add_charges(charged_by[account_id])
            for line in self.client.iter_usage(account_id):
                seen[line.record_id] += 1
                answered = self.acked.get(line.record_id)
                if answered is None or line.record_id not in expected.records:
                    audit.violate("phantom", f"{account_id}: {line.record_id} never acknowledged")
                    continue
                want = price(answered.service, answered.units)
                if line.amount.micros != want:
                    audit.violate(
                        "mispriced",
                        f"{line.record_id}: charged {line.amount.micros}, reference {want}",
                    )
            missing = [r for r in expected.records if r not in seen]
            audit.lost += len(missing)
            for rid in missing[:20]:
                audit.violate("lost", f"{account_id}: {rid} acknowledged, not in the history")
        twice = {rid: n for rid, n in seen.items() if n > 1}
        audit.duplicated = len(twice)
        for rid, n in list(twice.items())[:20]:
            audit.violate("duplicated", f"{rid} in the usage history {n} times")

    def check_balances(self) -> None:
        for account_id, expected in self.expected.items():
            balance = self.client.get_balance(account_id)
            if expected.prepaid:
                actual = balance.prepaid.micros - balance.debt.micros
            else:
                actual = balance.unbilled.micros
            self._compare(account_id, "balance", actual, expected.balance)

    def _compare(self, account_id: str, what: str, actual: int, expected: int) -> None:
        if actual != expected:
            self.audit.money_delta_micros += abs(actual - expected)
            self.audit.violate(
                "money", f"{account_id}: {what} {actual} micros, reference {expected}"
            )

    def check_rejects(self) -> None:
        """Every malformed record is in the reject store, and every reject has a reason."""
        rejects = list(self.client.iter_rejects())
        reasons = {r.record_id: r.reason for r in rejects}
        for reject in rejects:
            if not reject.reason:
                self.audit.violate("rejects", f"{reject.record_id}: stored without a reason")
        for rid, ack in self.acked.items():
            if ack.malformed and rid not in reasons:
                self.audit.violate("rejects", f"{rid}: malformed, not in the reject store")

    def check_reserved(self) -> None:
        """No account holds reserved money once every session's validity is over, give or
        take ``reserved_wait_s`` (the duties' period: a release the last fault held back,
        or one a failover undid and the new owner's duties make again, may be under way)."""
        deadline = time.monotonic() + self.reserved_wait_s
        holding = list(self.expected)
        while True:
            held = {a: self.client.get_balance(a).reserved.micros for a in holding}
            holding = [a for a, micros in held.items() if micros]
            if not holding or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        for account_id in holding:
            self.audit.violate(
                "reserved",
                f"{account_id}: {held[account_id]} micros still reserved "
                f"{self.reserved_wait_s:.0f} s after the sessions ended",
            )

    def check_inspection(self) -> None:
        """The cluster's own inspection finds nothing wrong (``petribill inspect``)."""
        report = self.client.inspect()
        for finding in report.findings:
            if finding.count:
                self.audit.violate("inspection", f"{finding.check}: {finding.detail}")

    def check_reconcile(self, when: str) -> None:
        report = self.client.reconcile()
        if not report.balanced or report.ledger_total.micros != 0:
            self.audit.violate("reconcile", f"{when}: {report.detail}")

    # -- the bill run --------------------------------------------------------------

    def check_bill_run(self, seed: int) -> None:
        """Bill the cycle: each postpaid invoice totals its charges; paying it leaves
        nothing owed."""
        for _ in self.client.run_billing(CYCLE, at_s=BILL_AT_S, request_id=f"chaos{seed}-billrun"):
            pass  # progress, until the bill run has finished
        for account_id, expected in self.expected.items():
            if expected.prepaid:
                continue
            invoices = [
                i for i in self.client.list_invoices(account_id).invoices if i.cycle_id == CYCLE
            ]
            total = sum(i.total.micros for i in invoices)
            self._compare(account_id, "invoiced", total, expected.charged)
            for invoice in invoices:
                if invoice.open.micros > 0:
                    self.client.apply_payment(
                        account_id,
                        Money(invoice.open.micros, "EUR"),
                        at_s=BILL_AT_S + 86_400,
                        request_id=f"chaos{seed}-pay-{invoice.invoice_id}",
                    )
            balance = self.client.get_balance(account_id)
            owed = balance.receivable.micros + balance.unbilled.micros - balance.credit.micros
            self._compare(account_id, "owed after payment", owed, 0)

    def run(self, seed: int) -> Audit:
        self.check_reserved()
        self.check_inspection()
        self.check_usage()
        self.check_balances()
        self.check_rejects()
        self.check_reconcile("after the load")
        self.check_bill_run(seed)
        self.check_reconcile("after the bill run and payments")
        return self.audit


def _journal(data_dir: Path) -> list[dict[str, Any]]:
    """The coordinator's journal, the rotated part first."""
    events = []
    path = journal_path(data_dir)
    for name in (path.with_suffix(".jsonl.1"), path):
        if name.exists():
            events += [json.loads(line) for line in name.read_text().splitlines() if line.strip()]
    return events


def _granted_epochs(data_dir: Path) -> dict[str, set[int]]:
    """unit -> the epochs the coordinator's journal granted it (assign, takeover, migrate)."""
    granted: dict[str, set[int]] = defaultdict(set)
    for event in _journal(data_dir):
        if "shard" in event and "epoch" in event:
            granted[str(event["shard"])].add(int(event["epoch"]))
    return granted


def unit_copies(data_dir: Path) -> list[tuple[str, Path]]:
    """``(name, folder)`` of every unit database under ``data_dir``: ``acct-00`` in
    ``units/`` (local, shared), ``n1/acct-00`` in ``nodes/n1/units/`` (replicated)."""
    found = [(p.name, p) for p in sorted((data_dir / "units").glob("*"))]
    for node in sorted((data_dir / "nodes").glob("*")):
        found += [(f"{node.name}/{p.name}", p) for p in sorted((node / "units").glob("*"))]
    return [(name, path) for name, path in found if (path / "CURRENT").exists()]


def _rows(path: Path) -> dict[bytes, bytes]:
    db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
    try:
        rows: dict[bytes, bytes] = {}
        for key, value in db.items():
            if key != EPOCH_KEY:
                rows[key] = value  # type: ignore[index]  # raw mode: bytes
        return rows
    finally:
        db.close()


def spurious_takeovers(
    data_dir: Path, hits: Iterable[tuple[str, float]], *, within_s: float = EXPLAINS_WITHIN_S
) -> list[str]:
    """The takeovers in the coordinator's journal that no injected fault explains, one
    line each. ``hits``: ``(node, wall-clock time)`` of every fault that hit a node's
    processes (a host or a node killed, a node paused).

    A takeover moves a unit fenced from node X; it is explained when the ``node_fail``
    of X that fenced it came within ``within_s`` after a fault hit X. Anything else — a
    host failed for being slow, units fenced and handed back — is spurious.
    """
    by_node: dict[str, list[float]] = defaultdict(list)
    for node, hit_s in hits:
        by_node[node].append(hit_s)
    failed: dict[str, tuple[bool, str]] = {}  # node -> (explained, why it was failed)
    fenced_from: dict[str, str] = {}  # unit -> the node it was fenced from
    spurious = []
    for event in _journal(data_dir):
        name = event.get("event")
        if name == "node_fail":
            node, at_s = str(event["node"]), event.get("at_s")
            explained = any(
                at_s is None or hit - _CLOCK_SLACK_S <= at_s <= hit + within_s
                for hit in by_node[node]
            )
            failed[node] = (explained, f"{event.get('cause', '?')} at {at_s}")
        elif name == "fence":
            fenced_from[str(event["shard"])] = str(event["node"])
        elif name in ("takeover", "promote"):  # promote: a replicated unit's takeover
            unit = str(event["shard"])
            node = fenced_from.pop(unit, "?")
            explained, why = failed.get(node, (False, "no node_fail"))
            if not explained:
                spurious.append(
                    f"{unit} taken from {node} by {event.get('node')} at epoch "
                    f"{event.get('epoch')}: {node} failed ({why}) with no fault on it"
                )
    return spurious


def audit_epochs(data_dir: Path, audit: Audit) -> int:
    """Check every unit copy's write log on disk (the cluster must be stopped); copies read."""
    state = load_state(data_dir)
    current: dict[str, int] = {}
    if state.marking_json is not None:
        from petri import marking_from_json

        current = dict(marking_from_json(state.marking_json).epochs())
    granted = _granted_epochs(data_dir)
    copies = unit_copies(data_dir)
    for name, path in copies:
        db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            log = read_write_log(db)
        finally:
            db.close()
        unit = path.name
        last = 0
        for epoch in sorted(log):
            first, final = log[epoch]
            if first <= last:
                audit.violate(
                    "epochs",
                    f"{name}: epoch {epoch} wrote commits {first}..{final}, "
                    f"but an older epoch wrote up to commit {last}",
                )
            last = max(last, final)
            if granted[unit] and epoch >= min(granted[unit]) and epoch not in granted[unit]:
                audit.violate("epochs", f"{name}: commits at epoch {epoch}, never granted")
            if unit in current and epoch > current[unit]:
                audit.violate(
                    "epochs", f"{name}: commits at epoch {epoch} > current {current[unit]}"
                )
    return len(copies)


def audit_replicas(data_dir: Path, audit: Audit) -> int:
    """Compare, key for key, each unit's in-sync followers with its primary, as the final
    persisted marking names them (the cluster must be stopped); copies compared."""
    from petri import marking_from_json
    from petri.marking import isr_of

    state = load_state(data_dir)
    if state.marking_json is None:
        return 0
    marking = marking_from_json(state.marking_json)
    compared = 0
    for unit, node, _epoch in marking.owned():
        primary = data_dir / "nodes" / node / "units" / unit
        if not (primary / "CURRENT").exists():
            audit.violate("replicas", f"{unit}: its primary's copy on {node} is missing")
            continue
        want = _rows(primary)
        for follower in sorted(isr_of(marking, unit)):
            path = data_dir / "nodes" / follower / "units" / unit
            if not (path / "CURRENT").exists():
                audit.violate("replicas", f"{unit}: in-sync copy on {follower} is missing")
                continue
            got = _rows(path)
            compared += 1
            if got != want:
                differ = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
                audit.violate(
                    "replicas",
                    f"{unit}: the in-sync copy on {follower} differs from the primary on "
                    f"{node} in {len(differ)} keys (first {differ[0]!r})",
                )
    return compared
