"""Benchmark rating: 1,000,000 generated records, vectorised over columns and scalar.

Generation (seeded, untimed) mimics a month of a German operator's traffic:
mostly voice and data, some SMS, a little content; mobile and national numbers
dominate, a tail goes abroad; call durations and data volumes are log-normal.

Two paths rate the same records with the same plan per subscriber:

* **vectorised** (``billing.column_rating.rate_columns``): the records as one
  Arrow batch (``billing.columns.USAGE_SCHEMA``) cut into batches of
  ``--batch-records`` rows, the plan id of each row as a dictionary column
  (what a partition's directory gives). This is the figure ``records_per_s``.
  Building the batch from ``UsageRecord`` objects is timed apart
  (``columns_build_s``): the bulk path receives Arrow IPC, so that cost is not
  on its hot path. A sweep over batch sizes and the fixed cost of one call
  (a one-row batch) show how the rate depends on the batch.
* **scalar** (``billing.rating.rate_batch``): the memoised per-record fast
  path, kept as the baseline (``records_per_s_scalar``); its plan lookup is a
  set probe per record inside the timing, as before.

Each timed run uses a fresh copy of the catalogue, so memo tables start cold
(the honest case for a newly started worker); medians of ``--runs`` runs are
reported. Garbage collection is set as the hosts run it: ``gc.freeze()`` after
loading and ``gc.set_threshold(100_000, 50, 100)``; the scalar path is also
run once with the interpreter's default GC settings
(``records_per_s_scalar_default_gc``), since with a million live results the
collector roughly doubles its time. A sample of rows is checked field for field
against the scalar reference (``reference_mismatches``). ``--profile`` prints
a cProfile of one vectorised run. The last line printed is JSON.

    .venv/bin/python bench/rating.py [--records 1000000] [--runs 3] [--batch-records 8192]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from billing.column_rating import RatedColumns, RatedRows, rate_columns  # noqa: E402
from billing.columns import batch_to_records, records_to_batch  # noqa: E402
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


def _plan_column(batch: pa.RecordBatch) -> pa.Array:
    """Each row's plan id, as a partition's directory would give it: one in five is business."""
    business = pa.array([f"49151{n:07d}" for n in range(0, SUBSCRIBERS, 5)])
    is_business = pc.is_in(batch.column("served_msisdn"), value_set=business)
    return pc.if_else(is_business, "business", "smart").dictionary_encode()


def _vectorised_run(
    catalogue_path: str, batches: list[tuple[pa.RecordBatch, pa.Array]]
) -> tuple[float, list[RatedColumns]]:
    catalogue = load_catalogue(catalogue_path)  # fresh tables and memos: a cold start each run
    gc.collect()
    began = time.perf_counter()
    rated = [rate_columns(batch, catalogue, plans) for batch, plans in batches]
    return time.perf_counter() - began, rated


def _cut(
    batch: pa.RecordBatch, plans: pa.Array, rows: int
) -> list[tuple[pa.RecordBatch, pa.Array]]:
    return [(batch.slice(at, rows), plans.slice(at, rows)) for at in range(0, batch.num_rows, rows)]


def _check_sample(
    batch: pa.RecordBatch,
    plans: pa.Array,
    rated: pa.RecordBatch,
    catalogue_path: str,
    seed: int,
) -> int:
    """Rows of a random sample where the vectorised outcome differs from the scalar reference.

    Compared twice: every field (a second rating of the sample with tiers),
    and the timed run's own amount and reject reason.
    """
    catalogue = load_catalogue(catalogue_path)
    sample = sorted(random.Random(seed).sample(range(batch.num_rows), min(2000, batch.num_rows)))
    taken = pa.array(sample)
    sub_batch, sub_plans = batch.take(taken), plans.take(taken)
    records = batch_to_records(sub_batch)
    plan_ids = sub_plans.to_pylist()
    expected = [rate(r, catalogue, p) for r, p in zip(records, plan_ids, strict=True)]
    full = rate_columns(sub_batch, catalogue, sub_plans, tiers=True).batch
    got = RatedRows(sub_batch, full, catalogue)
    timed = rated.take(taken)
    amounts = timed.column("amount").to_pylist()
    reasons = timed.column("reject_reason").to_pylist()
    mismatches = 0
    for at, (mine, reference) in enumerate(zip(got, expected, strict=True)):
        in_run = (
            (amounts[at], reasons[at]) == (reference.amount, None)
            if isinstance(reference, RatedRecord)
            else reasons[at] == reference.reason.value
        )
        mismatches += mine != reference or not in_run
    return mismatches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--batch-records", type=int, default=8192)
    parser.add_argument("--catalogue", default=str(ROOT / "conf" / "tariffs"))
    parser.add_argument("--profile", action="store_true", help="cProfile one vectorised run")
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

    def scalar_run(label: str) -> tuple[float, float, list[RatingOutcome]]:
        catalogue = load_catalogue(args.catalogue)  # fresh memo tables: a cold start each run
        gc.collect()
        gc_spent["s"] = 0.0
        gc.callbacks.append(gc_timer)
        began = time.perf_counter()
        result = rate_batch(records, catalogue, plan_of)
        elapsed = time.perf_counter() - began
        gc.callbacks.remove(gc_timer)
        print(
            f"scalar, {label}: {elapsed:.2f} s, {len(records) / elapsed:,.0f} records/s, "
            f"{gc_spent['s']:.2f} s of it in gc"
        )
        return elapsed, gc_spent["s"], result

    # ---- scalar: the baseline ----
    default_s, _, outcomes = scalar_run("default gc")
    del outcomes
    gc.collect()
    gc.freeze()  # what a worker does once its catalogue and state are loaded
    gc.set_threshold(100_000, 50, 100)
    scalar_timings: list[float] = []
    gc_timings: list[float] = []
    for run in range(args.runs):
        elapsed, gc_s, outcomes = scalar_run(f"tuned gc, run {run + 1}")
        scalar_timings.append(elapsed)
        gc_timings.append(gc_s)
        del outcomes
    scalar_median_s = statistics.median(scalar_timings)
    gc.collect()

    # ---- columns from Python objects: off the bulk path, measured apart ----
    build_timings = []
    for _ in range(args.runs):
        began = time.perf_counter()
        batch = records_to_batch(records)
        build_timings.append(time.perf_counter() - began)
    build_s = statistics.median(build_timings)
    began = time.perf_counter()
    plans = _plan_column(batch)
    plan_column_s = time.perf_counter() - began
    print(
        f"columns from {len(records):,} UsageRecords: {build_s:.2f} s "
        f"({len(records) / build_s:,.0f} records/s); plan column {plan_column_s * 1e3:.0f} ms"
    )
    # ---- vectorised ----
    batches = _cut(batch, plans, args.batch_records)
    timings: list[float] = []
    for run in range(args.runs):
        elapsed, rated = _vectorised_run(args.catalogue, batches)
        timings.append(elapsed)
        print(
            f"vectorised, {args.batch_records:,}-row batches, run {run + 1}: {elapsed:.3f} s, "
            f"{batch.num_rows / elapsed:,.0f} records/s"
        )
    median_s = statistics.median(timings)
    scalar_rows: Counter[str] = Counter()
    for part in rated:
        scalar_rows.update(part.scalar_rows)
    keys = max(part.keys for part in rated)
    rated_batch = pa.Table.from_batches([part.batch for part in rated]).combine_chunks()
    rated_batch = rated_batch.to_batches()[0]

    by_batch: dict[str, int] = {}
    for rows in (1_000, 8_192, 65_536, batch.num_rows):
        sizes = [_vectorised_run(args.catalogue, _cut(batch, plans, rows))[0] for _ in range(3)]
        by_batch[str(rows)] = round(batch.num_rows / statistics.median(sizes))
    print("vectorised records/s by batch rows (median of 3):", by_batch)
    # The fixed cost of a call: one-row batches on a warm catalogue (keys already decided).
    warm = load_catalogue(args.catalogue)
    rate_columns(batch.slice(0, 2000), warm, plans.slice(0, 2000))
    one_row = _cut(batch.slice(0, 2000), plans.slice(0, 2000), 1)
    fixed_timings = []
    for _ in range(3):
        began = time.perf_counter()
        for part, part_plans in one_row:
            rate_columns(part, warm, part_plans)
        fixed_timings.append((time.perf_counter() - began) / len(one_row))
    fixed_us = statistics.median(fixed_timings) * 1e6
    print(f"fixed cost of one call (one-row batches, warm): {fixed_us:.0f} us")

    if args.profile:
        catalogue = load_catalogue(args.catalogue)
        profiler = cProfile.Profile()
        profiler.enable()
        for part, part_plans in batches:
            rate_columns(part, catalogue, part_plans)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)

    mismatches = _check_sample(batch, plans, rated_batch, args.catalogue, args.seed)
    reasons = rated_batch.column("reject_reason")
    failed = batch.num_rows - reasons.null_count
    amount = pc.sum(rated_batch.column("amount")).as_py()
    print(
        f"rated {batch.num_rows - failed:,}, failed {failed:,}, total {amount / 1e6:,.2f} EUR; "
        f"rows rated by the scalar path: {dict(scalar_rows)}; distinct keys per batch <= {keys}; "
        f"reference mismatches in 2000 sampled: {mismatches}"
    )
    records_per_s = batch.num_rows / median_s
    scalar_per_s = batch.num_rows / scalar_median_s
    print(
        json.dumps(
            {
                "records": batch.num_rows,
                "runs": args.runs,
                "batch_records": args.batch_records,
                "records_per_s": round(records_per_s),
                "records_per_s_scalar": round(scalar_per_s),
                "ratio": round(records_per_s / scalar_per_s, 2),
                "us_per_record": round(median_s / batch.num_rows * 1e6, 3),
                "records_per_s_by_batch": by_batch,
                "fixed_us_per_call": round(fixed_us),
                "columns_build_s": round(build_s, 3),
                "columns_build_records_per_s": round(batch.num_rows / build_s),
                "plan_column_s": round(plan_column_s, 3),
                "records_per_s_scalar_default_gc": round(batch.num_rows / default_s),
                "gc_share_scalar": round(statistics.median(gc_timings) / scalar_median_s, 3),
                "scalar_fallback_rows": dict(scalar_rows),
                "rated": batch.num_rows - failed,
                "failed": failed,
                "reference_mismatches": mismatches,
            }
        )
    )


if __name__ == "__main__":
    main()
