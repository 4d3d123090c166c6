"""The ``petribill`` command: offline rating of CDR files, and the demo.

``petribill rate`` streams: files are read line by line, duplicates removed in
a bounded window, records rated in batches, and one JSON object printed per
input line as soon as its batch is rated, then a summary. Exit codes: 0 when
the files were processed (rejects are data, not failure), 2 for a usage or
configuration error, with a one-line message and no traceback.

Every command of the group, its own and those registered by other packages,
ends an error the same way: one line ``petribill: error: ...`` on stderr (see
:class:`PetribillGroup`).
"""

from __future__ import annotations

import json
import os
import sys
import tomllib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import entry_points
from itertools import chain
from pathlib import Path
from typing import Any, Final, TextIO

import click
import structlog

from billing.money import format_amount
from billing.preprocess import DEFAULT_WINDOW_RECORDS, Conflict, Duplicate, remove_duplicates
from billing.rated import RatedRecord, RatingFailure
from billing.rating import Catalogue, TariffError, load_catalogue, rate_batch
from billing.readers import CDR_SUFFIXES, FieldError, Reject, normalise_number, read_records
from billing.records import UsageRecord
from cluster.cli.rate_report import Tally, render_table
from cluster.logging import configure_logging

__all__ = ["main"]

BATCH_RECORDS: Final = 1000
# Longer than any command's first sentence: `petribill --help` shows each whole.
_SUMMARY_CHARS_MAX: Final = 1000

Item = Reject | UsageRecord | Duplicate | Conflict
Outcome = Reject | Duplicate | Conflict | RatedRecord | RatingFailure

log = structlog.get_logger()


class CommandError(click.ClickException):
    """A usage or configuration error: one line ``petribill: error: ...``, exit code 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"petribill: error: {self.format_message()}", err=True)


class CommandFailed(CommandError):
    """A command that could not do its work (no cluster recorded, say): exit code 1."""

    exit_code = 1


class ConfigError(CommandError):
    """A bad option, tariff folder or subscriber file: exit code 2, message only."""


def _command_path(ctx: click.Context | None) -> str:
    """``petribill rate``: the command a context belongs to, as a user types it."""
    names = []
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(["petribill", *reversed(names)])


@contextmanager
def _one_line_errors() -> Iterator[None]:
    try:
        yield
    except click.exceptions.NoArgsIsHelpError:
        raise  # `petribill` alone, or a group alone (`petribill accounts`): its help
    except click.UsageError as exc:
        message = f"{exc.format_message()} See '{_command_path(exc.ctx)} --help'."
        raise CommandError(" ".join(message.split())) from None
    except click.ClickException as exc:
        if type(exc).show is not click.ClickException.show:
            raise  # it prints itself (ConfigError, the client commands' errors)
        kind = CommandError if exc.exit_code == CommandError.exit_code else CommandFailed
        raise kind(" ".join(exc.format_message().split())) from None


class PetribillGroup(click.Group):
    """The ``petribill`` group: a usage error of any command is one line, exit code 2.

    Click prints a usage error as three lines (usage, a hint, the error) and a
    plain ``ClickException`` as ``Error: ...``. Parsing the group's options,
    finding the command, parsing its options and running it all happen below
    :meth:`make_context` and :meth:`invoke`, so every command, whoever
    registered it, ends with ``petribill: error: <message>`` on stderr instead.
    """

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        with _one_line_errors():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with _one_line_errors():
            return super().invoke(ctx)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List the commands with the whole first sentence of their help.

        Click cuts it to what fits the terminal's width and ends it with "...".
        """
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=_SUMMARY_CHARS_MAX)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


_PEM = click.Path(dir_okay=False, path_type=Path)


@click.group(cls=PetribillGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    default="WARNING",
    show_default=True,
    help="Log level; logs go to stderr (JSON when not a terminal, or PETRIBILL_LOG=json).",
)
@click.option(
    "--token",
    envvar="PETRIBILL_TOKEN",
    metavar="TOKEN",
    help="Bearer token sent to the gateways (`petribill token create`) [env PETRIBILL_TOKEN; "
    "prefer it: a command line is visible to other users].",
)
@click.option(
    "--ca",
    envvar="PETRIBILL_CA",
    type=_PEM,
    help="Speak TLS to the gateways, trusting this CA certificate (PEM) [env PETRIBILL_CA].",
)
@click.option(
    "--cert",
    envvar="PETRIBILL_CERT",
    type=_PEM,
    help="Client certificate (PEM) for gateways that want mutual TLS [env PETRIBILL_CERT].",
)
@click.option(
    "--key",
    envvar="PETRIBILL_KEY",
    type=_PEM,
    help="The client certificate's private key (PEM) [env PETRIBILL_KEY].",
)
@click.pass_context
def main(
    ctx: click.Context,
    log_level: str,
    token: str | None,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
) -> None:
    """petribill: a fault-tolerant telecom billing cluster.

    Without a cluster, `petribill rate` rates CDR files against a tariff
    catalogue, and `petribill demo --offline` rates the samples in conf/.
    `petribill demo` bills a sample month on a local cluster; `petribill up`
    starts one for the client commands. Each command explains itself with -h.
    A secured cluster needs --token (and --ca, --cert, --key for TLS) before
    the command, or the PETRIBILL_* variables (docs/security.md).
    """
    try:
        configure_logging(log_level)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    ctx.ensure_object(dict)["credentials"] = {
        "token": token or None,
        "ca": ca,
        "cert": cert,
        "key": key,
    }


# --- configuration -----------------------------------------------------------------------


def _catalogue(folder: Path) -> Catalogue:
    try:
        return load_catalogue(folder)
    except TariffError as exc:
        raise ConfigError(str(exc)) from None


def _check_plan(catalogue: Catalogue, plan_id: str, where: str) -> None:
    if plan_id not in catalogue.plans:
        known = ", ".join(sorted(catalogue.plans)) or "none"
        raise ConfigError(f"{where}: unknown plan {plan_id!r} (the catalogue has: {known})")


def load_subscribers(path: Path, *, country_code: str) -> dict[str, str]:
    """Read ``[[subscriber]]`` entries (msisdn, account_id, plan_id) into msisdn -> plan id."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    entries = document.get("subscriber", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: subscriber: must be an array of tables ([[subscriber]])")
    plans: dict[str, str] = {}
    for index, entry in enumerate(entries):
        where = f"{path}: subscriber[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a table")
        for key in ("msisdn", "account_id", "plan_id"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise ConfigError(f"{where}.{key}: required, a non-empty string")
        try:
            msisdn = normalise_number(entry["msisdn"], default_country_code=country_code)
        except FieldError as exc:
            raise ConfigError(f"{where}.msisdn: {exc.detail}") from None
        if msisdn in plans:
            raise ConfigError(f"{where}.msisdn: {msisdn} is listed twice")
        plans[msisdn] = entry["plan_id"]
    return plans


def _plan_chooser(
    catalogue: Catalogue, plan: str | None, subscribers: Path | None, country_code: str
) -> Callable[[UsageRecord], str] | str:
    fallback = plan if plan is not None else catalogue.default_plan
    _check_plan(catalogue, fallback, "--plan" if plan is not None else "catalogue default_plan")
    if subscribers is None:
        return fallback
    plans = load_subscribers(subscribers, country_code=country_code)
    for msisdn, plan_id in plans.items():
        _check_plan(catalogue, plan_id, f"{subscribers}: subscriber {msisdn}")
    return lambda record: plans.get(record.served_msisdn, fallback)


# --- the pipeline ------------------------------------------------------------------------


def _items(
    files: Sequence[Path], country_code: str, naive_time_zone: str | None, window: int
) -> Iterator[Item]:
    try:  # every file's format and the options are checked here, before any output
        streams = [
            read_records(p, default_country_code=country_code, naive_time_zone=naive_time_zone)
            for p in files
        ]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    # One window over all files: a record id is global, a resend may come in another file.
    return remove_duplicates(chain.from_iterable(streams), capacity=window)


def rate_stream(
    items: Iterable[Item],
    catalogue: Catalogue,
    plan_of: Callable[[UsageRecord], str] | str,
    batch_records: int = BATCH_RECORDS,
) -> Iterator[Outcome]:
    """Rate the records among ``items`` in batches, keeping input order."""
    buffer: list[Item] = []
    records = 0
    for item in chain(items, [None]):
        if item is not None:
            buffer.append(item)
            records += isinstance(item, UsageRecord)
            if records < batch_records:
                continue
        rated = iter(
            rate_batch([i for i in buffer if isinstance(i, UsageRecord)], catalogue, plan_of)
        )
        for held in buffer:
            yield next(rated) if isinstance(held, UsageRecord) else held
        buffer, records = [], 0


def outcome_json(outcome: Outcome, catalogue: Catalogue) -> dict[str, Any]:
    """One output object: ``record_id``, ``outcome``, and the price or the error."""
    if isinstance(outcome, Reject):
        return {
            "record_id": outcome.record_id,
            "outcome": "rejected",
            "file": outcome.source_file,
            "line": outcome.line,
            "error": {
                "reason": outcome.reason.value,
                "code": outcome.code.value,
                "field": outcome.field,
                "message": outcome.message,
            },
            "raw": outcome.raw,
        }
    record = outcome.record
    head: dict[str, Any] = {
        "record_id": record.record_id,
        "file": record.source_file,
        "line": record.source_line,
        "service": record.service.value,
        "served_msisdn": record.served_msisdn,
    }
    if isinstance(outcome, Duplicate):
        first = outcome.first
        where = {"file": first.source_file, "line": first.source_line}
        return {**head, "outcome": "duplicate", "duplicate_of": where}
    if isinstance(outcome, Conflict):
        error = {"reason": "conflict", "fields": list(outcome.fields), "message": outcome.message}
        return {**head, "outcome": "rejected", "error": error}
    if isinstance(outcome, RatingFailure):
        error = {"reason": outcome.reason.value, "message": outcome.detail}
        return {**head, "outcome": "rejected", "error": error}
    result = {
        **head,
        "outcome": "rated",
        "plan_id": outcome.plan_id,
        "plan_version": outcome.plan_version,
        "amount": format_amount(outcome.amount),
        "currency": outcome.currency,
        "units": outcome.units,
        "billed_units": outcome.billed_units,
        "rate_ids": list(outcome.rate_ids),
        "destination": outcome.destination,
        "time_band": outcome.time_band,
        "usage_class": outcome.usage_class,
    }
    # The max-cost flags of docs/tariffs.md: charged max_cost, or charged in full past it.
    if outcome.capped:
        result["capped"] = True
    if outcome.disconnect:
        result["disconnect"] = True
    sponsor = catalogue.sponsor_for(outcome.usage_class)
    if sponsor is not None:
        result["sponsor"] = sponsor.sponsor_id
    if outcome.content_provider is not None:
        result["content_provider"] = outcome.content_provider
        result["provider_share"] = format_amount(outcome.provider_share)
    return result


def _silence_stdout() -> None:
    # Python would otherwise report the broken pipe again when it flushes at exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def run_rating(
    files: Sequence[Path],
    *,
    tariffs: Path,
    plan: str | None,
    subscribers: Path | None,
    output_format: str,
    country_code: str,
    naive_time_zone: str | None,
    window: int,
    out: TextIO,
) -> Tally:
    """Rate ``files`` and write the outcomes and the summary to ``out``; return the tally."""
    catalogue = _catalogue(tariffs)
    plan_of = _plan_chooser(catalogue, plan, subscribers, country_code)
    items = _items(files, country_code, naive_time_zone, window)
    tally = Tally()
    rows: list[dict[str, Any]] = []
    log.info("rate.start", files=[str(f) for f in files], tariffs=str(tariffs))
    try:
        for outcome in rate_stream(items, catalogue, plan_of):
            tally.count(outcome)
            row = outcome_json(outcome, catalogue)
            if output_format == "jsonl":
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
            else:
                rows.append(row)
    except BrokenPipeError:
        # Whoever read our output has gone (`| head`): stop quietly, as Unix tools do.
        _silence_stdout()
        raise SystemExit(1) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {exc.filename or 'input'}: {exc.strerror}") from None
    summary = tally.summary()
    log.info("rate.done", **{k: summary[k] for k in ("received", "rated", "rejected")})
    if output_format == "jsonl":
        out.write(json.dumps({"summary": summary}) + "\n")
    else:
        render_table(rows, summary, out)
    return tally


@main.command()
@click.option(
    "--tariffs",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The tariff catalogue folder, e.g. conf/tariffs.",
)
@click.option("--plan", help="Plan id for every record (default: the catalogue's default plan).")
@click.option(
    "--subscribers",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML file of [[subscriber]] msisdn/account_id/plan_id: the plan per subscriber; "
    "others get --plan or the default plan.",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["jsonl", "table"]),
    default="jsonl",
    show_default=True,
    help="jsonl: one JSON object per line, as it is rated; table: for a person, printed at "
    "the end (it holds every row until then).",
)
@click.option(
    "--country-code",
    default="49",
    show_default=True,
    help="Country code of national numbers: 030 2123456 is read as 49302123456.",
)
@click.option(
    "--naive-time-zone",
    metavar="ZONE",
    help="Read times without UTC offset in this zone (e.g. Europe/Berlin) instead of rejecting.",
)
@click.option(
    "--window",
    default=DEFAULT_WINDOW_RECORDS,
    show_default=True,
    type=click.IntRange(min=1),
    help="Distinct record ids remembered for duplicate detection.",
)
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
def rate(
    tariffs: Path,
    plan: str | None,
    subscribers: Path | None,
    output_format: str,
    country_code: str,
    naive_time_zone: str | None,
    window: int,
    files: tuple[Path, ...],
) -> None:
    """Rate CDR FILES (.csv, .jsonl, .ndjson) offline against a tariff catalogue.

    Prints one JSON object per input line (rated, rejected or duplicate), then
    a summary object; --format table prints a table for a person instead.
    """
    run_rating(
        files,
        tariffs=tariffs,
        plan=plan,
        subscribers=subscribers,
        output_format=output_format,
        country_code=country_code,
        naive_time_zone=naive_time_zone,
        window=window,
        out=sys.stdout,
    )


def _conf_dir() -> Path:
    # Prefer the working directory's conf/ (a checkout or a deployment), else the
    # one next to the installed sources (an editable install).
    for candidate in (Path.cwd() / "conf", Path(__file__).resolve().parent.parent / "conf"):
        if (candidate / "tariffs").is_dir() and (candidate / "samples").is_dir():
            return candidate
    raise ConfigError("cannot find conf/tariffs and conf/samples; run from the repository root")


@main.command()
@click.option("--conf", "conf_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--nodes", default=1, show_default=True, help="Simulated Ray nodes.")
@click.option("--keep", is_flag=True, help="Leave the cluster running at the end.")
@click.option("--offline", is_flag=True, help="Only rate the sample CDRs, without a cluster.")
def demo(conf_dir: Path | None, nodes: int, keep: bool, offline: bool) -> None:
    """A month of the sample operator on a local cluster (see cluster/cli/demo.py).

    Loads the sample subscribers, ingests the sample CDRs, charges online,
    runs the November 2026 bill run, takes payments and reconciles. With
    --offline: rate the sample CDRs with the sample tariffs, no cluster.
    """
    conf = conf_dir if conf_dir is not None else _conf_dir()
    if not offline:
        from cluster.cli.client import CallError, cluster_errors
        from cluster.cli.demo import DemoFailed, run_demo

        try:
            with cluster_errors():
                run_demo(conf, nodes=nodes, keep=keep)
        except DemoFailed as exc:
            raise CallError(f"the demo does not reconcile: {exc}") from None
        return
    samples = conf / "samples"
    files = sorted(p for p in samples.iterdir() if p.suffix.lower() in CDR_SUFFIXES)
    click.echo(f"Rating {len(files)} sample files from {samples} with {conf / 'tariffs'}\n")
    subscribers = samples / "subscribers.toml"
    run_rating(
        files,
        tariffs=conf / "tariffs",
        plan=None,
        subscribers=subscribers if subscribers.is_file() else None,
        output_format="table",
        country_code="49",
        naive_time_zone=None,
        window=DEFAULT_WINDOW_RECORDS,
        out=sys.stdout,
    )


# The cluster's operator commands live in their own modules; registered here so
# `petribill` is one command group.
from cluster.cli import (  # noqa: E402
    account_admin,
    admin,
    client,
    clock,
    inspect,
    nodes,
    ops,
    security,
    settlement,
)

for _module in (ops, nodes, client, admin, security, account_admin, settlement, inspect, clock):
    _module.register(main)

# Commands of packages above cluster/ (chaos) register themselves through the
# `petribill.commands` entry points (pyproject.toml): cluster/ never imports them.
for _entry in entry_points(group="petribill.commands"):
    _entry.load()(main)

if __name__ == "__main__":
    main(sys.argv[1:])
