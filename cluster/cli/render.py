"""How the client commands and the demo print cluster answers for a person.

Amounts are shown in currency units with the system's four decimals (never
rounded away), usage in the units a bill uses (minutes, SMS, MB), times in
UTC. Tables go through rich, on a :class:`cluster.cli.console.WholeConsole`: no
value is wrapped or cut, whatever the terminal's width. Values from the cluster
are escaped, so a ``[`` in a detail or an id is printed, not read as markup.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from petribill.v1 import accounts_pb2, admin_pb2, billing_pb2, common_pb2, notifications_pb2
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from billing.money import format_amount
from cluster.cli.console import make_console
from cluster.cli.ingest import AccountSpec, FileReport
from cluster.client import PetribillError

__all__ = [
    "make_console",
    "money_text",
    "parse_when",
    "show_account",
    "show_balances",
    "show_bill_run",
    "show_bundles",
    "show_ingest_reports",
    "show_invoices",
    "show_loaded_accounts",
    "show_notifications",
    "show_payment",
    "show_reconciliation",
    "show_rejects",
    "show_usage",
    "units_text",
    "when_text",
]

_MODES = {0: "-", 1: "prepaid", 2: "postpaid", 3: "hybrid"}
_SERVICES = {0: "-", 1: "voice", 2: "sms", 3: "data", 4: "content"}


def parse_when(text: str) -> int:
    """Unix seconds of ``text``: digits are Unix seconds, else ISO 8601 (no offset: UTC)."""
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not Unix seconds or ISO 8601: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def money_text(amount: common_pb2.Money) -> str:
    return f"{format_amount(amount.micros)} {amount.currency}".rstrip()


def units_text(service: str, units: int) -> str:
    """Units in the way a bill shows them: minutes and seconds, messages, MB."""
    if service == "voice":
        return f"{units // 60}:{units % 60:02d} min"
    if service == "sms":
        return f"{units} SMS"
    if service == "data":
        return f"{units / 1_000_000:,.1f} MB"
    if service == "content":
        return f"{units} items"
    return str(units)


def when_text(at_s: int) -> str:
    if not at_s:
        return "-"
    return datetime.fromtimestamp(at_s, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _table(title: str, *columns: str, right: Sequence[str] = ()) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold")
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left")
    return table


_BALANCE_COLUMNS = ("prepaid", "reserved", "unbilled", "receivable", "credit", "debt")


def show_balances(
    c: Console, balances: Sequence[accounts_pb2.Balance], modes: Sequence[str] = ()
) -> None:
    table = _table(
        "Balances (owed by the customer: unbilled, receivable, debt)",
        "account",
        *(["mode"] if modes else []),
        *_BALANCE_COLUMNS,
        right=_BALANCE_COLUMNS,
    )
    for index, balance in enumerate(balances):
        mode = [modes[index]] if modes else []
        table.add_row(
            escape(balance.account_id),
            *map(escape, mode),
            *(format_amount(getattr(balance, name).micros) for name in _BALANCE_COLUMNS),
        )
    c.print(table)


def show_bundles(c: Console, balance: accounts_pb2.Balance) -> None:
    table = _table(
        "Bundles", "bundle", "covers", "cycle", "used", "granted", right=("used", "granted")
    )
    for b in balance.bundles:
        service = b.usage_class.split(".")[0]
        table.add_row(
            escape(b.bundle_id),
            escape(b.usage_class),
            escape(b.cycle_id),
            units_text(service, b.used_units),
            units_text(service, b.granted_units),
        )
    if balance.bundles:
        c.print(table)


def show_account(c: Console, account: accounts_pb2.Account) -> None:
    limit = money_text(account.credit_limit) if account.HasField("credit_limit") else "none"
    status = accounts_pb2.AccountStatus.Name(account.status).removeprefix("ACCOUNT_STATUS_")
    c.print(
        f"[bold]{escape(account.account_id)}[/]: {_MODES.get(account.payment_mode, '?')}, plan "
        + escape(
            f"{account.plan_id}, {account.currency}, {status.lower()}, credit limit {limit}; "
            f"MSISDNs {', '.join(account.msisdns) or '-'}"
        )
    )
    show_balances(c, [account.balance])
    show_bundles(c, account.balance)


def show_loaded_accounts(
    c: Console, results: Sequence[tuple[AccountSpec, accounts_pb2.Account | PetribillError]]
) -> None:
    table = _table("Accounts", "account", "mode", "plan", "MSISDNs", "status")
    for spec, result in results:
        if isinstance(result, PetribillError):
            table.add_row(
                escape(spec.account_id),
                "-",
                escape(spec.plan_id),
                str(len(spec.msisdns)),
                f"[red]{escape(f'{result.code.name}: {result.details}')}[/]",
            )
        else:
            table.add_row(
                escape(result.account_id),
                _MODES.get(result.payment_mode, "?"),
                escape(result.plan_id),
                escape(
                    f"{len(result.msisdns)} ({result.msisdns[0]}…)"
                    if len(result.msisdns) > 1
                    else ", ".join(result.msisdns)
                ),
                "ok",
            )
    c.print(table)


def show_usage(c: Console, account_id: str, lines: Sequence[accounts_pb2.UsageLine]) -> None:
    table = _table(
        f"Usage of {escape(account_id)} (newest first)",
        "record",
        "charged at",
        "service",
        "class",
        "units",
        "in bundle",
        "amount",
        "sponsored by",
        right=("units", "in bundle", "amount"),
    )
    for line in lines:
        service = _SERVICES.get(line.service, "?")
        table.add_row(
            escape(line.record_id),
            when_text(line.at_s),
            service,
            escape(line.usage_class),
            units_text(service, line.units),
            units_text(service, line.bundle_units) if line.bundle_units else "",
            money_text(line.amount),
            escape(line.sponsored_by),
        )
    c.print(table)


def show_payment(
    c: Console, account_id: str, amount: str | None, answer: billing_pb2.PaymentAnswer
) -> None:
    """A payment's allocations (``amount`` given), or what a reversal took back."""
    currency = answer.credit.currency
    if amount is not None:
        paid = f"{account_id}: payment {answer.request_id} of {amount} {currency}".rstrip()
        c.print(escape(paid))
    else:
        c.print(escape(f"{account_id}: reversal {answer.request_id}"))
    column = "allocated" if amount is not None else "taken back"
    table = _table("", "invoice", column, right=(column,))
    for allocation in answer.allocations:
        table.add_row(escape(allocation.invoice_id), money_text(allocation.amount))
    table.add_row("[italic]account credit[/]", money_text(answer.credit))
    c.print(table)


def show_bill_run(c: Console, final: billing_pb2.BillRunProgress) -> None:
    c.print(
        f"bill run {escape(final.cycle_id)}: {final.accounts_done} accounts, "
        f"{final.invoices_issued} invoices issued, {money_text(final.invoiced_total)} invoiced"
        + ("" if final.finished else " [red](not finished)[/]")
    )


def show_invoices(
    c: Console, account_id: str, found: Sequence[billing_pb2.Invoice], *, lines: bool = True
) -> None:
    if not found:
        c.print(escape(f"{account_id}: no invoices"))
    for invoice in found:
        status = billing_pb2.InvoiceStatus.Name(invoice.status).removeprefix("INVOICE_STATUS_")
        c.print(
            f"[bold]{escape(invoice.invoice_id)}[/] "
            + escape(f"({invoice.account_id}, cycle {invoice.cycle_id}): ")
            + f"{status.lower().replace('_', ' ')}, issued {when_text(invoice.issued_at_s)}, "
            f"due {when_text(invoice.due_at_s)}"
        )
        table = _table("", "kind", "description", "usage", "amount", right=("usage", "amount"))
        if lines:
            for line in invoice.lines:
                usage = units_text(line.service, line.units) if line.service else ""
                if line.count:
                    usage = f"{line.count} records, {usage}" if usage else str(line.count)
                table.add_row(
                    escape(line.kind), escape(line.description), usage, money_text(line.amount)
                )
            table.add_section()
        table.add_row("", "[bold]total[/]", "", f"[bold]{money_text(invoice.total)}[/]")
        table.add_row("", "paid", "", money_text(invoice.paid))
        table.add_row("", "open", "", money_text(invoice.open))
        c.print(table)


_MONEY_KEYS = frozenset({"balance", "threshold", "owed", "limit", "debt", "total", "open_amount"})


def _note_data(data: Mapping[str, str]) -> str:
    """A notification's data as a person reads it: amounts in units, times as dates."""
    shown = []
    for key, value in sorted(data.items()):
        if key in _MONEY_KEYS and value.lstrip("-").isdigit():
            value = format_amount(int(value))
        elif key.endswith("_at_s") and value.isdigit():
            value = when_text(int(value))[:10]
        shown.append(f"{key.removesuffix('_at_s')}={value}")
    return ", ".join(shown)


def _note_subject(note: notifications_pb2.Notification) -> str:
    """The subject as a person reads it: a low-balance threshold in currency units."""
    subject: str = note.subject
    if note.kind == notifications_pb2.NOTIFICATION_KIND_LOW_BALANCE and subject.isdigit():
        return f"below {format_amount(int(subject))}"
    if note.kind == notifications_pb2.NOTIFICATION_KIND_CREDIT_LIMIT and subject.isdigit():
        return f"{subject}% of the limit"
    return subject


def show_notifications(c: Console, found: Sequence[notifications_pb2.Notification]) -> None:
    table = _table("Notifications", "account", "time", "kind", "cycle", "about", "data")
    for note in found:
        kind = notifications_pb2.NotificationKind.Name(note.kind)
        table.add_row(
            escape(note.account_id),
            when_text(note.at_s),
            kind.removeprefix("NOTIFICATION_KIND_").lower(),
            escape(note.cycle_id),
            escape(_note_subject(note)),
            escape(_note_data(note.data)),
        )
    c.print(table)


def show_rejects(
    c: Console, found: Sequence[admin_pb2.Reject], total: int, next_page: str = ""
) -> None:
    table = _table("Reject store", "record", "reason", "detail", "source")
    for reject in found:
        source = f"{reject.source_file}:{reject.source_line}" if reject.source_file else ""
        table.add_row(*map(escape, (reject.record_id, reject.reason, reject.detail, source)))
    c.print(table)
    if next_page:
        c.print(
            f"{len(found)} of {total} rejects; the next page: --page {next_page} "
            "(or --all for every page)"
        )
    else:
        c.print(f"{len(found)} rejects shown, {total} in all")


def show_reprocessed(c: Console, answer: admin_pb2.ReprocessRejectsResponse) -> None:
    """What a reprocess did, and why the records still rejected are."""
    c.print(
        f"reprocessed {answer.reprocessed}: {answer.charged} charged, "
        f"{answer.still_rejected} still rejected"
    )
    for reason, count in sorted(answer.still_rejected_by_reason.items(), key=lambda r: -r[1]):
        c.print(f"  {count} {escape(reason)}")


def show_reconciliation(c: Console, answer: admin_pb2.ReconcileResponse) -> None:
    counted = answer.rated + answer.rejected + answer.duplicates
    ok = "[green]balanced[/]" if answer.balanced else "[red]NOT balanced[/]"
    c.print(
        f"records received {answer.received} = rated {answer.rated} + rejected "
        f"{answer.rejected} + duplicates {answer.duplicates} ({counted}); ledger total "
        f"{money_text(answer.ledger_total)}: {ok}"
        + ("" if answer.detail in ("", "balanced") else escape(f" ({answer.detail})"))
    )


_REPORT_COLUMNS = (
    "lines",
    "rated",
    "to debt",
    "over limit",
    "rejected",
    "duplicates",
    "conflicts",
    "amount",
)


def show_ingest_reports(
    c: Console, reports: Sequence[FileReport], *, rejects_shown: int = 50
) -> None:
    """Per file: lines = rated + rejected + duplicates + conflicts; then the rejected lines."""
    table = _table(
        "Ingestion: lines = rated + rejected + duplicates + conflicts",
        "file",
        *_REPORT_COLUMNS,
        "check",
        right=_REPORT_COLUMNS,
    )
    total = FileReport.total(reports)
    for index, report in enumerate([*reports, total]):
        if index == len(reports):
            table.add_section()
        table.add_row(
            escape(Path(report.file).name),
            str(report.lines),
            str(report.rated),
            str(report.charged_as_debt),
            str(report.charged_over_limit),
            str(report.rejected),
            str(report.duplicates),
            str(report.conflicts),
            escape(report.amounts_text()),
            "[green]ok[/]" if report.balanced else "[red]MISMATCH[/]",
        )
    c.print(table)
    lines = [r for report in reports for r in report.rejects]
    if lines and rejects_shown:
        rejected = _table(
            "Rejected lines (reader: never sent; cluster: in the reject store)",
            "file",
            "line",
            "record",
            "stage",
            "reason",
            "detail",
            right=("line",),
        )
        for line in lines[:rejects_shown]:
            rejected.add_row(
                escape(Path(line.file).name),
                str(line.line or ""),
                *map(escape, (line.record_id or "", line.stage, line.reason, line.detail)),
            )
        c.print(rejected)
        if len(lines) > rejects_shown:
            c.print(f"... and {len(lines) - rejects_shown} more (--rejects-shown, --json)")
