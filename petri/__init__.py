"""The control-plane model: a SNAKES Petri net of nodes, shard ownership, locks and epochs.

Pure: no Ray, no IO (except :func:`render_svg`, which an operator command
calls). The coordinator builds a :class:`PetriModel` for its configuration,
fires a transition before it acts (:meth:`PetriModel.fire` raises
:class:`TransitionRefused` for a step the rules forbid), and persists the
marking with :func:`marking_to_json`. With ``NetConfig.replication_factor``
of 2 or more, shards have followers and failover promotes an in-sync one.
See docs/petri-net.md.
"""

from petri.config import FollowerState, LockKind, NetConfig, NodeStatus, ShardKind, ShardSpec
from petri.marking import (
    Marking,
    MarkingFormatError,
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
    node_status,
    owner_of,
    primary_of,
    shards_of,
)
from petri.model import Binding, PetriModel, Step, TransitionRefused
from petri.render import RenderResult, render_dot, render_svg
from petri.trace import TraceRejection, TraceResult, check_trace, events_from_jsonl
from petri.verify import VerificationReport, Violation, verify

__all__ = [
    "Binding",
    "FollowerState",
    "LockKind",
    "Marking",
    "MarkingFormatError",
    "NetConfig",
    "NodeStatus",
    "PetriModel",
    "RenderResult",
    "ShardKind",
    "ShardSpec",
    "Step",
    "TraceRejection",
    "TraceResult",
    "TransitionRefused",
    "VerificationReport",
    "Violation",
    "behind_of",
    "check_trace",
    "epoch_of",
    "events_from_jsonl",
    "followers_of",
    "followers_on",
    "initial_marking",
    "is_fully_replicated",
    "is_healthy",
    "isr_of",
    "lost_shards",
    "marking_from_json",
    "marking_to_json",
    "node_status",
    "owner_of",
    "primary_of",
    "render_dot",
    "render_svg",
    "shards_of",
    "verify",
]
