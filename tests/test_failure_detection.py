"""Failure detection in the coordinator: a dead process is failed at once, a slow one only
after a longer bound, and never only to hand its units back to itself; a bill-run lock
left by a dead gateway is released a lease after its last step.

Driven through the coordinator's ClusterOps seam (tests/test_coordinator.py's stand-in);
tests/test_liveness_cluster.py runs the same rules on a real local Ray cluster.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs
from test_coordinator import Nodes

from cluster.control import coordinator as coordinator_module
from cluster.control.coordinator import BILL_RUN_LEASE_S, HOST_SILENT_MAX_S, Coordinator
from cluster.control.state import read_journal


class Hosts(Nodes):
    """The stand-in, with host processes that can be gone while their node stays up."""

    def __init__(self, *names: str) -> None:
        super().__init__(*names)
        self.gone: set[str] = set()

    def host_ok(self, node: str) -> bool:
        return super().host_ok(node) and node not in self.gone


def started(tmp_path: Path, *names: str) -> tuple[Hosts, Coordinator]:
    hosts = Hosts(*names)
    coordinator = Coordinator(
        data_dir=tmp_path, shards=4, partitions=2, ops=hosts, wall_clock=lambda: 1000.0
    )
    coordinator.reconcile()
    assert coordinator.healthy()
    return hosts, coordinator


def failures(tmp_path: Path) -> list[tuple[str, str]]:
    return [(e["node"], e["cause"]) for e in read_journal(tmp_path) if e["event"] == "node_fail"]


def test_a_host_whose_process_is_gone_is_failed_in_the_same_round(tmp_path: Path) -> None:
    """Ray says the host died (its ping raised): its node is failed and its units taken over
    by the other node at once, and the journal says why and when."""
    hosts, coordinator = started(tmp_path, "n1", "n2")
    hosts.gone.add("n2")
    coordinator.reconcile()
    assert coordinator.healthy()
    assert {route.node for route in coordinator.routes().values()} == {"n1"}
    assert failures(tmp_path) == [("n2", "host_gone")]
    assert all(e["at_s"] == 1000.0 for e in read_journal(tmp_path))


def test_a_silent_host_keeps_its_units_until_the_bound_then_is_fenced(tmp_path: Path) -> None:
    """A host that leaves pings unanswered is busy, not dead, until HOST_SILENT_MAX_S; past
    it, its node is failed and its units go to the node that answers."""
    hosts, coordinator = started(tmp_path, "n1", "n2")
    before = coordinator.routes()
    hosts.silent_s["n2"] = HOST_SILENT_MAX_S - 0.1
    assert coordinator.reconcile() == 0
    assert coordinator.routes() == before
    hosts.silent_s["n2"] = HOST_SILENT_MAX_S
    coordinator.reconcile()
    assert {route.node for route in coordinator.routes().values()} == {"n1"}
    assert failures(tmp_path) == [("n2", "host_silent")]


def test_the_last_node_keeps_its_units_however_long_its_host_is_silent(tmp_path: Path) -> None:
    """With no other node to take them, fencing a slow host's units would only hand them
    back to it: it keeps them, and the operator is told once."""
    hosts, coordinator = started(tmp_path, "n1")
    hosts.silent_s["n1"] = 10 * HOST_SILENT_MAX_S
    with capture_logs() as logs:
        assert coordinator.reconcile() == 0
        assert coordinator.reconcile() == 0
    assert coordinator.healthy() and failures(tmp_path) == []
    assert [e["event"] for e in logs if e["event"].startswith("host_silent")] == [
        "host_silent_kept"
    ]


def test_a_silent_host_is_kept_when_the_other_node_is_silent_too(tmp_path: Path) -> None:
    """Relief must answer: two silent hosts keep their units rather than fence each other."""
    hosts, coordinator = started(tmp_path, "n1", "n2")
    hosts.silent_s.update(n1=2 * HOST_SILENT_MAX_S, n2=2 * HOST_SILENT_MAX_S)
    assert coordinator.reconcile() == 0
    assert failures(tmp_path) == []


def test_a_dead_node_is_failed_at_once_however_briefly_silent(tmp_path: Path) -> None:
    """Ray declaring the node dead needs no silence bound."""
    hosts, coordinator = started(tmp_path, "n1", "n2")
    hosts.kill("n2")
    coordinator.reconcile()
    assert failures(tmp_path) == [("n2", "node_dead")]
    assert coordinator.healthy()


def test_fenced_units_go_to_another_node_when_their_owner_is_back_first(tmp_path: Path) -> None:
    """Both nodes fail at once; when both are back, each fenced unit goes to the node it was
    not fenced from, never straight back to its old owner."""
    hosts, coordinator = started(tmp_path, "n1", "n2")
    owner = {unit: route.node for unit, route in coordinator.routes().items()}
    hosts.gone.update({"n1", "n2"})
    coordinator.reconcile()
    assert coordinator.routes() == {}
    hosts.gone.clear()
    coordinator.reconcile()
    assert coordinator.healthy()
    assert all(route.node != owner[unit] for unit, route in coordinator.routes().items())


def test_a_node_silent_then_answering_again_is_not_recovered_until_it_answers(
    tmp_path: Path,
) -> None:
    """A failed node rejoins (node_recover) only once its host answers the ping again."""
    hosts, coordinator = started(tmp_path, "n1", "n2")
    hosts.silent_s["n2"] = HOST_SILENT_MAX_S
    coordinator.reconcile()
    hosts.silent_s["n2"] = 1.0  # answering is 0.0: a ping still in flight
    coordinator.reconcile()
    assert dict(coordinator.marking.nodes())["n2"] == "dead"
    hosts.silent_s["n2"] = 0.0
    coordinator.reconcile()
    assert dict(coordinator.marking.nodes())["n2"] == "alive"


class Clock:
    """The coordinator's monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.now_s = 100.0

    def monotonic(self) -> float:
        return self.now_s

    def time(self) -> float:
        return 1000.0 + self.now_s


def test_a_bill_run_lock_is_kept_while_renewed_and_released_a_lease_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bill run renews its shard's lock each step and keeps it however long it runs; a
    gateway that died mid run leaves a lock released one lease after its last step."""
    clock = Clock()
    monkeypatch.setattr(coordinator_module, "time", clock)
    _hosts, coordinator = started(tmp_path, "n1")
    assert coordinator.lock("acct-00", "bill_run")
    for _ in range(5):  # five leases' worth of steps
        clock.now_s += 0.9 * BILL_RUN_LEASE_S
        assert coordinator.renew("acct-00", "bill_run")
        coordinator.reconcile()
        assert coordinator.marking.locks_held() == (("acct-00", "bill_run"),)
    clock.now_s += 1.1 * BILL_RUN_LEASE_S  # no step renewed it: its holder is gone
    coordinator.reconcile()
    assert coordinator.marking.locks_held() == ()
    assert not coordinator.renew("acct-00", "bill_run")
