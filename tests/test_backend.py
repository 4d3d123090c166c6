"""The backend against a real local Ray cluster: every service, routed to the owning actors.

One cluster (1 node, 4 shards, 2 partitions) serves the whole module; each
test uses its own accounts and ids. The rows of the RPC table are run directly
with proto requests, as the gateway runs them (:class:`Calls` names them by
their SDK method names).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import grpc
import pytest
from petribill.v1 import (
    accounts_pb2,
    admin_pb2,
    billing_pb2,
    charging_pb2,
    common_pb2,
    notifications_pb2,
    tariffs_pb2,
    usage_pb2,
)

from actors.clock import set_clock_offset
from actors.remote import RayTransport
from actors.router import UnitRouter
from actors.shard import ops
from billing.cycle import monthly_cycle
from cluster.api.errors import BackendError
from cluster.backend.backend import Backend
from cluster.backend.context import Cluster
from cluster.backend.rpcs import RPCS
from cluster.client.calls import method_name
from cluster.config import parse_config
from cluster.deploy.runtime import Runtime

pytestmark = [pytest.mark.cluster]

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
TARIFFS = ROOT / "conf" / "tariffs"
T_NOV = 1_793_700_000  # 2026-11-03 10:00 UTC
NOV = monthly_cycle(2026, 11, "Europe/Berlin")
AFTER_GRACE = NOV.end_s + 3 * 86_400 + 60  # the November invoices are final
#: The backend's clock (a bill run may not be dated beyond it): tests move it forward.
NOW = [T_NOV + 3600]


@contextmanager
def clock_at(now_s: int) -> Iterator[None]:
    """Run with the backend's clock at ``now_s``; put it back afterwards."""
    before = NOW[0]
    NOW[0] = now_s
    try:
        yield
    finally:
        NOW[0] = before


UK = "442071234567"  # international_z1: no bundle of the smart plan covers it
TIMEOUT_S = 20.0
S = usage_pb2


class Calls:
    """The backend's RPCs by their SDK method names (``get_balance``), run as the gateway
    runs them: a coroutine per unary RPC, an async iterator per server stream."""

    _RPCS: ClassVar[dict[str, Any]] = {method_name(rpc.method): rpc for rpc in RPCS}

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.cluster = backend.cluster

    def __getattr__(self, name: str) -> Any:
        rpc = self._RPCS[name]
        if rpc.server_streaming:
            return lambda request, *, timeout_s=None: self.backend.stream(rpc, request, timeout_s)
        return lambda request, *, timeout_s: self.backend.call(rpc, request, timeout_s)


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Calls]:
    # The hosts' clock (their duties age invoices on it) starts the day after the November
    # bill run, whatever day the tests run; the bill runs are the tests' own.
    tables = {"clock": {"adjustable": True}, "bill_runs": {"scheduled": False}}
    config = parse_config({"sharding": {"shards": 4, "partitions": 2}, **tables}, source="test")
    data_dir = tmp_path_factory.mktemp("backend") / "data"
    set_clock_offset(data_dir, AFTER_GRACE + 86_400 - time.time())
    rt = Runtime(config, data_dir=data_dir, tariffs_dir=TARIFFS, nodes=1, gateways=False)
    rt.start(timeout_s=120)
    try:
        router = UnitRouter(RayTransport(), shards=4, partitions=2)
        cluster = Cluster(
            router,
            tariffs_dir=str(TARIFFS),
            clock=lambda: float(NOW[0]),
            data_dir=str(data_dir),
        )
        yield Calls(Backend(cluster))
    finally:
        rt.stop()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def eur(units: str) -> common_pb2.Money:
    whole, _, frac = units.partition(".")
    return common_pb2.Money(
        micros=int(whole) * 1_000_000 + int((frac + "000000")[:6]), currency="EUR"
    )


def create(
    backend: Calls, account_id: str, msisdn: str, mode: int = common_pb2.PAYMENT_MODE_POSTPAID
) -> accounts_pb2.Account:
    request = accounts_pb2.CreateAccountRequest(
        request_id=f"create-{account_id}", account_id=account_id, payment_mode=mode,
        currency="EUR", plan_id="smart", msisdns=[msisdn],
    )  # fmt: skip
    return run(backend.create_account(request, timeout_s=TIMEOUT_S))


def call(msisdn: str, record_id: str, duration_s: int = 60) -> common_pb2.UsageRecord:
    return common_pb2.UsageRecord(
        record_id=record_id, service=common_pb2.SERVICE_VOICE, served_msisdn=msisdn,
        record_opening_time_s=T_NOV, called_number=UK, duration_s=duration_s,
    )  # fmt: skip


def submit(backend: Calls, *records: common_pb2.UsageRecord) -> list[Any]:
    request = S.SubmitUsageRequest(records=list(records), batch_id="b1")
    answer = run(backend.submit_usage(request, timeout_s=TIMEOUT_S))
    assert answer.batch_id == "b1"
    return list(answer.results)


def status_of(coro: Coroutine[Any, Any, Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(BackendError) as caught:
        run(coro)
    return caught.value.code, caught.value.message


def test_create_account_submit_usage_and_balance(backend: Calls) -> None:
    """An account created with an MSISDN is charged for usage routed by that MSISDN."""
    created = create(backend, "acc-usage", "+49 151 0000001")
    assert created.msisdns == ["491510000001"] and created.plan_id == "smart"
    assert created.payment_mode == common_pb2.PAYMENT_MODE_POSTPAID
    again = create(backend, "acc-usage", "+49 151 0000001")  # retried create: same answer
    assert again.account_id == "acc-usage"
    results = submit(backend, call("00491510000001", "sw1:1"), call("491510000001", "sw1:2", 120))
    assert [r.status for r in results] == [S.RECORD_STATUS_CHARGED] * 2
    assert all(r.charged_account_id == "acc-usage" and r.amount.micros > 0 for r in results)
    total = sum(r.amount.micros for r in results)
    balance = run(
        backend.get_balance(accounts_pb2.GetAccountRequest(account_id="acc-usage"), timeout_s=5)
    )
    assert balance.unbilled.micros == total and balance.unbilled.currency == "EUR"
    assert balance.unbilled.decimal.startswith("0.")
    usage = run(
        backend.list_usage(accounts_pb2.ListUsageRequest(account_id="acc-usage"), timeout_s=5)
    )
    assert [line.record_id for line in usage.lines] == ["sw1:2", "sw1:1"]  # newest first


def test_duplicates_and_same_id_with_other_content(backend: Calls) -> None:
    """A resubmitted record answers its first result flagged as a replay; the same id with
    other content names the field."""
    create(backend, "acc-dup", "491510000002")
    first = submit(backend, call("491510000002", "sw2:1"))
    assert first[0].status == S.RECORD_STATUS_CHARGED
    again, changed = submit(
        backend, call("491510000002", "sw2:1"), call("491510000002", "sw2:1", 61)
    )
    assert (again.status, again.replay) == (S.RECORD_STATUS_CHARGED, True)
    assert again.amount == first[0].amount and not first[0].replay
    assert changed.status == S.RECORD_STATUS_EXISTS_WITH_DIFFERENT_CONTENT
    assert changed.reason == "duration_s"
    later = submit(backend, call("491510000002", "sw2:1", 90))[0]
    assert later.status == S.RECORD_STATUS_EXISTS_WITH_DIFFERENT_CONTENT


def test_malformed_record_is_rejected_and_the_batch_proceeds(backend: Calls) -> None:
    """A malformed record is REJECTED 'malformed' naming the field; the others are charged."""
    create(backend, "acc-bad", "491510000003")
    bad_number = call("not-a-number", "sw3:2")
    no_service = common_pb2.UsageRecord(record_id="sw3:3", served_msisdn="491510000003")
    results = submit(backend, call("491510000003", "sw3:1"), bad_number, no_service)
    assert [r.status for r in results] == [
        S.RECORD_STATUS_CHARGED,
        S.RECORD_STATUS_REJECTED,
        S.RECORD_STATUS_REJECTED,
    ]
    assert [r.record_id for r in results] == ["sw3:1", "sw3:2", "sw3:3"]
    assert results[1].reason == "malformed" and "served_msisdn" in results[1].detail
    assert "service" in results[2].detail
    rejects = run(
        backend.list_rejects(admin_pb2.ListRejectsRequest(reason="malformed"), timeout_s=5)
    )
    assert {"sw3:2", "sw3:3"} <= {r.record_id for r in rejects.rejects}


def test_unknown_account_is_not_found(backend: Calls) -> None:
    """Unknown accounts are NOT_FOUND; usage of an unknown MSISDN is rejected, reprocessable."""
    get = backend.get_account(accounts_pb2.GetAccountRequest(account_id="nobody"), timeout_s=5)
    assert status_of(get)[0] is grpc.StatusCode.NOT_FOUND
    top_up = backend.top_up(
        accounts_pb2.TopUpRequest(request_id="t0", account_id="nobody", amount=eur("1")),
        timeout_s=5,
    )
    assert status_of(top_up)[0] is grpc.StatusCode.NOT_FOUND
    (result,) = submit(backend, call("491519999999", "sw4:1"))
    assert result.status == S.RECORD_STATUS_REJECTED and result.reason == "unknown_account"
    create(backend, "acc-late", "491519999999")  # the account arrives: reprocess charges it
    request = admin_pb2.ReprocessRejectsRequest(request_id="rp1", record_ids=["sw4:1"])
    answer = run(backend.reprocess_rejects(request, timeout_s=TIMEOUT_S))
    assert (answer.reprocessed, answer.charged, answer.still_rejected) == (1, 1, 0)


def test_top_up_is_idempotent_and_a_changed_retry_names_the_field(backend: Calls) -> None:
    """A retried top-up credits once; the same request id with another amount is ALREADY_EXISTS."""
    create(backend, "acc-pre", "491510000005", common_pb2.PAYMENT_MODE_PREPAID)
    request = accounts_pb2.TopUpRequest(request_id="top-1", account_id="acc-pre", amount=eur("10"))
    first = run(backend.top_up(request, timeout_s=TIMEOUT_S))
    second = run(backend.top_up(request, timeout_s=TIMEOUT_S))
    assert first.prepaid.micros == second.prepaid.micros == 10_000_000
    changed = accounts_pb2.TopUpRequest(request_id="top-1", account_id="acc-pre", amount=eur("11"))
    code, message = status_of(backend.top_up(changed, timeout_s=TIMEOUT_S))
    assert code is grpc.StatusCode.ALREADY_EXISTS and "amount" in message


def test_online_charging_session(backend: Calls) -> None:
    """Initial reserves money, update settles used units, terminate releases the rest."""
    create(backend, "acc-ocs", "491510000006", common_pb2.PAYMENT_MODE_PREPAID)
    top = accounts_pb2.TopUpRequest(request_id="top-ocs", account_id="acc-ocs", amount=eur("5"))
    run(backend.top_up(top, timeout_s=TIMEOUT_S))

    def step(n: int, kind: int, **fields: Any) -> charging_pb2.SessionAnswer:
        request = charging_pb2.SessionRequest(
            request_id=f"s1:{n}", session_id="s1", step=kind, served_msisdn="491510000006",
            service=common_pb2.SERVICE_VOICE, called_number=UK, at_s=T_NOV + n, **fields,
        )  # fmt: skip
        return run(backend.charge_session(request, timeout_s=TIMEOUT_S))

    initial = step(1, charging_pb2.SESSION_STEP_INITIAL, requested_units=120)
    assert initial.result == charging_pb2.SESSION_RESULT_SUCCESS
    assert initial.granted_units == 120 and initial.reserved.micros > 0
    update = step(2, charging_pb2.SESSION_STEP_UPDATE, used_units=60, requested_units=60)
    assert update.result == charging_pb2.SESSION_RESULT_SUCCESS and update.charged.micros > 0
    end = step(3, charging_pb2.SESSION_STEP_TERMINATE, used_units=30)
    assert end.result == charging_pb2.SESSION_RESULT_SUCCESS and end.reserved.micros == 0
    spent = update.charged.micros + end.charged.micros
    balance = run(
        backend.get_balance(accounts_pb2.GetAccountRequest(account_id="acc-ocs"), timeout_s=5)
    )
    assert balance.prepaid.micros == 5_000_000 - spent and balance.reserved.micros == 0
    unknown = charging_pb2.SessionRequest(
        request_id="s9:1", session_id="s9", step=charging_pb2.SESSION_STEP_UPDATE,
        account_id="acc-ocs", used_units=1,
    )  # fmt: skip
    answer = run(backend.charge_session(unknown, timeout_s=TIMEOUT_S))
    assert answer.result == charging_pb2.SESSION_RESULT_UNKNOWN_SESSION


def test_bill_run_invoices_payment_and_reversal(backend: Calls) -> None:
    """After the cycle the run invoices every shard; a payment is allocated, then reversed."""
    create(backend, "acc-bill", "491510000007")
    submit(backend, call("491510000007", "sw7:1", 300))
    early = backend.run_billing(
        billing_pb2.BillRunRequest(request_id="bill-0", cycle_id="2026-11", at_s=T_NOV),
        timeout_s=TIMEOUT_S,
    )
    assert status_of(_drain(early))[0] is grpc.StatusCode.FAILED_PRECONDITION
    request = billing_pb2.BillRunRequest(request_id="bill-1", cycle_id="2026-11", at_s=AFTER_GRACE)
    with clock_at(AFTER_GRACE):
        progress = run(_drain(backend.run_billing(request, timeout_s=60)))
    assert len(progress) == 4 and progress[-1].finished and not progress[0].finished
    assert progress[-1].invoices_issued >= 1 and progress[-1].invoiced_total.micros > 0
    listed = run(
        backend.list_invoices(
            billing_pb2.ListInvoicesRequest(account_id="acc-bill", open_only=True), timeout_s=5
        )
    )
    (invoice,) = listed.invoices
    assert invoice.status == billing_pb2.INVOICE_STATUS_OPEN and invoice.total.micros > 0
    got = run(
        backend.get_invoice(
            billing_pb2.GetInvoiceRequest(account_id="acc-bill", invoice_id=invoice.invoice_id),
            timeout_s=5,
        )
    )
    assert got == invoice
    pay = billing_pb2.PaymentRequest(
        request_id="pay-1", account_id="acc-bill", amount=eur("1"), at_s=AFTER_GRACE
    )
    paid = run(backend.apply_payment(pay, timeout_s=TIMEOUT_S))
    assert [(a.invoice_id, a.amount.micros) for a in paid.allocations] == [
        (invoice.invoice_id, 1_000_000)
    ]
    reverse = billing_pb2.ReversePaymentRequest(
        request_id="rev-1", account_id="acc-bill", payment_request_id="pay-1", at_s=AFTER_GRACE
    )
    reversed_ = run(backend.reverse_payment(reverse, timeout_s=TIMEOUT_S))
    assert [a.amount.micros for a in reversed_.allocations] == [1_000_000]
    after = run(
        backend.get_invoice(
            billing_pb2.GetInvoiceRequest(account_id="acc-bill", invoice_id=invoice.invoice_id),
            timeout_s=5,
        )
    )
    assert after.paid.micros == 0 and after.open.micros == invoice.total.micros
    notes = run(
        backend.list_notifications(
            notifications_pb2.ListNotificationsRequest(account_id="acc-bill"), timeout_s=5
        )
    )
    kinds = {n.kind for n in notes.notifications}
    assert notifications_pb2.NOTIFICATION_KIND_INVOICE_ISSUED in kinds


def test_subscribe_streams_new_notifications(backend: Calls) -> None:
    """A subscription yields notifications stored after it started, of its accounts only."""
    create(backend, "acc-sub", "491510000008")

    async def scenario() -> notifications_pb2.Notification:
        stream = backend.subscribe(notifications_pb2.SubscribeRequest(account_ids=["acc-sub"]))
        first = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(1.0)  # the stream has found every shard's head by now
        dec = monthly_cycle(2026, 12, "Europe/Berlin")
        request = billing_pb2.BillRunRequest(
            request_id="bill-sub", cycle_id="2026-12", account_ids=["acc-sub"],
            at_s=dec.end_s + 4 * 86_400,
        )  # fmt: skip
        await _drain(backend.run_billing(request, timeout_s=TIMEOUT_S))
        note = await asyncio.wait_for(first, 10)
        await stream.aclose()  # type: ignore[attr-defined]
        return note

    with clock_at(monthly_cycle(2026, 12, "Europe/Berlin").end_s + 4 * 86_400):
        note = run(scenario())
    assert note.account_id == "acc-sub"
    assert note.kind == notifications_pb2.NOTIFICATION_KIND_INVOICE_ISSUED


def test_reconcile_adds_up(backend: Calls) -> None:
    """Every record received is rated, rejected or a duplicate, and the ledger sums to zero."""
    answer = run(backend.reconcile(admin_pb2.ReconcileRequest(), timeout_s=TIMEOUT_S))
    assert answer.received > 0
    assert answer.received == answer.rated + answer.rejected + answer.duplicates
    assert answer.ledger_total.micros == 0 and answer.balanced, answer.detail


def test_cluster_status_tariffs_and_unimplemented(backend: Calls) -> None:
    """Status lists every unit with its owner; tariffs answer; the net refuses to drain an
    unknown node; Rebalance reports the spread."""
    status = run(backend.cluster_status(admin_pb2.ClusterStatusRequest(), timeout_s=TIMEOUT_S))
    assert [n.node_id for n in status.nodes] == ["n0"]
    assert len(status.shards) == 6 and {s.state for s in status.shards} == {"owned"}
    assert {s.kind for s in status.shards} == {"account", "partition"}
    assert status.marking_json and status.marking_summary.startswith("healthy")
    # One node keeps one copy of each unit: nothing to follow, nothing missing.
    assert status.writable and status.fully_replicated and status.replication_factor == 1
    assert not any(s.followers or s.in_sync for s in status.shards)
    assert status.schedule.next_cycle and status.schedule.next_at_s > 0, status.schedule
    summary = run(backend.get_tariffs(tariffs_pb2.GetTariffsRequest(), timeout_s=5))
    assert summary.default_plan == "smart" and summary.prefixes > 0
    price = run(
        backend.price_enquiry(
            charging_pb2.PriceEnquiryRequest(
                plan_id="smart",
                service=common_pb2.SERVICE_VOICE,
                called_number=UK,
                units=60,
                at_s=T_NOV,
            ),
            timeout_s=5,
        )
    )
    assert price.price.micros > 0 and price.destination == "GB"
    drain = backend.drain(admin_pb2.DrainRequest(request_id="d1", node_id="n9"), timeout_s=5)
    assert status_of(drain)[0] is grpc.StatusCode.FAILED_PRECONDITION  # no such node
    spread = run(backend.rebalance(admin_pb2.RebalanceRequest(request_id="r1"), timeout_s=5))
    assert spread.done and spread.detail == "units per alive node: n0=6"


async def _drain(stream: AsyncIterator[T]) -> list[T]:
    return [item async for item in stream]


def test_stale_routes_are_refreshed_and_a_missing_owner_is_unavailable(
    backend: Calls,
) -> None:
    """A call routed by an old epoch follows the host's StaleRoute; no owner is UNAVAILABLE."""
    create(backend, "acc-route", "491510000009")
    router = backend.cluster.router
    unit = router.shard("acc-route")
    node, epoch = router._routes[unit]
    router._routes[unit] = (node, epoch + 7)  # as if a takeover had happened meanwhile
    found = run(
        backend.get_account(accounts_pb2.GetAccountRequest(account_id="acc-route"), timeout_s=5)
    )
    assert found.account_id == "acc-route" and router._routes[unit] == (node, epoch)
    lost = backend.cluster.run("acct-99", ops.GetAccount(account_id="x"), timeout_s=0.5)
    code, message = status_of(lost)
    assert code is grpc.StatusCode.UNAVAILABLE and "acct-99" in message


def test_backup_checkpoints_every_unit_under_the_data_dir(backend: Calls) -> None:
    """Backup has every host checkpoint its units; a retry answers the same backup, a
    path outside the backup root is refused, and each checkpoint opens as a database."""
    from actors.store.backup import open_checkpoint, read_backup

    create(backend, "acc-backup", "491510000077")
    request = admin_pb2.BackupRequest(request_id="bk-1")
    answer = run(backend.backup(request, timeout_s=TIMEOUT_S))
    assert answer.done and answer.request_id == "bk-1"
    assert run(backend.backup(request, timeout_s=TIMEOUT_S)).done  # idempotent
    assert backend.cluster.data_dir is not None
    root = Path(backend.cluster.data_dir) / "backups" / "bk-1"
    assert root.as_posix() in answer.detail
    taken = read_backup(root)
    assert sorted(taken) == ["acct-00", "acct-01", "acct-02", "acct-03", "part-0", "part-1"]
    for info in taken.values():
        open_checkpoint(Path(info.path)).close()
    elsewhere = str(Path(backend.cluster.data_dir).parent / "elsewhere")
    outside = admin_pb2.BackupRequest(request_id="bk-2", path=elsewhere)
    assert status_of(backend.backup(outside, timeout_s=5))[0] is grpc.StatusCode.INVALID_ARGUMENT
    assert not Path(elsewhere).exists()


def test_load_tariffs_validates_persists_and_switches_every_unit(
    backend: Calls, tmp_path: Path
) -> None:
    """A broken catalogue is INVALID_ARGUMENT naming file and key and changes nothing; a
    valid one is kept under the data dir and rates the next records; loading the first
    catalogue again restores its prices."""
    import shutil

    assert backend.cluster.data_dir is not None
    current = Path(backend.cluster.data_dir) / "tariffs" / "CURRENT"
    # LoadTariffs reads only below the tariffs root: this test's folder, for this test.
    conf_root, backend.cluster.tariffs_root = backend.cluster.tariffs_root, tmp_path
    original = tmp_path / "original"
    shutil.copytree(TARIFFS, original)
    broken = tmp_path / "broken"
    shutil.copytree(TARIFFS, broken)
    plans = broken / "plans.toml"
    plans.write_text(plans.read_text().replace('rate = "V_INT_Z1"', 'rate = "V_NOPE"', 1))
    bad = tariffs_pb2.LoadTariffsRequest(request_id="t-bad", path=str(broken))
    code, message = status_of(backend.load_tariffs(bad, timeout_s=TIMEOUT_S))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "plans.toml" in message and "V_NOPE" in message, message
    assert not current.exists() and not (current.parent / "t-bad").exists()

    create(backend, "acc-tariff", "491510000078")
    [before] = submit(backend, call("491510000078", "tar:1", 60))
    dearer = tmp_path / "dearer"
    shutil.copytree(TARIFFS, dearer)
    rates = dearer / "rates.toml"
    rates.write_text(rates.read_text().replace('price = "0.19"', 'price = "0.38"'))
    good = tariffs_pb2.LoadTariffsRequest(request_id="t-dearer", path=str(dearer))
    try:
        summary = run(backend.load_tariffs(good, timeout_s=TIMEOUT_S))
        assert summary.default_plan == "smart"
        assert current.read_text().strip() == "t-dearer"
        [after] = submit(backend, call("491510000078", "tar:2", 60))
        assert after.amount.micros == 2 * before.amount.micros > 0
    finally:
        back = tariffs_pb2.LoadTariffsRequest(request_id="t-conf", path=str(original))
        run(backend.load_tariffs(back, timeout_s=TIMEOUT_S))
        backend.cluster.tariffs_root = conf_root
    [restored] = submit(backend, call("491510000078", "tar:3", 60))
    assert restored.amount.micros == before.amount.micros


def test_metrics_reach_the_nodes_prometheus_page(backend: Calls) -> None:
    """Usage submitted here shows in the node's Prometheus page: the partitions'
    reconciliation counters and the hosts' call latencies (Ray publishes every 2 s)."""
    import re
    import time
    import urllib.request

    create(backend, "acc-metrics", "491510000079")
    submit(backend, call("491510000079", "met:1", 60))
    status = run(backend.cluster_status(admin_pb2.ClusterStatusRequest(), timeout_s=TIMEOUT_S))
    url = status.nodes[0].metrics_url
    assert url.startswith("http://") and url.endswith("/metrics"), url
    received = re.compile(r'^ray_petribill_records\{[^}]*kind="received"[^}]*\} (\S+)', re.M)
    deadline = time.monotonic() + 60
    while True:
        with urllib.request.urlopen(url, timeout=10) as page:
            text = page.read().decode()
        counts = [float(v) for v in received.findall(text)]
        calls = re.search(
            r'^ray_petribill_unit_call_seconds_count\{[^}]*method="Submit"', text, re.M
        )
        if sum(counts) >= 1 and calls:
            break
        assert time.monotonic() < deadline, "petribill series never appeared:\n" + "\n".join(
            line for line in text.splitlines() if "petribill" in line
        )
        time.sleep(1)


def test_unreadable_lines_are_stored_by_file_and_line(backend: Calls) -> None:
    """StoreUnreadable puts reader rejects in the reject store with their reason and raw
    text, counted as received and rejected; storing a line again replaces its entry."""
    from billing.readers import Reject, RejectCode
    from cluster.wire import unreadable_to_proto

    bad = [
        Reject(source_file="cdr/msc7.csv", line=3, code=RejectCode.BAD_VALUE,
               message="line 3: duration_s: must be a non-negative integer, got '-5'",
               raw="msc7:3,voice,4915100000001,2026-11-04T19:03:04Z,0172,-5,false",
               field="duration_s", record_id="msc7:3"),
        Reject(source_file="cdr/msc7.csv", line=9, code=RejectCode.FIELD_COUNT,
               message="line 9: 3 fields, expected 7", raw="a,b,c"),
    ]  # fmt: skip
    request = usage_pb2.StoreUnreadableRequest(lines=[unreadable_to_proto(r) for r in bad])
    before = run(backend.reconcile(admin_pb2.ReconcileRequest(), timeout_s=TIMEOUT_S))
    answer = run(backend.store_unreadable(request, timeout_s=TIMEOUT_S))
    statuses = [(r.record_id, r.status, r.reason) for r in answer.results]
    assert statuses == [
        ("msc7:3", usage_pb2.RECORD_STATUS_REJECTED, "malformed"),
        ("cdr/msc7.csv:9", usage_pb2.RECORD_STATUS_REJECTED, "malformed"),
    ]
    after = run(backend.reconcile(admin_pb2.ReconcileRequest(), timeout_s=TIMEOUT_S))
    assert (after.received - before.received, after.rejected - before.rejected) == (2, 2)
    run(backend.store_unreadable(request, timeout_s=TIMEOUT_S))  # again: replaced, not piled
    listed = run(
        backend.list_rejects(
            admin_pb2.ListRejectsRequest(limit=1000, reason="malformed"), timeout_s=TIMEOUT_S
        )
    )
    mine = sorted(
        (r.source_line, r.detail, r.record.json)
        for r in listed.rejects
        if r.source_file == "cdr/msc7.csv"
    )
    assert [(line, detail) for line, detail, _ in mine] == [
        (3, bad[0].message),
        (9, bad[1].message),
    ]
    assert "a,b,c" in mine[1][2]


def test_refused_sponsor_charges_are_listed_and_reprocessed(backend: Calls) -> None:
    """Zero-rated video (rating group 20) is sponsored by an account that does not exist
    yet: the subscriber's line is sponsored, the sponsor's shard keeps the refusal and
    ListRejects shows it; once the sponsor exists, ReprocessRejects charges it once."""
    import time

    create(backend, "acc-video", "491510000081")
    video = common_pb2.UsageRecord(
        record_id="vid:1", service=common_pb2.SERVICE_DATA, served_msisdn="491510000081",
        record_opening_time_s=T_NOV, uplink_bytes=1_000_000, downlink_bytes=9_000_000,
        rating_group=20,
    )  # fmt: skip
    [answer] = submit(backend, video)
    assert answer.status == usage_pb2.RECORD_STATUS_CHARGED
    assert answer.charged_account_id == "sponsor-streamflix"
    listing = admin_pb2.ListRejectsRequest(limit=100, reason="sponsor_refused")
    deadline = time.monotonic() + 30
    while not (found := run(backend.list_rejects(listing, timeout_s=TIMEOUT_S)).rejects):
        assert time.monotonic() < deadline, "the refused sponsor charge was never listed"
        time.sleep(0.5)
    [refused] = [r for r in found if r.record_id == "vid:1"]
    assert "sponsor-streamflix" in refused.detail and "unknown_account" in refused.detail
    again = admin_pb2.ReprocessRejectsRequest(request_id="rp-vid", record_ids=["vid:1"])
    still = run(backend.reprocess_rejects(again, timeout_s=TIMEOUT_S))
    assert (still.reprocessed, still.charged) == (1, 0)
    assert dict(still.still_rejected_by_reason) == {"sponsor_unknown_account": 1}
    create(backend, "sponsor-streamflix", "491510000082")
    done = run(backend.reprocess_rejects(again, timeout_s=TIMEOUT_S))
    assert (done.reprocessed, done.charged, done.still_rejected) == (1, 1, 0)
    assert not run(backend.list_rejects(listing, timeout_s=TIMEOUT_S)).rejects
    balance = run(
        backend.get_balance(
            accounts_pb2.GetAccountRequest(account_id="sponsor-streamflix"), timeout_s=TIMEOUT_S
        )
    )
    assert balance.unbilled.micros > 0  # the sponsor rate for 10 MB, charged once
    assert run(backend.reprocess_rejects(again, timeout_s=TIMEOUT_S)).reprocessed == 0
