"""The CLI nits of issue 15 (item 9): what a person reads is complete and in currency units.

`rejects list` says when it stopped at its limit, `reprocess` says why records
are still rejected, `notifications` shows thresholds in currency units, and the
sample data's sponsor account exists. The exit-code rule is tested with every
command's errors in test_cli_rate.py.
"""

from __future__ import annotations

import io
from pathlib import Path

import grpc
from petribill.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    notifications_pb2,
    usage_pb2,
    usage_pb2_grpc,
)
from test_gateway_support import T_NOV, running_gateways

from billing.rating import load_catalogue
from cluster.cli.console import make_console
from cluster.cli.ingest import account_specs
from cluster.cli.render import show_notifications, show_rejects, show_reprocessed

CONF = Path(__file__).resolve().parent.parent / "conf"


def _printed(show: object, *args: object) -> str:
    out = io.StringIO()
    show(make_console(file=out), *args)  # type: ignore[operator]
    return out.getvalue()


def test_rejects_list_says_how_many_there_are_and_where_the_next_page_is() -> None:
    """A page that is not the last says "N of M" and names the next page; the last says
    how many there are in all."""
    found = [admin_pb2.Reject(record_id=f"r:{i}", reason="malformed") for i in range(3)]
    first = _printed(show_rejects, found, 15_033, "part-0/6c2f")
    assert "3 of 15033 rejects" in first and "--page part-0/6c2f" in first
    assert "3 rejects shown, 3 in all" in _printed(show_rejects, found, 3, "")


def test_notifications_show_thresholds_in_currency_units() -> None:
    """A low-balance subject of 1000000 millionths reads "below 1.0000"."""
    note = notifications_pb2.Notification(
        kind=notifications_pb2.NOTIFICATION_KIND_LOW_BALANCE,
        account_id="a1",
        subject="1000000",
        data={"threshold": "1000000", "balance": "250000"},
    )
    text = _printed(show_notifications, [note])
    assert "below 1.0000" in text and "threshold=1.0000" in text
    assert "1000000" not in text


def test_reprocess_says_why_records_are_still_rejected() -> None:
    """Reprocessing a record of an unknown number answers its reason with the count."""
    record = common_pb2.UsageRecord(
        record_id="nits:1", service=common_pb2.SERVICE_VOICE, served_msisdn="491519999999",
        record_opening_time_s=T_NOV, called_number="4930123456", duration_s=60,
    )  # fmt: skip
    with (
        running_gateways() as (_loop, _backend, gateways),
        grpc.insecure_channel(gateways[0].address) as channel,
    ):
        usage_pb2_grpc.UsageServiceStub(channel).SubmitUsage(
            usage_pb2.SubmitUsageRequest(records=[record]), timeout=10
        )
        answer = admin_pb2_grpc.AdminServiceStub(channel).ReprocessRejects(
            admin_pb2.ReprocessRejectsRequest(request_id="rp-1", record_ids=["nits:1"]),
            timeout=10,
        )
    assert (answer.reprocessed, answer.still_rejected) == (1, 1)
    assert dict(answer.still_rejected_by_reason) == {"unknown_account": 1}
    text = _printed(show_reprocessed, answer)
    assert "1 still rejected" in text and "1 unknown_account" in text


def test_the_sample_sponsor_exists() -> None:
    """Every sponsor account of the sample catalogue is an account of the sample data."""
    catalogue = load_catalogue(str(CONF / "tariffs"))
    accounts = {spec.account_id for spec in account_specs(CONF / "samples" / "subscribers.toml")}
    sponsors = {sponsor.account_id for sponsor in catalogue.sponsors.values()}
    assert sponsors and sponsors <= accounts
