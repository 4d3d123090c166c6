"""Client commands of a running cluster: ingest, accounts, plan change, top-up, bill run,
invoices, payments.

Every command finds the cluster by ``--gateway HOST:PORT`` (repeatable: the
client fails over between them) or else by the ``runtime.json`` of ``--data
DIR`` (what ``petribill up`` wrote), prints tables for a person and one JSON
document with ``--json``. A call the cluster refuses ends the command with
``petribill: error: <CODE>: <message>`` on stderr and exit code 1; a bad
option or file is exit code 2; rejected records are data, not failure.
Amounts are decimal currency units (``12.50``); times are Unix seconds or ISO
8601 (``2026-12-05``, ``2026-12-05T10:00:00+01:00``; no offset means UTC).
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from billing.money import MoneyParseError, parse_amount
from cluster.cli.ingest import (
    AccountSpec,
    FileReport,
    IngestError,
    account_specs,
    cdr_files,
    count_lines,
    create_account,
    create_accounts,
    ingest_file,
)
from cluster.cli.render import (
    make_console,
    parse_when,
    show_account,
    show_balances,
    show_bill_run,
    show_ingest_reports,
    show_invoices,
    show_loaded_accounts,
    show_notifications,
    show_payment,
    show_reconciliation,
    show_rejects,
    show_reprocessed,
    show_usage,
    when_text,
)
from cluster.client import PetribillClient, PetribillError
from cluster.wire import WireError, money_to_proto

__all__ = [
    "Session",
    "UsageError",
    "client_credentials",
    "cluster_command",
    "proto_json",
    "register",
    "request_id_option",
]

DEFAULT_DATA = Path("data")
TIMEOUT_S_DEFAULT = 30.0


class UsageError(click.ClickException):
    """A bad option, file or amount: exit code 2, one line, no traceback."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"petribill: error: {self.format_message()}", err=True)


class CallError(click.ClickException):
    """A call the cluster refused or could not answer: exit code 1, the gRPC code and message."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"petribill: error: {self.format_message()}", err=True)


@contextmanager
def cluster_errors() -> Iterator[None]:
    """Turn the SDK's and the files' failures into one-line command errors."""
    try:
        yield
    except PetribillError as exc:
        raise CallError(f"{exc.code.name}: {exc.details}") from None
    except (WireError, IngestError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"{exc.filename or 'input'}: {exc.strerror}") from None


def client_credentials() -> dict[str, Any]:
    """The global ``--token``, ``--ca``, ``--cert``, ``--key`` of this command line (or
    ``PETRIBILL_TOKEN``...), as :class:`PetribillClient` keywords; those not given left out."""
    ctx = click.get_current_context(silent=True)
    found = (ctx.find_root().obj or {}) if ctx is not None else {}
    given: dict[str, Any] = found.get("credentials", {})
    return {name: value for name, value in given.items() if value is not None}


def open_client(
    gateways: Sequence[str], data_dir: Path, timeout_s: float = TIMEOUT_S_DEFAULT
) -> PetribillClient:
    """A client of the gateways named, or of the cluster recorded in ``data_dir``, with the
    command line's credentials (:func:`client_credentials`)."""
    from cluster.deploy.runtime import read_info

    addresses = list(gateways)
    if not addresses:
        info = read_info(data_dir)
        if info is None or not info.gateways:
            # No cluster to work with: a failure of the command (exit 1), as in status
            # and down, not a usage error (README, "Errors and exit codes").
            raise CallError(
                f"no cluster recorded in {data_dir}/runtime.json: start one with "
                f"`petribill up --detach --data {data_dir}`, or pass --gateway HOST:PORT"
            )
        addresses = info.gateways
    return PetribillClient(addresses, timeout_s=timeout_s, **client_credentials())


@dataclass(slots=True)
class Session:
    """What a client command works with: the client, and where and how to print."""

    client: PetribillClient
    as_json: bool
    console: Console

    def emit(self, data: Any, show: Callable[[Console], None]) -> None:
        """Print ``data`` as JSON with ``--json``, else call ``show`` for a person."""
        if self.as_json:
            click.echo(json.dumps(data, ensure_ascii=False))
        else:
            show(self.console)


def cluster_command(func: Callable[..., None]) -> Callable[..., None]:
    """Add the options that find the cluster, and hand the command a :class:`Session`."""

    @click.option(
        "--gateway",
        "gateways",
        multiple=True,
        metavar="HOST:PORT",
        help="A gateway of the cluster (repeatable); default: those in DATA/runtime.json.",
    )
    @click.option(
        "--data",
        "data_dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=DEFAULT_DATA,
        show_default=True,
        help="Data folder of a cluster started by `petribill up`.",
    )
    @click.option(
        "--timeout",
        "timeout_s",
        type=click.FloatRange(min=0.1),
        default=TIMEOUT_S_DEFAULT,
        show_default=True,
        help="Seconds one call may take, retries included.",
    )
    @click.option("--json", "as_json", is_flag=True, help="One JSON document instead of tables.")
    @functools.wraps(func)
    def wrapper(
        gateways: tuple[str, ...], data_dir: Path, timeout_s: float, as_json: bool, **kwargs: Any
    ) -> None:
        with cluster_errors(), open_client(gateways, data_dir, timeout_s) as client:
            func(Session(client, as_json, make_console()), **kwargs)

    return wrapper


# --- option types --------------------------------------------------------------------------


class AmountType(click.ParamType[str]):
    """A decimal amount in currency units, e.g. ``12.50`` (checked here, sent as given)."""

    name = "amount"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            parse_amount(str(value))
        except MoneyParseError as exc:
            self.fail(str(exc), param, ctx)
        return str(value)


class WhenType(click.ParamType[int]):
    """A time: Unix seconds, or ISO 8601 (a date or a time without offset is UTC)."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            return parse_when(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


AMOUNT = AmountType()
WHEN = WhenType()


def _at_option(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("--at", "at_s", type=WHEN, default=None, help=f"{what} (default: now).")


def request_id_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--request-id", help="Idempotency key; a retry with the same key is applied once."
    )(func)


def proto_json(message: Message) -> dict[str, Any]:
    data: dict[str, Any] = MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )
    return data


# --- ingest --------------------------------------------------------------------------------


def ingest_paths(
    s: Session,
    paths: Sequence[Path],
    *,
    batch_records: int,
    country_code: str = "49",
    naive_time_zone: str | None = None,
    progress_console: Console | None = None,
    columnar: bool = True,
) -> list[FileReport]:
    """Ingest every CDR file of ``paths`` with a progress bar per file; their reports."""
    files = cdr_files(paths)
    if not files:
        raise UsageError(f"no CDR files (.csv, .jsonl, .ndjson) in {', '.join(map(str, paths))}")
    reports = []
    columns = (
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("lines"),
        TimeElapsedColumn(),
    )
    with Progress(
        *columns, console=progress_console or make_console(stderr=True), disable=s.as_json
    ) as progress:
        for path in files:
            total = count_lines(path)
            task = progress.add_task(path.name, total=total)
            report = ingest_file(
                s.client,
                path,
                batch_records=batch_records,
                country_code=country_code,
                naive_time_zone=naive_time_zone,
                on_progress=functools.partial(_advance, progress, task),
                columnar=columnar,
            )
            progress.update(task, completed=total)
            reports.append(report)
    return reports


def _advance(progress: Progress, task: TaskID, line: int) -> None:
    progress.update(task, completed=line)


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--batch",
    "batch_records",
    type=click.IntRange(1, 10_000),
    default=1000,
    show_default=True,
    help="Records per batch sent.",
)
@click.option("--country-code", default="49", show_default=True, help="For national numbers.")
@click.option("--naive-time-zone", metavar="ZONE", help="Read times without offset in ZONE.")
@click.option(
    "--rejects-shown", type=click.IntRange(min=0), default=50, show_default=True, metavar="N"
)
@click.option(
    "--per-record",
    is_flag=True,
    help="Send records one message each (StreamUsage), not as Arrow columns.",
)
@cluster_command
def ingest(
    s: Session,
    paths: tuple[Path, ...],
    batch_records: int,
    country_code: str,
    naive_time_zone: str | None,
    rejects_shown: int,
    per_record: bool,
) -> None:
    """Stream CDR files (PATHS: files or folders of .csv/.jsonl/.ndjson) to the cluster.

    Records travel as Arrow columns (SubmitUsageColumns) unless --per-record.
    Prints per file: lines = rated + rejected + duplicates + conflicts, and
    the rejected lines with their line numbers and reasons. Ingesting a file
    again charges nothing twice: its records come back as duplicates.
    """
    reports = ingest_paths(
        s,
        paths,
        batch_records=batch_records,
        country_code=country_code,
        naive_time_zone=naive_time_zone,
        columnar=not per_record,
    )
    total = FileReport.total(reports)
    s.emit(
        {"files": [r.to_json() for r in reports], "total": total.to_json(with_rejects=False)},
        lambda c: show_ingest_reports(c, reports, rejects_shown=rejects_shown),
    )


# --- accounts ------------------------------------------------------------------------------


@click.group()
def accounts() -> None:
    """Create, show and load accounts; their usage; block, unblock or close them."""


@accounts.command("create")
@click.argument("account_id")
@click.option("--msisdn", "msisdns", multiple=True, help="A subscriber number (repeatable).")
@click.option("--plan", "plan_id", default="", help="Plan id (default: the catalogue's).")
@click.option(
    "--mode",
    type=click.Choice(["prepaid", "postpaid", "hybrid"]),
    default=None,
    help="Payment mode (default: the plan's).",
)
@click.option("--credit-limit", type=AMOUNT, default=None)
@click.option("--currency", default="", help="ISO 4217 (default: the catalogue's).")
@click.option("--start", "start_s", type=WHEN, default=0, help="Plan subscription start.")
@request_id_option
@cluster_command
def accounts_create(
    s: Session,
    account_id: str,
    msisdns: tuple[str, ...],
    plan_id: str,
    mode: str | None,
    credit_limit: str | None,
    currency: str,
    start_s: int,
    request_id: str | None,
) -> None:
    """Create ACCOUNT_ID with its MSISDNs and plan."""
    spec = AccountSpec(
        account_id=account_id,
        plan_id=plan_id,
        msisdns=msisdns,
        payment_mode=mode,
        credit_limit=credit_limit,
        currency=currency,
    )
    account = create_account(
        s.client, spec, start_s=start_s, request_id=request_id or f"create-{uuid.uuid4().hex}"
    )
    s.emit(proto_json(account), lambda c: show_account(c, account))


@accounts.command("show")
@click.argument("account_id")
@cluster_command
def accounts_show(s: Session, account_id: str) -> None:
    """An account: mode, plan, MSISDNs, balances and bundles."""
    account = s.client.get_account(account_id)
    s.emit(proto_json(account), lambda c: show_account(c, account))


@accounts.command("list-usage")
@click.argument("account_id")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@cluster_command
def accounts_list_usage(s: Session, account_id: str, limit: int) -> None:
    """The usage lines charged to ACCOUNT_ID, newest first."""
    lines = list(s.client.list_usage(account_id, limit=limit).lines)
    s.emit([proto_json(line) for line in lines], lambda c: show_usage(c, account_id, lines))


@accounts.command("move-number")
@click.argument("msisdn")
@click.argument("account_id", metavar="TO_ACCOUNT")
@click.option(
    "--from",
    "from_account_id",
    default="",
    help="The account it leaves; refused if another account holds the number now.",
)
@_at_option("When the move takes effect; records from then on are charged to TO_ACCOUNT")
@request_id_option
@cluster_command
def accounts_move_number(
    s: Session,
    msisdn: str,
    account_id: str,
    from_account_id: str,
    at_s: int | None,
    request_id: str | None,
) -> None:
    """Move MSISDN to TO_ACCOUNT (a port between accounts, a SIM handed over)."""
    account = s.client.move_number(
        msisdn=msisdn,
        account_id=account_id,
        from_account_id=from_account_id,
        at_s=at_s or 0,
        request_id=request_id,
    )
    since = when_text(at_s) if at_s else "now"

    def show(c: Console) -> None:
        c.print(f"{msisdn} belongs to {account_id} from {since}")
        show_account(c, account)

    s.emit(proto_json(account), show)


@accounts.command("load")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--start", "start_s", type=WHEN, default=0, help="Plan subscription start.")
@cluster_command
def accounts_load(s: Session, file: Path, start_s: int) -> None:
    """Create every account of a [[subscriber]] FILE (e.g. conf/samples/subscribers.toml).

    Entries of one account_id are one account with all their MSISDNs; the
    payment mode is the plan's unless an entry names payment_mode. Loading a
    file again changes nothing (request ids derive from the account ids).
    """
    results = create_accounts(s.client, account_specs(file), start_s=start_s)
    data = [
        {"account_id": spec.account_id, "error": f"{r.code.name}: {r.details}"}
        if isinstance(r, PetribillError)
        else proto_json(r)
        for spec, r in results
    ]
    s.emit(data, lambda c: show_loaded_accounts(c, results))
    failed = [spec.account_id for spec, r in results if isinstance(r, PetribillError)]
    if failed:
        raise CallError(f"{len(failed)} accounts not created: {', '.join(failed)}")


@click.command("change-plan")
@click.argument("account_id", metavar="ACCOUNT")
@click.argument("plan_id", metavar="PLAN")
@_at_option("When the new plan takes effect; records from then on are rated with it")
@request_id_option
@cluster_command
def change_plan(
    s: Session, account_id: str, plan_id: str, at_s: int | None, request_id: str | None
) -> None:
    """Move ACCOUNT to PLAN: the current plan ends, PLAN starts (both fees prorated)."""
    account = s.client.change_plan(account_id, plan_id, at_s=at_s or 0, request_id=request_id)
    since = when_text(at_s) if at_s else "now"

    def show(c: Console) -> None:
        c.print(f"{account_id} is on plan {plan_id} from {since}")
        show_account(c, account)

    s.emit(proto_json(account), show)


# --- money ---------------------------------------------------------------------------------


@click.command()
@click.argument("account_id")
@click.argument("amount", type=AMOUNT)
@click.option("--currency", default="", help="Default: the account's.")
@_at_option("When the money arrived")
@request_id_option
@cluster_command
def topup(
    s: Session,
    account_id: str,
    amount: str,
    currency: str,
    at_s: int | None,
    request_id: str | None,
) -> None:
    """Top up ACCOUNT_ID by AMOUNT (prepaid balance; repays debt first)."""
    balance = s.client.top_up(
        account_id, money_to_proto(amount, currency), at_s or 0, request_id=request_id
    )
    s.emit(proto_json(balance), lambda c: show_balances(c, [balance]))


@click.command()
@click.argument("account_id")
@click.argument("amount", type=AMOUNT)
@click.option("--currency", default="", help="Default: the account's.")
@click.option("--reference", default="", help="Bank or card reference, for the audit trail.")
@_at_option("When the payment arrived")
@request_id_option
@cluster_command
def pay(
    s: Session,
    account_id: str,
    amount: str,
    currency: str,
    reference: str,
    at_s: int | None,
    request_id: str | None,
) -> None:
    """Pay AMOUNT to ACCOUNT_ID's open invoices, oldest first; excess becomes credit."""
    payment_id = request_id or f"pay-{uuid.uuid4().hex[:12]}"
    answer = s.client.apply_payment(
        account_id,
        money_to_proto(amount, currency),
        at_s=at_s or 0,
        reference=reference,
        request_id=payment_id,
    )
    s.emit(proto_json(answer), lambda c: show_payment(c, account_id, amount, answer))


@click.command()
@click.argument("account_id")
@click.argument("payment_id")
@_at_option("When the payment was reversed")
@request_id_option
@cluster_command
def reverse(
    s: Session, account_id: str, payment_id: str, at_s: int | None, request_id: str | None
) -> None:
    """Reverse the payment PAYMENT_ID (its request id) of ACCOUNT_ID, exactly."""
    answer = s.client.reverse_payment(
        account_id,
        payment_id,
        at_s=at_s or 0,
        request_id=request_id or f"reverse-{payment_id}",
    )
    s.emit(proto_json(answer), lambda c: show_payment(c, account_id, None, answer))


# --- billing -------------------------------------------------------------------------------


@click.command("bill-run")
@click.argument("cycle_id", metavar="CYCLE")
@click.option("--account", "account_ids", multiple=True, help="Only this account (repeatable).")
@_at_option("The bill run's clock; after cycle end + grace the invoices are final")
@request_id_option
@cluster_command
def bill_run(
    s: Session,
    cycle_id: str,
    account_ids: tuple[str, ...],
    at_s: int | None,
    request_id: str | None,
) -> None:
    """Close the billing CYCLE (YYYY-MM): invoices for postpaid and hybrid accounts."""
    final = run_bill_run(
        s, cycle_id, account_ids=account_ids, at_s=at_s or 0, request_id=request_id
    )
    s.emit(proto_json(final), lambda c: show_bill_run(c, final))


def run_bill_run(
    s: Session,
    cycle_id: str,
    *,
    account_ids: Sequence[str] = (),
    at_s: int = 0,
    request_id: str | None = None,
    progress_console: Console | None = None,
) -> Any:
    """Run billing with a progress bar; the final progress message."""
    with Progress(
        TextColumn("bill run {task.fields[cycle]}"),
        BarColumn(),
        TextColumn("{task.completed} accounts, {task.fields[issued]} invoices"),
        TimeElapsedColumn(),
        console=progress_console or make_console(stderr=True),
        disable=s.as_json,
    ) as progress:
        task = progress.add_task(
            "bill run", total=len(account_ids) or None, cycle=cycle_id, issued=0
        )

        def show(step: Any) -> None:
            progress.update(
                task,
                completed=step.accounts_done,
                total=step.accounts_total or None,
                issued=step.invoices_issued,
            )

        last = None
        for step in s.client.run_billing(
            cycle_id, account_ids=account_ids, at_s=at_s, request_id=request_id
        ):
            show(step)
            last = step
        return last


@click.command()
@click.argument("account_id")
@click.option("--open", "open_only", is_flag=True, help="Only invoices still to be paid.")
@click.option("--no-lines", is_flag=True, help="Without the invoice lines.")
@cluster_command
def invoices(s: Session, account_id: str, open_only: bool, no_lines: bool) -> None:
    """The invoices of ACCOUNT_ID, with their lines."""
    found = list(s.client.list_invoices(account_id, open_only=open_only).invoices)
    s.emit(
        [proto_json(i) for i in found],
        lambda c: show_invoices(c, account_id, found, lines=not no_lines),
    )


@click.command()
@click.argument("account_id")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@cluster_command
def notifications(s: Session, account_id: str, limit: int) -> None:
    """The reminders and alerts of ACCOUNT_ID, newest first."""
    found = list(s.client.list_notifications(account_id, limit=limit).notifications)
    s.emit([proto_json(n) for n in found], lambda c: show_notifications(c, found))


# --- revenue assurance ---------------------------------------------------------------------


@click.group()
def rejects() -> None:
    """The cluster's reject store: list and reprocess rejected records."""


@rejects.command("list")
@click.option("--reason", default="", help="Only this reason, e.g. unknown_account.")
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=100, show_default=True, help="Per page."
)
@click.option("--page", "page_token", default="", help="The page a previous listing named.")
@click.option("--all", "every_page", is_flag=True, help="Every page, one after the other.")
@cluster_command
def rejects_list(s: Session, reason: str, limit: int, page_token: str, every_page: bool) -> None:
    """Rejected records with reason, source file and line, a page at a time (store order:
    partition by partition, then the sponsor charges the shards refused)."""
    page = s.client.list_rejects(limit=limit, reason=reason, page_token=page_token)
    found, total = list(page.rejects), page.total
    while every_page and page.next_page_token:
        page = s.client.list_rejects(limit=limit, reason=reason, page_token=page.next_page_token)
        found += page.rejects
    s.emit(
        {
            "rejects": [proto_json(r) for r in found],
            "total": total,
            "next_page_token": page.next_page_token,
        },
        lambda c: show_rejects(c, found, total, page.next_page_token),
    )


@rejects.command("reprocess")
@click.argument("record_ids", nargs=-1)
@request_id_option
@cluster_command
def rejects_reprocess(s: Session, record_ids: tuple[str, ...], request_id: str | None) -> None:
    """Rate and charge rejected records again (RECORD_IDS, or every reprocessable one)."""
    answer = s.client.reprocess_rejects(record_ids, request_id=request_id)
    s.emit(proto_json(answer), lambda c: show_reprocessed(c, answer))


@click.command()
@cluster_command
def reconcile(s: Session) -> None:
    """Revenue assurance: received = rated + rejected + duplicates, and the ledger sums to 0.

    Exit code 1 when the cluster is not balanced.
    """
    answer = s.client.reconcile()
    s.emit(proto_json(answer), lambda c: show_reconciliation(c, answer))
    if not answer.balanced:
        raise SystemExit(1)


def register(group: click.Group) -> None:
    """Add the client commands to the ``petribill`` group."""
    for command in (
        ingest,
        accounts,
        change_plan,
        topup,
        pay,
        reverse,
        bill_run,
        invoices,
        notifications,
        rejects,
        reconcile,
    ):
        group.add_command(command)
