"""What the core does, reached through the API alone (issue #18): a client of real gateways
on loopback over an in-process cluster, with exact amounts.

Sponsored results that carry the sponsor's money.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from petribill.v1 import usage_pb2
from test_gateway_support import T_NOV, HookedBackend, LoopThread, running_gateways

from actors.routing import shard_of
from cluster.client import PetribillClient

pytestmark = pytest.mark.timeout(60)

SHARDS = 4  # the in-process cluster's
CHARGED = usage_pb2.RECORD_STATUS_CHARGED


@pytest.fixture
def served() -> Iterator[tuple[LoopThread, HookedBackend, str, PetribillClient]]:
    with (
        running_gateways() as (loop, backend, gateways),
        PetribillClient([gateways[0].address], timeout_s=20) as client,
    ):
        yield loop, backend, gateways[0].address, client


def ids_on(shard: str, prefix: str, count: int) -> list[str]:
    """``count`` account ids with ``prefix`` owned by ``shard``."""
    return [aid for n in range(10_000) if shard_of(aid := f"{prefix}{n}", SHARDS) == shard][:count]


def ids_off(shard: str, prefix: str, count: int) -> list[str]:
    """``count`` account ids with ``prefix`` owned by a shard other than ``shard``."""
    return [aid for n in range(10_000) if shard_of(aid := f"{prefix}{n}", SHARDS) != shard][:count]


def video(record_id: str, msisdn: str, volume_bytes: int = 10_000_000) -> dict[str, Any]:
    return {
        "record_id": record_id,
        "service": "data",
        "served_msisdn": msisdn,
        "record_opening_time_s": T_NOV,
        "downlink_bytes": volume_bytes,
        "rating_group": 20,
    }


def prepaid(client: PetribillClient, account_id: str, msisdns: list[str], money: str = "50"):  # type: ignore[no-untyped-def]
    client.create_account(account_id, "prepaid", msisdns=msisdns, request_id=f"c-{account_id}")
    return client.top_up(account_id, money, request_id=f"t-{account_id}")


def postpaid(client: PetribillClient, account_id: str, msisdn: str, limit: str | None = None):  # type: ignore[no-untyped-def]
    return client.create_account(
        account_id, "postpaid", plan_id="business", msisdns=[msisdn], credit_limit=limit,
        request_id=f"c-{account_id}",
    )  # fmt: skip


# --- sponsored results -------------------------------------------------------------------


def test_sponsored_results_carry_the_sponsor_money(served: Any) -> None:
    """Zero-rated video (rating group 20) of subscribers on the sponsor's shard and on
    others: each result names the sponsor and the sponsor's price (10 MiB at 0.002), a
    resubmission answers the same as a replay, the subscriber's line shows 0, and the
    amounts added per paying account equal what the sponsor's account was charged."""
    _loop, _backend, _address, client = served
    sponsor = "sponsor-streamflix"
    postpaid(client, sponsor, "4930900000001")
    home = shard_of(sponsor, SHARDS)
    viewers = ids_on(home, "viewer-", 1) + ids_off(home, "viewer-", 2)
    msisdns = [f"4915300000{n}" for n in range(3)]
    for aid, msisdn in zip(viewers, msisdns, strict=True):
        prepaid(client, aid, [msisdn])
    records = [video(f"v:{n}", m) for n, m in enumerate(msisdns)]
    price = math.ceil(10_000_000 / 1_048_576) * 2_000  # D_SPONSOR_WHOLESALE
    for replay in (False, True):
        results = client.submit_usage(records).results
        assert [(r.status, r.replay, r.charged_account_id, r.amount.micros) for r in results] == [
            (CHARGED, replay, sponsor, price)
        ] * 3
    paid: dict[str, int] = {}
    for r in results:
        paid[r.charged_account_id] = paid.get(r.charged_account_id, 0) + r.amount.micros
    assert client.get_balance(sponsor).unbilled.micros == paid[sponsor] == 3 * price
    for aid in viewers:
        (line,) = client.list_usage(aid).lines
        assert (line.amount.micros, line.sponsored_by) == (0, sponsor)
        assert client.get_balance(aid).prepaid.micros == 50_000_000
