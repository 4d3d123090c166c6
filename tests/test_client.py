"""The client SDK against real gateways on loopback: every call, retries, failover, streams."""

from __future__ import annotations

import socket
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from petribill.v1 import charging_pb2, notifications_pb2, usage_pb2
from test_gateway_support import T_NOV, HookedBackend, running_gateways

from billing.money import Money
from billing.records import Service, UsageRecord
from cluster.api.errors import BackendError
from cluster.client import PetribillClient, PetribillError
from cluster.client.calls import method_name
from cluster.client.transport import PROTO_MODULES
from cluster.wire import decimal_from_proto

pytestmark = pytest.mark.timeout(30)

Code = grpc.StatusCode
MSISDN = "4915100000001"


def _sms(record_id: str, at_s: int = T_NOV) -> dict[str, Any]:
    return {
        "record_id": record_id,
        "service": "sms",
        "served_msisdn": MSISDN,
        "record_opening_time_s": at_s,
        "called_number": "447700900123",  # to the UK: not in a bundle, 0.15 a message
        "sms_count": 1,
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _requests_of(backend: HookedBackend, method: str) -> list[Any]:
    return [request for name, request in backend.calls if name == method]


def test_every_rpc_has_an_sdk_method_built_from_the_protos() -> None:
    """The SDK has one method per RPC (snake case of its name), made from the descriptors;
    only the client stream is written by hand."""
    wanted = {
        method_name(m.name)
        for module in PROTO_MODULES
        for service in module.DESCRIPTOR.services_by_name.values()
        for m in service.methods
    }
    missing = {name for name in wanted if not callable(getattr(PetribillClient, name, None))}
    assert not missing
    assert "stream_usage" in wanted  # the client stream, by hand in cluster/client/streams.py


def test_every_sdk_call_reaches_its_rpc(tmp_path: Path) -> None:
    """Each SDK method takes plain values (fields in .proto order or by name) and returns
    the RPC's answer from the real backend."""
    with (
        running_gateways() as (_loop, backend, gateways),
        PetribillClient([gateways[0].address]) as client,
    ):
        account = client.create_account("a1", "prepaid", msisdns=[MSISDN])
        assert account.account_id == "a1"
        assert client.get_account("a1").currency == "EUR"
        balance = client.top_up("a1", "12.50")
        assert decimal_from_proto(balance.prepaid) == Decimal("12.5")
        record = UsageRecord(
            record_id="sdk:2",
            service=Service.VOICE,
            served_msisdn=MSISDN,
            record_opening_time_s=T_NOV,
            called_number="447700900123",
            duration_s=30,
        )
        answer = client.submit_usage([_sms("sdk:1"), record], batch_id="b1")
        assert answer.batch_id == "b1"
        assert [r.status for r in answer.results] == [usage_pb2.RECORD_STATUS_CHARGED] * 2
        charged = sum(r.amount.micros for r in answer.results)
        assert client.get_balance("a1").prepaid.micros == 12_500_000 - charged
        assert client.switch_payment_mode("a1", "hybrid").payment_mode == 3
        assert client.set_credit_limit("a1", Money(50_000_000, "EUR")).credit_limit.micros == (
            50_000_000
        )
        lines = client.list_usage("a1").lines
        assert [line.record_id for line in lines] == ["sdk:2", "sdk:1"]
        steps = [
            client.charge_session("s1", "initial", account_id="a1", service="data"),
            client.charge_session("s1", "update", account_id="a1", used_units=500_000),
            client.charge_session("s1", "terminate", account_id="a1", used_units=200_000),
        ]
        assert {s.result for s in steps} == {charging_pb2.SESSION_RESULT_SUCCESS}
        debit = client.direct_debit("a1", service="content", content_item_id="news-day-pass")
        assert debit.charged.micros > 0
        assert client.refund("a1", amount="0.01").balance_after.micros > 0
        quote = client.price_enquiry("smart", service="voice", units=60, called_number="4930123456")
        assert quote.billed_units == 60
        assert client.balance_check("a1", "1").sufficient
        progress = list(client.run_billing("2026-10", at_s=T_NOV))
        assert progress[-1].finished
        (invoice,) = client.list_invoices("a1").invoices  # hybrid: the plan's fee, a draft
        assert client.get_invoice("a1", invoice.invoice_id).cycle_id == "2026-10"
        with pytest.raises(PetribillError) as no_invoice:
            client.get_invoice("a1", "inv-none")
        assert no_invoice.value.code == Code.NOT_FOUND
        with pytest.raises(PetribillError) as nothing_to_reverse:
            client.reverse_payment("a1", "pay-none")
        assert nothing_to_reverse.value.code == Code.FAILED_PRECONDITION
        paid = client.apply_payment("a1", "10", request_id="pay-1")
        assert paid.request_id == "pay-1" and paid.credit.micros == 10_000_000
        assert client.reverse_payment("a1", "pay-1").request_id
        assert client.get_tariffs().default_plan == "smart"
        assert list(client.list_notifications("a1").notifications) == []
        assert client.cluster_status().nodes[0].node_id == "n0"
        assert client.reconcile().balanced
        assert client.inspect().ok
        assert list(client.list_rejects().rejects) == []
        assert client.reprocess_rejects(["r1"]).reprocessed == 0
        assert client.backup(request_id="bk1").done
        assert client.health() == {gateways[0].address: "SERVING"}
        # Every write carried a generated request id.
        ids = [r.request_id for name, r in backend.calls if getattr(r, "request_id", "")]
        assert len(ids) >= 10 and len(set(ids)) == len(ids)


def test_unavailable_is_retried_with_the_same_request_id() -> None:
    """A top-up answered UNAVAILABLE is retried with the same request id and applied once."""
    with (
        running_gateways() as (_loop, backend, gateways),
        PetribillClient(gateways[0].address, backoff_s=0.01) as client,
    ):
        client.create_account("a1", msisdns=[MSISDN])
        backend.failures["top_up"] = [
            BackendError(Code.UNAVAILABLE, "shard acct-03 is being taken over")
        ] * 2
        balance = client.top_up("a1", "5")
        assert balance.prepaid.micros == 5_000_000
        tries = _requests_of(backend, "top_up")
        assert len(tries) == 3
        assert len({t.request_id for t in tries}) == 1


def test_fails_over_to_the_next_gateway_when_one_stops() -> None:
    """With one of two gateways stopped, calls go to the other; a dead first address is skipped."""
    with running_gateways(2) as (loop, _backend, gateways):
        first, second = gateways
        with PetribillClient([first.address, second.address], backoff_s=0.01) as client:
            client.create_account("a1", msisdns=[MSISDN])
            loop.run(first.stop(0.1))
            assert client.top_up("a1", "1").prepaid.micros == 1_000_000
            assert client.addresses[client._current] == second.address
        dead = f"127.0.0.1:{_free_port()}"
        with PetribillClient([dead, second.address], backoff_s=0.01) as client:
            assert client.get_balance("a1").prepaid.micros == 1_000_000
            assert client.health() == {dead: "UNAVAILABLE", second.address: "SERVING"}


def test_failover_reaches_a_live_gateway_past_many_dead_and_repeated_ones() -> None:
    """Regression (chaos seed 12, 30 minutes): gateways added as nodes were replaced put
    dead addresses, some twice, before the live ones; failover moved on from the first
    position of the address it had tried, so it cycled among dead ones for ever. It
    walks positions now, and a repeated address is kept once."""
    with running_gateways() as (_loop, _backend, gateways):
        dead = [f"127.0.0.1:{_free_port()}" for _ in range(3)]
        addresses = [dead[0], dead[1], dead[2], dead[1], gateways[0].address]
        with PetribillClient(addresses, retries=1, backoff_s=0.01) as client:
            assert client.addresses == [*dead, gateways[0].address]
            client.add_address(dead[0])
            assert len(client.addresses) == 4
            errors = 0
            while True:  # each call tries two addresses, then gives up: the caller retries
                try:
                    client.create_account("a1", msisdns=[MSISDN], request_id="c1")
                    break
                except PetribillError as exc:
                    assert exc.code is Code.UNAVAILABLE
                    errors += 1
                    assert errors < 3, "failover never reached the live gateway"
            assert client.addresses[client._current] == gateways[0].address


def test_invalid_argument_and_already_exists_are_not_retried() -> None:
    """A refusal that would only fail again reaches the caller after exactly one attempt."""
    with (
        running_gateways() as (_loop, backend, gateways),
        PetribillClient(gateways[0].address, backoff_s=0.01) as client,
    ):
        client.create_account("a1", msisdns=[MSISDN])
        backend.failures["top_up"] = [BackendError(Code.INVALID_ARGUMENT, "currency XXX")]
        with pytest.raises(PetribillError) as invalid:
            client.top_up("a1", "5")
        assert invalid.value.code == Code.INVALID_ARGUMENT and invalid.value.attempts == 1
        assert len(_requests_of(backend, "top_up")) == 1
        client.top_up("a1", "5", request_id="t-1")
        with pytest.raises(PetribillError) as reused:
            client.top_up("a1", "6", request_id="t-1")
        assert reused.value.code == Code.ALREADY_EXISTS and "amount" in reused.value.details
        assert len(_requests_of(backend, "top_up")) == 3
        with pytest.raises(PetribillError) as empty:
            client.submit_usage([])
        assert empty.value.code == Code.INVALID_ARGUMENT and empty.value.attempts == 1


def test_resource_exhausted_backs_off_then_succeeds() -> None:
    """Back-pressure is retried after growing, jittered pauses, with the same record ids."""
    pauses: list[float] = []
    with (
        running_gateways() as (_loop, backend, gateways),
        PetribillClient(gateways[0].address, backoff_s=0.01, sleep=pauses.append) as client,
    ):
        client.create_account("a1", msisdns=[MSISDN])
        client.top_up("a1", "5")
        backend.failures["submit_usage"] = [BackendError(Code.RESOURCE_EXHAUSTED, "busy")] * 3
        answer = client.submit_usage([_sms("bp:1")])
        assert answer.results[0].status == usage_pb2.RECORD_STATUS_CHARGED
        assert len(pauses) == 3 and all(0 < p <= 0.01 * 2**i for i, p in enumerate(pauses))
        batches = _requests_of(backend, "submit_usage")
        assert {b.records[0].record_id for b in batches} == {"bp:1"}


def test_retries_are_bounded() -> None:
    """A call that stays UNAVAILABLE fails after 1 + retries attempts with the last status."""
    with (
        running_gateways() as (_loop, backend, gateways),
        PetribillClient(gateways[0].address, retries=3, backoff_s=0.001) as client,
    ):
        backend.failures["get_balance"] = [BackendError(Code.UNAVAILABLE, "takeover")] * 10
        with pytest.raises(PetribillError) as failed:
            client.get_balance("a1")
        assert failed.value.code == Code.UNAVAILABLE and failed.value.attempts == 4


def test_stream_usage_resends_unanswered_batches_after_unavailable() -> None:
    """A stream broken by UNAVAILABLE resumes on a new stream; every record is charged once."""
    with (
        running_gateways() as (_loop, backend, gateways),
        PetribillClient(gateways[0].address, backoff_s=0.01) as client,
    ):
        client.create_account("a1", msisdns=[MSISDN])
        client.top_up("a1", "100")
        # The third batch sent is answered UNAVAILABLE, once.
        backend.failures["stream_usage"] = [None, None, BackendError(Code.UNAVAILABLE, "takeover")]
        batches = [[_sms(f"st:{n}:{i}") for i in range(2)] for n in range(6)]
        answers = list(client.stream_usage(batches, window=2))
        assert [a.batch_id for a in answers] == [str(n) for n in range(6)]
        charged = {r.record_id for a in answers for r in a.results}
        assert charged == {f"st:{n}:{i}" for n in range(6) for i in range(2)}
        stored = {line.record_id for line in client.iter_usage("a1")}
        assert stored == charged  # each record charged once, resent or not
        assert len(_requests_of(backend, "stream_usage")) > 6  # something was resent


def test_notifications_iterator_yields_new_notifications() -> None:
    """The SDK's notification stream yields a notification raised after subscribing."""
    with (
        running_gateways() as (_loop, backend, gateways),
        PetribillClient(gateways[0].address) as client,
    ):
        client.create_account("a1", msisdns=[MSISDN])
        client.top_up("a1", "1.10")
        stream = client.notifications(["a1"])
        got: list[Any] = []
        reader = threading.Thread(target=lambda: got.append(next(stream)), daemon=True)
        reader.start()
        # The subscription has found where each shard stands and polled a few rounds since.
        for _ in range(1000):
            if backend.ops_run["NotificationsSince"] >= 20:
                break
            threading.Event().wait(0.01)
        # In the top-up's cycle (a late cycle's usage raises no reminder): 1.10 - 0.15.
        client.submit_usage([_sms("low:1", at_s=int(time.time()) - 60)])
        reader.join(5)
        assert got[0].kind == notifications_pb2.NOTIFICATION_KIND_LOW_BALANCE
        stream.close()
