"""What the tests of several host processes per node share (tests/test_hostslots_*.py):
the cluster and its accounts, a usage record, a call on one slot's host, a top-up load
that counts what was acknowledged, and waits on the coordinator's status."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any

import ray

from actors.remote import NAMESPACE, host_name
from actors.slots import host_key
from cluster.client import PetribillClient
from cluster.deploy.runtime import Runtime
from tests.local_cluster import small_runtime

SHARDS, PARTITIONS, HOSTS = 4, 2, 2
ACCOUNTS = 8
T_NOV = 1_793_700_000
NODES = ("n0", "n1")


def slots_runtime(data_dir: Path, *, nodes: int) -> Runtime:
    """A cluster of ``nodes`` simulated nodes with ``HOSTS`` host processes each (not started)."""
    sharding = {"shards": SHARDS, "partitions": PARTITIONS, "hosts_per_node": HOSTS}
    return small_runtime(
        data_dir,
        shards=SHARDS,
        partitions=PARTITIONS,
        nodes=nodes,
        port=0,
        tables={"sharding": sharding},
    )


def client_with_accounts(gateways: list[str]) -> PetribillClient:
    """A client of ``gateways``, once it has created the ``ACCOUNTS`` postpaid accounts."""
    client = PetribillClient(gateways, timeout_s=60, retries=40)
    for i in range(ACCOUNTS):
        client.create_account(
            account(i), payment_mode="postpaid", plan_id="business",
            msisdns=[msisdn(i)], request_id=f"slot-create-{i}",
        )  # fmt: skip
    return client


def account(i: int) -> str:
    return f"slot-{i}"


def msisdn(i: int) -> str:
    return f"49151700{i:05d}"


def voice(n: int) -> dict[str, Any]:
    return {
        "record_id": f"slot-usage:{n}", "service": "voice", "served_msisdn": msisdn(n % ACCOUNTS),
        "record_opening_time_s": T_NOV + n, "called_number": "4930123456", "duration_s": 60,
    }  # fmt: skip


def host_call(node: str, slot: int, method: str, *args: Any) -> Any:
    handle = ray.get_actor(host_name(host_key(node, slot)), namespace=NAMESPACE)
    return ray.get(getattr(handle, method).remote(*args), timeout=60)


def wait_until(what: Any, why: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        assert time.monotonic() < deadline, why
        time.sleep(0.2)


def fully_replicated(runtime: Runtime) -> bool:
    status = runtime.status()
    return bool(status["healthy"] and status["fully_replicated"])


def taken_over(runtime: Runtime, before: dict[str, int]) -> bool:
    """Every unit of ``before`` (unit -> epoch) is owned again at a higher epoch."""
    units = {u["unit"]: u for u in runtime.status()["units"]}
    return all(units[u]["state"] == "owned" and units[u]["epoch"] > e for u, e in before.items())


def total(client: PetribillClient, account_id: str) -> int:
    balance = client.get_balance(account_id)
    return int(balance.prepaid.micros + balance.credit.micros)


class TopUps:
    """Tops up every account by 1.00 in turn until stopped, each request retried with its
    own id until acknowledged; counts what was acknowledged per account."""

    def __init__(self, client: PetribillClient) -> None:
        self.client = client
        self.acked = dict.fromkeys(range(ACCOUNTS), 0)
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> TopUps:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for n in itertools.count():
                if self._stop.is_set():
                    return
                i = n % ACCOUNTS
                while True:  # the same request id until acknowledged: exactly once
                    try:
                        self.client.top_up(account(i), "1.00", request_id=f"slot-topup-{n}")
                        break
                    except Exception:
                        time.sleep(0.2)
                self.acked[i] += 1
        except BaseException as exc:  # handed to the test by stop()
            self.failure = exc

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=180)
        assert not self._thread.is_alive(), "the top-up load is stuck"
        assert self.failure is None, f"the top-up load failed: {self.failure!r}"
