"""Durability across a whole-cluster restart: real Ray, real gRPC, real RocksDB.

A cluster takes usage, top-ups and a backup, is stopped (``Runtime.stop``) and
started again on the same data folder; everything it acknowledged is still
there, and retries of it are duplicates, never second charges.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest
import ray
from petribill.v1 import usage_pb2

from actors.routing import shard_of
from actors.shard.keys import account_key
from actors.store.backup import open_checkpoint, read_backup
from billing.records import Service, UsageRecord
from cluster.client import PetribillClient
from cluster.deploy.runtime import Runtime
from tests.local_cluster import small_runtime

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.slow,
    pytest.mark.timeout(600),
]

T_NOV = 1_793_700_000  # 2026-11-03 10:00 UTC
SHARDS, PARTITIONS = 4, 2
ACCOUNTS = [f"dur-{i}" for i in range(6)]
CHARGED = {usage_pb2.RECORD_STATUS_CHARGED, usage_pb2.RECORD_STATUS_CHARGED_AS_DEBT}


def _msisdn(index: int) -> str:
    return f"4915100009{index:03d}"


def _records() -> list[UsageRecord]:
    return [
        UsageRecord(
            record_id=f"dur:{n}",
            service=Service.VOICE,
            served_msisdn=_msisdn(n % len(ACCOUNTS)),
            record_opening_time_s=T_NOV + n,
            called_number="442071234567",
            duration_s=30 + n,
        )
        for n in range(60)
    ]


def _runtime(data_dir: Path) -> Runtime:
    return small_runtime(data_dir, shards=SHARDS, partitions=PARTITIONS, port=0)


def _top_up(client: PetribillClient, account_id: str) -> int:
    return client.top_up(account_id, "20.00", request_id=f"top-{account_id}").prepaid.micros


def _kill_9(runtime: Runtime) -> None:
    """kill -9 of the whole cluster at once: every process of it, no goodbye."""
    assert runtime.local is not None
    for pid in runtime.local.pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    ray.shutdown()
    runtime.local.shutdown()  # nothing left to end; removes its temp dir


@pytest.mark.parametrize("stop", ["graceful", "kill-9"])
def test_a_restarted_cluster_keeps_every_acknowledged_record_and_top_up(
    tmp_path: Path, stop: str
) -> None:
    """After Runtime.stop — or SIGKILL of every process of the cluster — and a start on
    the same data dir, balances and usage lines are the acknowledged ones, retried records
    and top-ups change nothing, reconcile balances, and the backup taken before the stop
    holds every unit."""
    data = tmp_path / "data"
    records = _records()
    runtime = _runtime(data)
    info = runtime.start(timeout_s=180)
    try:
        with PetribillClient(info.gateways, timeout_s=60) as client:
            for i, account_id in enumerate(ACCOUNTS):
                client.create_account(
                    account_id, payment_mode="prepaid" if i % 2 else "postpaid",
                    plan_id="smart", msisdns=[_msisdn(i)], request_id=f"create-{account_id}",
                )  # fmt: skip
                if i % 2:
                    _top_up(client, account_id)
            first = [
                result
                for batch in (records[:20], records[20:])
                for result in client.submit_usage(batch).results
            ]
            acknowledged = [result.record_id for result in first if result.status in CHARGED]
            assert len(acknowledged) == len(records)
            balances = {a: client.get_balance(a) for a in ACCOUNTS}
            reconciled = client.reconcile()
            assert reconciled.balanced and reconciled.rated == len(records)
            assert client.backup("", request_id="before-restart").done
    finally:
        if stop == "kill-9":
            _kill_9(runtime)
        else:
            runtime.stop()

    runtime = _runtime(data)
    info = runtime.start(timeout_s=180)
    try:
        with PetribillClient(info.gateways, timeout_s=60) as client:
            assert {a: client.get_balance(a) for a in ACCOUNTS} == balances
            lines = {line.record_id for a in ACCOUNTS for line in client.iter_usage(a)}
            assert lines == set(acknowledged)
            assert client.reconcile() == reconciled
            again = client.submit_usage(records).results
            assert all(r.replay for r in again)  # each answers its first result again
            assert [r.amount for r in again] == [r.amount for r in first]
            for i, account_id in enumerate(ACCOUNTS):
                if i % 2:
                    assert _top_up(client, account_id) == balances[account_id].prepaid.micros
            assert {a: client.get_balance(a) for a in ACCOUNTS} == balances
            assert client.reconcile().balanced
    finally:
        runtime.stop()

    backup = read_backup(data / "backups" / "before-restart")
    assert len(backup) == SHARDS + PARTITIONS
    checkpoint = open_checkpoint(Path(backup[shard_of(ACCOUNTS[0], SHARDS)].path))
    try:
        assert checkpoint.get(account_key(ACCOUNTS[0])) is not None
    finally:
        checkpoint.close()
