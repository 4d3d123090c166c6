"""`petribill rate` and `petribill demo` over the sample CDRs and tariffs in conf/."""

from __future__ import annotations

import json
import re
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cluster.cli.main import main

# The CLI configures logging process-wide: tests/conftest.py puts it back.
pytestmark = pytest.mark.usefixtures("restore_logging")

ROOT = Path(__file__).resolve().parent.parent
TARIFFS = ROOT / "conf" / "tariffs"
SAMPLES = ROOT / "conf" / "samples"
SAMPLE_FILES = sorted(p for p in SAMPLES.iterdir() if p.suffix in (".csv", ".jsonl"))
SUBSCRIBERS = SAMPLES / "subscribers.toml"


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def rate_jsonl(*extra: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    result = invoke("rate", "--tariffs", TARIFFS, *extra, *SAMPLE_FILES)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    *rows, last = lines
    return rows, last["summary"]


def rate_jsonl_of(*files: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    result = invoke("rate", "--tariffs", TARIFFS, *files)
    assert result.exit_code == 0, result.output
    *rows, last = [json.loads(line) for line in result.stdout.splitlines()]
    return rows, last["summary"]


def data_lines(path: Path) -> int:
    """Non-blank lines that carry data: all of them in JSON Lines, all but the header in CSV."""
    count = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return count - 1 if path.suffix == ".csv" else count


def test_samples_rate_to_one_object_per_line_and_a_balanced_summary() -> None:
    """Each input line gives one JSON object; lines = rated + rejected + duplicates."""
    rows, summary = rate_jsonl("--subscribers", SUBSCRIBERS)
    lines = sum(data_lines(p) for p in SAMPLE_FILES)
    assert len(rows) == lines == summary["received"]
    assert summary["rated"] + summary["rejected"] + summary["duplicates"] == lines
    assert summary["balanced"] is True
    outcomes = [row["outcome"] for row in rows]
    assert summary["rated"] == outcomes.count("rated") > 250
    assert summary["duplicates"] == outcomes.count("duplicate") == 1
    for entry in summary["by_service"].values():
        assert entry["received"] == entry["rated"] + entry["rejected"] + entry["duplicates"]


def test_rated_rows_carry_price_and_amounts_add_up() -> None:
    """Rated rows have amount, currency, units, rate ids; the summary totals are their sums."""
    rows, summary = rate_jsonl("--subscribers", SUBSCRIBERS)
    rated = [row for row in rows if row["outcome"] == "rated"]
    for row in rated:
        assert re.fullmatch(r"\d+\.\d{4,6}", row["amount"]), row
        assert row["currency"] == "EUR" and row["rate_ids"] and row["usage_class"]
        assert row["billed_units"] >= row["units"] >= 0 or row["service"] == "content"
    total = sum(Decimal(row["amount"]) for row in rated)
    assert Decimal(summary["amount"]["EUR"]) == total
    per_service = {
        service: sum(Decimal(r["amount"]) for r in rated if r["service"] == service)
        for service in ("voice", "sms", "data", "content")
    }
    for service, amount in per_service.items():
        assert Decimal(summary["by_service"][service]["amount"]["EUR"]) == amount


def _documented_bad_lines() -> set[tuple[str, int]]:
    text = (SAMPLES / "README.md").read_text(encoding="utf-8")
    return {(name, int(line)) for name, line in re.findall(r"^\| (\S+) \| (\d+) \|", text, re.M)}


def test_documented_bad_lines_are_the_rejects_and_duplicates() -> None:
    """The bad lines listed in conf/samples/README.md are exactly the rows not rated."""
    rows, _ = rate_jsonl("--subscribers", SUBSCRIBERS)
    not_rated = {(Path(row["file"]).name, row["line"]) for row in rows if row["outcome"] != "rated"}
    assert not_rated == _documented_bad_lines()
    for row in rows:
        if row["outcome"] == "rejected" and row["error"]["reason"] == "malformed":
            assert row["error"]["message"].startswith(f"line {row['line']}: ")
            assert row["raw"] and row["file"]


def test_subscriber_file_chooses_the_plan_per_msisdn() -> None:
    """With --subscribers, business lines rate on plan business and the rest on smart."""
    rows, _ = rate_jsonl("--subscribers", SUBSCRIBERS)
    plans = {row["served_msisdn"]: row["plan_id"] for row in rows if row["outcome"] == "rated"}
    assert plans["4915100000001"] == "smart"
    assert plans["4915100000020"] == "business"


def test_plan_option_applies_to_every_record() -> None:
    """--plan prices every record on that plan."""
    rows, _ = rate_jsonl("--plan", "smart")
    assert {row["plan_id"] for row in rows if row["outcome"] == "rated"} == {"smart"}


def test_table_format_shows_rows_and_summary() -> None:
    """--format table prints the outcomes and the reconciliation for a person."""
    result = invoke("rate", "--tariffs", TARIFFS, "--format", "table", *SAMPLE_FILES)
    assert result.exit_code == 0, result.output
    assert "Summary" in result.stdout and "msc01:000001" in result.stdout
    assert "received = rated + rejected + duplicates: balanced" in result.stdout


def test_demo_rates_the_samples_offline() -> None:
    """`petribill demo` rates conf/samples with conf/tariffs and prints the summary."""
    result = invoke("demo", "--offline", "--conf", ROOT / "conf")
    assert result.exit_code == 0, result.output
    assert "balanced" in result.stdout and "NOT balanced" not in result.stdout


def test_bad_tariff_file_is_exit_2_naming_the_file(tmp_path: Path) -> None:
    """A broken tariff file gives exit code 2 and a one-line message naming it, no traceback."""
    broken = tmp_path / "tariffs"
    shutil.copytree(TARIFFS, broken)
    (broken / "catalogue.toml").write_text("this is = = not toml\n")
    result = invoke("rate", "--tariffs", broken, SAMPLE_FILES[0])
    assert result.exit_code == 2
    assert "catalogue.toml" in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--plan", "gold"), "unknown plan 'gold'"),
        (("--country-code", "+49"), "country code"),
        (("--naive-time-zone", "Mars/Olympus"), "time zone"),
    ],
)
def test_bad_options_are_exit_2(args: tuple[str, ...], fragment: str) -> None:
    """Unknown plans, country codes and zones are usage errors with exit code 2."""
    result = invoke("rate", "--tariffs", TARIFFS, *args, SAMPLE_FILES[0])
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr


def test_missing_paths_and_unknown_formats_are_exit_2(tmp_path: Path) -> None:
    """A missing tariff folder or CDR file, or an unknown extension, is exit code 2."""
    other = tmp_path / "cdrs.xml"
    other.write_text("<cdr/>")
    assert invoke("rate", "--tariffs", tmp_path / "nope", SAMPLE_FILES[0]).exit_code == 2
    assert invoke("rate", "--tariffs", TARIFFS, tmp_path / "none.csv").exit_code == 2
    result = invoke("rate", "--tariffs", TARIFFS, other)
    assert result.exit_code == 2 and "unknown CDR format" in result.stderr


def test_bad_subscriber_file_is_exit_2_naming_the_entry(tmp_path: Path) -> None:
    """A subscriber entry with an unknown plan or a bad number names file and entry."""
    path = tmp_path / "subs.toml"
    path.write_text('[[subscriber]]\nmsisdn = "4915100000001"\naccount_id = "a"\nplan_id = "x"\n')
    result = invoke("rate", "--tariffs", TARIFFS, "--subscribers", path, SAMPLE_FILES[0])
    assert result.exit_code == 2 and "subs.toml" in result.stderr and "'x'" in result.stderr
    path.write_text('[[subscriber]]\nmsisdn = "CALL ME"\naccount_id = "a"\nplan_id = "smart"\n')
    result = invoke("rate", "--tariffs", TARIFFS, "--subscribers", path, SAMPLE_FILES[0])
    assert result.exit_code == 2 and "subscriber[0].msisdn" in result.stderr


def test_duplicates_are_found_across_files(tmp_path: Path) -> None:
    """The same file given twice yields duplicates for every record of the second copy."""
    sms = SAMPLES / "sms.csv"
    copy = tmp_path / "again.csv"
    shutil.copy(sms, copy)
    result = invoke("rate", "--tariffs", TARIFFS, sms, copy)
    summary = json.loads(result.stdout.splitlines()[-1])["summary"]
    lines = data_lines(sms)
    assert summary["received"] == 2 * lines
    malformed = summary["by_service"]["unreadable"]["rejected"]
    # Malformed lines are rejected in both copies; every good record repeats once.
    assert summary["duplicates"] == lines - malformed // 2


MAX_COST_CALLS = """record_id,service,served_msisdn,record_opening_time,called_number,duration_s
mc:premium,voice,4915100000001,2026-11-03T10:00:00+01:00,0900 1234567,3600
mc:france,voice,4915100000001,2026-11-03T10:00:00+01:00,+33141838292,10000
mc:short,voice,4915100000001,2026-11-03T10:00:00+01:00,+33141838292,60
"""


def test_max_cost_flags_are_written(tmp_path: Path) -> None:
    """Past a rate's max_cost, `disconnect` rates the call in full and says so, `cap` charges
    max_cost and says `capped` (docs/tariffs.md); a call under it carries neither flag."""
    calls = tmp_path / "calls.csv"
    calls.write_text(MAX_COST_CALLS)
    rows, _ = rate_jsonl_of(calls)
    by_id = {row["record_id"]: row for row in rows}
    premium, france, short = by_id["mc:premium"], by_id["mc:france"], by_id["mc:short"]
    # V_PREMIUM: 0.50 + 60 min x 1.99 = 119.90, past its max_cost 30.00 (disconnect).
    assert premium["amount"] == "119.9000" and premium["disconnect"] is True
    assert "capped" not in premium
    # V_INT_Z1: 10 000 s x 0.19/min = 31.67, capped at 20.00.
    assert france["amount"] == "20.0000" and france["capped"] is True
    assert "disconnect" not in france
    assert "capped" not in short and "disconnect" not in short
    table = invoke("rate", "--tariffs", TARIFFS, "--format", "table", calls).stdout
    assert "over max_cost: disconnect" in table and "capped at max_cost" in table


@pytest.mark.parametrize("terminal", ["0", "1"])
def test_table_prints_every_value_whole_whatever_the_width(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, terminal: str
) -> None:
    """--format table in 40 columns, to a pipe or a terminal, with a long path, long ids and
    a '[' in a raw value: every id, file:line, amount and reject message is on one line."""
    folder = tmp_path.joinpath(*["a-rather-long-folder-name-for-cdrs"] * 6)
    folder.mkdir(parents=True)
    cdrs = folder / "night-of-the-third-of-november-from-the-backup-switch.csv"
    long_id = "msc01:" + "7" * 100
    cdrs.write_text(
        MAX_COST_CALLS
        + f"{long_id},voice,4915100000001,2026-11-03T10:00:00+01:00,030 2123456,65\n"
        + "mc:bad,voice,4915100000001,2026-11-03T10:00:00+01:00,030 2123456,[five]\n"
    )
    rows, summary = rate_jsonl_of(cdrs)
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.setenv("TTY_COMPATIBLE", terminal)
    result = invoke("rate", "--tariffs", TARIFFS, "--format", "table", cdrs)
    assert result.exit_code == 0, result.output
    table = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)
    assert "…" not in table
    for row in rows:
        assert row["record_id"] in table
        assert f"{cdrs.name}:{row['line']}" in table
        if row["outcome"] == "rated":
            assert f"{row['amount']} {row['currency']}" in table
        else:
            assert row["error"]["message"] in table, row
    assert "got '[five]'" in table
    assert f"{summary['amount']['EUR']} EUR" in table


@pytest.mark.parametrize(
    ("args", "exit_code", "fragment"),
    [
        (("rate", "--tariffs", TARIFFS, "/nope.csv"), 2, "File '/nope.csv' does not exist"),
        (("rate", SAMPLE_FILES[0]), 2, "Missing option '--tariffs'"),
        (("rate", "--tarifs", TARIFFS, SAMPLE_FILES[0]), 2, "Did you mean '--tariffs'?"),
        (("rate", "--tariffs", TARIFFS, "--format", "xml", SAMPLE_FILES[0]), 2, "'xml'"),
        (("frobnicate",), 2, "No such command 'frobnicate'"),
        (("--log-level", "chatty", "demo"), 2, "unknown log level"),
        (("accounts", "show"), 2, "See 'petribill accounts show --help'"),
        (("status", "--bogus"), 2, "No such option '--bogus'"),
        (("up", "--nodes", "x"), 2, "'x' is not a valid integer"),
        (("down", "--data", "{tmp}"), 1, "no cluster recorded in"),
        (("status", "--data", "{tmp}"), 1, "no cluster recorded in"),
        (("topup", "acct-1", "1.00", "--data", "{tmp}"), 1, "no cluster recorded in"),
        (("rejects", "list", "--data", "{tmp}"), 1, "no cluster recorded in"),
        (("topup", "acct-1", "1.000000001", "--data", "{tmp}"), 2, "more than 6 decimals"),
        (("up", "--conf", "{tmp}/none", "--data", "{tmp}/d"), 2, "catalogue folder does not"),
    ],
)
def test_every_command_error_is_one_line(
    args: tuple[str | Path, ...], exit_code: int, fragment: str, tmp_path: Path
) -> None:
    """A usage error of any command (a missing file or option, an unknown command or
    option, a bad value) is one line `petribill: error: ...` on stderr with exit code 2;
    a command's own failure is one line too, with its exit code."""
    result = invoke(*(str(a).replace("{tmp}", str(tmp_path)) for a in args))
    assert result.exit_code == exit_code, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("petribill: error: ") and fragment in line, line
    assert result.stdout == ""


@pytest.mark.parametrize("columns", ["40", "200"])
def test_help_shows_every_command_with_its_whole_summary(
    monkeypatch: pytest.MonkeyPatch, columns: str
) -> None:
    """`petribill --help` lists each command with the first sentence of its help, uncut,
    however wide the terminal is."""
    monkeypatch.setenv("COLUMNS", columns)
    result = invoke("--help")
    assert result.exit_code == 0
    commands = result.stdout.split("Commands:")[1]
    assert "..." not in commands
    text = " ".join(commands.split())
    for name, command in main.commands.items():
        summary = command.get_short_help_str(limit=1000)
        assert f"{name} {' '.join(summary.split())}" in text


def test_reader_rejects_count_as_unreadable_whatever_their_service(tmp_path: Path) -> None:
    """A voice line with a bad duration counts under `unreadable`, not `voice` (README)."""
    calls = tmp_path / "calls.csv"
    calls.write_text(MAX_COST_CALLS + "mc:bad,voice,4915100000001,1793696400,030 2123456,-5\n")
    _, summary = rate_jsonl_of(calls)
    assert summary["by_service"]["voice"]["received"] == 3
    assert summary["by_service"]["unreadable"] == {
        "received": 1, "rated": 0, "rejected": 1, "duplicates": 0, "amount": {}
    }  # fmt: skip
