"""Support for the tests of time-driven duties: an in-process cluster on a hand-moved clock.

The cluster is the real one (coordinator, hosts, engines on RocksDB in a temp
folder, the production backend behind a real gRPC gateway on loopback, the SDK
in front); only its clock is a :class:`~actors.clock.ManualClock`, shared by the
handlers, the hosts' duty runners and the coordinator's schedule. Duty runners
are not started: a test runs their rounds itself, so what happened when is
never a matter of machine speed.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from test_gateway_support import TARIFFS, LoopThread

from actors.clock import ManualClock
from actors.duties import RoundReport
from cluster.backend.backend import Backend
from cluster.client import PetribillClient
from cluster.control.service import CoordinatorService
from cluster.deploy.inprocess import InProcessCluster
from cluster.gateway.server import Gateway

#: Tuesday 2026-11-03, 09:20 UTC: inside the sample catalogue's plans.
T_NOV = 1_793_700_000
MSISDN = "4915100000001"
#: A national call in the sample catalogue (plan smart: 0.0100 a minute, per minute).
NATIONAL = "4930123456"


@dataclass(slots=True)
class TimedCluster:
    """An in-process cluster, its gateway's client and the clock they all read."""

    cluster: InProcessCluster
    client: PetribillClient
    clock: ManualClock

    def round(self) -> RoundReport:
        """One duty round on every host (what the runner threads do every second)."""
        total = RoundReport()
        for runner in self.cluster.duty_runners.values():
            report = runner.run_round()
            total.expired.update(report.expired)
            total.overdue.update(report.overdue)
            total.steps += report.steps
            total.skipped += report.skipped
        return total

    @property
    def coordinator(self) -> CoordinatorService:
        assert self.cluster.coordinator is not None
        return self.cluster.coordinator

    def restart_coordinator(self) -> CoordinatorService:
        """Stop the coordinator and start a new one on the same data dir, as after a crash
        (it reloads the marking and the schedule from the control state)."""
        self.coordinator.stop()
        cluster = self.cluster
        fresh = CoordinatorService(
            data_dir=str(cluster.data_dir),
            settings=cluster.settings,
            interval_s=0.05,
            ops=cluster.ops,
            transport=cluster.transport,
            clock=self.clock,
        )
        cluster.coordinator = fresh
        cluster.transport.coordinator = fresh
        return fresh


def wait_for(condition: Callable[[], Any], timeout_s: float = 20.0, what: str = "") -> Any:
    """Poll ``condition`` until it is truthy (a bound on liveness, not a timing check)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what or condition}")
        time.sleep(0.02)


@contextmanager
def timed_cluster(
    start_s: float = T_NOV, *, nodes: tuple[str, ...] = ("n0",), **settings: Any
) -> Iterator[TimedCluster]:
    """A cluster on a :class:`ManualClock` at ``start_s``, with ``settings`` (e.g.
    ``bill_runs={...}``); its gateway on a free loopback port and a client of it."""
    clock = ManualClock(start_s)
    loop = LoopThread()
    with tempfile.TemporaryDirectory(prefix="pbduty") as folder:
        cluster = InProcessCluster(
            Path(folder) / "data",
            TARIFFS,
            nodes=nodes,
            clock=clock,
            duties=False,
            settings={"bill_runs": {"scheduled": False}, **settings},
        ).start()
        gateway = Gateway(Backend(cluster.backend().cluster), "127.0.0.1", 0, None)
        try:
            loop.run(gateway.start())
            with PetribillClient([gateway.address], timeout_s=20) as client:
                yield TimedCluster(cluster, client, clock)
        finally:
            loop.run(gateway.stop(0.5))
            cluster.close()
            loop.close()
