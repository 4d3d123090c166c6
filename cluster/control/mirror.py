"""Control replicas: the coordinator's state kept on every live node, and rebuilt from them.

Replicated mode only (docs/architecture.md, "Control replicas"). The saves the
coordinator commits to its own folder are also sent, with their generation and the
journal events the node has not acknowledged yet, to the host of every live node,
which keeps them in its own node folder (``actors.store.control_copy``; on the host's
``control_state`` thread, which no unit call can take). They go once per round of the
coordinator (and at once for a save made outside a round: an operator's drain, a
bill run's lock): the latest save of the round, with every event of it, in one call
per node (:meth:`ControlMirror.settle`), so a failover's dozens of transitions cost one
round trip, not dozens. The latest save counts as **durable** once ``acks_needed``
replicas on nodes other than the coordinator's own have it (``min_in_sync − 1``, at
least one: the units' rule, so the control state survives what the units survive, the
loss of any one disk). The coordinator waits for that at most ``CONTROL_ACK_WAIT_S``;
a paused or dead host is then skipped and the round noted short
(``control_replicas_short``), never waited for again while its call is in flight.

A coordinator that finds its own copy missing rebuilds it from the newest replica
(:class:`ControlRecovery`, :func:`choose_copy`): it never starts empty while a node
holds a replica or a unit, and refuses (:class:`ControlStateMissing`) when the nodes
that answer cannot prove they hold the newest durable save.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import structlog

from actors.store.control_copy import ControlCopy, ControlReplicaFenced
from cluster.control.state import parse_state
from petri import marking_from_json

__all__ = [
    "CONTROL_ACK_WAIT_S",
    "RECOVERY_WAIT_S",
    "ControlMirror",
    "ControlRecovery",
    "ControlReplicaOps",
    "ControlStateMissing",
    "choose_copy",
]

log = structlog.get_logger("petribill.coordinator")

#: How long the coordinator waits for the replica acknowledgements that make its latest
#: save durable. A host answers from a thread of its own in milliseconds (a few fsyncs);
#: only a paused, dead or starved host takes longer, and it is skipped after this, once.
CONTROL_ACK_WAIT_S: Final = 1.0
#: How long a coordinator without its own copy waits for every alive node's host to
#: answer before it decides from those that did (hosts start in a few seconds).
RECOVERY_WAIT_S: Final = 60.0
#: How many recent journal events are kept to send to a replica that is behind.
JOURNAL_TAIL_MAX: Final = 1_000


class ControlReplicaOps(Protocol):
    """What the coordinator needs to reach the nodes' control replicas."""

    def control_send(
        self, node: str, generation: int, state: bytes, events: list[dict[str, Any]]
    ) -> None:
        """Send a save to ``node``'s replica without waiting (see :meth:`control_answers`)."""
        ...

    def control_in_flight(self, node: str) -> bool:
        """Whether a save sent to ``node`` has not been answered yet."""
        ...

    def control_answers(
        self, nodes: Collection[str], needed: int, timeout_s: float
    ) -> dict[str, int | BaseException]:
        """Wait at most ``timeout_s`` until ``needed`` of the saves in flight to ``nodes``
        are answered; every answer come in since the last call (node -> the generation
        its replica holds, or the error)."""
        ...

    def control_copies(
        self, nodes: Collection[str], timeout_s: float
    ) -> dict[str, ControlCopy | BaseException]:
        """Ask ``nodes``' hosts for their replicas; the answers come in within
        ``timeout_s`` (a host that has not answered is asked no second time meanwhile)."""
        ...

    def control_local_node(self) -> str | None:
        """The node whose folder is on the coordinator's own disk (its replica proves
        nothing about that disk's loss), or None."""
        ...


class ControlStateMissing(RuntimeError):
    """Raised when the coordinator's own control state is missing and the nodes' replicas
    that answer cannot rebuild it: no replica while a node holds units, or the newest
    replica found may be older than a save held only by nodes that did not answer."""


def _live_nodes(copy: ControlCopy) -> set[str]:
    """The nodes alive (or draining) in the marking of ``copy``: those a save went to."""
    state = parse_state(copy.state, source=f"control replica of {copy.node}")
    if state.marking_json is None:
        return set()
    marking = marking_from_json(state.marking_json)
    return {node for node, status in marking.nodes() if status in ("alive", "draining")}


def choose_copy(
    copies: Mapping[str, ControlCopy],
    *,
    unanswered: Collection[str],
    acks_needed: int,
    local: str | None = None,
) -> ControlCopy | None:
    """The replica to rebuild the coordinator's copy from: the newest generation found.

    None when the cluster never ran (every node answered, none holds a replica or a
    unit). Raises :class:`ControlStateMissing` when it cannot be told: no replica found
    while a node holds units or a node did not answer, or ``acks_needed`` or more nodes
    that were live at the newest generation found (the coordinator's ``local`` node
    aside: its acknowledgements never counted) did not answer — a newer durable save
    may be held only by them.
    """
    found = sorted((c for c in copies.values() if c.generation > 0), key=lambda c: c.node)
    if not found:
        with_units = sorted(n for n, c in copies.items() if c.units)
        if with_units or unanswered:
            raise ControlStateMissing(
                "the coordinator's control state is missing and no node holds a control "
                f"replica (answered: {sorted(copies)}; with units on disk: {with_units}; "
                f"not answering: {sorted(unanswered)}): not started empty; restore "
                "<data>/control/ from a copy, or bring the missing nodes back"
            )
        return None
    newest = max(found, key=lambda c: c.generation)
    missing = sorted(_live_nodes(newest) - set(copies) - {local})
    if len(missing) >= acks_needed:
        held = {c.node: c.generation for c in found}
        raise ControlStateMissing(
            f"the coordinator's control state is missing; the newest control replica "
            f"answering is generation {newest.generation} on {newest.node} (replicas: "
            f"{held}), but {missing} were live then and did not answer: a newer save "
            f"(durable on {acks_needed} replica(s)) may be held only there; not started "
            "from a possibly older state"
        )
    return newest


@dataclass(frozen=True, slots=True)
class Decision:
    """What :meth:`ControlRecovery.step` concluded: nothing yet (``ready`` False), a
    cluster that never ran (``copy`` None), or the replica to rebuild from."""

    ready: bool
    copy: ControlCopy | None = None


class ControlRecovery:
    """Gathers the alive nodes' replicas over the coordinator's rounds and decides."""

    def __init__(
        self,
        ops: ControlReplicaOps,
        *,
        acks_needed: int,
        wait_s: float = RECOVERY_WAIT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ops = ops
        self._acks_needed = acks_needed
        self._clock = clock
        self._deadline = clock() + wait_s
        self._copies: dict[str, ControlCopy] = {}

    def step(self, alive: Collection[str], timeout_s: float = 0.5) -> Decision:
        """Ask the alive nodes not heard from yet; decide once all answered, or after the
        wait with those that did (:class:`ControlStateMissing` if they cannot tell)."""
        asked = [node for node in sorted(alive) if node not in self._copies]
        for node, answer in self._ops.control_copies(asked, timeout_s).items():
            if isinstance(answer, ControlCopy):
                self._copies[node] = answer
            else:
                log.warning("control_copy_unanswered", node=node, error=str(answer))
        unanswered = set(alive) - set(self._copies)
        if unanswered and self._clock() < self._deadline:
            return Decision(ready=False)
        local = self._ops.control_local_node()
        copy = choose_copy(
            self._copies, unanswered=unanswered, acks_needed=self._acks_needed, local=local
        )
        return Decision(ready=True, copy=copy)


class ControlMirror:
    """Takes the coordinator's saves to the live nodes' replicas, the latest at each settle,
    and says whether it is durable."""

    def __init__(
        self,
        ops: ControlReplicaOps,
        *,
        acks_needed: int,
        wait_s: float = CONTROL_ACK_WAIT_S,
    ) -> None:
        self._ops = ops
        self.acks_needed = acks_needed
        self._wait_s = wait_s
        self._tail: deque[dict[str, Any]] = deque(maxlen=JOURNAL_TAIL_MAX)
        self._latest: tuple[int, bytes] | None = None
        self._acked: dict[str, int] = {}  # node -> the generation its replica holds
        # node -> the newer generation its replica refused ours with: not this
        # coordinator's lineage (its control/ was restored from an older copy), so it is
        # neither sent to nor counted while it stays a target.
        self._ahead: dict[str, int] = {}
        self.durable_generation = 0
        self.short_saves = 0
        self._short = False

    def start_from(self, generation: int, state: bytes, tail: Sequence[dict[str, Any]]) -> None:
        """The save the coordinator starts from and its journal's last events (sent to
        replicas that are behind)."""
        self._latest = (generation, state)
        self._tail.extend(tail)

    def saved(self, generation: int, state: bytes, event: dict[str, Any] | None) -> None:
        """Note the save ``generation`` just committed (and its journal event); it goes
        to the replicas at the next :meth:`settle`."""
        if event is not None:
            self._tail.append(event)
        self._latest = (generation, state)

    def settle(self, targets: Collection[str]) -> bool:
        """Send the latest save to ``targets`` (the live nodes whose hosts answer) that are
        behind it with nothing in flight, and wait, at most ``wait_s``, until it is
        durable; whether it is. Never waits for a node whose earlier save is still in
        flight (a paused or dead host: waited for once, then skipped until it answers).
        A node that is no target any more is forgotten: when it comes back (perhaps with
        an empty disk) it is sent the latest save again, never counted on what it held."""
        self._collect((), 0, 0.0)
        for table in (self._acked, self._ahead):
            for node in [n for n in table if n not in targets]:
                del table[node]
        if self._latest is None:
            return True
        generation = self._latest[0]
        local = self._ops.control_local_node()
        sent = self._send(targets)
        if self.durable_generation >= generation:
            return True
        missing = self.acks_needed - self._acks(targets, local, generation)
        counted = [node for node in sent if node != local]
        if 0 < missing <= len(counted):  # else no wait could make it durable
            self._collect(counted, missing, self._wait_s)
        acks = self._acks(targets, local, generation)
        durable = acks >= self.acks_needed
        if durable:
            self.durable_generation = generation
            if self._short:
                log.info("control_replicas_durable", generation=generation, acks=acks)
        else:
            self.short_saves += 1
            if not self._short:  # said once per stretch, not at every save
                log.warning(
                    "control_replicas_short",
                    generation=generation,
                    acks=acks,
                    needed=self.acks_needed,
                    targets=sorted(targets),
                    behind=sorted(n for n in targets if n not in sent),
                )
        self._short = not durable
        return durable

    def _acks(self, targets: Collection[str], local: str | None, generation: int) -> int:
        """How many targets other than ``local`` hold ``generation`` (or newer)."""
        return sum(1 for n in targets if n != local and self._acked.get(n, 0) >= generation)

    def _send(self, targets: Collection[str]) -> list[str]:
        """Send the latest save to every target behind it with no save in flight."""
        if self._latest is None:
            return []
        generation, state = self._latest
        sent = []
        for node in sorted(targets):
            acked = self._acked.get(node, 0)
            if acked >= generation or node in self._ahead or self._ops.control_in_flight(node):
                continue
            events = [e for e in self._tail if int(e["generation"]) > acked]
            self._ops.control_send(node, generation, state, events)
            sent.append(node)
        return sent

    def _collect(self, nodes: Collection[str], needed: int, timeout_s: float) -> None:
        for node, answer in self._ops.control_answers(nodes, needed, timeout_s).items():
            if isinstance(answer, ControlReplicaFenced):
                log.error("control_replica_ahead", node=node, held=answer.held)
                self._ahead[node] = answer.held
                self._acked.pop(node, None)
            elif isinstance(answer, BaseException):
                log.info("control_save_failed", node=node, error=str(answer))
            else:
                self._acked[node] = max(self._acked.get(node, 0), answer)

    def status(self) -> dict[str, Any]:
        """For ``petribill status``: what each replica holds and the last durable save."""
        return {
            "acks_needed": self.acks_needed,
            "durable_generation": self.durable_generation,
            "short_saves": self.short_saves,  # settles that ended short
            "replicas": dict(sorted(self._acked.items())),
            "ahead": dict(sorted(self._ahead.items())),
        }
