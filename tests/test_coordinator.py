"""The coordinator's reconciliation loop, driven through its ClusterOps seam.

These tests exercise the control logic alone; tests/test_cluster_*.py run the
same coordinator against a real local Ray cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import structlog
from structlog.testing import capture_logs

from cluster.control.coordinator import Coordinator, UnitOpenError, unit_specs
from cluster.control.state import read_journal
from petri import NetConfig, PetriModel, check_trace, initial_marking


class Nodes:
    """A small in-memory stand-in for the cluster: which nodes are up, what hosts serve."""

    def __init__(self, *names: str) -> None:
        self.up = {name: f"ray-{name}" for name in names}
        self.serving: dict[str, dict[str, int]] = {name: {} for name in names}
        self.refuse: set[str] = set()
        self.silent_s: dict[str, float] = {}  # node -> how long its host has not answered

    def alive_nodes(self) -> Mapping[str, str]:
        return dict(self.up)

    def host_ok(self, node: str) -> bool:
        return node in self.up

    def host_silent_s(self, node: str) -> float:
        return self.silent_s.get(node, 0.0)

    def open_unit(self, node: str, unit_id: str, epoch: int) -> None:
        if node in self.refuse:
            raise UnitOpenError(f"{node} refuses")
        for other, units in self.serving.items():
            if other != node and unit_id in units:
                assert units[unit_id] < epoch, "a unit was opened at an epoch not above the old"
        self.serving.setdefault(node, {})[unit_id] = epoch

    def close_unit(self, node: str, unit_id: str) -> None:
        self.serving.get(node, {}).pop(unit_id, None)

    def kill(self, node: str) -> None:
        del self.up[node]
        self.serving[node] = {}


def test_units_are_spread_over_joined_nodes(tmp_path: Path) -> None:
    """Every unit gets an owner, and two nodes share them evenly."""
    nodes = Nodes("n1", "n2")
    coordinator = Coordinator(data_dir=tmp_path, shards=4, partitions=2, ops=nodes)
    coordinator.reconcile()
    assert coordinator.healthy()
    owners = [route.node for route in coordinator.routes().values()]
    assert sorted(owners.count(n) for n in ("n1", "n2")) == [3, 3]
    assert {u for units in nodes.serving.values() for u in units} == set(coordinator.routes())


def test_a_dead_node_is_fenced_and_taken_over_at_a_higher_epoch(tmp_path: Path) -> None:
    """Units of a node that dies move to a live node with a strictly greater epoch."""
    nodes = Nodes("n1", "n2")
    coordinator = Coordinator(data_dir=tmp_path, shards=4, partitions=2, ops=nodes)
    coordinator.reconcile()
    before = coordinator.routes()
    nodes.kill("n2")
    coordinator.reconcile()
    after = coordinator.routes()
    assert coordinator.healthy()
    assert {route.node for route in after.values()} == {"n1"}
    for unit, route in before.items():
        if route.node == "n2":
            assert after[unit].epoch == route.epoch + 2  # fence, then takeover
        else:
            assert after[unit] == route


def test_a_restarted_coordinator_resumes_from_its_persisted_marking(tmp_path: Path) -> None:
    """Killing the coordinator loses nothing: a new one reloads the same marking."""
    nodes = Nodes("n1", "n2")
    first = Coordinator(data_dir=tmp_path, shards=3, partitions=1, ops=nodes)
    first.reconcile()
    second = Coordinator(data_dir=tmp_path, shards=3, partitions=1, ops=nodes)
    assert second.marking == first.marking
    assert second.reconcile() == 0


def test_a_failed_open_is_retried_by_the_next_round(tmp_path: Path) -> None:
    """An action lost after the marking was persisted is completed by converge."""
    nodes = Nodes("n1")
    nodes.refuse.add("n1")
    coordinator = Coordinator(data_dir=tmp_path, shards=2, partitions=1, ops=nodes)
    coordinator.reconcile()
    assert nodes.serving["n1"] == {}
    nodes.refuse.clear()
    assert coordinator.converge() == []
    assert nodes.serving["n1"] == {u: r.epoch for u, r in coordinator.routes().items()}


def test_the_logged_transitions_replay_through_the_net(tmp_path: Path) -> None:
    """Every event the coordinator logs is a step the Petri net allows, in order."""
    nodes = Nodes("n1", "n2", "n3")
    with capture_logs() as events:
        coordinator = Coordinator(data_dir=tmp_path, shards=4, partitions=2, ops=nodes)
        coordinator.reconcile()
        nodes.kill("n3")
        coordinator.reconcile()
        nodes.up["n3"] = "ray-n3-again"
        coordinator.reconcile()  # n3 recovers and gets units back by rebalancing
        coordinator.drain("n1")
        coordinator.reconcile()
    structlog.reset_defaults()
    config = NetConfig(
        nodes=("n1", "n2", "n3"),
        shards=coordinator.model.config.shards,
        initial_nodes=frozenset(),
    )
    model = PetriModel(config)
    steps = [e for e in events if e["event"] in model.transitions]
    assert {e["event"] for e in steps} >= {
        "join", "assign", "node_fail", "fence", "takeover", "node_recover",
        "drain", "migration_lock", "migrate", "rebalance", "migration_unlock",
    }  # fmt: skip
    result = check_trace(model, steps, initial=initial_marking(config), strict=True)
    assert result.ok, result.rejection
    assert result.final == coordinator.marking


def test_drain_moves_every_unit_off_the_node_and_never_leaves_one_ownerless(
    tmp_path: Path,
) -> None:
    """A drained node ends up with no units; each moved unit closed before it reopened."""
    nodes = Nodes("n1", "n2", "n3")
    coordinator = Coordinator(data_dir=tmp_path, shards=6, partitions=3, ops=nodes)
    coordinator.reconcile()
    before = coordinator.routes()
    assert coordinator.drain("n2")
    coordinator.reconcile()
    after = coordinator.routes()
    assert set(after) == set(before)
    assert "n2" not in {route.node for route in after.values()}
    assert nodes.serving["n2"] == {}
    for unit, route in before.items():
        if route.node == "n2":
            assert after[unit].epoch == route.epoch + 1
    assert not coordinator.marking.locks_held()


def test_a_joining_node_gets_a_fair_share(tmp_path: Path) -> None:
    """After a node joins, units are rebalanced until loads differ by at most one."""
    nodes = Nodes("n1")
    coordinator = Coordinator(data_dir=tmp_path, shards=6, partitions=2, ops=nodes)
    coordinator.reconcile()
    nodes.up["n2"] = "ray-n2"
    nodes.serving["n2"] = {}
    coordinator.reconcile()
    owners = [route.node for route in coordinator.routes().values()]
    assert abs(owners.count("n1") - owners.count("n2")) <= 1
    assert sum(len(units) for units in nodes.serving.values()) == 8


def test_a_bill_run_lock_holds_off_a_migration_of_the_same_shard(tmp_path: Path) -> None:
    """A shard under a bill run is not migrated until the bill run lets go."""
    nodes = Nodes("n1", "n2")
    coordinator = Coordinator(data_dir=tmp_path, shards=2, partitions=1, ops=nodes)
    coordinator.reconcile()
    unit = next(u for u, r in coordinator.routes().items() if r.node == "n2" and "acct" in u)
    assert coordinator.lock(unit, "bill_run")
    assert coordinator.drain("n2")
    coordinator.reconcile()
    assert coordinator.routes()[unit].node == "n2"
    assert coordinator.unlock(unit, "bill_run")
    coordinator.reconcile()
    assert coordinator.routes()[unit].node == "n1"
    assert not coordinator.lock("part-0", "bill_run")  # partitions have no bill runs


def test_the_journal_is_repaired_after_a_crash_between_state_and_journal(
    tmp_path: Path,
) -> None:
    """If the process died after persisting a step but before journaling it, the restarted
    coordinator restores the missing event, and the journal replays to the marking."""
    nodes = Nodes("n1", "n2")
    coordinator = Coordinator(data_dir=tmp_path, shards=3, partitions=1, ops=nodes)
    coordinator.reconcile()
    journal = tmp_path / "control" / "transitions.jsonl"
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join(lines[:-1]) + "\n")  # the last append never happened
    restarted = Coordinator(data_dir=tmp_path, shards=3, partitions=1, ops=nodes)
    events = read_journal(tmp_path)
    assert len(events) == len(lines)
    config = NetConfig(nodes=("n1", "n2"), shards=unit_specs(3, 1), initial_nodes=frozenset())
    result = check_trace(PetriModel(config), events, strict=True)
    assert result.ok and result.final == restarted.marking


def test_a_bill_run_lock_left_behind_is_released_after_its_lease(tmp_path: Path) -> None:
    """A lock whose holder vanished (a gateway died mid bill run) does not block forever."""
    nodes = Nodes("n1")
    coordinator = Coordinator(data_dir=tmp_path, shards=1, partitions=1, ops=nodes)
    coordinator.reconcile()
    assert coordinator.lock("acct-00", "bill_run")
    coordinator.reconcile()
    assert coordinator.marking.locks_held()
    coordinator.lock_lease_s = 0.0
    coordinator.reconcile()
    assert not coordinator.marking.locks_held()


def test_the_only_alive_node_is_not_drained(tmp_path: Path) -> None:
    """Draining the one alive node is refused (its units have nowhere to go); with a
    second node up the same drain is accepted."""
    nodes = Nodes("n1")
    coordinator = Coordinator(data_dir=tmp_path, shards=2, partitions=1, ops=nodes)
    coordinator.reconcile()
    assert not coordinator.drain("n1")
    assert dict(coordinator.marking.nodes())["n1"] == "alive"
    nodes.up["n2"] = "ray-n2"
    coordinator.reconcile()
    assert coordinator.drain("n1")
