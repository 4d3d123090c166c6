"""Loading the tariff catalogue: the sample loads, and bad input is named by file and key."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from billing.rated import RatedRecord
from billing.rating import load_catalogue, rate
from billing.records import Service, UsageRecord
from billing.tariffs import TariffError

SAMPLE = Path(__file__).resolve().parent.parent / "conf" / "tariffs"


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """A private copy of the sample catalogue to break."""
    target = tmp_path / "tariffs"
    shutil.copytree(SAMPLE, target)
    return target


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, count))


def load_error(folder: Path) -> str:
    with pytest.raises(TariffError) as caught:
        load_catalogue(folder)
    return str(caught.value)


def test_sample_catalogue_loads() -> None:
    """The shipped catalogue has both plans, hundreds of prefixes, bundles and content."""
    catalogue = load_catalogue(SAMPLE)
    assert set(catalogue.plans) >= {"smart", "business"} and catalogue.default_plan == "smart"
    assert len(catalogue.prefixes) > 300
    business = catalogue.plans["business"].versions[0]
    assert business.monthly_fee == 29_000_000 and business.currency == "EUR"
    assert [b.unit for b in business.bundles] == ["seconds", "messages", "bytes"]
    assert business.bundles[0].covers("voice.roaming") and not business.bundles[1].covers("voice.x")
    assert catalogue.sponsor_for("data.rg20") is not None
    assert catalogue.destination_of("18765551234") is not None
    assert catalogue.destination_of("18765551234").destination_id == "JM"  # type: ignore[union-attr]


def test_unknown_time_zone(folder: Path) -> None:
    """An unknown zone names the file and the key path."""
    edit(
        folder / "catalogue.toml",
        'timezone = "Europe/Berlin"\nbands',
        'timezone = "Mars/Olympus"\nbands',
    )
    message = load_error(folder)
    assert (
        "catalogue.toml: timebands.standard.timezone: unknown time zone 'Mars/Olympus'" in message
    )


def test_overlapping_plan_versions(folder: Path) -> None:
    """Two versions of one plan valid at the same moment are refused, naming both."""
    edit(
        folder / "plans.toml",
        "valid_from = 2026-01-01\npayment_mode",
        "valid_from = 2025-06-01\npayment_mode",
    )
    message = load_error(folder)
    assert "plans.toml: plans.smart.versions[1].valid_from: overlaps version 0 '2025'" in message
    assert "(2025-01-01..2026-01-01)" in message


def test_prefix_that_does_not_parse_in_csv(folder: Path) -> None:
    """A prefix with a letter in a CSV names the file and the line."""
    edit(folder / "prefixes" / "international.csv", "\n33,FR,", "\n3x3,FR,")
    message = load_error(folder)
    assert "international.csv: line " in message and "'3x3' is not 1..15 digits" in message


def test_prefix_that_does_not_parse_in_toml(folder: Path) -> None:
    """An unquoted or non-digit prefix in TOML names the array element."""
    edit(folder / "destinations.toml", '"49150", ', '"+49150", ')
    message = load_error(folder)
    assert "destinations.toml: destinations.DE-mobile.prefixes[0]: prefix '+49150'" in message


def test_duplicate_prefix(folder: Path) -> None:
    """The same prefix twice is an error naming where it was first defined."""
    edit(folder / "destinations.toml", 'prefixes = ["49800"]', 'prefixes = ["49800", "4930"]')
    message = load_error(folder)
    assert "destinations.DE-freephone.prefixes[1]: prefix 4930 already defined at" in message


def test_bad_rounding_mode(folder: Path) -> None:
    """An unknown rounding mode lists the valid ones."""
    edit(
        folder / "rates.toml",
        'rounding = "half_up"\ndecimals = 4',
        'rounding = "bankers"\ndecimals = 4',
    )
    message = load_error(folder)
    assert "rates.toml: rates.V_MOBILE_PEAK.rounding: unknown rounding mode 'bankers'" in message
    assert "half_even" in message


def test_missing_key(folder: Path) -> None:
    """A rate without tiers says which key is missing."""
    edit(
        folder / "rates.toml",
        'tiers = [{ start = 0, price = "0.05", rate_unit = 60, increment = 60 }]\n',
        "",
    )
    assert "rates.toml: rates.V_LOCAL_PEAK.tiers: missing required key" in load_error(folder)


def test_float_amount_is_refused(folder: Path) -> None:
    """Prices are quoted decimals; a TOML float is inexact and refused."""
    edit(folder / "rates.toml", 'price = "0.05", rate_unit = 60', "price = 0.05, rate_unit = 60")
    assert "rates.V_LOCAL_PEAK.tiers[0].price: write amounts as quoted decimals" in load_error(
        folder
    )


def test_misspelt_key(folder: Path) -> None:
    """An unknown key is an error rather than silently ignored."""
    edit(
        folder / "rates.toml",
        "rate_unit = 60, increment = 60 }]\n\n[rates.V_LOCAL_OFF",
        "rate_unit = 60, incremnet = 60 }]\n\n[rates.V_LOCAL_OFF",
    )
    assert "rates.V_LOCAL_PEAK.tiers[0].incremnet: unknown key" in load_error(folder)


def test_tier_width_must_fit_increments(folder: Path) -> None:
    """A 30 s first tier billed per minute would overbill into the next tier: refused."""
    edit(
        folder / "rates.toml",
        '{ start = 0, price = "0.04", rate_unit = 60, increment = 30 }',
        '{ start = 0, price = "0.04", rate_unit = 60, increment = 60 }',
    )
    assert (
        "rates.V_NATIONAL_OFFPEAK.tiers[0].increment: tier width 30 is not a multiple"
        in load_error(folder)
    )


def test_bad_cel_condition(folder: Path) -> None:
    """A CEL expression that does not parse, or reads an unknown variable, is a load error."""
    edit(
        folder / "plans.toml",
        'when = "roaming", rate = "V_ROAMING"',
        'when = "roaming &&", rate = "V_ROAMING"',
    )
    assert "plans.smart.versions[0].voice[0].when: not a valid CEL expression" in load_error(folder)
    edit(folder / "plans.toml", 'when = "roaming &&"', "when = \"msisdn == '1'\"")
    assert "voice[0].when: unknown variable 'msisdn'" in load_error(folder)


def test_unknown_references(folder: Path) -> None:
    """Rules naming a rate, group or band that does not exist are refused."""
    edit(
        folder / "plans.toml",
        '{ group = "premium", rate = "V_PREMIUM" }',
        '{ group = "premum", rate = "V_PREMIUM" }',
    )
    assert (
        "plans.smart.versions[0].voice[2].group: unknown destination group 'premum'"
        in load_error(folder)
    )


def test_unknown_section_and_invalid_toml(folder: Path) -> None:
    """A stray section or a syntax error names the file."""
    (folder / "extra.toml").write_text("[ratez.X]\nfoo = 1\n")
    assert "extra.toml: ratez: unknown section" in load_error(folder)
    (folder / "extra.toml").write_text("[rates.X\n")
    assert "extra.toml: not valid TOML" in load_error(folder)


def test_week_must_be_covered(folder: Path) -> None:
    """A band set with a hole in the week is refused, naming the first uncovered minute."""
    edit(folder / "catalogue.toml", '  { id = "offpeak" },\n', "")
    assert "timebands.standard.bands: no band covers mon 00:00" in load_error(folder)


def test_thirty_thousand_prefixes_load_and_match(folder: Path) -> None:
    """A 30,000-line prefix file loads and every number finds its own longest prefix."""
    rng = random.Random(5)
    prefixes: set[str] = set()
    while len(prefixes) < 30_000:
        prefixes.add("8" + str(rng.randrange(10**6, 10**7)))  # 8 digits, all under 8..
    lines = ["prefix,destination,group"] + [f"{p},X{p},bulk" for p in sorted(prefixes)]
    lines.append("8,X8,bulk")  # a catch-all parent of them all
    (folder / "prefixes" / "bulk.csv").write_text("\n".join(lines) + "\n")
    edit(
        folder / "catalogue.toml",
        'prefix_files = ["prefixes/international.csv"]',
        'prefix_files = ["prefixes/international.csv", "prefixes/bulk.csv"]',
    )
    edit(
        folder / "plans.toml",
        '{ group = "international_z4", rate = "V_INT_Z4" },',
        '{ group = "international_z4", rate = "V_INT_Z4" },\n'
        '  { group = "bulk", rate = "V_INT_Z4" },',
        count=-1,
    )
    catalogue = load_catalogue(folder)
    assert len(catalogue.prefixes) > 30_000
    for prefix in rng.sample(sorted(prefixes), 500):
        found = catalogue.destination_of(prefix + "4321")
        assert found is not None and found.destination_id == f"X{prefix}"
    parent = catalogue.destination_of("8000000")
    assert parent is not None and parent.destination_id == "X8"
    record = UsageRecord(
        record_id="t:bulk",
        service=Service.VOICE,
        served_msisdn="1",
        record_opening_time_s=1_770_000_000,
        called_number=next(iter(prefixes)) + "99",
        duration_s=60,
    )
    outcome = rate(record, catalogue, "smart")
    assert isinstance(outcome, RatedRecord) and outcome.usage_class == "voice.bulk"
