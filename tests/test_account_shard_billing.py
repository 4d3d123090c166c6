"""AccountShard on a real RocksDB: bill runs, payments, ageing, interim invoices, content
settlement and sponsored charges forwarded between two shards."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from test_account_shard import open_shard, seed
from test_accounts import EUR, T0, FakeTariff, account, rated

from actors.shard import ops
from actors.shard.engine import AccountShard
from actors.shard.outbox import Forward, group_by_shard
from billing.accounts import AccountStatus, PaymentMode, Result, SponsorRule
from billing.billrun.run import invoice_id_for
from billing.cycle import DAY_S
from billing.invoice import InvoiceStatus
from billing.notifications import NotificationKind
from billing.records import Service
from billing.writeoff import WriteoffOutcome, WriteoffResult

JUNE_END = 1_719_792_000  # 2024-07-01 00:00 UTC
FINAL = JUNE_END + 3 * DAY_S  # past the default grace period


def postpaid_shard(path: Path, n: int, **options: object) -> AccountShard:
    shard = open_shard(path, 1, **options)
    for i in range(n):
        acct = account(f"B{i}", PaymentMode.POSTPAID, msisdn=f"48{i}")
        assert (
            shard.run(ops.CreateAccount(request_id=f"c{i}", account=acct)).result is Result.CREATED
        )
    return shard


def test_bill_run_issues_invoices_equal_to_the_ledger_and_is_idempotent(tmp_path: Path) -> None:
    """A bill run over all accounts (in chunks) issues one invoice each, equal to the usage;
    a second run, also after a reopen, replays and posts nothing."""
    shard = postpaid_shard(tmp_path / "s", 5, chunk_accounts=2)
    items = [(f"B{i % 5}", rated(f"u{i}", 100 + i, msisdn=f"48{i % 5}")) for i in range(20)]
    rows = shard.run(ops.ChargeBatch(items=items, at_s=T0 + DAY_S))
    owed = {f"B{i}": sum(r.amount for r in rows if r.account_id == f"B{i}") for i in range(5)}
    assert shard.run(ops.BillRun(cycle_id="2024-06", at_s=T0)).refused == "cycle_not_ended"
    report = shard.run(ops.BillRun(cycle_id="2024-06", at_s=FINAL))
    assert report.results == {"issued": 5} and report.commits == 3
    assert report.invoiced == sum(owed.values())
    invoice = shard.run(ops.GetInvoice(invoice_id=invoice_id_for("B0", "2024-06")))
    assert invoice is not None and invoice.total == owed["B0"]
    assert invoice.status is InvoiceStatus.OPEN
    assert shard.run(ops.GetAccount(account_id="B0")).receivable == -owed["B0"]  # type: ignore[union-attr]
    kinds = [n.kind for n in shard.run(ops.ListNotifications(account_id="B0"))]
    assert kinds == [NotificationKind.INVOICE_ISSUED]
    assert shard.run(ops.Audit()).ok
    again = shard.run(ops.BillRun(cycle_id="2024-06", at_s=FINAL + 60))
    assert again.results == {"replayed": 5} and again.entries == 0
    shard.close()
    shard = open_shard(tmp_path / "s", 2)
    assert shard.run(ops.BillRun(cycle_id="2024-06", at_s=FINAL + 120)).results == {"replayed": 5}
    assert [i.invoice_id for i in shard.run(ops.ListInvoices(account_id="B0", open_only=True))] == [
        invoice_id_for("B0", "2024-06")
    ]
    report2 = shard.run(ops.Audit())
    assert report2.ok, report2.problems
    assert report2.invoices == 5
    shard.close()


def test_payment_reversal_and_ageing_through_the_shard(tmp_path: Path) -> None:
    """A partial payment, a duplicate, an overpayment to credit, a reversal and ageing:
    invoices, receivable and credit stay equal to the ledger."""
    shard = postpaid_shard(tmp_path / "s", 1)
    shard.run(ops.ChargeBatch(items=[("B0", rated("u1", 1000, msisdn="480"))], at_s=T0))  # 1.00 EUR
    shard.run(ops.BillRun(cycle_id="2024-06", at_s=FINAL))
    iid = invoice_id_for("B0", "2024-06")
    first = shard.run(
        ops.ApplyPayment(
            request_id="p1", account_id="B0", amount=400_000, currency="EUR", at_s=FINAL
        )
    )
    assert isinstance(first, WriteoffOutcome) and first.result is WriteoffResult.APPLIED
    dup = shard.run(
        ops.ApplyPayment(
            request_id="p1", account_id="B0", amount=400_000, currency="EUR", at_s=FINAL
        )
    )
    assert isinstance(dup, WriteoffOutcome) and dup.result is WriteoffResult.DUPLICATE
    wrong = shard.run(
        ops.ApplyPayment(request_id="p9", account_id="B0", amount=1, currency="USD", at_s=FINAL)
    )
    assert wrong is Result.CURRENCY_MISMATCH
    assert shard.run(ops.GetInvoice(invoice_id=iid)).status is InvoiceStatus.PARTIALLY_PAID  # type: ignore[union-attr]
    due = shard.run(ops.GetInvoice(invoice_id=iid)).due_at_s  # type: ignore[union-attr]
    assert shard.run(ops.AgeInvoices(at_s=due - 1)) == 0
    assert shard.run(ops.AgeInvoices(at_s=due)) == 1
    assert shard.run(ops.AgeInvoices(at_s=due + DAY_S)) == 0
    assert shard.run(ops.GetInvoice(invoice_id=iid)).status is InvoiceStatus.OVERDUE  # type: ignore[union-attr]
    over = shard.run(
        ops.ApplyPayment(request_id="p2", account_id="B0", amount=EUR, currency="EUR", at_s=due + 5)
    )
    assert isinstance(over, WriteoffOutcome) and over.payment is not None
    assert over.payment.credit == 400_000
    assert shard.run(ops.GetAccount(account_id="B0")).credit == 400_000  # type: ignore[union-attr]
    back = shard.run(
        ops.ReversePayment(request_id="v1", account_id="B0", payment_id="p2", at_s=due + 9)
    )
    assert isinstance(back, WriteoffOutcome) and back.result is WriteoffResult.REVERSED
    state = shard.run(ops.GetAccount(account_id="B0"))
    assert state is not None and (state.credit, state.receivable) == (0, -600_000)
    unknown = shard.run(
        ops.ReversePayment(request_id="v2", account_id="B0", payment_id="c0", at_s=due)
    )
    assert isinstance(unknown, WriteoffOutcome)
    assert unknown.result is WriteoffResult.UNKNOWN_PAYMENT
    kinds = [n.kind for n in shard.run(ops.ListNotifications(account_id="B0"))]
    assert kinds == [NotificationKind.INVOICE_ISSUED, NotificationKind.PAYMENT_OVERDUE]
    report = shard.run(ops.Audit())
    assert report.ok, report.problems
    shard.close()


def test_switch_to_prepaid_issues_the_interim_invoice_in_the_same_batch(tmp_path: Path) -> None:
    """Postpaid -> prepaid bills the unbilled usage at once; the audit ties the invoice to the
    switch entry; the cycle's bill run does not bill it again."""
    shard = postpaid_shard(tmp_path / "s", 1)
    shard.run(ops.ChargeBatch(items=[("B0", rated("u1", 700, msisdn="480"))], at_s=T0 + DAY_S))
    out = shard.run(
        ops.SwitchMode(
            request_id="w1", account_id="B0", to_mode=PaymentMode.PREPAID, at_s=T0 + 2 * DAY_S
        )
    )
    assert out.result is Result.SWITCHED
    invoices = shard.run(ops.ListInvoices(account_id="B0"))
    assert [i.total for i in invoices] == [700_000]
    assert shard.run(ops.Audit()).ok
    shard.run(ops.BillRun(cycle_id="2024-06", at_s=FINAL))
    assert [i.total for i in shard.run(ops.ListInvoices(account_id="B0"))] == [700_000]
    report = shard.run(ops.Audit())
    assert report.ok, report.problems
    shard.close()


def test_content_purchase_posts_the_provider_share_and_settles(tmp_path: Path) -> None:
    """A content purchase moves the provider's share out of revenue in the same batch; the
    settlement report and the ledger agree."""
    shard = open_shard(tmp_path / "s", 1)
    shard.run(
        ops.CreateAccount(request_id="c", account=account("A", PaymentMode.PREPAID, msisdn="1"))
    )
    shard.run(ops.TopUp(request_id="t", account_id="A", amount=EUR, currency="EUR", at_s=T0))
    base = rated("k1", 1, msisdn="1", service=Service.SMS)
    bought = replace(
        base,
        record=replace(base.record, service=Service.CONTENT, content_item_id="game"),
        usage_class="content",
        content_provider="acme",
        provider_share=30_000,
    )
    assert shard.run(ops.ChargeBatch(items=[("A", bought)], at_s=T0))[0].result is Result.CHARGED
    (line,) = shard.run(ops.SettlementReport(cycle_id="2024-06"))
    assert (line.provider, line.count, line.gross, line.provider_share) == (
        "acme",
        1,
        90_000,
        30_000,
    )
    report = shard.run(ops.Audit())
    assert report.ok and report.op_balances["op/provider/acme"] == 30_000
    assert report.op_balances["op/revenue/content"] == 60_000
    shard.close()


def test_sponsor_on_the_same_shard_is_charged_in_the_same_batch(tmp_path: Path) -> None:
    """A rule naming a sponsor on this shard charges it directly: no forward."""
    shard = open_shard(tmp_path / "s", 1)
    rule = SponsorRule(sponsor_account_id="E", rating_group=20)
    shard.run(
        ops.CreateAccount(
            request_id="c1", account=account("A", PaymentMode.PREPAID, sponsor_rules=(rule,))
        )
    )
    shard.run(
        ops.CreateAccount(request_id="c2", account=account("E", PaymentMode.POSTPAID, msisdn="0"))
    )
    r = rated("s1", 5000, service=Service.DATA, usage_class="data.rg20", rating_group=20)
    answer = shard.run(ops.ChargeBatch(items=[("A", r)], at_s=T0))
    assert answer[0].result is Result.SPONSORED and answer.forwards == []
    assert shard.run(ops.GetAccount(account_id="E")).unbilled == -5000  # type: ignore[union-attr]
    assert shard.run(ops.UsagePage(account_id="A"))[0][0].sponsored_by == "E"
    assert shard.run(ops.Audit()).ok
    shard.close()


def test_cross_shard_sponsor_is_stored_delivered_and_applied_once(tmp_path: Path) -> None:
    """The forward is in the outbox with the subscriber's line; it survives a crash before
    delivery, a redelivery is a duplicate, and the ack empties the outbox."""
    tariff = FakeTariff(sponsors={"data.rg10": "S"})
    sub = open_shard(tmp_path / "a", 1, tariff=tariff)
    spo = open_shard(tmp_path / "b", 1, tariff=tariff)
    sub.run(
        ops.CreateAccount(request_id="c1", account=account("A", PaymentMode.PREPAID, msisdn="1"))
    )
    spo.run(
        ops.CreateAccount(request_id="c2", account=account("S", PaymentMode.POSTPAID, msisdn="0"))
    )
    r = rated("f1", 100, msisdn="1", service=Service.DATA, usage_class="data.rg10")
    answer = sub.run(ops.ChargeBatch(items=[("A", r)], at_s=T0))
    assert answer[0].result is Result.SPONSORED
    assert [f.forward_id for f in answer.forwards] == ["sponsor:f1"]
    sub.close()  # a crash before delivery: the forward is durable
    sub = open_shard(tmp_path / "a", 2, tariff=tariff)
    pending = sub.run(ops.PendingForwards())
    assert pending == answer.forwards
    assert list(group_by_shard(pending, 16)) != []
    assert spo.run(ops.ApplyForwards(forwards=pending, at_s=T0)) == [("sponsor:f1", Result.CHARGED)]
    assert spo.run(ops.ApplyForwards(forwards=pending, at_s=T0)) == [
        ("sponsor:f1", Result.DUPLICATE)
    ]
    assert spo.run(ops.GetAccount(account_id="S")).unbilled == -200_000  # type: ignore[union-attr]
    assert sub.run(ops.AckForwards(forward_ids=[f.forward_id for f in pending])) == 1
    assert (
        sub.run(ops.PendingForwards()) == []
        and sub.run(ops.AckForwards(forward_ids=["sponsor:f1"])) == 0
    )
    assert sub.run(ops.ChargeBatch(items=[("A", r)], at_s=T0))[0].result is Result.DUPLICATE
    orphan = replace(
        pending[0], target_account_id="Z", usage=replace(pending[0].usage, sponsor_account_id="Z")
    )
    assert spo.run(ops.ApplyForwards(forwards=[orphan], at_s=T0)) == [
        ("sponsor:f1", Result.UNKNOWN_ACCOUNT)
    ]
    assert [res for _, res in spo.run(ops.RefusedForwards())] == [Result.UNKNOWN_ACCOUNT]
    # A sponsor that does not exist yet: refused and kept; once the account exists, the
    # retry charges it once and clears the refusal.
    later = replace(r, record=replace(r.record, record_id="f2"))
    to_z = Forward.of(replace(pending[0].usage, rated=later, sponsor_account_id="Z"))
    assert spo.run(ops.ApplyForwards(forwards=[to_z], at_s=T0)) == [
        ("sponsor:f2", Result.UNKNOWN_ACCOUNT)
    ]
    assert spo.run(ops.RetryRefusedForwards(record_ids=["f2"], at_s=T0)) == [
        ("f2", Result.UNKNOWN_ACCOUNT)
    ]
    spo.run(
        ops.CreateAccount(request_id="cz", account=account("Z", PaymentMode.POSTPAID, msisdn="9"))
    )
    assert spo.run(ops.RetryRefusedForwards(record_ids=["f2"], at_s=T0)) == [("f2", Result.CHARGED)]
    assert spo.run(ops.GetAccount(account_id="Z")).unbilled == -200_000  # type: ignore[union-attr]
    assert [u.rated.record.record_id for u, _ in spo.run(ops.RefusedForwards())] == ["f1"]
    assert spo.run(ops.RetryRefusedForwards(record_ids=["f2"], at_s=T0)) == []
    for shard in (sub, spo):
        report = shard.run(ops.Audit())
        assert report.ok, report.problems
        shard.close()


def test_sponsored_answers_carry_the_sponsor_price_also_on_replay(tmp_path: Path) -> None:
    """Each sponsored line's answer names the sponsor's price: same shard, cross shard, a
    sponsor refusing on this shard; a resubmission after a reopen answers the same prices;
    the subscriber's own lines stay zero-money."""
    tariff = FakeTariff(sponsors={"data.rg10": "S"})
    shard = open_shard(tmp_path / "a", 1, tariff=tariff)
    near = SponsorRule(rule_id="near", sponsor_account_id="E", rating_group=20)
    gone = SponsorRule(rule_id="gone", sponsor_account_id="X", rating_group=30)
    subscriber = account("A", PaymentMode.PREPAID, msisdn="1", sponsor_rules=(near, gone))
    for rid, acct in (
        ("c1", subscriber),
        ("c2", account("E", PaymentMode.POSTPAID, msisdn="2")),
        ("c3", account("X", PaymentMode.POSTPAID, msisdn="3", status=AccountStatus.CLOSED)),
    ):
        shard.run(ops.CreateAccount(request_id=rid, account=acct))
    items = [
        ("A", rated("n1", 5000, msisdn="1", service=Service.DATA, rating_group=20)),
        ("A", rated("f1", 100, msisdn="1", service=Service.DATA, usage_class="data.rg10")),
        ("A", rated("x1", 700, msisdn="1", service=Service.DATA, rating_group=30)),
    ]
    answer = shard.run(ops.ChargeBatch(items=items, at_s=T0))
    assert [r.result for r in answer] == [Result.SPONSORED] * 3
    assert [r.amount for r in answer] == [0, 0, 0]
    prices = {"n1": 5000, "f1": 200_000, "x1": 700}  # rated amount, sponsor rate, rated amount
    assert answer.sponsor_amounts == prices
    assert sorted(f.forward_id for f in answer.forwards) == ["sponsor:f1", "sponsor:x1"]
    shard.close()
    shard = open_shard(tmp_path / "a", 2, tariff=tariff)
    again = shard.run(ops.ChargeBatch(items=items, at_s=T0 + 60))
    assert [r.result for r in again] == [Result.DUPLICATE] * 3
    assert again.sponsor_amounts == prices
    assert all(line.amount == 0 for line in shard.run(ops.UsagePage(account_id="A"))[0])
    assert shard.run(ops.Audit()).ok
    shard.close()


def test_an_unblock_also_ends_a_fraud_block(tmp_path: Path) -> None:
    """A premium-call rule blocks the account; the operator's unblock makes it active and
    clears the risk state's block, in one batch, with the reason in the notice."""
    from actors.shard.risk import load_risk
    from billing.fraud import FraudConfig

    fraud = FraudConfig.from_mapping({"premium": {"premium_classes": ["voice.premium"]}})
    shard = open_shard(tmp_path / "s", 1, fraud=fraud)
    seed(shard, 1)
    premium = rated("p1", 10, msisdn="490", usage_class="voice.premium")
    shard.run(ops.ChargeBatch(items=[("A0", premium)], at_s=T0))
    assert shard.run(ops.GetAccount(account_id="A0")).account.status is AccountStatus.BLOCKED  # type: ignore[union-attr]
    assert load_risk(shard.core, "A0").blocked
    out = shard.run(
        ops.SetStatus(
            request_id="u1", account_id="A0", status=AccountStatus.ACTIVE, reason="checked",
            at_s=T0 + 60,
        )
    )  # fmt: skip
    assert out.result is Result.UPDATED and out.state.account.status is AccountStatus.ACTIVE  # type: ignore[union-attr]
    assert not load_risk(shard.core, "A0").blocked
    notes = shard.run(ops.ListNotifications(account_id="A0"))
    assert notes[-1].kind is NotificationKind.ACCOUNT_UNBLOCKED
    assert notes[-1].value("reason") == "checked"
    shard.close()
