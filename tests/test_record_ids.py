"""A record id is unique in the whole cluster, whichever subscriber it names, and a repeat
answers its stored result flagged as a replay — through the SDK, the gateway and the real
backend over an in-process cluster (4 account shards, 2 rating partitions, real RocksDB)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from petribill.v1 import usage_pb2
from test_gateway_support import T_NOV, running_gateways

from actors.routing import partition_of, shard_of
from cluster.client import PetribillClient, PetribillError

pytestmark = pytest.mark.timeout(120)

S = usage_pb2
UK = "447700900123"  # no bundle of the smart plan covers it: every call costs money


def _numbers_apart() -> tuple[tuple[str, str], tuple[str, str]]:
    """Two (account, msisdn) pairs whose accounts live on different shards and whose
    numbers belong to different partitions, so nothing but the id's claim is shared."""
    pairs = [(f"acct-{i}", f"49151000{i:05d}") for i in range(200)]
    first = pairs[0]
    for other in pairs[1:]:
        if shard_of(other[0], 4) != shard_of(first[0], 4) and partition_of(
            other[1], 2
        ) != partition_of(first[1], 2):
            return first, other
    raise AssertionError("no two accounts apart")


def _call(record_id: str, msisdn: str, duration_s: int = 60) -> dict[str, Any]:
    return {
        "record_id": record_id,
        "service": "voice",
        "served_msisdn": msisdn,
        "record_opening_time_s": T_NOV,
        "called_number": UK,
        "duration_s": duration_s,
    }


@pytest.fixture
def client() -> Iterator[tuple[PetribillClient, tuple[str, str], tuple[str, str]]]:
    (a, a_msisdn), (b, b_msisdn) = _numbers_apart()
    with (
        running_gateways() as (_loop, _backend, gateways),
        PetribillClient(gateways[0].address) as sdk,
    ):
        for account, msisdn in ((a, a_msisdn), (b, b_msisdn)):
            sdk.create_account(account, "postpaid", plan_id="smart", msisdns=[msisdn])
        yield sdk, (a, a_msisdn), (b, b_msisdn)


def test_an_id_sent_again_with_another_subscribers_number_is_refused(client: Any) -> None:
    """The same record id with another subscriber's MSISDN (another shard, another
    partition) is EXISTS_WITH_DIFFERENT_CONTENT naming the field; nothing is charged twice."""
    sdk, (a, a_msisdn), (b, b_msisdn) = client
    [first] = sdk.submit_usage([_call("sw:1", a_msisdn)]).results
    assert first.status == S.RECORD_STATUS_CHARGED and first.charged_account_id == a
    [other] = sdk.submit_usage([_call("sw:1", b_msisdn)]).results
    assert other.status == S.RECORD_STATUS_EXISTS_WITH_DIFFERENT_CONTENT
    assert other.reason == "served_msisdn"
    assert sdk.get_balance(b).unbilled.micros == 0
    assert [line.record_id for line in sdk.iter_usage(b)] == []
    assert [line.record_id for line in sdk.iter_usage(a)] == ["sw:1"]
    assert sdk.get_balance(a).unbilled.micros == first.amount.micros > 0


def test_a_resend_answers_the_stored_result_flagged_as_a_replay(client: Any) -> None:
    """A record sent again with the same content answers its first status and amount,
    with replay set; revenue assurance counts it as a duplicate, charged once."""
    sdk, (a, a_msisdn), _ = client
    [first] = sdk.submit_usage([_call("sw:2", a_msisdn, 125)]).results
    [again] = sdk.submit_usage([_call("sw:2", a_msisdn, 125)]).results
    assert (first.status, first.replay) == (S.RECORD_STATUS_CHARGED, False)
    assert (again.status, again.replay) == (S.RECORD_STATUS_CHARGED, True)
    assert again.amount.micros == first.amount.micros and again.charged_account_id == a
    report = sdk.reconcile()
    assert (report.rated, report.duplicates, report.balanced) == (1, 1, True)
    assert sdk.get_balance(a).unbilled.micros == first.amount.micros


def test_a_race_of_one_id_for_two_subscribers_charges_one(client: Any) -> None:
    """Two batches that use one id for two subscribers at the same time: exactly one is
    charged, the other refused, whichever comes first."""
    sdk, (a, a_msisdn), (b, b_msisdn) = client
    answers: dict[str, Any] = {}
    barrier = threading.Barrier(2)

    def send(name: str, msisdn: str) -> None:
        barrier.wait()
        answers[name] = sdk.submit_usage([_call("sw:race", msisdn)]).results[0]

    threads = [threading.Thread(target=send, args=x) for x in ((a, a_msisdn), (b, b_msisdn))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    statuses = sorted(r.status for r in answers.values())
    assert statuses == [S.RECORD_STATUS_CHARGED, S.RECORD_STATUS_EXISTS_WITH_DIFFERENT_CONTENT]
    winner = next(r.charged_account_id for r in answers.values() if r.amount.micros)
    loser = b if winner == a else a
    assert [line.record_id for line in sdk.iter_usage(winner)] == ["sw:race"]
    assert sdk.get_balance(loser).unbilled.micros == 0


def test_a_number_held_by_one_account_cannot_be_taken_by_another(client: Any) -> None:
    """CreateAccount with a number another account holds is ALREADY_EXISTS naming the holder;
    the new account is not created, and the number's usage still charges its holder."""
    sdk, (a, a_msisdn), _ = client
    with pytest.raises(PetribillError) as taken:
        sdk.create_account("acct-new", "prepaid", msisdns=[a_msisdn])
    assert taken.value.code == grpc.StatusCode.ALREADY_EXISTS and a in taken.value.details
    with pytest.raises(PetribillError) as absent:
        sdk.get_account("acct-new")
    assert absent.value.code == grpc.StatusCode.NOT_FOUND
    [result] = sdk.submit_usage([_call("sw:own", a_msisdn)]).results
    assert result.status == S.RECORD_STATUS_CHARGED and result.charged_account_id == a
    # The same account id with a free number is fine afterwards: nothing was left behind.
    created = sdk.create_account("acct-new", "prepaid", msisdns=["4915199900001"])
    assert list(created.msisdns) == ["4915199900001"]


def test_a_moved_number_charges_its_holder_at_the_time_of_use(client: Any) -> None:
    """After a move at time M, usage before M charges the old holder and usage from M on the
    new one (another shard, another plan's prices); the move is idempotent; both accounts
    list their numbers; a move from an account that no longer holds it is refused."""
    sdk, (a, a_msisdn), (b, _) = client
    at_move = T_NOV + 3600
    moved = sdk.move_number(a_msisdn, b, from_account_id=a, at_s=at_move, request_id="mv-1")
    assert a_msisdn in moved.msisdns
    again = sdk.move_number(a_msisdn, b, from_account_id=a, at_s=at_move, request_id="mv-1")
    assert list(again.msisdns) == list(moved.msisdns)
    assert a_msisdn not in sdk.get_account(a).msisdns
    before = _call("sw:before", a_msisdn) | {"record_opening_time_s": at_move - 60}
    after = _call("sw:after", a_msisdn) | {"record_opening_time_s": at_move + 60}
    results = sdk.submit_usage([before, after]).results
    assert [r.charged_account_id for r in results] == [a, b]
    assert [line.record_id for line in sdk.iter_usage(a)] == ["sw:before"]
    assert [line.record_id for line in sdk.iter_usage(b)] == ["sw:after"]
    with pytest.raises(PetribillError) as gone:
        sdk.move_number(a_msisdn, a, from_account_id=a, request_id="mv-2")
    assert gone.value.code == grpc.StatusCode.FAILED_PRECONDITION and b in gone.value.details
