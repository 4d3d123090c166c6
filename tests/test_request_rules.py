"""The compiled request rules (``cluster.api.rules``): what a broken rule is reported as."""

from __future__ import annotations

import pytest
from petribill.v1 import accounts_pb2, billing_pb2, charging_pb2, common_pb2

from cluster.api.rules import RuleError, check_message

BATCH_MAX = 1_000


def _complaint(message: object) -> str:
    with pytest.raises(RuleError) as raised:
        check_message(message, batch_items_max=BATCH_MAX)
    return str(raised.value)


def _session(**fields: object) -> charging_pb2.SessionRequest:
    given: dict[str, object] = {
        "request_id": "r-1",
        "session_id": "s-1",
        "account_id": "a-1",
        "step": charging_pb2.SESSION_STEP_INITIAL,
        "requested_units": 60,
    }
    given.update(fields)
    return charging_pb2.SessionRequest(**given)


def test_a_well_formed_session_step_passes() -> None:
    """A session step that keeps every rule raises nothing."""
    check_message(_session(), batch_items_max=BATCH_MAX)


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"request_id": "r" * 129}, "SessionRequest.request_id has 129 characters (at most 128)"),
        ({"request_id": "r 1"}, "SessionRequest.request_id must match [!-~]+, got 'r 1'"),
        ({"session_id": ""}, "SessionRequest.session_id is required"),
        ({"step": 0}, "SessionRequest.step must be set (not SessionStep UNSPECIFIED)"),
        ({"step": 9}, "SessionRequest.step: 9 is not a value of SessionStep"),
        ({"requested_units": -1}, "SessionRequest.requested_units must be at least 0, got -1"),
        ({"at_s": 5}, "SessionRequest.at_s must be Unix seconds in"),
    ],
)
def test_a_broken_scalar_rule_names_the_field_by_its_path(
    fields: dict[str, object], said: str
) -> None:
    """Each kind of scalar rule (length, pattern, required, enum, bounds, time) is reported
    with the field's full path and what is wrong with it."""
    assert _complaint(_session(**fields)).startswith(said)


def test_the_first_broken_rule_in_field_order_is_the_one_reported() -> None:
    """With several scalar fields broken, the earliest field in the message is named."""
    said = _complaint(_session(request_id="", session_id="", step=0))
    assert said == "SessionRequest.request_id is required"


def test_field_order_holds_across_a_message_field_between_scalars() -> None:
    """Scalars before a nested message are checked before it, scalars after it after it."""
    bad_money = common_pb2.Money(micros=-1, currency="EUR")
    before = accounts_pb2.TopUpRequest(request_id="t-1", account_id="", amount=bad_money, at_s=5)
    assert _complaint(before) == "TopUpRequest.account_id is required"
    after = accounts_pb2.TopUpRequest(request_id="t-1", account_id="a-1", amount=bad_money, at_s=5)
    assert _complaint(after) == "TopUpRequest.amount.micros must be at least 1, got -1"


def test_an_item_of_a_repeated_scalar_is_named_by_its_index() -> None:
    """A broken item of a repeated string field is reported as ``field[index]``."""
    request = billing_pb2.BillRunRequest(
        request_id="b-1", cycle_id="2026-11", account_ids=["a-1", "a-2", "-bad"]
    )
    assert _complaint(request).startswith("BillRunRequest.account_ids[2] must match ")
