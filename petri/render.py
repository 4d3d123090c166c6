"""Graphviz pictures of the net and its current marking, for operators.

:func:`render_dot` draws two panels: the cluster at a glance (one box per
node, coloured by status, listing the shards it owns with their epochs and,
when replicated, the follower copies it holds; the shards being recovered or
lost, each replicated shard's in-sync set and the locks held), and the net itself (places with
their tokens, transitions with their arcs; enabled transitions highlighted,
test arcs dashed, flush arcs bold). :func:`render_svg` runs ``dot`` when it is
installed and otherwise writes the DOT text.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import snakes.nets as sn

from petri.config import FollowerState, NodeStatus
from petri.marking import REPLICA_PLACES, Marking, Token
from petri.model import PetriModel

__all__ = ["RenderResult", "render_dot", "render_svg"]

_TOKENS_SHOWN_MAX = 24

_STATUS_COLOUR = {
    NodeStatus.ALIVE.value: "palegreen",
    NodeStatus.DRAINING.value: "orange",
    NodeStatus.DEAD.value: "tomato",
    NodeStatus.ABSENT.value: "lightgrey",
}

_PLACE_GROUPS = (
    ("Nodes", ("node",)),
    ("Shards", ("shard_free", "shard_owned", "shard_recovering", "shard_epoch")),
    ("Locks", ("lock_free", "lock_held")),
    ("Replicas", ("shard_follower", "shard_lost")),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class RenderResult:
    """Where the picture went: an SVG if ``dot`` ran, else the DOT text."""

    path: Path
    rendered: bool
    message: str


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _token_text(token: Token) -> str:
    if isinstance(token, str):
        return token
    return " ".join(str(v) for v in token)


def _place_label(place: str, tokens: tuple[Token, ...]) -> str:
    lines = [place]
    lines += [_token_text(t) for t in tokens[:_TOKENS_SHOWN_MAX]]
    if len(tokens) > _TOKENS_SHOWN_MAX:
        lines.append(f"... {len(tokens) - _TOKENS_SHOWN_MAX} more")
    return "\n".join(lines)


def _follower_line(shard: str, state: str, behind: int) -> str:
    text = "in sync" if state == FollowerState.IN_SYNC else "catching up"
    return f"{shard} follower, {text}" + (" (behind)" if behind else "")


def _overview(marking: Marking, *, replicated: bool) -> list[str]:
    lines = ["  subgraph cluster_overview {", '    label="cluster at a glance"; style=rounded;']
    held: dict[str, list[str]] = {}
    for shard, node, epoch in marking.owned():
        suffix = ", primary" if replicated else ""
        held.setdefault(node, []).append(f"{shard} (epoch {epoch}{suffix})")
    for shard, node, state, behind in marking.followers():
        held.setdefault(node, []).append(_follower_line(shard, state, behind))
    for node, status in marking.nodes():
        label = "\n".join([f"{node}: {status}", *held.get(node, [])])
        colour = _STATUS_COLOUR.get(status, "white")
        lines.append(
            f"    {_quote('view:' + node)} [shape=box, style=filled, "
            f"fillcolor={colour}, label={_quote(label)}];"
        )
    recovering = [f"{s} fenced from {n} at {e}" for s, n, e in marking.recovering()]
    free = list(marking.free_shards())
    locks = [f"{s}: {k}" for s, k in marking.locks_held()]
    lost = [f"{s}: restore from a backup" for s in marking.lost()]
    isr = _in_sync_sets(marking) if replicated else []
    for title, items, colour in (
        ("recovering", recovering, "gold"),
        ("lost", lost, "tomato"),
        ("unassigned", free, "lightblue"),
        ("in-sync sets", isr, "palegreen"),
        ("locks held", locks, "plum"),
    ):
        if items:
            label = "\n".join([title, *items])
            lines.append(
                f"    {_quote('view:' + title)} [shape=note, style=filled, "
                f"fillcolor={colour}, label={_quote(label)}];"
            )
    lines.append("  }")
    return lines


def _in_sync_sets(marking: Marking) -> list[str]:
    """One line per owned shard: its primary and in-sync followers (the copies an ack waits for)."""
    isr: dict[str, list[str]] = {}
    for shard, node, state, _ in marking.followers():
        if state == FollowerState.IN_SYNC:
            isr.setdefault(shard, []).append(node)
    return [
        f"{shard}: {node} + {{{', '.join(sorted(isr.get(shard, [])))}}}"
        for shard, node, _ in marking.owned()
    ]


def _arc_style(label: Any) -> str:
    if isinstance(label, sn.Test):
        return "style=dashed"
    if isinstance(label, sn.Flush):
        return "style=bold"
    return "style=solid"


def render_dot(model: PetriModel, marking: Marking) -> str:
    """DOT text of the net with ``marking``'s tokens and enabled transitions."""
    enabled = {t for t, _ in model.enabled(marking, observations=True)}
    lines = [
        "digraph petribill {",
        "  rankdir=LR; compound=true;",
        '  node [fontname="Helvetica", fontsize=10]; edge [fontname="Helvetica", fontsize=8];',
    ]
    replicated = model.config.replicated
    lines += _overview(marking, replicated=replicated)
    for title, places in _PLACE_GROUPS:
        if not replicated and set(places) <= REPLICA_PLACES:
            continue
        lines.append(f"  subgraph cluster_{title.lower()} {{")
        lines.append(f"    label={_quote(title)}; style=dotted;")
        for place in places:
            tokens = marking.tokens(place)
            fill = "lightyellow" if tokens else "white"
            lines.append(
                f"    {_quote('place:' + place)} [shape=ellipse, style=filled, "
                f"fillcolor={fill}, label={_quote(_place_label(place, tokens))}];"
            )
        lines.append("  }")
    net = model.snakes_net
    for name in model.transitions:
        transition = net.transition(name)
        fill = "palegreen" if name in enabled else "gainsboro"
        guard = str(transition.guard)
        label = name if guard == "True" else f"{name}\n[{guard}]"
        lines.append(
            f"  {_quote('transition:' + name)} [shape=box, style=filled, "
            f"fillcolor={fill}, label={_quote(label)}];"
        )
        for place, arc in transition.input():
            lines.append(
                f"  {_quote('place:' + place.name)} -> {_quote('transition:' + name)} "
                f"[label={_quote(str(arc))}, {_arc_style(arc)}];"
            )
        for place, arc in transition.output():
            lines.append(
                f"  {_quote('transition:' + name)} -> {_quote('place:' + place.name)} "
                f"[label={_quote(str(arc))}, {_arc_style(arc)}];"
            )
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_svg(dot_text: str, path: Path | str, *, timeout_s: float = 30.0) -> RenderResult:
    """Write an SVG of ``dot_text`` at ``path`` with Graphviz, or the DOT text if absent.

    Without the ``dot`` program the DOT text goes to ``path`` with a ``.dot``
    suffix and the result says so; a ``dot`` failure raises
    ``subprocess.CalledProcessError``.
    """
    target = Path(path)
    dot = shutil.which("dot")
    if dot is None:
        fallback = target.with_suffix(".dot")
        fallback.write_text(dot_text, encoding="utf-8")
        return RenderResult(
            path=fallback,
            rendered=False,
            message=f"Graphviz 'dot' not found; wrote DOT text to {fallback}",
        )
    subprocess.run(
        [dot, "-Tsvg", "-o", str(target)],
        input=dot_text.encode("utf-8"),
        check=True,
        timeout=timeout_s,
    )
    return RenderResult(path=target, rendered=True, message=f"wrote {target}")
