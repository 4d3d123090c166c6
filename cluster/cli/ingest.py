"""Feeding a running cluster from files: CDR files (ingestion) and subscriber files (accounts).

**CDR files.** :func:`ingest_file` reads a file into Arrow columns with pyarrow's
CSV and JSON readers (``cluster.cli.file_columns``: the readers'
per-line rules, every unreadable line a reject with file, line, raw text and
code), sends them on the bulk path (``SubmitUsageColumns``, a few batches in
flight; ``columnar=False``: the per-record ``StreamUsage`` with
:func:`billing.readers.read_records`) and accounts for every data line of the
file in a :class:`FileReport`::

    lines = rated + rejected + duplicates + conflicts

``rated`` counts every record the cluster charged (also to debt or over the
credit limit); ``rejected`` the lines the reader could not read (reported here with file,
line and reason, and stored in the cluster's reject store with
``StoreUnreadable``, keyed by file and line, raw text kept) plus the records
the cluster rejected (stored there too, see ``petribill rejects``);
``duplicates`` the records charged before with the same content; ``conflicts``
the record ids charged before with other content. Record ids are the
idempotency keys, so ingesting a file again charges nothing twice: its records
come back as duplicates.

**Subscriber files.** :func:`account_specs` reads ``[[subscriber]]`` entries
(``msisdn``, ``account_id``, ``plan_id``, optionally ``payment_mode``,
``credit_limit``, ``currency``) into one :class:`AccountSpec` per account;
:func:`create_accounts` creates them with request ids derived from the account
ids, so loading a file twice is harmless.
"""

from __future__ import annotations

import tomllib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from petribill.v1 import accounts_pb2, usage_pb2

from billing.money import format_amount
from billing.readers import FieldError, Reject, normalise_number, read_records
from billing.records import UsageRecord
from cluster.cli.file_columns import FileChunk, read_chunks
from cluster.client import PetribillClient, PetribillError
from cluster.wire import money_to_proto, payment_mode_to_proto

__all__ = [
    "CDR_SUFFIXES",
    "AccountSpec",
    "FileReport",
    "IngestError",
    "RejectLine",
    "account_request_id",
    "account_specs",
    "cdr_files",
    "count_lines",
    "create_account",
    "create_accounts",
    "ingest_file",
]

CDR_SUFFIXES: Final = (".csv", ".jsonl", ".ndjson")
BATCH_RECORDS_DEFAULT: Final = 1000
WINDOW_BATCHES_DEFAULT: Final = 4
#: Reject lines kept per file for the report; the counts always cover all of them.
REJECTS_KEPT_MAX: Final = 1000
_COUNT_CHUNK_BYTES: Final = 1 << 20

_S = usage_pb2
_INTERNAL: Final = grpc.StatusCode.INTERNAL
# A cluster that cannot be reached fails a whole accounts load; a refused account does not.
_EXISTS: Final = grpc.StatusCode.ALREADY_EXISTS
_FATAL: Final = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_RATED: Final = {
    _S.RECORD_STATUS_CHARGED: "charged",
    _S.RECORD_STATUS_CHARGED_AS_DEBT: "charged_as_debt",
    _S.RECORD_STATUS_CHARGED_OVER_LIMIT: "charged_over_limit",
}


class IngestError(Exception):
    """Raised for a path that is not a CDR file or folder; the message names it."""


# --- CDR files -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RejectLine:
    """One line not charged: rejected by the reader or the cluster, or a conflicting id."""

    file: str
    line: int | None
    record_id: str | None
    reason: str
    detail: str
    stage: str  # "reader" (unreadable, stored by file and line) or "cluster" (rejected there)

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "record_id": self.record_id,
            "reason": self.reason,
            "detail": self.detail,
            "stage": self.stage,
        }


@dataclass(slots=True)
class FileReport:
    """The reconciliation of one file (or of several: :meth:`total`)."""

    file: str
    lines: int = 0
    sent: int = 0
    charged: int = 0
    charged_as_debt: int = 0
    charged_over_limit: int = 0
    rejected_reader: int = 0
    rejected_cluster: int = 0
    stored_unreadable: int = 0  # reader rejects stored in the cluster's reject store
    duplicates: int = 0
    conflicts: int = 0
    amount_micros: dict[str, int] = field(default_factory=dict)
    rejects: list[RejectLine] = field(default_factory=list)

    @property
    def rated(self) -> int:
        return self.charged + self.charged_as_debt + self.charged_over_limit

    @property
    def rejected(self) -> int:
        return self.rejected_reader + self.rejected_cluster

    @property
    def balanced(self) -> bool:
        return self.lines == self.rated + self.rejected + self.duplicates + self.conflicts

    def amounts_text(self) -> str:
        if not self.amount_micros:
            return "0"
        return ", ".join(f"{format_amount(m)} {c}" for c, m in sorted(self.amount_micros.items()))

    def _keep(self, reject: RejectLine) -> None:
        if len(self.rejects) < REJECTS_KEPT_MAX:
            self.rejects.append(reject)

    def note_reader_reject(self, reject: Reject) -> None:
        self.rejected_reader += 1
        code = reject.code.value
        detail = reject.message
        self._keep(
            RejectLine(
                file=self.file,
                line=reject.line,
                record_id=reject.record_id,
                reason=f"{reject.reason.value}/{code}",
                detail=detail,
                stage="reader",
            )
        )

    def note_result(self, record: UsageRecord, result: usage_pb2.RecordResult) -> None:
        status = result.status
        if result.replay or status == _S.RECORD_STATUS_DUPLICATE:
            # Sent before (this file again, or a retry): its first answer, charged once.
            self.duplicates += 1
            return
        if status in _RATED:
            kind = _RATED[status]
            setattr(self, kind, getattr(self, kind) + 1)
            currency = result.amount.currency or "?"
            self.amount_micros[currency] = (
                self.amount_micros.get(currency, 0) + result.amount.micros
            )
            return
        if status == _S.RECORD_STATUS_EXISTS_WITH_DIFFERENT_CONTENT:
            self.conflicts += 1
            reason = "conflict"
            detail = f"{result.reason}: {result.detail}" if result.reason else result.detail
        else:  # REJECTED, or a status this client does not know: never counted as charged
            self.rejected_cluster += 1
            reason = result.reason or _S.RecordStatus.Name(status).lower()
            detail = result.detail
        self._keep(
            RejectLine(
                file=self.file,
                line=record.source_line,
                record_id=record.record_id,
                reason=reason,
                detail=detail,
                stage="cluster",
            )
        )

    def note_columns(self, records: pa.Table, results: pa.Table) -> None:
        """:meth:`note_result` for a bulk batch: counted with arrays, a reject line kept
        for each row not charged (its line from the ``source_line`` column)."""
        status = np.asarray(pc.cast(results.column("status"), pa.string()).to_numpy(False))
        replay = np.asarray(results.column("replay").to_numpy(), np.bool_)
        duplicate = replay | (status == "duplicate")
        self.duplicates += int(duplicate.sum())
        amounts = results.column("amount").to_numpy()
        currencies = np.asarray(pc.cast(results.column("currency"), pa.string()).to_numpy(False))
        settled = duplicate.copy()
        for kind in _RATED.values():
            mine = ~duplicate & (status == kind)
            setattr(self, kind, getattr(self, kind) + int(mine.sum()))
            for currency in np.unique(currencies[mine]).tolist():
                micros = int(amounts[mine & (currencies == currency)].sum())
                key = currency or "?"
                self.amount_micros[key] = self.amount_micros.get(key, 0) + micros
            settled |= mine
        if settled.all():
            return
        lines = records.column("source_line").to_pylist()
        unsettled = np.flatnonzero(~settled)
        rows = results.take(pa.array(unsettled)).to_pylist()
        for k, row in zip(unsettled.tolist(), rows, strict=True):
            if row["status"] == "exists_with_different_content":
                self.conflicts += 1
                reason = "conflict"
                detail = f"{row['reason']}: {row['detail']}" if row["reason"] else row["detail"]
            else:
                self.rejected_cluster += 1
                reason = row["reason"] or str(row["status"])
                detail = row["detail"]
            self._keep(
                RejectLine(
                    file=self.file,
                    line=lines[k],
                    record_id=row["record_id"],
                    reason=reason,
                    detail=detail,
                    stage="cluster",
                )
            )

    @classmethod
    def total(cls, reports: Iterable[FileReport]) -> FileReport:
        """The sum of several files' reports (without their reject lines)."""
        total = cls(file="total")
        for report in reports:
            for name in (
                "lines",
                "sent",
                "charged",
                "charged_as_debt",
                "charged_over_limit",
                "rejected_reader",
                "rejected_cluster",
                "stored_unreadable",
                "duplicates",
                "conflicts",
            ):
                setattr(total, name, getattr(total, name) + getattr(report, name))
            for currency, micros in report.amount_micros.items():
                total.amount_micros[currency] = total.amount_micros.get(currency, 0) + micros
        return total

    def to_json(self, *, with_rejects: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "file": self.file,
            "lines": self.lines,
            "sent": self.sent,
            "rated": self.rated,
            "charged": self.charged,
            "charged_as_debt": self.charged_as_debt,
            "charged_over_limit": self.charged_over_limit,
            "rejected": self.rejected,
            "rejected_by_reader": self.rejected_reader,
            "rejected_by_cluster": self.rejected_cluster,
            "unreadable_stored": self.stored_unreadable,
            "duplicates": self.duplicates,
            "conflicts": self.conflicts,
            "amount": {c: format_amount(m) for c, m in sorted(self.amount_micros.items())},
            "balanced": self.balanced,
        }
        if with_rejects:
            data["rejects"] = [r.to_json() for r in self.rejects]
            data["rejects_not_shown"] = self.rejected + self.conflicts - len(self.rejects)
        return data


def cdr_files(paths: Sequence[Path]) -> list[Path]:
    """The CDR files named, folders expanded to their CDR files (sorted, not recursive)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in CDR_SUFFIXES))
        elif path.suffix.lower() in CDR_SUFFIXES:
            files.append(path)
        elif path.exists():
            raise IngestError(f"{path}: unknown CDR format, expected .csv, .jsonl or .ndjson")
        else:
            raise IngestError(f"{path}: no such file or folder")
    return files


def count_lines(path: Path) -> int:
    """Physical lines of a file (a last line without line ending counts), for progress."""
    lines, last = 0, b"\n"
    with open(path, "rb") as stream:
        while chunk := stream.read(_COUNT_CHUNK_BYTES):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")


def ingest_file(
    client: PetribillClient,
    path: Path,
    *,
    batch_records: int = BATCH_RECORDS_DEFAULT,
    window: int = WINDOW_BATCHES_DEFAULT,
    country_code: str = "49",
    naive_time_zone: str | None = None,
    on_progress: Callable[[int], None] | None = None,
    columnar: bool = True,
) -> FileReport:
    """Stream one CDR file to the cluster; its reconciliation.

    ``columnar``: as Arrow columns on the bulk path (``SubmitUsageColumns``), else
    as records on the per-record path (``StreamUsage``); the report is the same.

    ``on_progress`` gets the physical line number up to which the cluster has
    answered. Raises :class:`PetribillError` when the cluster fails the stream
    (the batches answered before are durable; ingesting the file again is
    safe) and ``OSError`` when the file cannot be read.
    """
    if columnar:
        return _ingest_columns(
            client, path, batch_records, window, country_code, naive_time_zone, on_progress
        )
    report = FileReport(file=str(path))
    in_flight: deque[list[UsageRecord]] = deque()

    def batches() -> Iterator[list[UsageRecord]]:
        batch: list[UsageRecord] = []
        for item in read_records(
            path, default_country_code=country_code, naive_time_zone=naive_time_zone
        ):
            report.lines += 1
            if isinstance(item, Reject):
                report.note_reader_reject(item)
                unreadable.append(item)
                continue
            batch.append(item)
            if len(batch) >= batch_records:
                in_flight.append(batch)
                report.sent += len(batch)
                yield batch
                batch = []
        if batch:
            in_flight.append(batch)
            report.sent += len(batch)
            yield batch

    unreadable: list[Reject] = []

    def store_unreadable() -> None:
        # Unreadable lines go to the cluster's reject store too, so that the cluster's
        # own reconciliation covers every line collected (and an operator finds them
        # with `petribill rejects list`), not only this report.
        if unreadable:
            client.store_unreadable(unreadable)
            report.stored_unreadable += len(unreadable)
            unreadable.clear()

    for response in client.stream_usage(batches(), window=window):
        if len(unreadable) >= batch_records:
            store_unreadable()
        batch = in_flight.popleft()
        if len(response.results) != len(batch):
            raise PetribillError(
                _INTERNAL,
                f"{path}: the cluster answered {len(response.results)} results "
                f"for a batch of {len(batch)} records",
            )
        for record, result in zip(batch, response.results, strict=True):
            report.note_result(record, result)
        if on_progress is not None and batch[-1].source_line is not None:
            on_progress(batch[-1].source_line)
    store_unreadable()
    return report


def _ingest_columns(
    client: PetribillClient,
    path: Path,
    batch_records: int,
    window: int,
    country_code: str,
    naive_time_zone: str | None,
    on_progress: Callable[[int], None] | None,
) -> FileReport:
    """:func:`ingest_file` on the bulk path."""
    report = FileReport(file=str(path))
    in_flight: deque[FileChunk] = deque()
    unreadable: list[Reject] = []
    chunks = read_chunks(
        path, chunk_lines=batch_records, country_code=country_code, naive_time_zone=naive_time_zone
    )

    def batches() -> Iterator[pa.Table]:
        for chunk in chunks:
            report.lines += chunk.items
            for reject in chunk.rejects:
                report.note_reader_reject(reject)
                unreadable.append(reject)
            if chunk.records.num_rows:
                in_flight.append(chunk)
                report.sent += chunk.records.num_rows
                yield chunk.records

    def store_unreadable() -> None:
        # As on the per-record path: the cluster's reconciliation covers every line.
        while unreadable:
            part = unreadable[:batch_records]
            client.store_unreadable(part)
            report.stored_unreadable += len(part)
            del unreadable[: len(part)]

    for results in client.stream_usage_columns(batches(), window=window):
        if len(unreadable) >= batch_records:
            store_unreadable()
        chunk = in_flight.popleft()
        if results.num_rows != chunk.records.num_rows:
            raise PetribillError(
                _INTERNAL,
                f"{path}: the cluster answered {results.num_rows} results "
                f"for a batch of {chunk.records.num_rows} records",
            )
        report.note_columns(chunk.records, results)
        if on_progress is not None:
            on_progress(chunk.last_line)
    store_unreadable()
    return report


# --- subscriber files ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountSpec:
    """One account to create: its MSISDNs and plan; ``payment_mode`` None: the plan's."""

    account_id: str
    plan_id: str
    msisdns: tuple[str, ...]
    payment_mode: str | None = None
    credit_limit: str | None = None
    currency: str = ""


def account_request_id(account_id: str) -> str:
    """The idempotency key of creating ``account_id`` from a file: the same on every load."""
    return f"accounts-load:{account_id}"


def account_specs(path: Path) -> list[AccountSpec]:
    """The accounts of a ``[[subscriber]]`` file, in file order, then its ``[[account]]``
    entries (accounts without numbers, e.g. sponsors); IngestError names a bad key."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise IngestError(f"{path}: {exc}") from None
    entries = document.get("subscriber")
    if not isinstance(entries, list) or not entries:
        raise IngestError(f"{path}: no [[subscriber]] entries")
    found: dict[str, dict[str, Any]] = {}
    for index, entry in enumerate(entries):
        where = f"{path}: subscriber[{index}]"
        if not isinstance(entry, dict):
            raise IngestError(f"{where}: must be a table")
        for key in ("msisdn", "account_id", "plan_id"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise IngestError(f"{where}.{key}: required, a non-empty string")
        unknown = set(entry) - {
            "msisdn",
            "account_id",
            "plan_id",
            "payment_mode",
            "credit_limit",
            "currency",
        }
        if unknown:
            raise IngestError(f"{where}: unknown keys {sorted(unknown)}")
        account = found.setdefault(entry["account_id"], {"msisdns": [], **entry})
        for key in ("plan_id", "payment_mode", "credit_limit", "currency"):
            if entry.get(key) != account.get(key):
                raise IngestError(
                    f"{where}.{key}: {entry.get(key)!r} differs from the account's earlier "
                    f"entries ({account.get(key)!r})"
                )
        account["msisdns"].append(entry["msisdn"])
    # Accounts without numbers of their own: sponsors of zero-rated traffic, say.
    extra = document.get("account", [])
    if not isinstance(extra, list):
        raise IngestError(f"{path}: account: must be an array of tables ([[account]])")
    for index, entry in enumerate(extra):
        where = f"{path}: account[{index}]"
        if not isinstance(entry, dict):
            raise IngestError(f"{where}: must be a table")
        for key in ("account_id", "plan_id"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise IngestError(f"{where}.{key}: required, a non-empty string")
        unknown = set(entry) - {"account_id", "plan_id", "payment_mode", "credit_limit", "currency"}
        if unknown:
            raise IngestError(f"{where}: unknown keys {sorted(unknown)}")
        if entry["account_id"] in found:
            raise IngestError(f"{where}.account_id: {entry['account_id']!r} is listed twice")
        found[entry["account_id"]] = {"msisdns": [], **entry}
    return [
        AccountSpec(
            account_id=account_id,
            plan_id=a["plan_id"],
            msisdns=tuple(a["msisdns"]),
            payment_mode=a.get("payment_mode"),
            credit_limit=None if a.get("credit_limit") is None else str(a["credit_limit"]),
            currency=a.get("currency", ""),
        )
        for account_id, a in found.items()
    ]


def create_account(
    client: PetribillClient, spec: AccountSpec, *, start_s: int = 0, request_id: str = ""
) -> accounts_pb2.Account:
    """Create one account (idempotent by ``request_id``, default derived from the account id);
    the payment mode is the plan's unless the spec names one."""
    request = accounts_pb2.CreateAccountRequest(
        request_id=request_id or account_request_id(spec.account_id),
        account_id=spec.account_id,
        currency=spec.currency,
        plan_id=spec.plan_id,
        msisdns=list(spec.msisdns),
        start_s=start_s,
    )
    if spec.payment_mode is not None:
        request.payment_mode = payment_mode_to_proto(spec.payment_mode)
    if spec.credit_limit is not None:
        request.credit_limit.CopyFrom(money_to_proto(spec.credit_limit, spec.currency))
    answer: accounts_pb2.Account = client.create_account(request)
    return answer


def create_accounts(
    client: PetribillClient, specs: Iterable[AccountSpec], *, start_s: int = 0
) -> list[tuple[AccountSpec, accounts_pb2.Account | PetribillError]]:
    """Create every account; an account the cluster refuses is reported, not fatal.

    An account that exists already (created by another request) with the same
    plan and MSISDNs counts as loaded; with others it is reported as refused.
    """
    results: list[tuple[AccountSpec, accounts_pb2.Account | PetribillError]] = []
    for spec in specs:
        try:
            results.append((spec, create_account(client, spec, start_s=start_s)))
        except PetribillError as exc:
            if exc.code in _FATAL:
                raise
            existing = _same_account(client, spec) if exc.code == _EXISTS else None
            results.append((spec, existing or exc))
    return results


def _same_account(client: PetribillClient, spec: AccountSpec) -> accounts_pb2.Account | None:
    """The stored account when it has the spec's plan and MSISDNs, else None."""
    account = client.get_account(spec.account_id)
    try:
        wanted = {normalise_number(m, default_country_code="49") for m in spec.msisdns}
    except FieldError:
        return None
    if account.plan_id == spec.plan_id and set(account.msisdns) == wanted:
        return account
    return None
