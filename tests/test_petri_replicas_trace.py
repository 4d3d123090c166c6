"""Replicated runs replayed through the net, and the operator's picture of followers and ISR."""

from __future__ import annotations

import json
from typing import Any

from petri import (
    FollowerState,
    NetConfig,
    PetriModel,
    check_trace,
    events_from_jsonl,
    followers_of,
    initial_marking,
    is_fully_replicated,
    lost_shards,
    primary_of,
    render_dot,
)

CONFIG = NetConfig.small(nodes=3, account_shards=2, replication_factor=2)
MODEL = PetriModel(CONFIG)


def _follow(shard: str, node: str, epoch: int) -> list[dict[str, Any]]:
    return [
        {"event": name, "shard": shard, "node": node, "epoch": epoch}
        for name in ("replica_add", "catch_up", "join_isr")
    ]


# A run with two kills, as the coordinator logs it (each event carries the primary's
# epoch, which the coordinator adds): n1 dies and acct-0's in-sync follower on n2 is
# promoted; then n3, a follower of both units, dies and leaves the ISRs; n1 comes back
# and restores RF.
GOOD: list[dict[str, Any]] = [
    {"event": "coordinator_started", "level": "info"},
    {"event": "assign", "shard": "acct-0", "node": "n1", "epoch": 1},
    {"event": "assign", "shard": "acct-1", "node": "n2", "epoch": 1},
    *_follow("acct-0", "n2", 1),
    *_follow("acct-1", "n3", 1),
    {"event": "node_fail", "node": "n1", "timestamp": "2026-12-06T01:00:00Z"},
    {"event": "fence", "shard": "acct-0", "node": "n1", "epoch": 2},
    {"event": "promote", "shard": "acct-0", "node": "n2", "from_node": "n1", "epoch": 3},
    *_follow("acct-0", "n3", 3),
    {"event": "node_fail", "node": "n3"},
    {"event": "shrink_isr", "shard": "acct-0", "node": "n3", "epoch": 3},
    {"event": "shrink_isr", "shard": "acct-1", "node": "n3", "epoch": 1},
    {"event": "replica_drop", "shard": "acct-0", "node": "n3", "epoch": 3},
    {"event": "replica_drop", "shard": "acct-1", "node": "n3", "epoch": 1},
    {"event": "node_recover", "node": "n1"},
    *_follow("acct-0", "n1", 3),
    *_follow("acct-1", "n1", 1),
]


def test_a_replicated_run_with_two_kills_is_accepted() -> None:
    """Promotion, ISR shrinks, drops and re-adds of a real failover replay through the net."""
    result = check_trace(MODEL, GOOD, strict=False)
    assert result.ok, result.rejection
    assert result.steps_accepted == len(GOOD) - 1 and result.events_skipped == 1
    assert primary_of(result.final, "acct-0") == ("n2", 3)
    assert followers_of(result.final, "acct-0") == {"n1": FollowerState.IN_SYNC}
    assert is_fully_replicated(result.final, 2)


def test_promoting_a_follower_outside_the_isr_is_rejected() -> None:
    """A log claiming a promotion of a follower that never joined the ISR is the step reported."""
    without_join = [
        e for e in GOOD[:9] if not (e["event"] == "join_isr" and e["shard"] == "acct-0")
    ]
    events = [*without_join, GOOD[9], GOOD[10], GOOD[11]]
    result = check_trace(MODEL, events)
    assert result.rejection is not None
    assert result.rejection.event["event"] == "promote"
    assert result.rejection.index == len(events) - 1
    assert result.rejection.reason == "not_enabled"
    assert "shard_follower" in result.rejection.detail


def test_a_takeover_in_a_replicated_run_is_rejected() -> None:
    """A step of the other storage mode (takeover when replicated, promote when not) is refused."""
    takeover = {"event": "takeover", "shard": "acct-0", "node": "n3", "from_node": "n1"}
    result = check_trace(MODEL, [*GOOD[1:11], takeover])
    assert result.rejection is not None and result.rejection.index == 10
    assert result.rejection.reason == "unknown_transition"
    plain = PetriModel(NetConfig.small(nodes=3, account_shards=2))
    promote = {"event": "promote", "shard": "acct-0", "node": "n2"}
    result = check_trace(plain, [GOOD[1], promote])
    assert result.rejection is not None and result.rejection.index == 1


def test_a_loss_and_an_operator_restore_replay_from_json_lines() -> None:
    """A unit lost with its only in-sync copy is restored by an operator; the log replays."""
    events: list[dict[str, Any]] = [
        {"event": "assign", "shard": "acct-0", "node": "n1", "epoch": 1},
        {"event": "replica_add", "shard": "acct-0", "node": "n2", "epoch": 1},
        {"event": "node_fail", "node": "n1"},
        {"event": "fence", "shard": "acct-0", "node": "n1", "epoch": 2},
        {"event": "lose", "shard": "acct-0", "from_node": "n1"},
        {"event": "restore", "shard": "acct-0", "node": "n3", "epoch": 3},
        *_follow("acct-0", "n2", 3),
    ]
    text = "\n".join(json.dumps(e) for e in events)
    result = check_trace(MODEL, events_from_jsonl(text), strict=True)
    assert result.ok, result.rejection
    assert primary_of(result.final, "acct-0") == ("n3", 3) and lost_shards(result.final) == ()
    early = check_trace(MODEL, [*events[:4], events[5]])
    assert early.rejection is not None and early.rejection.event["event"] == "restore"


def test_the_picture_shows_followers_isr_and_lost_units() -> None:
    """The at-a-glance panel lists each node's follower copies, the in-sync sets and lost units."""
    shrunk = check_trace(MODEL, GOOD[:18]).final  # n3 died and left both ISRs
    dot = render_dot(MODEL, shrunk)
    assert "acct-0 (epoch 3, primary)" in dot and "acct-1 follower, catching up" in dot
    assert "acct-0: n2 + {}" in dot and "acct-1: n2 + {}" in dot
    assert '"place:shard_follower"' in dot and '"place:shard_lost"' in dot
    healed = render_dot(MODEL, check_trace(MODEL, GOOD).final)
    assert "acct-0 follower, in sync" in healed and "acct-1: n2 + {n1}" in healed
    m = MODEL.fire(initial_marking(CONFIG), "assign", {"shard": "acct-0", "node": "n1"})
    m = MODEL.fire(m, "replica_add", {"shard": "acct-0", "node": "n2"})
    assert "acct-0 follower, catching up (behind)" in render_dot(MODEL, m)
    m = MODEL.fire(m, "node_fail", {"node": "n1"})
    m = MODEL.fire(m, "fence", {"shard": "acct-0"})
    lost = render_dot(MODEL, MODEL.fire(m, "lose", {"shard": "acct-0"}))
    assert "acct-0: restore from a backup" in lost
