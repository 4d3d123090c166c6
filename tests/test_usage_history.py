"""The shared usage history behaves like copying a list on every append."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from billing.history import UsageHistory, appended


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 30), st.integers()), max_size=80),
    st.sampled_from([0, 1, 2, 5]),
)
def test_views_equal_copied_lists(steps: list[tuple[int, int]], history_max: int) -> None:
    """Appending to any earlier view (branching included) gives what appending to a copy of
    its list and trimming would, and no view ever changes what it shows."""
    views: list[Any] = [[]]
    models: list[list[int]] = [[]]
    for pick, value in steps:
        n = pick % len(views)
        model = [*models[n], value]
        if len(model) > 2 * history_max:
            model = model[-history_max:]
        views.append(appended(views[n], value, history_max))  # type: ignore[arg-type]
        models.append(model)
        for view, expected in zip(views, models, strict=True):
            assert list(view) == expected
            assert len(view) == len(expected)
            if expected:
                assert view[-1] == expected[-1] and view[0] == expected[0]
                assert view[-len(expected) :] == expected[-len(expected) :]


def test_a_plain_list_is_never_mutated() -> None:
    """A list history (a state fresh from storage) is copied, not appended to."""
    rows: list[Any] = [1, 2]
    view = appended(rows, 3, 50)
    assert rows == [1, 2] and list(view) == [1, 2, 3] and isinstance(view, UsageHistory)
