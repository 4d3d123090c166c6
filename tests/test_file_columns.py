"""The columnar file reader of `petribill ingest` equals the scalar readers, line for line.

For random CSV and JSON Lines files (well-formed lines of every service, and
lines that are malformed in the ways mediation files are: missing and foreign
fields, bad numbers, ISO and out-of-range times, quotes, blank lines, bad
UTF-8, unknown and duplicate keys, a bad header), what ``read_chunks`` gives —
rejects as they are, and rows judged by the gateway's column rules
(``record_from_values``) — equals what the per-record ingest sends: the
scalar reader's rejects, and its records as the gateway judges their messages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.readers import Reject, read_records
from cluster.cli.file_columns import read_chunks
from cluster.wire import record_from_proto, record_from_values, record_to_proto

T0 = 1_700_000_000
HEADER = (
    "record_id,service,served_msisdn,record_opening_time,called_number,duration_s,sms_count,"
    "uplink_bytes,downlink_bytes,rating_group,content_item_id,roaming"
)
NAMES = HEADER.split(",")


@st.composite
def _fields(draw: st.DrawFn) -> dict[str, Any]:
    """One record's fields, mostly well-formed."""
    odd = draw(st.integers(1, 4)) == 1  # a value a reader refuses or normalises
    service = draw(st.sampled_from(["voice", "sms", "data", "content"] + ["video", ""] * odd))
    row: dict[str, Any] = {
        "record_id": draw(
            st.sampled_from(["m:1", "m:2", "m:3"] + ["bad", "", "x:" + "y" * 130] * odd)
        ),
        "service": service,
        "served_msisdn": draw(
            st.sampled_from(
                ["4915100000001", "4915100000002"]
                + ["+4915100000002", "0151 00000003", "12", "abc"] * odd
            )
        ),
        "record_opening_time": draw(
            st.sampled_from(
                [T0, T0 + 60] + [12, "2026-11-02T10:00:00Z", "2026-11-02 10:00", -1] * odd
            )
        ),
    }
    if service in ("voice", "sms"):
        row["called_number"] = draw(st.sampled_from(["4930123456"] + ["0301234567", "", "x"] * odd))
    if service == "voice":
        row["duration_s"] = draw(st.sampled_from([0, 30, 900] + [-5, 10**12, "7"] * odd))
    if service == "sms" and draw(st.booleans()):
        row["sms_count"] = draw(st.sampled_from([1, 2, 0, 300]))
    if service == "data":
        row["uplink_bytes"] = draw(st.integers(0, 10**6))
        row["downlink_bytes"] = draw(st.sampled_from([0, 5000, 10**7]))
        row["rating_group"] = draw(st.sampled_from([0, 10, 20, 2**40]))
    if service == "content":
        row["content_item_id"] = draw(st.sampled_from(["game-coins-500"] + ["bad item"] * odd))
    if odd and draw(st.integers(1, 4)) == 1:
        row[draw(st.sampled_from(["sms_count", "uplink_bytes", "content_item_id"]))] = 3
    if draw(st.integers(1, 6)) == 1:
        row["roaming"] = draw(st.sampled_from([True, False, "yes", "true"]))
    return row


def _csv_line(row: dict[str, Any], draw: st.DrawFn) -> str:
    cells = []
    for name in NAMES:
        value = row.get(name, "")
        cells.append(str(value).lower() if isinstance(value, bool) else str(value))
    odd = draw(st.integers(1, 60))
    if odd == 1:
        cells[0] = f'"{cells[0]}"'
    if odd == 2:
        cells.pop()
    if odd == 3:
        cells[2] = f" {cells[2]} "
    return ",".join(cells)


def _json_line(row: dict[str, Any], draw: st.DrawFn) -> str:
    odd = draw(st.integers(1, 60))
    if odd == 1:
        row = {**row, "colour": "red"}
    if odd == 2:
        row = {**row, "duration_s": None}
    text = json.dumps(row)
    if odd == 3:
        text = text[:-1] + ', "record_id": "m:9"}'
    if odd == 4:
        text = text[:-1]
    return text


@st.composite
def _file(draw: st.DrawFn) -> tuple[str, bytes]:
    suffix = draw(st.sampled_from([".csv", ".jsonl"]))
    lines: list[bytes] = []
    if suffix == ".csv":
        header = HEADER if draw(st.integers(1, 10)) > 1 else HEADER + ",colour"
        lines.append(header.encode())
    for _ in range(draw(st.integers(0, 30))):
        kind = draw(st.integers(1, 80))
        if kind == 1:
            lines.append(b"")
        elif kind == 2:
            lines.append(b"\xff\xfe bad bytes")
        else:
            row = draw(_fields())
            make = _csv_line if suffix == ".csv" else _json_line
            lines.append(make(row, draw).encode())
    return suffix, b"\n".join(lines) + b"\n"


def _reference(path: Path) -> list[Any]:
    """Per item, what the per-record ingest sends the gateway and how it is judged."""
    out: list[Any] = []
    for item in read_records(path):
        if isinstance(item, Reject):
            out.append(item)
        else:
            out.append(("row", item.source_line, record_from_proto(record_to_proto(item))))
    return out


def _columnar(path: Path, chunk_lines: int) -> list[Any]:
    out: list[Any] = []
    for chunk in read_chunks(path, chunk_lines=chunk_lines):
        rows = [
            ("row", row["source_line"], record_from_values(row))
            for row in chunk.records.to_pylist()
        ]
        items = rows + list(chunk.rejects)
        items.sort(key=lambda x: x[1] if isinstance(x, tuple) else x.line)
        assert chunk.items == len(items)
        out.extend(items)
    return out


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(file=_file(), chunk_lines=st.sampled_from([1, 4, 1000]))
def test_columnar_reader_equals_scalar_reader(
    tmp_path: Path, file: tuple[str, bytes], chunk_lines: int
) -> None:
    """Rejects and judged records of read_chunks equal the scalar reader's, in line order."""
    suffix, data = file
    path = tmp_path / f"cdrs{suffix}"
    path.write_bytes(data)
    assert _columnar(path, chunk_lines) == _reference(path)
