"""Benchmark batch rating: 1,000,000 generated records through ``rate_batch``.

Generation (seeded, untimed) mimics a month of a German operator's traffic:
mostly voice and data, some SMS, a little content; mobile and national numbers
dominate, a tail goes abroad; call durations and data volumes are log-normal.
Each timed run rates all records with a fresh copy of the catalogue, so the
memo tables start cold every time (the honest case for a newly started
worker); the median of the runs is reported. The last line printed is JSON.

Garbage collection matters as much as the rating code: with a million live
records and results, CPython's cyclic GC re-scans them again and again and
roughly doubles the time. A rating worker should therefore run like this bench
does by default: ``gc.freeze()`` after loading the catalogue and a high
generation-0 threshold (``--gc tuned``). The JSON also reports one run with the
interpreter's default GC settings (``records_per_s_default_gc``), and how much
of the tuned runs the collector took (``gc_share``): even tuned, it visits
every new RatedRecord once, because the bench keeps all million results alive.

    .venv/bin/python bench/rating.py [--records 1000000] [--runs 3] [--seed 7]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from billing.rated import RatedRecord, RatingOutcome  # noqa: E402
from billing.rating import load_catalogue, rate, rate_batch  # noqa: E402
from billing.records import Service, UsageRecord  # noqa: E402

MONTH_START_S = 1_767_222_000  # 2026-01-01 00:00 Europe/Berlin
MONTH_S = 31 * 86_400
SUBSCRIBERS = 100_000

# (weight, prefix choices, digits after the prefix) for called numbers.
VOICE_DESTINATIONS = [
    (35, ["49151", "49152", "49157", "49160", "49162", "49170", "49171", "49176", "49177"], 7),
    (22, ["4940", "4989", "49221", "49211", "4969", "49711", "49351", "49341", "49511"], 7),
    (15, ["4930"], 8),
    (8, ["3361", "3371", "4477", "3934", "3491", "316", "4366", "4860", "3224"], 7),
    (5, ["1212", "1415", "7495", "9021", "38044"], 7),
    (4, ["8610", "9122", "5511", "6221", "2711", "8190", "1876"], 7),
    (1, ["49800", "49180", "49900"], 6),
    (0.1, ["8816"], 8),
    (0.05, ["99999"], 6),  # no destination: exercises the failure path
]
CONTENT_ITEMS = ["game-skyrunner", "game-coins-500", "news-day-pass", "ringtone-classic"]


HOUR_WEIGHTS = [1, 1, 1, 1, 1, 2, 4, 7, 9, 10, 10, 10, 10, 10, 10, 10, 10, 10, 9, 8, 7, 5, 3, 2]
NUMBERS_IN_POOL = 200_000  # distinct called numbers: people call the same numbers again


def _number_pool(rng: random.Random, table: list[tuple[float, list[str], int]]) -> list[str]:
    pool = []
    kinds = rng.choices(table, weights=[w for w, _, _ in table], k=NUMBERS_IN_POOL)
    for _, prefixes, digits in kinds:
        pool.append(rng.choice(prefixes) + str(rng.randrange(10**digits)).zfill(digits))
    return pool


def _opening_times(rng: random.Random, count: int) -> list[int]:
    # Busier by day: the hour of day follows a daytime-heavy profile.
    hours = rng.choices(range(24), weights=HOUR_WEIGHTS, k=count)
    return [
        MONTH_START_S + rng.randrange(31) * 86_400 + hour * 3600 + rng.randrange(3600)
        for hour in hours
    ]


def generate(count: int, seed: int) -> list[UsageRecord]:
    """``count`` mixed usage records, reproducible from ``seed``."""
    rng = random.Random(seed)
    numbers = _number_pool(rng, VOICE_DESTINATIONS)
    times = _opening_times(rng, count)
    subscribers = [f"49151{n:07d}" for n in range(SUBSCRIBERS)]
    records: list[UsageRecord] = []
    for n in range(count):
        msisdn = subscribers[rng.randrange(SUBSCRIBERS)]
        t_s = times[n]
        roaming = rng.random() < 0.03
        kind = rng.random()
        record_id = f"bench:{n}"
        if kind < 0.50:
            duration_s = min(7200, max(1, int(rng.lognormvariate(4.1, 1.1))))
            records.append(UsageRecord(
                record_id=record_id, service=Service.VOICE, served_msisdn=msisdn,
                record_opening_time_s=t_s, called_number=rng.choice(numbers),
                duration_s=duration_s, roaming=roaming,
            ))  # fmt: skip
        elif kind < 0.85:
            volume = int(rng.lognormvariate(14.5, 1.6))
            up = volume // 8
            draw = rng.random()
            rating_group = 10 if draw < 0.7 else 20 if draw < 0.9 else None
            records.append(UsageRecord(
                record_id=record_id, service=Service.DATA, served_msisdn=msisdn,
                record_opening_time_s=t_s, uplink_bytes=up, downlink_bytes=volume - up,
                rating_group=rating_group, roaming=roaming,
            ))  # fmt: skip
        elif kind < 0.97:
            records.append(UsageRecord(
                record_id=record_id, service=Service.SMS, served_msisdn=msisdn,
                record_opening_time_s=t_s, called_number=rng.choice(numbers),
                sms_count=1 if rng.random() < 0.95 else rng.randint(2, 4), roaming=roaming,
            ))  # fmt: skip
        else:
            records.append(UsageRecord(
                record_id=record_id, service=Service.CONTENT, served_msisdn=msisdn,
                record_opening_time_s=t_s, content_item_id=rng.choice(CONTENT_ITEMS),
            ))  # fmt: skip
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--catalogue", default=str(ROOT / "conf" / "tariffs"))
    args = parser.parse_args()

    started = time.perf_counter()
    records = generate(args.records, args.seed)
    business = {f"49151{n:07d}" for n in range(0, SUBSCRIBERS, 5)}  # one in five is business

    def plan_of(record: UsageRecord) -> str:
        return "business" if record.served_msisdn in business else "smart"

    print(f"generated {len(records):,} records in {time.perf_counter() - started:.1f} s (untimed)")
    print("mix:", dict(Counter(r.service.value for r in records)))

    gc_spent = {"s": 0.0, "began": 0.0}

    def gc_timer(phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            gc_spent["began"] = time.perf_counter()
        else:
            gc_spent["s"] += time.perf_counter() - gc_spent["began"]

    def timed_run(label: str) -> tuple[float, float, list[RatingOutcome]]:
        catalogue = load_catalogue(args.catalogue)  # fresh memo tables: a cold start each run
        gc.collect()
        gc_spent["s"] = 0.0
        gc.callbacks.append(gc_timer)
        began = time.perf_counter()
        result = rate_batch(records, catalogue, plan_of)
        elapsed = time.perf_counter() - began
        gc.callbacks.remove(gc_timer)
        print(
            f"{label}: {elapsed:.2f} s, {len(records) / elapsed:,.0f} records/s, "
            f"{gc_spent['s']:.2f} s of it in gc"
        )
        return elapsed, gc_spent["s"], result

    default_s, _, outcomes = timed_run("default gc")
    del outcomes
    gc.collect()
    gc.freeze()  # what a worker does once its catalogue and state are loaded
    gc.set_threshold(100_000, 50, 100)
    timings: list[float] = []
    gc_timings: list[float] = []
    for run in range(args.runs):
        elapsed, gc_s, outcomes = timed_run(f"tuned gc, run {run + 1}")
        timings.append(elapsed)
        gc_timings.append(gc_s)
    median_s = statistics.median(timings)
    catalogue = load_catalogue(args.catalogue)
    rated = sum(1 for o in outcomes if isinstance(o, RatedRecord))
    amount = sum(o.amount for o in outcomes if isinstance(o, RatedRecord))

    # Spot-check the fast path against the reference on a sample (untimed).
    sample = random.Random(args.seed).sample(range(len(records)), min(2000, len(records)))
    mismatches = sum(
        1 for i in sample if rate(records[i], catalogue, plan_of(records[i])) != outcomes[i]
    )
    print(f"rated {rated:,}, failed {len(outcomes) - rated:,}, total {amount / 1e6:,.2f} EUR, "
          f"reference mismatches in {len(sample)} sampled: {mismatches}")  # fmt: skip
    print(
        json.dumps(
            {
                "records": len(records),
                "runs": args.runs,
                "median_s": round(median_s, 3),
                "records_per_s": round(len(records) / median_s),
                "records_per_s_default_gc": round(len(records) / default_s),
                "us_per_record": round(median_s / len(records) * 1e6, 2),
                "gc_share": round(statistics.median(gc_timings) / median_s, 3),
                "rated": rated,
                "failed": len(outcomes) - rated,
                "reference_mismatches": mismatches,
            }
        )
    )


if __name__ == "__main__":
    main()
