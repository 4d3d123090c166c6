"""Benchmark charging and the bill run, in memory, over the real sample catalogue.

Untimed set-up: generate ``--records`` usage records for 100,000 subscribers
from a seed (the generator of ``bench/rating.py``), rate them with
``rate_batch`` against ``conf/tariffs``, and open one account per subscriber
(one in five business/postpaid, the rest smart: 70 % prepaid with 50 EUR, 30 %
hybrid).

Timed:

1. **Charging**: ``charge_batch`` over the rated records in batches of
   ``--batch`` records, applying each batch's new account states the way a
   shard does (``records_per_s``). The effects' ledger entries and marks are
   derived lazily; the time to derive them for every batch is reported
   separately (``records_per_s_with_effects``), since a shard pays it when it
   encodes its WriteBatch.
2. **Bill run** of the month over every account: the ABM state turned into the
   bill run's view (``billing_account``) and billed (``bill_account``), final
   (past the grace period) — ``bill_run_accounts_per_s``.

The last line printed is one JSON object.

    .venv/bin/python bench/charging.py [--records 1000000] [--batch 10000] [--seed 7]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from rating import MONTH_START_S, SUBSCRIBERS, generate  # noqa: E402

from billing.accounts import Account, AccountState, PaymentMode, Subscription  # noqa: E402
from billing.billrun.run import (  # noqa: E402
    BillingState,
    BillResult,
    BillRunConfig,
    bill_account,
    billing_account,
)
from billing.bundles import CatalogueTariff  # noqa: E402
from billing.charging.batch import ChargingConfig, charge_batch  # noqa: E402
from billing.cycle import DAY_S, cycle_containing  # noqa: E402
from billing.idempotency import Mark  # noqa: E402
from billing.rated import RatedRecord  # noqa: E402
from billing.rating import load_catalogue, rate_batch  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
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
    del records
    states = open_accounts(business)
    directory = {state.account.msisdns[0]: aid for aid, state in states.items()}
    tariff = CatalogueTariff(catalogue)
    config = ChargingConfig(tz=TZ)
    marks: dict[str, Mark[Any]] = {}
    print(
        f"set-up (untimed): {len(rated):,} rated records, {len(states):,} accounts "
        f"in {time.perf_counter() - began:.1f} s"
    )

    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)

    # 1. Charging.
    results: Counter[str] = Counter()
    effects_s = effects_cpu_s = 0.0
    entries = 0
    at_s = MONTH_START_S + 32 * DAY_S
    cpu_began = time.process_time()
    began = time.perf_counter()
    for start in range(0, len(rated), args.batch):
        batch = rated[start : start + args.batch]
        out = charge_batch(
            batch,
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
        # Derive what the shard would encode (untimed in records_per_s, reported apart).
        t0, c0 = time.perf_counter(), time.process_time()
        entries += len(out.effects.entries)
        marks.update(out.effects.marks)
        effects_s += time.perf_counter() - t0
        effects_cpu_s += time.process_time() - c0
    charge_s = time.perf_counter() - began - effects_s
    # CPU time less the effects' CPU time (not their wall time, which on a busy machine
    # is longer and made this figure too high).
    charge_cpu_s = time.process_time() - cpu_began - effects_cpu_s
    records_per_s = len(rated) / charge_s
    with_effects = len(rated) / (charge_s + effects_s)
    print(
        f"charging: {len(rated):,} records in {charge_s:.2f} s = {records_per_s:,.0f} records/s; "
        f"deriving {entries:,} entries and marks {effects_s:.2f} s more "
        f"({with_effects:,.0f} records/s with effects)"
    )
    print("results:", dict(results))

    # 2. Bill run of the month, final (past grace). A bill-run worker has its account
    # states loaded: freeze them out of the cyclic GC's way, as after the set-up.
    del out
    gc.collect()
    gc.freeze()
    cycle = cycle_containing(MONTH_START_S + DAY_S, TZ)
    bill_config = BillRunConfig(tz=TZ)
    bill_at_s = cycle.end_s + bill_config.grace_s
    empty = BillingState()
    billed: Counter[str] = Counter()
    invoiced = bill_entries = 0
    cpu_began = time.process_time()
    began = time.perf_counter()
    for state in states.values():
        view = billing_account(state, cycle=cycle, catalogue=catalogue)
        outcome = bill_account(view, empty, cycle, at_s=bill_at_s, config=bill_config)
        billed[outcome.result.value] += 1
        bill_entries += len(outcome.entries)
        if outcome.result is BillResult.ISSUED:
            invoiced += outcome.invoices[-1].total
    bill_s = time.perf_counter() - began
    bill_cpu_s = time.process_time() - cpu_began
    accounts_per_s = len(states) / bill_s
    print(
        f"bill run: {len(states):,} accounts in {bill_s:.2f} s = {accounts_per_s:,.0f} "
        f"accounts/s; {dict(billed)}; {bill_entries:,} entries; "
        f"invoiced {invoiced / 1e6:,.2f} EUR"
    )
    print(
        json.dumps(
            {
                "records": len(rated),
                "accounts": len(states),
                "batch": args.batch,
                "charge_s": round(charge_s, 3),
                "records_per_s": round(records_per_s),
                "records_per_s_with_effects": round(with_effects),
                "records_per_cpu_s": round(len(rated) / charge_cpu_s),
                "bill_run_s": round(bill_s, 3),
                "bill_run_accounts_per_cpu_s": round(len(states) / bill_cpu_s),
                "bill_run_accounts_per_s": round(accounts_per_s),
                "invoices": billed.get(BillResult.ISSUED.value, 0),
                "statements": billed.get(BillResult.STATEMENT.value, 0),
            }
        )
    )


if __name__ == "__main__":
    main()
