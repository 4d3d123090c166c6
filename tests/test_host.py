"""UnitHosts serving real engines on real RocksDB, wired to each other without Ray.

The hosts reach each other through the real router (``actors.router``) over the
in-process transport (``actors.local``), as the Ray transport does through actor
calls; tests/test_cluster_*.py run the same hosts as real Ray actors.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from actors.duties import DutyRunner
from actors.engines import engine_factory
from actors.host import StaleRoute, UnitHost
from actors.local import LocalTransport
from actors.op import Op
from actors.partition.engine import RecordStatus
from actors.partition.ops import PutSubscriber, Submit
from actors.router import UnitRouter
from actors.routing import partition_of, partition_of_record, shard_of
from actors.shard import ops
from billing.accounts import Account, PaymentMode, Result, Subscription
from billing.records import Service, UsageRecord

ROOT = Path(__file__).resolve().parent.parent
T_NOV = 1_793_700_000
AT = T_NOV + 86_400
SHARDS, PARTITIONS = 4, 2


class _Map:
    """The coordinator as the routers see it: the map of who serves what."""

    def __init__(self, routes: dict[str, tuple[str, int]]) -> None:
        self._routes = routes

    def routes(self) -> dict[str, tuple[str, int]]:
        return dict(self._routes)


class TwoHosts:
    """Shards and partitions spread over two hosts; each routes to the other."""

    def __init__(self, tmp_path: Path) -> None:
        settings = {
            "shards": SHARDS,
            "partitions": PARTITIONS,
            "tariffs_dir": str(ROOT / "conf" / "tariffs"),
        }
        factory = engine_factory(settings)
        self.routes: dict[str, tuple[str, int]] = {}
        self.hosts: dict[str, UnitHost] = {}
        transport = LocalTransport(self.hosts, coordinator=_Map(self.routes))
        for name in ("n1", "n2"):
            router = UnitRouter(transport, shards=SHARDS, partitions=PARTITIONS)
            self.hosts[name] = UnitHost(
                node=name, data_dir=str(tmp_path), shards=SHARDS, factory=factory, router=router
            )
        units = [f"acct-{i:02d}" for i in range(SHARDS)] + [f"part-{i}" for i in range(PARTITIONS)]
        for index, unit in enumerate(units):
            self.place(unit, "n1" if index % 2 == 0 else "n2", epoch=1)

    def place(self, unit: str, node: str, *, epoch: int) -> None:
        old = self.routes.get(unit)
        if old is not None:
            self.hosts[old[0]].close_unit(unit)
        self.hosts[node].open_unit(unit, epoch)
        self.routes[unit] = (node, epoch)

    def on(self, unit: str, op: Op[Any]) -> Any:
        node, epoch = self.routes[unit]
        return self.hosts[node].run(unit, epoch, op)

    def create(self, account_id: str, mode: PaymentMode, msisdn: str | None, plan: str) -> None:
        account = Account(account_id=account_id, currency="EUR", payment_mode=mode)
        op = ops.CreateAccount(request_id="c-" + account_id, account=account)
        assert self.on(shard_of(account_id, SHARDS), op).result is Result.CREATED
        if msisdn is not None:
            subs = [Subscription(plan_id=plan, start_s=0)]
            partition = partition_of(msisdn, PARTITIONS)
            self.on(
                partition,
                PutSubscriber(
                    request_id="d-" + msisdn, msisdn=msisdn, account_id=account_id,
                    subscriptions=subs,
                ),
            )  # fmt: skip

    def close(self) -> None:
        for host in self.hosts.values():
            host.close_all()


@pytest.fixture
def hosts(tmp_path: Path) -> Any:
    pair = TwoHosts(tmp_path)
    yield pair
    pair.close()


def _voice(record_id: str, msisdn: str, seconds: int) -> UsageRecord:
    return UsageRecord(
        record_id=record_id, service=Service.VOICE, served_msisdn=msisdn,
        record_opening_time_s=T_NOV, called_number="4930123456", duration_s=seconds,
    )  # fmt: skip


def test_usage_submitted_on_one_host_is_charged_on_shards_of_both(hosts: TwoHosts) -> None:
    """A partition charges shards on its own host and on the other, exactly once."""
    msisdns = [f"49151000000{i:02d}" for i in range(1, 9)]
    for i, msisdn in enumerate(msisdns):
        hosts.create(f"acc-{i}", PaymentMode.POSTPAID, msisdn, "business")
    assert len({hosts.routes[shard_of(f"acc-{i}", SHARDS)][0] for i in range(8)}) == 2
    by_partition: dict[str, list[UsageRecord]] = {}
    for i, msisdn in enumerate(msisdns):
        by_partition.setdefault(partition_of(msisdn, PARTITIONS), []).append(
            _voice(f"msc:{i}", msisdn, 61)
        )
    for partition, records in by_partition.items():
        results = hosts.on(partition, Submit(items=records, at_s=AT))
        assert {r.status for r in results} == {RecordStatus.CHARGED}
        again = hosts.on(partition, Submit(items=records, at_s=AT))
        assert {(r.status, r.replay) for r in again} == {(RecordStatus.CHARGED, True)}


def test_a_call_at_an_old_epoch_is_a_stale_route(hosts: TwoHosts) -> None:
    """After a unit moves to another host at a higher epoch, the old route is refused."""
    hosts.create("acc-x", PaymentMode.PREPAID, None, "smart")
    unit = shard_of("acc-x", SHARDS)
    old_node, old_epoch = hosts.routes[unit]
    new_node = "n2" if old_node == "n1" else "n1"
    hosts.place(unit, new_node, epoch=old_epoch + 1)
    with pytest.raises(StaleRoute):
        hosts.hosts[old_node].run(unit, old_epoch, ops.GetAccount(account_id="acc-x"))
    with pytest.raises(StaleRoute):
        hosts.hosts[new_node].run(unit, old_epoch, ops.GetAccount(account_id="acc-x"))
    assert hosts.on(unit, ops.GetAccount(account_id="acc-x")) is not None


def test_a_sponsor_on_another_host_is_charged_once_through_the_outbox(hosts: TwoHosts) -> None:
    """Zero-rated data costs the subscriber nothing and bills the sponsor's shard elsewhere,
    once, even when the same records are submitted again."""
    sponsor_node = hosts.routes[shard_of("sponsor-streamflix", SHARDS)][0]
    hosts.create("sponsor-streamflix", PaymentMode.POSTPAID, None, "business")
    subscriber = next(
        f"sub-{i}"
        for i in range(100)
        if hosts.routes[shard_of(f"sub-{i}", SHARDS)][0] != sponsor_node
    )
    msisdn = "4915100000077"
    hosts.create(subscriber, PaymentMode.PREPAID, msisdn, "smart")
    data = UsageRecord(
        record_id="pgw:1", service=Service.DATA, served_msisdn=msisdn,
        record_opening_time_s=T_NOV, downlink_bytes=3 * 1_048_576, rating_group=20,
    )  # fmt: skip
    partition = partition_of(msisdn, PARTITIONS)
    for _ in range(2):
        [result] = hosts.on(partition, Submit(items=[data], at_s=AT))
        assert result.charged_account_id == "sponsor-streamflix"
    sponsor_shard = shard_of("sponsor-streamflix", SHARDS)
    sponsor = hosts.on(sponsor_shard, ops.GetAccount(account_id="sponsor-streamflix"))
    # D_SPONSOR_WHOLESALE: 0.002 per MiB in 1 MiB steps; 3 MiB -> 0.006 EUR, owed once.
    assert sponsor.unbilled == -6_000
    assert hosts.on(shard_of(subscriber, SHARDS), ops.PendingForwards()) == []


def test_a_store_taken_over_under_the_host_becomes_a_stale_route(hosts: TwoHosts) -> None:
    """When a newer owner has raised a unit's epoch, the old host's next write is refused
    as StaleRoute and the host stops serving the unit, so callers follow the new route."""
    from actors.store.codec import encode_u64
    from actors.store.fencing import EPOCH_FILE, write_atomic

    hosts.create("acc-t", PaymentMode.PREPAID, None, "smart")
    unit = shard_of("acc-t", SHARDS)
    node, epoch = hosts.routes[unit]
    host = hosts.hosts[node]
    write_atomic(host._data_dir / "units" / unit / EPOCH_FILE, encode_u64(epoch + 1))
    with pytest.raises(StaleRoute):
        host.run(
            unit, epoch, ops.TopUp(request_id="t-1", account_id="acc-t", amount=1_000_000,
            currency="EUR", at_s=AT),
        )  # fmt: skip
    assert unit not in host.units()


def test_a_query_does_not_wait_for_a_write_in_flight(hosts: TwoHosts) -> None:
    """Balance, usage and invoice queries are answered while the unit's lock is held by a
    write; any other method still waits for it."""
    hosts.create("acc-q", PaymentMode.PREPAID, "4915100000077", "smart")
    unit = shard_of("acc-q", SHARDS)
    node, epoch = hosts.routes[unit]
    host = hosts.hosts[node]
    lock = host._units[unit].lock
    with lock:  # a write batch in flight on the unit
        state = host.read(unit, epoch, ops.GetAccount(account_id="acc-q"))
        assert state is not None and state.account.account_id == "acc-q"
        assert host.read(unit, epoch, ops.UsagePage(account_id="acc-q")) == ([], 0)
        assert host.read(unit, epoch, ops.ListInvoices(account_id="acc-q")) == []
        assert not lock.acquire(timeout=0)  # still held: the queries did not need it
    with pytest.raises(StaleRoute):
        host.read(unit, epoch + 1, ops.GetAccount(account_id="acc-q"))


def test_a_query_sees_committed_state_only(tmp_path: Path) -> None:
    """What a write call has staged but not committed is invisible to a query; after the
    commit the query sees all of it."""
    from actors.shard.work import Work

    factory = engine_factory(
        {"shards": 1, "partitions": 1, "tariffs_dir": str(ROOT / "conf" / "tariffs")}
    )
    shard: Any = factory("acct-00", tmp_path / "acct-00", 1)
    try:
        account = Account(account_id="acc-c", currency="EUR", payment_mode=PaymentMode.PREPAID)
        shard.run(ops.CreateAccount(request_id="c", account=account))
        work = Work(shard.core)
        state = work.state("acc-c")
        assert state is not None
        new = state.copy()
        new.prepaid += 5_000_000
        work.set_state(new)
        assert shard.run(ops.GetAccount(account_id="acc-c")).prepaid == 0  # staged only
        work.commit()
        assert shard.run(ops.GetAccount(account_id="acc-c")).prepaid == 5_000_000
    finally:
        shard.close()


def test_closing_a_unit_waits_for_its_queries(hosts: TwoHosts) -> None:
    """A unit is closed only after the queries reading it have ended; later ones are refused."""
    import threading

    hosts.create("acc-w", PaymentMode.PREPAID, None, "smart")
    unit = shard_of("acc-w", SHARDS)
    node, epoch = hosts.routes[unit]
    host = hosts.hosts[node]
    gate = host._units[unit].gate
    assert gate.enter()  # a query in flight
    closed = threading.Event()
    closer = threading.Thread(target=lambda: (host.close_unit(unit), closed.set()))
    closer.start()
    assert not closed.wait(0.2)
    gate.leave()
    assert closed.wait(5)
    closer.join()
    with pytest.raises(StaleRoute):
        host.read(unit, epoch, ops.GetAccount(account_id="acc-w"))


def test_a_sponsor_charge_left_in_the_outbox_is_delivered_by_the_next_duty_round(
    hosts: TwoHosts,
) -> None:
    """When the sponsor's shard cannot be reached at charging time, the sponsor's half
    stays in the subscriber shard's outbox; the owner's duty round delivers it, once."""
    hosts.create("sponsor-streamflix", PaymentMode.POSTPAID, None, "business")
    sponsor_shard = shard_of("sponsor-streamflix", SHARDS)
    sponsor_node = hosts.routes[sponsor_shard][0]
    # A subscriber whose number's partition and account shard share a host, not the sponsor's.
    subscriber = next(
        f"sub-{i}"
        for i in range(100)
        if hosts.routes[shard_of(f"sub-{i}", SHARDS)][0] != sponsor_node
    )
    msisdn = next(
        f"49151000001{i:02d}"
        for i in range(100)
        if hosts.routes[partition_of(f"49151000001{i:02d}", PARTITIONS)][0] != sponsor_node
    )
    hosts.create(subscriber, PaymentMode.PREPAID, msisdn, "smart")
    subscriber_shard = shard_of(subscriber, SHARDS)
    host = hosts.hosts[hosts.routes[subscriber_shard][0]]
    record_id = next(  # its id's claim is kept by a partition on the same host too
        f"pgw:{i}"
        for i in range(100)
        if hosts.routes[partition_of_record(f"pgw:{i}", PARTITIONS)][0] != sponsor_node
    )
    data = UsageRecord(
        record_id=record_id, service=Service.DATA, served_msisdn=msisdn,
        record_opening_time_s=T_NOV, downlink_bytes=3 * 1_048_576, rating_group=20,
    )  # fmt: skip
    router, host._router = host._router, None  # the sponsor's host cannot be reached
    try:
        [result] = hosts.on(partition_of(msisdn, PARTITIONS), Submit(items=[data], at_s=AT))
    finally:
        host._router = router
    assert result.charged_account_id == "sponsor-streamflix", result
    assert len(hosts.on(subscriber_shard, ops.PendingForwards())) == 1
    sponsor = hosts.on(sponsor_shard, ops.GetAccount(account_id="sponsor-streamflix"))
    assert sponsor.unbilled == 0
    runner = DutyRunner(host, clock=lambda: float(AT))
    assert runner.run_round().redelivered == {subscriber_shard: 1}
    assert runner.run_round().redelivered == {}  # nothing left, nothing charged again
    sponsor = hosts.on(sponsor_shard, ops.GetAccount(account_id="sponsor-streamflix"))
    assert sponsor.unbilled == -6_000  # 3 MiB at 0.002 per MiB, once
    assert hosts.on(subscriber_shard, ops.PendingForwards()) == []


def _two_units_of(hosts: TwoHosts, node: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """Two account ids on two different shards that ``node`` serves: (account, unit) each."""
    found: dict[str, str] = {}
    for i in range(100):
        account_id = f"acc-m{i}"
        unit = shard_of(account_id, SHARDS)
        if hosts.routes[unit][0] == node and unit not in found.values():
            found[account_id] = unit
        if len(found) == 2:
            break
    (a, unit_a), (b, unit_b) = found.items()
    return (a, unit_a), (b, unit_b)


def _top_up(account_id: str, n: int) -> ops.TopUp:
    return ops.TopUp(
        request_id=f"t-{account_id}-{n}", account_id=account_id, amount=1_000_000 * n,
        currency="EUR", at_s=AT,
    )  # fmt: skip


def test_a_batch_answers_each_call_in_unit_order_and_each_failure_alone(
    hosts: TwoHosts,
) -> None:
    """``run_many`` runs a unit's calls in their order and answers a stale call its own
    StaleRoute while the other calls of the batch are applied."""
    (a, unit_a), (b, unit_b) = _two_units_of(hosts, "n1")
    epoch_a, epoch_b = hosts.routes[unit_a][1], hosts.routes[unit_b][1]
    hosts.create(b, PaymentMode.PREPAID, None, "smart")
    account = Account(account_id=a, currency="EUR", payment_mode=PaymentMode.PREPAID)
    answers = hosts.hosts["n1"].run_many([
        (unit_a, epoch_a, ops.CreateAccount(request_id="c-" + a, account=account)),
        (unit_b, epoch_b + 1, _top_up(b, 1)),  # an epoch the unit does not have: stale
        (unit_a, epoch_a, _top_up(a, 2)),  # after the create of the same unit
        (unit_b, epoch_b, _top_up(b, 3)),
    ])  # fmt: skip
    assert answers[0].result is Result.CREATED
    assert isinstance(answers[1], StaleRoute)
    assert answers[2].result is Result.TOPPED_UP
    assert answers[3].result is Result.TOPPED_UP
    state_a = hosts.on(unit_a, ops.GetAccount(account_id=a))
    state_b = hosts.on(unit_b, ops.GetAccount(account_id=b))
    assert (state_a.prepaid, state_b.prepaid) == (2_000_000, 3_000_000)


def test_a_unit_busy_with_another_call_does_not_hold_the_rest_of_a_batch(
    hosts: TwoHosts,
) -> None:
    """While another call holds one unit's lock, the batch's calls on its other units are
    applied; the busy unit's call runs once the lock is free."""
    (a, unit_a), (b, unit_b) = _two_units_of(hosts, "n1")
    hosts.create(a, PaymentMode.PREPAID, None, "smart")
    hosts.create(b, PaymentMode.PREPAID, None, "smart")
    host = hosts.hosts["n1"]
    calls = [(unit_a, hosts.routes[unit_a][1], _top_up(a, 1)),
             (unit_b, hosts.routes[unit_b][1], _top_up(b, 2))]  # fmt: skip
    lock = host._units[unit_a].lock
    with ThreadPoolExecutor(1) as pool:
        with lock:  # a long call (a bill run) on the batch's first unit
            batch = pool.submit(host.run_many, calls)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                state_b = host.read(unit_b, calls[1][1], ops.GetAccount(account_id=b))
                if state_b is not None and state_b.prepaid == 2_000_000:
                    break
                time.sleep(0.01)
            assert state_b is not None and state_b.prepaid == 2_000_000, "held behind the lock"
            assert not batch.done()
        answers = batch.result(timeout=20)
    assert [answer.result for answer in answers] == [Result.TOPPED_UP, Result.TOPPED_UP]
