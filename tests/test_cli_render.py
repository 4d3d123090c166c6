"""What the client commands print for a person: every value whole, whatever COLUMNS is.

No cluster: the renderers of cluster/cli/render.py get answers built by hand,
with values longer than any terminal and with characters rich would read as
markup, and print them on the console the commands use, 40 columns wide.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator

import grpc
import pytest
from petribill.v1 import accounts_pb2, admin_pb2, billing_pb2, common_pb2, notifications_pb2

from cluster.cli import render
from cluster.cli.console import make_console
from cluster.cli.ingest import AccountSpec, FileReport, RejectLine
from cluster.client import PetribillError

# Values a narrow table would wrap (spaces), fold or cut (no spaces), or rich would
# read as markup ("[...]") or emoji (":fire:").
ACCOUNT = "acct-" + "0123456789" * 10 + "[vip]"
PLAN = "smart-" + "x" * 60
MSISDN = "4915100000001"
RECORD = "msc01:" + "9" * 100
DETAIL = "line 7: duration_s: must be a non-negative integer, got '[five]' " + "and so on " * 8
FOLDER = "/tmp/" + "/".join(["a-rather-long-folder-name"] * 8)
FILE_NAME = "cdrs-of-the-night-of-the-third-of-november-from-the-backup-switch.csv"
INVOICE = "inv-" + ACCOUNT + "-2026-11"
SUBJECT = ":fire: your balance is low, please top up [now] " + "soon " * 10
AMOUNT = common_pb2.Money(micros=123_456_789_012, currency="EUR")
AMOUNT_TEXT = "123456.789012 EUR"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(params=["pipe", "terminal"])
def screen(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """40 columns in COLUMNS: printed to a pipe, and to something rich takes for a terminal."""
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.setenv("TTY_COMPATIBLE", "1" if request.param == "terminal" else "0")
    yield


def printed(show: Callable[[render.Console], None]) -> str:
    buffer = io.StringIO()
    show(make_console(file=buffer))
    return ANSI.sub("", buffer.getvalue())


def _account() -> accounts_pb2.Account:
    bundle = accounts_pb2.BundleBalance(
        bundle_id="bundle-" + "b" * 70, usage_class="voice.national", cycle_id="2026-11"
    )
    return accounts_pb2.Account(
        account_id=ACCOUNT,
        plan_id=PLAN,
        currency="EUR",
        msisdns=[MSISDN, "4915100000002"],
        credit_limit=AMOUNT,
        balance=accounts_pb2.Balance(account_id=ACCOUNT, prepaid=AMOUNT, bundles=[bundle]),
    )


def _invoice() -> billing_pb2.Invoice:
    line = billing_pb2.InvoiceLine(kind="usage", description=DETAIL, amount=AMOUNT)
    return billing_pb2.Invoice(
        invoice_id=INVOICE, account_id=ACCOUNT, cycle_id="2026-11", lines=[line], total=AMOUNT
    )


def _ingest_report() -> FileReport:
    reject = RejectLine(
        file=f"{FOLDER}/{FILE_NAME}",
        line=7,
        record_id=RECORD,
        reason="malformed/bad_value",
        detail=DETAIL,
        stage="reader",
    )
    return FileReport(
        file=f"{FOLDER}/{FILE_NAME}",
        lines=1,
        rejected_reader=1,
        amount_micros={"EUR": AMOUNT.micros},
        rejects=[reject],
    )


RENDERERS: dict[str, tuple[Callable[[render.Console], None], tuple[str, ...]]] = {
    "balances": (
        lambda c: render.show_balances(c, [_account().balance], ["prepaid"]),
        (ACCOUNT, "123456.789012"),
    ),
    "account": (
        lambda c: render.show_account(c, _account()),
        (ACCOUNT, PLAN, MSISDN, AMOUNT_TEXT, "bundle-" + "b" * 70),
    ),
    "loaded accounts": (
        lambda c: render.show_loaded_accounts(
            c,
            [
                (AccountSpec(account_id=ACCOUNT, plan_id=PLAN, msisdns=(MSISDN,)), _account()),
                (
                    AccountSpec(account_id="acct-2", plan_id=PLAN, msisdns=(MSISDN,)),
                    PetribillError(grpc.StatusCode.INVALID_ARGUMENT, DETAIL),
                ),
            ],
        ),
        (ACCOUNT, PLAN, f"INVALID_ARGUMENT: {DETAIL}"),
    ),
    "usage": (
        lambda c: render.show_usage(
            c,
            ACCOUNT,
            [
                accounts_pb2.UsageLine(
                    record_id=RECORD,
                    usage_class="voice.national",
                    amount=AMOUNT,
                    sponsored_by="sponsor-" + "s" * 50,
                )
            ],
        ),
        (f"Usage of {ACCOUNT} (newest first)", RECORD, AMOUNT_TEXT, "sponsor-" + "s" * 50),
    ),
    "payment": (
        lambda c: render.show_payment(
            c,
            ACCOUNT,
            "12.50",
            billing_pb2.PaymentAnswer(
                request_id="pay-" + RECORD,
                allocations=[billing_pb2.Allocation(invoice_id=INVOICE, amount=AMOUNT)],
                credit=AMOUNT,
            ),
        ),
        (f"{ACCOUNT}: payment pay-{RECORD} of 12.50 EUR", INVOICE, AMOUNT_TEXT),
    ),
    "invoices": (
        lambda c: render.show_invoices(c, ACCOUNT, [_invoice()]),
        (INVOICE, f"({ACCOUNT}, cycle 2026-11)", DETAIL, AMOUNT_TEXT),
    ),
    "notifications": (
        lambda c: render.show_notifications(
            c,
            [
                notifications_pb2.Notification(
                    account_id=ACCOUNT, subject=SUBJECT, data={"balance": "123456789012"}
                )
            ],
        ),
        (ACCOUNT, SUBJECT, "balance=123456.789012"),
    ),
    "rejects": (
        lambda c: render.show_rejects(
            c,
            [
                admin_pb2.Reject(
                    record_id=RECORD,
                    reason="malformed/bad_value",
                    detail=DETAIL,
                    source_file=f"{FOLDER}/{FILE_NAME}",
                    source_line=7,
                )
            ],
            1,
        ),
        (RECORD, DETAIL, f"{FOLDER}/{FILE_NAME}:7"),
    ),
    "reconciliation": (
        lambda c: render.show_reconciliation(
            c, admin_pb2.ReconcileResponse(ledger_total=AMOUNT, detail=DETAIL)
        ),
        (f"ledger total {AMOUNT_TEXT}", f"({DETAIL})"),
    ),
    "ingest reports": (
        lambda c: render.show_ingest_reports(c, [_ingest_report()]),
        (FILE_NAME, AMOUNT_TEXT, RECORD, DETAIL),
    ),
    "bill run": (
        lambda c: render.show_bill_run(
            c, billing_pb2.BillRunProgress(cycle_id="2026-11", invoiced_total=AMOUNT)
        ),
        (f"{AMOUNT_TEXT} invoiced",),
    ),
    # The line `petribill load-tariffs` prints: its path is the cluster's data folder.
    "a line of text": (
        lambda c: c.print(f"catalogue sample ({FOLDER}/tariffs) in force: 12 prefixes"),
        (f"catalogue sample ({FOLDER}/tariffs) in force: 12 prefixes",),
    ),
}


@pytest.mark.usefixtures("screen")
@pytest.mark.parametrize("name", sorted(RENDERERS))
def test_every_value_is_printed_whole_in_40_columns(name: str) -> None:
    """Each value the renderer is given appears on one line, unwrapped, uncut and unescaped."""
    show, values = RENDERERS[name]
    out = printed(show)
    for value in values:
        assert value in out, f"{value!r} is not whole in:\n{out}"
    assert "…" not in out.replace(f"{MSISDN}…", "")  # the one ellipsis is a list of MSISDNs


@pytest.mark.usefixtures("screen")
def test_what_fits_is_printed_as_narrow_as_before() -> None:
    """A table of short values is no wider than its values need: nothing is padded out."""
    reject = admin_pb2.Reject(record_id="a:1", reason="r", detail="d")
    out = printed(lambda c: render.show_rejects(c, [reject], 1))
    assert "a:1" in out and max(map(len, out.splitlines())) <= 40, out
