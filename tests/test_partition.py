"""RatingPartition on a real RocksDB: directory, submit, rejects, counters, offsets, recovery."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from actors.partition.engine import (
    PartitionConfig,
    RatingPartition,
    RecordResult,
    RecordStatus,
    SourceProgress,
)
from actors.partition.ops import (
    ChangeSubscriberPlan,
    GetSubscriber,
    PutSubscriber,
    Reprocess,
    Submit,
)
from actors.partition.rejects import RejectKind
from actors.routing import partition_of, shard_of
from actors.store.codec import encode_u64
from actors.store.fencing import EPOCH_FILE, write_atomic
from actors.store.storage import StaleEpoch
from billing.accounts import (
    Account,
    AccountState,
    AccountStatus,
    PaymentMode,
    Result,
    Subscription,
)
from billing.bundles import CatalogueTariff
from billing.charging.batch import ChargingConfig, charge_batch
from billing.idempotency import Mark
from billing.rated import RatedRecord
from billing.rating import Catalogue, load_catalogue
from billing.readers import Reject, read_records
from billing.records import Service, UsageRecord
from billing.sponsor import charge_sponsored

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "conf" / "samples"
T_NOV = 1_793_700_000  # 2026-11-03, a Tuesday
AT = T_NOV + 86_400
SHARDS = 4
EUR = 1_000_000


def _no_charge(shard: str, items: list[Any]) -> list[Any]:
    raise AssertionError("unreadable lines are never charged")


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue(ROOT / "conf" / "tariffs")


class MemoryShards:
    """Real charging over the pure core, with dict-backed accounts and marks per shard.

    Sponsor forwards are applied on the sponsor's shard at once (the outbox's
    delivery, without its durability). ``down`` shards raise like a dead node.
    """

    def __init__(self, catalogue: Catalogue, shards: int = SHARDS) -> None:
        self.tariff = CatalogueTariff(catalogue)
        self.config = ChargingConfig(tz="Europe/Berlin")
        self.shards = shards
        self.states: dict[str, dict[str, AccountState]] = {}
        self.marks: dict[str, dict[str, Mark[Any]]] = {}
        self.down: set[str] = set()
        self.calls = 0

    def create(self, account_id: str, mode: PaymentMode, prepaid: int = 0) -> None:
        state = AccountState(Account(account_id=account_id, currency="EUR", payment_mode=mode))
        state.prepaid = prepaid
        self.states.setdefault(shard_of(account_id, self.shards), {})[account_id] = state

    def state(self, account_id: str) -> AccountState:
        return self.states[shard_of(account_id, self.shards)][account_id]

    def charged_ids(self) -> set[str]:
        return {key for marks in self.marks.values() for key in marks}

    def charge(self, shard: str, items: list[tuple[str, RatedRecord]]) -> list[Any]:
        self.calls += 1
        if shard in self.down:
            raise ConnectionError(f"{shard} is down")
        assert all(shard_of(account_id, self.shards) == shard for account_id, _ in items)
        states = self.states.setdefault(shard, {})
        marks = self.marks.setdefault(shard, {})
        outcome = charge_batch(
            [rated for _, rated in items],
            accounts=states,
            directory={rated.record.served_msisdn: a for a, rated in items},
            marks=marks,
            tariff=self.tariff,
            config=self.config,
            at_s=AT,
        )
        for state in outcome.effects.accounts:
            states[state.account_id] = state
        marks.update(outcome.effects.marks)
        for usage in outcome.effects.forwards:
            target = shard_of(usage.sponsor_account_id, self.shards)
            sponsor = charge_sponsored(
                self.states[target][usage.sponsor_account_id],
                usage,
                marks=self.marks.setdefault(target, {}),
                tariff=self.tariff,
                config=self.config,
                at_s=AT,
            )
            for state in sponsor.effects.accounts:
                self.states[target][state.account_id] = state
            self.marks[target].update(sponsor.effects.marks)
        assert outcome.receipt is not None
        return list(outcome.receipt)


def open_partition(
    path: Path, catalogue: Catalogue, epoch: int = 1, **config: Any
) -> RatingPartition:
    settings: dict[str, Any] = {"shards": SHARDS, **config}
    return RatingPartition.open(
        path, epoch=epoch, unit_id="part-0", catalogue=catalogue, config=PartitionConfig(**settings)
    )


def voice(record_id: str, msisdn: str, duration_s: int = 65, **extra: Any) -> UsageRecord:
    values: dict[str, Any] = {
        "record_id": record_id,
        "service": Service.VOICE,
        "served_msisdn": msisdn,
        "record_opening_time_s": T_NOV,
        "called_number": "49302123456",
        "duration_s": duration_s,
        **extra,
    }
    return UsageRecord(**values)


def subscribe(part: RatingPartition, shards: MemoryShards, msisdn: str, account_id: str) -> None:
    shards.create(account_id, PaymentMode.PREPAID, prepaid=10 * EUR)
    answer = part.put_subscriber(
        PutSubscriber(
            request_id=f"req-{msisdn}",
            msisdn=msisdn,
            account_id=account_id,
            subscriptions=[Subscription(plan_id="smart", start_s=0)],
        )
    )
    assert answer.result is Result.CREATED


def reject_line(tmp_path: Path) -> Reject:
    path = tmp_path / "bad.csv"
    path.write_text(
        "record_id,service,served_msisdn,record_opening_time,duration_s\n"
        "msc09:1,voice,4915100000001,2026-11-03T10:00:00Z,-5\n"
    )
    items = list(read_records(path))
    assert isinstance(items[0], Reject)
    return items[0]


def statuses(results: list[RecordResult]) -> list[tuple[str, str]]:
    return [(r.status.value, r.reason) for r in results]


def test_mixed_batch_gives_one_result_per_item_and_counters_add_up(
    tmp_path: Path, catalogue: Catalogue
) -> None:
    """Good, malformed, unknown, unratable, repeated and conflicting items each get their
    status, rejects are stored with reasons, and received = rated + rejected + duplicates."""
    shards = MemoryShards(catalogue)
    with open_partition(tmp_path / "p", catalogue) as part:
        subscribe(part, shards, "4915100000001", "acct-0001")
        good = voice("msc01:1", "4915100000001")
        items: list[UsageRecord | Reject] = [
            good,
            reject_line(tmp_path),
            voice("msc01:2", "4915199999999"),
            UsageRecord(
                record_id="cms01:1",
                service=Service.CONTENT,
                served_msisdn="4915100000001",
                record_opening_time_s=T_NOV,
                content_item_id="no-such-item",
            ),
            good,
            voice("msc01:1", "4915100000001", duration_s=66),
        ]
        results = part.submit(Submit(items=items, at_s=AT), shards.charge)
        assert statuses(results) == [
            ("charged", ""),
            ("rejected", "malformed"),
            ("rejected", "unknown_account"),
            ("rejected", "unknown_item"),
            ("charged", ""),  # item 0 again: its result, flagged as a replay
            ("exists_with_different_content", "duration_s"),
        ]
        assert [r.replay for r in results] == [False] * 4 + [True, False]
        assert results[0].amount == results[4].amount
        assert results[0].charged_account_id == "acct-0001"
        assert (results[0].billed_units, results[0].bundle_units) == (120, 65)  # 60/60 increments
        assert shards.calls == 1 and shards.charged_ids() == {"msc01:1"}
        counts = part.counters()
        assert counts.as_dict() == {"received": 6, "rated": 1, "rejected": 4, "duplicates": 1}
        assert counts.is_balanced()
        reasons = sorted(e.reason for e in part.list_rejects(10))
        assert reasons == [
            "exists_with_different_content",
            "malformed",
            "unknown_account",
            "unknown_item",
        ]
        [line] = part.list_rejects(10, reason="malformed")
        assert line.kind is RejectKind.LINE and line.source_line == 2 and "-5" in (line.raw or "")


def test_reopen_at_next_epoch_keeps_directory_rejects_counters_offsets(
    tmp_path: Path, catalogue: Catalogue
) -> None:
    """Everything a partition committed survives a reopen by the next owner."""
    shards = MemoryShards(catalogue)
    path = tmp_path / "p"
    with open_partition(path, catalogue) as part:
        subscribe(part, shards, "4915100000001", "acct-0001")
        records = [voice("msc01:1", "4915100000001"), voice("msc01:2", "4915199999999")]
        part.submit(
            Submit(
                items=records, at_s=AT, source=SourceProgress(source_id="voice-1.csv", offset=3)
            ),
            shards.charge,
        )
        before = part.counters(), part.counters("voice-1.csv")
    with open_partition(path, catalogue, epoch=2) as part:
        assert (part.counters(), part.counters("voice-1.csv")) == before
        assert part.file_offset("voice-1.csv") == 3 and part.file_offset("other") == 0
        entry = part.get_subscriber(GetSubscriber(msisdn="4915100000001"))
        assert entry is not None and entry.account_id == "acct-0001"
        assert [e.record_id for e in part.list_rejects(5)] == ["msc01:2"]
    with pytest.raises(StaleEpoch):
        open_partition(path, catalogue, epoch=2)


def test_reprocess_charges_a_reject_once_its_subscriber_exists(
    tmp_path: Path, catalogue: Catalogue
) -> None:
    """An unknown_account reject is charged by reprocess after the subscriber is created,
    leaves the store, and moves from rejected to rated in the counters."""
    shards = MemoryShards(catalogue)
    with open_partition(tmp_path / "p", catalogue) as part:
        record = voice("msc01:7", "4915100000002", source_file="v.csv", source_line=8)
        [first] = part.submit(Submit(items=[record], at_s=AT), shards.charge)
        assert first.status is RecordStatus.REJECTED and first.reason == "unknown_account"
        again = part.reprocess(Reprocess(record_ids=["msc01:7", "nope:1"], at_s=AT), shards.charge)
        assert statuses(again) == [
            ("rejected", "unknown_account"),
            ("not_found", "not_in_reject_store"),
        ]
        subscribe(part, shards, "4915100000002", "acct-0002")
        [done] = part.reprocess(Reprocess(record_ids=["msc01:7"], at_s=AT), shards.charge)
        assert done.status is RecordStatus.CHARGED and done.charged_account_id == "acct-0002"
        assert part.list_rejects(10) == []
        expected = {"received": 1, "rated": 1, "rejected": 0, "duplicates": 0}
        assert part.counters().as_dict() == expected
        assert part.counters("v.csv").as_dict() == expected
        [repeat] = part.submit(Submit(items=[record], at_s=AT), shards.charge)
        assert repeat.status is RecordStatus.CHARGED and repeat.replay
        assert shards.charged_ids() == {"msc01:7"}


def test_reject_store_bound_answers_resource_exhausted(
    tmp_path: Path, catalogue: Catalogue
) -> None:
    """A full reject store refuses new rejects as retryable resource_exhausted: not stored,
    not counted, the file offset not advanced; replacing a stored reject still works."""
    shards = MemoryShards(catalogue)
    with open_partition(tmp_path / "p", catalogue, rejects_max=2) as part:
        records = [voice(f"msc01:{i}", "4915199999999") for i in range(3)]
        progress = SourceProgress(source_id="f.csv", offset=3)
        results = part.submit(Submit(items=records, at_s=AT, source=progress), shards.charge)
        assert [r.status.value for r in results] == ["rejected", "rejected", "resource_exhausted"]
        assert results[2].retryable and results[2].reason == "reject_store_full"
        assert part.counters().as_dict() == {
            "received": 2,
            "rated": 0,
            "rejected": 2,
            "duplicates": 0,
        }
        assert part.file_offset("f.csv") == 0 and len(part.rejects) == 2
        [replaced] = part.submit(Submit(items=records[:1], at_s=AT + 1), shards.charge)
        assert replaced.status is RecordStatus.REJECTED and len(part.rejects) == 2


def test_failing_shard_leaves_its_records_retryable_and_uncounted(
    tmp_path: Path, catalogue: Catalogue
) -> None:
    """If charge raises for one shard, only that shard's records are unavailable and
    uncounted; the retry charges them exactly once and the others come back duplicate."""
    shards = MemoryShards(catalogue)
    with open_partition(tmp_path / "p", catalogue) as part:
        accounts = [f"acct-{i:04d}" for i in range(1, 9)]
        for i, account_id in enumerate(accounts):
            subscribe(part, shards, f"49151000000{i:02d}", account_id)
        records = [voice(f"msc01:{i}", f"49151000000{i:02d}") for i in range(len(accounts))]
        dead = shard_of(accounts[0], SHARDS)
        shards.down.add(dead)
        progress = SourceProgress(source_id="f.csv", offset=8)
        first = part.submit(Submit(items=records, at_s=AT, source=progress), shards.charge)
        on_dead = [
            r.record_id
            for r, a in zip(records, accounts, strict=True)
            if shard_of(a, SHARDS) == dead
        ]
        assert [r.record_id for r in first if r.status is RecordStatus.UNAVAILABLE] == on_dead
        assert all(r.status is RecordStatus.CHARGED for r in first if r.record_id not in on_dead)
        assert part.counters().received == len(records) - len(on_dead)
        assert part.file_offset("f.csv") == 0
        shards.down.clear()
        retry = part.submit(Submit(items=records, at_s=AT, source=progress), shards.charge)
        assert all(r.status is RecordStatus.CHARGED for r in retry)
        assert all(r.replay is (r.record_id not in on_dead) for r in retry)
        assert shards.charged_ids() == {r.record_id for r in records}
        counts = part.counters()
        assert counts.rated == len(records) and counts.duplicates == len(records) - len(on_dead)
        assert counts.is_balanced() and part.file_offset("f.csv") == 8


def test_directory_writes_are_idempotent_and_plan_changes_apply_by_time(
    tmp_path: Path, catalogue: Catalogue
) -> None:
    """A repeated request replays, a reused id with other content names the field, and a
    plan change rates records by the plan active at their start."""
    with open_partition(tmp_path / "p", catalogue, partitions=1) as part:
        subs = [Subscription(plan_id="smart", start_s=0)]
        assert (
            part.put_subscriber(
                PutSubscriber(
                    request_id="r1", msisdn="4915100000001", account_id="acct-1", subscriptions=subs
                )
            ).result
            is Result.CREATED
        )
        again = part.put_subscriber(
            PutSubscriber(
                request_id="r1", msisdn="4915100000001", account_id="acct-1", subscriptions=subs
            )
        )
        assert again.result is Result.DUPLICATE and again.entry is not None
        other = part.put_subscriber(
            PutSubscriber(
                request_id="r1", msisdn="4915100000001", account_id="acct-2", subscriptions=subs
            )
        )
        assert other.result is Result.EXISTS_WITH_DIFFERENT_ACCOUNT and other.field == "account"
        moved = part.put_subscriber(
            PutSubscriber(
                request_id="r1", msisdn="4915100000009", account_id="acct-1", subscriptions=subs
            )
        )
        assert moved.field == "msisdn"
        changed = part.change_plan(
            ChangeSubscriberPlan(
                request_id="r2", msisdn="4915100000001", plan_id="business", start_s=T_NOV
            )
        )
        assert changed.result is Result.UPDATED and changed.entry is not None
        assert changed.entry.plan_at(T_NOV - 1) == "smart"
        assert changed.entry.plan_at(T_NOV) == "business"
        assert (
            part.change_plan(
                ChangeSubscriberPlan(
                    request_id="r2", msisdn="4915100000001", plan_id="business", start_s=T_NOV
                )
            ).result
            is Result.DUPLICATE
        )
        assert (
            part.change_plan(
                ChangeSubscriberPlan(
                    request_id="r3", msisdn="4915100000001", plan_id="smart", start_s=5
                )
            ).result
            is Result.INVALID_ARGUMENT
        )
        assert (
            part.change_plan(
                ChangeSubscriberPlan(
                    request_id="r4", msisdn="4915100000077", plan_id="smart", start_s=5
                )
            ).result
            is Result.UNKNOWN_ACCOUNT
        )
    with open_partition(tmp_path / "q", catalogue, partitions=2) as part:
        foreign = next(
            m for m in (f"49151{i:08d}" for i in range(10)) if partition_of(m, 2) != "part-0"
        )
        answer = part.put_subscriber(
            PutSubscriber(request_id="r9", msisdn=foreign, account_id="acct-1", subscriptions=subs)
        )
        assert answer.result is Result.INVALID_ARGUMENT and "belongs to" in answer.detail


def test_an_account_plan_change_leaves_a_number_that_moved_alone(
    tmp_path: Path, catalogue: Catalogue
) -> None:
    """A plan change for an account changes only the entries of its numbers: a number since
    given to another account is answered UNKNOWN_ACCOUNT with that entry, unchanged."""
    with open_partition(tmp_path / "p", catalogue, partitions=1) as part:
        subs = [Subscription(plan_id="smart", start_s=0)]
        part.put_subscriber(
            PutSubscriber(
                request_id="c1", msisdn="4915100000001", account_id="acct-1", subscriptions=subs
            )
        )
        moved_to = part.directory.move_number(
            "c2", "4915100000001", "acct-1", "acct-2", subs, (), T_NOV - 86_400, False
        )
        assert moved_to.result is Result.UPDATED  # the number moved
        moved = part.change_plan(
            ChangeSubscriberPlan(
                request_id="p1",
                msisdn="4915100000001",
                plan_id="business",
                start_s=T_NOV,
                account_id="acct-1",
            )
        )
        assert moved.result is Result.UNKNOWN_ACCOUNT and moved.entry is not None
        assert "acct-2" in moved.detail and moved.entry.plan_at(T_NOV) == "smart"
        ours = part.change_plan(
            ChangeSubscriberPlan(
                request_id="p2",
                msisdn="4915100000001",
                plan_id="business",
                start_s=T_NOV,
                account_id="acct-2",
            )
        )
        assert ours.result is Result.UPDATED
        assert part.change_plan(
            ChangeSubscriberPlan(
                request_id="p2",
                msisdn="4915100000001",
                plan_id="business",
                start_s=T_NOV,
                account_id="acct-1",
            )
        ).field == ("account")


def load_subscribers(part: RatingPartition, shards: MemoryShards) -> None:
    subscribers = tomllib.loads((SAMPLES / "subscribers.toml").read_text())["subscriber"]
    for sub in subscribers:
        business = sub["plan_id"] == "business"
        mode = PaymentMode.POSTPAID if business else PaymentMode.PREPAID
        if sub["account_id"] not in shards.states.get(shard_of(sub["account_id"], SHARDS), {}):
            shards.create(sub["account_id"], mode, prepaid=0 if business else 20 * EUR)
        subscription = [Subscription(plan_id=sub["plan_id"], start_s=0)]
        part.put_subscriber(
            PutSubscriber(
                request_id="crm:" + sub["msisdn"],
                msisdn=sub["msisdn"],
                account_id=sub["account_id"],
                subscriptions=subscription,
            )
        )
    shards.create("sponsor-streamflix", PaymentMode.POSTPAID)


def ingest(part: RatingPartition, path: Path, charge: Any, chunk_lines: int) -> None:
    """A file collector: resume after the committed offset, submit chunks of lines."""
    source_id = path.name
    offset = part.file_offset(source_id)
    chunk: list[UsageRecord | Reject] = []
    last = offset
    for item in read_records(path):
        line = item.line if isinstance(item, Reject) else item.source_line
        assert line is not None
        if line <= offset:
            continue
        chunk.append(item)
        last = line
        if len(chunk) == chunk_lines:
            results = part.submit(
                Submit(
                    items=chunk, at_s=AT, source=SourceProgress(source_id=source_id, offset=line)
                ),
                charge,
            )
            assert not any(r.retryable for r in results)
            chunk = []
    if chunk:
        part.submit(
            Submit(items=chunk, at_s=AT, source=SourceProgress(source_id=source_id, offset=last)),
            charge,
        )


def test_sample_files_reconcile_per_file(tmp_path: Path, catalogue: Catalogue) -> None:
    """The sample CDR files settle every data line once: the bad lines as malformed, the
    resend as a duplicate, the conflict rejected, zero-rated data charged to its sponsor."""
    shards = MemoryShards(catalogue)
    with open_partition(tmp_path / "p", catalogue) as part:
        load_subscribers(part, shards)
        for name in ("voice.csv", "sms.csv", "data.jsonl", "content.jsonl"):
            ingest(part, SAMPLES / name, shards.charge, chunk_lines=50)
        voice_counts = part.counters("voice.csv")
        assert voice_counts.as_dict() == {
            "received": 155,
            "rated": 150,
            "rejected": 4,
            "duplicates": 1,
        }
        data_counts = part.counters("data.jsonl")
        assert data_counts.received == 94 and data_counts.rejected == 4
        assert part.file_offset("voice.csv") == 156
        assert part.counters().received == 155 + 62 + 94 + 27 and part.counters().is_balanced()
        assert len(part.list_rejects(100, reason="malformed")) == 11
        assert len(part.list_rejects(100, reason="exists_with_different_content")) == 1
        assert shards.state("sponsor-streamflix").unbilled < 0


def test_offsets_resume_exactly_after_a_takeover_mid_chunk(
    tmp_path: Path, catalogue: Catalogue
) -> None:
    """A takeover between the shards' commit and the partition's loses no line and charges
    none twice: the next owner resumes at the committed offset and counts each line once."""
    shards = MemoryShards(catalogue)
    path = tmp_path / "p"
    part = open_partition(path, catalogue)
    load_subscribers(part, shards)
    calls = {"n": 0}

    def charge_then_lose_ownership(shard: str, items: list[tuple[str, RatedRecord]]) -> list[Any]:
        answers = shards.charge(shard, items)
        calls["n"] += 1
        if calls["n"] == 6:  # inside the second chunk: a new owner fences the store
            write_atomic(path / EPOCH_FILE, encode_u64(2))
        return answers

    with pytest.raises(StaleEpoch):
        ingest(part, SAMPLES / "voice.csv", charge_then_lose_ownership, chunk_lines=40)
    offset_before = 41
    with open_partition(path, catalogue, epoch=3) as part:
        assert part.file_offset("voice.csv") == offset_before
        ingest(part, SAMPLES / "voice.csv", shards.charge, chunk_lines=40)
        counts = part.counters("voice.csv")
        assert counts.received == 155 and counts.is_balanced() and counts.rejected == 4
        assert part.file_offset("voice.csv") == 156
    voice_ids = {
        r.record_id for r in read_records(SAMPLES / "voice.csv") if isinstance(r, UsageRecord)
    }
    assert voice_ids <= shards.charged_ids()


def test_shard_answers_map_to_statuses_and_refusals_are_stored(
    tmp_path: Path, catalogue: Catalogue
) -> None:
    """A resend with other content is a conflict naming the field; a shard refusal (a closed
    account) is rejected with the shard's reason and kept for reprocessing; reader rejects
    submitted alone are stored and counted under their file."""
    shards = MemoryShards(catalogue)
    with open_partition(tmp_path / "p", catalogue) as part:
        subscribe(part, shards, "4915100000001", "acct-0001")
        subscribe(part, shards, "4915100000002", "acct-0002")
        part.submit(Submit(items=[voice("msc01:1", "4915100000001")], at_s=AT), shards.charge)
        state = shards.state("acct-0002")
        state.account = replace(state.account, status=AccountStatus.CLOSED)
        results = part.submit(
            Submit(
                items=[
                    voice("msc01:1", "4915100000001", duration_s=999),
                    voice("msc01:2", "4915100000002"),
                ],
                at_s=AT,
            ),
            shards.charge,
        )
        assert statuses(results) == [
            ("exists_with_different_content", "duration_s"),  # the record id's claim says
            ("rejected", "account_closed"),
        ]
        [closed] = part.list_rejects(10, reason="account_closed")
        assert closed.kind is RejectKind.RECORD and closed.record == voice(
            "msc01:2", "4915100000002"
        )
        bad = reject_line(tmp_path)
        [stored] = part.submit(Submit(items=[bad], at_s=AT), _no_charge)
        assert stored.status is RecordStatus.REJECTED and stored.record_id == "msc09:1"
        assert part.counters(bad.source_file).as_dict() == {
            "received": 1,
            "rated": 0,
            "rejected": 1,
            "duplicates": 0,
        }
        assert part.counters().as_dict() == {
            "received": 4,
            "rated": 1,
            "rejected": 3,
            "duplicates": 0,
        }
