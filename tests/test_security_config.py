"""The [security] table of cluster.toml, what `petribill up` refuses to expose, and
`petribill audit`: configuration and commands, without a cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cluster.cli.main import main
from cluster.config import ConfigError, load_config, parse_config
from cluster.deploy.exposure import exposure_problem, is_loopback_host
from cluster.security.audit import AuditLog
from cluster.security.auth import Principal
from cluster.security.certs import write_dev_certs
from cluster.security.roles import Role
from cluster.security.tokens import create_token

# The CLI configures logging process-wide: tests/conftest.py puts it back.
pytestmark = pytest.mark.usefixtures("restore_logging")


def _conf(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cluster.toml").write_text(text)
    return folder


def _secured_conf(folder: Path, host: str = "0.0.0.0") -> Path:
    """A conf folder with dev certificates, a tokens file and [security] naming them."""
    write_dev_certs(folder / "certs")
    create_token(folder / "tokens.jsonl", role=Role.OPERATOR)
    return _conf(
        folder,
        f'[gateway]\nhost = "{host}"\n[security]\ntokens_file = "tokens.jsonl"\n'
        'tls_cert = "certs/server.pem"\ntls_key = "certs/server.key"\nclient_ca = "certs/ca.pem"\n',
    )


def test_security_paths_are_relative_to_the_conf_folder(tmp_path: Path) -> None:
    """Every path of [security] is made absolute against the folder of cluster.toml."""
    conf = _secured_conf(tmp_path / "conf")
    security = load_config(conf / "cluster.toml").security
    assert security.tokens_file == conf / "tokens.jsonl"
    assert security.tls_cert == conf / "certs" / "server.pem"
    assert security.client_ca == conf / "certs" / "ca.pem"
    assert security.tls and security.tokens and security.backup_root is None


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('tls_cert = "certs/server.pem"', "security.tls_key: required with security.tls_cert"),
        ('tls_key = "certs/server.key"', "security.tls_cert: required with security.tls_key"),
        ('client_ca = "certs/ca.pem"', "security.client_ca: mutual TLS needs tls_cert"),
        ('tokens = "tokens.jsonl"', "security.tokens: unknown key"),
        ('tokens_file = "missing.jsonl"', "security.tokens_file: "),
        ('backup_root = "tokens.jsonl"', "security.backup_root: "),
        ("tokens_file = 7", "security.tokens_file: "),
    ],
)
def test_security_keys_are_validated_with_file_and_key_named(
    tmp_path: Path, table: str, message: str
) -> None:
    """A key without its partner, an unknown key, a missing file, a file for a folder
    and a wrong type are errors naming the file and the key."""
    conf = _secured_conf(tmp_path / "conf", host="127.0.0.1")
    (conf / "cluster.toml").write_text(f"[security]\n{table}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(conf / "cluster.toml")
    assert str(refused.value).startswith(f"{conf / 'cluster.toml'}: {message}"), refused.value


def test_loopback_hosts_are_told_from_wildcards_and_interfaces() -> None:
    """127.0.0.0/8, ::1 and localhost are loopback; 0.0.0.0, ::, names and addresses not."""
    assert all(is_loopback_host(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"))
    assert not any(is_loopback_host(h) for h in ("0.0.0.0", "", "::", "192.0.2.2", "gw.example"))


def test_exposure_needs_tls_and_tokens_beyond_loopback_and_ray_token_auth() -> None:
    """A gateway beyond loopback needs both TLS and tokens; a Ray beyond loopback needs
    RAY_AUTH_MODE=token; loopback needs neither."""
    plain = parse_config({"gateway": {"host": "0.0.0.0"}})
    assert "without TLS and tokens" in (exposure_problem(plain, None, env={}) or "")
    tls_only = parse_config(
        {"gateway": {"host": "0.0.0.0"}, "security": {"tls_cert": "c", "tls_key": "k"}}
    )
    assert "without tokens (" in (exposure_problem(tls_only, None, env={}) or "")
    both = parse_config(
        {
            "gateway": {"host": "0.0.0.0"},
            "security": {"tls_cert": "c", "tls_key": "k", "tokens_file": "t"},
        }
    )
    assert exposure_problem(both, None, env={}) is None
    local = parse_config({})
    assert exposure_problem(local, "127.0.0.1:6379", env={}) is None
    assert "token authentication" in (exposure_problem(local, "10.0.0.5:6379", env={}) or "")
    assert exposure_problem(local, "10.0.0.5:6379", env={"RAY_AUTH_MODE": "token"}) is None


def test_up_refuses_to_expose_a_plain_gateway_in_one_line(tmp_path: Path) -> None:
    """`up` with [gateway] host 0.0.0.0 and no [security]: one line naming the fix, exit 2,
    before any process starts; a Ray address beyond loopback without token auth too."""
    conf = _conf(tmp_path / "conf", '[gateway]\nhost = "0.0.0.0"\n')
    data = tmp_path / "data"
    result = CliRunner().invoke(main, ["up", "--conf", str(conf), "--data", str(data)])
    assert result.exit_code == 2
    assert result.stderr.startswith("petribill: error: refusing to serve gateways on 0.0.0.0")
    assert "--insecure" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not data.exists()
    local = _conf(tmp_path / "local", "")
    joined = CliRunner().invoke(
        main,
        ["up", "--conf", str(local), "--data", str(data), "--address", "192.0.2.9:6379"],
        env={"RAY_AUTH_MODE": None},
    )
    assert joined.exit_code == 2 and "Ray's token authentication" in joined.stderr
    assert not data.exists()


def test_up_names_an_unusable_tokens_file_before_starting(tmp_path: Path) -> None:
    """A tokens file others may write is refused by `up` in one line naming it."""
    conf = _secured_conf(tmp_path / "conf")
    (conf / "tokens.jsonl").chmod(0o666)
    data = tmp_path / "data"
    result = CliRunner().invoke(main, ["up", "--conf", str(conf), "--data", str(data)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"petribill: error: {conf / 'tokens.jsonl'}: writable by group")
    assert not data.exists()


def test_audit_lists_the_events_filtered_as_a_table_or_json(tmp_path: Path) -> None:
    """`petribill audit --data DIR` reads DIR/audit: the latest events, filtered by account
    and RPC; --json gives one document."""
    log = AuditLog(tmp_path / "data" / "audit")
    crm = Principal(token_id="0123456789ab", role=Role.CRM)
    log.record(
        rpc="AccountService.TopUp", outcome="OK", principal=crm, account_id="a1", request_id="t1"
    )
    log.record(
        rpc="AccountService.TopUp", outcome="OK", principal=crm, account_id="a2", request_id="t2"
    )
    log.record(rpc="BillingService.ApplyPayment", outcome="UNAUTHENTICATED", principal=None)
    log.close()
    runner = CliRunner()
    args = ["audit", "--data", str(tmp_path / "data"), "--conf", str(tmp_path / "no-conf")]
    table = runner.invoke(main, args)
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["TIME", "RPC", "OUTCOME"] and len(lines) == 4
    assert "0123456789ab" in lines[1] and "a1" in lines[1] and "t1" in lines[1]
    assert "UNAUTHENTICATED" in lines[3]
    found = json.loads(runner.invoke(main, [*args, "--account", "a2", "--json"]).stdout)
    assert [e["request_id"] for e in found["events"]] == ["t2"]
    only = json.loads(
        runner.invoke(main, [*args, "--rpc", "BillingService.ApplyPayment", "--json"]).stdout
    )
    assert [e["outcome"] for e in only["events"]] == ["UNAUTHENTICATED"]
    missing = runner.invoke(main, ["audit", "--data", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "no audit folder" in missing.stderr
