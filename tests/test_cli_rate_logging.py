"""Logging set-up: JSON lines for machines, text for people, on stderr, at the chosen level."""

from __future__ import annotations

import json

import pytest
import structlog
from click.testing import CliRunner

from cluster.cli.main import main
from cluster.logging import configure_logging

# The CLI configures logging process-wide: tests/conftest.py puts it back.
pytestmark = pytest.mark.usefixtures("restore_logging")


def test_json_logs_on_request(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """PETRIBILL_LOG=json gives one JSON object per event on stderr, with level and timestamp."""
    monkeypatch.setenv("PETRIBILL_LOG", "json")
    configure_logging("INFO")
    structlog.get_logger().info("shard.assign", shard=3)
    structlog.get_logger().debug("hidden")
    (line,) = capsys.readouterr().err.splitlines()
    event = json.loads(line)
    assert event["event"] == "shard.assign" and event["shard"] == 3
    assert event["level"] == "info" and event["timestamp"].endswith("Z")


def test_console_logs_on_request(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """PETRIBILL_LOG=console gives readable text instead of JSON."""
    monkeypatch.setenv("PETRIBILL_LOG", "console")
    configure_logging("DEBUG")
    structlog.get_logger().debug("takeover", shard=1)
    err = capsys.readouterr().err
    assert "takeover" in err and "shard=1" in err and not err.startswith("{")


def test_unknown_level_is_a_usage_error() -> None:
    """An unknown --log-level is exit code 2 with a message."""
    result = CliRunner().invoke(main, ["--log-level", "chatty", "demo"])
    assert result.exit_code == 2 and "unknown log level" in result.stderr
