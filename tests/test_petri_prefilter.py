"""The arc pre-filter never changes what is enabled: PetriModel agrees with plain SNAKES."""

from __future__ import annotations

import random
from typing import Any

import pytest
import snakes.nets as sn

from petri import Marking, NetConfig, PetriModel, initial_marking
from petri.marking import PLACES


def _snakes_modes(model: PetriModel, marking: Marking) -> set[tuple[str, tuple[Any, ...]]]:
    """Every enabled mode, computed by SNAKES on the whole marking (no filter, no cache)."""
    net = model.snakes_net
    for place in net.place():
        place.tokens = sn.MultiSet(marking.places[PLACES.index(place.name)])
    found = set()
    for transition in net.transition():
        for mode in transition.modes():
            public = {k: mode[k] for k in mode if k in model.variables(transition.name)}
            found.add((transition.name, tuple(sorted(public.items()))))
    return found


@pytest.mark.parametrize(
    "config",
    [
        NetConfig.small(nodes=3, account_shards=2, rating_shards=1, initially_alive=2),
        NetConfig.small(nodes=3, account_shards=2, rating_shards=1, replication_factor=2),
        NetConfig.small(nodes=4, account_shards=1, replication_factor=3),
    ],
    ids=["rf1", "rf2", "rf3"],
)
def test_filtered_steps_equal_snakes_modes_on_random_walks(config: NetConfig) -> None:
    """Along random walks, the enabled transitions and their bindings (epoch aside, which
    PetriModel reports after the step) are exactly the modes SNAKES finds on whole places."""
    model = PetriModel(config)
    rng = random.Random(61)
    for _ in range(3):
        marking = initial_marking(config)
        for _ in range(150):
            enabled = model.enabled(marking, observations=True)
            ours = {
                (t, tuple(sorted((k, v) for k, v in b.items() if k != "epoch"))) for t, b in enabled
            }
            theirs = {
                (t, tuple((k, v) for k, v in b if k != "epoch"))
                for t, b in _snakes_modes(model, marking)
            }
            assert ours == theirs
            transition, binding = rng.choice(model.enabled(marking))
            marking = model.fire(marking, transition, binding)
