"""The CSV and JSON Lines readers: schema, normalisation, and one reject per bad line."""

from __future__ import annotations

import dataclasses
import io
import json
import re
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from billing.rated import RejectReason
from billing.readers import (
    FIELDS,
    FieldError,
    Reject,
    RejectCode,
    UnsupportedFormatError,
    normalise_number,
    parse_csv,
    parse_jsonl,
    parse_opening_time,
    read_lines,
    read_records,
)
from billing.records import Service, UsageRecord

HEADER = (
    "record_id,service,served_msisdn,record_opening_time,called_number,duration_s,"
    "sms_count,uplink_bytes,downlink_bytes,rating_group,content_item_id,roaming"
)
# 2026-11-03T10:00:00+01:00
T0 = 1_793_696_400


def csv_items(*lines: str, **options: str) -> list[UsageRecord | Reject]:
    data = "\n".join((HEADER, *lines)).encode()
    return list(parse_csv(read_lines(io.BytesIO(data)), source="t.csv", **options))


def jsonl_items(*lines: str | dict[str, object]) -> list[UsageRecord | Reject]:
    texts = [line if isinstance(line, str) else json.dumps(line) for line in lines]
    data = "\n".join(texts).encode()
    return list(parse_jsonl(read_lines(io.BytesIO(data)), source="t.jsonl"))


def only_records(items: list[UsageRecord | Reject]) -> list[UsageRecord]:
    records = [item for item in items if isinstance(item, UsageRecord)]
    assert len(records) == len(items), items
    return records


def unplaced(record: UsageRecord) -> UsageRecord:
    return dataclasses.replace(record, source_file=None, source_line=None)


def only_reject(items: list[UsageRecord | Reject]) -> Reject:
    assert len(items) == 1 and isinstance(items[0], Reject), items
    return items[0]


VOICE = "msc01:1,voice,+4915100000001,2026-11-03T10:00:00+01:00,030 2123456,65,,,,,,false"
VOICE_JSON: dict[str, object] = {
    "record_id": "msc01:1",
    "service": "voice",
    "served_msisdn": "+4915100000001",
    "record_opening_time": "2026-11-03T10:00:00+01:00",
    "called_number": "030 2123456",
    "duration_s": 65,
    "roaming": False,
}


def test_voice_line_is_read_and_normalised() -> None:
    """A good voice line gives a record with E.164 numbers, UTC epoch seconds and provenance."""
    (record,) = csv_items(VOICE)
    assert record == UsageRecord(
        record_id="msc01:1",
        service=Service.VOICE,
        served_msisdn="4915100000001",
        record_opening_time_s=T0,
        called_number="49302123456",
        duration_s=65,
        source_file="t.csv",
        source_line=2,
    )


def test_every_service_reads_in_both_formats_identically() -> None:
    """Identical content gives identical records from CSV and JSON Lines, bar provenance."""
    csv_lines = [
        VOICE,
        "smsc01:1,sms,4915100000001,1793696400,+447700900123,,2,,,,,",
        "pgw01:1,data,4915100000001,2026-11-03T09:00:00Z,,,,1048576,20971520,10,,TRUE",
        "cms01:1,content,4915100000001,2026-11-03T09:00:00Z,,,,,,20,news-day-pass,",
    ]
    json_lines: list[str | dict[str, object]] = [
        VOICE_JSON,
        {
            "record_id": "smsc01:1",
            "service": "sms",
            "served_msisdn": "4915100000001",
            "record_opening_time": T0,
            "called_number": "+447700900123",
            "sms_count": 2,
        },
        {
            "record_id": "pgw01:1",
            "service": "data",
            "served_msisdn": "4915100000001",
            "record_opening_time": "2026-11-03T09:00:00Z",
            "uplink_bytes": 1048576,
            "downlink_bytes": 20971520,
            "rating_group": 10,
            "roaming": True,
        },
        {
            "record_id": "cms01:1",
            "service": "content",
            "served_msisdn": "4915100000001",
            "record_opening_time": "2026-11-03T09:00:00Z",
            "content_item_id": "news-day-pass",
            "rating_group": 20,
            "called_number": None,
        },
    ]
    from_csv = only_records(csv_items(*csv_lines))
    from_json = only_records(jsonl_items(*json_lines))
    assert [unplaced(r) for r in from_csv] == [unplaced(r) for r in from_json]
    assert [r.units for r in from_csv] == [65, 2, 1048576 + 20971520, 1]


def test_a_file_carries_every_field_of_a_record_but_its_provenance() -> None:
    """The columns (JSON keys) are the record's id and content fields, under the record's
    names but for the opening time, which a file writes without a unit."""
    record_fields = [f.name for f in dataclasses.fields(UsageRecord)]
    assert [c.replace("record_opening_time", "record_opening_time_s") for c in FIELDS] == [
        name for name in record_fields if name not in ("source_file", "source_line")
    ]


def test_json_values_may_be_written_as_their_csv_text() -> None:
    """JSON integers may be digit strings (proto3's JSON form of int64), flags 'true'/'false'."""
    as_text = {**VOICE_JSON, "duration_s": "65", "roaming": "false"}
    assert jsonl_items(as_text) == jsonl_items(VOICE_JSON)


def test_sms_without_count_is_one_message() -> None:
    """An SMS record without sms_count counts as one message."""
    (record,) = csv_items("smsc01:2,sms,4915100000001,1793696400,0301234567,,,,,,,")
    assert isinstance(record, UsageRecord) and record.sms_count == 1


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("+49 30 2123456", "49302123456"),
        ("0049302123456", "49302123456"),
        ("030 2123456", "49302123456"),
        ("030-212/3456", "49302123456"),
        ("4915100000001", "4915100000001"),
        ("0900 1234567", "499001234567"),
        ("+1 212 5550100", "12125550100"),
        ("112", "112"),
    ],
)
def test_numbers_normalise_to_e164(written: str, expected: str) -> None:
    """International, 00-prefixed and national numbers all become E.164 digits without '+'."""
    assert normalise_number(written) == expected


def test_national_numbers_use_the_configured_country_code() -> None:
    """A national number takes the default country code the caller configured."""
    assert normalise_number("020 7946 0000", default_country_code="44") == "442079460000"
    (record,) = csv_items(VOICE, default_country_code="33")
    assert isinstance(record, UsageRecord)
    assert record.called_number == "33302123456"


@pytest.mark.parametrize("written", ["+49 30 CALL-ME", "+0301234", "0001234", "12", "1" * 16, ""])
def test_bad_numbers_are_refused(written: str) -> None:
    """Letters, a missing country code, and lengths outside 3..15 digits are bad numbers."""
    with pytest.raises(FieldError) as caught:
        normalise_number(written)
    assert caught.value.code is RejectCode.BAD_NUMBER


@pytest.mark.parametrize(
    "written",
    [
        "2026-11-03T10:00:00+01:00",
        "2026-11-03T09:00:00Z",
        "2026-11-03 10:00:00+0100",
        "2026-11-03T09:00:00.999Z",
        "1793696400",
        1793696400,
    ],
)
def test_times_normalise_to_epoch_seconds(written: str | int) -> None:
    """ISO 8601 with offset or Z, and epoch seconds, give the same UTC instant."""
    assert parse_opening_time(written) == T0


@pytest.mark.parametrize(
    ("written", "hint"),
    [("1793696400000", "milliseconds"), (1793696400000, "milliseconds"), ("9" * 60, "2099")],
)
def test_epoch_milliseconds_and_huge_epochs_are_out_of_range(written: str | int, hint: str) -> None:
    """An epoch in milliseconds (named as such), or a huge one, is out_of_range, not a crash."""
    with pytest.raises(FieldError, match=hint) as caught:
        parse_opening_time(written)
    assert caught.value.code is RejectCode.OUT_OF_RANGE


def test_naive_time_is_read_in_a_configured_zone() -> None:
    """With naive_time_zone set, a time without offset is local time in that zone."""
    zone = _zone("Europe/Berlin")
    assert parse_opening_time("2026-11-03T10:00:00", naive_zone=zone) == T0
    # Summer time: Berlin is UTC+2 in July.
    assert parse_opening_time("2026-07-01T12:00:00", naive_zone=zone) == parse_opening_time(
        "2026-07-01T10:00:00Z"
    )


@pytest.mark.parametrize(
    ("written", "word"),
    [("2026-03-29T02:30:00", "does not exist"), ("2026-10-25T02:30:00", "is ambiguous")],
)
def test_daylight_saving_gaps_and_repeats_are_refused(written: str, word: str) -> None:
    """A local time skipped or repeated by a clock change cannot be placed, so it is refused."""
    with pytest.raises(FieldError, match=word) as caught:
        parse_opening_time(written, naive_zone=_zone("Europe/Berlin"))
    assert caught.value.code is RejectCode.BAD_TIME


def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


BAD_CSV_LINES = [
    # (line, code, field, message fragment)
    (
        "msc01:2,voice,4915100000001,2026-11-03T10:00:00+01:00,0301234567,-5,,,,,,",
        RejectCode.BAD_VALUE,
        "duration_s",
        "line 3: duration_s: must be a non-negative integer, got '-5'",
    ),
    (
        "msc01:3,voice,4915100000001,2026-11-03T10:00:00,0301234567,5,,,,,,",
        RejectCode.NAIVE_TIME,
        "record_opening_time",
        "has no UTC offset",
    ),
    (
        "msc01:4,voice,4915100000001,yesterday noon,0301234567,5,,,,,,",
        RejectCode.BAD_TIME,
        "record_opening_time",
        "ISO 8601",
    ),
    (
        "msc01:5,voice,4915100000001,1990-01-01T00:00:00Z,0301234567,5,,,,,,",
        RejectCode.OUT_OF_RANGE,
        "record_opening_time",
        "2000 to 2099",
    ),
    (
        "msc01:6,video,4915100000001,1793696400,0301234567,5,,,,,,",
        RejectCode.UNKNOWN_SERVICE,
        "service",
        "got 'video'",
    ),
    (
        "msc01:7,voice,4915100000001,1793696400,,5,,,,,,",
        RejectCode.MISSING_FIELD,
        "called_number",
        "is required for voice records",
    ),
    (
        ",voice,4915100000001,1793696400,0301234567,5,,,,,,",
        RejectCode.MISSING_FIELD,
        "record_id",
        "record_id: is required",
    ),
    (
        "no-colon,voice,4915100000001,1793696400,0301234567,5,,,,,,",
        RejectCode.BAD_VALUE,
        "record_id",
        "'<source>:<id>'",
    ),
    (
        "msc01:8,voice,4915100000001,1793696400,0301234567,5,,100,,,,",
        RejectCode.FIELD_NOT_ALLOWED,
        "uplink_bytes",
        "is not a field of voice records",
    ),
    (
        "msc01:9,voice,4915100000001,1793696400,0301234567,5,,,,,",
        RejectCode.FIELD_COUNT,
        None,
        "has 11 fields, the header has 12",
    ),
    (
        'msc01:10,voice,"4915100000001,1793696400,0301234567,5,,,,,,',
        RejectCode.BAD_SYNTAX,
        None,
        "not valid CSV",
    ),
    (
        "msc01:11,voice,4915100000001,1793696400,0301234567,9999999,,,,,,",
        RejectCode.OUT_OF_RANGE,
        "duration_s",
        "must be from 0 to 2678400",
    ),
    (
        "msc01:12,voice,4915100000001,1793696400,0301234567,5,,,,,,maybe",
        RejectCode.BAD_VALUE,
        "roaming",
        "must be true or false",
    ),
    (
        "msc01:13,voice,49151 CALL,1793696400,0301234567,5,,,,,,",
        RejectCode.BAD_NUMBER,
        "served_msisdn",
        "must be a phone number",
    ),
    (
        "pgw01:1,data,4915100000001,1793696400,,,,10,20,4294967296,,",
        RejectCode.OUT_OF_RANGE,
        "rating_group",
        "4294967295",
    ),
    (
        "smsc01:1,sms,4915100000001,1793696400,0301234567,,0,,,,,",
        RejectCode.OUT_OF_RANGE,
        "sms_count",
        "from 1 to 255",
    ),
]


def test_each_bad_line_is_a_reject_with_its_line_number_and_the_rest_go_on() -> None:
    """Every bad line gives a malformed reject naming line and field; good lines around it read."""
    lines = []
    for bad, *_ in BAD_CSV_LINES:
        lines += [VOICE, bad]
    lines.append(VOICE)
    items = csv_items(*lines)
    assert len(items) == len(lines)
    rejects = items[1::2]
    assert all(isinstance(item, UsageRecord) for item in items[0::2])
    for number, (reject, (bad, code, field, fragment)) in enumerate(
        zip(rejects, BAD_CSV_LINES, strict=True)
    ):
        assert isinstance(reject, Reject), bad
        line = 3 + 2 * number
        assert (reject.line, reject.code, reject.field) == (line, code, field), reject.message
        assert reject.message.startswith(f"line {line}: ")
        assert fragment in reject.message
        assert reject.reason is RejectReason.MALFORMED
        assert reject.raw == bad
        assert reject.source_file == "t.csv"


def test_reject_keeps_the_record_id_when_it_was_readable() -> None:
    """A reject names the record_id when it parsed, so the sender can find the record."""
    reject = only_reject(csv_items(BAD_CSV_LINES[0][0]))
    assert reject.record_id == "msc01:2"
    assert only_reject(csv_items(BAD_CSV_LINES[6][0])).record_id is None


@pytest.mark.parametrize(
    ("line", "code", "fragment"),
    [
        ('{"record_id":"a:1","duration_s":NaN}', RejectCode.BAD_SYNTAX, "NaN"),
        ('{"record_id":"a:1","duration_s":-Infinity}', RejectCode.BAD_SYNTAX, "Infinity"),
        ('{"record_id":"a:1"', RejectCode.BAD_SYNTAX, "not valid JSON"),
        ("[1, 2]", RejectCode.BAD_SYNTAX, "must be a JSON object"),
        ('{"record_id":"a:1","record_id":"a:2"}', RejectCode.DUPLICATE_FIELD, "appears twice"),
        ('{"record_id":"a:1","apn":"internet"}', RejectCode.UNKNOWN_FIELD, "unknown key 'apn'"),
    ],
)
def test_json_syntax_problems_are_rejects(line: str, code: RejectCode, fragment: str) -> None:
    """Broken JSON, NaN/Infinity, non-objects, repeated and unknown keys are rejects."""
    reject = only_reject(jsonl_items(line))
    assert reject.code is code and fragment in reject.message


@pytest.mark.parametrize(
    ("change", "code", "field"),
    [
        ({"duration_s": 60.0}, RejectCode.BAD_VALUE, "duration_s"),
        ({"duration_s": "-60"}, RejectCode.BAD_VALUE, "duration_s"),
        ({"duration_s": True}, RejectCode.BAD_VALUE, "duration_s"),
        ({"duration_s": 10**40}, RejectCode.OUT_OF_RANGE, "duration_s"),
        ({"duration_s": 1e400}, RejectCode.BAD_VALUE, "duration_s"),
        ({"called_number": 4930123456}, RejectCode.BAD_VALUE, "called_number"),
        ({"roaming": "yes please"}, RejectCode.BAD_VALUE, "roaming"),
        ({"record_opening_time": 17.5}, RejectCode.BAD_TIME, "record_opening_time"),
        ({"record_opening_time": True}, RejectCode.BAD_TIME, "record_opening_time"),
        ({"service": ["voice"]}, RejectCode.BAD_VALUE, "service"),
        ({"served_msisdn": None}, RejectCode.MISSING_FIELD, "served_msisdn"),
    ],
)
def test_json_value_problems_name_the_field(
    change: dict[str, object], code: RejectCode, field: str
) -> None:
    """Wrong JSON types and out-of-range values are rejects that name the field."""
    text = json.dumps({**VOICE_JSON, **change}).replace("Infinity", "1e400")
    reject = only_reject(jsonl_items(text))
    assert (reject.code, reject.field) == (code, field), reject.message


def test_bad_csv_header_rejects_header_and_every_line() -> None:
    """An unknown header column rejects the header and each following line: none silently lost."""
    data = b"record_id,service,served_msisdn,record_opening_time,duraton_s\n" + (
        b"a:1,voice,49151,1793696400,5\n" * 3
    )
    items = list(parse_csv(read_lines(io.BytesIO(data)), source="h.csv"))
    assert [(r.line, r.code) for r in items] == [  # type: ignore[union-attr]
        (n, RejectCode.BAD_HEADER) for n in (1, 2, 3, 4)
    ]
    assert "unknown column 'duraton_s'" in items[0].message  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        ("record_id,service,served_msisdn", "missing column(s) record_opening_time"),
        ("record_id,service,served_msisdn,record_opening_time,service", "appears twice"),
    ],
)
def test_csv_header_needs_the_common_columns_once(header: str, fragment: str) -> None:
    """A header lacking a common column or repeating one is a bad header."""
    items = list(parse_csv(read_lines(io.BytesIO(header.encode() + b"\n")), source="h.csv"))
    assert only_reject(items).code is RejectCode.BAD_HEADER
    assert fragment in only_reject(items).message


def test_csv_columns_may_be_few_and_in_any_order() -> None:
    """A header with only the needed columns, in any order, reads fine; blank lines are skipped."""
    data = b"\xef\xbb\xbfduration_s,called_number,record_opening_time,service,served_msisdn,"
    data += b"record_id\r\n"
    data += b"\r\n  \n65,030 2123456,2026-11-03T10:00:00+01:00,voice,+4915100000001,msc01:1\r\n"
    (record,) = only_records(list(parse_csv(read_lines(io.BytesIO(data)), source="t.csv")))
    (expected,) = only_records(csv_items(VOICE))
    assert record == dataclasses.replace(expected, source_line=4)


def test_read_records_chooses_the_format_by_extension(tmp_path: Path) -> None:
    """read_records reads .csv, .jsonl and .ndjson files and refuses other extensions."""
    (tmp_path / "a.csv").write_text(HEADER + "\n" + VOICE + "\n")
    (tmp_path / "b.jsonl").write_text(json.dumps(VOICE_JSON) + "\n")
    (tmp_path / "c.NDJSON").write_text(json.dumps(VOICE_JSON) + "\n")
    names = ("a.csv", "b.jsonl", "c.NDJSON")
    records = only_records([r for name in names for r in read_records(tmp_path / name)])
    assert len(records) == 3 and len({r.content_key() for r in records}) == 1
    assert records[0].source_file == str(tmp_path / "a.csv")
    with pytest.raises(UnsupportedFormatError, match="unknown CDR format"):
        read_records(tmp_path / "d.xml")


def test_bad_options_fail_at_the_call() -> None:
    """A bad country code or time zone is a ValueError when the reader is created."""
    with pytest.raises(ValueError, match="country code"):
        read_records("x.csv", default_country_code="+49")
    with pytest.raises(ValueError, match="country code"):
        read_records("x.csv", default_country_code="049")
    with pytest.raises(ValueError, match="time zone"):
        read_records("x.csv", naive_time_zone="Mars/Olympus")


def test_the_documented_examples_read_without_rejects(tmp_path: Path) -> None:
    """The CSV and JSON Lines examples in docs/cdr-format.md are valid."""
    doc = (Path(__file__).parent.parent / "docs" / "cdr-format.md").read_text()
    blocks = re.findall(r"```(csv|json)\n(.*?)```", doc, re.S)
    assert {kind for kind, _ in blocks} == {"csv", "json"}
    for index, (kind, body) in enumerate(blocks):
        path = tmp_path / f"example{index}.{'csv' if kind == 'csv' else 'jsonl'}"
        path.write_text(body)
        items = list(read_records(path))
        assert items and all(isinstance(item, UsageRecord) for item in items), items
