"""Server-side paths stay under their root: real folders and symlinks in a temp dir."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from cluster.security.paths import PathRefused, resolve_under


def _backup(root: Path, given: str) -> Path:
    """What a Backup handler does: confine the destination, then create it and write in it."""
    dest = resolve_under(root, given, what="backup destination")
    dest.mkdir(parents=True, exist_ok=False)
    (dest / "shard-0.sst").write_bytes(b"account data")
    return dest


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path]:
    """A backup root with a folder inside, and an outside folder holding a file."""
    root = tmp_path / "backups"
    (root / "nightly").mkdir(parents=True)
    outside = tmp_path / "etc"
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0")
    return root, outside


@pytest.mark.parametrize("given", ["2026-05-01", "nightly/2026-05-01", "./x", "nightly/./y"])
def test_a_relative_path_inside_the_root_is_written_there(
    world: tuple[Path, Path], given: str
) -> None:
    """Relative paths are taken under the root, and the backup lands there."""
    root, _ = world
    dest = _backup(root, given)
    assert dest.is_relative_to(root.resolve())
    assert (dest / "shard-0.sst").read_bytes() == b"account data"


def test_an_absolute_path_under_the_root_is_admitted(world: tuple[Path, Path]) -> None:
    """An absolute path is fine if it lies under the root."""
    root, _ = world
    given = str(root.resolve() / "nightly" / "today")
    assert resolve_under(root, given) == Path(given)


def test_a_root_reached_through_a_symlink_admits_paths_under_its_target(tmp_path: Path) -> None:
    """A root configured through a link (/data -> /mnt/disk1) admits its real paths too."""
    real = tmp_path / "disk1"
    real.mkdir()
    link = tmp_path / "data"
    link.symlink_to(real)
    assert resolve_under(link, "b1") == real / "b1"
    assert resolve_under(link, str(link / "b2")) == real / "b2"


@pytest.mark.parametrize(
    "given",
    [
        "{outside}",
        "{outside}/new-backup",
        "/",
        "../etc",
        "nightly/../../etc",
        "nightly/../today",  # stays inside, but no client needs a `..`: refused outright
        "out-link/new-backup",
        "out-link",
        "loop/x",
    ],
)
def test_paths_leaving_the_root_are_refused_and_nothing_is_written(
    world: tuple[Path, Path], given: str
) -> None:
    """Absolute elsewhere, ``..``, a symlink pointing out, a symlink loop: refused, and neither
    the root nor the outside folder gains a file."""
    root, outside = world
    (root / "out-link").symlink_to(outside)
    (root / "loop").symlink_to(root / "loop")
    before = (_tree(root), _tree(outside))
    with pytest.raises(PathRefused):
        _backup(root, given.format(outside=outside))
    assert (_tree(root), _tree(outside)) == before


def test_the_refusal_does_not_tell_whether_the_path_exists(world: tuple[Path, Path]) -> None:
    """An existing file, an existing folder and a missing path outside get the same message
    (apart from the path the client itself sent)."""
    root, outside = world
    messages = set()
    for name in ("passwd", ".", "no-such-thing"):
        given = str(outside / name) if name != "." else str(outside)
        with pytest.raises(PathRefused) as refused:
            resolve_under(root, given, what="tariffs folder")
        # The echoed path may be cut short (a bounded echo): blank it whole, quotes and all.
        messages.add(re.sub(r"'[^']*'", "<path>", str(refused.value), count=1))
    assert messages == {
        "tariffs folder: <path> is outside the tariffs folder root configured on the server"
    }


@pytest.mark.parametrize("given", ["", "nightly/\x00x"])
def test_an_empty_path_or_a_nul_is_refused(world: tuple[Path, Path], given: str) -> None:
    """An empty path or one with a NUL character is malformed."""
    root, _ = world
    with pytest.raises(PathRefused, match="non-empty path without NUL"):
        resolve_under(root, given)


def test_a_missing_root_is_a_configuration_error_not_a_refusal(tmp_path: Path) -> None:
    """The root must exist: its absence is the server's error (OSError), not the client's."""
    with pytest.raises(OSError):
        resolve_under(tmp_path / "nowhere", "x")
    assert not os.path.exists(tmp_path / "nowhere")
