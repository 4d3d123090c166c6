"""Reachability checking of the replicated net, and broken twins it must catch.

The state counts and times are printed (``pytest -s``) so that they can be
compared with docs/petri-net.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest
import snakes.nets as sn

from petri import NetConfig, PetriModel, initial_marking, verify
from petri.arcs import c, node_arc, t, v, x
from petri.net import add_transition, build_net
from petri.verify import VerificationReport, check_marking

#: The configuration the issue asks for: 3 nodes x 2 units x RF 2, both lock kinds.
THREE_BY_TWO = NetConfig.small(nodes=3, account_shards=2, replication_factor=2)
ONE_UNIT = NetConfig.small(nodes=3, account_shards=1, replication_factor=2)


def _show(name: str, report: VerificationReport, cpu_s: float | None = None) -> None:
    cpu = "" if cpu_s is None else f", {cpu_s:.2f} s CPU"
    print(
        f"\n{name}: {report.states} states, {report.edges} edges, "
        f"{report.healthy_states} healthy, {report.replicated_states} fully replicated, "
        f"{report.seconds:.2f} s{cpu}, symmetry={report.symmetry}"
    )


def _assert_ok(report: VerificationReport) -> None:
    assert report.complete, "the state space was not fully explored"
    assert not report.violations, "\n".join(
        f"{v.invariant}: {v.detail} via {v.path}" for v in report.violations[:5]
    )


def test_three_nodes_two_units_rf2_with_locks_hold_every_invariant() -> None:
    """3 nodes x 2 account shards x RF 2 with bill-run and migration locks, up to symmetry."""
    started = time.process_time()
    report = verify(PetriModel(THREE_BY_TWO), symmetry=True)
    _show("3 nodes x 2 account shards x RF 2, both locks", report, time.process_time() - started)
    _assert_ok(report)
    assert report.states > 10_000 and report.replicated_states > 0


def test_other_sizes_and_rf3_hold_every_invariant() -> None:
    """RF 3 on 3 and 4 nodes, and RF 2 on 4 nodes, are sound too."""
    for name, config in (
        (
            "3 nodes x 1 account shard x RF 3",
            NetConfig.small(nodes=3, account_shards=1, replication_factor=3),
        ),
        (
            "4 nodes x 1 account shard x RF 3",
            NetConfig.small(nodes=4, account_shards=1, replication_factor=3),
        ),
        (
            "4 nodes x 1 account shard x RF 2",
            NetConfig.small(nodes=4, account_shards=1, replication_factor=2),
        ),
    ):
        report = verify(PetriModel(config))
        _show(name, report)
        _assert_ok(report)


def test_symmetry_reduction_agrees_with_the_full_graph() -> None:
    """Reduced and full exploration of a replicated net reach the same verdict."""
    config = NetConfig.small(nodes=2, account_shards=2, replication_factor=2)
    full = verify(PetriModel(config), symmetry=False)
    reduced = verify(PetriModel(config), symmetry=True)
    _show("2 nodes x 2 account shards x RF 2, full", full)
    _show("2 nodes x 2 account shards x RF 2, reduced", reduced)
    _assert_ok(full)
    _assert_ok(reduced)
    assert reduced.states < full.states
    assert 0 < reduced.replicated_states < full.replicated_states


# --- broken twins -----------------------------------------------------------------------------


def _twin(config: NetConfig, *breakages: Callable[[Any], None]) -> PetriModel:
    net = build_net(config, name="broken")
    for breakage in breakages:
        breakage(net)
    return PetriModel(config, net)


def _replace(net: Any, name: str, **arcs: Any) -> None:
    net.remove_transition(name)
    add_transition(net, name, **arcs)


def _follower(state: Any, behind: Any) -> Any:
    return t(v("shard"), v("node"), state, behind)


def _promote_lagging(net: Any) -> None:
    # Promotion that takes any follower, in the ISR or not (Kafka's unclean election).
    _replace(
        net,
        "promote",
        guard="nstatus in ('alive', 'draining')",
        inputs=[
            ("shard_recovering", t(v("shard"), v("from_node"), v("fenced"))),
            ("shard_epoch", t(v("shard"), v("prev"))),
            ("node", sn.Test(t(v("node"), v("nstatus")))),
            ("shard_follower", _follower(v("state"), v("behind"))),
        ],
        outputs=[
            ("shard_owned", t(v("shard"), v("node"), x("prev + 1"))),
            ("shard_epoch", t(v("shard"), x("prev + 1"))),
        ],
    )


def _acked_skipping_dead(
    followers: Iterable[tuple[str, str, str, int]], nodes: Iterable[tuple[str, str]], shard: str
) -> list[tuple[str, str, str, int]]:
    status = {n: s for n, s in nodes}
    return [
        (s, n, st, 1 if s == shard and (st == "catching_up" or status[n] == "dead") else b)
        for s, n, st, b in followers
    ]


def _ack_without_shrink(net: Any) -> None:
    # The primary acknowledges without a dead in-sync follower that was never removed
    # from the ISR: that follower misses the batch but still counts as in sync.
    net.globals["acked_skipping_dead"] = _acked_skipping_dead
    _replace(
        net,
        "ack",
        inputs=[
            ("shard_owned", sn.Test(t(v("shard"), v("node"), v("epoch")))),
            ("shard_epoch", sn.Test(t(v("shard"), v("epoch")))),
            ("node", sn.Test(sn.Flush("nodes"))),
            ("shard_follower", sn.Flush("followers")),
        ],
        outputs=[("shard_follower", sn.Flush("acked_skipping_dead(followers, nodes, shard)"))],
    )


def _add_on_holder(net: Any) -> None:
    # A follower placed without looking at where the shard's copies are.
    _replace(
        net,
        "replica_add",
        guard="follower_count(followers, shard) < rf - 1",
        inputs=[
            ("shard_owned", sn.Test(t(v("shard"), v("primary"), v("epoch")))),
            ("node", sn.Test(node_arc("node", "alive"))),
            ("shard_follower", sn.Test(sn.Flush("followers"))),
        ],
        outputs=[("shard_follower", _follower(c("catching_up"), c(1)))],
    )


def _followers_only_at_assign(net: Any) -> None:
    # Followers are made with the unit and never again: after a follower or the whole
    # unit is lost, nothing brings the unit back to RF copies.
    net.remove_transition("replica_add")
    _replace(
        net,
        "assign",
        inputs=[
            ("shard_free", v("shard")),
            ("shard_epoch", t(v("shard"), v("prev"))),
            ("node", sn.Test(sn.MultiArc([node_arc("node", "alive"), node_arc("other", "alive")]))),
        ],
        outputs=[
            ("shard_owned", t(v("shard"), v("node"), x("prev + 1"))),
            ("shard_epoch", t(v("shard"), x("prev + 1"))),
            ("shard_follower", t(v("shard"), v("other"), c("catching_up"), c(1))),
        ],
    )


def _shrink_only_alive(net: Any) -> None:
    # Only a slow follower is dropped from the ISR, never one whose node died.
    _replace(
        net,
        "shrink_isr",
        inputs=[
            ("shard_owned", sn.Test(t(v("shard"), v("primary"), v("epoch")))),
            ("node", sn.Test(node_arc("node", "alive"))),
            ("shard_follower", _follower(c("in_sync"), v("behind"))),
        ],
        outputs=[("shard_follower", _follower(c("catching_up"), v("behind")))],
    )


def _takeover_kept(net: Any) -> None:
    # The unreplicated takeover left in: any alive node reopens the unit, with whatever
    # copy it has (none), instead of promoting an in-sync follower.
    add_transition(
        net,
        "takeover",
        inputs=[
            ("shard_recovering", t(v("shard"), v("from_node"), v("fenced"))),
            ("shard_epoch", t(v("shard"), v("prev"))),
            ("node", sn.Test(node_arc("node", "alive"))),
        ],
        outputs=[
            ("shard_owned", t(v("shard"), v("node"), x("prev + 1"))),
            ("shard_epoch", t(v("shard"), x("prev + 1"))),
        ],
    )


def _lose_with_isr(net: Any) -> None:
    # Giving up on a unit although an in-sync follower could have been promoted.
    _replace(
        net,
        "lose",
        inputs=[
            ("shard_recovering", t(v("shard"), v("from_node"), v("fenced"))),
            ("shard_follower", sn.Flush("followers")),
        ],
        outputs=[
            ("shard_lost", v("shard")),
            ("shard_follower", sn.Flush("without(followers, shard)")),
        ],
    )


def _lose_keeps_followers(net: Any) -> None:
    # A lost unit that keeps its followers: copies lacking acknowledged batches linger.
    _replace(
        net,
        "lose",
        guard="not promotable(followers, nodes, shard)",
        inputs=[
            ("shard_recovering", t(v("shard"), v("from_node"), v("fenced"))),
            ("node", sn.Test(sn.Flush("nodes"))),
            ("shard_follower", sn.Test(sn.Flush("followers"))),
        ],
        outputs=[("shard_lost", v("shard"))],
    )


def _join_while_behind(net: Any) -> None:
    # A follower joins the ISR without having caught up with the acknowledged batches.
    _replace(
        net,
        "join_isr",
        inputs=[
            ("shard_owned", sn.Test(t(v("shard"), v("primary"), v("epoch")))),
            ("node", sn.Test(node_arc("node", "alive"))),
            ("shard_follower", _follower(c("catching_up"), v("behind"))),
        ],
        outputs=[("shard_follower", _follower(c("in_sync"), v("behind")))],
    )


def _leave_with_followers(net: Any) -> None:
    # The unreplicated leave: a drained node goes although it still holds followers.
    _replace(
        net,
        "leave",
        guard="load(owned, node) == 0",
        inputs=[
            ("node", node_arc("node", "draining")),
            ("shard_owned", sn.Test(sn.Flush("owned"))),
        ],
        outputs=[("node", node_arc("node", "absent"))],
    )


def _zombie_ack(net: Any) -> None:
    # Acknowledgement keyed on the last primary the followers heard of, not on the
    # current owner and stored epoch: a fenced primary still gets batches acknowledged.
    _replace(
        net,
        "ack",
        inputs=[("shard_recovering", sn.Test(t(v("shard"), v("node"), v("epoch"))))],
    )


def _shrink_to_unknown_state(net: Any) -> None:
    # A follower leaving the ISR is put in a state no other rule knows.
    _replace(
        net,
        "shrink_isr",
        inputs=[
            ("shard_owned", sn.Test(t(v("shard"), v("primary"), v("epoch")))),
            ("shard_follower", _follower(c("in_sync"), v("behind"))),
        ],
        outputs=[("shard_follower", _follower(c("out_of_sync"), v("behind")))],
    )


TWINS: list[tuple[Callable[[Any], None], set[str]]] = [
    (_promote_lagging, {"promote_from_isr", "no_acked_loss"}),
    (_ack_without_shrink, {"acked_on_isr", "ack_waits_for_shrink", "no_acked_loss"}),
    (_add_on_holder, {"replicas_distinct"}),
    (_followers_only_at_assign, {"rf_restorable", "rf_self_healing"}),
    (_shrink_only_alive, {"isr_unblockable", "rf_self_healing"}),
    (_takeover_kept, {"promote_from_isr", "no_acked_loss"}),
    (_lose_with_isr, {"no_needless_loss"}),
    (_lose_keeps_followers, {"follower_has_primary"}),
    (_join_while_behind, {"acked_on_isr", "no_acked_loss"}),
    (_leave_with_followers, {"follower_in_cluster"}),
    (_zombie_ack, {"single_acker"}),
    (_shrink_to_unknown_state, {"follower_token"}),
]


@pytest.mark.parametrize(
    ("breakage", "caught_by"), TWINS, ids=[b.__name__.lstrip("_") for b, _ in TWINS]
)
def test_the_checker_catches_a_broken_twin(
    breakage: Callable[[Any], None], caught_by: set[str]
) -> None:
    """Each deliberately broken variant of the replicated net breaks the invariants written
    against its mistake, and only the twin does: the correct net passes the same check."""
    report = verify(_twin(ONE_UNIT, breakage), states_max=20_000)
    _show(f"broken twin {breakage.__name__}", report)
    assert not report.ok
    assert caught_by <= report.invariants_broken(), report.invariants_broken()


def test_the_correct_one_unit_net_passes_where_its_twins_fail() -> None:
    """The configuration the twins are checked on is itself sound."""
    report = verify(PetriModel(ONE_UNIT))
    _show("3 nodes x 1 account shard x RF 2", report)
    _assert_ok(report)


def test_a_lagging_promotion_replays_to_a_marking_with_a_lost_batch() -> None:
    """The counterexample for promoting a lagging follower replays with fire() on the twin."""
    twin = _twin(ONE_UNIT, _promote_lagging)
    report = verify(twin)
    violation = next(v for v in report.violations if v.invariant == "no_acked_loss")
    assert violation.path[-1][0] == "promote"
    marking = initial_marking(ONE_UNIT)
    for transition, binding in violation.path[:-1]:
        marking = twin.fire(marking, transition, {k: b for k, b in binding.items() if k != "epoch"})
    promoted = violation.path[-1][1]["node"]
    assert (str(promoted), 1) in {(n, behind) for _, n, _, behind in marking.followers()}
    assert check_marking(ONE_UNIT, marking) == []
