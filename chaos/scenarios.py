"""Seeded fault plans: the same scenario, duration and seed always plan the same faults.

A plan is a list of :class:`chaos.faults.Fault`, at times relative to the
start of the load. Which node a fault hits is a number (``pick``) resolved
against the candidates when it fires, so a replay hits the same victims as
long as the cluster evolves the same way.
"""

from __future__ import annotations

import random
from typing import Final

from chaos.faults import KINDS, Fault

__all__ = ["SCENARIOS", "plan"]

SCENARIOS: Final[dict[str, tuple[str, ...]]] = {
    "kill-workers": ("kill-host", "kill-gateway", "kill-coordinator"),
    "kill-nodes": ("kill-node",),
    "pause-nodes": ("pause-node",),
    "disk-full": ("disk-full",),
    "lose-disk": ("lose-disk",),
    "mixed": KINDS,
}
WARMUP_S: Final = 3.0  # load before the first fault
SETTLE_S: Final = 5.0  # no new fault this close to the end


def plan(scenario: str, *, seed: int, duration_s: float, every_s: float = 8.0) -> list[Fault]:
    """The faults of ``scenario``: one every ``every_s`` seconds on average (jittered
    ±30 %); ``mixed`` goes through every kind, in a seeded order, before repeating."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r} (one of: {', '.join(SCENARIOS)})")
    if every_s <= 0:
        raise ValueError("every_s must be positive")
    rng = random.Random(f"{scenario}:{seed}")
    kinds = SCENARIOS[scenario]
    order: list[str] = []
    faults: list[Fault] = []
    at = WARMUP_S
    while at < duration_s - SETTLE_S or not faults:
        if not order:
            order = list(kinds)
            rng.shuffle(order)
        kind = order.pop()
        hold = rng.uniform(3.0, 5.0) if kind in ("pause-node", "disk-full") else 0.0
        faults.append(Fault(at_s=round(at, 2), kind=kind, pick=rng.randrange(1 << 16), hold_s=hold))
        at += every_s * rng.uniform(0.7, 1.3)
    return faults
