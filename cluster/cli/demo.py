"""``petribill demo``: one month of the sample operator on a real local cluster, end to end.

Starts a cluster on a fresh temporary data folder (local Ray, the gateway on
127.0.0.1:50051 when free, else on a free port), then does what a billing
department does in a month, through the public gRPC API only: load the
subscribers of ``conf/samples/subscribers.toml``, top up the prepaid
accounts, ingest the sample CDR files (and resend one, as a mediation retry
would), run online charging (a call's session and a content purchase), close
November 2026 with a bill run after its grace period, take payments (partial,
full, overpaying) and reverse one. It prints balances, invoices with their
lines, the payments' allocations, the notifications and the reconciliation,
then stops the cluster (unless ``keep``). Exit code 1 when anything does not
reconcile.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Final

from petribill.v1 import accounts_pb2, billing_pb2, charging_pb2
from rich.console import Console
from rich.table import Table

from billing.billrun.run import BillRunConfig
from billing.cycle import DAY_S, Cycle, monthly_cycle
from billing.money import format_amount, parse_amount
from billing.rating import load_catalogue
from cluster.cli.client import Session, ingest_paths, run_bill_run
from cluster.cli.ingest import FileReport, account_specs, cdr_files, create_accounts
from cluster.cli.render import (
    make_console,
    money_text,
    show_balances,
    show_bill_run,
    show_ingest_reports,
    show_invoices,
    show_loaded_accounts,
    show_notifications,
    show_payment,
    show_reconciliation,
)
from cluster.client import PetribillClient
from cluster.config import ClusterConfig, SecurityConfig, load_config

__all__ = ["DemoFailed", "run_demo"]

TOP_UP: Final = "20.00"
UK_NUMBER: Final = "442071234567"  # international zone 1: no bundle of the smart plan covers it
CONTENT_ITEM: Final = "game-coins-500"
STEPS: Final = 9


class DemoFailed(Exception):
    """Raised when the demo's books do not reconcile; the message says what differs."""


@dataclass(slots=True)
class _Tally:
    """What the summary reports, collected along the way."""

    reports: list[FileReport] = field(default_factory=list)
    resent: FileReport | None = None
    invoices: list[billing_pb2.Invoice] = field(default_factory=list)
    paid_micros: int = 0
    reversed_micros: int = 0
    notifications: int = 0


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise OSError("no free TCP port on 127.0.0.1")


def _step(c: Console, number: int, title: str) -> None:
    c.print()
    c.rule(f"[bold][{number}/{STEPS}] {title}[/]", align="left")


def _demo_config(config: ClusterConfig) -> ClusterConfig:
    """The conf's settings for the demo's own throwaway cluster, which listens on 127.0.0.1
    only and so runs without the conf's [security] (its client has no credentials)."""
    gateway = config.gateway.model_copy(update={"host": "127.0.0.1"})
    return config.model_copy(update={"gateway": gateway, "security": SecurityConfig()})


def run_demo(
    conf_dir: Path, *, nodes: int = 1, keep: bool = False, console: Console | None = None
) -> None:
    """The whole demo; raises :class:`DemoFailed` when the books do not reconcile."""
    from cluster.deploy.runtime import Runtime

    c = console or make_console()
    started = time.monotonic()
    config = _demo_config(load_config(conf_dir / "cluster.toml", missing_ok=True))
    catalogue = load_catalogue(conf_dir / "tariffs")
    cycle = monthly_cycle(2026, 11, catalogue.timezone)
    data_dir = Path(tempfile.mkdtemp(prefix="petribill-demo-")) / "data"
    port = _free_port(config.gateway.port)
    c.print(
        f"[bold]petribill demo[/]: the sample operator ({catalogue.name}, {catalogue.currency}, "
        f"{catalogue.timezone}), billing cycle {cycle.cycle_id}, on a local cluster"
    )
    _step(c, 1, f"Starting a cluster: {nodes} node(s), data in {data_dir}")
    runtime = Runtime(
        config,
        data_dir=data_dir,
        tariffs_dir=conf_dir / "tariffs",
        nodes=nodes,
        port=port,
    )
    stop = True
    try:
        info = runtime.start()
        c.print(
            f"up in {time.monotonic() - started:.1f} s: {config.sharding.shards} account "
            f"shards, {config.sharding.partitions} rating partitions, gateway "
            f"{', '.join(info.gateways)}"
        )
        with PetribillClient(info.gateways, timeout_s=60.0) as client:
            tally = _month(Session(client, False, c), conf_dir, cycle)
            _summary(c, client, tally, cycle)
        stop = not keep
    finally:
        if stop:
            c.print("\nstopping the cluster ...")
            runtime.stop()
            shutil.rmtree(data_dir.parent, ignore_errors=True)
    took = time.monotonic() - started
    if keep:
        c.print(f"the cluster keeps running: petribill down --data {data_dir}")
    else:
        c.print(f"cluster stopped; the demo took {took:.1f} s")


def _month(s: Session, conf_dir: Path, cycle: Cycle) -> _Tally:
    """Steps 2 to 8: a month of the sample operator; what the summary needs."""
    c, client, tally = s.console, s.client, _Tally()
    samples = conf_dir / "samples"
    _step(c, 2, f"Loading the subscribers of {samples / 'subscribers.toml'}")
    loaded = create_accounts(
        client, account_specs(samples / "subscribers.toml"), start_s=cycle.start_s
    )
    show_loaded_accounts(c, loaded)
    accounts = [r for _, r in loaded if isinstance(r, accounts_pb2.Account)]
    if len(accounts) != len(loaded):
        raise DemoFailed("some accounts could not be created (see the table above)")
    prepaid = [a.account_id for a in accounts if a.payment_mode == 1]
    postpaid = [a.account_id for a in accounts if a.payment_mode != 1]

    _step(
        c, 3, f"Top-ups: {TOP_UP} {accounts[0].currency} on each of {len(prepaid)} prepaid accounts"
    )
    for account_id in prepaid:
        client.top_up(
            account_id, TOP_UP, at_s=cycle.start_s + 3600, request_id=f"demo-topup:{account_id}"
        )
    total = parse_amount(TOP_UP) * len(prepaid)
    c.print(f"{len(prepaid)} top-ups, {format_amount(total)} {accounts[0].currency} in total")

    _step(c, 4, f"Ingesting the sample CDR files of {samples}")
    tally.reports = ingest_paths(s, [samples], batch_records=1000, progress_console=c)
    show_ingest_reports(c, tally.reports)
    voice = next(p for p in cdr_files([samples]) if p.name == "voice.csv")
    c.print(f"\nresending {voice.name}, as a mediation system retrying after a timeout would:")
    (tally.resent,) = ingest_paths(s, [voice], batch_records=1000, progress_console=c)
    c.print(
        f"{tally.resent.lines} lines: {tally.resent.duplicates} duplicates, "
        f"{tally.resent.rated} charged again"
    )

    _step(c, 5, "Online charging (Gy/Nchf): a call to the UK and a content purchase")
    _online(c, client, prepaid, cycle)

    grace_s = BillRunConfig().grace_s
    bill_at = cycle.end_s + grace_s + 3600
    _step(c, 6, f"Bill run {cycle.cycle_id} after the {grace_s // DAY_S}-day grace period")
    final = run_bill_run(
        s,
        cycle.cycle_id,
        at_s=bill_at,
        request_id=f"demo-bill:{cycle.cycle_id}",
        progress_console=c,
    )
    show_bill_run(c, final)
    for account_id in postpaid:
        found = list(client.list_invoices(account_id).invoices)
        tally.invoices.extend(found)
        show_invoices(c, account_id, found)

    _step(c, 7, "Payments (partial, full, overpaying) and a reversal")
    _payments(c, client, tally, bill_at)

    _step(c, 8, "Balances and notifications")
    balances = [client.get_balance(a.account_id) for a in accounts]
    modes = ["prepaid" if a.payment_mode == 1 else "postpaid" for a in accounts]
    show_balances(c, balances, modes)
    notes = [
        n for a in accounts for n in reversed(client.list_notifications(a.account_id).notifications)
    ]
    tally.notifications = len(notes)
    show_notifications(c, notes)
    return tally


def _online(c: Console, client: PetribillClient, prepaid: list[str], cycle: Cycle) -> None:
    """A voice session (initial, update, terminate) and a direct debit on prepaid accounts."""
    # The two prepaid accounts with the most money left, so the online steps succeed.
    richest = sorted(prepaid, key=lambda a: -client.get_balance(a).prepaid.micros)
    caller, buyer = richest[0], richest[1]
    at_s = cycle.start_s + 27 * DAY_S + 18 * 3600
    quote = client.price_enquiry(
        account_id=caller, service="voice", units=180, at_s=at_s, called_number=UK_NUMBER
    )
    c.print(
        f"price enquiry: a 3-minute call to +{UK_NUMBER} on {caller}'s plan costs "
        f"{money_text(quote.price)} ({quote.destination}, {', '.join(quote.rate_ids)})"
    )
    common = {"account_id": caller, "service": "voice", "called_number": UK_NUMBER}
    steps: list[tuple[str, int, int]] = [
        ("initial", 300, 0),
        ("update", 300, 120),
        ("terminate", 0, 75),
    ]
    table = Table(title=f"Session demo-call-1 of {caller}", title_justify="left")
    for column in ("step", "requested", "used", "granted", "charged", "held", "result"):
        table.add_column(column, justify="left" if column in ("step", "result") else "right")
    for index, (step, requested, used) in enumerate(steps):
        answer = client.charge_session(
            session_id="demo-call-1",
            step=step,
            requested_units=requested,
            used_units=used,
            at_s=at_s + index * 120,
            request_id=f"demo-call-1:{step}",
            **common,
        )
        result = charging_pb2.SessionResult.Name(answer.result).removeprefix("SESSION_RESULT_")
        table.add_row(
            step,
            f"{requested} s" if requested else "",
            f"{used} s" if used else "",
            f"{answer.granted_units} s" if answer.granted_units else "",
            money_text(answer.charged),
            money_text(answer.reserved),
            result.lower() + (" (final units)" if answer.final_unit else ""),
        )
    c.print(table)
    debit = client.direct_debit(
        buyer,
        service="content",
        units=1,
        content_item_id=CONTENT_ITEM,
        at_s=at_s + DAY_S,
        request_id="demo-debit-1",
    )
    c.print(
        f"direct debit: {buyer} bought {CONTENT_ITEM} for {money_text(debit.charged)}; "
        f"prepaid balance now {money_text(debit.balance_after)}"
    )


def _payments(c: Console, client: PetribillClient, tally: _Tally, bill_at: int) -> None:
    open_invoices = [i for i in tally.invoices if i.open.micros > 0]
    if len(open_invoices) < 2:
        c.print("fewer than two open invoices: no payments to show")
        return
    first, second = open_invoices[0], open_invoices[1]
    partial = min(parse_amount("10.00"), first.open.micros // 2)
    plan = [
        ("partial", first.account_id, partial, 1),
        ("full", second.account_id, second.open.micros, 2),
        ("overpaying", first.account_id, first.open.micros - partial + parse_amount("15.00"), 3),
    ]
    for label, account_id, micros, day in plan:
        amount = Decimal(micros).scaleb(-6)
        request_id = f"demo-pay-{label}"
        answer = client.apply_payment(
            account_id,
            amount,
            at_s=bill_at + day * DAY_S,
            request_id=request_id,
            reference=f"bank transfer ({label})",
        )
        tally.paid_micros += micros
        show_payment(c, account_id, format_amount(micros), answer)
    reversal = client.reverse_payment(
        second.account_id, "demo-pay-full", at_s=bill_at + 5 * DAY_S, request_id="demo-reverse-1"
    )
    tally.reversed_micros += second.open.micros
    c.print(f"the bank returned demo-pay-full of {second.account_id} (a charge-back):")
    show_payment(c, second.account_id, None, reversal)
    for invoice in (first, second):
        show_invoices(
            c,
            invoice.account_id,
            [client.get_invoice(invoice.account_id, invoice.invoice_id)],
            lines=False,
        )


def _summary(c: Console, client: PetribillClient, tally: _Tally, cycle: Cycle) -> None:
    """Step 9: reconcile the files with the cluster and the cluster with its ledger."""
    _step(c, 9, "Reconciliation (revenue assurance)")
    answer = client.reconcile()
    show_reconciliation(c, answer)
    files = FileReport.total(tally.reports)
    resent = tally.resent or FileReport(file="-")
    # Records streamed, and the unreadable lines stored in the reject store (the resent
    # file's again: storing a line again counts it again, as a resent record does).
    sent = files.sent + files.stored_unreadable + resent.sent + resent.stored_unreadable
    problems = []
    if not answer.balanced:
        problems.append(f"the cluster does not reconcile: {answer.detail}")
    if not all(r.balanced for r in [*tally.reports, resent]):
        problems.append("a file's lines do not add up")
    if answer.received != sent:
        problems.append(f"{sent} records and lines sent but the cluster received {answer.received}")
    if resent.rated:
        problems.append(f"{resent.rated} records of the resent file were charged again")
    currency = answer.ledger_total.currency
    invoiced = sum(i.total.micros for i in tally.invoices)
    c.print()
    c.print("[bold]Summary[/]")
    c.print(
        f"  CDR lines read:    {files.lines} = {files.rated} rated + {files.rejected} rejected "
        f"({files.rejected_reader} by the reader) + {files.duplicates} duplicates + "
        f"{files.conflicts} conflicts"
    )
    c.print(
        f"  resent file:       {resent.lines} lines, {resent.duplicates} duplicates, "
        f"{resent.rated} charged twice"
    )
    c.print(
        f"  cluster records:   received {answer.received} = rated {answer.rated} + rejected "
        f"{answer.rejected} + duplicates {answer.duplicates}"
    )
    c.print(
        f"  bill run {cycle.cycle_id}:  {len(tally.invoices)} invoices, "
        f"{format_amount(invoiced)} {currency} invoiced"
    )
    c.print(
        f"  payments:          {format_amount(tally.paid_micros)} {currency} received, "
        f"{format_amount(tally.reversed_micros)} {currency} reversed"
    )
    c.print(f"  notifications:     {tally.notifications}")
    c.print(f"  ledger total:      {money_text(answer.ledger_total)}")
    if problems:
        c.print(f"  reconciliation:    [red]NOT balanced[/]: {'; '.join(problems)}")
        raise DemoFailed("; ".join(problems))
    c.print("  reconciliation:    [green]balanced[/]")
