"""Synced batch commit cost of a shard store: fsyncs/s and records/s by batch size.

Usage: .venv/bin/python bench/storage.py [--dir /path/on/the/disk/to/measure] [--seconds 2]
Prints one line per batch size and a last-line JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from actors.shard.keys import ledger_key
from actors.store.codec import encode_i64
from actors.store.storage import Batch, ShardStore

BATCH_SIZES = (1, 100, 1_000, 10_000)


def measure(store: ShardStore, records: int, seconds: float, seq: list[int]) -> dict[str, float]:
    """Commit batches of ``records`` postings (~20-byte key, 8-byte value) for ``seconds``."""
    commits, started, in_commit = 0, time.perf_counter(), 0.0
    while True:
        batch = Batch()
        for _ in range(records):
            seq[0] += 1
            batch.put(ledger_key(f"acct{seq[0] % 10_000:06d}", seq[0]), encode_i64(seq[0]))
        before = time.perf_counter()
        store.commit(batch)
        in_commit += time.perf_counter() - before
        commits += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and commits >= 3:
            break
    return {
        "batch_records": records,
        "commits_per_s": commits / elapsed,
        "records_per_s": commits * records / elapsed,
        "ms_per_batch": 1000 * elapsed / commits,
        "commit_ms": 1000 * in_commit / commits,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, default=None, help="parent folder (default: tmp)")
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pbbench", dir=args.dir))
    try:
        results, seq = [], [0]
        with ShardStore.open(root / "shard", epoch=1) as store:
            for records in BATCH_SIZES:
                r = measure(store, records, args.seconds, seq)
                results.append(r)
                print(
                    f"batch {records:>6}: {r['commits_per_s']:8.1f} synced commits/s "
                    f"{r['records_per_s']:10.0f} records/s {r['ms_per_batch']:8.2f} ms/batch "
                    f"(of which commit {r['commit_ms']:.2f} ms)"
                )
        print(json.dumps({"bench": "storage", "dir": str(root), "results": results}))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
