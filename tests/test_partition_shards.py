"""RatingPartition charging real AccountShards (each its own RocksDB), sponsors included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from actors.partition.engine import PartitionConfig, RatingPartition, RecordStatus
from actors.partition.ops import (
    PutSubscriber,
    Submit,
)
from actors.routing import shard_id, shard_of
from actors.shard import ops
from billing.accounts import Account, PaymentMode, Result, Subscription
from billing.bundles import CatalogueTariff
from billing.charging.batch import ChargingConfig
from billing.rated import RatedRecord
from billing.rating import load_catalogue
from billing.records import Service, UsageRecord

account_shard = pytest.importorskip("actors.shard.engine")

ROOT = Path(__file__).resolve().parent.parent
T_NOV = 1_793_700_000
AT = T_NOV + 86_400
SHARDS = 2


class Cluster:
    """Real shards in one process; the charge function delivers sponsor forwards like a host."""

    def __init__(self, tmp_path: Path) -> None:
        self.catalogue = load_catalogue(ROOT / "conf" / "tariffs")
        tariff = CatalogueTariff(self.catalogue)
        config = ChargingConfig(tz="Europe/Berlin")
        self.shards = {
            shard_id(i): account_shard.AccountShard.open(
                tmp_path / shard_id(i), epoch=1, tariff=tariff, unit_id=shard_id(i), charging=config
            )
            for i in range(SHARDS)
        }

    def shard(self, account_id: str) -> Any:
        return self.shards[shard_of(account_id, SHARDS)]

    def charge(self, unit_id: str, items: list[tuple[str, RatedRecord]]) -> list[Any]:
        answer = self.shards[unit_id].run(ops.ChargeBatch(items=items, at_s=AT))
        for forward in answer.forwards:
            self.shard(forward.target_account_id).run(
                ops.ApplyForwards(forwards=[forward], at_s=AT)
            )
            self.shards[unit_id].run(ops.AckForwards(forward_ids=[forward.forward_id]))
        return list(answer.rows)

    def close(self) -> None:
        for shard in self.shards.values():
            shard.close()


def test_partition_charges_real_shards_and_names_the_sponsor(tmp_path: Path) -> None:
    """Usage charged through real shards is exactly once across a resubmission, and
    zero-rated data is answered as charged to the catalogue's sponsor."""
    cluster = Cluster(tmp_path)
    try:
        for account_id in ("acct-0001", "sponsor-streamflix"):
            account = Account(
                account_id=account_id, currency="EUR", payment_mode=PaymentMode.POSTPAID
            )
            out = cluster.shard(account_id).run(
                ops.CreateAccount(request_id="c-" + account_id, account=account)
            )
            assert out.result is Result.CREATED
        part = RatingPartition.open(
            tmp_path / "part-0",
            epoch=1,
            unit_id="part-0",
            catalogue=cluster.catalogue,
            config=PartitionConfig(shards=SHARDS),
        )
        with part:
            subs = [Subscription(plan_id="business", start_s=0)]
            part.put_subscriber(
                PutSubscriber(
                    request_id="d-1",
                    msisdn="4915100000013",
                    account_id="acct-0001",
                    subscriptions=subs,
                )
            )
            records = [
                UsageRecord(
                    record_id="msc01:1",
                    service=Service.VOICE,
                    served_msisdn="4915100000013",
                    record_opening_time_s=T_NOV,
                    called_number="447700900123",
                    duration_s=90,
                ),
                UsageRecord(
                    record_id="pgw01:1",
                    service=Service.DATA,
                    served_msisdn="4915100000013",
                    record_opening_time_s=T_NOV,
                    downlink_bytes=5_000_000,
                    rating_group=20,
                ),
            ]
            first = part.submit(Submit(items=records, at_s=AT), cluster.charge)
            assert [r.status for r in first] == [RecordStatus.CHARGED, RecordStatus.CHARGED]
            assert first[0].charged_account_id == "acct-0001" and first[0].billed_units == 90
            assert first[1].charged_account_id == "sponsor-streamflix"
            again = part.submit(Submit(items=records, at_s=AT), cluster.charge)
            assert [(r.status, r.replay) for r in again] == [(RecordStatus.CHARGED, True)] * 2
            assert [r.amount for r in again] == [r.amount for r in first]
            assert [r.charged_account_id for r in again] == [r.charged_account_id for r in first]
            counts = part.counters()
            assert (counts.rated, counts.duplicates) == (2, 2) and counts.is_balanced()
    finally:
        cluster.close()
