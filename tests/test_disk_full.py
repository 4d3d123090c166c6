"""A full disk under one shard: writes fail without being acknowledged, and the shard
comes back by itself once space is freed — nothing lost, nothing charged twice.

Real RocksDB on a real (small) tmpfs; needs root to mount it, skipped otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.host import RESUME_EVERY_S, StaleRoute
from actors.partition.engine import RecordStatus
from actors.partition.ops import Submit
from actors.routing import partition_of, shard_of
from actors.shard import ops
from billing.accounts import PaymentMode
from chaos.disk import TmpfsDisk, can_mount
from tests.test_host import AT, SHARDS, TwoHosts, _voice

pytestmark = pytest.mark.skipif(can_mount() is not None, reason=f"no tmpfs: {can_mount()}")


@pytest.fixture
def full_disk_hosts(tmp_path: Path) -> Iterator[tuple[TwoHosts, TmpfsDisk]]:
    with TmpfsDisk(tmp_path / "units" / "acct-00", size_mb=8) as disk:
        pair = TwoHosts(tmp_path)
        try:
            yield pair, disk
        finally:
            disk.free()
            pair.close()


def test_a_full_disk_refuses_writes_until_freed_then_the_shard_resumes(
    full_disk_hosts: tuple[TwoHosts, TmpfsDisk],
) -> None:
    """Written while full: refused (UNAVAILABLE, retry) — never acknowledged; freed: the
    host reopens the shard from disk and the retried records are charged exactly once."""
    hosts, disk = full_disk_hosts
    account = next(f"acc-{i}" for i in range(100) if shard_of(f"acc-{i}", SHARDS) == "acct-00")
    msisdn = "4915100000077"
    hosts.create(account, PaymentMode.POSTPAID, msisdn, "business")
    partition = partition_of(msisdn, 2)
    first = [_voice(f"msc:a{i}", msisdn, 61) for i in range(5)]
    assert {r.status for r in hosts.on(partition, Submit(items=first, at_s=AT))} == {
        RecordStatus.CHARGED
    }
    disk.fill()
    # Big enough not to fit in the slack of the WAL file's last page.
    second = [_voice(f"msc:b{i}", msisdn, 61) for i in range(60)]
    for _ in range(3):  # refused while full, however often it is tried
        answer = hosts.on(partition, Submit(items=second, at_s=AT))
        assert {(r.status, r.reason) for r in answer} == {
            (RecordStatus.UNAVAILABLE, "shard_unavailable")
        }
    with pytest.raises(StaleRoute):  # the shard itself, called directly
        hosts.on("acct-00", ops.GetAccount(account_id=account))
    node, epoch = hosts.routes["acct-00"]
    assert hosts.hosts[node].units()["acct-00"] == epoch  # still owned: not given up
    disk.free()
    time.sleep(RESUME_EVERY_S + 0.1)
    answer = hosts.on(partition, Submit(items=second, at_s=AT))
    # A failed batch may have reached the WAL before the disk filled: then its
    # records come back as replays of their stored result, charged once all the same.
    assert {r.status for r in answer} == {RecordStatus.CHARGED}
    again = hosts.on(partition, Submit(items=first + second, at_s=AT))
    assert {(r.status, r.replay) for r in again} == {(RecordStatus.CHARGED, True)}
    lines, _ = hosts.on("acct-00", ops.UsagePage(account_id=account, limit=100))
    assert sorted(line.record_id for line in lines) == sorted(r.record_id for r in first + second)
    report = hosts.on("acct-00", ops.Audit())
    assert report.ok, report.problems
