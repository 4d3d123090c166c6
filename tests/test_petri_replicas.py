"""The replicated control-plane net: followers, the in-sync set, failover, loss, persistence."""

from __future__ import annotations

import json
import random

import pytest

from petri import (
    FollowerState,
    Marking,
    NetConfig,
    PetriModel,
    TransitionRefused,
    behind_of,
    epoch_of,
    followers_of,
    followers_on,
    initial_marking,
    is_fully_replicated,
    is_healthy,
    isr_of,
    lost_shards,
    marking_from_json,
    marking_to_json,
    primary_of,
)
from petri.net import TRANSITION_NAMES
from petri.verify import check_marking

CONFIG = NetConfig.small(nodes=3, account_shards=2, rating_shards=1, replication_factor=2)
RF3 = NetConfig.small(nodes=4, account_shards=1, replication_factor=3)
IN_SYNC = FollowerState.IN_SYNC
CATCHING_UP = FollowerState.CATCHING_UP


@pytest.fixture(scope="module")
def model() -> PetriModel:
    return PetriModel(CONFIG)


def refused(model: PetriModel, marking: Marking, transition: str, **binding: str | int) -> str:
    """The reason ``transition`` is refused (fails the test if it is allowed)."""
    with pytest.raises(TransitionRefused) as caught:
        model.fire(marking, transition, binding)
    return caught.value.reason


def follow(model: PetriModel, m: Marking, shard: str, node: str) -> Marking:
    """Add a follower of ``shard`` on ``node`` and bring it into the ISR."""
    m = model.fire(m, "replica_add", {"shard": shard, "node": node})
    m = model.fire(m, "catch_up", {"shard": shard, "node": node})
    return model.fire(m, "join_isr", {"shard": shard, "node": node})


def replicated(model: PetriModel) -> Marking:
    """acct-0 on n1 with n2 in sync; acct-1 on n2 with n3 in sync; rate-0 on n3 with n1."""
    m = initial_marking(CONFIG)
    for shard, primary, follower in (("acct-0", "n1", "n2"), ("acct-1", "n2", "n3")):
        m = model.fire(m, "assign", {"shard": shard, "node": primary})
        m = follow(model, m, shard, follower)
    m = model.fire(m, "assign", {"shard": "rate-0", "node": "n3"})
    return follow(model, m, "rate-0", "n1")


def test_rf1_builds_the_unreplicated_net_and_rf2_replaces_takeover_by_promotion() -> None:
    """RF 1 keeps takeover and release; RF 2 has the replica transitions and neither of those."""
    plain = set(PetriModel(NetConfig.small(nodes=3, account_shards=1)).transitions)
    replica = set(PetriModel(CONFIG).transitions)
    assert {"takeover", "release"} <= plain and not {"takeover", "release"} & replica
    new = {"replica_add", "catch_up", "join_isr", "shrink_isr", "replica_drop", "ack"}
    assert new | {"promote", "lose", "restore"} <= replica
    assert not new & plain
    assert plain | replica == TRANSITION_NAMES  # what the trace checker knows of both modes
    with pytest.raises(ValueError):
        NetConfig.small(nodes=2, account_shards=1, replication_factor=0)


def test_a_follower_catches_up_then_joins_the_in_sync_set(model: PetriModel) -> None:
    """A new follower starts behind, catches up and joins the ISR: the shard is then replicated."""
    m = model.fire(initial_marking(CONFIG), "assign", {"shard": "acct-0", "node": "n1"})
    m = model.fire(m, "replica_add", {"shard": "acct-0", "node": "n2"})
    assert followers_of(m, "acct-0") == {"n2": CATCHING_UP}
    assert behind_of(m, "acct-0") == {"n2"} and isr_of(m, "acct-0") == frozenset()
    assert refused(model, m, "join_isr", shard="acct-0", node="n2") == "not_enabled"
    m = model.fire(m, "catch_up", {"shard": "acct-0", "node": "n2"})
    assert behind_of(m, "acct-0") == frozenset()
    m = model.fire(m, "join_isr", {"shard": "acct-0", "node": "n2"})
    assert followers_of(m, "acct-0") == {"n2": IN_SYNC} and isr_of(m, "acct-0") == {"n2"}
    assert followers_on(m, "n2") == {"acct-0": IN_SYNC}
    full = replicated(model)
    assert is_healthy(full) and is_fully_replicated(full, 2)
    assert not is_fully_replicated(m, 2)  # acct-1 and rate-0 are not even assigned


def test_a_follower_is_never_placed_on_a_node_holding_a_copy(model: PetriModel) -> None:
    """replica_add refuses the primary's node, a node with a follower, a dead node, a full shard."""
    m = model.fire(initial_marking(CONFIG), "assign", {"shard": "acct-0", "node": "n1"})
    assert refused(model, m, "replica_add", shard="acct-0", node="n1") == "not_enabled"
    m = model.fire(m, "replica_add", {"shard": "acct-0", "node": "n2"})
    assert refused(model, m, "replica_add", shard="acct-0", node="n2") == "not_enabled"
    assert refused(model, m, "replica_add", shard="acct-0", node="n3") == "not_enabled"  # RF-1
    rf3 = PetriModel(RF3)
    m = rf3.fire(initial_marking(RF3), "assign", {"shard": "acct-0", "node": "n1"})
    m = rf3.fire(m, "replica_add", {"shard": "acct-0", "node": "n2"})
    assert refused(rf3, m, "replica_add", shard="acct-0", node="n2") == "not_enabled"
    m = rf3.fire(m, "node_fail", {"node": "n3"})
    assert refused(rf3, m, "replica_add", shard="acct-0", node="n3") == "not_enabled"
    m = rf3.fire(m, "replica_add", {"shard": "acct-0", "node": "n4"})
    assert set(followers_of(m, "acct-0")) == {"n2", "n4"}


def test_an_acknowledged_batch_puts_catching_up_followers_behind(model: PetriModel) -> None:
    """A caught-up follower that misses an acknowledged batch must catch up again to join."""
    m = model.fire(initial_marking(CONFIG), "assign", {"shard": "acct-0", "node": "n1"})
    m = model.fire(m, "replica_add", {"shard": "acct-0", "node": "n2"})
    m = model.fire(m, "catch_up", {"shard": "acct-0", "node": "n2"})
    m = model.fire(m, "ack", {"shard": "acct-0", "node": "n1", "epoch": 1})
    assert behind_of(m, "acct-0") == {"n2"}
    assert refused(model, m, "join_isr", shard="acct-0", node="n2") == "not_enabled"
    m = model.fire(m, "catch_up", {"shard": "acct-0", "node": "n2"})
    m = model.fire(m, "join_isr", {"shard": "acct-0", "node": "n2"})
    after = model.fire(m, "ack", {"shard": "acct-0", "node": "n1"})
    assert after == m and behind_of(after, "acct-0") == frozenset()  # the ISR has the batch


def test_a_dead_in_sync_follower_blocks_acks_until_it_leaves_the_isr(model: PetriModel) -> None:
    """No batch is acknowledged without an in-sync follower: it must be shrunk away first."""
    m = model.fire(replicated(model), "node_fail", {"node": "n2"})
    with pytest.raises(TransitionRefused) as caught:
        model.fire(m, "ack", {"shard": "acct-0"})
    assert caught.value.reason == "not_enabled" and "isr_reachable" in caught.value.detail
    assert refused(model, m, "replica_drop", shard="acct-0", node="n2") == "not_enabled"
    m = model.fire(m, "shrink_isr", {"shard": "acct-0", "node": "n2"})
    m = model.fire(m, "ack", {"shard": "acct-0"})
    assert behind_of(m, "acct-0") == {"n2"}
    m = model.fire(m, "replica_drop", {"shard": "acct-0", "node": "n2"})
    m = follow(model, m, "acct-0", "n3")
    assert followers_of(m, "acct-0") == {"n3": IN_SYNC}


def test_a_dead_primary_is_fenced_then_an_in_sync_follower_is_promoted(model: PetriModel) -> None:
    """Failover promotes the in-sync follower at a new epoch; the old primary cannot write."""
    m = model.fire(replicated(model), "node_fail", {"node": "n1"})
    assert refused(model, m, "promote", shard="acct-0") == "not_enabled"  # fence first
    assert refused(model, m, "takeover", shard="acct-0", node="n3") == "unknown_transition"
    m = model.fire(m, "fence", {"shard": "acct-0"})
    assert primary_of(m, "acct-0") is None and epoch_of(m, "acct-0") == 2
    assert refused(model, m, "promote", shard="acct-0", node="n3") == "not_enabled"
    m = model.fire(m, "promote", {"shard": "acct-0", "node": "n2", "from_node": "n1", "epoch": 3})
    assert primary_of(m, "acct-0") == ("n2", 3) and followers_of(m, "acct-0") == {}
    with pytest.raises(TransitionRefused):
        model.fire(m, "write", {"shard": "acct-0", "node": "n1", "epoch": 1})
    m = follow(model, m, "acct-0", "n3")
    # rate-0's in-sync follower was on n1 too: it leaves the ISR, is dropped and replaced.
    assert not is_fully_replicated(m, 2)
    m = model.fire(m, "shrink_isr", {"shard": "rate-0", "node": "n1"})
    m = model.fire(m, "replica_drop", {"shard": "rate-0", "node": "n1"})
    m = follow(model, m, "rate-0", "n2")
    assert is_fully_replicated(m, 2)  # RF restored on the two nodes left


def test_a_unit_without_an_in_sync_follower_is_lost_until_restored(model: PetriModel) -> None:
    """A catching-up follower is never promoted; the unit is lost, and only restore reopens it."""
    m = model.fire(initial_marking(CONFIG), "assign", {"shard": "acct-0", "node": "n1"})
    m = model.fire(m, "replica_add", {"shard": "acct-0", "node": "n2"})
    m = model.fire(m, "catch_up", {"shard": "acct-0", "node": "n2"})
    m = model.fire(m, "node_fail", {"node": "n1"})
    m = model.fire(m, "fence", {"shard": "acct-0"})
    assert refused(model, m, "promote", shard="acct-0", node="n2") == "not_enabled"
    m = model.fire(m, "lose", {"shard": "acct-0", "from_node": "n1"})
    assert lost_shards(m) == ("acct-0",) and followers_of(m, "acct-0") == {}
    assert not is_healthy(m)
    assert refused(model, m, "assign", shard="acct-0", node="n2") == "not_enabled"
    assert refused(model, m, "replica_add", shard="acct-0", node="n3") == "not_enabled"
    m = model.fire(m, "restore", {"shard": "acct-0", "node": "n3"})
    assert primary_of(m, "acct-0") == ("n3", 3) and lost_shards(m) == ()
    m = follow(model, m, "acct-0", "n2")
    assert isr_of(m, "acct-0") == {"n2"}


def test_a_unit_with_an_alive_in_sync_follower_cannot_be_lost(model: PetriModel) -> None:
    """lose is refused while a follower could be promoted, even one on a draining node."""
    m = model.fire(replicated(model), "drain", {"node": "n2"})
    m = model.fire(m, "node_fail", {"node": "n1"})
    m = model.fire(m, "fence", {"shard": "acct-0"})
    with pytest.raises(TransitionRefused) as caught:
        model.fire(m, "lose", {"shard": "acct-0"})
    assert "promotable" in caught.value.detail
    m = model.fire(m, "promote", {"shard": "acct-0", "node": "n2"})
    assert primary_of(m, "acct-0") == ("n2", 3)


def test_drain_hands_primaries_to_in_sync_followers_and_moves_followers(
    model: PetriModel,
) -> None:
    """A draining node hands its primaries to in-sync followers, drops its followers, leaves."""
    m = model.fire(replicated(model), "drain", {"node": "n1"})
    assert refused(model, m, "migrate", shard="acct-0", node="n3") == "not_enabled"  # no lock
    m = model.fire(m, "migration_lock", {"shard": "acct-0"})
    assert refused(model, m, "migrate", shard="acct-0", node="n3") == "not_enabled"  # no copy
    m = model.fire(m, "migrate", {"shard": "acct-0", "from_node": "n1", "node": "n2"})
    m = model.fire(m, "migration_unlock", {"shard": "acct-0"})
    assert primary_of(m, "acct-0") == ("n2", 2) and followers_of(m, "acct-0") == {}
    m = follow(model, m, "acct-0", "n3")
    assert refused(model, m, "leave", node="n1") == "not_enabled"  # still follows rate-0
    m = model.fire(m, "shrink_isr", {"shard": "rate-0", "node": "n1"})
    m = model.fire(m, "replica_drop", {"shard": "rate-0", "node": "n1"})
    m = model.fire(m, "leave", {"node": "n1"})
    m = follow(model, m, "rate-0", "n2")
    assert is_fully_replicated(m, 2)


def test_rebalance_swaps_the_primary_with_an_in_sync_follower(model: PetriModel) -> None:
    """A primary moves to an in-sync follower and stays on as an in-sync follower itself."""
    m = initial_marking(CONFIG)
    for shard in ("acct-0", "acct-1"):
        m = model.fire(m, "assign", {"shard": shard, "node": "n1"})
        m = follow(model, m, shard, "n2")
    m = model.fire(m, "migration_lock", {"shard": "acct-0"})
    assert refused(model, m, "rebalance", shard="acct-0", node="n3") == "not_enabled"
    m = model.fire(m, "rebalance", {"shard": "acct-0", "from_node": "n1", "node": "n2"})
    assert primary_of(m, "acct-0") == ("n2", 2)
    assert followers_of(m, "acct-0") == {"n1": IN_SYNC}


def test_a_follower_moves_under_the_migration_lock(model: PetriModel) -> None:
    """An alive follower is dropped only while its shard's migration lock is held."""
    m = replicated(model)
    m = model.fire(m, "shrink_isr", {"shard": "acct-0", "node": "n2"})
    assert refused(model, m, "replica_drop", shard="acct-0", node="n2") == "not_enabled"
    m = model.fire(m, "migration_lock", {"shard": "acct-0"})
    m = model.fire(m, "replica_drop", {"shard": "acct-0", "node": "n2"})
    m = follow(model, m, "acct-0", "n3")
    m = model.fire(m, "migration_unlock", {"shard": "acct-0"})
    assert followers_of(m, "acct-0") == {"n3": IN_SYNC} and is_fully_replicated(m, 2)


def test_a_recovered_node_keeps_its_followers(model: PetriModel) -> None:
    """A node that comes back with its disk still holds its in-sync copies (nothing was acked
    without them), so a whole-cluster restart can promote them."""
    m = replicated(model)
    for node in ("n1", "n2", "n3"):
        m = model.fire(m, "node_fail", {"node": node})
    for shard in ("acct-0", "acct-1", "rate-0"):
        m = model.fire(m, "fence", {"shard": shard})
    for node in ("n1", "n2", "n3"):
        m = model.fire(m, "node_recover", {"node": node})
    assert isr_of(m, "acct-0") == {"n2"}
    for shard in ("acct-0", "acct-1", "rate-0"):
        m = model.fire(m, "promote", {"shard": shard})
    assert primary_of(m, "acct-0") == ("n2", 3) and lost_shards(m) == ()


def test_replicated_markings_round_trip_and_old_documents_still_load(model: PetriModel) -> None:
    """Follower and lost places persist; a document without them loads with them empty."""
    m = model.fire(replicated(model), "node_fail", {"node": "n3"})
    m = model.fire(m, "fence", {"shard": "rate-0"})
    m = model.fire(m, "promote", {"shard": "rate-0"})
    m = model.fire(m, "node_fail", {"node": "n2"})
    m = model.fire(m, "fence", {"shard": "acct-1"})
    m = model.fire(m, "lose", {"shard": "acct-1"})
    text = marking_to_json(m)
    places = json.loads(text)["places"]
    assert (
        places["shard_lost"] == ["acct-1"]
        and ["acct-0", "n2", "in_sync", 0] in places["shard_follower"]
    )
    assert marking_from_json(text) == m and marking_to_json(marking_from_json(text)) == text
    plain = json.loads(text)
    del plain["places"]["shard_follower"], plain["places"]["shard_lost"]
    old = marking_from_json(json.dumps(plain))
    assert old.followers() == () and old.lost() == ()
    fresh = marking_to_json(initial_marking(CONFIG))
    assert "shard_follower" not in fresh and "shard_lost" not in fresh


def test_random_walks_keep_the_replica_invariants(model: PetriModel) -> None:
    """Random enabled steps (acks included) with real, growing epochs never break an invariant."""
    rng = random.Random(20261206)
    for config in (CONFIG, RF3):
        walker = model if config is CONFIG else PetriModel(config)
        for _ in range(4):
            m = initial_marking(config)
            for _ in range(300):
                transition, binding = rng.choice(walker.enabled(m))
                m = walker.fire(m, transition, binding)
                assert check_marking(config, m) == [], (transition, binding)
                assert marking_from_json(marking_to_json(m)) == m
