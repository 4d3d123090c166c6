"""Conversions between billing values and wire messages (cluster.wire)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from petribill.v1 import common_pb2

from billing.money import Money
from billing.readers import Reject
from billing.records import Service, UsageRecord
from billing.tariffs.model import PaymentMode
from cluster.wire import (
    WireError,
    decimal_from_proto,
    money_from_proto,
    money_to_proto,
    payment_mode_from_proto,
    payment_mode_to_proto,
    record_from_proto,
    record_to_proto,
    service_from_proto,
    service_to_proto,
)


def test_money_crosses_the_wire_as_integer_micros_with_a_display_decimal() -> None:
    """Decimal strings, Decimals and Money become exact micros; the decimal is for display."""
    assert money_to_proto("12.50", "EUR") == common_pb2.Money(
        micros=12_500_000, currency="EUR", decimal="12.5000"
    )
    assert money_to_proto(Decimal("0.000001"), "EUR").micros == 1
    assert money_to_proto(3, "EUR").micros == 3_000_000  # whole units, never micros
    assert money_to_proto(Money(-700_250, "USD")).decimal == "-0.70025"
    assert money_from_proto(money_to_proto("1.25", "EUR")) == Money(1_250_000, "EUR")
    assert money_from_proto(common_pb2.Money(micros=5), "EUR") == Money(5, "EUR")
    assert decimal_from_proto(common_pb2.Money(micros=1_250_000)) == Decimal("1.25")


@pytest.mark.parametrize("bad", ["1.0000001", "abc", "NaN", "1e30"])
def test_money_that_cannot_be_exact_is_refused(bad: str) -> None:
    """More than six decimals, non-numbers and amounts beyond int64 are errors, never rounded."""
    with pytest.raises(WireError, match="amount"):
        money_to_proto(bad, "EUR")


def test_money_without_a_currency_cannot_become_money() -> None:
    """A wire amount with no currency (and no default) is refused."""
    with pytest.raises(WireError, match="currency"):
        money_from_proto(common_pb2.Money(micros=1))


def test_enums_map_one_to_one() -> None:
    """Every billing service and payment mode has its proto number, and back."""
    for service in Service:
        assert service_from_proto(service_to_proto(service)) is service
    for mode in PaymentMode:
        assert payment_mode_from_proto(payment_mode_to_proto(mode.value)) is mode
    with pytest.raises(WireError, match="service"):
        service_to_proto("fax")
    with pytest.raises(WireError, match="payment_mode"):
        payment_mode_from_proto(0)


def test_a_usage_record_round_trips() -> None:
    """A UsageRecord survives the wire unchanged (except provenance, which stays local)."""
    record = UsageRecord(
        record_id="ggsn:1",
        service=Service.DATA,
        served_msisdn="4915100000001",
        record_opening_time_s=1_700_000_000,
        uplink_bytes=1_000,
        downlink_bytes=50_000,
        rating_group=0,
        roaming=True,
        source_file="a.csv",
        source_line=3,
    )
    wire = record_to_proto(record)
    assert wire.HasField("rating_group") and wire.rating_group == 0
    back = record_from_proto(wire)
    assert isinstance(back, UsageRecord)
    assert back.content_key() == record.content_key()
    assert back.source_file is None


def test_a_record_dict_with_an_unknown_field_is_refused() -> None:
    """A misspelt field in a record dict is an error, not silently dropped."""
    with pytest.raises(WireError, match="durattion_s"):
        record_to_proto({"record_id": "x", "service": "voice", "durattion_s": 60})
    wire = record_to_proto({"record_id": "x", "service": "voice", "rating_group": None})
    assert not wire.HasField("rating_group")
    # A record without its id is answered as a reject naming the field, not an error.
    reject = record_from_proto(common_pb2.UsageRecord(service=common_pb2.SERVICE_SMS))
    assert isinstance(reject, Reject) and reject.field == "record_id"
