"""``AdminService.RestoreUnits`` (``petribill restore``) on a replicated cluster in one
process, on real RocksDB: a lost unit comes back from a backup at a new epoch, in the
node folder of the host that staged it, and is replicated again; what is not a lost
unit in a backup below the backup root is refused before anything moves.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from petribill.v1 import admin_pb2

from actors.shard import ops
from actors.store.backup import read_backup
from cluster.api.errors import BackendError
from cluster.backend.backend import Backend
from cluster.backend.rpcs import rpc_named
from cluster.control.coordinator import unit_specs
from cluster.control.service import CoordinatorService
from cluster.control.state import read_journal
from cluster.deploy.inprocess import InProcessCluster
from petri import NetConfig, PetriModel, check_trace
from tests.replication_support import (
    ROOT,
    create_account,
    equal_replicas,
    replicated_cluster,
    run_on,
    top_ups,
    wait,
)

TIMEOUT_S = 60.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[InProcessCluster]:
    yield from replicated_cluster(tmp_path / "data")


def _coordinator(cluster: InProcessCluster) -> CoordinatorService:
    assert cluster.coordinator is not None
    return cluster.coordinator


def _call(backend: Backend, method: str, request: Any) -> Any:
    return asyncio.run(backend.call(rpc_named(f"AdminService.{method}"), request, TIMEOUT_S))


def _refused(backend: Backend, request: admin_pb2.RestoreUnitsRequest) -> tuple[Any, str]:
    with pytest.raises(BackendError) as caught:
        _call(backend, "RestoreUnits", request)
    return caught.value.code, caught.value.message


def _restore(
    backend: Backend, path: str = "bk", *units: str, request_id: str = "rs-1"
) -> admin_pb2.RestoreUnitsRequest:
    return admin_pb2.RestoreUnitsRequest(request_id=request_id, path=path, units=list(units))


def _backed_up_account(cluster: InProcessCluster, backend: Backend) -> str:
    """Account a1 with 3 EUR, backed up to ``bk``, then topped up 2 EUR more; its unit."""
    create_account(cluster, "a1")
    top_ups(cluster, "a1", 3)
    _call(backend, "Backup", admin_pb2.BackupRequest(request_id="bk"))
    top_ups(cluster, "a1", 2, start=3)
    return cluster.router().shard("a1")


def _lose(cluster: InProcessCluster, unit: str) -> dict[str, Any]:
    """Take away both nodes holding a copy of ``unit`` until the net loses it; its view
    before."""
    coordinator = _coordinator(cluster)
    view = coordinator.replicas()[unit]
    for node in (view["primary"], *view["isr"]):
        cluster.remove_node(node)
    wait(lambda: coordinator.routes().get(unit) == ("", 0), why=f"{unit} not lost")
    return view


def test_a_lost_unit_comes_back_from_the_backup_at_a_new_epoch_and_is_replicated(
    cluster: InProcessCluster,
) -> None:
    """Both copies of a unit die: the restore stages its checkpoint on the surviving node
    (in that node's folder), serves it at an epoch above its last, with the backup's
    balance; a new node gets its follower; a retry answers the same; the journal replays
    through the net."""
    backend = cluster.backend()
    unit = _backed_up_account(cluster, backend)
    before = _lose(cluster, unit)
    (survivor,) = set(cluster.hosts)
    taken = read_backup(cluster.data_dir / "backups" / "bk")[unit]

    lost = {u["unit"] for u in _coordinator(cluster).status()["units"] if u["state"] == "lost"}
    answer = _call(backend, "RestoreUnits", _restore(backend))  # every lost unit
    assert {r.unit for r in answer.units} == lost and unit in lost
    [restored] = [r for r in answer.units if r.unit == unit]
    assert restored.node == survivor
    assert restored.epoch > before["epoch"] and restored.epoch > taken.epoch
    assert (restored.backup_epoch, restored.backup_sequence) == (taken.epoch, taken.sequence)
    assert (cluster.data_dir / "nodes" / survivor / "units" / unit / "CURRENT").exists()
    assert _call(backend, "RestoreUnits", _restore(backend)) == answer  # the same request
    state = run_on(cluster, unit, ops.GetAccount(account_id="a1"))
    assert state.prepaid == 3_000_000  # as in the backup: the later top-ups died with it

    cluster.add_node("n4")  # a node to hold its follower: RF 2 again, writes go on
    wait(_coordinator(cluster).fully_replicated, why="not replicated again")
    top_ups(cluster, "a1", 1, start=10)
    assert run_on(cluster, unit, ops.GetAccount(account_id="a1")).prepaid == 4_000_000
    events = read_journal(cluster.data_dir)
    history = [(e["event"], e.get("epoch")) for e in events if e.get("shard") == unit]
    lose = [event for event, _ in history].index("lose")
    assert history[lose + 1] == ("restore", restored.epoch)
    config = NetConfig(
        nodes=("n1", "n2", "n3", "n4"),
        shards=unit_specs(2, 1),
        initial_nodes=frozenset(),
        replication_factor=2,
    )
    result = check_trace(PetriModel(config), events, strict=True)
    assert result.ok, result
    replicas = _coordinator(cluster).replicas()
    cluster.close()
    assert equal_replicas(cluster, replicas) == 3


def test_a_unit_that_is_not_lost_is_refused_and_none_of_its_copies_touched(
    cluster: InProcessCluster,
) -> None:
    """Restoring a served unit is FAILED_PRECONDITION naming it, and its primary and
    follower copies still hold every write made after the backup, key for key."""
    backend = cluster.backend()
    unit = _backed_up_account(cluster, backend)
    replicas = _coordinator(cluster).replicas()
    code, message = _refused(backend, _restore(backend, "bk", unit))
    assert run_on(cluster, unit, ops.GetAccount(account_id="a1")).prepaid == 5_000_000
    assert _coordinator(cluster).replicas()[unit]["isr"] == replicas[unit]["isr"]
    nobody, said_nobody = _refused(backend, _restore(backend, "bk", request_id="rs-2"))
    cluster.close()
    assert equal_replicas(cluster, replicas) == 3  # the follower copy was not replaced
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert f"{unit} is not lost" in message and "never overwrites a live unit" in message
    assert nobody is grpc.StatusCode.FAILED_PRECONDITION and "no unit is lost" in said_nobody


def test_a_backup_path_that_is_outside_missing_not_a_backup_or_lacks_the_unit_is_refused(
    cluster: InProcessCluster, tmp_path: Path
) -> None:
    """INVALID_ARGUMENT, naming the path or the unit, for each; the lost unit stays lost
    and no node folder gets a copy of it."""
    backend = cluster.backend()
    unit = _backed_up_account(cluster, backend)
    backups = cluster.data_dir / "backups"
    partial = backups / "partial"
    shutil.copytree(backups / "bk", partial)
    shutil.rmtree(partial / "units" / unit)
    (partial / "units" / f"{unit}.json").unlink()
    (backups / "empty").mkdir()
    _lose(cluster, unit)
    cases = {
        str(tmp_path / "elsewhere"): "is outside the backup root",
        "../bk": "is outside the backup root",
        "missing": "backup 'missing': no such folder",
        "empty": "backup 'empty': not a backup",
        "partial": f"holds no copy of {unit}",
    }
    for path, said in cases.items():
        code, message = _refused(backend, _restore(backend, path))
        assert code is grpc.StatusCode.INVALID_ARGUMENT, (path, message)
        assert said in message, (path, message)
    code, message = _refused(backend, _restore(backend, "bk", "acct-77"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "acct-77" in message
    assert _coordinator(cluster).routes()[unit] == ("", 0)
    (survivor,) = set(cluster.hosts)
    assert not (cluster.data_dir / "nodes" / survivor / "units" / unit).exists()


def test_a_unit_held_by_a_restore_is_not_restored_from_its_fenced_primary_meanwhile(
    cluster: InProcessCluster,
) -> None:
    """While an operator's restore holds a lost unit (its backup being staged), its fenced
    primary answering again does not restore it from that copy, and a second restore of
    it is ABORTED; once released, the fenced primary's copy brings it back as before."""
    backend = cluster.backend()
    unit = _backed_up_account(cluster, backend)
    coordinator = _coordinator(cluster)
    view = coordinator.replicas()[unit]
    cut_off = cluster.remove_node(view["primary"])
    cluster.remove_node(view["isr"][0])
    wait(lambda: coordinator.routes().get(unit) == ("", 0), why=f"{unit} not lost")
    assert coordinator._coordinator.hold_restore([unit]) == []
    cluster.hosts[view["primary"]] = cut_off  # it answers again, its disk intact
    rounds = coordinator.ping()
    wait(lambda: coordinator.ping() >= rounds + 20, why="the loop stopped")
    assert coordinator.routes()[unit] == ("", 0), "restored under a held restore"
    code, message = _refused(backend, _restore(backend, "bk", unit))
    assert code is grpc.StatusCode.ABORTED and unit in message
    coordinator._coordinator.release_restore([unit])
    wait(lambda: coordinator.routes()[unit][0] == view["primary"], why="not restored")
    assert run_on(cluster, unit, ops.GetAccount(account_id="a1")).prepaid == 5_000_000


def test_a_cluster_with_one_copy_of_each_unit_refuses_a_restore(tmp_path: Path) -> None:
    """Without replication no unit is ever lost: FAILED_PRECONDITION, saying how such a
    cluster is restored instead."""
    with InProcessCluster(tmp_path / "data", ROOT / "conf" / "tariffs", shards=2) as single:
        backend = single.backend()
        _call(backend, "Backup", admin_pb2.BackupRequest(request_id="bk"))
        code, message = _refused(backend, _restore(backend, "bk", "acct-00"))
    assert code is grpc.StatusCode.FAILED_PRECONDITION and "single copy" in message
