"""Generate the sample CDR files of the sample operator (Germany, +49, EUR, Europe/Berlin).

Deterministic: the same seed writes the same bytes, so the committed files can
be regenerated and diffed. Run from the repository root:

    .venv/bin/python conf/samples/generate.py

Writes voice.csv, sms.csv, data.jsonl, content.jsonl, subscribers.toml and
README.md (whose table of deliberately bad lines is produced here, so it
always matches the files).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

SEED = 20261101
HERE = Path(__file__).resolve().parent
# November 2026 is all winter time in Berlin (DST ended on 25 October).
CET = timedelta(hours=1)
MONTH_START_UTC = datetime(2026, 11, 1, tzinfo=UTC) - CET

SUBSCRIBERS = [f"49151000000{n:02d}" for n in range(1, 21)]
SMART = SUBSCRIBERS[:12]
# Two business customers, each with four lines on one account.
BUSINESS_ACCOUNTS = {"acct-biz-01": SUBSCRIBERS[12:16], "acct-biz-02": SUBSCRIBERS[16:20]}

# Called-number kinds, each with a weight and a way of writing it as a switch might.
NumberMaker = Callable[[random.Random], str]


def _digits(rng: random.Random, count: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(count))


DESTINATIONS: list[tuple[str, int, NumberMaker]] = [
    ("berlin", 25, lambda r: r.choice(["030 ", "+4930", "4930"]) + "2" + _digits(r, 7)),
    ("national", 12, lambda r: r.choice(["089", "040", "0221", "+4969"]) + "5" + _digits(r, 6)),
    ("mobile", 30, lambda r: r.choice(["0151", "0160", "0172", "+49176", "0157"]) + _digits(r, 8)),
    ("on_net", 12, lambda r: r.choice(SUBSCRIBERS)),
    ("premium", 4, lambda r: r.choice(["0900", "49900"]) + "1" + _digits(r, 6)),
    ("uk", 6, lambda r: r.choice(["+4420", "004420"]) + "7" + _digits(r, 7)),
    ("france", 5, lambda r: r.choice(["+331", "00331"]) + "4" + _digits(r, 7)),
    ("usa", 6, lambda r: r.choice(["+1212", "001415"]) + "5" + _digits(r, 6)),
]

# The items of conf/tariffs/content.toml.
CONTENT_ITEMS = [
    "game-skyrunner",
    "game-coins-500",
    "news-day-pass",
    "news-month",
    "ringtone-classic",
    "album-wintersonne",
]


@dataclass
class Sample:
    """One line to write: a record (a dict of fields) or a deliberately bad raw line."""

    time: datetime
    fields: dict[str, object]
    bad_raw: str | None = None
    why: str = ""


def _time(rng: random.Random) -> datetime:
    # Busy hours weigh more: a day of use has its peak between 8 and 20 o'clock.
    day = rng.randrange(30)
    hour = rng.choices(range(24), weights=[1] * 7 + [4] * 13 + [2] * 4)[0]
    return MONTH_START_UTC + timedelta(days=day, hours=hour, seconds=rng.randrange(3600))


def _when(rng: random.Random, moment: datetime) -> object:
    """Write a time the way different switches do: local with offset, UTC, or epoch."""
    style = rng.choices(["local", "utc", "epoch"], weights=[6, 3, 1])[0]
    if style == "local":
        return (moment + CET).replace(tzinfo=None).isoformat() + "+01:00"
    if style == "utc":
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return int(moment.timestamp())


def _destination(rng: random.Random) -> str:
    kind = rng.choices(DESTINATIONS, weights=[weight for _, weight, _ in DESTINATIONS])[0]
    return kind[2](rng)


def voice(rng: random.Random, count: int) -> list[Sample]:
    samples = []
    for _ in range(count):
        moment = _time(rng)
        duration = min(int(rng.expovariate(1 / 150)) + 3, 3600)
        fields: dict[str, object] = {
            "service": "voice",
            "served_msisdn": rng.choice(SUBSCRIBERS),
            "record_opening_time": _when(rng, moment),
            "called_number": _destination(rng),
            "duration_s": duration,
            "roaming": rng.random() < 0.03,
        }
        samples.append(Sample(moment, fields))
    return samples


def sms(rng: random.Random, count: int) -> list[Sample]:
    samples = []
    for _ in range(count):
        moment = _time(rng)
        fields: dict[str, object] = {
            "service": "sms",
            "served_msisdn": rng.choice(SUBSCRIBERS),
            "record_opening_time": _when(rng, moment),
            "called_number": _destination(rng),
            "sms_count": rng.choices([1, 2, 3], weights=[85, 10, 5])[0],
            "roaming": False,
        }
        samples.append(Sample(moment, fields))
    return samples


def data(rng: random.Random, count: int) -> list[Sample]:
    samples = []
    for _ in range(count):
        moment = _time(rng)
        group = rng.choices([10, 20], weights=[80, 20])[0]
        downlink = int(rng.lognormvariate(16, 1.5))  # median about 9 MB
        fields: dict[str, object] = {
            "service": "data",
            "served_msisdn": rng.choice(SUBSCRIBERS),
            "record_opening_time": _when(rng, moment),
            "rating_group": group,
            "uplink_bytes": downlink // rng.randint(8, 20),
            "downlink_bytes": downlink,
        }
        samples.append(Sample(moment, fields))
    return samples


def content(rng: random.Random, count: int) -> list[Sample]:
    samples = []
    for _ in range(count):
        moment = _time(rng)
        fields: dict[str, object] = {
            "service": "content",
            # Plan business does not sell content: only prepaid lines buy it.
            "served_msisdn": rng.choice(SMART),
            "record_opening_time": _when(rng, moment),
            "content_item_id": rng.choice(CONTENT_ITEMS),
        }
        samples.append(Sample(moment, fields))
    return samples


def number(samples: list[Sample], source: str) -> None:
    samples.sort(key=lambda s: s.time)
    for index, sample in enumerate(samples, start=1):
        sample.fields = {"record_id": f"{source}:{index:06d}", **sample.fields}


def bad(after: Sample, raw: str, why: str) -> Sample:
    return Sample(after.time, {}, bad_raw=raw, why=why)


def write_csv(path: Path, columns: list[str], samples: list[Sample]) -> list[tuple[int, str]]:
    lines, bad_lines = [",".join(columns)], []
    for sample in samples:
        if sample.bad_raw is not None:
            lines.append(sample.bad_raw)
            bad_lines.append((len(lines), sample.why))
            continue
        cells = []
        for column in columns:
            value = sample.fields.get(column)
            cells.append(str(value).lower() if isinstance(value, bool) else str(value))
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return bad_lines


def write_jsonl(path: Path, samples: list[Sample]) -> list[tuple[int, str]]:
    lines, bad_lines = [], []
    for sample in samples:
        if sample.bad_raw is not None:
            lines.append(sample.bad_raw)
            bad_lines.append((len(lines), sample.why))
            continue
        lines.append(json.dumps(sample.fields, separators=(",", ":")))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return bad_lines


def main() -> None:
    rng = random.Random(SEED)
    calls, texts, sessions, purchases = (
        voice(rng, 150),
        sms(rng, 60),
        data(rng, 90),
        content(rng, 25),
    )
    number(calls, "msc01")
    number(texts, "smsc01")
    number(sessions, "pgw01")
    number(purchases, "cms01")

    def line(sample: Sample, **change: object) -> str:
        fields = {**sample.fields, **change}
        return ",".join(str(v).lower() if isinstance(v, bool) else str(v) for v in fields.values())

    def jline(sample: Sample, **change: object) -> str:
        return json.dumps({**sample.fields, **change}, separators=(",", ":"))

    # The bad lines keep ids of their own so they never collide with good ones.
    c = calls
    calls[20:20] = [
        bad(
            c[20],
            line(c[20], record_id="msc01:900001", duration_s=-5),
            "duration_s is negative (bad_value)",
        )
    ]
    calls[45:45] = [
        bad(
            c[45],
            line(c[45], record_id="msc01:900002", record_opening_time="2026-11-05T09:15:00"),
            "record_opening_time has no UTC offset (naive_time)",
        )
    ]
    calls[70:70] = [
        bad(
            c[70],
            line(c[70], record_id="msc01:900003", called_number="+49 30 CALL-ME"),
            "called_number is not a phone number (bad_number)",
        )
    ]
    calls[95:95] = [
        bad(
            c[95],
            line(c[95], record_id="msc01:900004", service="video"),
            "unknown service 'video' (unknown_service)",
        )
    ]
    # A switch that resent a record: same id and content, a duplicate, not a reject.
    calls[120:120] = [Sample(c[60].time, dict(c[60].fields), why="duplicate")]
    texts[30:30] = [
        bad(
            texts[30],
            line(texts[30], record_id="smsc01:900001", called_number=""),
            "called_number missing for an sms record (missing_field)",
        )
    ]
    texts[50:50] = [
        bad(
            texts[50],
            line(texts[50], record_id="smsc01:900002") + ",extra",
            "one field more than the header (field_count)",
        )
    ]
    s = sessions
    sessions[15:15] = [
        bad(
            s[15],
            jline(s[15], record_id="pgw01:900001").replace(
                str(s[15].fields["downlink_bytes"]), "NaN"
            ),
            "downlink_bytes is NaN (bad_syntax)",
        )
    ]
    sessions[40:40] = [
        bad(
            s[40],
            jline(s[40], record_id="pgw01:900002")[:60],
            "line cut off in the middle (bad_syntax)",
        )
    ]
    sessions[65:65] = [
        bad(
            s[65],
            jline(s[65], record_id="pgw01:900003", apn="internet"),
            "unknown key 'apn' (unknown_field)",
        )
    ]
    # The same id as an earlier session with other volumes: a conflict, counted as rejected.
    sessions[80:80] = [Sample(s[30].time, {**s[30].fields, "downlink_bytes": 1234}, why="conflict")]
    p = purchases
    purchases[10:10] = [
        bad(
            p[10],
            jline(p[10], record_id="cms01:900001", content_item_id=None),
            "content_item_id missing for a content record (missing_field)",
        )
    ]
    purchases[20:20] = [
        bad(
            p[20],
            jline(p[20], record_id="cms01:900002").replace(
                '"service"', '"rating_group":' + "9" * 40 + ',"service"'
            ),
            "rating_group is a 40-digit integer (out_of_range)",
        )
    ]

    voice_cols = [
        "record_id",
        "service",
        "served_msisdn",
        "record_opening_time",
        "called_number",
        "duration_s",
        "roaming",
    ]
    sms_cols = [
        "record_id",
        "service",
        "served_msisdn",
        "record_opening_time",
        "called_number",
        "sms_count",
        "roaming",
    ]
    report = {
        "voice.csv": (write_csv(HERE / "voice.csv", voice_cols, calls), len(calls)),
        "sms.csv": (write_csv(HERE / "sms.csv", sms_cols, texts), len(texts)),
        "data.jsonl": (write_jsonl(HERE / "data.jsonl", sessions), len(sessions)),
        "content.jsonl": (write_jsonl(HERE / "content.jsonl", purchases), len(purchases)),
    }
    special = {
        "voice.csv": [(calls.index(x) + 2, x.why) for x in calls if x.why == "duplicate"],
        "data.jsonl": [(sessions.index(x) + 1, x.why) for x in sessions if x.why == "conflict"],
    }
    write_subscribers(HERE / "subscribers.toml")
    write_readme(HERE / "README.md", report, special)


def write_subscribers(path: Path) -> None:
    out = [
        "# The subscribers of the sample CDRs; demos create one account per account_id.",
        "# plan_id: smart = prepaid, business = postpaid (see conf/tariffs/).",
        "",
    ]
    for index, msisdn in enumerate(SMART, start=1):
        out += [
            "[[subscriber]]",
            f'msisdn = "{msisdn}"',
            f'account_id = "acct-{index:04d}"',
            'plan_id = "smart"',
            "",
        ]
    for account, lines in BUSINESS_ACCOUNTS.items():
        for msisdn in lines:
            out += [
                "[[subscriber]]",
                f'msisdn = "{msisdn}"',
                f'account_id = "{account}"',
                'plan_id = "business"',
                "",
            ]
    path.write_text("\n".join(out), encoding="utf-8")


def write_readme(
    path: Path,
    report: dict[str, tuple[list[tuple[int, str]], int]],
    special: dict[str, list[tuple[int, str]]],
) -> None:
    out = [
        "# Sample CDRs",
        "",
        "Usage of November 2026 for the sample operator (Germany, country code 49, EUR,",
        "Europe/Berlin), in both CDR formats of [docs/cdr-format.md](../../docs/cdr-format.md).",
        "Written by `generate.py` (seeded, deterministic); regenerate with",
        "`.venv/bin/python conf/samples/generate.py` rather than editing by hand.",
        "",
        "| file | format | lines with data | content |",
        "|---|---|---|---|",
    ]
    kinds = {
        "voice.csv": (
            "calls from switch `msc01`: Berlin, national, mobile, on-net, "
            "premium 0900, UK, France, USA"
        ),
        "sms.csv": "SMS from `smsc01`, some of 2–3 segments",
        "data.jsonl": "data sessions from `pgw01`: rating group 10 (normal), 20 (zero-rated)",
        "content.jsonl": "content purchases from `cms01`",
    }
    for name, (_, count) in report.items():
        fmt = "CSV" if name.endswith(".csv") else "JSON Lines"
        out.append(f"| {name} | {fmt} | {count} | {kinds[name]} |")
    out += [
        "",
        "`subscribers.toml` maps the 20 MSISDNs 4915100000001–4915100000020 to accounts",
        "and plans: the first 12 are prepaid on plan `smart`, one account each; the last 8",
        "are postpaid on plan `business`, four lines on each of two company accounts.",
        "",
        "Numbers are written in mixed forms on purpose (`030 2…`, `+4930…`, `0049…`,",
        "`0151…`), and times as local time with offset, UTC (`Z`) or epoch seconds: the",
        "reader normalises them all.",
        "",
        "## Deliberately bad lines",
        "",
        "Line numbers count from 1 and include the CSV header.",
        "",
        "| file | line | why |",
        "|---|---|---|",
    ]
    for name, (bad_lines, _) in report.items():
        out += [f"| {name} | {line} | {why} |" for line, why in bad_lines]
    out += [
        "",
        "And two records that are well-formed but repeat an earlier id:",
        "",
        "| file | line | what |",
        "|---|---|---|",
    ]
    for name, entries in special.items():
        for line, what in entries:
            text = (
                "exact resend of an earlier call: a duplicate (counted, not rated)"
                if what == "duplicate"
                else "an earlier session's id with other volumes: a conflict (rejected)"
            )
            out.append(f"| {name} | {line} | {text} |")
    path.write_text("\n".join(out) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
