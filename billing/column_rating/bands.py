"""The time band of each row: one gather from a table of the batch's days.

``TimeBands.day_minutes`` gives the band of each UTC minute of a Unix day, in
the band set's zone, DST included (the scalar batch path indexes the same
table per record). Here the tables of the days a batch touches are stacked
into one array and indexed with ``(day - first day) * 1440 + minute``.
A day without a per-minute table (a historic offset that is not whole
minutes, such as Monrovia's -0:44:30 before 1972) gives ``-1``: those rows go
to the scalar rater.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import NDArray

from billing.tariffs.timebands import DAY_S, TimeBands

__all__ = ["NO_TABLE", "BandDays"]

NO_TABLE: Final = -1
_MINUTES_PER_DAY: Final = DAY_S // 60
_DAYS_CACHED_MAX: Final = 2_048  # 6 MB of tables per band set
_DENSE_DAYS_MAX: Final = 1_024


class BandDays:
    """Per-day minute tables of one band set, memoised (they are pure functions of the day)."""

    __slots__ = ("bands", "days", "single")

    def __init__(self, bands: TimeBands) -> None:
        self.bands = bands
        # The loader checks that the week is covered, so one band is the answer everywhere.
        self.single = len(bands.band_ids) == 1
        self.days: dict[int, NDArray[np.int16]] = {}

    def _day(self, day: int) -> NDArray[np.int16]:
        table = self.days.get(day)
        if table is None:
            if len(self.days) >= _DAYS_CACHED_MAX:
                self.days.clear()
            minutes = self.bands.day_minutes(day)
            table = self.days[day] = (
                np.full(_MINUTES_PER_DAY, NO_TABLE, np.int16)
                if minutes is None
                else np.array(minutes, np.int16)
            )
        return table

    def band_of(self, day: NDArray[np.int64], minute: NDArray[np.int64]) -> NDArray[np.int16]:
        """Band index per row (``day = t // 86400``, ``minute = t % 86400 // 60``), or ``-1``."""
        if self.single:
            return np.zeros(len(day), np.int16)
        if len(day) == 0:
            return np.zeros(0, np.int16)
        first, last = int(day.min()), int(day.max())
        if last - first < _DENSE_DAYS_MAX:
            seen = np.zeros(last - first + 1, np.bool_)
            seen[day - first] = True
            stacked = np.zeros((last - first + 1, _MINUTES_PER_DAY), np.int16)
            for offset in np.flatnonzero(seen).tolist():
                stacked[offset] = self._day(first + offset)
            found: NDArray[np.int16] = stacked.ravel()[(day - first) * _MINUTES_PER_DAY + minute]
            return found
        distinct, position = np.unique(day, return_inverse=True)
        stacked = np.stack([self._day(d) for d in distinct.tolist()])
        spread: NDArray[np.int16] = stacked.ravel()[position * _MINUTES_PER_DAY + minute]
        return spread
