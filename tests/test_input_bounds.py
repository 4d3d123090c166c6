"""Issue 15's bad inputs, each answered with a clear status over real gRPC (item 3, 4).

Each test is one finding of the issue: before the rules of rules.proto it was
INTERNAL, UNKNOWN, RESOURCE_EXHAUSTED or accepted; now it is refused, naming
the field, and nothing of what was sent comes back beyond a short prefix.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from petribill.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    billing_pb2,
    billing_pb2_grpc,
    common_pb2,
    rules_pb2,
    usage_pb2,
    usage_pb2_grpc,
)
from test_gateway_support import T_NOV, running_gateways

from billing.cycle import monthly_cycle
from billing.limits import AMOUNT_MAX_MICROS, TIME_MAX_S, TIME_MIN_S, UNITS_MAX
from cluster.api.errors import BackendError
from cluster.api.rules import field_rule
from cluster.backend.billing import BILL_RUN_AHEAD_MAX_S
from cluster.backend.rpcs import RPCS
from cluster.gateway.calls import MESSAGE_CHARS_MAX, Failure
from cluster.wire import RECORD_ID_CHARS_MAX

pytestmark = pytest.mark.timeout(60)
Code = grpc.StatusCode
INT64_MAX = 2**63 - 1


@pytest.fixture(scope="module")
def channel() -> Iterator[grpc.Channel]:
    with (
        running_gateways() as (_loop, _backend, gateways),
        grpc.insecure_channel(gateways[0].address) as opened,
    ):
        accounts = accounts_pb2_grpc.AccountServiceStub(opened)
        accounts.CreateAccount(
            accounts_pb2.CreateAccountRequest(
                request_id="c-b1", account_id="b1", payment_mode=common_pb2.PAYMENT_MODE_PREPAID,
                currency="EUR", msisdns=["491510000111"], start_s=T_NOV,
            ),
            timeout=10,
        )  # fmt: skip
        yield opened


def _refused(call: Any, *args: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        result = call(*args, timeout=10)
        if hasattr(result, "__iter__") and not hasattr(result, "DESCRIPTOR"):
            list(result)
    return raised.value


def _top_up(
    channel: grpc.Channel, micros: int, at_s: int = 0, account_id: str = "b1", timeout: float = 10
) -> Any:
    return accounts_pb2_grpc.AccountServiceStub(channel).TopUp(
        accounts_pb2.TopUpRequest(
            request_id=f"t-{micros}-{at_s}-{len(account_id)}",
            account_id=account_id,
            amount=common_pb2.Money(micros=micros, currency="EUR"),
            at_s=at_s,
        ),
        timeout=timeout,
    )


@pytest.mark.parametrize("micros", [INT64_MAX, 10**18, AMOUNT_MAX_MICROS + 1])
def test_top_up_beyond_the_amount_bound_is_invalid_argument(
    channel: grpc.Channel, micros: int
) -> None:
    """TopUp of the int64 maximum was INTERNAL (struct.error), 10^18 was accepted."""
    error = _refused(_top_up, channel, micros)
    assert error.code() == Code.INVALID_ARGUMENT
    assert "TopUpRequest.amount.micros must be at most 1000000000000000" in error.details()


def test_the_largest_amount_is_accepted(channel: grpc.Channel) -> None:
    """The documented maximum itself is a valid top-up."""
    assert _top_up(channel, AMOUNT_MAX_MICROS).prepaid.micros >= AMOUNT_MAX_MICROS


def test_payment_of_int64_max_is_invalid_argument(channel: grpc.Channel) -> None:
    """ApplyPayment of the int64 maximum was accepted as credit."""
    stub = billing_pb2_grpc.BillingServiceStub(channel)
    request = billing_pb2.PaymentRequest(
        request_id="p-max", account_id="b1", amount=common_pb2.Money(micros=INT64_MAX)
    )
    error = _refused(stub.ApplyPayment, request)
    assert error.code() == Code.INVALID_ARGUMENT
    assert "PaymentRequest.amount.micros" in error.details()


@pytest.mark.parametrize("at_s", [253_402_300_000, -5, TIME_MIN_S - 1, TIME_MAX_S + 1])
def test_times_outside_the_window_are_invalid_argument(channel: grpc.Channel, at_s: int) -> None:
    """at_s in the year 9999 was INTERNAL (OverflowError); a negative at_s was accepted."""
    error = _refused(_top_up, channel, 1, at_s)
    assert error.code() == Code.INVALID_ARGUMENT
    assert "TopUpRequest.at_s must be Unix seconds in" in error.details()


def test_a_20_kb_account_id_is_invalid_argument_naming_the_field(channel: grpc.Channel) -> None:
    """It was RESOURCE_EXHAUSTED: the message echoed the id into the grpc-message trailer."""
    stub = accounts_pb2_grpc.AccountServiceStub(channel)
    error = _refused(stub.GetAccount, accounts_pb2.GetAccountRequest(account_id="x" * 20_000))
    assert error.code() == Code.INVALID_ARGUMENT
    assert "GetAccountRequest.account_id has 20000 characters (at most 64)" in error.details()
    assert len(error.details()) < 200


def test_a_1_mb_record_id_is_rejected_and_echoed_as_a_bounded_prefix(
    channel: grpc.Channel,
) -> None:
    """The result echoed the whole 1 MB id; now a prefix and a hash, the record rejected."""
    record = common_pb2.UsageRecord(
        record_id="r" * 1_000_000, service=common_pb2.SERVICE_VOICE,
        served_msisdn="491510000111", record_opening_time_s=T_NOV,
        called_number="4930123456", duration_s=60,
    )  # fmt: skip
    stub = usage_pb2_grpc.UsageServiceStub(channel)
    (result,) = stub.SubmitUsage(usage_pb2.SubmitUsageRequest(records=[record]), timeout=10).results
    assert result.status == usage_pb2.RECORD_STATUS_REJECTED and result.reason == "malformed"
    assert len(result.record_id) <= RECORD_ID_CHARS_MAX
    assert len(result.detail) < 200
    assert result.record_id.startswith("r" * 64)


@pytest.mark.parametrize("data", [b"\xff\xff\xff\x0f", b"\x0a\x05ab", b"\x08" + b"\xff" * 11])
def test_unreadable_requests_are_invalid_argument_not_unknown(
    channel: grpc.Channel, data: bytes
) -> None:
    """Bytes that are no protobuf message answered UNKNOWN (a DecodeError escaped)."""
    unary = channel.unary_unary(
        "/petribill.v1.AccountService/GetAccount",
        request_serializer=bytes,
        response_deserializer=bytes,
    )
    error = _refused(unary, data)
    assert error.code() == Code.INVALID_ARGUMENT
    assert "not a readable message" in error.details()
    stream = channel.stream_stream(
        "/petribill.v1.UsageService/StreamUsage",
        request_serializer=bytes,
        response_deserializer=bytes,
    )
    error = _refused(lambda **kw: list(stream(iter([data]), **kw)))
    assert error.code() == Code.INVALID_ARGUMENT


def test_status_messages_are_bounded() -> None:
    """A refusal never carries more than MESSAGE_CHARS_MAX characters of message."""
    failure = Failure(Code.INVALID_ARGUMENT, "y" * 1_000_000)
    assert len(failure.message) < MESSAGE_CHARS_MAX + 40
    assert BackendError(Code.NOT_FOUND, "z").message == "z"


def test_a_bill_run_dated_beyond_now_is_failed_precondition(channel: grpc.Channel) -> None:
    """On 2026-12-06 a run of 2026-12 dated 2027-01-05 issued a final December invoice."""
    stub = billing_pb2_grpc.BillingServiceStub(channel)
    ahead = int(time.time()) + BILL_RUN_AHEAD_MAX_S + 3600
    request = billing_pb2.BillRunRequest(request_id="br-f", cycle_id="2026-11", at_s=ahead)
    error = _refused(stub.RunBilling, request)
    assert error.code() == Code.FAILED_PRECONDITION
    assert "beyond the cluster's clock" in error.details()


def test_a_bill_run_before_the_cycle_end_is_failed_precondition(channel: grpc.Channel) -> None:
    """A run dated inside its own cycle is refused with a message saying why."""
    stub = billing_pb2_grpc.BillingServiceStub(channel)
    request = billing_pb2.BillRunRequest(request_id="br-e", cycle_id="2026-11", at_s=T_NOV)
    error = _refused(stub.RunBilling, request)
    assert error.code() == Code.FAILED_PRECONDITION
    assert "cycle_not_ended" in error.details() and "end of its cycle" in error.details()


def test_no_invoice_for_a_cycle_before_the_subscription_starts(channel: grpc.Channel) -> None:
    """An October run issued a 0.00 invoice to an account whose plan starts in November."""
    accounts = accounts_pb2_grpc.AccountServiceStub(channel)
    accounts.CreateAccount(
        accounts_pb2.CreateAccountRequest(
            request_id="c-late", account_id="late", payment_mode=common_pb2.PAYMENT_MODE_POSTPAID,
            currency="EUR", msisdns=["491510000222"], start_s=T_NOV,
        ),
        timeout=10,
    )  # fmt: skip
    october = monthly_cycle(2026, 10, "Europe/Berlin")
    stub = billing_pb2_grpc.BillingServiceStub(channel)
    run = billing_pb2.BillRunRequest(
        request_id="br-oct", cycle_id="2026-10", account_ids=["late"],
        at_s=october.end_s + 4 * 86_400,
    )  # fmt: skip
    progress = list(stub.RunBilling(run, timeout=30))
    assert progress[-1].finished and progress[-1].invoices_issued == 0
    listed = stub.ListInvoices(billing_pb2.ListInvoicesRequest(account_id="late"), timeout=10)
    assert not [i for i in listed.invoices if i.cycle_id == "2026-10"]


def _request_messages() -> dict[str, Descriptor]:
    found: dict[str, Descriptor] = {}

    def walk(descriptor: Descriptor) -> None:
        if descriptor.full_name in found:
            return
        found[descriptor.full_name] = descriptor
        for item in descriptor.fields:
            if item.type == FieldDescriptor.TYPE_MESSAGE:
                walk(item.message_type)

    for rpc in RPCS:
        walk(rpc.request_type.DESCRIPTOR)
    return found


def test_every_request_string_and_integer_has_a_bound() -> None:
    """Every string of a request has a max_len (or is a currency); every integer a min and
    max or the time window: the rules are written once per field, in the protos."""
    unbounded = []
    for name, descriptor in _request_messages().items():
        for item in descriptor.fields:
            rule = field_rule(item) or rules_pb2.FieldRule()
            if item.type == FieldDescriptor.TYPE_STRING:
                ok = bool(rule.max_len or rule.currency)
            elif item.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_INT32):
                ok = rule.time or (rule.HasField("min") and rule.HasField("max"))
            else:
                continue
            if item.is_repeated:
                ok = ok and bool(rule.max_items or rule.batch)
            if not ok:
                unbounded.append(f"{name}.{item.name}")
    assert unbounded == []


def test_the_proto_bounds_are_the_core_limits() -> None:
    """The numbers written in the protos are billing.limits' (one truth, two readers)."""
    money = common_pb2.Money.DESCRIPTOR.fields_by_name["micros"]
    assert field_rule(money).max == AMOUNT_MAX_MICROS  # type: ignore[union-attr]
    top_up = accounts_pb2.TopUpRequest.DESCRIPTOR.fields_by_name["amount"]
    assert field_rule(top_up).max == AMOUNT_MAX_MICROS  # type: ignore[union-attr]
    duration = common_pb2.UsageRecord.DESCRIPTOR.fields_by_name["duration_s"]
    assert field_rule(duration).max == UNITS_MAX  # type: ignore[union-attr]
    record_id = common_pb2.UsageRecord.DESCRIPTOR.fields_by_name["record_id"]
    assert field_rule(record_id).max_len == RECORD_ID_CHARS_MAX  # type: ignore[union-attr]
