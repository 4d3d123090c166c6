"""The chaos load, bulk path included, against an in-process cluster behind a real gateway.

The load's unary worker sends every other batch as Arrow columns
(SubmitUsageColumns) and checks those answers as it checks SubmitUsage's: a
resent batch answers each record's first status as a replay, an acknowledged
id with another number is refused naming ``served_msisdn``. Without faults
every answer must be right and every record acknowledged.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_gateway_support import LoopThread

from chaos.load import Load
from chaos.runner import TARIFFS, _accounts, _create_accounts
from cluster.client import PetribillClient
from cluster.deploy.inprocess import InProcessCluster
from cluster.gateway.server import Gateway

pytestmark = pytest.mark.timeout(600)


def test_load_with_the_bulk_path_gets_every_answer_right(tmp_path: Path) -> None:
    """Both usage paths in one load: no wrong duplicate or hijack answer, no failure."""
    loop = LoopThread()
    cluster = InProcessCluster(tmp_path / "data", TARIFFS, duties=False).start()
    gateway = Gateway(cluster.backend(), "127.0.0.1", 0)
    try:
        loop.run(gateway.start())
        with PetribillClient([gateway.address], timeout_s=60) as client:
            accounts = _accounts(6, seed=7)
            _create_accounts(client, accounts, 7)
            load = Load(
                client, accounts, seed=7, workers=2, batch=20, duplicate_rate=0.3,
                hijack_rate=0.3, malformed_rate=0.05,
            ).start()  # fmt: skip
            deadline = time.monotonic() + 120
            while load.figures.batches < 60 and time.monotonic() < deadline:
                time.sleep(0.1)
            load.stop()
            figures = load.figures
            assert figures.batches >= 60, figures
            assert figures.duplicate_batches and figures.hijacked_batches, figures
            assert figures.duplicate_answers_wrong == 0, figures
            assert figures.hijack_answers_wrong == 0, figures
            assert load.records_acked > 0
            assert any(a.malformed for a in load.acked.values())
    finally:
        loop.run(gateway.stop(0.2))
        cluster.close()
        loop.close()
