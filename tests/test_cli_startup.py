"""`petribill up` refuses what cannot work before it starts anything (issue 15, item 6).

A port in use, the data folder of a running cluster and an unreadable
configuration are each one line on stderr, exit code 2, no traceback, no Ray
started and no data folder made. (Before: 29 s, a 78-line traceback and a
populated data folder for a port in use.)
"""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from click.testing import CliRunner

from cluster.cli.main import main
from cluster.cli.ops import _failed_start
from cluster.deploy.runtime import RUNTIME_FILE, StartError, check_port_free

# The CLI configures logging process-wide: tests/conftest.py puts it back.
pytestmark = pytest.mark.usefixtures("restore_logging")

CONF = Path(__file__).resolve().parent.parent / "conf"


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def _up(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["up", "--detach", *args])
    return result.exit_code, result.stderr


def _one_line_refusal(code: int, stderr: str) -> str:
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("petribill: error: "), stderr
    assert "Traceback" not in stderr
    assert not ray.is_initialized()
    return lines[0]


def test_up_on_a_port_in_use_is_one_line_and_leaves_no_data_folder(
    tmp_path: Path, taken_port: int
) -> None:
    """The port is checked before Ray starts: exit 2, one line, no data folder."""
    data = tmp_path / "data"
    code, stderr = _up("--port", str(taken_port), "--data", str(data), "--conf", str(CONF))
    line = _one_line_refusal(code, stderr)
    assert f"127.0.0.1:{taken_port}: in use" in line
    assert not data.exists()


def test_up_on_the_data_folder_of_a_running_cluster_is_refused(tmp_path: Path) -> None:
    """A data folder whose runtime.json records a cluster is not started again."""
    data = tmp_path / "data"
    data.mkdir()
    record = {
        "address": "127.0.0.1:6379",
        "data_dir": str(data),
        "gateways": ["127.0.0.1:50051"],
        "local_temp_dir": None,
        "started_at_s": 1.0,
    }
    (data / RUNTIME_FILE).write_text(json.dumps(record))
    code, stderr = _up("--port", "0", "--data", str(data), "--conf", str(CONF))
    line = _one_line_refusal(code, stderr)
    assert "data folder of a running cluster" in line and "petribill down" in line
    assert sorted(p.name for p in data.iterdir()) == [RUNTIME_FILE]


@pytest.mark.parametrize("broken", ["folder", "not toml", "not utf-8"])
def test_up_with_an_unreadable_conf_is_one_line(tmp_path: Path, broken: str) -> None:
    """cluster.toml that is a folder, not TOML or not UTF-8: exit 2 naming the file."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF / "tariffs", conf / "tariffs")
    target = conf / "cluster.toml"
    if broken == "folder":
        target.mkdir()
    elif broken == "not toml":
        target.write_text("[sharding\nshards = ")
    else:
        target.write_bytes(b"\xff\xfe[x]")
    data = tmp_path / "data"
    code, stderr = _up("--port", "0", "--data", str(data), "--conf", str(conf))
    line = _one_line_refusal(code, stderr)
    assert "cluster.toml" in line
    assert not data.exists()


def test_check_port_free_accepts_a_free_port_and_refuses_a_taken_one(taken_port: int) -> None:
    """The probe binds and releases: a free port passes, a listening one is StartError."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    check_port_free("127.0.0.1", free)
    with pytest.raises(StartError, match="in use"):
        check_port_free("127.0.0.1", taken_port)


def test_a_failed_start_removes_the_data_folder_it_made(tmp_path: Path) -> None:
    """After a start failed half-way, a data folder made by this `up` is gone; one that
    existed before is kept."""

    class Stopped:
        def stop(self) -> None:
            raise RuntimeError("nothing to stop")  # stopping may fail too: still cleaned

    made = tmp_path / "made"
    (made / "logs").mkdir(parents=True)
    _failed_start(Stopped(), made, made_data_dir=True)
    assert not made.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    _failed_start(Stopped(), kept, made_data_dir=False)
    assert kept.exists()
