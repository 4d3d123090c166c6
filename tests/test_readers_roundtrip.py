"""Property: a valid record, written as CSV or JSON Lines in any allowed spelling, reads back."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from billing.readers import FIELDS, parse_csv, parse_jsonl, read_lines
from billing.records import Service, UsageRecord

COUNTRY = "49"


@st.composite
def e164(draw: st.DrawFn) -> str:
    first = draw(st.sampled_from("123456789"))
    rest = draw(st.text("0123456789", min_size=2, max_size=14))
    return first + rest


@st.composite
def records(draw: st.DrawFn) -> UsageRecord:
    service = draw(st.sampled_from(list(Service)))
    source = draw(st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8))
    local = draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1))
    common = {
        "record_id": f"{source}:{local}"[:128],
        "service": service,
        "served_msisdn": draw(e164()),
        "record_opening_time_s": draw(st.integers(946_684_800, 4_102_444_799)),
        "roaming": draw(st.booleans()),
    }
    if service is Service.VOICE:
        extra: dict[str, object] = {
            "called_number": draw(e164()),
            "duration_s": draw(st.integers(0, 31 * 86_400)),
        }
    elif service is Service.SMS:
        extra = {"called_number": draw(e164()), "sms_count": draw(st.integers(1, 255))}
    elif service is Service.DATA:
        volume = st.integers(0, 2**53 - 1)
        extra = {
            "uplink_bytes": draw(volume),
            "downlink_bytes": draw(volume),
            "rating_group": draw(st.integers(0, 2**32 - 1)),
        }
    else:
        extra = {
            "content_item_id": draw(
                st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1)
            )[:128],
            "rating_group": draw(st.none() | st.integers(0, 2**32 - 1)),
        }
    return UsageRecord(**common, **extra)  # type: ignore[arg-type]


def spell_number(draw: st.DrawFn, digits: str) -> str:
    forms = ["+" + digits, "00" + digits, digits, "+" + " ".join(digits)]
    if digits.startswith(COUNTRY) and not digits[len(COUNTRY) :].startswith("0"):
        forms.append("0" + digits[len(COUNTRY) :])
    return draw(st.sampled_from(forms))


def spell_time(draw: st.DrawFn, seconds: int) -> str | int:
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
    offset = timedelta(minutes=draw(st.integers(-12 * 4, 14 * 4)) * 15)
    local = moment.astimezone(timezone(offset))
    forms: list[str | int] = [
        seconds,
        str(seconds),
        local.isoformat(),
        moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
    ]
    return draw(st.sampled_from(forms))


def spelled(draw: st.DrawFn, record: UsageRecord) -> dict[str, object]:
    """The record's fields as a writer might spell them, absent fields left out."""
    fields: dict[str, object] = {
        "record_id": record.record_id,
        "service": record.service.value,
        "served_msisdn": spell_number(draw, record.served_msisdn),
        "record_opening_time": spell_time(draw, record.record_opening_time_s),
    }
    if record.roaming or draw(st.booleans()):
        fields["roaming"] = record.roaming
    if record.called_number is not None:
        fields["called_number"] = spell_number(draw, record.called_number)
    if record.service is Service.VOICE:
        fields["duration_s"] = record.duration_s
    if record.service is Service.SMS and (record.sms_count != 1 or draw(st.booleans())):
        fields["sms_count"] = record.sms_count
    if record.service is Service.DATA:
        fields["uplink_bytes"] = record.uplink_bytes
        fields["downlink_bytes"] = record.downlink_bytes
    if record.rating_group is not None:
        fields["rating_group"] = record.rating_group
    if record.content_item_id is not None:
        fields["content_item_id"] = record.content_item_id
    return fields


def as_csv(fields: dict[str, object]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(FIELDS)
    cells = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()}
    writer.writerow([cells.get(name, "") for name in FIELDS])
    return out.getvalue().encode()


@settings(max_examples=300, deadline=None)
@given(data=st.data(), record=records())
def test_written_record_reads_back_equal(data: st.DataObject, record: UsageRecord) -> None:
    """A valid record written to CSV and to JSON Lines reads back as the same record."""
    fields = spelled(data.draw, record)  # type: ignore[arg-type]
    (from_csv,) = parse_csv(read_lines(io.BytesIO(as_csv(fields))), source="p.csv")
    line = json.dumps(fields).encode()
    (from_json,) = parse_jsonl(read_lines(io.BytesIO(line)), source="p.jsonl")
    assert from_csv == UsageRecord(
        **{**_values(record), "source_file": "p.csv", "source_line": 2}  # type: ignore[arg-type]
    )
    assert from_json == UsageRecord(
        **{**_values(record), "source_file": "p.jsonl", "source_line": 1}  # type: ignore[arg-type]
    )


def _values(record: UsageRecord) -> dict[str, object]:
    return {name: getattr(record, name) for name in UsageRecord.__slots__}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    """Any bytes give records or rejects, one per non-blank line, and never raise."""
    for parse in (parse_csv, parse_jsonl):
        items = list(parse(read_lines(io.BytesIO(data), max_line_bytes=100), source="fuzz"))
        lines = data.split(b"\n")
        assert len(items) <= len(lines)
