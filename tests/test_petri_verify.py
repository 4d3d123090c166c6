"""Reachability checking of the control-plane net, and broken twins it must catch.

The state counts and times are printed (``pytest -s``) so that they can be
compared with docs/petri-net.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import snakes.nets as sn

from petri import LockKind, NetConfig, PetriModel, initial_marking, verify
from petri.net import add_transition, build_net
from petri.verify import VerificationReport, check_marking

SMALL = NetConfig.small(nodes=2, account_shards=2)


def _show(name: str, report: VerificationReport) -> None:
    print(
        f"\n{name}: {report.states} states, {report.edges} edges, "
        f"{report.healthy_states} healthy, {report.seconds:.2f} s, symmetry={report.symmetry}"
    )


def _assert_ok(report: VerificationReport) -> None:
    assert report.complete, "the state space was not fully explored"
    assert not report.violations, "\n".join(
        f"{v.invariant}: {v.detail} via {v.path}" for v in report.violations[:5]
    )


def test_small_config_holds_every_invariant_without_reduction() -> None:
    """2 nodes x 2 account shards, both lock kinds, explored without symmetry reduction."""
    report = verify(PetriModel(SMALL), symmetry=False)
    _show("2 nodes x 2 account shards, full", report)
    _assert_ok(report)
    assert report.states > 1_000 and report.healthy_states > 0


def test_three_nodes_three_shards_with_locks_hold_every_invariant() -> None:
    """3 nodes (one joins later) x 3 account shards with both lock kinds, up to symmetry."""
    config = NetConfig.small(nodes=3, account_shards=3, initially_alive=2)
    report = verify(PetriModel(config), symmetry=True)
    _show("3 nodes (2 alive, 1 absent) x 3 account shards, both locks", report)
    _assert_ok(report)
    assert report.states > 10_000


def test_mixed_shard_kinds_hold_every_invariant() -> None:
    """3 nodes x (1 account shard + 1 rating partition): kinds get their own lock rules."""
    config = NetConfig.small(nodes=3, account_shards=1, rating_shards=1, initially_alive=2)
    report = verify(PetriModel(config), symmetry=True)
    _show("3 nodes (2 alive, 1 absent) x (1 account + 1 rating), both locks", report)
    _assert_ok(report)


def test_symmetry_reduction_agrees_with_the_full_graph() -> None:
    """Reduced and full exploration reach the same verdict; the reduced graph is smaller."""
    config = NetConfig.small(nodes=2, account_shards=1, rating_shards=2)
    full = verify(PetriModel(config), symmetry=False)
    reduced = verify(PetriModel(config), symmetry=True)
    _show("2 nodes x (1 account + 2 rating), full", full)
    _show("2 nodes x (1 account + 2 rating), reduced", reduced)
    _assert_ok(full)
    _assert_ok(reduced)
    assert reduced.states < full.states
    assert reduced.healthy_states < full.healthy_states


# --- broken twins -----------------------------------------------------------------------------


def _twin(config: NetConfig, replace: Callable[[Any], None]) -> PetriModel:
    net = build_net(config, name="broken")
    replace(net)
    return PetriModel(config, net)


def _takeover_from_alive(net: Any) -> None:
    # The classic split-brain bug: "takeover" also accepts an owner that is alive.
    add_transition(
        net,
        "takeover_alive",
        inputs=[
            (
                "shard_owned",
                sn.Tuple([sn.Variable("shard"), sn.Variable("from_node"), sn.Variable("prev")]),
            ),
            ("shard_epoch", sn.Tuple([sn.Variable("shard"), sn.Variable("prev")])),
            (
                "node",
                sn.Test(
                    sn.MultiArc(
                        [
                            sn.Tuple([sn.Variable("from_node"), sn.Value("alive")]),
                            sn.Tuple([sn.Variable("node"), sn.Value("alive")]),
                        ]
                    )
                ),
            ),
        ],
        outputs=[
            (
                "shard_owned",
                sn.Tuple([sn.Variable("shard"), sn.Variable("node"), sn.Expression("prev + 1")]),
            ),
            ("shard_epoch", sn.Tuple([sn.Variable("shard"), sn.Expression("prev + 1")])),
        ],
    )


def _fence_without_bump(net: Any) -> None:
    # Fencing that forgets to persist a new epoch leaves the zombie's epoch valid.
    net.remove_transition("fence")
    add_transition(
        net,
        "fence",
        inputs=[
            (
                "shard_owned",
                sn.Tuple([sn.Variable("shard"), sn.Variable("node"), sn.Variable("prev")]),
            ),
            ("node", sn.Test(sn.Tuple([sn.Variable("node"), sn.Value("dead")]))),
        ],
        outputs=[
            (
                "shard_recovering",
                sn.Tuple([sn.Variable("shard"), sn.Variable("node"), sn.Variable("prev")]),
            ),
        ],
    )


def _leave_with_shards(net: Any) -> None:
    # "Drain" that lets the node go before its shards were migrated.
    net.remove_transition("leave")
    add_transition(
        net,
        "leave",
        inputs=[("node", sn.Tuple([sn.Variable("node"), sn.Value("draining")]))],
        outputs=[("node", sn.Tuple([sn.Variable("node"), sn.Value("absent")]))],
    )


def _migration_lock_ignores_bill_run(net: Any) -> None:
    # A migration lock that does not take the shard's lock token: overlaps a bill run.
    net.remove_transition("migration_lock")
    add_transition(
        net,
        "migration_lock",
        inputs=[("lock_free", sn.Test(sn.Variable("shard")))],
        outputs=[("lock_held", sn.Tuple([sn.Variable("shard"), sn.Value("migration")]))],
    )


def _no_node_recover(net: Any) -> None:
    # Without recovery, a cluster whose nodes all died stays dead forever.
    net.remove_transition("node_recover")


def _assign_without_claiming(net: Any) -> None:
    # An assignment that neither takes the shard out of "free" nor bumps its epoch:
    # two nodes can own the shard under the same epoch, and storage accepts both.
    net.remove_transition("assign")
    add_transition(
        net,
        "assign",
        inputs=[
            ("shard_free", sn.Test(sn.Variable("shard"))),
            ("shard_epoch", sn.Test(sn.Tuple([sn.Variable("shard"), sn.Variable("prev")]))),
            ("node", sn.Test(sn.Tuple([sn.Variable("node"), sn.Value("alive")]))),
        ],
        outputs=[
            (
                "shard_owned",
                sn.Tuple([sn.Variable("shard"), sn.Variable("node"), sn.Variable("prev")]),
            )
        ],
    )


NO_BILL_RUN = NetConfig.small(nodes=2, account_shards=2, lock_kinds=frozenset({LockKind.MIGRATION}))


@pytest.mark.parametrize(
    ("breakage", "config", "caught_by"),
    [
        (_takeover_from_alive, SMALL, {"handover_rule"}),
        (_fence_without_bump, SMALL, {"fenced_is_behind"}),
        (_leave_with_shards, SMALL, {"owner_in_cluster"}),
        (_migration_lock_ignores_bill_run, SMALL, {"lock_plus_holders"}),
        (_assign_without_claiming, SMALL, {"one_place_per_shard", "single_writer"}),
        # Bill-run locks can always cycle, so a dead cluster is not a dead marking there.
        (_no_node_recover, SMALL, {"healthy_reachable"}),
        (_no_node_recover, NO_BILL_RUN, {"no_dead_marking", "healthy_reachable"}),
    ],
    ids=[
        "takeover_from_alive",
        "fence_without_bump",
        "leave_with_shards",
        "migration_lock_ignores_bill_run",
        "assign_without_claiming",
        "no_node_recover",
        "no_node_recover_no_bill_run",
    ],
)
def test_the_checker_catches_a_broken_twin(
    breakage: Callable[[Any], None], config: NetConfig, caught_by: set[str]
) -> None:
    """Each deliberately broken variant of the net breaks the invariant written against it."""
    twin = _twin(config, breakage)
    # Some twins have infinite state spaces (tokens pile up); a bound keeps them quick,
    # and breadth-first search meets the violations early.
    report = verify(twin, states_max=3_000)
    _show(f"broken twin {breakage.__name__}", report)
    assert not report.ok
    assert caught_by <= report.invariants_broken(), report.invariants_broken()


def test_the_correct_net_passes_where_its_twins_fail() -> None:
    """The configuration without bill runs used for the dead-marking twin is itself sound."""
    _assert_ok(verify(PetriModel(NO_BILL_RUN)))


def test_counterexample_paths_replay_on_the_twin() -> None:
    """A violation's path, replayed with fire() from the initial marking, reaches a bad marking."""
    twin = _twin(SMALL, _fence_without_bump)
    report = verify(twin)
    violation = next(v for v in report.violations if v.invariant == "fenced_is_behind")
    marking = initial_marking(SMALL)
    for transition, binding in violation.path:
        marking = twin.fire(marking, transition, {k: v for k, v in binding.items() if k != "epoch"})
    assert any(name == "fenced_is_behind" for name, _ in check_marking(SMALL, marking))
