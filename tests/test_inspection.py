"""The automatic inspection finds what the duties left undone, and tells the operator.

In-process cluster on a hand-moved clock with the duty runners stopped (``duty_support``),
so a planted problem stays until the test runs a duty round; the report is read through
the real gateway and SDK (``petribill inspect``'s RPC) and from the coordinator.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from duty_support import MSISDN, T_NOV, TimedCluster, timed_cluster, wait_for

from actors.shard.keys import NOTIFICATION_ID_PREFIX, ledger_key, prefixed
from actors.store.storage import Batch
from billing.billrun.run import BillRunConfig
from billing.cycle import monthly_cycle
from cluster.control import inspection
from cluster.control.duties import alerts_path

pytestmark = pytest.mark.timeout(120)

UK = "447700900123"
VALIDITY_S = 300
LATE_S = 60
SETTINGS: dict[str, Any] = {
    "session_validity_s": VALIDITY_S,
    "inspection": {"every_s": 0, "late_s": LATE_S, "session_age_max_s": 900},
}


def _found(t: TimedCluster) -> dict[str, int]:
    report = t.client.inspect()
    return {f.check: f.count for f in report.findings if f.count}


def _session(t: TimedCluster, sid: str) -> None:
    t.client.charge_session(
        sid, "initial", account_id="a1", service="voice", called_number=UK,
        requested_units=60, request_id=f"{sid}:i",
    )  # fmt: skip


def test_a_healthy_cluster_passes_every_check() -> None:
    """Nothing planted: every check holds; replica lag is skipped in shared storage."""
    with timed_cluster(**SETTINGS) as t:
        report = t.client.inspect()
        assert report.ok and report.at_s == T_NOV
        skipped = [f.check for f in report.findings if f.skipped]
        assert skipped == ["replica_lag"]
        assert not alerts_path(t.cluster.data_dir).exists()


def test_reservations_held_past_their_validity_and_over_old_sessions_are_found() -> None:
    """A reservation the duty did not release ``late_s`` after its validity is stuck; a
    session kept open past ``session_age_max_s`` is over-old; a duty round clears the first."""
    with timed_cluster(**SETTINGS) as t:
        t.client.create_account("a1", "prepaid", msisdns=[MSISDN])
        t.client.top_up("a1", "5.00")
        _session(t, "stuck")
        _session(t, "kept")
        t.clock.advance(VALIDITY_S + LATE_S - 1)
        assert _found(t) == {}
        for n in range(4):  # "kept" reports in time, four times
            t.client.charge_session(
                "kept", "update", account_id="a1", used_units=1, requested_units=60,
                request_id=f"kept:u{n}",
            )  # fmt: skip
            t.clock.advance(VALIDITY_S - 100)
        found = _found(t)  # both sessions are over-old by now; only one is stuck
        assert found == {"reservations_stuck": 1, "reservations_over_old": 2}
        report = t.client.inspect()
        stuck = next(f for f in report.findings if f.check == "reservations_stuck")
        assert "a1/stuck" in stuck.detail and "a1/kept" not in stuck.detail
        t.round()
        assert _found(t) == {"reservations_over_old": 1}


def test_invoices_past_due_not_aged_or_without_reminder_are_found() -> None:
    """An open invoice ``late_s`` past due is unaged until a duty round ages it; an overdue
    invoice whose reminder is missing (planted: its row deleted) is found too."""
    nov = monthly_cycle(2026, 11, "Europe/Berlin")
    bill_at = nov.end_s + BillRunConfig().grace_s
    with timed_cluster(**SETTINGS) as t:
        t.client.create_account("p1", "postpaid", msisdns=[MSISDN])
        t.client.submit_usage(
            [{"record_id": "r1", "service": "voice", "served_msisdn": MSISDN,
              "record_opening_time_s": T_NOV, "called_number": UK, "duration_s": 60}]
        )  # fmt: skip
        t.clock.set(bill_at)
        list(t.client.run_billing("2026-11", at_s=bill_at))
        (invoice,) = t.client.list_invoices("p1").invoices
        t.clock.set(invoice.due_at_s + LATE_S)
        assert _found(t) == {"invoices_unaged": 1}
        assert t.round().invoices_overdue == 1
        assert _found(t) == {}
        note_id = f"p1:payment_overdue:2026-11:{invoice.invoice_id}:0"
        unit = t.cluster.router().shard("p1")
        store = t.cluster.hosts["n0"]._units[unit].engine.store
        batch = Batch()
        batch.delete(prefixed(NOTIFICATION_ID_PREFIX, note_id))
        store.commit(batch)
        found = t.client.inspect()
        assert not found.ok
        (missing,) = [f for f in found.findings if f.count]
        assert missing.check == "overdue_without_reminder"
        assert invoice.invoice_id in missing.detail


def test_a_gap_in_a_ledger_is_found_by_an_audit_in_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reconcile check audits each shard in bounded steps (never one whole audit that
    holds the shard and a host thread for all its rows) and still finds a ledger row
    missing (planted: deleted) in the middle of an account, two rows a step."""
    monkeypatch.setattr(inspection, "AUDIT_STEP_ROWS", 2)
    with timed_cluster(**SETTINGS) as t:
        t.client.create_account("a1", "prepaid", msisdns=[MSISDN])
        for i in range(6):
            t.client.top_up("a1", "1.00", request_id=f"top-up-{i}")
        assert _found(t) == {}
        unit = t.cluster.router().shard("a1")
        store = t.cluster.hosts["n0"]._units[unit].engine.store
        batch = Batch()
        batch.delete(ledger_key("a1", 3))
        store.commit(batch)
        found = t.client.inspect()
        (gap,) = [f for f in found.findings if f.count]
        assert gap.check == "reconcile" and "a1: ledger seq 4, expected 3" in gap.detail


def test_units_without_an_owner_are_found_and_the_operator_is_notified() -> None:
    """With the only node gone no unit has an owner: the inspection says so, and the
    coordinator records the alert for the operator (log event, alerts file, status)."""
    with timed_cluster(**SETTINGS) as t:
        t.cluster.hosts.pop("n0").close_all()
        coordinator = t.coordinator
        wait_for(lambda: not coordinator.healthy(), what="the node failed")
        report = coordinator.inspect(timeout_s=1.0)
        (unowned,) = [f for f in report["findings"] if f["count"]]
        assert unowned["check"] == "units_without_owner" and unowned["count"] == 6
        (alert,) = alerts_path(t.cluster.data_dir).read_text().splitlines()
        assert json.loads(alert)["failing"].keys() == {"units_without_owner"}
        inspection = coordinator.status()["schedule"]["inspection"]
        assert inspection["failing"] == ["units_without_owner"]


def test_the_coordinator_inspects_on_its_own_schedule() -> None:
    """With ``every_s`` set the coordinator inspects by itself and records the result."""
    scheduled = {**SETTINGS, "inspection": {**SETTINGS["inspection"], "every_s": 0.05}}
    with timed_cluster(bill_runs={"scheduled": False, "check_every_s": 0.05}, **scheduled) as t:
        coordinator = t.coordinator
        wait_for(
            lambda: coordinator.status()["schedule"]["inspection"] is not None,
            what="a scheduled inspection",
        )
        assert coordinator.status()["schedule"]["inspection"]["ok"]
