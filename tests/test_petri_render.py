"""Graphviz rendering of the net and its marking, without requiring Graphviz."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from petri import Marking, NetConfig, PetriModel, initial_marking, render_dot, render_svg

CONFIG = NetConfig.small(nodes=2, account_shards=2, rating_shards=1)
MODEL = PetriModel(CONFIG)


def _marking() -> Marking:
    m = initial_marking(CONFIG)
    m = MODEL.fire(m, "assign", {"shard": "acct-0", "node": "n1"})
    m = MODEL.fire(m, "assign", {"shard": "acct-1", "node": "n2"})
    m = MODEL.fire(m, "bill_run_lock", {"shard": "acct-1"})
    m = MODEL.fire(m, "node_fail", {"node": "n1"})
    return MODEL.fire(m, "fence", {"shard": "acct-0"})


def test_dot_shows_places_transitions_and_tokens() -> None:
    """The DOT text names every place and transition and shows the marking's tokens."""
    dot = render_dot(MODEL, _marking())
    assert dot.startswith("digraph petribill {") and dot.rstrip().endswith("}")
    for place in ("node", "shard_free", "shard_owned", "shard_recovering", "lock_held"):
        assert f'"place:{place}"' in dot
    for transition in MODEL.transitions:
        assert f'"transition:{transition}"' in dot
    assert "acct-1 n2 1" in dot  # the owned token
    assert "acct-0 fenced from n1 at 1" in dot  # the operator's view of recovery
    assert "acct-1: bill_run" in dot
    assert "n1: dead" in dot and "fillcolor=tomato" in dot
    assert "rate-0" in dot


def test_enabled_transitions_are_highlighted() -> None:
    """Transitions enabled in the marking are green; takeover is, assign of a free shard is."""
    dot = render_dot(MODEL, _marking())
    line = next(x for x in dot.splitlines() if x.lstrip().startswith('"transition:takeover"'))
    assert "palegreen" in line
    line = next(x for x in dot.splitlines() if x.lstrip().startswith('"transition:leave"'))
    assert "gainsboro" in line


def test_without_graphviz_the_dot_text_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """render_svg falls back to writing DOT text, and says so, when dot is not installed."""
    monkeypatch.setattr(shutil, "which", lambda name: None)
    result = render_svg("digraph x {}\n", tmp_path / "net.svg")
    assert not result.rendered
    assert result.path == tmp_path / "net.dot"
    assert result.path.read_text() == "digraph x {}\n"
    assert "not found" in result.message


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_with_graphviz_an_svg_is_written(tmp_path: Path) -> None:
    """With Graphviz present, the picture is an SVG file."""
    result = render_svg(render_dot(MODEL, _marking()), tmp_path / "net.svg")
    assert result.rendered and "<svg" in result.path.read_text()
