"""The one clock: a manual clock for tests, and the adjustable clock that moves a whole
multi-process cluster forward through a file (``petribill clock advance``)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from actors.clock import (
    SYSTEM_CLOCK,
    AdjustableClock,
    ManualClock,
    clock_from_settings,
    clock_offset_path,
    set_clock_offset,
)
from cluster.cli.main import main

# The CLI configures logging process-wide: tests/conftest.py puts it back.
pytestmark = pytest.mark.usefixtures("restore_logging")


def test_a_manual_clock_stands_still_until_moved_and_never_goes_back() -> None:
    """A manual clock answers the same time until advanced or set, and refuses the past."""
    clock = ManualClock(100.0)
    assert clock() == clock() == 100.0
    assert clock.advance(5) == 105.0 and clock() == 105.0
    clock.set(200)
    with pytest.raises(ValueError):
        clock.set(150)
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_the_adjustable_clock_follows_its_file_forward_only(tmp_path: Path) -> None:
    """Every reader of the file moves with it (within its recheck), an offset smaller than
    the one set is refused, and a clock whose file is gone does not go back."""
    clock = AdjustableClock(clock_offset_path(tmp_path), recheck_s=0.0)
    assert abs(clock() - time.time()) < 5
    set_clock_offset(tmp_path, 86_400)
    assert clock() - time.time() > 86_000
    with pytest.raises(ValueError):
        set_clock_offset(tmp_path, 60)
    ahead = clock()
    clock_offset_path(tmp_path).unlink()
    assert clock() >= ahead


def test_a_first_offset_may_set_the_clock_back_before_anyone_read_it(tmp_path: Path) -> None:
    """A test whose data lies in the past starts its cluster's clock there: the first offset
    may be negative; after it, the clock only moves forward."""
    set_clock_offset(tmp_path, -86_400)
    clock = AdjustableClock(clock_offset_path(tmp_path), recheck_s=0.0)
    assert 86_000 < time.time() - clock() < 87_000
    with pytest.raises(ValueError):
        set_clock_offset(tmp_path, -2 * 86_400)


def test_settings_choose_the_clock(tmp_path: Path) -> None:
    """Without ``clock_adjustable`` a process reads the system clock."""
    assert clock_from_settings({"data_dir": str(tmp_path)}) is SYSTEM_CLOCK
    adjustable = clock_from_settings({"data_dir": str(tmp_path), "clock_adjustable": True})
    assert isinstance(adjustable, AdjustableClock)


def test_petribill_clock_advance_adds_to_the_offset(tmp_path: Path) -> None:
    """``petribill clock advance`` moves the cluster's clock by the seconds given, again
    and again; ``show`` prints it."""
    runner = CliRunner()
    for _ in range(2):
        done = runner.invoke(main, ["clock", "advance", "3600", "--data", str(tmp_path)])
        assert done.exit_code == 0, done.output
    assert float(clock_offset_path(tmp_path).read_text()) == 7200.0
    shown = runner.invoke(main, ["clock", "show", "--data", str(tmp_path)])
    assert "offset +7200 s" in shown.output
