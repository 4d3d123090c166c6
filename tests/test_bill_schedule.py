"""Scheduled bill runs: a cycle is billed on its own at its end plus the grace, once, and a
run cut short by a coordinator crash is resumed by the next coordinator, not restarted.

In-process cluster on a hand-moved clock (``duty_support``); the coordinator's duty thread
is left to its first wake-up and the test then wakes it itself (``duties.tick()``), so
what happens when does not depend on machine speed. The Ray version, with a real kill of
the coordinator's process, is ``test_bill_schedule_ray.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
from duty_support import MSISDN, T_NOV, TimedCluster, timed_cluster
from petribill.v1 import billing_pb2

from actors.router import UnitRouter
from actors.shard.ops import BillRun
from billing.billrun.run import BillRunConfig
from billing.cycle import monthly_cycle
from cluster.cli.ops import schedule_lines
from cluster.config import ConfigError, parse_config
from cluster.control.state import read_journal

pytestmark = pytest.mark.timeout(120)

TZ = "Europe/Berlin"  # the sample catalogue's, so the cycles'
NOV = monthly_cycle(2026, 11, TZ)
DEC = monthly_cycle(2026, 12, TZ)
GRACE_S = BillRunConfig().grace_s
SCHEDULE = {"scheduled": True, "after_end_s": GRACE_S, "check_every_s": 3600}
UK = "447700900123"


def _postpaid(t: TimedCluster, account_id: str, msisdn: str, record_id: str) -> None:
    t.client.create_account(account_id, "postpaid", msisdns=[msisdn])
    t.client.submit_usage(
        [{"record_id": record_id, "service": "voice", "served_msisdn": msisdn,
          "record_opening_time_s": T_NOV, "called_number": UK, "duration_s": 120}]
    )  # fmt: skip


def _invoices(t: TimedCluster, account_id: str, cycle_id: str) -> list[Any]:
    return [i for i in t.client.list_invoices(account_id).invoices if i.cycle_id == cycle_id]


def _schedule(t: TimedCluster) -> dict[str, Any]:
    status: dict[str, Any] = t.coordinator.status()
    return status["schedule"]["bill_runs"]


def test_a_cycle_is_billed_once_on_its_own_at_its_end_plus_the_grace() -> None:
    """Nothing happens before the cycle's end plus the grace; then every account gets its
    final invoice, issued at that time, from a run nobody asked for; later wake-ups, and
    usage arriving late, never start it again; status shows the next and the last."""
    with timed_cluster(NOV.start_s + 14 * 86_400, bill_runs=SCHEDULE) as t:
        t.coordinator.duties.tick()
        assert _schedule(t)["next"] == {"cycle": "2026-11", "at_s": NOV.end_s + GRACE_S}
        _postpaid(t, "p1", MSISDN, "r1")
        t.clock.set(NOV.end_s + GRACE_S - 1)
        t.coordinator.duties.tick()
        assert _invoices(t, "p1", "2026-11") == [] and _schedule(t)["last"] is None
        t.clock.set(NOV.end_s + GRACE_S)
        t.coordinator.duties.tick()
        (invoice,) = _invoices(t, "p1", "2026-11")
        assert invoice.status == billing_pb2.INVOICE_STATUS_OPEN
        assert invoice.issued_at_s == NOV.end_s + GRACE_S
        last = _schedule(t)["last"]
        assert (last["cycle"], last["accounts"], last["invoices"]) == ("2026-11", 1, 1)
        t.client.submit_usage(
            [{"record_id": "r2", "service": "voice", "served_msisdn": MSISDN,
              "record_opening_time_s": T_NOV + 60, "called_number": UK, "duration_s": 60}]
        )  # fmt: skip
        t.clock.advance(86_400)
        t.coordinator.duties.tick()
        assert _invoices(t, "p1", "2026-11") == [invoice]
        assert _schedule(t)["last"] == last
        assert _schedule(t)["next"] == {"cycle": "2026-12", "at_s": DEC.end_s + GRACE_S}
        lines = schedule_lines(t.coordinator.status()["schedule"])
        assert "next 2026-12" in lines[0] and "last 2026-11" in lines[0]


def test_a_new_cluster_does_not_bill_a_cycle_that_ended_before_it_started() -> None:
    """Started after November was due, the schedule begins with December."""
    with timed_cluster(NOV.end_s + GRACE_S + 86_400, bill_runs=SCHEDULE) as t:
        t.coordinator.duties.tick()
        assert _schedule(t)["next"]["cycle"] == "2026-12" and _schedule(t)["last"] is None


class _CrashOn:
    """The coordinator's router, which 'crashes' the coordinator (raises) when asked to
    bill ``unit``: what a kill of its process at that point leaves behind."""

    def __init__(self, router: UnitRouter, unit: str) -> None:
        self._router = router
        self._unit = unit

    def __getattr__(self, name: str) -> Any:
        return getattr(self._router, name)

    def run_blocking(self, unit_id: str, op: Any, *, timeout_s: float) -> Any:
        if unit_id == self._unit and isinstance(op, BillRun):
            raise SystemError("the coordinator's process died here")
        return self._router.run_blocking(unit_id, op, timeout_s=timeout_s)


def test_a_scheduled_bill_run_resumes_after_a_coordinator_crash() -> None:
    """A crash in the middle of a shard's bill run (its lock held) leaves the run's record
    in the control state; the next coordinator continues from that shard, with the lock it
    held, bills the rest once and finishes; every account has one invoice."""
    with timed_cluster(NOV.start_s + 14 * 86_400, bill_runs=SCHEDULE) as t:
        t.coordinator.duties.tick()
        router = t.cluster.router()
        accounts = {}
        for n in range(12):
            account_id, msisdn = f"p{n}", f"49151000100{n:02d}"
            _postpaid(t, account_id, msisdn, f"r{n}")
            accounts.setdefault(router.shard(account_id), account_id)
        shards = router.all_shards()
        assert set(accounts) == set(shards)  # an account on every shard
        crash_at = shards[1]
        runs = t.coordinator.duties.bill_runs
        runs._router = _CrashOn(runs._router, crash_at)  # type: ignore[assignment]
        t.clock.set(NOV.end_s + GRACE_S)
        t.coordinator.duties.tick()
        cut = _schedule(t)["running"]
        assert cut["done"] == shards[:1] and cut["holding"] == crash_at
        assert [crash_at, "bill_run"] in t.coordinator.status()["locks_held"]

        fresh = t.restart_coordinator()
        fresh.duties.tick()
        last = _schedule(t)["last"]
        assert last["done"] == shards and last["started_s"] == cut["started_s"]
        assert _schedule(t)["running"] is None and fresh.status()["locks_held"] == []
        for n in range(12):
            assert len(_invoices(t, f"p{n}", "2026-11")) == 1
        events = read_journal(t.cluster.data_dir)
        locks = [(e["event"], e["shard"]) for e in events if e["event"].startswith("bill_run_")]
        for shard in shards:  # each shard locked once, unlocked once: no second run
            assert locks.count(("bill_run_lock", shard)) == 1
            assert locks.count(("bill_run_unlock", shard)) == 1


def test_the_schedule_keys_are_validated_like_every_other() -> None:
    """A bill run inside the grace, an unknown key, an inspection bound shorter than the
    duties' period: refused, naming the key."""
    with pytest.raises(ConfigError, match=r"bill_runs.after_end_s: must be >= 259200"):
        parse_config({"bill_runs": {"after_end_s": 3600}}, source="c.toml")
    with pytest.raises(ConfigError, match=r"bill_runs.every: unknown key"):
        parse_config({"bill_runs": {"every": 1}}, source="c.toml")
    with pytest.raises(ConfigError, match=r"inspection.late_s: must be >= duties.every_s"):
        parse_config({"inspection": {"late_s": 1}, "duties": {"every_s": 5}}, source="c.toml")
    with pytest.raises(ConfigError, match=r"charging.session_validity_s: must be > 0"):
        parse_config({"charging": {"session_validity_s": 0}}, source="c.toml")
