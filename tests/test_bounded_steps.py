"""Long engine operations in bounded steps, on a real RocksDB: the audit, the bill run, usage
pages and the flush before a backup. Each step stops at its bound, resumes where it stopped
(even on a new owner) and, put together, the steps answer what one long call answers. And
the bulk creation of accounts that tests and benchmarks fill large shards with."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import pytest
from test_account_shard import open_shard, seed, usage
from test_account_shard_billing import FINAL, postpaid_shard
from test_accounts import EUR, T0, account, rated

from actors.shard import ops
from actors.shard.audit import AuditProgress, AuditReport
from actors.shard.billing import BillRunReport
from actors.shard.engine import AccountShard
from actors.shard.keys import ledger_key
from actors.store.backup import BackupFailed, checkpoint_unit, flush_in_background
from actors.store.storage import Batch
from billing.accounts import PaymentMode, Result
from billing.cycle import DAY_S
from chaos.disk import TmpfsDisk, can_mount


def audit_in_steps(
    shard: AccountShard, *, rows_max: int, budget_s: float = 60.0
) -> tuple[AuditReport, int]:
    """The shard's audit asked for in steps of at most ``rows_max`` rows; (report, steps)."""
    progress: AuditProgress | None = None
    while progress is None or progress.report is None:
        progress = shard.run(ops.AuditStep(progress=progress, rows_max=rows_max, budget_s=budget_s))
    return progress.report, progress.steps


def busy_shard(path: Path) -> AccountShard:
    """Postpaid and prepaid accounts with usage, a bill run and a payment: every kind of
    row the audit reads."""
    shard = postpaid_shard(path, 6)
    seed(shard, 4)
    shard.run(ops.ChargeBatch(items=usage(60, 4), at_s=T0 + 7200))
    items = [(f"B{i % 6}", rated(f"b{i}", 50 + i, msisdn=f"48{i % 6}")) for i in range(40)]
    shard.run(ops.ChargeBatch(items=items, at_s=T0 + DAY_S))
    shard.run(ops.BillRun(cycle_id="2024-06", at_s=FINAL))
    shard.run(
        ops.ApplyPayment(request_id="p1", account_id="B0", amount=EUR, currency="EUR", at_s=FINAL)
    )
    return shard


def test_an_audit_in_steps_of_any_size_reports_what_one_long_audit_reports(
    tmp_path: Path,
) -> None:
    """Whatever the step's bound, even one row, the steps add up to the whole audit; smaller
    bounds take more steps."""
    shard = busy_shard(tmp_path / "s")
    whole = shard.run(ops.Audit())
    assert whole.ok, whole.problems
    rows = whole.accounts + whole.ledger_rows + whole.marks  # an invoice is read with its account
    steps_taken = []
    for rows_max in (1, 2, 7, 50, 100_000):
        report, steps = audit_in_steps(shard, rows_max=rows_max)
        assert report == whole, rows_max
        assert steps >= rows // rows_max
        steps_taken.append(steps)
    assert steps_taken == sorted(steps_taken, reverse=True) and steps_taken[-1] == 1
    shard.close()


def test_writes_between_the_steps_leave_the_audit_exact(tmp_path: Path) -> None:
    """Usage charged between two steps — to accounts already audited, to the one half
    replayed and to those still ahead — never makes the audit report a problem."""
    shard = busy_shard(tmp_path / "s")
    rng = random.Random(7)
    progress: AuditProgress | None = None
    n = 0
    while progress is None or progress.report is None:
        progress = shard.run(ops.AuditStep(progress=progress, rows_max=3))
        account = rng.randrange(4)
        record = rated(f"late{n}", 10 + n, msisdn=f"49{account}")
        shard.run(ops.ChargeBatch(items=[(f"A{account}", record)], at_s=T0 + 9000))
        n += 1
    assert progress.report.ok, progress.report.problems
    assert n > 50  # writes really came between many steps
    shard.close()


def test_an_audit_resumes_on_the_next_owner_after_a_takeover(tmp_path: Path) -> None:
    """The progress holds plain values: a step on the unit's next owner carries on."""
    shard = busy_shard(tmp_path / "s")
    whole = shard.run(ops.Audit())
    progress = shard.run(ops.AuditStep(rows_max=40))
    progress = shard.run(ops.AuditStep(progress=progress, rows_max=40))
    assert progress.report is None
    shard.close()
    taken_over = open_shard(tmp_path / "s", 2)
    while progress.report is None:
        progress = taken_over.run(ops.AuditStep(progress=progress, rows_max=40))
    assert progress.report == whole
    taken_over.close()


def test_a_step_with_no_time_left_still_reads_a_row(tmp_path: Path) -> None:
    """A budget of zero seconds cannot stall the audit: each step reads one row."""
    shard = busy_shard(tmp_path / "s")
    report, steps = audit_in_steps(shard, rows_max=100_000, budget_s=0.0)
    assert report == shard.run(ops.Audit()) and steps > 100
    shard.close()


def test_a_gap_in_a_long_ledger_is_found_across_steps(tmp_path: Path) -> None:
    """A ledger row missing in the middle of an account replayed over several steps is a
    problem, as in the whole audit."""
    shard = open_shard(tmp_path / "s", 1)
    seed(shard, 1)
    shard.run(ops.ChargeBatch(items=usage(30, 1), at_s=T0 + 7200))
    batch = Batch()
    batch.delete(ledger_key("A0", 17))
    shard.store.commit(batch)
    report, steps = audit_in_steps(shard, rows_max=4)
    assert steps > 5 and not report.ok
    assert "A0: ledger seq 18, expected 17" in report.problems
    assert report.problems == shard.run(ops.Audit()).problems
    shard.close()


def test_a_bill_run_in_steps_bills_every_account_once(tmp_path: Path) -> None:
    """Steps of at most 4 accounts, each resuming after the last one billed, issue what one
    run issues; a second stepwise run replays them all."""
    shard = postpaid_shard(tmp_path / "s", 23)
    items = [(f"B{i % 23}", rated(f"u{i}", 100 + i, msisdn=f"48{i % 23}")) for i in range(60)]
    shard.run(ops.ChargeBatch(items=items, at_s=T0 + DAY_S))

    def in_steps(at_s: int, ids: list[str] | None = None) -> tuple[BillRunReport, int]:
        step = shard.run(
            ops.BillRun(cycle_id="2024-06", at_s=at_s, accounts_max=4, account_ids=ids)
        )
        report, steps = step, 1
        while step.resume_after is not None:
            assert step.accounts <= 4 and step.commits == 1
            step = shard.run(
                ops.BillRun(
                    cycle_id="2024-06", at_s=at_s, accounts_max=4, account_ids=ids,
                    after=step.resume_after,
                )
            )  # fmt: skip
            report, steps = report.plus(step), steps + 1
        return report, steps

    report, steps = in_steps(FINAL)
    assert steps == 6 and report.accounts == 23 and report.results == {"issued": 23}
    assert report.invoiced == sum(r.amount for r in shard.run(ops.ChargeBatch(items=items, at_s=0)))
    again, _ = in_steps(FINAL + 60, ids=[f"B{i}" for i in range(23)])
    assert again.results == {"replayed": 23}
    assert shard.run(ops.Audit()).ok
    shard.close()


def test_a_usage_page_reads_a_bounded_number_of_rows(tmp_path: Path) -> None:
    """Usage lines far apart among other ledger rows come in short pages, none reading
    more than ``rows_max`` rows, and paging still yields every line once, newest first."""
    shard = open_shard(tmp_path / "s", 1)
    seed(shard, 1)
    for n in range(3):
        shard.run(ops.ChargeBatch(items=[("A0", rated(f"r{n}", 60, msisdn="490"))], at_s=T0))
        for k in range(25):
            shard.run(
                ops.TopUp(
                    request_id=f"t{n}-{k}", account_id="A0", amount=1, currency="EUR", at_s=T0
                )
            )
    pages, lines = 0, []
    before = None
    while True:
        found, before = shard.run(
            ops.UsagePage(account_id="A0", limit=2, before_seq=before, rows_max=10)
        )
        pages += 1
        lines += [line.record_id for line in found]
        if not before:
            break
    assert lines == ["r2", "r1", "r0"] and pages >= 8  # 80 rows, 10 a page
    shard.close()


def test_a_backup_flushes_the_memtable_first_in_the_background(tmp_path: Path) -> None:
    """Before a checkpoint the memtable is flushed by RocksDB's own threads, so the
    checkpoint (one call that holds the GIL) has nothing left to flush."""
    shard = open_shard(tmp_path / "s", 1)
    seed(shard, 50)
    db = shard.store._live()
    assert db.property_int_value("rocksdb.num-entries-active-mem-table") > 0
    assert flush_in_background(shard.store)
    assert db.property_int_value("rocksdb.num-entries-active-mem-table") == 0
    shard.close()


def test_accounts_created_in_bulk_are_those_created_one_by_one(tmp_path: Path) -> None:
    """CreateAccounts (the bulk load of test data and migrations) makes in one commit what
    CreateAccount makes one call each, and a repeat of it is all duplicates."""
    creates = [
        ops.CreateAccount(request_id=f"c-A{i}", account=account(f"A{i}", PaymentMode.PREPAID))
        for i in range(30)
    ]
    bulk = open_shard(tmp_path / "bulk", 1)
    assert bulk.run(ops.CreateAccounts(creates=creates)) == [Result.CREATED] * 30
    assert bulk.run(ops.CreateAccounts(creates=creates[:3])) == [Result.DUPLICATE] * 3
    single = open_shard(tmp_path / "single", 1)
    for create in creates:
        single.run(create)
    for i in (0, 17, 29):
        made, one = (s.run(ops.GetAccount(account_id=f"A{i}")) for s in (bulk, single))
        assert made is not None and one is not None and made.account == one.account
    assert bulk.run(ops.Audit()) == single.run(ops.Audit())
    bulk.close()
    single.close()


@pytest.mark.skipif(can_mount() is not None, reason=f"no tmpfs: {can_mount()}")
def test_a_checkpoint_rocksdb_cannot_write_fails_as_retryable_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    """On a full disk the flush first and then the checkpoint fail; the backup says so as
    BackupFailed (UNAVAILABLE to a client, not INTERNAL), and no half checkpoint is left to
    make the retry find its folder taken."""
    with TmpfsDisk(tmp_path / "unit", size_mb=8) as disk:
        shard = open_shard(tmp_path / "unit" / "s", 1)
        try:
            seed(shard, 50)
            disk.fill()
            assert not flush_in_background(shard.store, timeout_s=5)
            with pytest.raises(BackupFailed, match="No space left"):
                checkpoint_unit(shard.store, tmp_path / "backup", "acct-00", request_id="b1")
            assert list((tmp_path / "backup" / "units").iterdir()) == []
        finally:
            disk.free()
            with contextlib.suppress(Exception):  # the flush on a full disk broke the store
                shard.close()
