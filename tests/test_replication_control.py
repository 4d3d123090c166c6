"""The coordinator driving replicated units, in one process on real RocksDB.

An ``InProcessCluster`` in ``storage.mode = "replicated"``: the real coordinator with
the replicated Petri net, real hosts in their own node folders, the real router. A
node is killed by taking its host away (it lives on, cut off, like a partitioned
process). The same rules run over Ray in tests/test_replication_cluster.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from actors.host import StaleRoute
from actors.router import NoOwner
from actors.shard import ops
from cluster.control.coordinator import unit_specs
from cluster.control.replicas import (
    dead_follower_steps,
    failover_steps,
    lagging_steps,
    repair_steps,
)
from cluster.control.state import read_journal
from cluster.deploy.inprocess import InProcessCluster
from petri import NetConfig, PetriModel, ShardSpec, check_trace, initial_marking
from tests.replication_support import (
    create_account,
    equal_replicas,
    replicated_cluster,
    run_on,
    top_ups,
    wait,
)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[InProcessCluster]:
    yield from replicated_cluster(tmp_path / "data")


def test_a_replicated_cluster_places_a_follower_for_every_unit(
    cluster: InProcessCluster,
) -> None:
    """Every unit gets a primary and one in-sync follower on another node, each in its
    own node folder; a write is on both copies."""
    assert cluster.coordinator is not None
    replicas = cluster.coordinator.replicas()
    assert set(replicas) == {"acct-00", "acct-01", "part-0"}
    for view in replicas.values():
        assert len(view["isr"]) == 1 and view["primary"] not in view["isr"]
    create_account(cluster, "a1")
    top_ups(cluster, "a1", 3)
    replicas = cluster.coordinator.replicas()
    cluster.close()
    assert equal_replicas(cluster, replicas) == 3


def test_a_dead_nodes_units_are_promoted_and_re_replicated_with_nothing_lost(
    cluster: InProcessCluster,
) -> None:
    """Kill a node that is a primary: its units are promoted to their in-sync followers
    at new epochs, new followers restore RF, every acknowledged top-up is there, every
    in-sync copy equals its primary, and the journal replays through the net."""
    assert cluster.coordinator is not None
    coordinator = cluster.coordinator
    accounts = [f"a{i}" for i in range(6)]
    for account in accounts:
        create_account(cluster, account)
        top_ups(cluster, account, 4)
    before = coordinator.replicas()
    victim = before["acct-00"]["primary"]
    moved = {u for u, v in before.items() if v["primary"] == victim}
    cluster.remove_node(victim)

    def healed() -> bool:
        primaries = {v["primary"] for v in coordinator.replicas().values()}
        return victim not in primaries and coordinator.fully_replicated()

    wait(healed, why="not healed")
    after = coordinator.replicas()
    for unit in moved:
        assert after[unit]["primary"] != victim
        assert after[unit]["epoch"] > before[unit]["epoch"]
        assert after[unit]["primary"] in before[unit]["isr"], "promoted from outside the ISR"
    for view in after.values():
        assert victim not in view["isr"] and len(view["isr"]) == 1
    for account in accounts:
        top_ups(cluster, account, 2, start=4)  # writes go on after the failover
        state = run_on(cluster, cluster.router().shard(account), ops.GetAccount(account_id=account))
        assert state.prepaid == 6_000_000
    events = read_journal(cluster.data_dir)
    assert any(e["event"] == "promote" for e in events)
    config = NetConfig(
        nodes=("n1", "n2", "n3"),
        shards=unit_specs(2, 1),
        initial_nodes=frozenset(),
        replication_factor=2,
    )
    result = check_trace(PetriModel(config), events, strict=True)
    assert result.ok, result
    replicas = coordinator.replicas()
    cluster.close()
    assert equal_replicas(cluster, replicas) == 3


def test_a_unit_without_an_in_sync_copy_is_lost_not_reopened_empty(
    cluster: InProcessCluster,
) -> None:
    """Both copies of a unit die at once: the net loses it, calls on it are refused
    naming it as lost, and no node opens an empty database for it."""
    assert cluster.coordinator is not None
    coordinator = cluster.coordinator
    view = coordinator.replicas()["acct-00"]
    copies = {view["primary"], *view["isr"]}
    for node in copies:
        cluster.remove_node(node)
    wait(lambda: coordinator.routes().get("acct-00") == ("", 0), why="acct-00 not lost")
    with pytest.raises(NoOwner, match="unit acct-00 is lost"):
        cluster.router().run_blocking("acct-00", ops.GetAccount(account_id="a1"), timeout_s=5)
    (survivor,) = set(cluster.hosts)
    assert "acct-00" not in cluster.hosts[survivor].units()
    assert not (cluster.data_dir / "nodes" / survivor / "units" / "acct-00").exists()
    status = coordinator.status()
    assert {u["unit"]: u["state"] for u in status["units"]}["acct-00"] == "lost"
    assert not status["healthy"]


def test_a_lost_unit_comes_back_from_its_fenced_primarys_own_copy(
    cluster: InProcessCluster,
) -> None:
    """Both copies drop out (the primary only seemingly: it is cut off, not dead); the
    unit is lost. When the primary's node answers again with its database, that copy has
    every acknowledged batch, and the unit is restored from it, with its data."""
    assert cluster.coordinator is not None
    coordinator = cluster.coordinator
    create_account(cluster, "a1")
    unit = cluster.router().shard("a1")
    top_ups(cluster, "a1", 3)
    view = coordinator.replicas()[unit]
    primary, (follower,) = view["primary"], view["isr"]
    cut_off = cluster.remove_node(primary)
    cluster.remove_node(follower)
    wait(lambda: coordinator.routes().get(unit) == ("", 0), why=f"{unit} not lost")
    cluster.hosts[primary] = cut_off  # it answers again, its disk intact
    wait(lambda: coordinator.routes().get(unit, ("", 0))[0] == primary, why="not restored")
    events = [e["event"] for e in read_journal(cluster.data_dir) if e.get("shard") == unit]
    assert events[events.index("lose") :][:2] == ["lose", "restore"]
    top_ups(cluster, "a1", 1, start=3)  # acknowledged once a new follower is in sync
    state = run_on(cluster, unit, ops.GetAccount(account_id="a1"))
    assert state.prepaid == 4_000_000
    assert len(coordinator.replicas()[unit]["isr"]) == 1


def test_a_cut_off_primary_that_comes_back_is_closed(cluster: InProcessCluster) -> None:
    """A primary cut off long enough to be failed is promoted away; when it answers again
    it still serves its units at the old epoch: the coordinator closes them there (its
    followers would refuse its writes anyway: tests/test_replication.py), and the node
    then takes follower copies like any other."""
    assert cluster.coordinator is not None
    coordinator = cluster.coordinator
    create_account(cluster, "a1")
    unit = cluster.router().shard("a1")
    view = coordinator.replicas()[unit]
    old_node, old_epoch = view["primary"], view["epoch"]
    old = cluster.remove_node(old_node)
    wait(lambda: coordinator.routes()[unit][0] not in ("", old_node), why="not promoted")
    assert old.units()[unit] == old_epoch  # it does not know yet
    with capture_logs() as logs:
        cluster.hosts[old_node] = old  # it answers again
        wait(lambda: unit not in old.units(), why="the stale primary still serves")
    assert any(e["event"] == "stale_primary_closed" and e["shard"] == unit for e in logs)
    with pytest.raises(StaleRoute):
        old.run(unit, old_epoch, ops.GetAccount(account_id="a1"))
    wait(lambda: coordinator.fully_replicated(), why="not fully replicated again")


# -- the decisions alone, on markings -------------------------------------------------


def _model() -> tuple[PetriModel, Any]:
    config = NetConfig(
        nodes=("n1", "n2", "n3"),
        shards=(ShardSpec(shard_id="acct-0"),),
        initial_nodes=frozenset({"n1", "n2", "n3"}),
        replication_factor=2,
    )
    model = PetriModel(config)
    marking = model.fire(initial_marking(config), "assign", {"shard": "acct-0", "node": "n1"})
    marking = model.fire(marking, "replica_add", {"shard": "acct-0", "node": "n2"})
    marking = model.fire(marking, "catch_up", {"shard": "acct-0", "node": "n2"})
    marking = model.fire(marking, "join_isr", {"shard": "acct-0", "node": "n2"})
    return model, marking


def test_failover_promotes_only_an_in_sync_follower_on_an_alive_node() -> None:
    """A fenced unit goes to its in-sync follower; a catching-up one is never chosen,
    and with none in sync the unit is lost."""
    model, marking = _model()
    dead = model.fire(marking, "node_fail", {"node": "n1"})
    dead = model.fire(dead, "fence", {"shard": "acct-0"})
    [step] = failover_steps(dead)
    assert (step.transition, step.binding["node"]) == ("promote", "n2")
    lagging = model.fire(marking, "shrink_isr", {"shard": "acct-0", "node": "n2"})
    lagging = model.fire(lagging, "node_fail", {"node": "n1"})
    lagging = model.fire(lagging, "fence", {"shard": "acct-0"})
    [step] = failover_steps(lagging)
    assert step.transition == "lose"


def test_followers_on_dead_nodes_leave_and_rf_is_restored_elsewhere() -> None:
    """A follower on a dead node is shrunk and dropped; a new one goes to the alive node
    without a copy; a follower failing past the bound is shrunk."""
    model, marking = _model()
    dead = model.fire(marking, "node_fail", {"node": "n2"})
    steps = dead_follower_steps(dead)
    assert [s.transition for s in steps] == ["shrink_isr", "replica_drop"]
    for step in steps:
        dead = model.fire(dead, step.transition, step.binding)
    [add] = repair_steps(dead, replication_factor=2)
    assert add.binding == {"shard": "acct-0", "node": "n3"}
    epoch = dict(marking.epochs())["acct-0"]
    report = {"acct-0": {"epoch": epoch, "followers": {"n2": {"failed_s": 6.0}}}}
    assert lagging_steps(marking, report, lag_max_s=5.0)[0].transition == "shrink_isr"
    assert lagging_steps(marking, report, lag_max_s=10.0) == []
