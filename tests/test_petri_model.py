"""The pure control-plane API: enabled, fire, refusals, queries and the persisted marking."""

from __future__ import annotations

import random

import pytest

from petri import (
    Marking,
    MarkingFormatError,
    NetConfig,
    NodeStatus,
    PetriModel,
    ShardKind,
    ShardSpec,
    TransitionRefused,
    epoch_of,
    initial_marking,
    is_healthy,
    marking_from_json,
    marking_to_json,
    node_status,
    owner_of,
    shards_of,
)
from petri.verify import check_marking

CONFIG = NetConfig.small(nodes=3, account_shards=2, rating_shards=1, initially_alive=2)


@pytest.fixture(scope="module")
def model() -> PetriModel:
    return PetriModel(CONFIG)


def assigned(model: PetriModel) -> Marking:
    """acct-0 and rate-0 on n1, acct-1 on n2; n3 absent."""
    m = initial_marking(CONFIG)
    m = model.fire(m, "assign", {"shard": "acct-0", "node": "n1"})
    m = model.fire(m, "assign", {"shard": "rate-0", "node": "n1"})
    return model.fire(m, "assign", {"shard": "acct-1", "node": "n2"})


def test_initial_marking_offers_assignment_to_alive_nodes_only(model: PetriModel) -> None:
    """A fresh cluster can assign each shard to each alive node, but not to an absent one."""
    enabled = model.enabled(initial_marking(CONFIG))
    assigns = {(b["shard"], b["node"]) for t, b in enabled if t == "assign"}
    assert assigns == {(s, n) for s in CONFIG.shard_ids for n in ("n1", "n2")}
    assert ("join", {"node": "n3"}) in enabled
    assert all(t != "write" for t, _ in enabled)


def test_assign_bumps_the_epoch_and_records_the_owner(model: PetriModel) -> None:
    """Assigning a shard gives it an owner under a new, larger epoch."""
    m = assigned(model)
    assert owner_of(m, "acct-0") == ("n1", 1)
    assert epoch_of(m, "acct-0") == 1
    assert shards_of(m, "n1") == ("acct-0", "rate-0")
    assert is_healthy(m)
    assert not is_healthy(initial_marking(CONFIG))


def test_failover_fences_then_takes_over_with_growing_epochs(model: PetriModel) -> None:
    """A dead node's shard is fenced (epoch bumped) and then taken over (bumped again)."""
    m = model.fire(assigned(model), "node_fail", {"node": "n1"})
    assert node_status(m, "n1") is NodeStatus.DEAD
    with pytest.raises(TransitionRefused) as refused:
        model.fire(m, "takeover", {"shard": "acct-0", "node": "n2"})
    assert refused.value.reason == "not_enabled"
    assert "shard_recovering" in refused.value.detail
    m = model.fire(m, "fence", {"shard": "acct-0"})
    assert owner_of(m, "acct-0") is None and epoch_of(m, "acct-0") == 2
    m = model.fire(m, "takeover", {"shard": "acct-0", "node": "n2", "from_node": "n1", "epoch": 3})
    assert owner_of(m, "acct-0") == ("n2", 3)


def test_a_fenced_owner_cannot_write(model: PetriModel) -> None:
    """After fencing, storage refuses the old owner's epoch; the new owner's is accepted."""
    m = model.fire(assigned(model), "node_fail", {"node": "n1"})
    m = model.fire(m, "fence", {"shard": "acct-0"})
    with pytest.raises(TransitionRefused):
        model.fire(m, "write", {"shard": "acct-0", "node": "n1", "epoch": 1})
    m = model.fire(m, "takeover", {"shard": "acct-0", "node": "n2"})
    with pytest.raises(TransitionRefused):
        model.fire(m, "write", {"shard": "acct-0", "node": "n1", "epoch": 1})
    assert model.fire(m, "write", {"shard": "acct-0", "node": "n2", "epoch": 3}) == m


def test_takeover_from_an_alive_owner_is_refused(model: PetriModel) -> None:
    """No transition moves a shard away from an alive owner without the migration lock."""
    m = assigned(model)
    for transition in ("fence", "takeover", "migrate", "rebalance"):
        with pytest.raises(TransitionRefused):
            model.fire(m, transition, {"shard": "acct-0", "node": "n2"})


def test_drain_migrates_under_the_lock_and_a_bill_run_blocks_it(model: PetriModel) -> None:
    """A draining node keeps its shards until each migrates; a bill run holds migration off."""
    m = model.fire(assigned(model), "drain", {"node": "n1"})
    with pytest.raises(TransitionRefused):
        model.fire(m, "leave", {"node": "n1"})
    with pytest.raises(TransitionRefused):
        model.fire(m, "release", {"shard": "acct-0"})
    with pytest.raises(TransitionRefused):
        model.fire(m, "migrate", {"shard": "acct-0", "node": "n2"})
    m = model.fire(m, "bill_run_lock", {"shard": "acct-0"})
    with pytest.raises(TransitionRefused):
        model.fire(m, "migration_lock", {"shard": "acct-0"})
    m = model.fire(m, "bill_run_unlock", {"shard": "acct-0"})
    for shard in ("acct-0", "rate-0"):
        m = model.fire(m, "migration_lock", {"shard": shard})
        m = model.fire(m, "migrate", {"shard": shard, "from_node": "n1", "node": "n2"})
        m = model.fire(m, "migration_unlock", {"shard": shard})
    assert shards_of(m, "n2") == ("acct-0", "acct-1", "rate-0")
    m = model.fire(m, "leave", {"node": "n1"})
    assert node_status(m, "n1") is NodeStatus.ABSENT
    assert is_healthy(m)


def test_rating_partitions_take_no_bill_run_lock(model: PetriModel) -> None:
    """A bill run closes accounts, so only account shards can take its lock."""
    m = assigned(model)
    with pytest.raises(TransitionRefused) as refused:
        model.fire(m, "bill_run_lock", {"shard": "rate-0"})
    assert "guard" in refused.value.detail
    model.fire(m, "migration_lock", {"shard": "rate-0"})


def test_join_then_rebalance_moves_a_shard_to_the_new_node(model: PetriModel) -> None:
    """A joined node receives a shard from a node holding at least two more."""
    m = model.fire(assigned(model), "join", {"node": "n3"})
    m = model.fire(m, "migration_lock", {"shard": "acct-1"})
    with pytest.raises(TransitionRefused):  # n2 holds 1 shard, n3 holds 0: balanced enough.
        model.fire(m, "rebalance", {"shard": "acct-1", "node": "n3"})
    m = model.fire(m, "migration_unlock", {"shard": "acct-1"})
    m = model.fire(m, "migration_lock", {"shard": "acct-0"})
    m = model.fire(m, "rebalance", {"shard": "acct-0", "from_node": "n1", "node": "n3"})
    assert owner_of(m, "acct-0") == ("n3", 2)
    assert shards_of(m, "n1") == ("rate-0",)


def test_a_dead_node_recovers_only_after_its_shards_are_fenced(model: PetriModel) -> None:
    """A node coming back never resumes an epoch: its shards are fenced first."""
    m = model.fire(assigned(model), "node_fail", {"node": "n2"})
    with pytest.raises(TransitionRefused):
        model.fire(m, "node_recover", {"node": "n2"})
    m = model.fire(m, "fence", {"shard": "acct-1"})
    m = model.fire(m, "node_recover", {"node": "n2"})
    assert node_status(m, "n2") is NodeStatus.ALIVE and shards_of(m, "n2") == ()


def test_refusals_say_why(model: PetriModel) -> None:
    """Unknown names, unknown variables, ambiguity and disabled steps are distinct refusals."""
    m = initial_marking(CONFIG)
    cases: list[tuple[str, dict[str, str | int], str]] = [
        ("explode", {}, "unknown_transition"),
        ("assign", {"shard": "acct-0", "colour": "red"}, "unknown_variable"),
        ("assign", {"shard": "acct-0"}, "ambiguous"),
        ("assign", {"shard": "acct-0", "node": "n3"}, "not_enabled"),
        ("assign", {"shard": "acct-0", "node": "n1", "epoch": 7}, "not_enabled"),
    ]
    for transition, binding, reason in cases:
        with pytest.raises(TransitionRefused) as refused:
            model.fire(m, transition, binding)
        assert refused.value.reason == reason, refused.value
        assert refused.value.transition == transition


def test_marking_json_round_trips(model: PetriModel) -> None:
    """The persisted marking reloads to an equal marking after any sequence of steps."""
    m = model.fire(assigned(model), "node_fail", {"node": "n1"})
    m = model.fire(m, "fence", {"shard": "acct-0"})
    m = model.fire(m, "bill_run_lock", {"shard": "acct-1"})
    text = marking_to_json(m)
    assert marking_from_json(text) == m
    assert marking_to_json(marking_from_json(text)) == text


@pytest.mark.parametrize(
    "text",
    ["not json", "[]", '{"format": "other"}', '{"format": "petribill.marking/1", "places": {}}'],
)
def test_malformed_markings_are_rejected(text: str) -> None:
    """Loading anything but a persisted marking raises MarkingFormatError."""
    with pytest.raises(MarkingFormatError):
        marking_from_json(text)


def test_configuration_is_validated() -> None:
    """Repeated ids and unknown initial nodes are configuration errors."""
    with pytest.raises(ValueError):
        NetConfig(nodes=("n1", "n1"), shards=())
    with pytest.raises(ValueError):
        NetConfig(nodes=("n1",), shards=(ShardSpec(shard_id="a"), ShardSpec(shard_id="a")))
    with pytest.raises(ValueError):
        NetConfig(nodes=("n1",), shards=(), initial_nodes=frozenset({"n9"}))
    config = NetConfig(nodes=("n1",), shards=(ShardSpec(shard_id="r", kind=ShardKind.RATING),))
    assert config.alive_at_start == {"n1"}


def test_random_walks_keep_the_marking_invariants(model: PetriModel) -> None:
    """Firing random enabled steps with real, growing epochs never breaks an invariant."""
    rng = random.Random(20261124)
    for _ in range(5):
        m = initial_marking(CONFIG)
        for _ in range(300):
            transition, binding = rng.choice(model.enabled(m))
            m = model.fire(m, transition, binding)
            assert check_marking(CONFIG, m) == [], (transition, binding)
            assert marking_from_json(marking_to_json(m)) == m
