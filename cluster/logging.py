"""structlog configuration: JSON lines in production, a readable console in a terminal.

Production means stderr is not a terminal (a service, a pipe, a log collector)
or ``PETRIBILL_LOG=json``; ``PETRIBILL_LOG=console`` forces the console
renderer. Log lines go to stderr so that a command's stdout stays data (the
``petribill rate`` JSON Lines, for instance).

Every process of a cluster (the coordinator, each host and gateway, the CLI's
``up``) also writes JSON lines to its own file in ``<data>/logs/`` (rotated:
:data:`LOG_FILE_BYTES_MAX` per file, :data:`LOG_FILES_KEPT` old files), so an
operator finds an error id of an INTERNAL answer with ``grep`` in one folder.
Tracebacks never show local variables there or on stderr: they may hold a
request, a token or a whole batch.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, Final

import structlog

__all__ = [
    "LOG_FILES_KEPT",
    "LOG_FILE_BYTES_MAX",
    "configure_logging",
    "log_file",
    "logs_dir",
    "process_logging",
]

#: Size of one log file before it is rotated, and how many rotated files are kept.
LOG_FILE_BYTES_MAX: Final = 20 * 1024 * 1024
LOG_FILES_KEPT: Final = 5


def _wants_json() -> bool:
    choice = os.environ.get("PETRIBILL_LOG", "").strip().lower()
    if choice in ("json", "console"):
        return choice == "json"
    return not sys.stderr.isatty()


def log_file(log_dir: Path | str, process: str) -> Path:
    """The log file of ``process`` (``coordinator``, ``host-n0``, ``gateway-n0``, ``up``)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in process)[:80]
    return Path(log_dir) / f"{safe}.log"


def logs_dir(data_dir: Path | str) -> Path:
    """Where every process of the cluster of ``data_dir`` writes its log file."""
    return Path(data_dir) / "logs"


def process_logging(settings: Mapping[str, Any], process: str) -> Callable[[], None]:
    """The logging set-up of a cluster process (a picklable call for its actor's
    constructor): JSON lines into ``<data>/logs/<process>.log``, at ``settings``'
    ``log_level`` (default INFO)."""
    return partial(
        configure_logging,
        str(settings.get("log_level", "INFO")),
        log_dir=logs_dir(settings["data_dir"]),
        process=process,
    )


def configure_logging(
    level: int | str = "INFO", *, log_dir: Path | str | None = None, process: str = ""
) -> None:
    """Configure structlog and the standard ``logging`` root for the whole process.

    ``level`` is a ``logging`` level number or name (``"DEBUG"``, ``"INFO"``...).
    Events carry an ISO 8601 UTC timestamp and the level (bind ``component=``
    to name the emitter); in JSON mode exceptions become structured data,
    without local variables, which may hold secrets or whole batches. With
    ``log_dir``, every event is also a JSON line in :func:`log_file` of
    ``process`` (the folder is made if needed). Safe to call again, e.g. to
    change the level.
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
        renderer = _json_renderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(),
            exception_formatter=structlog.dev.RichTracebackFormatter(show_locals=False),
        )
    file_handler = None
    if log_dir is not None:
        path = log_file(log_dir, process or "process")
        path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=LOG_FILE_BYTES_MAX, backupCount=LOG_FILES_KEPT, encoding="utf-8"
        )
        file_handler.setFormatter(_JsonRecordFormatter(process))
        renderer = _Tee(renderer, file_handler, process)
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
    handlers: list[logging.Handler] = [handler]
    if file_handler is not None:
        handlers.append(file_handler)
    logging.basicConfig(level=number, handlers=handlers, force=True)


def _json_renderer() -> Any:
    transformer = structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
    exceptions = structlog.processors.ExceptionRenderer(transformer)
    render = structlog.processors.JSONRenderer()

    def json_renderer(logger: Any, name: str, event_dict: Any) -> str:
        return str(render(logger, name, exceptions(logger, name, event_dict)))

    return json_renderer


class _Tee:
    """The last processor: writes the event as a JSON line to the process's file, and
    returns the rendering for stderr."""

    def __init__(self, renderer: Any, handler: logging.Handler, process: str) -> None:
        self._renderer = renderer
        self._handler = handler
        self._process = process
        self._json = _json_renderer()

    def __call__(self, logger: Any, name: str, event_dict: Any) -> Any:
        line = self._json(logger, name, {**event_dict, "process": self._process})
        self._handler.handle(logging.makeLogRecord({"msg": line, "petribill_json": True}))
        return self._renderer(logger, name, event_dict)


class _JsonRecordFormatter(logging.Formatter):
    """Standard ``logging`` records (Ray, gRPC) as JSON lines like structlog's events."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self._process = process

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "petribill_json", False):
            return record.getMessage()  # rendered by _Tee already
        event: dict[str, Any] = {
            "event": record.getMessage(),
            "logger": record.name,
            "level": record.levelname.lower(),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "process": self._process,
        }
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str)


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
