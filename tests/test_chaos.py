"""The chaos suite's parts that need no cluster: seeded plans, the reference prices, and
the auditor's checks — each shown to fail on a planted fault.

The auditor reads the cluster through the SDK; here it reads an in-memory
stand-in (:class:`Books`) that answers the same calls with the same protobuf
messages, so each check can be given exactly the damage it must catch. The
full run against a real cluster is tests/test_chaos_run.py.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from petribill.v1 import accounts_pb2, admin_pb2, billing_pb2, common_pb2, usage_pb2
from rocksdict import Options, Rdict

from actors.store.codec import WRITE_LOG_PREFIX, encode_u64
from actors.store.storage import Batch, ShardStore
from billing.money import Money
from billing.rating import load_catalogue, rate
from billing.records import Service, UsageRecord
from chaos.auditor import CYCLE, Audit, Auditor, audit_epochs
from chaos.faults import KINDS
from chaos.load import Account, Acked
from chaos.reference import PLAN_POSTPAID, PLAN_PREPAID, price
from chaos.runner import TARIFFS
from chaos.scenarios import SCENARIOS, plan

# -- plans -----------------------------------------------------------------------------


def test_a_plan_is_fixed_by_its_seed() -> None:
    one = plan("mixed", seed=7, duration_s=120)
    assert one == plan("mixed", seed=7, duration_s=120)
    assert one != plan("mixed", seed=8, duration_s=120)
    assert {f.kind for f in one[: len(KINDS)]} == set(KINDS)  # mixed: every kind, then again
    assert all(b.at_s > a.at_s for a, b in itertools.pairwise(one))
    for name, kinds in SCENARIOS.items():
        assert {f.kind for f in plan(name, seed=1, duration_s=60)} <= set(kinds)
    with pytest.raises(ValueError, match="unknown scenario"):
        plan("kill-everything", seed=1, duration_s=60)


def test_even_a_short_run_gets_a_fault() -> None:
    assert len(plan("kill-nodes", seed=3, duration_s=1)) == 1


# -- reference prices --------------------------------------------------------------------


@pytest.mark.parametrize("plan_id", [PLAN_PREPAID, PLAN_POSTPAID])
def test_reference_prices_are_the_catalogues(plan_id: str) -> None:
    """The auditor's hand-written prices equal the rating engine's on the chaos catalogue."""
    catalogue = load_catalogue(TARIFFS)
    cases = [("voice", s) for s in (1, 59, 60, 61, 119, 120, 121, 599, 600)] + [
        ("sms", n) for n in (1, 2, 3)
    ]
    for service, units in cases:
        record = UsageRecord(
            record_id=f"t:{service}{units}",
            service=Service(service),
            served_msisdn="4915990010001",
            record_opening_time_s=1_793_600_000,
            called_number="49301234567",
            duration_s=units if service == "voice" else 0,
            sms_count=units if service == "sms" else 0,
        )
        rated = rate(record, catalogue, plan_id)
        assert rated.amount == price(service, units), (service, units)


# -- the auditor ---------------------------------------------------------------------------

ACCOUNTS = [
    Account(account_id="pre", msisdn="4915990000001", prepaid=True),
    Account(account_id="post", msisdn="4915990000002", prepaid=False),
]
INITIAL = 100_000_000


def _money(micros: int) -> common_pb2.Money:
    return common_pb2.Money(micros=micros, currency="EUR")


class Books:
    """An in-memory cluster that charged every acknowledged record at the reference price;
    tests damage it to plant the fault a check must catch."""

    def __init__(self, acked: dict[str, Acked], topups: dict[str, tuple[str, int]]) -> None:
        self.lines: dict[str, list[accounts_pb2.UsageLine]] = defaultdict(list)
        self.prepaid = {"pre": INITIAL + sum(m for a, m in topups.values() if a == "pre")}
        self.unbilled = {"post": 0}
        self.rejects: list[admin_pb2.Reject] = []
        for rid, ack in acked.items():
            if ack.status == usage_pb2.RECORD_STATUS_REJECTED:
                self.rejects.append(admin_pb2.Reject(record_id=rid, reason=ack.reason))
                continue
            amount = price(ack.service, ack.units)
            self.lines[ack.account_id].append(
                accounts_pb2.UsageLine(record_id=rid, amount=_money(amount))
            )
            if ack.account_id == "pre":
                self.prepaid["pre"] -= amount
            else:
                self.unbilled["post"] += amount
        self.invoiced = 0
        self.ledger_total = 0
        self.reserved: dict[str, int] = {}
        self.findings: dict[str, int] = {}

    def iter_usage(self, account_id: str) -> list[accounts_pb2.UsageLine]:
        return self.lines[account_id]

    def get_balance(self, account_id: str) -> accounts_pb2.Balance:
        return accounts_pb2.Balance(
            prepaid=_money(self.prepaid.get(account_id, 0)),
            unbilled=_money(self.unbilled.get(account_id, 0)),
            reserved=_money(self.reserved.get(account_id, 0)),
        )

    def iter_rejects(self) -> list[admin_pb2.Reject]:
        return self.rejects

    def inspect(self) -> admin_pb2.InspectResponse:
        findings = [
            admin_pb2.InspectionFinding(check=check, count=count, detail=f"{count} found")
            for check, count in self.findings.items()
        ]
        return admin_pb2.InspectResponse(ok=not any(self.findings.values()), findings=findings)

    def reconcile(self) -> admin_pb2.ReconcileResponse:
        total = self.ledger_total
        return admin_pb2.ReconcileResponse(
            balanced=total == 0, ledger_total=_money(total), detail=f"postings sum to {total}"
        )

    def run_billing(self, cycle_id: str, **_: Any) -> list[billing_pb2.BillRunProgress]:
        self.invoiced, self.unbilled["post"] = self.unbilled["post"], 0
        return [billing_pb2.BillRunProgress(cycle_id=cycle_id, finished=True)]

    def list_invoices(self, account_id: str) -> billing_pb2.ListInvoicesResponse:
        open_ = _money(self.invoiced)
        invoice = billing_pb2.Invoice(cycle_id=CYCLE, total=_money(self.invoiced), open=open_)
        return billing_pb2.ListInvoicesResponse(invoices=[invoice])

    def apply_payment(self, account_id: str, amount: Money, **_: Any) -> None:
        self.invoiced -= amount.micros


def _acked() -> dict[str, Acked]:
    acked = {}
    for n in range(40):
        account = ACCOUNTS[n % 2]
        acked[f"c:{n}"] = Acked(
            account_id=account.account_id,
            service="voice" if n % 3 else "sms",
            units=30 + 17 * n if n % 3 else 1 + n % 3,
            status=usage_pb2.RECORD_STATUS_CHARGED,
            reason="",
            malformed=False,
        )
    acked["c:bad"] = Acked(
        account_id="post", service="voice", units=-4,
        status=usage_pb2.RECORD_STATUS_REJECTED, reason="malformed", malformed=True,
    )  # fmt: skip
    return acked


def _audit(damage: Any = None) -> Audit:
    acked = _acked()
    topups = {"t:1": ("pre", 1_000_000)}
    books = Books(acked, topups)
    if damage is not None:
        damage(books)
    auditor = Auditor(books, ACCOUNTS, acked, topups, initial_topup_micros=INITIAL)  # type: ignore[arg-type]
    return auditor.run(seed=1)


def test_undamaged_books_pass_every_check() -> None:
    audit = _audit()
    assert audit.ok, dict(audit.violations)
    assert audit.charged == 40 and audit.rejected == 1


def _lose(books: Books) -> None:
    line = books.lines["post"].pop()
    books.unbilled["post"] -= line.amount.micros


def _double(books: Books) -> None:
    line = books.lines["pre"][0]
    books.lines["pre"].append(line)
    books.prepaid["pre"] -= line.amount.micros


def _phantom(books: Books) -> None:
    books.lines["post"].append(accounts_pb2.UsageLine(record_id="x:1", amount=_money(10_000)))
    books.unbilled["post"] += 10_000


def _misprice(books: Books) -> None:
    books.lines["pre"][1].amount.micros += 1


def _drift(books: Books) -> None:
    books.prepaid["pre"] += 1  # one micro-unit


def _unreasoned(books: Books) -> None:
    books.rejects[0].reason = ""


def _ledger(books: Books) -> None:
    books.ledger_total = 3


def _held(books: Books) -> None:
    books.reserved["pre"] = 40_000  # a session's money never released


def _inspected(books: Books) -> None:
    books.findings["invoices_unaged"] = 1


@pytest.mark.parametrize(
    ("damage", "check"),
    [
        (_lose, "lost"),
        (_double, "duplicated"),
        (_phantom, "phantom"),
        (_misprice, "mispriced"),
        (_drift, "money"),
        (_unreasoned, "rejects"),
        (_ledger, "reconcile"),
        (_held, "reserved"),
        (_inspected, "inspection"),
    ],
)
def test_each_check_catches_its_planted_fault(damage: Any, check: str) -> None:
    audit = _audit(damage)
    assert not audit.ok
    assert audit.violations[check], dict(audit.violations)


def test_online_charges_count_in_the_expected_balance() -> None:
    """Money the sessions' updates charged is expected off the prepaid balance: the books
    agree once they charged it, and disagree by it when they did not."""
    acked = _acked()
    topups = {"t:1": ("pre", 1_000_000)}
    books = Books(acked, topups)
    books.prepaid["pre"] -= 25_000
    auditor = Auditor(books, ACCOUNTS, acked, topups, initial_topup_micros=INITIAL,  # type: ignore[arg-type]
                      online={"pre": 25_000})  # fmt: skip
    assert auditor.run(seed=1).ok
    books = Books(acked, topups)
    unpaid = Auditor(books, ACCOUNTS, acked, topups, initial_topup_micros=INITIAL,  # type: ignore[arg-type]
                     online={"pre": 25_000})  # fmt: skip
    assert unpaid.run(seed=1).violations["money"]


def test_lost_and_doubled_records_count_and_move_money() -> None:
    lost = _audit(_lose)
    assert lost.lost == 1 and lost.money_delta_minor > 0
    doubled = _audit(_double)
    assert doubled.duplicated == 1 and doubled.money_delta_minor > 0


# -- the epoch check, on real RocksDB --------------------------------------------------------


def _write(store: ShardStore, n: int) -> None:
    for i in range(n):
        batch = Batch()
        batch.put(b"d/" + bytes([i]), b"x")
        store.commit(batch)


def test_epoch_audit_passes_fenced_owners_and_catches_a_stale_write(tmp_path: Path) -> None:
    data = tmp_path / "data"
    unit = data / "units" / "acct-00"
    with ShardStore.open(unit, epoch=1) as store:
        _write(store, 3)
    with ShardStore.open(unit, epoch=2) as store:
        _write(store, 2)
    clean = Audit()
    assert audit_epochs(data, clean) == 1 and clean.ok
    # Plant what a zombie owner at epoch 1 writing after the takeover would leave:
    # a commit at epoch 1 numbered after epoch 2's first.
    db = Rdict(str(unit), options=Options(raw_mode=True))
    db.put(WRITE_LOG_PREFIX + encode_u64(1), encode_u64(1) + encode_u64(5))
    db.close()
    stale = Audit()
    audit_epochs(data, stale)
    assert stale.violations["epochs"], dict(stale.violations)
