"""The chaos load's abandoned sessions against a real (in-process) cluster: every one is
released within its bound while the owners' duties run, and a release that does not come
is a violation.

Real gateway and SDK over an in-process cluster on the system clock and the chaos
catalogue, with a one-second Validity-Time so that sessions expire while the test runs.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import grpc
import pytest
from test_gateway_support import LoopThread

from billing.money import Money
from chaos.load import Account
from chaos.reference import PLAN_PREPAID
from chaos.runner import TARIFFS
from chaos.sessions import AbandonedSessions, WriteStalls
from cluster.backend.backend import Backend
from cluster.client import PetribillClient
from cluster.client.transport import PetribillError
from cluster.deploy.inprocess import InProcessCluster
from cluster.gateway.server import Gateway

pytestmark = pytest.mark.timeout(120)


def _run(*, duties: bool, seconds: float) -> AbandonedSessions:
    loop = LoopThread()
    settings = {"session_validity_s": 1, "duties": {"every_s": 0.05}}
    with tempfile.TemporaryDirectory(prefix="pbsess") as folder:
        cluster = InProcessCluster(
            Path(folder) / "data", TARIFFS, settings=settings, duties=duties
        ).start()
        gateway = Gateway(Backend(cluster.backend().cluster), "127.0.0.1", 0, None)
        loop.run(gateway.start())
        try:
            with PetribillClient([gateway.address], timeout_s=20) as client:
                accounts = [Account(account_id=f"s{n}", msisdn=f"491599000{n}", prepaid=True)
                            for n in range(3)]  # fmt: skip
                for account in accounts:
                    client.create_account(
                        account.account_id, "prepaid", plan_id=PLAN_PREPAID,
                        msisdns=[account.msisdn],
                    )  # fmt: skip
                    client.top_up(account.account_id, Money(10_000_000, "EUR"))
                sessions = AbandonedSessions(
                    client, accounts, seed=1, bound_s=2.0, every_s=0.05
                ).start()
                time.sleep(seconds)
                sessions.stop(timeout_s=30)
        finally:
            loop.run(gateway.stop(0.5))
            cluster.close()
            loop.close()
    return sessions


def test_abandoned_sessions_are_released_within_their_bound() -> None:
    """With the duties running, every abandoned session's money comes back in time, the
    repeated updates answer the first answers, at the reference price."""
    figures = _run(duties=True, seconds=2.0).figures
    assert figures.opened >= 3 and figures.released == figures.opened
    assert figures.updated > 0 and sum(figures.charged.values()) > 0
    assert not any(figures.violations.values()), dict(figures.violations)


def test_a_reservation_nobody_releases_is_a_violation() -> None:
    """Without the duties (planted: the runners never start) the money stays reserved and
    each session is reported once its bound has passed."""
    figures = _run(duties=False, seconds=0.5).figures
    assert figures.opened >= 1 and figures.released == 0
    assert len(figures.violations["reserved"]) == figures.opened


def test_write_stalls_count_the_time_the_cluster_cannot_acknowledge_writes() -> None:
    """Only the intervals ending in a poll that says not writable, or that is not
    answered, add to the stalled seconds."""
    now = [0.0]
    answers: list[bool | None] = [True, False, None, True, False]

    def writable() -> bool:
        answer = answers.pop(0)
        if answer is None:
            raise PetribillError(grpc.StatusCode.UNAVAILABLE, "no gateway answered")
        return answer

    stalls = WriteStalls(writable, clock=lambda: now[0])
    since = 0.0
    for step in (1.0, 2.0, 4.0, 8.0, 16.0):
        now[0] += step
        since = stalls.poll(since)
    assert stalls.seconds() == 2.0 + 4.0 + 16.0
