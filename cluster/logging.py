"""structlog configuration: JSON lines in production, a readable console in a terminal.

Production means stderr is not a terminal (a service, a pipe, a log collector)
or ``PETRIBILL_LOG=json``; ``PETRIBILL_LOG=console`` forces the console
renderer. Log lines go to stderr so that a command's stdout stays data (the
``petribill rate`` JSON Lines, for instance).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

__all__ = ["configure_logging"]


def _wants_json() -> bool:
    choice = os.environ.get("PETRIBILL_LOG", "").strip().lower()
    if choice in ("json", "console"):
        return choice == "json"
    return not sys.stderr.isatty()


def configure_logging(level: int | str = "INFO") -> None:
    """Configure structlog and the standard ``logging`` root for the whole process.

    ``level`` is a ``logging`` level number or name (``"DEBUG"``, ``"INFO"``...).
    Events carry an ISO 8601 UTC timestamp and the level (bind ``component=``
    to name the emitter); in JSON mode exceptions become structured data,
    without local variables, which may hold secrets or whole batches. Safe
    to call again, e.g. to change the level.
    """
    number = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(number, int):
        raise ValueError(f"unknown log level: {level!r}")
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Any
    if _wants_json():
        transformer = structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        shared.append(structlog.processors.ExceptionRenderer(transformer))
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    # Libraries that log through the standard library (Ray, gRPC) go to stderr too,
    # at the same level, so one setting governs everything.
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=number, handlers=[handler], force=True)


def _stderr_logger(*_args: Any) -> structlog.PrintLogger:
    # Resolve sys.stderr at each use, not once: a test runner or a daemon may
    # swap it later, and a logger bound to a closed stream would raise.
    return structlog.PrintLogger(sys.stderr)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that always writes to the current ``sys.stderr``."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass
