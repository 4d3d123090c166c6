"""Trace checking: the coordinator's structlog events replayed through the net."""

from __future__ import annotations

import json
from typing import Any

from petri import NetConfig, PetriModel, check_trace, events_from_jsonl, owner_of

CONFIG = NetConfig.small(nodes=3, account_shards=2, initially_alive=2)
MODEL = PetriModel(CONFIG)

# A run with a node kill: n1 dies, its shard is fenced and taken over by n2, then n3
# joins and takes a shard by rebalancing. Extra fields are what structlog adds.
GOOD: list[dict[str, Any]] = [
    {"event": "coordinator_started", "level": "info"},
    {"event": "assign", "shard": "acct-0", "node": "n1", "epoch": 1, "level": "info"},
    {"event": "assign", "shard": "acct-1", "node": "n2", "epoch": 1},
    {"event": "write", "shard": "acct-0", "node": "n1", "epoch": 1},
    {"event": "node_fail", "node": "n1", "timestamp": "2026-11-24T16:00:00Z"},
    {"event": "fence", "shard": "acct-0", "node": "n1", "epoch": 2},
    {"event": "takeover", "shard": "acct-0", "node": "n2", "from_node": "n1", "epoch": 3},
    {"event": "write", "shard": "acct-0", "node": "n2", "epoch": 3},
    {"event": "join", "node": "n3"},
    {"event": "migration_lock", "shard": "acct-1"},
    {"event": "rebalance", "shard": "acct-1", "from_node": "n2", "node": "n3", "epoch": 2},
    {"event": "migration_unlock", "shard": "acct-1"},
]


def test_a_run_with_a_kill_is_accepted() -> None:
    """Every transition event of a correct failover run is allowed; other events are skipped."""
    result = check_trace(MODEL, GOOD)
    assert result.ok, result.rejection
    assert result.steps_accepted == len(GOOD) - 1
    assert result.events_skipped == 1
    assert owner_of(result.final, "acct-0") == ("n2", 3)
    assert owner_of(result.final, "acct-1") == ("n3", 2)


def test_a_takeover_before_fencing_is_rejected_with_its_index() -> None:
    """Taking over a dead node's shard without fencing it first is the step reported."""
    events = [*GOOD[:5], GOOD[6], GOOD[5]]
    result = check_trace(MODEL, events)
    assert result.rejection is not None
    assert result.rejection.index == 5
    assert result.rejection.event["event"] == "takeover"
    assert result.rejection.reason == "not_enabled"
    assert "shard_recovering" in result.rejection.detail
    assert result.steps_accepted == 4
    assert "event #5" in str(result.rejection)


def test_a_zombie_write_is_rejected() -> None:
    """A write from the fenced owner's old epoch after takeover is not allowed."""
    zombie = {"event": "write", "shard": "acct-0", "node": "n1", "epoch": 1}
    result = check_trace(MODEL, [*GOOD[:7], zombie])
    assert result.rejection is not None and result.rejection.index == 7


def test_a_wrong_epoch_in_the_log_is_rejected() -> None:
    """An event claiming an epoch the model did not produce is rejected."""
    bad = {**GOOD[6], "epoch": 2}
    result = check_trace(MODEL, [*GOOD[:6], bad])
    assert result.rejection is not None and result.rejection.index == 6
    assert "disagrees" in result.rejection.detail


def test_strict_mode_rejects_unknown_events() -> None:
    """With strict=True an event that is not a transition is itself a rejection."""
    result = check_trace(MODEL, GOOD, strict=True)
    assert result.rejection is not None
    assert result.rejection.index == 0 and result.rejection.reason == "unknown_transition"


def test_events_are_read_from_structlog_json_lines() -> None:
    """JSON-lines logs parse into events; non-JSON lines (tracebacks...) are skipped."""
    text = "\n".join([json.dumps(e) for e in GOOD] + ["Traceback (most recent call last):"])
    assert events_from_jsonl(text) == GOOD
    assert check_trace(MODEL, events_from_jsonl(text)).ok
