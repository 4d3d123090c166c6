"""Replicated units in one process: primaries ship every batch to followers on real RocksDB.

The hosts are real ``UnitHost`` objects, each in its own node folder, reaching each
other through ``actors.local.LocalPeers``; the test plays the coordinator
(tests/replication_support.py). The same code runs over Ray in
tests/test_replication_cluster.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from actors.host import NotReplicated, StaleRoute, UnitLost, UnitMissing
from actors.shard import ops
from actors.store.codec import encode_u64
from actors.store.fencing import EPOCH_FILE
from actors.store.replica import (
    ReplicaFenced,
    ReplicaGap,
    decode_writes,
    encode_writes,
)
from billing.accounts import Account, PaymentMode, Result
from billing.invariant import InvariantViolation
from tests.replication_support import ReplicatedHosts, rows

UNIT = "acct-00"
AT = 1_793_700_000


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ReplicatedHosts]:
    hosts = ReplicatedHosts(tmp_path)
    yield hosts
    hosts.close()


def _create(cluster: ReplicatedHosts, account_id: str) -> None:
    account = Account(account_id=account_id, currency="EUR", payment_mode=PaymentMode.PREPAID)
    answer = cluster.on(UNIT, ops.CreateAccount(request_id=f"c-{account_id}", account=account))
    assert answer.outcome.result in (Result.CREATED, Result.DUPLICATE), answer


def _top_up(cluster: ReplicatedHosts, account_id: str, n: int, micros: int = 1_000_000) -> None:
    cluster.on(
        UNIT,
        ops.TopUp(
            request_id=f"t-{account_id}-{n}", account_id=account_id, amount=micros,
            currency="EUR", at_s=AT,
        ),
    )  # fmt: skip


def _balance(cluster: ReplicatedHosts, account_id: str) -> int:
    state = cluster.on(UNIT, ops.GetAccount(account_id=account_id))
    assert state is not None
    return int(state.prepaid)


def _copy_path(cluster: ReplicatedHosts, node: str) -> Path:
    return cluster.data_dir / "nodes" / node / "units" / UNIT


def test_each_node_keeps_its_units_in_its_own_folder(cluster: ReplicatedHosts) -> None:
    """A replicated host's units live in DATA/nodes/<node>/units, and it refuses any path
    that leads out of its node folder."""
    host = cluster.hosts["n1"]
    assert host.unit_path(UNIT) == (cluster.data_dir / "nodes/n1/units" / UNIT).resolve()
    with pytest.raises(InvariantViolation, match="outside this node's folder"):
        host.unit_path("../../n2/units/acct-00")


def test_a_write_waits_for_an_in_sync_follower(cluster: ReplicatedHosts) -> None:
    """With min_in_sync 2 a primary alone acknowledges nothing; once its follower is in
    sync every batch is on both copies, key for key."""
    cluster.place(UNIT, "n1", 1)
    account = Account(account_id="a1", currency="EUR", payment_mode=PaymentMode.PREPAID)
    with pytest.raises(NotReplicated, match="below min_in_sync 2"):
        cluster.on(UNIT, ops.CreateAccount(request_id="c-a1", account=account))
    cluster.replicate(UNIT, ["n2"])
    _create(cluster, "a1")
    for n in range(20):
        _top_up(cluster, "a1", n)
    assert _balance(cluster, "a1") == 20_000_000
    report = cluster.report(UNIT)
    assert report["acknowledged"] == report["commits"]
    assert report["followers"]["n2"]["acked"] == report["commits"]
    cluster.close()
    primary, follower = rows(_copy_path(cluster, "n1")), rows(_copy_path(cluster, "n2"))
    assert primary == follower
    assert len(primary) > 20


def test_a_follower_added_later_catches_up_from_a_checkpoint(cluster: ReplicatedHosts) -> None:
    """A follower that joins after many batches gets the primary's checkpoint plus the
    batches since, and ends with the same rows."""
    cluster.place(UNIT, "n1", 1)
    cluster.replicate(UNIT, ["n2"])
    _create(cluster, "a1")
    for n in range(30):
        _top_up(cluster, "a1", n)
    with capture_logs() as logs:
        cluster.hosts["n1"].set_replicas(UNIT, 1, {"n2": "in_sync", "n3": "catching_up"})
        cluster.wait_caught_up(UNIT, "n3")
    assert any(e["event"] == "checkpoint_sent" and e["node"] == "n3" for e in logs)
    _top_up(cluster, "a1", 99)
    cluster.close()
    assert rows(_copy_path(cluster, "n1")) == rows(_copy_path(cluster, "n3"))


def test_a_follower_refuses_an_older_epoch_a_gap_and_takes_a_retry(
    cluster: ReplicatedHosts,
) -> None:
    """Batches apply in sequence at the attached epoch only: an older primary is fenced,
    a gap is refused naming where the copy stands, a resent batch is answered as applied."""
    cluster.place(UNIT, "n1", 1)
    cluster.replicate(UNIT, ["n2"])
    _create(cluster, "a1")
    follower = cluster.hosts["n2"]
    applied = follower.replica_copies()[UNIT].applied
    follower.replica_attach(UNIT, 5)  # a newer primary attached
    payload = encode_writes([(b"a/x", b"1"), (b"m/commits", encode_u64(applied + 1))])
    with pytest.raises(ReplicaFenced, match="epoch 1 refused, the copy is fenced at 5"):
        follower.replica_apply(UNIT, 1, applied + 1, payload)
    with pytest.raises(ReplicaGap, match=f"batch {applied + 2} refused.*applied {applied}"):
        follower.replica_apply(UNIT, 5, applied + 2, payload)
    assert follower.replica_apply(UNIT, 5, applied, payload) == applied
    assert decode_writes(payload)[0] == (b"a/x", b"1")


def test_the_old_primary_is_refused_after_its_follower_was_promoted(
    cluster: ReplicatedHosts,
) -> None:
    """The primary's node is cut off; its in-sync follower is promoted at a new epoch with
    every acknowledged batch. The old primary, still running, gets nothing acknowledged
    and stops serving the unit."""
    cluster.place(UNIT, "n1", 1)
    cluster.replicate(UNIT, ["n2"])
    _create(cluster, "a1")
    for n in range(5):
        _top_up(cluster, "a1", n)
    old = cluster.hosts["n1"]
    del cluster.reachable["n1"]  # n1 is declared dead (it still runs: a zombie)
    cluster.hosts["n2"].open_unit(UNIT, 3)  # fence (2) and promote (3)
    cluster.routes.map[UNIT] = ("n2", 3)
    cluster.reachable["n1"] = old  # it comes back and tries to write
    with pytest.raises(NotReplicated, match="fenced"):
        old.run(
            UNIT, 1, ops.TopUp(request_id="zombie", account_id="a1", amount=7, currency="EUR",
            at_s=AT),
        )  # fmt: skip
    assert UNIT not in old.units()
    with pytest.raises(StaleRoute):
        old.run(UNIT, 1, ops.GetAccount(account_id="a1"))
    cluster.replicate(UNIT, ["n3"])
    assert _balance(cluster, "a1") == 5_000_000


def test_a_dead_follower_stalls_writes_until_a_new_one_is_in_sync(
    cluster: ReplicatedHosts,
) -> None:
    """A batch its in-sync follower did not acknowledge is not acknowledged; once the
    coordinator dropped that follower and a new one caught up (checkpoint: the batch is
    in it), the retry is answered from the stored result."""
    cluster.place(UNIT, "n1", 1)
    cluster.replicate(UNIT, ["n2"])
    _create(cluster, "a1")
    del cluster.reachable["n2"]
    topup = ops.TopUp(request_id="t-x", account_id="a1", amount=5, currency="EUR", at_s=AT)
    with pytest.raises(NotReplicated, match="n2"):
        cluster.on(UNIT, topup)
    with pytest.raises(NotReplicated):  # the replay waits too: it would answer from it
        cluster.on(UNIT, topup)
    cluster.hosts["n1"].set_replicas(UNIT, 1, {})  # shrink_isr + replica_drop, persisted
    with pytest.raises(NotReplicated, match="below min_in_sync"):
        cluster.on(UNIT, topup)
    cluster.replicate(UNIT, ["n3"])
    answer = cluster.on(UNIT, topup)
    assert answer.outcome.result is Result.DUPLICATE
    cluster.close()
    assert rows(_copy_path(cluster, "n1")) == rows(_copy_path(cluster, "n3"))


def test_a_diverged_copy_is_replaced_not_extended(cluster: ReplicatedHosts) -> None:
    """A copy holding a batch its new primary never had (the old primary's last,
    unacknowledged one) fails the prefix check and is replaced by a checkpoint."""
    cluster.place(UNIT, "n1", 1)
    cluster.replicate(UNIT, ["n2"])
    _create(cluster, "a1")
    # n1's copy gets a batch that never reached n2: n2 is unreachable for it.
    del cluster.reachable["n2"]
    with pytest.raises(NotReplicated):
        _top_up(cluster, "a1", 1)
    old = cluster.hosts["n1"]
    old.close_all()
    del cluster.reachable["n1"]
    cluster.reachable["n2"] = cluster.hosts["n2"]
    cluster.place(UNIT, "n2", 3)
    cluster.reachable["n1"] = cluster.hosts["n1"] = cluster.add("n1")
    with capture_logs() as logs:
        cluster.replicate(UNIT, ["n1"])
    assert any(e["event"] == "checkpoint_sent" and e["node"] == "n1" for e in logs), logs
    _top_up(cluster, "a1", 2)
    assert _balance(cluster, "a1") == 1_000_000
    cluster.close()
    assert rows(_copy_path(cluster, "n2")) == rows(_copy_path(cluster, "n1"))


def test_a_prefix_copy_catches_up_from_the_kept_batches(cluster: ReplicatedHosts) -> None:
    """A copy that missed a few batches but holds a prefix of the primary's history gets
    only what it lacks, not a checkpoint."""
    cluster.place(UNIT, "n1", 1)
    cluster.replicate(UNIT, ["n2", "n3"])
    _create(cluster, "a1")
    del cluster.reachable["n3"]
    primary = cluster.hosts["n1"]
    topup = ops.TopUp(request_id="t-1", account_id="a1", amount=5, currency="EUR", at_s=AT)
    with pytest.raises(NotReplicated):
        cluster.on(UNIT, topup)
    primary.set_replicas(UNIT, 1, {"n2": "in_sync"})  # shrink_isr(n3), replica_drop(n3)
    cluster.on(UNIT, topup)
    cluster.reachable["n3"] = cluster.hosts["n3"]
    with capture_logs() as logs:
        cluster.replicate(UNIT, ["n2", "n3"])
    assert not any(e["event"] == "checkpoint_sent" for e in logs), logs
    assert any(e["event"] == "catch_up" and e["prefix"] for e in logs), logs
    cluster.close()
    assert rows(_copy_path(cluster, "n1")) == rows(_copy_path(cluster, "n3"))


def test_a_unit_assigned_before_is_never_opened_empty(cluster: ReplicatedHosts) -> None:
    """Opening a unit at an epoch above the first when its database is gone, or when the
    folder holds neither an EPOCH file nor a database that carries its epoch, is
    refused; every call then says the unit is lost. A restored backup (a database with
    its epoch inside, no EPOCH file beside it) opens."""
    from rocksdict import Options, Rdict

    cluster.place(UNIT, "n1", 1)
    cluster.hosts["n1"].close_unit(UNIT)
    with pytest.raises(UnitMissing, match="database is missing"):
        cluster.hosts["n2"].open_unit(UNIT, 3)
    assert not _copy_path(cluster, "n2").exists()
    with pytest.raises(UnitLost, match="unit acct-00 is lost"):
        cluster.hosts["n2"].run(UNIT, 3, ops.GetAccount(account_id="a1"))
    empty = _copy_path(cluster, "n3")
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    Rdict(str(empty), options=options).close()  # a database that was never a unit's
    with pytest.raises(UnitMissing, match="EPOCH file is missing"):
        cluster.hosts["n3"].open_unit(UNIT, 3)
    (_copy_path(cluster, "n1") / EPOCH_FILE).unlink()
    cluster.hosts["n1"].open_unit(UNIT, 3)  # as a restored backup: its epoch is inside
    assert (_copy_path(cluster, "n1") / EPOCH_FILE).exists()


def test_a_local_unit_assigned_before_is_never_opened_empty(tmp_path: Path) -> None:
    """The same rule in the one-node local mode: a takeover of a unit whose folder is
    gone refuses instead of creating it."""
    from actors.engines import engine_factory
    from actors.host import UnitHost
    from tests.replication_support import PARTITIONS, ROOT, SHARDS

    settings = {
        "shards": SHARDS,
        "partitions": PARTITIONS,
        "tariffs_dir": str(ROOT / "conf/tariffs"),
    }
    host = UnitHost(
        node="n0", data_dir=str(tmp_path), shards=SHARDS, factory=engine_factory(settings)
    )
    host.open_unit(UNIT, 1)
    host.close_unit(UNIT)
    (tmp_path / "units" / UNIT).rename(tmp_path / "moved")
    with pytest.raises(UnitMissing):
        host.open_unit(UNIT, 3)
    assert not (tmp_path / "units" / UNIT).exists()
    with pytest.raises(UnitLost):
        host.run(UNIT, 3, ops.GetAccount(account_id="a1"))
    (tmp_path / "moved").rename(tmp_path / "units" / UNIT)
    host.open_unit(UNIT, 3)
    assert host.run(UNIT, 3, ops.GetAccount(account_id="a1")) is None
    host.close_all()


def test_a_local_unit_never_created_opens_at_a_later_epoch(tmp_path: Path) -> None:
    """Local or shared, a unit failed over before any node opened it (no database, no
    created-marker) is created by its first open, whatever the epoch; once created, its
    missing folder is refused as before."""
    from actors.engines import engine_factory
    from actors.host import UnitHost
    from tests.replication_support import PARTITIONS, ROOT, SHARDS

    settings = {
        "shards": SHARDS,
        "partitions": PARTITIONS,
        "tariffs_dir": str(ROOT / "conf/tariffs"),
    }
    host = UnitHost(
        node="n0", data_dir=str(tmp_path), shards=SHARDS, factory=engine_factory(settings)
    )
    host.open_unit(UNIT, 2)  # assigned at 1 to a node that failed before opening it
    assert host.run(UNIT, 2, ops.GetAccount(account_id="a1")) is None
    host.close_unit(UNIT)
    (tmp_path / "units" / UNIT).rename(tmp_path / "moved")
    with pytest.raises(UnitMissing):
        host.open_unit(UNIT, 3)
    host.close_all()


def test_replication_keeps_up_with_concurrent_writers(cluster: ReplicatedHosts) -> None:
    """Threads writing one unit at once (its own calls and claims commit on separate
    locks) leave the follower equal to the primary."""
    import threading

    cluster.place(UNIT, "n1", 1)
    cluster.replicate(UNIT, ["n2"])
    for i in range(4):
        _create(cluster, f"a{i}")

    def write(i: int) -> None:
        for n in range(15):
            _top_up(cluster, f"a{i}", n)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(_balance(cluster, f"a{i}") == 15_000_000 for i in range(4))
    time.sleep(0.05)
    cluster.close()
    assert rows(_copy_path(cluster, "n1")) == rows(_copy_path(cluster, "n2"))
