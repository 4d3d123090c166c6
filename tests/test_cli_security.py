"""``petribill token create|revoke|list`` and ``petribill certs`` through click's CliRunner."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from cluster.cli import security as security_cli
from cluster.security.roles import Role
from cluster.security.tokens import InvalidToken, TokenStore

BEARER = re.compile(r"pb1_[0-9a-f]{12}_[0-9a-f]{64}")


def _run(*args: str) -> Result:
    group = click.Group("petribill")
    security_cli.register(group)
    return CliRunner().invoke(group, list(args))


def _create(tokens: Path, *extra: str) -> Result:
    result = _run("token", "create", "--tokens", str(tokens), *extra)
    assert result.exit_code == 0, result.output
    return result


def _one_line_error(result: Result) -> str:
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("petribill: error: ")
    return line


def test_create_prints_the_token_last_and_keeps_only_its_hash(tmp_path: Path) -> None:
    """The token is stdout's last line, stderr says it is shown once, the file never holds it,
    and the gateway's store verifies it to the role and account asked for."""
    tokens = tmp_path / "tokens.jsonl"
    result = _create(tokens, "--role", "selfcare", "--account", "a-1001", "--name", "app")
    bearer = result.stdout.splitlines()[-1]
    assert BEARER.fullmatch(bearer)
    assert "shown once" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert bearer.rsplit("_", 1)[1] not in tokens.read_text()
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
    record = TokenStore(tokens).verify(bearer)
    assert (record.role, record.account_id, record.name) == (Role.SELFCARE, "a-1001", "app")
    assert f"created token {record.token_id}: role selfcare for account a-1001" in result.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--role", "root"), "--role: 'root' is not a role (one of: mediation, charging"),
        (("--role", "selfcare"), "--account: a selfcare token needs an account id"),
        (("--role", "crm", "--account", "a-1"), "--account: only selfcare tokens are bound"),
    ],
)
def test_create_refuses_bad_roles_and_accounts_in_one_line(
    tmp_path: Path, args: tuple[str, ...], says: str
) -> None:
    """A bad role, or an account id missing or misplaced: one line, exit 2, no file written."""
    tokens = tmp_path / "tokens.jsonl"
    line = _one_line_error(_run("token", "create", "--tokens", str(tokens), *args))
    assert says in line
    assert not tokens.exists()


def test_a_tokens_file_in_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    """A tokens file whose folder does not exist is reported in one line, exit 2."""
    missing = tmp_path / "nowhere" / "tokens.jsonl"
    line = _one_line_error(_run("token", "create", "--tokens", str(missing), "--role", "crm"))
    assert "nowhere" in line


def test_list_shows_tokens_without_secrets_as_table_and_json(tmp_path: Path) -> None:
    """The list names each token's id, role, account and times, never a secret or hash."""
    tokens = tmp_path / "tokens.jsonl"
    crm = _create(tokens, "--role", "crm", "--name", "crm system").stdout.splitlines()[-1]
    _create(tokens, "--role", "selfcare", "--account", "a-7")
    table = _run("token", "list", "--tokens", str(tokens))
    assert table.exit_code == 0
    header, first, second = table.stdout.splitlines()
    assert header.split() == ["TOKEN", "ID", "ROLE", "ACCOUNT", "CREATED", "REVOKED", "NAME"]
    assert first.split()[1:3] == ["crm", "-"] and first.endswith("crm system")
    assert second.split()[1:3] == ["selfcare", "a-7"]
    listed = _run("token", "list", "--tokens", str(tokens), "--json")
    document = json.loads(listed.stdout)
    assert [t["role"] for t in document["tokens"]] == ["crm", "selfcare"]
    assert all("secret_sha256" not in t for t in document["tokens"])
    assert crm.rsplit("_", 1)[1] not in table.stdout + listed.stdout


def test_revoke_marks_the_token_and_the_store_refuses_it(tmp_path: Path) -> None:
    """Revoke records the time, the store refuses the token, a second revoke says so, and an
    unknown id is a one-line error."""
    tokens = tmp_path / "tokens.jsonl"
    bearer = _create(tokens, "--role", "operator").stdout.splitlines()[-1]
    token_id = bearer.split("_")[1]
    store = TokenStore(tokens, check_interval_ms=0)
    assert store.verify(bearer).token_id == token_id
    first = _run("token", "revoke", "--tokens", str(tokens), token_id)
    assert first.exit_code == 0
    assert first.stdout.startswith(f"revoked token {token_id} (operator) at ")
    with pytest.raises(InvalidToken, match="revoked"):
        store.verify(bearer)
    again = _run("token", "revoke", "--tokens", str(tokens), token_id)
    assert again.stdout.startswith(f"token {token_id} was already revoked at ")
    document = json.loads(_run("token", "list", "--tokens", str(tokens), "--json").stdout)
    assert document["tokens"][0]["revoked_at"] is not None
    line = _one_line_error(_run("token", "revoke", "--tokens", str(tokens), "000000000000"))
    assert "no token with id '000000000000'" in line


def test_list_of_an_invalid_file_is_one_line(tmp_path: Path) -> None:
    """An invalid tokens file is named with its line in a one-line error."""
    tokens = tmp_path / "tokens.jsonl"
    tokens.write_text("[]\n")
    line = _one_line_error(_run("token", "list", "--tokens", str(tokens)))
    assert f"{tokens}: line 1: must be a JSON object" in line


def test_certs_writes_the_five_files_once(tmp_path: Path) -> None:
    """``certs DIR`` writes the CA, server and client files (keys 0600); a second run into
    the same folder is a one-line error and changes nothing."""
    folder = tmp_path / "certs"
    result = _run("certs", str(folder), "--host", "gw1.example.net")
    assert result.exit_code == 0, result.output
    assert "localhost, 127.0.0.1, gw1.example.net" in result.stdout
    names = {"ca.pem", "server.pem", "server.key", "client.pem", "client.key"}
    assert {p.name for p in folder.iterdir()} == names
    assert stat.S_IMODE((folder / "client.key").stat().st_mode) == 0o600
    ca = (folder / "ca.pem").read_bytes()
    line = _one_line_error(_run("certs", str(folder)))
    assert "already holds ca.pem" in line
    assert (folder / "ca.pem").read_bytes() == ca
