"""Online backups of units (RocksDB checkpoints) taken by real hosts over real RocksDB, and
restored: the checkpoint opens as a database and as a unit, holding what was committed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_host import AT, PARTITIONS, ROOT, SHARDS, TwoHosts, _voice

from actors.engines import engine_factory
from actors.host import UnitHost
from actors.partition.engine import RecordStatus
from actors.partition.ops import Submit
from actors.routing import partition_of, shard_of
from actors.shard import ops
from actors.shard.keys import account_key
from actors.store.backup import BackupExists, checkpoint_epoch, open_checkpoint, read_backup
from billing.accounts import PaymentMode

MSISDN = "4915100000042"
FACTORY = engine_factory(
    {"shards": SHARDS, "partitions": PARTITIONS, "tariffs_dir": str(ROOT / "conf" / "tariffs")}
)


@pytest.fixture
def hosts(tmp_path: Path) -> TwoHosts:
    pair = TwoHosts(tmp_path / "data")
    yield pair  # type: ignore[misc]
    pair.close()


def _backup_all(hosts: TwoHosts, folder: str, request_id: str) -> dict[str, int]:
    """Back up every unit on its host into ``folder`` of the backup root; the epochs they
    were taken at, by unit."""
    epochs = {}
    for unit, (node, epoch) in hosts.routes.items():
        info = hosts.hosts[node].backup_unit(unit, epoch, folder, request_id)
        assert info.unit_id == unit and info.epoch == epoch
        epochs[unit] = epoch
    return epochs


def test_a_backup_holds_every_unit_as_committed_when_it_was_taken(
    hosts: TwoHosts, tmp_path: Path
) -> None:
    """Each unit's checkpoint opens as a database holding what was committed before the
    backup and nothing committed after it; restored, the shard answers the same balance."""
    hosts.create("acc-b", PaymentMode.POSTPAID, MSISDN, "business")
    partition = partition_of(MSISDN, PARTITIONS)
    before = [_voice(f"msc:b{i}", MSISDN, 61) for i in range(5)]
    assert {r.status for r in hosts.on(partition, Submit(items=before, at_s=AT))} == {
        RecordStatus.CHARGED
    }
    shard = shard_of("acc-b", SHARDS)
    at_backup = hosts.on(shard, ops.GetAccount(account_id="acc-b"))
    root = tmp_path / "data" / "backups" / "backup"  # below the hosts' default root
    epochs = _backup_all(hosts, "backup", "b1")
    after = [_voice(f"msc:a{i}", MSISDN, 61) for i in range(3)]
    hosts.on(partition, Submit(items=after, at_s=AT))
    lines, _ = hosts.on(shard, ops.UsagePage(account_id="acc-b"))
    assert len(lines) == len(before) + len(after)

    assert set(read_backup(root)) == set(hosts.routes)
    for unit, epoch in epochs.items():
        db = open_checkpoint(root / "units" / unit)
        try:
            assert checkpoint_epoch(db) == epoch
            if unit == shard:
                assert db.get(account_key("acc-b")) is not None
        finally:
            db.close()

    # Restore the shard into a fresh data dir and open it as a new owner would: above
    # the epoch the checkpoint records.
    restored = tmp_path / "restored" / "units" / shard
    shutil.copytree(root / "units" / shard, restored)
    host = UnitHost(node="r", data_dir=str(restored.parent.parent), shards=SHARDS, factory=FACTORY)
    try:
        host.open_unit(shard, epochs[shard] + 1)
        state = host.read(shard, epochs[shard] + 1, ops.GetAccount(account_id="acc-b"))
        assert state.usage == at_backup.usage != {}
        assert state.bundle_used == at_backup.bundle_used
        usage, _ = host.read(shard, epochs[shard] + 1, ops.UsagePage(account_id="acc-b"))
        assert sorted(line.record_id for line in usage) == sorted(r.record_id for r in before)
    finally:
        host.close_all()


def test_a_backup_is_idempotent_by_request_and_never_overwritten(
    hosts: TwoHosts, tmp_path: Path
) -> None:
    """Retrying a backup request answers the checkpoint already taken; another request
    into the same folder is refused."""
    unit = shard_of("acc-i", SHARDS)
    hosts.create("acc-i", PaymentMode.PREPAID, None, "smart")
    node, epoch = hosts.routes[unit]
    host = hosts.hosts[node]
    first = host.backup_unit(unit, epoch, "bk", "r1")
    assert host.backup_unit(unit, epoch, "bk", "r1") == first
    with pytest.raises(BackupExists):
        host.backup_unit(unit, epoch, "bk", "r2")
    named = host.backup_unit(unit, epoch, "nightly", "r3")
    assert Path(named.path) == tmp_path / "data" / "backups" / "nightly" / "units" / unit
