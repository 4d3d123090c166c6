"""Benchmark AccountShard.charge_batch: synced commits, real RocksDB, real catalogue.

Setup (untimed): 50,000 accounts (4 in 5 prepaid with a 20 EUR top-up, 1 in 5
postpaid) seeded in a few large commits; records generated like
``bench/rating.py`` (voice, data, SMS, content; two msisdns per account) and
rated with the sample catalogue. Timed: ``charge_batch`` calls of 100, 1,000
and 5,000 records, each one synced commit (charging, encoding, the commit).
Every run uses fresh record ids. A last run with a cache smaller than the
account set shows the cost of reading account rows from RocksDB.

    .venv/bin/python bench/shard.py [--accounts 50000] [--records 50000] [--dir /tmp] [--fraud]

``--fraud`` turns on a typical set of fraud rules (:data:`FRAUD`: velocity on
international calls, spend spike, premium destinations blocking), evaluated
by the shard on every charged record in the same commit; alert log lines are
dropped (structlog filtered to warnings), so the figure is the rules' own cost.

The last line printed is JSON; ``records_per_s`` is the 1,000-record batch figure.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from actors.shard.engine import AccountShard  # noqa: E402
from actors.shard.ops import Audit, ChargeBatch  # noqa: E402
from actors.shard.work import Work  # noqa: E402
from billing.accounts import Account, PaymentMode, create_account  # noqa: E402
from billing.bundles import CatalogueTariff  # noqa: E402
from billing.charging.batch import top_up  # noqa: E402
from billing.fraud import FraudConfig  # noqa: E402
from billing.rated import RatedRecord  # noqa: E402
from billing.rating import load_catalogue, rate  # noqa: E402

EUR = 1_000_000
SEED_AT_S = 1_767_222_000  # 2026-01-01 00:00 Europe/Berlin


# A typical operator's rules for the sample catalogue (as in conf/cluster.toml's example).
FRAUD = FraudConfig.from_mapping(
    {
        "velocity": {
            "calls": 10,
            "window_s": 600,
            "international_classes": [f"voice.international_z{z}" for z in range(1, 5)],
        },
        "spend_spike": {"factor": 3, "trailing_cycles": 3},
        "premium": {"premium_prefixes": ["49900", "49137"], "action": "block"},
    }
)


def _generator() -> tuple[Any, int]:
    spec = importlib.util.spec_from_file_location("bench_rating", ROOT / "bench" / "rating.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate, module.SUBSCRIBERS


def seed(shard: AccountShard, accounts: int) -> None:
    """Create the accounts in commits of 5,000 (the shard's own work unit; setup only)."""
    for start in range(0, accounts, 5000):
        work = Work(shard.core)
        for n in range(start, min(start + 5000, accounts)):
            aid = f"acct{n:06d}"
            prepaid = n % 5 != 0
            acct = Account(
                account_id=aid,
                currency="EUR",
                payment_mode=PaymentMode.PREPAID if prepaid else PaymentMode.POSTPAID,
            )
            out = create_account(request_id=f"c:{aid}", account=acct, current=None, existing=None)
            work.apply(out.effects, aid)
            if prepaid:
                state = work.state(aid)
                assert state is not None
                up = top_up(
                    request_id=f"t:{aid}", state=state, amount=20 * EUR, currency="EUR",
                    at_s=SEED_AT_S, existing=None, config=shard.core.charging,
                )  # fmt: skip
                work.apply(up.effects, aid)
        work.commit()


def rated_items(count: int, accounts: int, seed_: int) -> list[tuple[str, RatedRecord]]:
    generate, subscribers = _generator()
    catalogue = load_catalogue(ROOT / "conf" / "tariffs")
    items: list[tuple[str, RatedRecord]] = []
    for record in generate(count, seed_):
        n = int(record.served_msisdn[-7:]) % accounts
        outcome = rate(record, catalogue, "business" if n % 5 == 0 else "smart")
        if isinstance(outcome, RatedRecord):
            items.append((f"acct{n:06d}", outcome))
    del subscribers
    return items


def run(shard: AccountShard, items: list[tuple[str, RatedRecord]], size: int) -> dict[str, float]:
    at_s = SEED_AT_S + 40 * 86_400
    started = time.perf_counter()
    batches = 0
    charged = 0
    for i in range(0, len(items), size):
        answer = shard.run(ChargeBatch(items=items[i : i + size], at_s=at_s))
        charged += sum(1 for row in answer if row.result.value.startswith(("charged", "spons")))
        batches += 1
    elapsed = time.perf_counter() - started
    return {
        "batch": size,
        "records": len(items),
        "charged": charged,
        "batches": batches,
        "seconds": round(elapsed, 3),
        "records_per_s": round(len(items) / elapsed),
        "ms_per_batch": round(1000 * elapsed / batches, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=50_000)
    parser.add_argument("--records", type=int, default=50_000, help="per batch size")
    parser.add_argument("--dir", default="/tmp")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--gc", choices=("tuned", "default"), default="tuned")
    parser.add_argument("--fraud", action="store_true", help="run the FRAUD rules")
    args = parser.parse_args()
    fraud = FRAUD if args.fraud else None
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    sizes = (100, 1000, 5000)
    catalogue = load_catalogue(ROOT / "conf" / "tariffs")
    tariff = CatalogueTariff(catalogue)

    started = time.perf_counter()
    total = args.records * (len(sizes) + 1)
    items = rated_items(int(total * 1.05), args.accounts, args.seed)
    print(f"rated {len(items):,} records in {time.perf_counter() - started:.1f} s (untimed)")
    results = []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="pb-shard-") as tmp:
        shard = AccountShard.open(
            Path(tmp) / "acct-00", epoch=1, tariff=tariff, catalogue=catalogue,
            cache_accounts_max=args.accounts, fraud=fraud,
        )  # fmt: skip
        started = time.perf_counter()
        seed(shard, args.accounts)
        print(f"seeded {args.accounts:,} accounts in {time.perf_counter() - started:.1f} s")
        gc.collect()
        gc.freeze()
        if args.gc == "tuned":
            # As bench/rating.py: cached account states are many long-lived objects, and
            # CPython's cyclic GC would rescan them again and again.
            gc.set_threshold(100_000, 50, 1000)
        offset = 0
        for size in sizes:
            chunk = items[offset : offset + args.records]
            offset += args.records
            result = run(shard, chunk, size)
            results.append(result)
            print(json.dumps(result))
        shard.close()
        # The same data with a cache a fifth of the accounts: rows come from RocksDB.
        cold = AccountShard.open(
            Path(tmp) / "acct-00", epoch=2, tariff=tariff, catalogue=catalogue,
            cache_accounts_max=args.accounts // 5, fraud=fraud,
        )  # fmt: skip
        result = run(cold, items[offset : offset + args.records], 1000)
        result["cache_accounts_max"] = args.accounts // 5
        print(json.dumps(result))
        started = time.perf_counter()
        report = cold.run(Audit())
        audit_s = time.perf_counter() - started
        print(f"audit: ok={report.ok} accounts={report.accounts:,} rows={report.ledger_rows:,} "
              f"in {audit_s:.1f} s")  # fmt: skip
        cold.close()
    by_batch = {str(r["batch"]): r["records_per_s"] for r in results}
    print(
        json.dumps(
            {
                "records_per_s": by_batch["1000"],
                "by_batch": by_batch,
                "small_cache_records_per_s": result["records_per_s"],
                "accounts": args.accounts,
                "gc": args.gc,
                "fraud": args.fraud,
                "audit_ok": report.ok,
            }
        )
    )


if __name__ == "__main__":
    main()
