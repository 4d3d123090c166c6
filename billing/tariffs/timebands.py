"""Time bands: which named band (peak, off-peak...) applies at a moment.

A band set has a time zone and a list of bands, each a set of weekdays and a
``[from, until)`` time of day; the first band that matches wins and the whole
week must be covered. Loading precomputes one band index per minute of the
week (10 080 entries), so the per-record question is "which local minute of the
week is it?".

Answering that with ``zoneinfo`` costs microseconds, so the fast path caches,
per 15-minute UTC bucket, the local minute-of-week at the bucket's start. Modern UTC
offsets are whole multiples of 15 minutes and change on 15-minute UTC
boundaries, so within a bucket the local clock moves in step with UTC; a bucket
where that does not hold (historic offsets such as -00:44:30) is not cached and
is answered the slow way, so the cache is exact for every zone. :meth:`TimeBands.band_at` is the
uncached reference the tests compare the cache against.

The band at the record's opening time prices the whole record; a call that
crosses from peak into off-peak is not split (a documented simplification).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final
from zoneinfo import ZoneInfo

__all__ = ["BUCKET_S", "DAYS", "DAY_S", "MINUTES_PER_WEEK", "Band", "TimeBands"]

DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MINUTES_PER_DAY: Final = 24 * 60
MINUTES_PER_WEEK: Final = 7 * MINUTES_PER_DAY
BUCKET_S: Final = 900
DAY_S: Final = 86_400
_BUCKET_MINUTES: Final = BUCKET_S // 60
# 1970-01-01, Unix day 0, was a Thursday: weekday 3 counting from Monday = 0.
_EPOCH_WEEK_MINUTE: Final = 3 * MINUTES_PER_DAY
# Bound on the per-band-set bucket cache: a year of buckets is 35 040 entries.
_BUCKETS_MAX: Final = 200_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Band:
    """A named band: weekdays (0 = Monday) and local minutes ``[from_minute, until_minute)``."""

    band_id: str
    days: frozenset[int]
    from_minute: int
    until_minute: int


def local_minute_of_week(zone: ZoneInfo, t_s: int) -> int:
    """Minutes since Monday 00:00 local time at Unix time ``t_s``: the slow, exact way."""
    local = datetime.fromtimestamp(t_s, UTC).astimezone(zone)
    return local.weekday() * MINUTES_PER_DAY + local.hour * 60 + local.minute


def _offset_s(zone: ZoneInfo, t_s: int) -> int:
    offset = datetime.fromtimestamp(t_s, UTC).astimezone(zone).utcoffset()
    return int(offset.total_seconds()) if offset is not None else 0


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class TimeBands:
    """A band set in one time zone, with the minute-of-week table built at load."""

    timebands_id: str
    timezone: str
    zone: ZoneInfo
    bands: tuple[Band, ...]
    band_ids: tuple[str, ...]
    # One band index per minute of the week, plus 15 minutes wrapped round so a
    # bucket that starts late on Sunday can be indexed without a modulo.
    week: tuple[int, ...]
    _bucket_starts: dict[int, int] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls, timebands_id: str, timezone: str, zone: ZoneInfo, bands: tuple[Band, ...]
    ) -> TimeBands:
        """Precompute the week table. Uncovered minutes are ``-1``; the loader rejects them."""
        unique_ids = tuple(dict.fromkeys(band.band_id for band in bands))
        week = [-1] * MINUTES_PER_WEEK
        for band in bands:
            index = unique_ids.index(band.band_id)
            for day in band.days:
                base = day * MINUTES_PER_DAY
                for minute in range(base + band.from_minute, base + band.until_minute):
                    if week[minute] == -1:
                        week[minute] = index
        week.extend(week[:_BUCKET_MINUTES])
        return cls(
            timebands_id=timebands_id,
            timezone=timezone,
            zone=zone,
            bands=bands,
            band_ids=unique_ids,
            week=tuple(week),
        )

    def first_gap(self) -> int | None:
        """The first minute of the week no band covers, if any."""
        for minute in range(MINUTES_PER_WEEK):
            if self.week[minute] == -1:
                return minute
        return None

    def band_at(self, t_s: int) -> int:
        """Band index at Unix time ``t_s``, computed with zoneinfo (reference path)."""
        return self.week[local_minute_of_week(self.zone, t_s)]

    def _bucket_start(self, first_s: int) -> int | None:
        """Local minute of the week at ``first_s``, the start of a 15-minute UTC bucket.

        ``None`` when the offset changes inside the bucket or is not a whole
        number of minutes: then the local minute does not move in step with
        UTC and each moment must be asked the slow way. Otherwise the local
        time is UTC plus the offset, so two zoneinfo questions answer it.
        """
        offset_s = _offset_s(self.zone, first_s)
        if offset_s % 60 or _offset_s(self.zone, first_s + BUCKET_S - 1) != offset_s:
            return None
        return ((first_s + offset_s) // 60 + _EPOCH_WEEK_MINUTE) % MINUTES_PER_WEEK

    def band_fast(self, t_s: int) -> int:
        """Band index at ``t_s`` through the 15-minute bucket cache; equals :meth:`band_at`."""
        bucket, within_s = divmod(t_s, BUCKET_S)
        start = self._bucket_starts.get(bucket)
        if start is None:
            start = self._bucket_start(bucket * BUCKET_S)
            if start is None:
                return self.band_at(t_s)
            if len(self._bucket_starts) >= _BUCKETS_MAX:
                self._bucket_starts.clear()
            self._bucket_starts[bucket] = start
        return self.week[start + within_s // 60]

    def day_minutes(self, day: int) -> tuple[int, ...] | None:
        """Band index of each UTC minute of Unix day ``day`` (``t_s // DAY_S``), 1440 of them.

        ``None`` when some bucket of the day has no per-minute answer (see
        :meth:`_bucket_start`). Entry ``(t_s % DAY_S) // 60`` equals
        :meth:`band_at` of ``t_s``; the batch fast path indexes it per record.
        """
        minutes: list[int] = []
        first_s = day * DAY_S
        for bucket_s in range(first_s, first_s + DAY_S, BUCKET_S):
            start = self._bucket_start(bucket_s)
            if start is None:
                return None
            minutes += self.week[start : start + _BUCKET_MINUTES]
        return tuple(minutes)


def format_minute_of_week(minute: int) -> str:
    """``"sun 03:00"``: how an uncovered moment is named in an error."""
    day, rest = divmod(minute, MINUTES_PER_DAY)
    return f"{DAYS[day]} {rest // 60:02d}:{rest % 60:02d}"
