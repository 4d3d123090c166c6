"""ChargeColumns on a real shard answers and stores what ChargeBatch does, on either of its paths.

Two shards on real RocksDB in temp folders hold the same accounts; one is
sent a batch as columns (``ChargeColumns``: columnar charging, or the
per-record body for what columnar charging cannot say the same way), the
other the same records as ``ChargeBatch`` items (the reference). Their answers
and the accounts' balances must agree.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from actors.shard import ops
from actors.shard.column_usage import _answer_of_rows, _per_record_reason
from actors.shard.engine import AccountShard
from billing.accounts import Account, PaymentMode, Subscription
from billing.bundles import CatalogueTariff
from billing.charging.batch import ChargingConfig
from billing.column_rating import RatedRows
from billing.column_rating.rater import rate_columns
from billing.columns import records_to_batch
from billing.fraud import Action, FraudConfig, PremiumRule
from billing.rated import RatedRecord
from billing.rating import load_catalogue
from billing.records import Service, UsageRecord
from tests.replication_support import ReplicatedHosts, rows

TARIFFS = Path(__file__).resolve().parent.parent / "conf" / "tariffs"
CATALOGUE = load_catalogue(TARIFFS)
T_S = 1_793_700_000
ACCOUNTS = {"a1": "4915100000001", "a2": "4915100000002", "a3": "4915100000003"}


def _shard(path: Path, fraud: FraudConfig | None = None) -> AccountShard:
    shard = AccountShard.open(
        path, epoch=1, tariff=CatalogueTariff(CATALOGUE), unit_id="acct-00",
        catalogue=CATALOGUE, charging=ChargingConfig(tz=CATALOGUE.timezone), fraud=fraud,
    )  # fmt: skip
    for op in _opening():
        shard.run(op)
    return shard


def _opening() -> list[ops.CreateAccount | ops.TopUp]:
    """The accounts of :data:`ACCOUNTS`, created and topped up."""
    out: list[ops.CreateAccount | ops.TopUp] = []
    for index, account_id in enumerate(ACCOUNTS):
        account = Account(
            account_id=account_id, currency="EUR", payment_mode=PaymentMode.PREPAID,
            subscriptions=(Subscription(plan_id=CATALOGUE.default_plan, start_s=0),),
        )  # fmt: skip
        out.append(ops.CreateAccount(request_id=f"c{index}", account=account))
        # a3 holds little: its batch runs out of money (a boundary: the reference path)
        amount = 200_000 if account_id == "a3" else 50_000_000
        out.append(ops.TopUp(
            request_id=f"t{index}", account_id=account_id, amount=amount, currency="EUR", at_s=0,
        ))  # fmt: skip
    return out


def _records(
    ids: list[str], msisdns: list[str], duration_s: int = 120, called: str = "4930123456"
) -> list[UsageRecord]:
    return [
        UsageRecord(
            record_id=record_id,
            service=Service.VOICE,
            served_msisdn=msisdn,
            record_opening_time_s=T_S + i * 60,
            called_number=called,
            duration_s=duration_s + i,
        )
        for i, (record_id, msisdn) in enumerate(zip(ids, msisdns, strict=True))
    ]


def _op(
    records: list[UsageRecord], accounts: list[str], *, offline: bool = True
) -> ops.ChargeColumns:
    usage = records_to_batch(records)
    rated = rate_columns(usage, CATALOGUE).batch
    return ops.ChargeColumns(
        usage=usage, rated=rated, accounts=pa.array(accounts, pa.string()), at_s=T_S,
        offline=offline,
    )  # fmt: skip


def _reference(shard: AccountShard, op: ops.ChargeColumns) -> list[dict[str, object]]:
    items = []
    for account_id, rated in zip(
        op.accounts.to_pylist(), RatedRows(op.usage, op.rated, CATALOGUE), strict=True
    ):
        assert isinstance(rated, RatedRecord)
        items.append((account_id, rated))
    answer = shard.run(ops.ChargeBatch(items=items, at_s=op.at_s, offline=op.offline))
    batch = _answer_of_rows(answer.rows, answer.sponsor_amounts, answer.forwards).batch
    return batch.to_pylist()


def _balances(shard: AccountShard) -> dict[str, dict[str, object]]:
    """Every account's stored state (books, bundle use, usage totals, reminders) and the
    length of its ledger stream, as read back from the store (not the cache)."""
    shard.core.cache.clear()
    out = {}
    for account_id in ACCOUNTS:
        row = shard.core.load(account_id)
        assert row is not None
        state = row.state
        out[account_id] = {
            slot: getattr(state, slot) for slot in type(state).__slots__ if slot != "history"
        } | {"next_seq": row.next_seq}
    return out


def _stored(shard: AccountShard) -> dict[bytes, bytes]:
    """Every data row of the shard (all but the store's own ``m/`` keys), byte for byte:
    account rows, ledger rows, marks, notifications, outbox."""
    return {key: value for key, value in shard.core.store.scan(b"") if not key.startswith(b"m/")}


NUMBERS = list(ACCOUNTS.values())
CASES = {
    # several accounts, one running out of money mid-batch, a duplicate inside the batch
    "columnar": (
        [f"r{i}" for i in range(12)] + ["r3"],
        [NUMBERS[i % 3] for i in range(12)] + [NUMBERS[0]],
        [f"a{i % 3 + 1}" for i in range(12)] + ["a1"],
        None,
    ),
    # one msisdn charged to two accounts (a directory change racing the batch)
    "msisdn on two accounts": (
        ["m0", "m1", "m2", "m3"],
        [NUMBERS[0], NUMBERS[0], NUMBERS[1], NUMBERS[0]],
        ["a1", "a2", "a2", "a1"],
        "one msisdn, two accounts",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_charge_columns_equals_charge_batch(tmp_path: Path, case: str) -> None:
    """A batch and its replay answer and store on ChargeColumns what ChargeBatch gives."""
    ids, msisdns, accounts, reason = CASES[case]
    bulk, reference = _shard(tmp_path / "bulk"), _shard(tmp_path / "ref")
    try:
        op = _op(_records(ids, msisdns), accounts)
        assert _per_record_reason(op) == reason
        for _ in range(2):  # the second time every record is a replay
            got = bulk.run(op).batch.to_pylist()
            expected = _reference(reference, op)
            assert got == expected
            assert _balances(bulk) == _balances(reference)
            assert _stored(bulk) == _stored(reference)
    finally:
        bulk.close()
        reference.close()


def test_a_top_up_between_two_batches_is_charged_against(tmp_path: Path) -> None:
    """A top-up between two columnar batches reaches the shard's account table: the
    second batch charges the topped-up balance and stores what ChargeBatch stores."""
    bulk, reference = _shard(tmp_path / "bulk"), _shard(tmp_path / "ref")
    try:
        for op in _topped_up_batches()[:3]:
            if isinstance(op, ops.TopUp):
                bulk.run(op)
                reference.run(op)
            else:
                assert bulk.run(op).batch.to_pylist() == _reference(reference, op)
        assert _balances(bulk) == _balances(reference)
        assert _stored(bulk) == _stored(reference)
    finally:
        bulk.close()
        reference.close()


def _topped_up_batches() -> list[ops.ChargeColumns | ops.TopUp]:
    """a3 (0.20) charged, topped up, charged, topped up, charged: the first batch uses up
    its minutes (12,000 s) and runs it into debt; each top-up repays and refills it."""
    a3 = ACCOUNTS["a3"]
    out: list[ops.ChargeColumns | ops.TopUp] = []
    for n, duration_s in enumerate((4_000, 600, 600)):
        if n:
            out.append(ops.TopUp(
                request_id=f"more{n}", account_id="a3", amount=15_000_000, currency="EUR",
                at_s=T_S,
            ))  # fmt: skip
        ids = [f"b{n}-{i}" for i in range(6)]
        out.append(_op(_records(ids, [a3] * 6, duration_s), ["a3"] * 6))
    return out


def test_a_promoted_follower_charges_what_it_was_sent(tmp_path: Path) -> None:
    """A replicated shard charges a batch on its primary, its follower is promoted, and the
    new primary charges batches around a top-up as one shard given all the same calls:
    same answers, and the promoted copy stores the reference's rows byte for byte."""
    cluster = ReplicatedHosts(tmp_path / "cluster")
    reference = _shard(tmp_path / "ref")
    unit = "acct-00"
    try:
        cluster.place(unit, "n1", 1)
        cluster.replicate(unit, ["n2"])
        for opening in _opening():
            cluster.on(unit, opening)
        for n, op in enumerate(_topped_up_batches()):
            if n == 1:  # n1 is lost after the first batch: n2 is fenced (2) and promoted (3)
                del cluster.reachable["n1"]
                cluster.hosts["n2"].open_unit(unit, 3)
                cluster.routes.map[unit] = ("n2", 3)
                cluster.replicate(unit, ["n3"])  # its own follower, to acknowledge writes
            if isinstance(op, ops.TopUp):
                cluster.on(unit, op)
                reference.run(op)
            else:
                got = cluster.on(unit, op).batch.to_pylist()
                assert got == _reference(reference, op)
        expected = _stored(reference)
    finally:
        cluster.close()
        reference.close()
    copy = rows(cluster.data_dir / "nodes" / "n2" / "units" / unit)
    assert {k: v for k, v in copy.items() if not k.startswith(b"m/")} == expected


def test_an_account_blocked_by_a_fraud_rule_in_a_batch_is_blocked_for_the_next(
    tmp_path: Path,
) -> None:
    """A premium call blocks a1 in the columnar batch that charges it (a change the batch
    makes besides charging): the shard's account table holds the block, and the next
    batch's online records are refused as ChargeBatch refuses them."""
    fraud = FraudConfig(
        velocity=None, spend_spike=None,
        premium=PremiumRule(premium_prefixes=("49900",), premium_classes=(), action=Action.BLOCK),
    )  # fmt: skip
    bulk, reference = _shard(tmp_path / "bulk", fraud), _shard(tmp_path / "ref", fraud)
    a1 = ACCOUNTS["a1"]
    try:
        premium = _op(_records(["p0", "p1"], [a1] * 2, called="49900123"), ["a1"] * 2)
        online = _op(_records(["o0", "o1"], [a1] * 2), ["a1"] * 2, offline=False)
        for op in (premium, online):
            assert bulk.run(op).batch.to_pylist() == _reference(reference, op)
        assert _stored(bulk) == _stored(reference)
    finally:
        bulk.close()
        reference.close()
