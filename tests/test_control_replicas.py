"""Control replicas: the coordinator's state survives the loss of the disk it lives on.

The replica store on a real host (its node folder, the generation fence), the choice of
the replica to rebuild from, and an in-process replicated cluster (real hosts, real
RocksDB, the real coordinator) whose ``<data>/control/`` is deleted between two runs.
The same on a real Ray cluster: tests/test_control_replicas_cluster.py.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import pytest

from actors.host import UnitHost
from actors.local import LocalPeers
from actors.shard import ops
from actors.store.control_copy import ControlCopy, ControlReplicaFenced, read_journal
from billing.accounts import Account, PaymentMode
from cluster.control.coordinator import Coordinator
from cluster.control.mirror import (
    ControlMirror,
    ControlRecovery,
    ControlStateMissing,
    choose_copy,
)
from cluster.control.state import load_state, state_path
from cluster.deploy.inprocess import InProcessCluster, LocalOps
from tests.test_coordinator import Nodes

ROOT = Path(__file__).resolve().parent.parent
TARIFFS = ROOT / "conf" / "tariffs"
AT = 1_793_700_000
SETTINGS = {"storage_mode": "replicated", "replication_factor": 2, "min_in_sync": 2}
NODES = ("n1", "n2", "n3")


def _host(data_dir: Path, node: str) -> UnitHost:
    def no_engines(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("no unit is opened here")

    return UnitHost(
        node=node,
        data_dir=str(data_dir),
        shards=1,
        factory=no_engines,
        mode="replicated",
        peers=LocalPeers({}),
    )


def _body(generation: int) -> bytes:
    return json.dumps({"format": "petribill.control/1", "generation": generation}).encode()


def _event(generation: int) -> dict[str, Any]:
    return {"event": "join", "node": "n1", "generation": generation}


def test_a_host_keeps_the_control_replica_in_its_own_node_folder(tmp_path: Path) -> None:
    """A save lands in ``<data>/nodes/<node>/control/`` with its journal events, and reads
    back with its generation; nothing is written outside the node's folder."""
    host = _host(tmp_path, "n2")
    assert host.control_copy().generation == 0
    assert host.control_save(3, _body(3), [_event(2), _event(3)]) == 3
    assert state_path(tmp_path / "nodes" / "n2").read_bytes() == _body(3)
    copy = host.control_copy()
    assert (copy.node, copy.generation, copy.state) == ("n2", 3, _body(3))
    assert [e["generation"] for e in read_journal(tmp_path / "nodes" / "n2")] == [2, 3]
    assert not (tmp_path / "control").exists()


def test_a_replica_refuses_a_lower_generation_and_journals_an_event_once(
    tmp_path: Path,
) -> None:
    """Below the generation held a save is refused and writes nothing (the fence of the
    coordinator's own folder); the same generation again is a resend that changes
    nothing; events already held are not journaled twice."""
    host = _host(tmp_path, "n1")
    host.control_save(5, _body(5), [_event(4), _event(5)])
    with pytest.raises(ControlReplicaFenced, match="at generation 5 refuses generation 4"):
        host.control_save(4, _body(4), [_event(4)])
    assert host.control_copy().state == _body(5)
    assert host.control_save(5, _body(5), [_event(5)]) == 5
    assert host.control_save(7, _body(7), [_event(4), _event(5), _event(7)]) == 7
    assert [e["generation"] for e in read_journal(tmp_path / "nodes" / "n1")] == [4, 5, 7]


def _state_bytes(tmp_path: Path, nodes: tuple[str, ...]) -> bytes:
    """The state.json of a real coordinator that has seen ``nodes`` join."""
    folder = tmp_path / "made"
    Coordinator(data_dir=folder, shards=2, partitions=1, ops=Nodes(*nodes)).reconcile()
    return state_path(folder).read_bytes()


def _copy(node: str, generation: int, state: bytes, units: int = 1) -> ControlCopy:
    raw = json.loads(state)
    raw["generation"] = generation
    body = json.dumps(raw).encode()
    return ControlCopy(node=node, generation=generation, state=body, journal=b"", units=units)


def test_recovery_takes_the_newest_replica(tmp_path: Path) -> None:
    """Of the replicas found, the one with the highest generation is rebuilt from, wherever
    it is and whatever order the answers came in."""
    state = _state_bytes(tmp_path, NODES)
    copies = {"n1": _copy("n1", 6, state), "n3": _copy("n3", 7, state), "n2": _copy("n2", 5, state)}
    chosen = choose_copy(copies, unanswered=(), acks_needed=1)
    assert chosen is not None and (chosen.node, chosen.generation) == ("n3", 7)


def test_recovery_starts_empty_only_when_no_node_ever_ran_a_cluster(tmp_path: Path) -> None:
    """No replica and no unit on any node, every node answering: a new cluster. No replica
    but units on a node, or a node not answering: refused, naming what was found."""
    empty = {n: ControlCopy(node=n, generation=0, state=b"", journal=b"", units=0) for n in NODES}
    assert choose_copy(empty, unanswered=(), acks_needed=1) is None
    with pytest.raises(ControlStateMissing, match=r"not answering: \['n4'\]"):
        choose_copy(empty, unanswered=("n4",), acks_needed=1)
    empty["n2"] = ControlCopy(node="n2", generation=0, state=b"", journal=b"", units=3)
    with pytest.raises(ControlStateMissing, match=r"with units on disk: \['n2'\]"):
        choose_copy(empty, unanswered=(), acks_needed=1)


def test_recovery_refuses_when_a_node_live_at_the_newest_save_is_missing(tmp_path: Path) -> None:
    """With one replica making a save durable, every node live at the newest generation
    found must answer (the newest durable save may be on the one missing), except the
    coordinator's own node, whose acknowledgements never counted."""
    state = _state_bytes(tmp_path, NODES)
    copies = {"n1": _copy("n1", 9, state), "n2": _copy("n2", 9, state)}
    with pytest.raises(ControlStateMissing, match=r"\['n3'\] were live then and did not answer"):
        choose_copy(copies, unanswered=(), acks_needed=1)
    chosen = choose_copy(copies, unanswered=(), acks_needed=1, local="n3")
    assert chosen is not None and chosen.generation == 9
    assert choose_copy(copies, unanswered=(), acks_needed=2) is not None


class _Paused(LocalOps):
    """Real hosts, but the saves sent to ``paused`` nodes are never answered (a SIGSTOPped
    host), and ``local`` is the coordinator's own node; counts the bounded waits."""

    def __init__(self, hosts: dict[str, UnitHost], *, paused: set[str], local: str) -> None:
        super().__init__(hosts)
        self.paused, self.local, self.waits = paused, local, 0
        self.sends: dict[str, int] = {}
        self._unanswered: set[str] = set()

    def control_send(
        self, node: str, generation: int, state: bytes, events: list[dict[str, Any]]
    ) -> None:
        self.sends[node] = self.sends.get(node, 0) + 1
        if node in self.paused:
            self._unanswered.add(node)
        else:
            super().control_send(node, generation, state, events)

    def control_in_flight(self, node: str) -> bool:
        return node in self._unanswered

    def control_answers(
        self, nodes: Collection[str], needed: int, timeout_s: float
    ) -> dict[str, int | BaseException]:
        self.waits += bool(needed and timeout_s)
        return super().control_answers(nodes, needed, timeout_s)

    def control_local_node(self) -> str | None:
        return self.local


def test_a_save_is_durable_only_on_another_node_and_a_paused_one_is_waited_for_once(
    tmp_path: Path,
) -> None:
    """The coordinator's own node's replica never makes a save durable; a paused host is
    waited for (bounded) at one settle, then skipped while its save is in flight; another
    live node's acknowledgement makes the next save durable."""
    hosts = {node: _host(tmp_path, node) for node in NODES}
    paused = _Paused(hosts, paused={"n2"}, local="n1")
    mirror = ControlMirror(paused, acks_needed=1, wait_s=0.01)
    mirror.saved(1, _body(1), _event(1))
    assert not mirror.settle(["n1"])
    assert hosts["n1"].control_copy().generation == 1  # kept, but not counted
    for generation in (2, 3):
        mirror.saved(generation, _body(generation), _event(generation))
        assert not mirror.settle(["n1", "n2"])
    assert paused.waits == 1
    mirror.saved(4, _body(4), _event(4))
    assert mirror.settle(["n1", "n2", "n3"])
    assert mirror.status()["durable_generation"] == 4 and mirror.short_saves == 3
    assert [e["generation"] for e in read_journal(tmp_path / "nodes" / "n3")] == [1, 2, 3, 4]


def test_a_rounds_saves_reach_each_replica_in_one_call(tmp_path: Path) -> None:
    """Many saves before a settle (one reconcile round's transitions) go to each replica
    as one call: the latest state with every journal event since its last answer."""
    hosts = {node: _host(tmp_path, node) for node in NODES}
    ops = _Paused(hosts, paused=set(), local="n1")
    mirror = ControlMirror(ops, acks_needed=1)
    for generation in range(1, 6):
        mirror.saved(generation, _body(generation), _event(generation))
    assert mirror.settle(NODES)
    assert ops.sends == {"n1": 1, "n2": 1, "n3": 1}
    assert hosts["n2"].control_copy().state == _body(5)
    assert [e["generation"] for e in read_journal(tmp_path / "nodes" / "n2")] == [1, 2, 3, 4, 5]


def test_a_replica_ahead_of_the_coordinator_is_neither_counted_nor_overwritten(
    tmp_path: Path,
) -> None:
    """A replica holding a newer generation than the coordinator's (not its lineage: its
    control folder was restored from an older copy) refuses the save; it is not counted
    towards durability, not sent to again, and keeps what it holds."""
    hosts = {node: _host(tmp_path, node) for node in ("n1", "n2")}
    hosts["n1"].control_save(10, _body(10), [])
    mirror = ControlMirror(LocalOps(hosts), acks_needed=1)
    mirror.saved(3, _body(3), _event(3))
    assert not mirror.settle(["n1"])
    mirror.saved(4, _body(4), _event(4))
    assert mirror.settle(["n1", "n2"])
    assert mirror.status()["ahead"] == {"n1": 10} and mirror.status()["replicas"] == {"n2": 4}
    assert hosts["n1"].control_copy().state == _body(10)


def test_recovery_waits_for_a_silent_node_then_decides_without_it(tmp_path: Path) -> None:
    """A node Ray reports alive whose host does not answer is waited for until the
    recovery's deadline; then the decision is made from the others (here: refused, the
    silent node having been live at the newest save found)."""
    state = _state_bytes(tmp_path, NODES)
    hosts = {node: _host(tmp_path, node) for node in ("n1", "n2")}  # n3's host is silent
    for node, host in hosts.items():
        host.control_save(4, _copy(node, 4, state).state, [])
    now = [0.0]
    recovery = ControlRecovery(LocalOps(hosts), acks_needed=1, wait_s=60, clock=lambda: now[0])
    assert not recovery.step(NODES).ready
    now[0] = 61.0
    with pytest.raises(ControlStateMissing, match=r"\['n3'\] were live then"):
        recovery.step(NODES)


# -- an in-process replicated cluster -------------------------------------------------------


def _wait(what: Callable[[], bool], why: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        if time.monotonic() > deadline:
            raise TimeoutError(why)
        time.sleep(0.02)


def _cluster(data_dir: Path, nodes: tuple[str, ...] = NODES) -> InProcessCluster:
    return InProcessCluster(
        data_dir, TARIFFS, shards=2, partitions=1, nodes=nodes, settings=SETTINGS, duties=False
    )


def _seed(cluster: InProcessCluster, accounts: list[str]) -> None:
    router = cluster.router()
    for n, account_id in enumerate(accounts):
        unit = router.shard(account_id)
        account = Account(account_id=account_id, currency="EUR", payment_mode=PaymentMode.PREPAID)
        create = ops.CreateAccount(request_id=f"c-{n}", account=account)
        router.run_blocking(unit, create, timeout_s=30)
        top_up = ops.TopUp(
            request_id=f"t-{n}", account_id=account_id, amount=(n + 1) * 1_000_000,
            currency="EUR", at_s=AT,
        )  # fmt: skip
        router.run_blocking(unit, top_up, timeout_s=30)


def _balances(cluster: InProcessCluster, accounts: list[str]) -> dict[str, int]:
    router = cluster.router()
    found = {}
    for account_id in accounts:
        state = router.run_blocking(
            router.shard(account_id), ops.GetAccount(account_id=account_id), timeout_s=30
        )
        assert state is not None, account_id
        found[account_id] = state.prepaid
    return found


def _epochs(cluster: InProcessCluster) -> dict[str, int]:
    assert cluster.coordinator is not None
    return {u["unit"]: u["epoch"] for u in cluster.coordinator.status()["units"]}


def test_a_lost_control_folder_is_rebuilt_from_the_newest_node_replica(tmp_path: Path) -> None:
    """A cluster runs, one node drops out (its replica falls behind while its units fail
    over), then the whole cluster stops and ``<data>/control/`` is deleted. Started again
    with all three nodes, the coordinator rebuilds its state from the newest replica and
    goes on from its generation: the same journal, and the same epochs and balances as
    the same restart with the control folder kept (a restart fences every unit anew)."""
    data = tmp_path / "data"
    accounts = [f"a{i}" for i in range(6)]
    first = _cluster(data).start()
    assert first.coordinator is not None
    coordinator = first.coordinator
    _wait(coordinator.fully_replicated, "not fully replicated")
    _seed(first, accounts)
    victim = coordinator.replicas()["acct-00"]["primary"]
    cut_off = first.remove_node(victim)
    _wait(
        lambda: (
            coordinator.fully_replicated()
            and victim not in {v["primary"] for v in coordinator.replicas().values()}
        ),
        "not failed over",
    )
    balances, epochs = _balances(first, accounts), _epochs(first)
    generation = load_state(data).generation
    first.close()
    cut_off.close_all()
    lagging = json.loads(state_path(data / "nodes" / victim).read_text())["generation"]
    assert lagging < generation  # the cut-off node's replica is behind
    journal = read_journal(data)
    twin = tmp_path / "twin"
    shutil.copytree(data, twin)
    shutil.rmtree(data / "control")

    kept = _cluster(twin).start()  # the same restart with its control folder kept
    want = _epochs(kept), _balances(kept, accounts)
    kept.close()
    second = _cluster(data).start()
    try:
        assert second.coordinator is not None
        assert read_journal(data)[: len(journal)] == journal
        assert read_journal(data)[len(journal)]["generation"] == generation + 1
        assert (_epochs(second), _balances(second, accounts)) == want
        assert want[1] == balances and all(want[0][u] > e for u, e in epochs.items())
        assert second.coordinator.status()["control"]["error"] == ""
    finally:
        second.close()


def _restarted(data: Path, nodes: tuple[str, ...]) -> Coordinator:
    """A coordinator over ``nodes``' real hosts (in the replicated mode, their own folders)
    after one round: what a restarted cluster's coordinator does first."""
    hosts = {node: _host(data, node) for node in nodes}
    coordinator = Coordinator(
        data_dir=data, shards=2, partitions=1, ops=LocalOps(hosts), replication_factor=2,
        min_in_sync=2, control_acks=1,
    )  # fmt: skip
    assert coordinator.reconcile() == 0
    return coordinator


def _ran(data: Path) -> None:
    """A replicated cluster has run in ``data``, and ``data/control/`` is gone."""
    _cluster(data).start().close()
    shutil.rmtree(data / "control")


def test_a_coordinator_refuses_to_start_when_no_replica_answers_for_its_units(
    tmp_path: Path,
) -> None:
    """``<data>/control/`` and every node's replica deleted while the nodes still hold
    units: the coordinator does not start empty, and says why."""
    data = tmp_path / "data"
    _ran(data)
    for node in NODES:
        shutil.rmtree(data / "nodes" / node / "control")
    coordinator = _restarted(data, NODES)
    assert "with units on disk: ['n1', 'n2', 'n3']" in coordinator.control()["error"]
    assert coordinator.control()["rebuilding"] and not coordinator.healthy()
    assert not state_path(data).exists()


def test_a_coordinator_refuses_to_start_without_a_node_live_at_the_newest_save(
    tmp_path: Path,
) -> None:
    """Started again with only two of the three nodes after ``<data>/control/`` was
    deleted: the newest save may be on the third alone, so nothing is rebuilt and the
    coordinator names the missing node; with the third back, it starts."""
    data = tmp_path / "data"
    _ran(data)
    coordinator = _restarted(data, ("n1", "n2"))
    assert "['n3'] were live then and did not answer" in coordinator.control()["error"]
    assert not state_path(data).exists()
    again = _cluster(data).start()
    assert again.coordinator is not None
    assert again.coordinator.status()["control"]["error"] == ""
    again.close()
