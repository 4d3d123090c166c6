"""Benchmark the account shard's time-driven duties: what a duty round costs its owner.

Setup (untimed): one AccountShard on real RocksDB with ``--accounts`` prepaid accounts,
each holding one open online-charging session (a reservation), seeded in large commits.
Timed, each three times (medians printed):

- ``idle pass``: a duty round when nothing is due: ``RunDuties`` steps of 200 accounts
  from the first to the last account holding a reservation (what every owner does every
  ``[duties] every_s`` while sessions are open);
- ``expiry pass``: the round that finds every reservation due and releases them all
  (a synced commit per step of 200 accounts), on fresh sessions each time;
- baseline: one ``ChargeBatch`` of 1,000 rated records (a synced commit), the unit of
  ordinary work a duty step competes with for the shard's lock.

    .venv/bin/python bench/duties.py [--accounts 10000] [--dir /tmp]

The last line printed is JSON: per-step and per-pass milliseconds and the ratios of a
duty step to the baseline batch.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from actors.shard.engine import AccountShard  # noqa: E402
from actors.shard.ops import ChargeBatch, RunDuties  # noqa: E402
from actors.shard.work import Work  # noqa: E402
from billing.accounts import Account, PaymentMode, create_account  # noqa: E402
from billing.bundles import CatalogueTariff  # noqa: E402
from billing.charging.batch import top_up  # noqa: E402
from billing.ocs.session import Quote, session_initial  # noqa: E402
from billing.rated import RatedRecord  # noqa: E402
from billing.rating import load_catalogue, price_enquiry, rate  # noqa: E402
from billing.records import Service, UsageRecord  # noqa: E402

EUR = 1_000_000
T0 = 1_793_700_000  # 2026-11-03
VALIDITY_S = 300
STEP_ACCOUNTS = 200
UK = "447700900123"


def _quote(catalogue: Any) -> Quote:
    rated = price_enquiry(
        catalogue, plan_id="smart", service=Service.VOICE, units=120, at_s=T0,
        called_number=UK, rating_group=None, content_item_id=None, roaming=False,
    )  # fmt: skip
    return Quote(
        service="voice", usage_class=rated.usage_class, price_key=rated.price_key,
        plan_id=rated.plan_id, plan_version=rated.plan_version,
    )  # fmt: skip


def seed(shard: AccountShard, accounts: int) -> None:
    """The accounts, each with 20 EUR (commits of 5,000; setup only)."""
    for start in range(0, accounts, 5000):
        work = Work(shard.core)
        for n in range(start, min(start + 5000, accounts)):
            aid = f"acct{n:06d}"
            account = Account(account_id=aid, currency="EUR", payment_mode=PaymentMode.PREPAID)
            made = create_account(request_id=f"c{n}", account=account, current=None, existing=None)
            work.apply(made.effects, aid)
            state = work.state(aid)
            assert state is not None
            topped = top_up(
                request_id=f"t{n}", state=state, amount=20 * EUR, currency="EUR", at_s=T0,
                existing=None, config=shard.core.charging,
            )  # fmt: skip
            work.apply(topped.effects, aid)
        work.commit()


def open_sessions(shard: AccountShard, accounts: int, tag: str, now_s: int, quote: Quote) -> None:
    """One open session on every account (commits of 2,000; setup only)."""
    core = shard.core
    for start in range(0, accounts, 2000):
        work = Work(core)
        for n in range(start, min(start + 2000, accounts)):
            aid = f"acct{n:06d}"
            state = work.state(aid)
            assert state is not None
            out = session_initial(
                request_id=f"{tag}:{n}", state=state, session_id=f"{tag}-{n}", quote=quote,
                requested_units=120, validity_s=VALIDITY_S, at_s=now_s, existing=None,
                tariff=core.tariff, config=core.charging, now_s=now_s,
            )  # fmt: skip
            work.apply(out.effects, aid)
        work.commit()


def duty_pass(shard: AccountShard, now_s: int) -> tuple[float, int, int]:
    """One round of steps until nothing is left: seconds, steps, sessions expired."""
    steps = expired = 0
    started = time.perf_counter()
    while True:
        step = shard.run(RunDuties(now_s=now_s, accounts_max=STEP_ACCOUNTS))
        steps += 1
        expired += step.sessions_expired
        if not step.more:
            return time.perf_counter() - started, steps, expired


def records(catalogue: Any, accounts: int, tag: str, count: int) -> list[tuple[str, RatedRecord]]:
    items = []
    for n in range(count):
        record = UsageRecord(
            record_id=f"{tag}:{n}", service=Service.VOICE, served_msisdn="4915100000001",
            record_opening_time_s=T0 + n, called_number=UK, duration_s=30 + n % 300,
        )  # fmt: skip
        rated = rate(record, catalogue, "smart")
        assert isinstance(rated, RatedRecord)
        items.append((f"acct{n % accounts:06d}", rated))
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    catalogue = load_catalogue(str(ROOT / "conf" / "tariffs"))
    quote = _quote(catalogue)
    accounts = args.accounts
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="pbduties") as folder:
        shard = AccountShard.open(
            Path(folder) / "acct-00", epoch=1, tariff=CatalogueTariff(catalogue),
            catalogue=catalogue, cache_accounts_max=accounts * 2,
        )  # fmt: skip
        try:
            seed(shard, accounts)
            idle, expiry, batch = [], [], []
            idle_steps = expiry_steps = 0
            for run in range(3):
                now = T0 + run * 10 * VALIDITY_S
                open_sessions(shard, accounts, f"r{run}", now, quote)
                seconds, idle_steps, expired = duty_pass(shard, now + 1)
                assert expired == 0
                idle.append(seconds)
                items = records(catalogue, accounts, f"b{run}", 1000)
                started = time.perf_counter()
                shard.run(ChargeBatch(items=items, at_s=now))
                batch.append(time.perf_counter() - started)
                seconds, expiry_steps, expired = duty_pass(shard, now + VALIDITY_S)
                assert expired == accounts, expired
                expiry.append(seconds)
        finally:
            shard.close()
    idle_s, expiry_s, batch_s = (statistics.median(x) for x in (idle, expiry, batch))
    idle_step_ms = idle_s / idle_steps * 1000
    expiry_step_ms = expiry_s / expiry_steps * 1000
    batch_ms = batch_s * 1000
    print(f"{accounts} accounts holding a session, steps of {STEP_ACCOUNTS} accounts")
    print(f"idle pass (nothing due):  {idle_s * 1000:8.1f} ms  ({idle_steps} steps, "
          f"{idle_step_ms:.2f} ms a step)")  # fmt: skip
    print(f"expiry pass (all due):    {expiry_s * 1000:8.1f} ms  ({expiry_steps} steps, "
          f"{expiry_step_ms:.2f} ms a step, {accounts / expiry_s:,.0f} sessions/s)")  # fmt: skip
    print(f"baseline ChargeBatch 1000: {batch_ms:7.1f} ms")
    print(
        json.dumps(
            {
                "accounts": accounts,
                "step_accounts": STEP_ACCOUNTS,
                "idle_pass_ms": round(idle_s * 1000, 1),
                "idle_step_ms": round(idle_step_ms, 2),
                "expiry_pass_ms": round(expiry_s * 1000, 1),
                "expiry_step_ms": round(expiry_step_ms, 2),
                "sessions_expired_per_s": round(accounts / expiry_s),
                "baseline_batch_1000_ms": round(batch_ms, 1),
                "idle_step_to_batch": round(idle_step_ms / batch_ms, 3),
                "expiry_step_to_batch": round(expiry_step_ms / batch_ms, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
