"""The client commands (`petribill ingest`, `accounts`, `bill-run`, ...) and `petribill demo`
against a real local cluster: Ray, gateways on loopback, RocksDB in a temporary folder.

The module's tests share one cluster and build on each other in file order:
accounts are loaded, the samples ingested, the cycle billed, then paid.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from actors.clock import set_clock_offset
from billing.billrun.run import BillRunConfig
from billing.cycle import monthly_cycle
from cluster.cli.main import main
from tests.local_cluster import running, small_runtime

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "conf" / "samples"
SUBSCRIBERS = SAMPLES / "subscribers.toml"
NOV = monthly_cycle(2026, 11, "Europe/Berlin")
BILL_AT = NOV.end_s + BillRunConfig().grace_s + 3600  # the November invoices are final
# The deliberately bad lines of conf/samples/README.md: the reader rejects them.
READER_REJECTS = {
    "voice.csv": [22, 47, 72, 97],
    "sms.csv": [32, 52],
    "data.jsonl": [16, 41, 66],
    "content.jsonl": [11, 21],
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def cluster_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The module's cluster: its gateway address and its data folder."""
    data_dir = tmp_path_factory.mktemp("cli-cluster") / "data"
    # The cluster's clock starts the day after the November bill run, whatever day the
    # tests run (the samples are of November 2026: invoices turn overdue on the cluster's
    # clock), and moves forward to bill December; the bill runs are the tests' own.
    tables = {"clock": {"adjustable": True}, "bill_runs": {"scheduled": False}}
    set_clock_offset(data_dir, BILL_AT + 86_400 - time.time())
    with running(small_runtime(data_dir, port=_free_port(), tables=tables)) as info:
        yield info.gateways[0], data_dir


@pytest.fixture(scope="module")
def gateway(cluster_data: tuple[str, Path]) -> str:
    return cluster_data[0]


def cli(gateway: str, *args: str | Path) -> Result:
    return CliRunner().invoke(main, [*map(str, args), "--gateway", gateway])


def cli_json(gateway: str, *args: str | Path) -> Any:
    result = cli(gateway, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.slow
def test_demo_runs_a_month_end_to_end() -> None:
    """`petribill demo` starts a cluster, bills a month, reconciles, and stops it again."""
    env = {**os.environ, "COLUMNS": "160"}
    done = subprocess.run(
        [str(Path(sys.executable).with_name("petribill")), "demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "CDR lines read:    338 = 325 rated + 11 rejected" in out
    assert "resent file:       155 lines, 151 duplicates, 0 charged twice" in out
    assert "3 invoices" in out and "INV-2026-11-acct-biz-01" in out
    assert "INV-2026-11-sponsor-streamflix" in out  # the sample sponsor exists and pays
    assert "ledger total:      0.0000 EUR" in out
    assert "reconciliation:    balanced" in out
    assert "cluster stopped" in out and "Traceback" not in done.stderr


def test_accounts_load_creates_every_account_once(gateway: str) -> None:
    """`accounts load` creates the sample accounts with their MSISDNs and plan's mode; a
    second load changes nothing."""
    first = cli_json(gateway, "accounts", "load", SUBSCRIBERS)
    assert len(first) == 15  # 14 subscribers, and the sponsor without numbers
    modes = {a["account_id"]: a["payment_mode"] for a in first}
    assert modes["acct-0001"] == "PAYMENT_MODE_PREPAID"
    assert modes["acct-biz-01"] == "PAYMENT_MODE_POSTPAID"
    biz = next(a for a in first if a["account_id"] == "acct-biz-01")
    assert len(biz["msisdns"]) == 4 and biz["plan_id"] == "business"
    again = cli(gateway, "accounts", "load", SUBSCRIBERS)
    assert again.exit_code == 0, again.output
    assert again.stdout.count(" ok ") == 15


def test_ingest_accounts_for_every_line(gateway: str) -> None:
    """Per file, lines = rated + rejected + duplicates + conflicts; the rejects are the
    documented bad lines, the resend is a duplicate and the reused id a conflict."""
    found = cli_json(gateway, "ingest", SAMPLES)
    files = {Path(f["file"]).name: f for f in found["files"]}
    assert sorted(files) == sorted(READER_REJECTS)
    for name, report in files.items():
        assert report["lines"] == (
            report["rated"] + report["rejected"] + report["duplicates"] + report["conflicts"]
        )
        assert report["balanced"]
        reader = [r["line"] for r in report["rejects"] if r["stage"] == "reader"]
        assert reader == READER_REJECTS[name]
        assert report["unreadable_stored"] == len(READER_REJECTS[name])
    assert files["voice.csv"]["duplicates"] == 1
    assert files["data.jsonl"]["conflicts"] == 1
    conflict = next(r for r in files["data.jsonl"]["rejects"] if r["stage"] == "cluster")
    assert conflict["line"] == 81 and conflict["reason"] == "conflict"
    total = found["total"]
    assert (total["lines"], total["rated"], total["rejected"]) == (338, 325, 11)


def test_ingest_table_names_files_and_reasons(gateway: str) -> None:
    """Without --json, ingest prints the reconciliation table and the rejected lines."""
    result = cli(gateway, "ingest", SAMPLES / "sms.csv")
    assert result.exit_code == 0, result.output
    assert "lines = rated + rejected + duplicates + conflicts" in result.stdout
    assert "field_count" in result.stdout and "missing_field" in result.stdout


def test_second_ingest_charges_nothing(gateway: str) -> None:
    """Ingesting the same files again answers every record as a duplicate (or the conflict)."""
    total = cli_json(gateway, "ingest", SAMPLES)["total"]
    assert total["rated"] == 0 and total["amount"] == {}
    assert total["duplicates"] == 326 and total["conflicts"] == 1 and total["balanced"]


def test_topup_credits_the_prepaid_balance(gateway: str) -> None:
    """`topup` adds to the prepaid balance (after any debt) and prints the balance."""
    before = cli_json(gateway, "accounts", "show", "acct-0001")["balance"]
    after = cli_json(gateway, "topup", "acct-0001", "12.50", "--request-id", "t-cli-1")
    repaid = before["debt"]["micros"] - after["debt"]["micros"]
    assert after["prepaid"]["micros"] - before["prepaid"]["micros"] + repaid == 12_500_000
    replay = cli_json(gateway, "topup", "acct-0001", "12.50", "--request-id", "t-cli-1")
    assert replay["prepaid"] == after["prepaid"]


def test_bill_run_issues_final_invoices(gateway: str) -> None:
    """`bill-run` after cycle end + grace issues one final invoice per postpaid account
    (acct-biz-01, acct-biz-02 and the content sponsor, sponsor-streamflix)."""
    final = cli_json(gateway, "bill-run", "2026-11", "--at", str(BILL_AT))
    assert final["finished"] and final["invoices_issued"] == 3
    (invoice,) = cli_json(gateway, "invoices", "acct-biz-01")
    assert invoice["invoice_id"] == "INV-2026-11-acct-biz-01"
    assert invoice["status"] == "INVOICE_STATUS_OPEN" and invoice["lines"]
    shown = cli(gateway, "invoices", "acct-biz-01")
    assert "recurring" in shown.stdout and "total" in shown.stdout


def test_pay_allocates_to_the_open_invoice(gateway: str) -> None:
    """`pay` allocates to the oldest open invoice; the excess becomes credit."""
    (invoice,) = cli_json(gateway, "invoices", "acct-biz-02", "--open")
    open_micros = invoice["open"]["micros"]
    at = str(BILL_AT + 86_400)
    paid = cli_json(gateway, "pay", "acct-biz-02", "5", "--at", at, "--request-id", "p-cli-1")
    assert paid["allocations"][0]["amount"]["micros"] == 5_000_000
    rest = f"{(open_micros - 5_000_000) / 1e6 + 1:.2f}"
    over = cli_json(gateway, "pay", "acct-biz-02", rest, "--at", at, "--request-id", "p-cli-2")
    assert over["credit"]["micros"] == 1_000_000
    (after,) = cli_json(gateway, "invoices", "acct-biz-02")
    assert after["status"] == "INVOICE_STATUS_PAID"
    undone = cli_json(gateway, "reverse", "acct-biz-02", "p-cli-1", "--at", at)
    assert undone["allocations"][0]["amount"]["micros"] == 5_000_000


def test_rejects_list_shows_the_conflict(gateway: str) -> None:
    """`rejects list` shows the cluster's reject store, filtered by reason: the conflict,
    and the lines no reader could read, by file and line; pages of 2 follow each other
    with nothing missed or repeated, and say how many there are in all."""
    listed = cli_json(gateway, "rejects", "list")
    assert "pgw01:000030" in {r["record_id"] for r in listed["rejects"]}
    assert listed["total"] == len(listed["rejects"]) and not listed["next_page_token"]
    malformed = cli_json(gateway, "rejects", "list", "--reason", "malformed")["rejects"]
    lines = {(Path(r["source_file"]).name, r["source_line"]) for r in malformed}
    assert {(name, n) for name, ns in READER_REJECTS.items() for n in ns} <= lines
    paged, token = [], ""
    while True:
        page = cli_json(
            gateway, "rejects", "list", "--limit", "2", *(["--page", token] if token else [])
        )
        assert page["total"] == listed["total"] and len(page["rejects"]) <= 2
        paged += page["rejects"]
        token = page["next_page_token"]
        if not token:
            break
    assert paged == listed["rejects"]
    every = cli_json(gateway, "rejects", "list", "--limit", "3", "--all")
    assert every["rejects"] == listed["rejects"]
    nothing = cli_json(gateway, "rejects", "list", "--reason", "no_such_reason")
    assert nothing == {"rejects": [], "total": 0, "next_page_token": ""}


def test_reconcile_is_balanced(gateway: str) -> None:
    """`reconcile`: received = rated + rejected + duplicates, and the ledger sums to zero."""
    result = cli(gateway, "reconcile")
    assert result.exit_code == 0, result.output
    assert "balanced" in result.stdout and "NOT balanced" not in result.stdout
    answer = cli_json(gateway, "reconcile")
    assert answer["received"] == answer["rated"] + answer["rejected"] + answer["duplicates"]
    assert answer["ledger_total"]["micros"] == 0 and answer["balanced"]


def test_a_refused_call_is_one_line_and_exit_1(gateway: str) -> None:
    """A gRPC error prints `petribill: error: <CODE>: <message>`, exit 1, no traceback."""
    result = cli(gateway, "topup", "acct-nobody", "5")
    assert result.exit_code == 1
    assert result.stderr.startswith("petribill: error: NOT_FOUND: ")
    assert "Traceback" not in result.output


def test_no_cluster_found_says_how_to_find_one(tmp_path: Path) -> None:
    """Without --gateway and without a runtime.json, the command says how to find a cluster."""
    result = CliRunner().invoke(main, ["reconcile", "--data", str(tmp_path)])
    assert result.exit_code == 1  # the command could not do its work (the README's rule)
    assert "runtime.json" in result.stderr and "--gateway" in result.stderr


def test_usage_history_pages_past_one_answer(gateway: str) -> None:
    """A history longer than one ListUsage answer (1000 lines) is read whole, page by
    page (chaos seed 2 of pause-nodes found the auditor reading only 1000 lines)."""
    from cluster.client import PetribillClient

    with PetribillClient(gateway, timeout_s=60) as client:
        client.create_account(
            "pager", payment_mode="postpaid", plan_id="business",
            msisdns=["4915122200001"], request_id="pager-create",
        )  # fmt: skip
        sent = [f"pager:{n}" for n in range(1234)]
        records = [
            {
                "record_id": rid,
                "service": "sms",
                "served_msisdn": "4915122200001",
                "record_opening_time_s": NOV.start_s + 3600 + n,
                "sms_count": 1,
                "called_number": "4930123456",
            }
            for n, rid in enumerate(sent)
        ]
        for start in range(0, len(records), 500):
            client.submit_usage(records[start : start + 500])
        lines = [line.record_id for line in client.iter_usage("pager", page=1000)]
        assert lines == sent[::-1]  # every line once, newest first
        page = client.list_usage("pager", limit=3).lines
        assert [line.record_id for line in page] == lines[:3]


# --- plan change (ChangePlan), backup and load-tariffs ---------------------------------------

DEC = monthly_cycle(2026, 12, "Europe/Berlin")
DEC_BILL_AT = DEC.end_s + BillRunConfig().grace_s + 3600
PLAN_CHANGE_AT = DEC.start_s + 15 * 86_400 + 10 * 3600  # Wed 16 December 2026, 10:00 Berlin
UK = "442071234567"  # international: the smart plan has no bundle for it, business has


def _sms(record_id: str, msisdn: str, at_s: int) -> dict[str, Any]:
    return {
        "record_id": record_id,
        "service": "sms",
        "served_msisdn": msisdn,
        "record_opening_time_s": at_s,
        "sms_count": 1,
        "called_number": UK,
    }


def test_change_plan_mid_cycle_rates_with_the_new_plan_and_prorates_both_fees(
    cluster_data: tuple[str, Path],
) -> None:
    """`change-plan` moves a postpaid account from business to smart on 16 December: a record
    after the change is priced by smart, one before by business; the December invoice has
    two prorated fee lines that add up; a retry is idempotent, another plan under the same
    id is ALREADY_EXISTS, and an unknown plan is INVALID_ARGUMENT."""
    import grpc

    from cluster.client import PetribillClient, PetribillError

    gateway, data_dir = cluster_data

    msisdn = "4915122200077"
    with PetribillClient(gateway, timeout_s=60) as client:
        client.create_account(
            "planner", payment_mode="postpaid", plan_id="business", msisdns=[msisdn],
            start_s=DEC.start_s, request_id="planner-create",
        )  # fmt: skip
        changed = cli_json(
            gateway, "change-plan", "planner", "smart", "--at", str(PLAN_CHANGE_AT),
            "--request-id", "planner-pc-1",
        )  # fmt: skip
        assert changed["account_id"] == "planner"
        assert changed["payment_mode"] == "PAYMENT_MODE_POSTPAID"  # the mode stays
        # The same request again (from the SDK, as a client retrying) changes nothing.
        again = client.change_plan(
            "planner", "smart", at_s=PLAN_CHANGE_AT, request_id="planner-pc-1"
        )
        assert again.account_id == "planner"
        with pytest.raises(PetribillError) as conflict:
            client.change_plan(
                "planner", "business", at_s=PLAN_CHANGE_AT, request_id="planner-pc-1"
            )
        assert conflict.value.code is grpc.StatusCode.ALREADY_EXISTS
        assert "different plan" in conflict.value.details
        with pytest.raises(PetribillError) as early:
            client.change_plan("planner", "business", at_s=DEC.start_s, request_id="planner-pc-2")
        assert early.value.code is grpc.StatusCode.FAILED_PRECONDITION

        before, after = client.submit_usage(
            [
                _sms("planner:1", msisdn, PLAN_CHANGE_AT - 86_400),
                _sms("planner:2", msisdn, PLAN_CHANGE_AT + 86_400),
            ]
        ).results
        # Before the change: business, whose SMS bundle covers it. After: smart's price.
        assert (before.amount.micros, before.bundle_units) == (0, 1)
        smart = client.price_enquiry(
            service="sms", units=1, plan_id="smart", called_number=UK, at_s=PLAN_CHANGE_AT
        )
        assert after.bundle_units == 0 and after.amount.micros == smart.price.micros == 190_000

        # The December bill run is dated in January 2027: the cluster's clock goes there
        # (each process rereads the offset within 0.2 s).
        set_clock_offset(data_dir, DEC_BILL_AT - time.time() + 60)
        deadline = time.monotonic() + 30
        while True:
            try:
                *_, final = client.run_billing("2026-12", account_ids=["planner"], at_s=DEC_BILL_AT)
                break
            except PetribillError as ahead:
                assert "beyond the cluster's clock" in ahead.details, ahead
                assert time.monotonic() < deadline, ahead
                time.sleep(0.2)
        assert final.finished and final.invoices_issued == 1
        (invoice,) = client.list_invoices("planner").invoices
    fees = [
        (line.description, line.amount.micros) for line in invoice.lines if line.kind == "recurring"
    ]
    # 31-day December; the day of the change belongs to the new plan:
    #   business  1..15 December = 15 days: 29.00 × 15/31 = 14.0322… → 14.03
    #   smart    16..31 December = 16 days:  9.99 × 16/31 =  5.1561…
    #   exact total (435.00 + 159.84)/31 = 19.1883… → 19.19, so smart = 19.19 − 14.03 = 5.16
    assert fees == [
        ("Business (postpaid) (15/31 days)", 14_030_000),
        ("Smart (prepaid) (16/31 days)", 5_160_000),
    ]
    assert sum(amount for _, amount in fees) == 19_190_000
    usage = [line.amount.micros for line in invoice.lines if line.kind == "usage"]
    assert sum(usage) == 190_000  # the SMS after the change, at smart's price

    unknown = cli(gateway, "change-plan", "planner", "gold", "--request-id", "planner-pc-3")
    assert unknown.exit_code == 1
    assert unknown.stderr.startswith("petribill: error: INVALID_ARGUMENT: ")
    assert "gold" in unknown.stderr and "business, smart" in unknown.stderr


def test_move_number_hands_a_number_to_another_account(gateway: str) -> None:
    """`accounts move-number MSISDN TO --from FROM` moves the number; the receiving account
    lists it, a repeat with the same request id answers the same, and a move naming a
    --from that no longer holds it is FAILED_PRECONDITION in one line."""
    from cluster.client import PetribillClient

    msisdn = "4915122200088"
    with PetribillClient(gateway, timeout_s=60) as client:
        client.create_account(
            "giver", payment_mode="postpaid", plan_id="business", msisdns=[msisdn],
            request_id="giver-create",
        )  # fmt: skip
        client.create_account(
            "taker", payment_mode="postpaid", plan_id="business", request_id="taker-create"
        )
    args = ("accounts", "move-number", msisdn, "taker", "--from", "giver")
    moved = cli_json(gateway, *args, "--request-id", "give-1")
    assert moved["account_id"] == "taker" and moved["msisdns"] == [msisdn]
    assert cli_json(gateway, *args, "--request-id", "give-1") == moved
    stale = cli(gateway, *args, "--request-id", "give-2")
    assert stale.exit_code == 1
    assert stale.stderr.startswith("petribill: error: FAILED_PRECONDITION: ")
    assert "taker" in stale.stderr


def test_backup_writes_a_checkpoint_of_every_unit(
    cluster_data: tuple[str, Path], tmp_path: Path
) -> None:
    """`backup DEST` checkpoints the 4 shards and 2 partitions into DEST (below the backup
    root, DATA/backups); the same request id again completes the same backup; a DEST that
    is a file is refused with exit code 2, one outside the root by the cluster (exit 1)."""
    gateway, data_dir = cluster_data
    dest = data_dir / "backups" / "backup-1"
    answer = cli_json(gateway, "backup", dest, "--request-id", "bk-cli-1")
    assert answer["done"] and answer["request_id"] == "bk-cli-1"
    units = sorted(p.name for p in (dest / "units").iterdir() if p.is_dir())
    assert units == ["acct-00", "acct-01", "acct-02", "acct-03", "part-0", "part-1"]
    assert cli_json(gateway, "backup", dest, "--request-id", "bk-cli-1")["done"]
    shown = cli(gateway, "backup", dest, "--request-id", "bk-cli-1")
    assert shown.exit_code == 0 and "checkpoints of 6 units" in shown.stdout
    taken = cli(gateway, "backup", dest, "--request-id", "bk-cli-2")
    assert taken.exit_code == 1 and "ALREADY_EXISTS" in taken.stderr
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    refused = cli(gateway, "backup", a_file)
    assert refused.exit_code == 2
    assert refused.stderr == f"petribill: error: {a_file}: exists and is not a folder\n"
    outside = cli(gateway, "backup", tmp_path / "elsewhere")
    assert outside.exit_code == 1 and "INVALID_ARGUMENT" in outside.stderr
    assert not (tmp_path / "elsewhere").exists()


def test_load_tariffs_switches_the_catalogue_and_names_a_broken_key(
    gateway: str, tmp_path: Path
) -> None:
    """`load-tariffs DIR` makes DIR's catalogue the one in force and lists its plans; a
    folder the loader refuses is exit code 2 naming the file and the key, and loads nothing."""
    import shutil

    tariffs = ROOT / "conf" / "tariffs"
    loaded = cli_json(gateway, "load-tariffs", tariffs, "--request-id", "tariffs-cli-1")
    assert loaded["default_plan"] == "smart"
    assert {p["plan_id"] for p in loaded["plans"]} == {"smart", "business"}
    shown = cli(gateway, "load-tariffs", tariffs, "--request-id", "tariffs-cli-2")
    assert shown.exit_code == 0 and "in force" in shown.stdout and "business" in shown.stdout
    broken = tmp_path / "tariffs"
    shutil.copytree(tariffs, broken)
    plans = broken / "plans.toml"
    plans.write_text(plans.read_text().replace('monthly_fee = "29.00"', 'monthly_fee = "lots"'))
    refused = cli(gateway, "load-tariffs", broken)
    assert refused.exit_code == 2
    assert f"{plans}: plans.business.versions[0].monthly_fee" in refused.stderr
    assert "Traceback" not in refused.output
    missing = cli(gateway, "load-tariffs", tmp_path / "nowhere")
    assert missing.exit_code == 2 and "does not exist" in missing.stderr


def test_metrics_prints_petribill_series(cluster_data: tuple[str, Path]) -> None:
    """`status` names each node's Prometheus page and `metrics` prints petribill's series
    from it: the gateway's RPCs by status code among them. A child process, as an
    operator runs it (the command connects to Ray and disconnects again)."""
    gateway, data_dir = cluster_data
    cli_json(gateway, "reconcile")  # an RPC through the gateway, at least one
    petribill = str(Path(sys.executable).with_name("petribill"))
    status = subprocess.run(
        [petribill, "status", "--json", "--data", str(data_dir)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    urls = [n["metrics_url"] for n in json.loads(status.stdout)["nodes"]]
    assert urls and all(u.startswith("http://") for u in urls), urls
    deadline = time.monotonic() + 60
    while True:
        done = subprocess.run(
            [petribill, "metrics", "--data", str(data_dir), "--grep", "rpc_total"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        if 'rpc="AdminService.Reconcile"' in done.stdout and 'code="OK"' in done.stdout:
            break
        assert time.monotonic() < deadline, done.stdout + done.stderr
        time.sleep(2)
