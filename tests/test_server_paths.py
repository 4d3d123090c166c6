"""Server-side paths a client names stay under their roots: Backup writes only below the
backup root and LoadTariffs reads only below the tariffs root, through a real gateway with
an operator token over an in-process cluster. Anything else is INVALID_ARGUMENT, nothing
is written, and the message reads the same whether the path exists or not."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from test_gateway_support import TARIFFS, running_gateways

from actors.store.backup import BackupRefused, backup_target
from cluster.client import PetribillClient, PetribillError
from cluster.gateway.guard import SecuritySettings
from cluster.security.roles import Role
from cluster.security.tokens import create_token

pytestmark = pytest.mark.timeout(60)

Code = grpc.StatusCode


@dataclass
class Roots:
    client: PetribillClient
    backups: Path
    tariffs: Path
    outside: Path  # an empty folder beside the roots
    data_dir: Path


def _files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*"))


@pytest.fixture
def roots(tmp_path: Path) -> Iterator[Roots]:
    backups, tariffs, outside = tmp_path / "backups", tmp_path / "tariffs-root", tmp_path / "out"
    for folder in (backups, tariffs, outside):
        folder.mkdir()
    shutil.copytree(TARIFFS, tariffs / "catalogue")
    tokens = tmp_path / "tokens.jsonl"
    token = create_token(tokens, role=Role.OPERATOR).bearer
    security = SecuritySettings(tokens_file=str(tokens))
    settings = {"backup_root": str(backups), "tariffs_root": str(tariffs)}
    with (
        running_gateways(security=security, settings=settings) as (_loop, backend, [gateway]),
        PetribillClient(gateway.address, token=token, retries=0) as client,
    ):
        assert backend.cluster.data_dir is not None
        yield Roots(client, backups, tariffs, outside, Path(backend.cluster.data_dir))


def _refusal(call: object) -> str:
    with pytest.raises(PetribillError) as refused:
        call()  # type: ignore[operator]
    assert refused.value.code is Code.INVALID_ARGUMENT, refused.value
    return refused.value.details


def test_backup_outside_its_root_is_refused_with_nothing_written(roots: Roots) -> None:
    """An absolute path elsewhere (/etc too), a `..`, a link out of the root and the root
    itself are refused; nothing appears outside; existing and missing paths read alike."""
    link = roots.backups / "link"
    link.symlink_to(roots.outside, target_is_directory=True)
    missing = f"/tmp/pb-nowhere-{uuid.uuid4().hex}/bk"
    messages = {}
    for path in (str(roots.outside / "bk"), missing, "/etc/pb-backup", "../out/bk", "link/bk", "."):
        messages[path] = _refusal(lambda p=path: roots.client.backup(p, request_id="bk-x"))
    assert _files(roots.outside) == []
    assert not Path(missing).parent.exists() and not Path("/etc/pb-backup").exists()

    # Apart from the echoed path (cut short when long), the two read alike.
    def unquoted(message: str) -> str:
        return re.sub(r"'[^']*'", "P", message, count=1)

    assert unquoted(messages[missing]) == unquoted(messages[str(roots.outside / "bk")])
    assert "outside the backup destination root" in messages["/etc/pb-backup"]
    assert [p.name for p in roots.backups.iterdir()] == ["link"]  # nothing else written


def test_backup_below_its_root_writes_every_unit(roots: Roots) -> None:
    """A relative path is taken from the root, an absolute one inside it is accepted, and
    no path means a folder of the root named after the request id."""
    roots.client.backup("nightly/1", request_id="bk-1")
    roots.client.backup(str(roots.backups / "abs"), request_id="bk-2")
    roots.client.backup(request_id="bk-3")
    for folder in ("nightly/1", "abs", "bk-3"):
        units = sorted(p.name for p in (roots.backups / folder / "units").iterdir() if p.is_dir())
        assert units == ["acct-00", "acct-01", "acct-02", "acct-03", "part-0", "part-1"]


def test_load_tariffs_outside_its_root_is_refused_without_reading(roots: Roots) -> None:
    """A catalogue outside the tariffs root (a copy, /etc, a link out) is refused and
    nothing is persisted; the one inside, named relative to the root, loads."""
    elsewhere = roots.outside / "catalogue"
    shutil.copytree(TARIFFS, elsewhere)
    (roots.tariffs / "link").symlink_to(elsewhere, target_is_directory=True)
    missing = f"/tmp/pb-nowhere-{uuid.uuid4().hex}"
    messages = {}
    for path in (str(elsewhere), missing, "/etc", "link", "../out/catalogue"):
        messages[path] = _refusal(lambda p=path: roots.client.load_tariffs(p, request_id="t-x"))
    assert messages[missing].replace(missing, "P") == messages["/etc"].replace("/etc", "P")
    assert not (roots.data_dir / "tariffs").exists()  # nothing persisted
    # Inside the root it is read and persisted. (In-process hosts cannot switch their
    # running units to it, which Ray's hosts do: tests/test_backend.py covers that.)
    try:
        assert roots.client.load_tariffs("catalogue", request_id="t-1").default_plan == "smart"
    except PetribillError as exc:
        assert exc.code is not Code.INVALID_ARGUMENT, exc
    assert (roots.data_dir / "tariffs" / "t-1" / "plans.toml").is_file()


def test_a_host_writes_a_backup_only_below_its_root(tmp_path: Path) -> None:
    """The host's own check (on its node): a relative folder below the root is the target;
    an absolute path, a `..`, a link out, an empty folder and the root itself are refused."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    outside.mkdir()
    assert backup_target(root, "a/b") == (root / "a" / "b").resolve()
    os.symlink(outside, root / "out")
    for folder in (str(outside), "../outside", "out/x", "", ".", "a/../../outside"):
        with pytest.raises(BackupRefused):
            backup_target(root, folder)
    assert _files(outside) == []
