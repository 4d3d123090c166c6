"""What the core does, reached through the API alone (issue #18): a client of real gateways
on loopback over an in-process cluster, with exact amounts.

Settlement per provider equal to the ledger's accruals; sponsored results that carry the
sponsor's money; sponsor rules per account and per subscriber number; block, unblock and
close; the charging policies of conf/cluster.toml; money a reservation releases after a
switch to postpaid.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner
from petribill.v1 import accounts_pb2, notifications_pb2, usage_pb2
from test_gateway_support import T_NOV, TARIFFS, HookedBackend, LoopThread, running_gateways

from actors.routing import shard_of
from actors.shard import ops
from cluster.cli.main import main
from cluster.client import PetribillClient, PetribillError

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("restore_logging")]

Code = grpc.StatusCode
SHARDS = 4  # the in-process cluster's
CHARGED = usage_pb2.RECORD_STATUS_CHARGED
REJECTED = usage_pb2.RECORD_STATUS_REJECTED
UK = "447700900123"  # an SMS abroad: no bundle covers it
DEC = T_NOV + 40 * 86_400  # 2026-12-13


@pytest.fixture
def served() -> Iterator[tuple[LoopThread, HookedBackend, str, PetribillClient]]:
    with (
        running_gateways() as (loop, backend, gateways),
        PetribillClient([gateways[0].address], timeout_s=20) as client,
    ):
        yield loop, backend, gateways[0].address, client


def ids_on(shard: str, prefix: str, count: int) -> list[str]:
    """``count`` account ids with ``prefix`` owned by ``shard``."""
    return [aid for n in range(10_000) if shard_of(aid := f"{prefix}{n}", SHARDS) == shard][:count]


def ids_off(shard: str, prefix: str, count: int) -> list[str]:
    """``count`` account ids with ``prefix`` owned by a shard other than ``shard``."""
    return [aid for n in range(10_000) if shard_of(aid := f"{prefix}{n}", SHARDS) != shard][:count]


def sms(record_id: str, msisdn: str, at_s: int = T_NOV) -> dict[str, Any]:
    return {
        "record_id": record_id,
        "service": "sms",
        "served_msisdn": msisdn,
        "record_opening_time_s": at_s,
        "called_number": UK,
        "sms_count": 1,
    }


def video(record_id: str, msisdn: str, volume_bytes: int = 10_000_000) -> dict[str, Any]:
    return {
        "record_id": record_id,
        "service": "data",
        "served_msisdn": msisdn,
        "record_opening_time_s": T_NOV,
        "downlink_bytes": volume_bytes,
        "rating_group": 20,
    }


def content(record_id: str, msisdn: str, item: str, at_s: int = T_NOV) -> dict[str, Any]:
    return {
        "record_id": record_id,
        "service": "content",
        "served_msisdn": msisdn,
        "record_opening_time_s": at_s,
        "content_item_id": item,
    }


def prepaid(client: PetribillClient, account_id: str, msisdns: list[str], money: str = "50"):  # type: ignore[no-untyped-def]
    client.create_account(account_id, "prepaid", msisdns=msisdns, request_id=f"c-{account_id}")
    return client.top_up(account_id, money, request_id=f"t-{account_id}")


def postpaid(client: PetribillClient, account_id: str, msisdn: str, limit: str | None = None):  # type: ignore[no-untyped-def]
    return client.create_account(
        account_id, "postpaid", plan_id="business", msisdns=[msisdn], credit_limit=limit,
        request_id=f"c-{account_id}",
    )  # fmt: skip


def code_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(PetribillError) as failed:
        call()
    return failed.value.code


def cli(address: str, *args: str) -> Any:
    result = CliRunner().invoke(main, [*args, "--json", "--gateway", address])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# --- settlement ------------------------------------------------------------------------------


@pytest.fixture
def tariffs_with_thirds(tmp_path: Path) -> Path:
    """The sample catalogue and one provider whose share leaves rounding: 33.3333 % of 0.33."""
    folder = tmp_path / "tariffs"
    shutil.copytree(TARIFFS, folder)
    with (folder / "content.toml").open("a") as out:
        out.write(
            '\n[providers.tonewerk]\nname = "Tonewerk"\nshare_ppm = 333333\n'
            '\n[content.tone-third]\nname = "A third of a tone"\nprovider = "tonewerk"\n'
            'price = "0.33"\n'
        )
    return folder


def test_settlement_per_provider_equals_the_ledger(tariffs_with_thirds: Path) -> None:
    """Content bought on three shards, by usage records and a direct debit, in November and
    December: GetSettlement answers each provider's purchases, revenue, share owed, operator
    share and rounding to the micro-unit; the shares equal the op/provider accruals of every
    shard's ledger, and `petribill settlement` prints the same report."""
    with running_gateways(tariffs=tariffs_with_thirds) as (loop, backend, gateways):
        client = PetribillClient([gateways[0].address], timeout_s=20)
        buyers = [ids_on(f"acct-0{i}", "buyer-", 1)[0] for i in range(3)]
        for n, aid in enumerate(buyers):
            prepaid(client, aid, [f"4915200000{n}"])
        m0, m1 = (f"4915200000{n}" for n in range(2))
        answer = client.submit_usage(
            [
                content("c:1", m0, "tone-third"),
                content("c:2", m0, "tone-third"),
                content("c:3", m0, "news-month"),
                content("c:4", m1, "tone-third"),
                content("c:5", m1, "game-coins-500"),
                content("c:6", m1, "tone-third", at_s=DEC),  # December
            ]
        )
        assert {r.status for r in answer.results} == {CHARGED}
        client.direct_debit(
            buyers[2], service="content", content_item_id="news-day-pass", at_s=T_NOV
        )

        report = client.get_settlement("2026-11")
        got = {
            p.provider_id: (
                p.purchases, p.revenue.micros, p.share_owed.micros, p.operator_share.micros,
                p.rounding.micros,
            )
            for p in report.providers
        }  # fmt: skip
        assert got == {
            # 1.99 at 70 %
            "pixelforge": (1, 1_990_000, 1_393_000, 597_000, 0),
            # 6.99 at 40 % (the item's own share) and 0.99 at 50 %
            "tagesblick": (2, 7_980_000, 3_291_000, 4_689_000, 0),
            # 3 x 0.33 at 33.3333 %: 3 x 0.109999 owed; 0.99 at once would owe 0.329999
            "tonewerk": (3, 990_000, 329_997, 660_003, 2),
        }
        tones = next(p for p in report.providers if p.provider_id == "tonewerk")
        assert tones.name == "Tonewerk" and tones.revenue.currency == "EUR"
        assert [(i.item_id, i.purchases, i.rounding.micros) for i in tones.items] == [
            ("tone-third", 3, 2)
        ]
        only = client.get_settlement("2026-11", "tagesblick").providers
        assert [(p.provider_id, [i.item_id for i in p.items]) for p in only] == [
            ("tagesblick", ["news-day-pass", "news-month"])
        ]
        december = client.get_settlement("2026-12").providers
        assert [(p.provider_id, p.share_owed.micros) for p in december] == [("tonewerk", 109_999)]

        # The ledger's accruals, summed over every shard by its own audit (an independent
        # replay of the postings): op/provider/<p> holds exactly the shares reported.
        audits = loop.run(
            backend.cluster.run_each(backend.cluster.router.all_shards(), ops.Audit(), timeout_s=10)
        )
        accrued: dict[str, int] = {}
        for audit in audits.values():
            for name, amount in audit.op_balances.items():
                accrued[name] = accrued.get(name, 0) + amount
        for provider, (_, _, share, _, _) in got.items():
            later = 109_999 if provider == "tonewerk" else 0
            assert accrued[f"op/provider/{provider}"] == share + later

        printed = cli(gateways[0].address, "settlement", "2026-11")
        assert [p["provider_id"] for p in printed["providers"]] == sorted(got)
        assert printed["providers"][2]["rounding"]["micros"] == 2
        table = CliRunner().invoke(
            main, ["settlement", "2026-11", "--gateway", gateways[0].address]
        )
        assert table.exit_code == 0 and "Tonewerk" in table.stdout
        assert code_of(lambda: client.get_settlement("2026-13")) is Code.INVALID_ARGUMENT
        client.close()


# --- sponsored results -------------------------------------------------------------------


def test_sponsored_results_carry_the_sponsor_money(served: Any) -> None:
    """Zero-rated video (rating group 20) of subscribers on the sponsor's shard and on
    others: each result names the sponsor and the sponsor's price (10 MiB at 0.002), a
    resubmission answers the same as a replay, the subscriber's line shows 0, and the
    amounts added per paying account equal what the sponsor's account was charged."""
    _loop, _backend, _address, client = served
    sponsor = "sponsor-streamflix"
    postpaid(client, sponsor, "4930900000001")
    home = shard_of(sponsor, SHARDS)
    viewers = ids_on(home, "viewer-", 1) + ids_off(home, "viewer-", 2)
    msisdns = [f"4915300000{n}" for n in range(3)]
    for aid, msisdn in zip(viewers, msisdns, strict=True):
        prepaid(client, aid, [msisdn])
    records = [video(f"v:{n}", m) for n, m in enumerate(msisdns)]
    price = math.ceil(10_000_000 / 1_048_576) * 2_000  # D_SPONSOR_WHOLESALE
    for replay in (False, True):
        results = client.submit_usage(records).results
        assert [(r.status, r.replay, r.charged_account_id, r.amount.micros) for r in results] == [
            (CHARGED, replay, sponsor, price)
        ] * 3
    paid: dict[str, int] = {}
    for r in results:
        paid[r.charged_account_id] = paid.get(r.charged_account_id, 0) + r.amount.micros
    assert client.get_balance(sponsor).unbilled.micros == paid[sponsor] == 3 * price
    for aid in viewers:
        (line,) = client.list_usage(aid).lines
        assert (line.amount.micros, line.sponsored_by) == (0, sponsor)
        assert client.get_balance(aid).prepaid.micros == 50_000_000


# --- sponsor rules --------------------------------------------------------------------------


def test_sponsor_rules_per_subscriber_number_from_a_given_time(served: Any) -> None:
    """A parent pays for one child's SMS from 10:00 on: that number's SMS from then on are
    the parent's, at the rated price; the other number's and earlier ones stay the family's;
    ended at 11:00, the child pays again. Retries are idempotent; mistakes are refused."""
    _loop, _backend, address, client = served
    kid, adult = "4915400000001", "4915400000002"
    prepaid(client, "family", [adult, kid])
    postpaid(client, "parent", "4915400000009")
    start = T_NOV + 2400  # 10:00 UTC
    rule = client.add_sponsor_rule(
        "family", "parent", rule_id="kid-sms", msisdn=f"+{kid}", usage_classes=["sms.*"],
        start_s=start, request_id="r-kid",
    )  # fmt: skip
    assert (rule.rule_id, rule.msisdn, rule.start_s, rule.end_s) == ("kid-sms", kid, start, 0)
    again = client.add_sponsor_rule(
        "family", "parent", rule_id="kid-sms", msisdn=f"+{kid}", usage_classes=["sms.*"],
        start_s=start, request_id="r-kid",
    )  # fmt: skip
    assert again == rule
    price = client.price_enquiry("smart", service="sms", units=1, called_number=UK).price.micros
    assert price == 190_000
    results = client.submit_usage(
        [
            sms("k:1", kid, start - 60),
            sms("k:2", kid, start + 60),
            sms("a:1", adult, start + 60),
        ]
    ).results
    assert [(r.charged_account_id, r.amount.micros) for r in results] == [
        ("family", price),
        ("parent", price),
        ("family", price),
    ]
    ended = client.end_sponsor_rule("family", "kid-sms", start + 3600, request_id="e-kid")
    assert ended.end_s == start + 3600
    later = client.submit_usage([sms("k:3", kid, start + 3600)]).results
    assert later[0].charged_account_id == "family"
    (listed,) = client.list_sponsor_rules("family").rules
    assert listed == ended
    assert client.get_balance("parent").unbilled.micros == price
    assert cli(address, "sponsors", "list", "family")[0]["rule_id"] == "kid-sms"

    add = client.add_sponsor_rule
    assert code_of(lambda: add("family", "parent", rule_id="kid-sms")) is Code.ALREADY_EXISTS
    assert code_of(lambda: add("family", "nobody", rule_id="x")) is Code.NOT_FOUND
    assert code_of(lambda: add("family", "family", rule_id="x")) is Code.INVALID_ARGUMENT
    assert code_of(lambda: add("family", "parent", msisdn="4999")) is Code.INVALID_ARGUMENT
    assert code_of(lambda: add("family", "parent", rate_id="NOPE")) is Code.INVALID_ARGUMENT
    end = client.end_sponsor_rule
    assert code_of(lambda: end("family", "nope", start)) is Code.NOT_FOUND


# --- account status ---------------------------------------------------------------------


def test_block_unblock_and_close(served: Any) -> None:
    """Blocked: online charges refused, offline usage charged; unblocked: online works
    again; closed: usage is rejected account_closed and kept in the reject store, and the
    account stays closed. Each change is notified once, with its reason."""
    _loop, _backend, address, client = served
    prepaid(client, "st", ["4915500000001"])
    blocked = client.block_account("st", "chargeback under review", request_id="b1")
    assert blocked.status == accounts_pb2.ACCOUNT_STATUS_BLOCKED
    assert client.block_account("st", "again", request_id="b2").status == blocked.status
    debit = lambda rid: client.direct_debit(  # noqa: E731
        "st", service="content", content_item_id="news-day-pass", request_id=rid
    )
    assert code_of(lambda: debit("d1")) is Code.FAILED_PRECONDITION
    (offline,) = client.submit_usage([sms("st:1", "4915500000001")]).results
    assert (offline.status, offline.amount.micros) == (CHARGED, 190_000)

    shown = cli(address, "accounts", "unblock", "st", "--reason", "cleared", "--request-id", "u1")
    assert shown["status"] == "ACCOUNT_STATUS_ACTIVE"
    assert debit("d2").charged.micros == 990_000

    closed = client.close_account("st", "customer left", request_id="x1")
    assert closed.status == accounts_pb2.ACCOUNT_STATUS_CLOSED
    (refused,) = client.submit_usage([sms("st:2", "4915500000001")]).results
    assert (refused.status, refused.reason) == (REJECTED, "account_closed")
    listed = client.list_rejects(reason="account_closed").rejects
    assert [r.record_id for r in listed] == ["st:2"]
    assert code_of(lambda: client.unblock_account("st", request_id="u2")) is (
        Code.FAILED_PRECONDITION
    )
    assert client.close_account("st", request_id="x2").status == closed.status
    assert code_of(lambda: client.close_account("st", "other", request_id="x1")) is (
        Code.ALREADY_EXISTS
    )
    kinds = notifications_pb2.NotificationKind
    notes = [
        (kinds.Name(n.kind), n.data["reason"])
        for n in client.list_notifications("st").notifications
        if n.subject.startswith("operator:")
    ]
    assert notes == [  # newest first
        ("NOTIFICATION_KIND_ACCOUNT_CLOSED", "customer left"),
        ("NOTIFICATION_KIND_ACCOUNT_UNBLOCKED", "cleared"),
        ("NOTIFICATION_KIND_ACCOUNT_BLOCKED", "chargeback under review"),
    ]


# --- charging policies ------------------------------------------------------------------


POLICIES = {"charging": {"offline_policy": "reject", "block_over_limit": True}}


def test_policies_reject_offline_shortfall_and_block_over_limit() -> None:
    """With [charging] offline_policy = "reject" and block_over_limit = true: a prepaid SMS
    the balance cannot cover is rejected rejected_offline and charged once reprocessed after
    a top-up; a postpaid call beyond the limit is charged over the limit and blocks the
    account until an operator unblocks it; a prepaid sponsor short of money refuses its half
    (sponsor_refused) and is charged exactly the answered amount once reprocessed."""
    with running_gateways(settings=POLICIES) as (_loop, _backend, gateways):
        client = PetribillClient([gateways[0].address], timeout_s=20)
        prepaid(client, "short", ["4915600000001"], money="0.10")
        (rejected,) = client.submit_usage([sms("p:1", "4915600000001")]).results
        assert (rejected.status, rejected.reason) == (REJECTED, "rejected_offline")
        client.top_up("short", "1", request_id="t2")
        done = client.reprocess_rejects(["p:1"], request_id="rp1")
        assert (done.reprocessed, done.charged) == (1, 1)
        assert client.get_balance("short").prepaid.micros == 1_100_000 - 190_000

        postpaid(client, "lim", "4915600000002")
        limited = cli(gateways[0].address, "accounts", "credit-limit", "lim", "1.00")
        assert limited["credit_limit"]["micros"] == 1_000_000
        call = {
            "record_id": "p:2", "service": "voice", "served_msisdn": "4915600000002",
            "record_opening_time_s": T_NOV, "called_number": "4930123456", "duration_s": 60_000,
        }  # fmt: skip
        # The business plan's 1000 bundle minutes first, then 50 minutes at 0.03: 1.50.
        (first,) = client.submit_usage([call]).results
        assert first.status == CHARGED and first.amount.micros == 0
        (over,) = client.submit_usage([{**call, "record_id": "p:2b", "duration_s": 3000}]).results
        assert over.status == usage_pb2.RECORD_STATUS_CHARGED_OVER_LIMIT
        assert client.get_account("lim").status == accounts_pb2.ACCOUNT_STATUS_BLOCKED
        subjects = [n.subject for n in client.list_notifications("lim").notifications]
        assert "credit_limit" in subjects
        assert client.unblock_account("lim", "paid", request_id="u1").status == (
            accounts_pb2.ACCOUNT_STATUS_ACTIVE
        )

        prepaid(client, "poor-sponsor", ["4915600000003"], money="0.01")
        prepaid(client, "fan", ["4915600000004"])
        client.add_sponsor_rule(
            "fan", "poor-sponsor", usage_classes=["sms.*"], start_s=T_NOV - 3600, request_id="r1"
        )
        (sponsored,) = client.submit_usage([sms("p:3", "4915600000004")]).results
        assert (sponsored.status, sponsored.charged_account_id) == (CHARGED, "poor-sponsor")
        assert sponsored.amount.micros == 190_000
        (kept,) = client.list_rejects(reason="sponsor_refused").rejects
        assert kept.record_id == "p:3" and "rejected_offline" in kept.detail
        client.top_up("poor-sponsor", "1", request_id="t3")
        assert client.reprocess_rejects(["p:3"], request_id="rp2").charged == 1
        assert client.get_balance("poor-sponsor").prepaid.micros == 1_010_000 - 190_000
        assert client.get_balance("fan").prepaid.micros == 50_000_000
        client.close()


# --- release after a switch ---------------------------------------------------------------


def test_money_released_after_a_switch_to_postpaid_is_credit(served: Any) -> None:
    """A prepaid session holds money; the account switches to postpaid (its balance becomes
    credit); terminating the session releases the unused hold to credit as well: prepaid
    and reserved end at 0, and credit is what the account had less what the session cost."""
    _loop, _backend, address, client = served
    prepaid(client, "sw", ["4915700000001"], money="1")
    grant = client.charge_session(
        "s1", "initial", account_id="sw", service="voice", called_number=UK, requested_units=600,
        request_id="i1",
    )  # fmt: skip
    assert grant.reserved.micros > 0
    switched = cli(address, "accounts", "switch", "sw", "postpaid", "--request-id", "sw1")
    assert switched["payment_mode"] == "PAYMENT_MODE_POSTPAID"
    end = client.charge_session("s1", "terminate", account_id="sw", used_units=30, request_id="t1")
    balance = client.get_balance("sw")
    assert (balance.prepaid.micros, balance.reserved.micros) == (0, 0)
    assert balance.credit.micros == 1_000_000 - end.charged.micros
    assert end.charged.micros > 0
