"""`petribill node add` refuses, in one line with exit code 2 and before any process
starts, a data folder that holds no cluster it can grow (the Ray test of the command
itself is tests/test_node_ops_cluster.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import ray
from click.testing import CliRunner

from cluster.cli.main import main
from cluster.deploy.runtime import RUNTIME_FILE

# The CLI configures logging process-wide: tests/conftest.py puts it back.
pytestmark = pytest.mark.usefixtures("restore_logging")


def _add(data: Path) -> str:
    result = CliRunner().invoke(main, ["node", "add", "--data", str(data)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("petribill: error: "), result.stderr
    assert not ray.is_initialized()
    return lines[0]


def _record(data: Path, **fields: Any) -> None:
    data.mkdir(parents=True, exist_ok=True)
    info = {"address": "127.0.0.1:9", "data_dir": str(data), **fields}
    (data / RUNTIME_FILE).write_text(json.dumps(info))


def test_node_add_without_a_cluster_says_so(tmp_path: Path) -> None:
    """No runtime.json in DIR: no running cluster there."""
    assert f"no running cluster in {tmp_path}" in _add(tmp_path)


def test_node_add_to_a_cluster_whose_processes_are_gone_says_so(tmp_path: Path) -> None:
    """A runtime.json left behind (its temp folder gone, no process of it): not running,
    and `down` clears it."""
    _record(tmp_path, local_temp_dir=str(tmp_path / "pbgone"))
    line = _add(tmp_path)
    assert "is not running" in line and f"petribill down --data {tmp_path}" in line


def test_node_add_to_a_joined_or_single_copy_cluster_is_refused(tmp_path: Path) -> None:
    """A cluster joined with --address grows with `ray start`; a one-node cluster keeps
    its units in local storage, which no added node could ever take over."""
    joined, single = tmp_path / "joined", tmp_path / "single"
    _record(joined, local_temp_dir=None)
    assert "ray start --address=127.0.0.1:9" in _add(joined)
    _record(single, local_temp_dir=str(tmp_path / "pb1"), settings={"storage_mode": "local"})
    assert "storage.mode 'local'" in _add(single)
