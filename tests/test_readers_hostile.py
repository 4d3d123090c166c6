"""Hostile input to the readers: each bad line is a clear reject, never a crash; memory bounded."""

from __future__ import annotations

import io
import json
import tracemalloc
from pathlib import Path

import pytest

from billing.readers import (
    RAW_KEPT_CHARS_MAX,
    Reject,
    RejectCode,
    parse_csv,
    parse_jsonl,
    read_lines,
    read_records,
)
from billing.records import UsageRecord

GOOD = {
    "record_id": "msc01:1",
    "service": "voice",
    "served_msisdn": "4915100000001",
    "record_opening_time": 1793696400,
    "called_number": "4930212345",
    "duration_s": 5,
}
GOOD_LINE = json.dumps(GOOD).encode()


def jsonl(data: bytes, max_line_bytes: int = 65536) -> list[UsageRecord | Reject]:
    lines = read_lines(io.BytesIO(data), max_line_bytes=max_line_bytes)
    return list(parse_jsonl(lines, source="h.jsonl"))


def codes(items: list[UsageRecord | Reject]) -> list[str]:
    return ["ok" if isinstance(item, UsageRecord) else item.code for item in items]


def test_overlong_line_is_skipped_and_reading_goes_on() -> None:
    """A line past max_line_bytes is one line_too_long reject; the lines after it still read."""
    data = GOOD_LINE + b"\n" + b"x" * 10_000 + b"\n" + GOOD_LINE + b"\n"
    items = jsonl(data, max_line_bytes=1000)
    assert codes(items) == ["ok", RejectCode.LINE_TOO_LONG, "ok"]
    reject = items[1]
    assert isinstance(reject, Reject)
    assert reject.line == 2 and reject.raw_truncated and len(reject.raw) <= 1000
    assert [item.source_line for item in items if isinstance(item, UsageRecord)] == [1, 3]


def test_read_lines_never_holds_an_overlong_line_whole() -> None:
    """read_lines reads an overlong line in chunks of at most max_line_bytes + 1."""

    class Spy(io.BytesIO):
        largest = 0

        def readline(self, size: int | None = -1) -> bytes:
            chunk = super().readline(size)
            Spy.largest = max(Spy.largest, len(chunk))
            return chunk

    lines = list(read_lines(Spy(b"y" * 1_000_000 + b"\nok\n"), max_line_bytes=4096))
    assert [(line.number, line.overlong) for line in lines] == [(1, True), (2, False)]
    assert lines[1].data == b"ok"
    assert Spy.largest <= 4097


def test_overlong_last_line_without_newline() -> None:
    """An overlong final line without a line ending is still one reject."""
    items = jsonl(GOOD_LINE + b"\n" + b"z" * 5000, max_line_bytes=1000)
    assert codes(items) == ["ok", RejectCode.LINE_TOO_LONG]


@pytest.mark.parametrize(
    "bad",
    [
        b'{"record_id":"msc01:\xff\xfe"}',
        '{"record_id":"caf\u00e9"}'.encode("latin-1"),
        '{"record_id":"x"}'.encode("utf-16"),
    ],
)
def test_wrong_encoding_is_a_reject_with_escaped_raw(bad: bytes) -> None:
    """Bytes that are not UTF-8 give bad_encoding, with the raw line kept as escapes."""
    items = jsonl(GOOD_LINE + b"\n" + bad + b"\n" + GOOD_LINE)
    assert codes(items) == ["ok", RejectCode.BAD_ENCODING, "ok"]
    reject = items[1]
    assert isinstance(reject, Reject) and "\\x" in reject.raw and "UTF-8" in reject.message


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"[" * 50_000 + b"]" * 50_000, RejectCode.BAD_SYNTAX),
        (b'{"a":' * 30_000 + b"1" + b"}" * 30_000, RejectCode.BAD_SYNTAX),
        (
            GOOD_LINE.replace(b'"duration_s": 5', b'"duration_s": ' + b"9" * 50_000),
            RejectCode.OUT_OF_RANGE,
        ),
        (GOOD_LINE.replace(b'"duration_s": 5', b'"duration_s": 1e999999'), RejectCode.BAD_VALUE),
        (b'{"record_id":"a:1","duration_s":Infinity}', RejectCode.BAD_SYNTAX),
        (b"\x00\x00\x00", RejectCode.BAD_SYNTAX),
        (b'"just a string"', RejectCode.BAD_SYNTAX),
        (b"null", RejectCode.BAD_SYNTAX),
    ],
)
def test_hostile_json_is_a_reject(line: bytes, code: RejectCode) -> None:
    """Deep nesting, huge numbers, NaN/Infinity, NUL bytes and non-objects are rejects."""
    items = jsonl(line + b"\n" + GOOD_LINE, max_line_bytes=200_000)
    assert codes(items) == [code, "ok"], items[0]


def test_huge_integer_in_a_field_says_out_of_range() -> None:
    """A 50 000-digit duration is out_of_range, and the message stays short."""
    data = json.dumps({**GOOD, "duration_s": 0}).replace(": 0", ": " + "9" * 50_000)
    (reject,) = jsonl(data.encode(), max_line_bytes=200_000)
    assert isinstance(reject, Reject) and reject.field == "duration_s"
    assert len(reject.message) < 200
    assert len(reject.raw) <= RAW_KEPT_CHARS_MAX and reject.raw_truncated


@pytest.mark.parametrize(
    "cell",
    ["NaN", "inf", "-inf", "1e3", "0x10", "٣", "1_000", " ", "9" * 25, "5.0"],
)
def test_csv_integers_accept_only_plain_digits(cell: str) -> None:
    """NaN, inf, exponents, underscores, non-ASCII digits and huge values are not durations."""
    data = (
        "record_id,service,served_msisdn,record_opening_time,called_number,duration_s\n"
        f"msc01:1,voice,4915100000001,1793696400,4930212345,{cell}\n"
    ).encode()
    (item,) = list(parse_csv(read_lines(io.BytesIO(data)), source="h.csv"))
    if cell.strip() == "":
        assert isinstance(item, Reject) and item.code is RejectCode.MISSING_FIELD
    else:
        assert isinstance(item, Reject) and item.field == "duration_s", item
        assert item.code in (RejectCode.BAD_VALUE, RejectCode.OUT_OF_RANGE)


def test_unknown_services_and_control_characters_are_rejects() -> None:
    """Unknown services and ids with control characters are named in the reject."""
    lines = [
        json.dumps({**GOOD, "service": "fax"}),
        json.dumps({**GOOD, "record_id": "msc01:\u0000\u0007"}),
        json.dumps({**GOOD, "record_id": "msc01:" + "a" * 200}),
        json.dumps({**GOOD, "called_number": "\u0663\u0660\u0661\u0662"}),
    ]
    items = jsonl("\n".join(lines).encode())
    assert codes(items) == [
        RejectCode.UNKNOWN_SERVICE,
        RejectCode.BAD_VALUE,
        RejectCode.BAD_VALUE,
        RejectCode.BAD_NUMBER,
    ]


def test_empty_and_header_only_files_give_nothing(tmp_path: Path) -> None:
    """An empty file, or a CSV with only a header, yields no items."""
    (tmp_path / "e.jsonl").write_bytes(b"")
    (tmp_path / "h.csv").write_bytes(b"record_id,service,served_msisdn,record_opening_time\n")
    assert list(read_records(tmp_path / "e.jsonl")) == []
    assert list(read_records(tmp_path / "h.csv")) == []


def test_unreadable_csv_header_rejects_every_line() -> None:
    """A header that is not UTF-8 rejects itself and each line after it."""
    data = b"record_id,\xff\n" + b"a:1,voice\n" * 2
    items = list(parse_csv(read_lines(io.BytesIO(data)), source="h.csv"))
    assert codes(items) == [RejectCode.BAD_ENCODING, RejectCode.BAD_HEADER, RejectCode.BAD_HEADER]


def test_large_files_stream_in_bounded_memory(tmp_path: Path) -> None:
    """read_records is lazy: memory stays flat however many lines the file has."""
    path = tmp_path / "big.jsonl"
    lines = 30_000
    with path.open("wb") as out:
        for index in range(lines):
            out.write(GOOD_LINE.replace(b"msc01:1", f"msc01:{index}".encode()) + b"\n")
    assert path.stat().st_size > 4_000_000
    tracemalloc.start()
    try:
        count = sum(1 for item in read_records(path) if isinstance(item, UsageRecord))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == lines
    assert peak < 1_000_000, f"peak {peak} bytes for a {path.stat().st_size}-byte file"


# One line per service, each carrying the integer fields its service allows.
_BY_FIELD = {
    "duration_s": GOOD,
    "record_opening_time": GOOD,
    "sms_count": {**GOOD, "service": "sms", "duration_s": None, "sms_count": 2},
    **{
        name: {
            **GOOD,
            "service": "data",
            "called_number": None,
            "duration_s": None,
            "uplink_bytes": 1,
            "downlink_bytes": 2,
            "rating_group": 10,
        }
        for name in ("uplink_bytes", "downlink_bytes", "rating_group")
    },
}


def _in_three_forms(
    fields: dict[str, object], name: str, digits: str
) -> list[Reject | UsageRecord]:
    """``fields`` with ``name`` = ``digits``: a CSV cell, a JSON integer, a JSON string."""
    given = {key: value for key, value in fields.items() if value is not None}
    given[name] = "@@"
    header = ",".join(given)
    cells = ",".join(str(value) for value in given.values()).replace("@@", digits)
    csv_items = list(
        parse_csv(read_lines(io.BytesIO(f"{header}\n{cells}\n".encode())), source="h.csv")
    )
    as_json = json.dumps(given)
    lines = [as_json.replace('"@@"', digits), as_json.replace("@@", digits)]
    data = "\n".join(lines).encode()
    return csv_items + jsonl(data, max_line_bytes=200_000)


@pytest.mark.parametrize("name", sorted(_BY_FIELD))
@pytest.mark.parametrize(
    "digits", ["1" + "0" * 30, "9" * 21, "9" * 5_000], ids=["10^30", "21 nines", "5000 digits"]
)
def test_huge_numbers_are_out_of_range_in_both_formats(name: str, digits: str) -> None:
    """10^30 (and 5 000 digits) in an integer field is out_of_range naming the field, alike
    as a CSV cell, a JSON integer and a JSON string of digits (docs/cdr-format.md)."""
    items = _in_three_forms(_BY_FIELD[name], name, digits)
    assert len(items) == 3
    for item in items:
        assert isinstance(item, Reject), item
        assert (item.code, item.field) == (RejectCode.OUT_OF_RANGE, name), item
        assert len(item.message) < 200


@pytest.mark.parametrize("name", sorted(set(_BY_FIELD) - {"record_opening_time"}))
def test_leading_zeros_do_not_make_a_number_huge(name: str) -> None:
    """Digits with 30 leading zeros are the number they write, in CSV and as a JSON string."""
    items = _in_three_forms(_BY_FIELD[name], name, "0" * 30 + "7")
    csv_item, _json_integer, json_string = items  # 00…07 is not a JSON integer
    for item in (csv_item, json_string):
        assert isinstance(item, UsageRecord), item
        assert getattr(item, name) == 7
