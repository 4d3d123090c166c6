"""The one clock of the cluster's time-driven work: a :class:`Clock` is read, never assumed.

Everything that acts on its own time (a shard owner's duties, the coordinator's
scheduled bill runs and inspection, the handlers that stamp a request with "now")
reads time through a ``Clock`` it was handed, so a test or a chaos run can
freeze it or move it forward (:class:`ManualClock`) and a seed replays exactly.
In production the clock is :data:`SYSTEM_CLOCK`, Unix seconds from the system.

A cluster of several processes (Ray) can be started with an
:class:`AdjustableClock` instead (``[clock] adjustable = true``, for tests and
chaos runs only): every process adds the offset a test writes to
``<data_dir>/control/clock_offset_s`` (:func:`set_clock_offset`, forward only)
to the system time, so the whole cluster moves forward together.

A clock is any callable answering Unix seconds as a float, so ``time.time``
itself is one; the protocol only names the seam.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Protocol

from actors.store.files import write_atomic

__all__ = [
    "SYSTEM_CLOCK",
    "AdjustableClock",
    "Clock",
    "ManualClock",
    "clock_from_settings",
    "clock_offset_path",
    "set_clock_offset",
]


class Clock(Protocol):
    """Unix seconds now (a float, as ``time.time`` answers)."""

    def __call__(self) -> float: ...


SYSTEM_CLOCK: Final[Clock] = time.time


class ManualClock:
    """A clock that stands still until moved: :meth:`advance` or :meth:`set`.

    Thread-safe; time never goes back (:meth:`set` to an earlier time raises),
    since nothing in the cluster is written for a clock that does.
    """

    def __init__(self, start_s: float) -> None:
        self._lock = threading.Lock()
        self._now_s = float(start_s)

    def __call__(self) -> float:
        with self._lock:
            return self._now_s

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` (>= 0); returns the new time."""
        if seconds < 0:
            raise ValueError(f"a clock does not go back: advance({seconds})")
        with self._lock:
            self._now_s += seconds
            return self._now_s

    def set(self, at_s: float) -> None:
        """Move to ``at_s`` (not before the current time)."""
        with self._lock:
            if at_s < self._now_s:
                raise ValueError(f"a clock does not go back: {at_s} < {self._now_s}")
            self._now_s = float(at_s)


def clock_offset_path(data_dir: Path | str) -> Path:
    """The file an :class:`AdjustableClock` of the cluster in ``data_dir`` reads."""
    return Path(data_dir) / "control" / "clock_offset_s"


def _read_offset(path: Path) -> float:
    try:
        return float(path.read_text().strip() or 0)
    except FileNotFoundError:
        return 0.0


class AdjustableClock:
    """The system time plus the offset in ``path`` (seconds), read again at most every
    ``recheck_s``; it never goes back, whatever the file says (module docstring)."""

    def __init__(self, path: Path, *, recheck_s: float = 0.2) -> None:
        self._path = path
        self._recheck_s = recheck_s
        self._lock = threading.Lock()
        self._offset_s = _read_offset(path)
        self._checked = time.monotonic()
        self._last_s = 0.0

    def __call__(self) -> float:
        with self._lock:
            now = time.monotonic()
            if now - self._checked >= self._recheck_s:
                self._checked = now
                self._offset_s = _read_offset(self._path)
            self._last_s = max(self._last_s, time.time() + self._offset_s)
            return self._last_s


def set_clock_offset(data_dir: Path | str, offset_s: float) -> None:
    """Move the adjustable clock of the cluster in ``data_dir`` to system time plus
    ``offset_s`` (at least the offset already set: a clock does not go back). The first
    offset, written before the cluster starts, may be negative: a test whose data lies
    in the past sets the clock there, so its outcomes do not depend on the day it runs."""
    path = clock_offset_path(data_dir)
    current = _read_offset(path)
    if path.exists() and offset_s < current:
        raise ValueError(f"a clock does not go back: offset {offset_s} < {current}")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, repr(float(offset_s)).encode())


def clock_from_settings(settings: Mapping[str, Any]) -> Clock:
    """The clock a process of the cluster reads: the system's, or an adjustable one when
    the settings ask for it (``clock_adjustable``, from ``[clock] adjustable``)."""
    if settings.get("clock_adjustable"):
        return AdjustableClock(clock_offset_path(settings["data_dir"]))
    return SYSTEM_CLOCK
