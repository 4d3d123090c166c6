"""AccountShard on a real RocksDB: durability, idempotency across reopen, failed commits,
the cache bound, and the audit (usage and accounts; billing is in test_account_shard_billing)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from test_accounts import EUR, T0, FakeTariff, account, rated

from actors.shard import ops
from actors.shard.engine import AccountShard
from actors.store.codec import encode_u64
from actors.store.fencing import EPOCH_FILE, write_atomic
from actors.store.storage import StaleEpoch, StoreClosed
from billing.accounts import AccountStatus, PaymentMode, Result, Subscription
from billing.ledger import Book
from billing.notifications import NotificationKind
from billing.ocs.session import Quote
from billing.rated import RatedRecord

QUOTE = Quote(
    service="voice", usage_class="voice.national", price_key="voice", plan_id="p", plan_version="1"
)


def open_shard(path: Path, epoch: int, **options: Any) -> AccountShard:
    options.setdefault("tariff", FakeTariff())
    return AccountShard.open(path, epoch=epoch, **options)


def seed(shard: AccountShard, n: int, *, prepaid: int = 10 * EUR, mode=PaymentMode.PREPAID) -> None:  # type: ignore[no-untyped-def]
    for i in range(n):
        aid = f"A{i}"
        out = shard.run(
            ops.CreateAccount(request_id=f"c-{aid}", account=account(aid, mode, msisdn=f"49{i}"))
        )
        assert out.result is Result.CREATED
        if prepaid and mode is not PaymentMode.POSTPAID:
            up = shard.run(
                ops.TopUp(
                    request_id=f"t-{aid}", account_id=aid, amount=prepaid, currency="EUR", at_s=T0
                )
            )
            assert up.result is Result.TOPPED_UP


def usage(n: int, accounts: int, prefix: str = "r") -> list[tuple[str, RatedRecord]]:
    return [
        (f"A{i % accounts}", rated(f"{prefix}{i}", 10 + i % 7, msisdn=f"49{i % accounts}"))
        for i in range(n)
    ]


def test_charged_batch_survives_reopen_and_replays_as_duplicates(tmp_path: Path) -> None:
    """Balances, marks and ledger of a committed batch are all there after a reopen at epoch+1."""
    shard = open_shard(tmp_path / "s", 1)
    seed(shard, 5)
    items = usage(50, 5)
    answer = shard.run(ops.ChargeBatch(items=items, at_s=T0 + 7200))
    assert [row.result for row in answer] == [Result.CHARGED] * 50
    charged = {f"A{i}": sum(r.amount for r in answer if r.account_id == f"A{i}") for i in range(5)}
    shard.close()

    again = open_shard(tmp_path / "s", 2)
    for aid, amount in charged.items():
        state = again.run(ops.GetAccount(account_id=aid))
        assert state is not None and state.prepaid == 10 * EUR - amount
        entries = again.queries.ledger_entries(aid)
        assert sum(e.amount_for(f"{aid}/{Book.PREPAID}") for e in entries) == state.prepaid
    replay = again.run(ops.ChargeBatch(items=items, at_s=T0 + 9000))
    assert {row.result for row in replay} == {Result.DUPLICATE}
    assert [r.amount for r in replay] == [r.amount for r in answer]
    assert again.run(ops.GetAccount(account_id="A0")).prepaid == 10 * EUR - charged["A0"]  # type: ignore[union-attr]
    report = again.run(ops.Audit())
    assert report.ok, report.problems
    assert report.usage_lines == 50 and report.marks == 50 + 10  # records + creates + top-ups
    assert len(again.run(ops.UsagePage(account_id="A0", limit=3))[0]) == 3
    assert (
        again.run(ops.UsagePage(account_id="A0", limit=3))[0][0].record_id == "r45"
    )  # newest first
    again.close()


def test_usage_pages_cover_the_history_once(tmp_path: Path) -> None:
    """Paging from the newest line to the oldest yields every usage line once, in order,
    skipping the top-up rows between them."""
    shard = open_shard(tmp_path / "s", 1)
    seed(shard, 2)
    shard.run(ops.ChargeBatch(items=usage(41, 2), at_s=T0 + 7200))
    expected = [line.record_id for line in shard.run(ops.UsagePage(account_id="A1", limit=1000))[0]]
    assert len(expected) == 20
    for size in (1, 3, 7, 20, 50):
        paged: list[str] = []
        before = None
        while True:
            lines, before = shard.run(ops.UsagePage(account_id="A1", limit=size, before_seq=before))
            assert len(lines) <= size
            paged.extend(line.record_id for line in lines)
            if not before:
                break
        assert paged == expected, size
    assert shard.run(ops.UsagePage(account_id="nobody", limit=5)) == ([], 0)
    shard.close()


def test_same_id_other_content_is_a_conflict_after_reopen(tmp_path: Path) -> None:
    """A record id reused with another amount or content names the field that differs."""
    shard = open_shard(tmp_path / "s", 1)
    seed(shard, 1)
    first = rated("x1", 100, msisdn="490")
    shard.run(ops.ChargeBatch(items=[("A0", first)], at_s=T0))
    shard.close()
    shard = open_shard(tmp_path / "s", 2)
    longer = rated("x1", 120, msisdn="490")
    roaming = replace(first, record=replace(first.record, roaming=True))
    rows = shard.run(
        ops.ChargeBatch(items=[("A0", longer), ("A0", roaming), ("A0", first)], at_s=T0)
    )
    assert [r.result for r in rows] == [
        Result.EXISTS_WITH_DIFFERENT_AMOUNT,
        Result.EXISTS_WITH_DIFFERENT_CONTENT,
        Result.DUPLICATE,
    ]
    assert shard.run(ops.GetAccount(account_id="A0")).prepaid == 10 * EUR - 100_000  # type: ignore[union-attr]
    assert shard.run(ops.Audit()).ok
    shard.close()


def charge_with_disk_full(
    shard: AccountShard, items: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``charge_batch`` whose commit fails as on a full disk (the error must propagate);
    the store commits again afterwards. (tests/test_disk_full.py fills a real tmpfs.)"""

    def disk_full(batch: Any) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(shard.store, "commit", disk_full)
        with pytest.raises(OSError):
            shard.run(ops.ChargeBatch(items=items, at_s=T0))


def test_batch_whose_commit_fails_leaves_nothing_in_memory_or_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk at commit: the error propagates, the cache keeps the old balances, and the
    same batch retried later is charged once."""
    shard = open_shard(tmp_path / "s", 1)
    seed(shard, 3)
    items = usage(9, 3)
    charge_with_disk_full(shard, items, monkeypatch)
    assert shard.run(ops.GetAccount(account_id="A0")).prepaid == 10 * EUR  # type: ignore[union-attr]
    assert {r.result for r in shard.run(ops.ChargeBatch(items=items, at_s=T0))} == {Result.CHARGED}
    assert shard.run(ops.Audit()).ok
    shard.close()


def test_commit_after_takeover_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    """Once a newer owner has raised the epoch, the old owner's batch raises StaleEpoch, its
    store closes, and the new owner sees none of the batch."""
    path = tmp_path / "s"
    shard = open_shard(path, 1)
    seed(shard, 2)
    write_atomic(path / EPOCH_FILE, encode_u64(2))  # what a new owner's open does first
    with pytest.raises(StaleEpoch):
        shard.run(ops.ChargeBatch(items=usage(4, 2), at_s=T0))
    with pytest.raises(StoreClosed):
        shard.run(ops.GetAccount(account_id="A0"))
    shard.close()
    new = open_shard(path, 3)
    assert new.run(ops.GetAccount(account_id="A0")).prepaid == 10 * EUR  # type: ignore[union-attr]
    assert {r.result for r in new.run(ops.ChargeBatch(items=usage(4, 2), at_s=T0))} == {
        Result.CHARGED
    }
    assert new.run(ops.Audit()).ok
    new.close()


def test_cache_stays_bounded_and_cold_accounts_are_read_from_disk(tmp_path: Path) -> None:
    """With a 10-account cache, 200 accounts are charged correctly and at most 10 stay cached."""
    shard = open_shard(tmp_path / "s", 1, cache_accounts_max=10)
    seed(shard, 200, prepaid=EUR)
    assert shard.core.cached_accounts <= 10
    for round_ in range(3):
        rows = shard.run(ops.ChargeBatch(items=usage(400, 200, prefix=f"r{round_}-"), at_s=T0))
        assert {r.result for r in rows} == {Result.CHARGED}
        assert shard.core.cached_accounts <= 10
    report = shard.run(ops.Audit())
    assert report.ok and report.accounts == 200 and report.usage_lines == 1200
    shard.close()


def test_refusals_and_bad_input_write_nothing(tmp_path: Path) -> None:
    """Unknown accounts, bad record ids and closed accounts are refused per record."""
    shard = open_shard(tmp_path / "s", 1)
    seed(shard, 2)
    shard.run(ops.SetStatus(request_id="close-A1", account_id="A1", status=AccountStatus.CLOSED))
    rows = shard.run(
        ops.ChargeBatch(
            items=[
                ("nobody", rated("u1", 10, msisdn="499")),
                ("A0", rated("bad\x00id", 10, msisdn="490")),
                ("A1", rated("u2", 10, msisdn="491")),
                ("bad/id", rated("u3", 10, msisdn="492")),
            ],
            at_s=T0,
        )
    )
    assert [r.result for r in rows] == [
        Result.UNKNOWN_ACCOUNT,
        Result.INVALID_ARGUMENT,
        Result.ACCOUNT_CLOSED,
        Result.UNKNOWN_ACCOUNT,
    ]
    assert shard.run(ops.Audit()).usage_lines == 0
    shard.close()


def test_one_msisdn_for_two_accounts_in_one_batch(tmp_path: Path) -> None:
    """If the partition resolved one msisdn to two accounts (a number moved), each record is
    charged to the account it was routed to, still in one commit."""
    shard = open_shard(tmp_path / "s", 1)
    seed(shard, 2)
    rows = shard.run(
        ops.ChargeBatch(
            items=[
                ("A0", rated("m1", 10, msisdn="4900")),
                ("A1", rated("m2", 20, msisdn="4900")),
                ("A0", rated("m1", 10, msisdn="4900")),
            ],
            at_s=T0,
        )
    )
    assert [(r.account_id, r.result) for r in rows] == [
        ("A0", Result.CHARGED),
        ("A1", Result.CHARGED),
        ("A0", Result.DUPLICATE),
    ]
    assert shard.run(ops.Audit()).ok
    shard.close()


def test_low_balance_notification_is_stored_once_per_crossing(tmp_path: Path) -> None:
    """Falling below the low-balance threshold notifies once; staying below does not again;
    the notification survives a reopen and the shard sequence continues."""
    shard = open_shard(tmp_path / "s", 1)
    seed(shard, 1, prepaid=1_200_000)  # 1.20 EUR, threshold 1.00 EUR
    shard.run(
        ops.ChargeBatch(items=[("A0", rated("n1", 300, msisdn="490"))], at_s=T0)
    )  # 0.30 -> 0.90
    shard.run(
        ops.ChargeBatch(items=[("A0", rated("n2", 100, msisdn="490"))], at_s=T0)
    )  # still below
    notes = shard.run(ops.ListNotifications(account_id="A0"))
    assert [n.kind for n in notes] == [NotificationKind.LOW_BALANCE]
    assert [seq for seq, _ in shard.run(ops.NotificationsSince(seq=0))] == [1]
    shard.close()
    shard = open_shard(tmp_path / "s", 2)
    assert len(shard.run(ops.ListNotifications(account_id="A0"))) == 1
    shard.run(ops.TopUp(request_id="t2", account_id="A0", amount=EUR, currency="EUR", at_s=T0))
    shard.run(
        ops.ChargeBatch(items=[("A0", rated("n3", 900, msisdn="490"))], at_s=T0)
    )  # crosses again
    assert [seq for seq, _ in shard.run(ops.NotificationsSince(seq=1))] == [2]
    assert len(shard.run(ops.ListNotifications(account_id="A0"))) == 2
    shard.close()


def test_mixed_account_operations_keep_the_audit(tmp_path: Path) -> None:
    """Top-ups, usage into debt, sessions, expiry, refund, limit and mode switches: the audit
    holds before and after a reopen."""
    shard = open_shard(tmp_path / "s", 1)
    shard.run(
        ops.CreateAccount(request_id="c1", account=account("P", PaymentMode.PREPAID, msisdn="1"))
    )
    shard.run(
        ops.CreateAccount(
            request_id="c2", account=account("Q", PaymentMode.POSTPAID, limit=5 * EUR, msisdn="2")
        )
    )
    shard.run(
        ops.CreateAccount(request_id="c3", account=account("H", PaymentMode.HYBRID, msisdn="3"))
    )
    assert (
        shard.run(
            ops.TopUp(request_id="t1", account_id="P", amount=300_000, currency="EUR", at_s=T0)
        ).result
        is Result.TOPPED_UP
    )
    dup = shard.run(
        ops.TopUp(request_id="t1", account_id="P", amount=300_000, currency="EUR", at_s=T0)
    )
    assert dup.result is Result.DUPLICATE
    rows = shard.run(
        ops.ChargeBatch(
            items=[
                ("P", rated("d1", 500, msisdn="1")),
                ("Q", rated("d2", 200, msisdn="2")),
                ("H", rated("d3", 50, msisdn="3")),
            ],
            at_s=T0,
        )
    )
    assert rows[0].result is Result.CHARGED_TO_DEBT
    grant = shard.run(
        ops.SessionInitial(
            request_id="s1:i",
            account_id="Q",
            session_id="s1",
            quote=QUOTE,
            requested_units=100,
            validity_s=60,
            at_s=T0,
        )
    )
    assert grant.result is Result.GRANTED
    shard.run(
        ops.SessionInitial(
            request_id="s2:i",
            account_id="H",
            session_id="s2",
            quote=QUOTE,
            requested_units=50,
            validity_s=60,
            at_s=T0,
        )
    )
    upd = shard.run(
        ops.SessionUpdate(
            request_id="s1:u",
            account_id="Q",
            session_id="s1",
            used_units=40,
            requested_units=60,
            at_s=T0 + 30,
        )
    )
    assert upd.result is Result.GRANTED
    assert shard.run(ops.ExpireReservations(at_s=T0 + 10_000)) == {"H": ("s2",), "Q": ("s1",)}
    assert shard.run(ops.ExpireReservations(at_s=T0 + 10_000)) == {}
    term = shard.run(
        ops.SessionTerminate(
            request_id="s1:t", account_id="Q", session_id="s1", used_units=10, at_s=T0 + 20_000
        )
    )
    assert term.result is Result.TERMINATED
    # The session is one line of Q's usage history: 40 + 10 units, after the direct record.
    session_line, record_line = shard.run(ops.UsagePage(account_id="Q", limit=2))[0]
    assert (session_line.record_id, session_line.units) == ("s1", 50)
    assert session_line.amount == term.receipt.charged and record_line.record_id == "d2"
    shard.run(ops.TopUp(request_id="t2", account_id="P", amount=EUR, currency="EUR", at_s=T0))
    assert (
        shard.run(
            ops.Refund(
                request_id="f1",
                account_id="P",
                amount=10_000,
                service="voice",
                reason_ref="d1",
                at_s=T0,
            )
        ).result
        is Result.REFUNDED
    )
    shard.run(ops.SetCreditLimit(request_id="l1", account_id="Q", credit_limit=10 * EUR))
    sw = shard.run(
        ops.SwitchMode(request_id="w1", account_id="P", to_mode=PaymentMode.POSTPAID, at_s=T0)
    )
    assert sw.result is Result.SWITCHED
    debit = shard.run(ops.DirectDebit(account_id="H", rated=rated("dd1", 10, msisdn="3"), at_s=T0))
    assert debit.result is Result.CHARGED  # hybrid, no prepaid left, unlimited credit
    assert shard.run(ops.BalanceCheck(account_id="P", at_s=T0)).receipt is not None
    report = shard.run(ops.Audit())
    assert report.ok, report.problems
    shard.close()
    shard = open_shard(tmp_path / "s", 2)
    report = shard.run(ops.Audit())
    assert report.ok, report.problems
    state = shard.run(ops.GetAccount(account_id="P"))
    assert state is not None and state.account.payment_mode is PaymentMode.POSTPAID
    shard.close()


def test_plan_change_survives_reopen_and_replays(tmp_path: Path) -> None:
    """A plan change is durable with its mark: after a reopen the retry is a DUPLICATE with the
    same account, another plan under the id is a conflict, and the audit holds."""
    shard = open_shard(tmp_path / "s", 1)
    subscription = Subscription(plan_id="p", start_s=T0)
    shard.run(
        ops.CreateAccount(
            request_id="c-A",
            account=account("A", PaymentMode.POSTPAID, subscriptions=(subscription,)),
        )
    )
    out = shard.run(ops.ChangePlan(request_id="pc", account_id="A", plan_id="q", at_s=T0 + 86_400))
    assert out.result is Result.UPDATED
    shard.close()

    again = open_shard(tmp_path / "s", 2)
    state = again.run(ops.GetAccount(account_id="A"))
    assert state is not None and state.account == out.receipt
    assert state.account.plan_at(T0) == "p" and state.account.plan_at(T0 + 86_400) == "q"
    retry = again.run(
        ops.ChangePlan(request_id="pc", account_id="A", plan_id="q", at_s=T0 + 86_400)
    )
    assert retry.result is Result.DUPLICATE and retry.receipt == out.receipt
    other = again.run(
        ops.ChangePlan(request_id="pc", account_id="A", plan_id="p", at_s=T0 + 86_400)
    )
    assert other.result is Result.EXISTS_WITH_DIFFERENT_PLAN
    unknown = again.run(
        ops.ChangePlan(request_id="pc2", account_id="B", plan_id="q", at_s=T0 + 86_400)
    )
    assert unknown.result is Result.UNKNOWN_ACCOUNT
    report = again.run(ops.Audit())
    assert report.ok, report.problems
    again.close()
