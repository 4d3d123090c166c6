"""Benchmark charging and the bill run of the pure core, in memory: columns vs the reference.

Untimed set-up: generate ``--records`` usage records for 100,000 subscribers
from a seed (the generator of ``bench/rating.py``), rate them with
``rate_batch`` against ``conf/tariffs``, and open one account per subscriber
(one in five business/postpaid, the rest smart: 70 % prepaid with 50 EUR, 30 %
hybrid).

Each of ``--runs`` runs (default 3; medians are reported) starts from fresh
accounts and times, in batches of ``--batch`` records:

1. **Reference charging**: ``charge_batch`` over the rated records, applying
   each batch's new account states the way a shard does
   (``reference_records_per_s``); deriving the effects' ledger entries and
   marks is timed apart (``reference_records_per_s_with_effects``).
2. **Columnar charging**: the same records as the bulk path carries them — usage
   batches of ``--batch`` rows as Arrow, rated by the column rater and with each
   record's account as a column (all untimed, like the reference's rating) —
   against an ``AccountTable`` built from the same accounts (untimed):
   ``charge_columns`` plus applying its ``TableUpdate`` (``records_per_s``).
   Turning the Arrow batches into ``ChargeInput`` columns is timed apart
   (``conversion_records_per_s``), as are storing the batch's marks and
   summing its postings per ledger account (``records_per_s_with_effects``).
   After the run, every account's state in the table is compared with the
   reference's (untimed): the figures are of two computations that agree.
3. **Bill run** of the month over every account, final (past the grace
   period): the reference (``billing_account`` + ``bill_account`` per account,
   ``reference_bill_run_accounts_per_s``) and the columnar bill run over the
   table (``bill_columns``, ``bill_run_accounts_per_s``; it includes merging
   the month's usage chunks, which charging only appends); building the
   outcome objects of the columnar run is timed apart
   (``bill_run_accounts_per_s_with_objects``), and a sample of them is
   compared with the reference's.

Charging and the bill runs are also given per CPU second (``*_per_cpu_s``):
on a shared machine the wall figures move with other load, the CPU ones much
less. The last line printed is one JSON object.

    .venv/bin/python bench/charging.py [--records 1000000] [--batch 10000] [--runs 3]
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import pyarrow as pa  # noqa: E402
from rating import MONTH_START_S, SUBSCRIBERS, generate  # noqa: E402

from billing.accounts import Account, AccountState, PaymentMode, Subscription  # noqa: E402
from billing.billrun.columns import bill_columns  # noqa: E402
from billing.billrun.run import (  # noqa: E402
    BillingState,
    BillResult,
    BillRunConfig,
    bill_account,
    billing_account,
)
from billing.bundles import CatalogueTariff  # noqa: E402
from billing.charging.batch import ChargingConfig, charge_batch  # noqa: E402
from billing.charging.charge_input import ChargeInput  # noqa: E402
from billing.charging.column_marks import ColumnMarks  # noqa: E402
from billing.charging.columnar import charge_columns  # noqa: E402
from billing.charging.table import AccountTable  # noqa: E402
from billing.column_rating import rate_columns  # noqa: E402
from billing.columns import records_to_batch  # noqa: E402
from billing.cycle import DAY_S, cycle_containing  # noqa: E402
from billing.idempotency import Mark  # noqa: E402
from billing.rated import RatedRecord  # noqa: E402
from billing.rating import load_catalogue, rate_batch  # noqa: E402
from billing.tariffs.model import Catalogue  # noqa: E402

TZ = "Europe/Berlin"


def open_accounts(business: set[str]) -> dict[str, AccountState]:
    states: dict[str, AccountState] = {}
    for n in range(SUBSCRIBERS):
        msisdn = f"49151{n:07d}"
        aid = f"acct{n}"
        if msisdn in business:
            mode, plan, limit = PaymentMode.POSTPAID, "business", None
        else:
            mode = PaymentMode.PREPAID if n % 10 < 7 else PaymentMode.HYBRID
            plan, limit = "smart", 100_000_000
        state = AccountState(
            Account(
                account_id=aid,
                currency="EUR",
                payment_mode=mode,
                credit_limit=limit,
                msisdns=(msisdn,),
                subscriptions=(Subscription(plan_id=plan, start_s=MONTH_START_S - 90 * DAY_S),),
            )
        )
        if mode is not PaymentMode.POSTPAID:
            state.prepaid = 50_000_000
        states[aid] = state
    return states


class Clock:
    """Wall and CPU seconds spent inside ``with clock:`` blocks."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> Clock:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall += time.perf_counter() - self._wall
        self.cpu += time.process_time() - self._cpu


def settle_gc() -> None:
    """What a worker does once its catalogue and account state are loaded."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def run_reference(
    rated: list[RatedRecord], states: dict[str, AccountState], directory: dict[str, str],
    tariff: CatalogueTariff, config: ChargingConfig, batch: int, at_s: int,
) -> dict[str, Any]:  # fmt: skip
    marks: dict[str, Mark[Any]] = {}
    charging, effects = Clock(), Clock()
    results: Counter[str] = Counter()
    entries = 0
    for start in range(0, len(rated), batch):
        with charging:
            out = charge_batch(
                rated[start : start + batch],
                accounts=states,
                directory=directory,
                marks=marks,
                tariff=tariff,
                config=config,
                at_s=at_s,
            )
            for state in out.effects.accounts:
                states[state.account_id] = state
        results.update(row.result.value for row in out.receipt or ())
        with effects:
            entries += len(out.effects.entries)
            marks.update(out.effects.marks)
    return {"charging": charging, "effects": effects, "results": results, "entries": entries}


def run_columns(
    batches: list[tuple[pa.RecordBatch, pa.RecordBatch, pa.Array]], table: AccountTable,
    catalogue: Catalogue, tariff: CatalogueTariff, config: ChargingConfig, at_s: int,
) -> dict[str, Any]:  # fmt: skip
    marks = ColumnMarks()
    conversion, charging, effects = Clock(), Clock(), Clock()
    results: Counter[str] = Counter()
    paths: Counter[str] = Counter()
    declined: Counter[str] = Counter()
    postings = 0
    for usage, rated, accounts in batches:
        with conversion:
            columns = ChargeInput.from_arrow(usage, rated, accounts, table, catalogue)
        with charging:
            out = charge_columns(
                columns, table, marks=marks, tariff=tariff, config=config, at_s=at_s
            )
            table.apply(out.update)
        with effects:
            marks.add(out)
            postings += len(out.postings())
        results.update(r.value for r in out.results())
        paths.update(out.paths)
        declined.update(out.declined)
    return {
        "conversion": conversion, "charging": charging, "effects": effects, "results": results,
        "paths": paths, "declined": declined, "postings": postings,
    }  # fmt: skip


def check_states(reference: dict[str, AccountState], table: AccountTable, sample: int) -> int:
    """Compare the reference's states with the table's, all of them or a sample; mismatches."""
    ids = list(reference)
    if sample < len(ids):
        ids = random.Random(1).sample(ids, sample)
    bad = 0
    for aid in ids:
        want, got = reference[aid], table.state(table.index[aid])
        if (
            want.account != got.account
            or want.balances() != got.balances()
            or want.bundle_used != got.bundle_used
            or want.usage != got.usage
            or want.reminders != got.reminders
            or want.reminder_cycle != got.reminder_cycle
        ):
            bad += 1
    return bad


def run_bill_reference(
    states: dict[str, AccountState], catalogue: Catalogue, at_s: int, config: BillRunConfig
) -> tuple[Clock, Counter[str], dict[str, Any]]:
    cycle = cycle_containing(MONTH_START_S + DAY_S, TZ)
    empty = BillingState()
    clock = Clock()
    billed: Counter[str] = Counter()
    outcomes: dict[str, Any] = {}
    with clock:
        for aid, state in states.items():
            view = billing_account(state, cycle=cycle, catalogue=catalogue)
            outcome = bill_account(view, empty, cycle, at_s=at_s, config=config)
            billed[outcome.result.value] += 1
            outcomes[aid] = outcome
    return clock, billed, outcomes


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--check", type=int, default=100_000, help="accounts compared per run")
    parser.add_argument("--catalogue", default=str(ROOT / "conf" / "tariffs"))
    args = parser.parse_args()

    began = time.perf_counter()
    records = generate(args.records, args.seed)
    business = {f"49151{n:07d}" for n in range(0, SUBSCRIBERS, 5)}
    catalogue = load_catalogue(args.catalogue)
    rated = [
        o
        for o in rate_batch(
            records, catalogue, lambda r: "business" if r.served_msisdn in business else "smart"
        )
        if isinstance(o, RatedRecord)
    ]
    # The columnar run gets what the bulk path carries: usage batches as Arrow, the
    # column rater's output for them, and the account of each record as the partition's
    # directory resolves it (a dictionary-encoded column).
    directory = {f"49151{n:07d}": f"acct{n}" for n in range(SUBSCRIBERS)}
    arrow: list[tuple[pa.RecordBatch, pa.RecordBatch, pa.Array]] = []
    for start in range(0, len(records), args.batch):
        chunk = records[start : start + args.batch]
        usage = records_to_batch(chunk)
        plans = pa.array(["business" if r.served_msisdn in business else "smart" for r in chunk])
        accounts = pa.array([directory.get(r.served_msisdn, "") for r in chunk])
        arrow.append(
            (usage, rate_columns(usage, catalogue, plans).batch, accounts.dictionary_encode())
        )
    del records
    tariff = CatalogueTariff(catalogue)
    config = ChargingConfig(tz=TZ)
    at_s = MONTH_START_S + 32 * DAY_S
    bill_config = BillRunConfig(tz=TZ)
    cycle = cycle_containing(MONTH_START_S + DAY_S, TZ)
    bill_at_s = cycle.end_s + bill_config.grace_s
    n = len(rated)
    print(f"set-up (untimed): {n:,} rated records in {time.perf_counter() - began:.1f} s")

    figures: dict[str, list[float]] = {}

    def note(key: str, value: float) -> None:
        figures.setdefault(key, []).append(value)

    for run in range(1, args.runs + 1):
        # Reference charging and bill run.
        states = open_accounts(business)
        directory = {s.account.msisdns[0]: aid for aid, s in states.items()}
        settle_gc()
        ref = run_reference(rated, states, directory, tariff, config, args.batch, at_s)
        charging, effects = ref["charging"], ref["effects"]
        note("reference_records_per_s", n / charging.wall)
        note("reference_records_per_cpu_s", n / charging.cpu)
        note("reference_records_per_s_with_effects", n / (charging.wall + effects.wall))
        gc.collect()
        gc.freeze()
        clock, billed, ref_bills = run_bill_reference(states, catalogue, bill_at_s, bill_config)
        note("reference_bill_run_accounts_per_s", len(states) / clock.wall)
        note("reference_bill_run_accounts_per_cpu_s", len(states) / clock.cpu)

        # Columnar charging and bill run over a table of the same fresh accounts.
        fresh = open_accounts(business)
        table = AccountTable.from_states(fresh.values())
        del fresh
        settle_gc()
        col = run_columns(arrow, table, catalogue, tariff, config, at_s)
        conversion, charging, effects = col["conversion"], col["charging"], col["effects"]
        note("records_per_s", n / charging.wall)
        note("records_per_cpu_s", n / charging.cpu)
        note("records_per_s_with_effects", n / (charging.wall + effects.wall))
        note("conversion_records_per_s", n / conversion.wall)
        gc.collect()
        gc.freeze()
        bill_clock, objects_clock = Clock(), Clock()
        with bill_clock:
            bills = bill_columns(
                table, cycle, catalogue=catalogue, at_s=bill_at_s, config=bill_config
            )
        with objects_clock:
            outcomes = bills.outcomes()
        note("bill_run_accounts_per_s", table.size / bill_clock.wall)
        note("bill_run_accounts_per_cpu_s", table.size / bill_clock.cpu)
        note(
            "bill_run_accounts_per_s_with_objects",
            table.size / (bill_clock.wall + objects_clock.wall),
        )

        # Untimed: the two computations agree.
        mismatched_states = check_states(states, table, args.check)
        sample = random.Random(run).sample(range(table.size), min(args.check, table.size))
        mismatched_bills = sum(1 for row in sample if outcomes[row] != ref_bills[table.ids[row]])
        assert col["results"] == ref["results"], (col["results"], ref["results"])
        print(
            f"run {run}: reference {figures['reference_records_per_s'][-1]:,.0f} records/s, "
            f"columns {figures['records_per_s'][-1]:,.0f} records/s "
            f"(conversion {figures['conversion_records_per_s'][-1]:,.0f}/s); bill run reference "
            f"{figures['reference_bill_run_accounts_per_s'][-1]:,.0f} accounts/s, columns "
            f"{figures['bill_run_accounts_per_s'][-1]:,.0f} accounts/s; mismatches: "
            f"{mismatched_states} states, {mismatched_bills} bills of {len(sample):,} compared"
        )
        if mismatched_states or mismatched_bills:
            raise SystemExit("columnar and reference results differ")
        del states, table, bills, outcomes, ref_bills
        gc.unfreeze()
        gc.collect()

    print("results:", dict(col["results"]))
    print("paths (records):", dict(col["paths"]), "declined (accounts):", dict(col["declined"]))
    print("bill run:", dict(billed))
    medians = {key: round(median(values)) for key, values in figures.items()}
    for key, value in medians.items():
        print(f"  {key}: {value:,} (runs: {', '.join(f'{v:,.0f}' for v in figures[key])})")
    ratio = medians["records_per_s"] / medians["reference_records_per_s"]
    bill_ratio = medians["bill_run_accounts_per_s"] / medians["reference_bill_run_accounts_per_s"]
    print(f"charging ratio columns/reference: {ratio:.2f}; bill run ratio: {bill_ratio:.2f}")
    summary: dict[str, Any] = {
        "records": n,
        "accounts": SUBSCRIBERS,
        "batch": args.batch,
        "runs": args.runs,
        **medians,
        "ratio": round(ratio, 2),
        "bill_run_ratio": round(bill_ratio, 2),
        "vector_share": round(col["paths"]["vector"] / n, 5),
        "invoices": billed.get(BillResult.ISSUED.value, 0),
        "statements": billed.get(BillResult.STATEMENT.value, 0),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
