"""The console the CLI prints with for a person: every value whole, whatever the width.

Rich fits what it prints to the console's width: it wraps a line of text at a
space, and squeezes a table by wrapping, folding or cutting its cells with an
ellipsis. Output a person acts on (an id, a path, an amount, a reject detail)
must not depend on the terminal's width nor on ``COLUMNS``, and tests must not
either: CI has no terminal. So a :class:`WholeConsole` is at least as wide as
the terminal (or :data:`WIDTH_NOT_A_TERMINAL` in a file or pipe) and, for
each table or text it prints, as wide as that needs: a terminal that is too
narrow wraps the long lines itself, and nothing is lost.
"""

from __future__ import annotations

from typing import IO, Any, Final

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

__all__ = ["WIDTH_NOT_A_TERMINAL", "WholeConsole", "make_console"]

# Only the layout of things that fill the width (a rule, a progress bar) uses it.
WIDTH_NOT_A_TERMINAL: Final = 120
# Wider than anything printed: the room a table or a line is measured in.
_MEASURE_WIDTH: Final = 1_000_000


class WholeConsole(Console):
    """A rich console that never wraps, folds or cuts a table's cells or a line of text.

    It grows to the natural width of each table, string or :class:`Text`
    printed, and back; anything else (a rule, a progress display) gets the
    console's own width.
    """

    def print(self, *objects: Any, **kwargs: Any) -> None:
        needed = self._natural_width(objects, kwargs.get("sep", " "))
        if needed <= self.width:
            super().print(*objects, **kwargs)
            return
        width = self.width
        self.width = needed
        try:
            super().print(*objects, **kwargs)
        finally:
            self.width = width

    def _natural_width(self, objects: tuple[Any, ...], sep: str) -> int:
        options = self.options.update_width(_MEASURE_WIDTH)
        widths = []
        for thing in objects:
            if isinstance(thing, Table) and thing.title:
                # A title wraps to the table's width: the table grows for it instead.
                title = thing.title
                title_width = Measurement.get(self, options, title).maximum
                widths.append(max(Measurement.get(self, options, thing).maximum, title_width))
            elif isinstance(thing, str | Text | Table):
                widths.append(Measurement.get(self, options, thing).maximum)
        # Objects printed together share a line: at most the sum of their widths.
        return sum(widths) + len(sep) * max(len(widths) - 1, 0)


def make_console(*, stderr: bool = False, file: IO[str] | None = None) -> WholeConsole:
    """A :class:`WholeConsole` on stdout, stderr or ``file``.

    Emoji codes stay as written: ``:fire:`` in a notification's subject is text.
    """
    probe = Console(stderr=stderr, file=file)
    width = probe.width if probe.is_terminal else WIDTH_NOT_A_TERMINAL
    return WholeConsole(stderr=stderr, file=file, width=width, emoji=False)
