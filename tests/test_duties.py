"""Time-driven duties seen by a client: reservations released at the end of their validity,
late session steps, invoices ageing into OVERDUE with one reminder.

Real gateway, SDK and in-process cluster on RocksDB; the cluster's clock is moved by
hand and duty rounds are run by the test (``duty_support``).
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from duty_support import MSISDN, T_NOV, TimedCluster, timed_cluster, wait_for
from petribill.v1 import billing_pb2, charging_pb2, notifications_pb2

from billing.billrun.run import BillRunConfig
from billing.cycle import monthly_cycle
from cluster.client import PetribillError

pytestmark = pytest.mark.timeout(120)

UK = "447700900123"  # international zone 1: 0.19 a minute, 60/1, no bundle
VALIDITY_S = 300
EUR = 1_000_000
OK = charging_pb2.SESSION_RESULT_SUCCESS


def _prepaid(t: TimedCluster, account_id: str = "a1", amount: str = "1.00") -> None:
    t.client.create_account(account_id, "prepaid", msisdns=[MSISDN])
    t.client.top_up(account_id, amount)


def _initial(t: TimedCluster, sid: str, units: int = 600, **fields: Any) -> Any:
    return t.client.charge_session(
        sid, "initial", account_id="a1", service="voice", called_number=UK,
        requested_units=units, request_id=f"{sid}:i", **fields,
    )  # fmt: skip


def _balance(t: TimedCluster, account_id: str = "a1") -> tuple[int, int]:
    balance = t.client.get_balance(account_id)
    return balance.prepaid.micros, balance.reserved.micros


def test_an_abandoned_reservation_is_released_once_at_the_end_of_its_validity() -> None:
    """A session opened and abandoned holds its money until its validity ends, then the
    owner's duty gives all of it back, once: later rounds change nothing."""
    with timed_cluster(session_validity_s=VALIDITY_S) as t:
        _prepaid(t)
        grant = _initial(t, "s1")
        assert grant.result == OK and grant.validity_s == VALIDITY_S
        held = grant.reserved.micros
        assert held > 0 and _balance(t) == (EUR - held, held)
        t.clock.advance(VALIDITY_S - 1)
        assert t.round().sessions_expired == 0 and _balance(t) == (EUR - held, held)
        t.clock.advance(1)
        assert t.round().expired == {t.cluster.router().shard("a1"): 1}
        assert _balance(t) == (EUR, 0)
        t.clock.advance(3600)
        assert t.round().sessions_expired == 0 and _balance(t) == (EUR, 0)
        assert t.client.reconcile().balanced


def test_the_duty_threads_release_reservations_by_themselves() -> None:
    """With the runners started (as every host does), an expired reservation is released
    without anybody asking."""
    with timed_cluster(session_validity_s=VALIDITY_S, duties={"every_s": 0.02}) as t:
        _prepaid(t)
        assert _initial(t, "s1").reserved.micros > 0
        for runner in t.cluster.duty_runners.values():
            runner.start()
        t.clock.advance(VALIDITY_S)
        wait_for(lambda: _balance(t) == (EUR, 0), what="the reservation released")


def test_an_update_after_expiry_is_a_new_initial_within_supervision_then_refused() -> None:
    """A late UPDATE (validity over, duty not yet run) charges its used units and is granted
    anew while the session is supervised (two validity times); after that it is refused
    UNKNOWN_SESSION with nothing charged, and a late TERMINATE still charges its units."""
    with timed_cluster(session_validity_s=VALIDITY_S) as t:
        _prepaid(t)
        _initial(t, "s1", units=120)
        t.clock.advance(VALIDITY_S + 10)
        late = t.client.charge_session(
            "s1", "update", account_id="a1", used_units=60, requested_units=60,
            request_id="s1:u1",
        )  # fmt: skip
        assert late.result == OK and late.granted_units == 60
        assert late.charged.micros == 190_000  # one minute to the UK
        assert _balance(t) == (EUR - 190_000 - late.reserved.micros, late.reserved.micros)
        _initial(t, "s2", units=120)
        t.clock.advance(2 * VALIDITY_S)
        gone = t.client.charge_session(
            "s2", "update", account_id="a1", used_units=60, requested_units=60,
            request_id="s2:u1",
        )  # fmt: skip
        assert gone.result == charging_pb2.SESSION_RESULT_UNKNOWN_SESSION
        assert gone.charged.micros == 0 and gone.granted_units == 0
        end = t.client.charge_session(
            "s2", "terminate", account_id="a1", used_units=30, request_id="s2:t"
        )
        assert end.result == OK and end.charged.micros == 190_000  # 60/1: a minute at least
        t.round()
        prepaid, reserved = _balance(t)
        assert reserved == 0 and prepaid == EUR - 190_000 - 190_000
        assert t.client.reconcile().balanced


def _same_answer(first: Any, again: Any) -> None:
    """Equal in every field but ``detail``, which flags the replay."""
    assert again.detail == "duplicate"
    again.detail = first.detail
    assert again == first


def test_repeated_session_steps_answer_the_first_answers() -> None:
    """A repeated UPDATE and TERMINATE return the first answers unchanged, money included;
    the same request id with other units is ALREADY_EXISTS."""
    with timed_cluster(session_validity_s=VALIDITY_S) as t:
        _prepaid(t, amount="5.00")
        first_i = _initial(t, "s1", units=600)
        _same_answer(first_i, _initial(t, "s1", units=600))
        update = {"account_id": "a1", "used_units": 121, "requested_units": 300}
        first_u = t.client.charge_session("s1", "update", request_id="s1:u", **update)
        assert first_u.charged.micros == 383_200  # 0.19 + 61 s at 0.19 a minute, 4 decimals
        t.clock.advance(5)
        _same_answer(first_u, t.client.charge_session("s1", "update", request_id="s1:u", **update))
        first_t = t.client.charge_session(
            "s1", "terminate", account_id="a1", used_units=130, request_id="s1:t"
        )
        assert first_t.charged.micros > 0 and first_t.reserved.micros == 0
        again_t = t.client.charge_session(
            "s1", "terminate", account_id="a1", used_units=130, request_id="s1:t"
        )
        _same_answer(first_t, again_t)  # not the whole session's cost
        with pytest.raises(PetribillError) as other:
            t.client.charge_session(
                "s1", "terminate", account_id="a1", used_units=131, request_id="s1:t"
            )
        assert other.value.code == grpc.StatusCode.ALREADY_EXISTS
        assert "units" in other.value.details


def test_repeated_direct_debit_and_refund_answer_the_first_balance() -> None:
    """A repeated direct debit and refund answer the balance right after the first, not
    the balance of the moment; other content under the id is ALREADY_EXISTS."""
    with timed_cluster() as t:
        _prepaid(t, amount="5.00")
        debit = t.client.direct_debit(
            "a1", service="content", content_item_id="news-day-pass", request_id="dd1"
        )
        assert debit.charged.micros > 0
        refund = t.client.refund("a1", amount="0.10", request_id="rf1", refers_to="dd1")
        t.client.top_up("a1", "1.00")
        again = t.client.direct_debit(
            "a1", service="content", content_item_id="news-day-pass", request_id="dd1"
        )
        assert again == debit
        assert t.client.refund("a1", amount="0.10", request_id="rf1", refers_to="dd1") == refund
        with pytest.raises(PetribillError) as other:
            t.client.refund("a1", amount="0.20", request_id="rf1", refers_to="dd1")
        assert other.value.code == grpc.StatusCode.ALREADY_EXISTS


def test_an_invoice_ages_into_overdue_with_one_reminder() -> None:
    """A final invoice left unpaid turns OVERDUE when its due date passes, with exactly one
    payment_overdue reminder however often the duty runs; it can still be paid."""
    nov = monthly_cycle(2026, 11, "Europe/Berlin")
    bill_at = nov.end_s + BillRunConfig().grace_s
    with timed_cluster(T_NOV) as t:
        t.client.create_account("p1", "postpaid", msisdns=[MSISDN])
        t.client.submit_usage(
            [{"record_id": "r1", "service": "voice", "served_msisdn": MSISDN,
              "record_opening_time_s": T_NOV, "called_number": UK, "duration_s": 600}]
        )  # fmt: skip
        t.clock.set(bill_at)
        *_, done = t.client.run_billing("2026-11", at_s=bill_at)
        assert done.finished and done.invoices_issued == 1
        (invoice,) = t.client.list_invoices("p1").invoices
        assert invoice.status == billing_pb2.INVOICE_STATUS_OPEN
        t.clock.set(invoice.due_at_s - 1)
        assert t.round().invoices_overdue == 0
        t.clock.set(invoice.due_at_s)
        assert t.round().invoices_overdue == 1
        t.clock.advance(86_400)
        assert t.round().invoices_overdue == 0
        (aged,) = t.client.list_invoices("p1").invoices
        assert aged.status == billing_pb2.INVOICE_STATUS_OVERDUE
        notes = t.client.list_notifications("p1").notifications
        kind = notifications_pb2.NOTIFICATION_KIND_PAYMENT_OVERDUE
        overdue = [n for n in notes if n.kind == kind]
        assert [n.subject for n in overdue] == [invoice.invoice_id]
        t.client.apply_payment("p1", f"{aged.open.micros / EUR:.2f}", request_id="pay1")
        (paid,) = t.client.list_invoices("p1").invoices
        assert paid.status == billing_pb2.INVOICE_STATUS_PAID
