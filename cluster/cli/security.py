"""Operator commands for security: ``petribill token create|revoke|list``, ``petribill certs``
and ``petribill audit``.

They work on files only (the tokens file, a certificate folder, the audit
folder), never through a gateway: a gateway follows its tokens file by itself,
so a revoked token is refused within a second without a restart. ``token
create`` prints the new bearer token as the last line of its stdout (for ``|
tail -1``) and says on stderr that it is shown once. Errors are one line on
stderr with exit code 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from cluster.security.roles import Role
from cluster.security.tokens import (
    TokenFileError,
    TokenRecord,
    TokenUsageError,
    create_token,
    read_tokens,
    revoke_token,
)

__all__ = ["register"]

_ROLES = ", ".join(r.value for r in Role)


class SecurityUsageError(click.ClickException):
    """A bad option or an unusable file: exit code 2, one line, no traceback."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"petribill: error: {self.format_message()}", err=True)


_tokens_option = click.option(
    "--tokens",
    "tokens_file",
    required=True,
    metavar="FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The tokens file (JSON Lines of token ids and hashes; the gateways' [security] "
    "tokens_file).",
)


@click.group()
def token() -> None:
    """Bearer tokens for the gateways: create, revoke, list."""


@token.command("create")
@_tokens_option
@click.option("--role", required=True, metavar="ROLE", help=f"One of: {_ROLES}.")
@click.option(
    "--account",
    "account_id",
    metavar="ID",
    help="The one account a selfcare token may read (required for selfcare, refused otherwise).",
)
@click.option("--name", default="", help="Free text kept with the token: whose, what for.")
def create(tokens_file: Path, role: str, account_id: str | None, name: str) -> None:
    """Create a token; the file keeps only its hash, the token is printed once (last line)."""
    try:
        chosen = Role(role)
    except ValueError:
        raise SecurityUsageError(f"--role: {role!r} is not a role (one of: {_ROLES})") from None
    try:
        issued = create_token(tokens_file, role=chosen, account_id=account_id, name=name)
    except (TokenUsageError, TokenFileError) as exc:
        raise SecurityUsageError(str(exc)) from None
    record = issued.record
    bound = f" for account {record.account_id}" if record.account_id is not None else ""
    click.echo(f"created token {record.token_id}: role {record.role.value}{bound}")
    click.echo(
        f"petribill: the token is shown once, now; {tokens_file} keeps only its hash", err=True
    )
    click.echo(issued.bearer)


@token.command("revoke")
@_tokens_option
@click.argument("token_id")
def revoke(tokens_file: Path, token_id: str) -> None:
    """Revoke the token TOKEN_ID; gateways refuse it within a second, without a restart."""
    try:
        before = {r.token_id: r for r in read_tokens(tokens_file)}.get(token_id)
        record = revoke_token(tokens_file, token_id)
    except (TokenUsageError, TokenFileError) as exc:
        raise SecurityUsageError(str(exc)) from None
    when = _when(record.revoked_at)
    if before is not None and before.revoked:
        click.echo(f"token {token_id} was already revoked at {when}")
    else:
        click.echo(f"revoked token {token_id} ({record.role.value}) at {when}")


@token.command("list")
@_tokens_option
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
def list_tokens(tokens_file: Path, as_json: bool) -> None:
    """List the tokens: id, role, account, name, created and revoked times (no secrets)."""
    try:
        records = read_tokens(tokens_file)
    except TokenFileError as exc:
        raise SecurityUsageError(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"tokens": [_public(r) for r in records]}, ensure_ascii=False))
        return
    header = ("TOKEN ID", "ROLE", "ACCOUNT", "CREATED", "REVOKED", "NAME")
    rows = [
        (
            r.token_id,
            r.role.value,
            r.account_id or "-",
            _when(r.created_at),
            _when(r.revoked_at) if r.revoked_at is not None else "-",
            r.name,
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    for row in (header, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[-1]]).rstrip())


@click.command()
@click.argument("folder", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--host",
    "hosts",
    multiple=True,
    metavar="NAME",
    help="Another name or IP address of the gateways for the server certificate "
    "(repeatable; localhost and 127.0.0.1 are always in it).",
)
@click.option("--days", default=365, show_default=True, type=click.IntRange(min=1))
def certs(folder: Path, hosts: tuple[str, ...], days: int) -> None:
    """Write a development CA and certificates into DIR, for trials and tests.

    DIR/ca.pem, DIR/server.pem + server.key (for localhost and 127.0.0.1),
    DIR/client.pem + client.key (for mutual TLS); keys are mode 0600. The
    CA's key is not kept. Use a real CA in production (docs/security.md).
    """
    from cluster.security.certs import DEFAULT_HOSTS, CertsExist, write_dev_certs

    names = list(dict.fromkeys((*DEFAULT_HOSTS, *hosts)))
    try:
        written = write_dev_certs(folder, hosts=names, valid_days=days)
    except CertsExist as exc:
        raise SecurityUsageError(str(exc)) from None
    except OSError as exc:
        raise SecurityUsageError(f"{exc.filename or folder}: {exc.strerror}") from None
    click.echo(f"development CA and certificates for {', '.join(names)}, valid {days} days:")
    for path in (
        written.ca,
        written.server_cert,
        written.server_key,
        written.client_cert,
        written.client_key,
    ):
        click.echo(f"  {path}")


@click.command()
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("data"),
    show_default=True,
    help="Data folder of the cluster: its gateways write to DATA/audit.",
)
@click.option(
    "--conf",
    "conf_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("conf"),
    show_default=True,
    help="Folder with cluster.toml; its [security] audit_dir, if set, is read instead.",
)
@click.option("--account", "account_id", metavar="ID", help="Only calls naming this account.")
@click.option("--rpc", metavar="NAME", help="Only this RPC, e.g. AccountService.TopUp.")
@click.option("--since", metavar="TIME", help="Only from this time (Unix seconds or ISO 8601).")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
def audit(
    data_dir: Path,
    conf_dir: Path,
    account_id: str | None,
    rpc: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """The audit log: the latest money-moving and operator calls, with token id, role,
    account, request id and outcome (refused calls too), oldest first."""
    from datetime import UTC, datetime

    from cluster.cli.render import parse_when
    from cluster.config import ConfigError, load_config
    from cluster.security.audit import read_events

    try:
        security = load_config(conf_dir / "cluster.toml", missing_ok=True).security
        since_at = None if since is None else datetime.fromtimestamp(parse_when(since), UTC)
    except (ConfigError, ValueError) as exc:
        raise SecurityUsageError(str(exc)) from None
    folder = security.audit_dir or data_dir / "audit"
    if not folder.is_dir():
        raise SecurityUsageError(f"{folder}: no audit folder (no gateway has written one yet)")
    events = read_events(folder, account_id=account_id, rpc=rpc, since=since_at, limit=limit)
    if as_json:
        click.echo(json.dumps({"events": [e.to_json() for e in events]}, ensure_ascii=False))
        return
    header = ("TIME", "RPC", "OUTCOME", "ROLE", "TOKEN ID", "ACCOUNT", "REQUEST ID")
    rows = [
        (
            e.ts.strftime("%Y-%m-%d %H:%M:%S.%fZ")[:-4] + "Z",
            e.rpc,
            e.outcome,
            e.role or "-",
            e.token_id or "-",
            e.account_id or "-",
            e.request_id or "-",
        )
        for e in events
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    for row in (header, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[-1]]).rstrip())


def _when(when: Any) -> str:
    return "-" if when is None else when.strftime("%Y-%m-%d %H:%M:%SZ")


def _public(record: TokenRecord) -> dict[str, Any]:
    # The hash is no secret, but no reader of a listing needs it.
    data = record.to_json()
    del data["secret_sha256"]
    return data


def register(group: click.Group) -> None:
    """Add ``token`` (create, revoke, list), ``certs`` and ``audit`` to the ``petribill`` group."""
    group.add_command(token)
    group.add_command(certs)
    group.add_command(audit)
