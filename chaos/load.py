"""The chaos load: usage and top-ups through the gateways, remembering every answer.

Each worker thread submits batches of new records (voice and SMS, opening
times scattered over the cycle, so out of order), a few malformed records that
must be rejected with a reason, now and then a batch it already had
acknowledged again (a client-side duplicate: each record must answer its first
status, flagged as a replay), and now and then acknowledged record ids sent again
with another subscriber's number (each must be refused as
EXISTS_WITH_DIFFERENT_CONTENT and charge nobody). One worker streams its batches
(``StreamUsage``), the others call ``SubmitUsage`` and, every other batch, the
bulk path (``SubmitUsageColumns``: the batch as Arrow columns, the answers as
columns, checked exactly as the per-record answers). Top-ups go to the prepaid
accounts with their own request ids.

An operator thread makes the long calls an operator makes in the middle of
traffic, one after another, while the faults hit: a reconcile, a bill run of
every account (of a past cycle, one later each time: real work, and nothing the
audit's own bill run of the load's cycle sees), a backup, and a page-through of
one account's usage history. What it answers is not audited; that it answers is
(a call the SDK gives up on is counted under ``operator:<call>:<status>``).

What the cluster answered is recorded exactly: a record is *acknowledged*
when a response carries its result; a refusal (the SDK gave up after its
retries) is counted with its gRPC status and the same batch is sent again,
with the same ids, until it is acknowledged. So every record the load made is
eventually acknowledged, and a retry can only ever be a duplicate.
"""

from __future__ import annotations

import calendar
import collections
import itertools
import queue
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import grpc
import pyarrow as pa
from petribill.v1 import usage_pb2

from billing.money import Money
from cluster.cli.file_columns import WIRE_SCHEMA
from cluster.client import PetribillClient
from cluster.client.transport import PetribillError

__all__ = ["Account", "Acked", "Load", "LoadFigures"]

CYCLE_START_S: Final = 1_793_491_200  # 2026-11-01T00:00:00Z
CYCLE_SPAN_S: Final = 27 * 86_400  # openings scattered over the 1st..28th
CHARGED: Final = frozenset({
    usage_pb2.RECORD_STATUS_CHARGED,
    usage_pb2.RECORD_STATUS_CHARGED_AS_DEBT,
    usage_pb2.RECORD_STATUS_CHARGED_OVER_LIMIT,
})  # fmt: skip
TOP_UP_MICROS: Final = 1_000_000  # 1.00 EUR a top-up
# Answers that say the request itself is wrong: retrying cannot help, the run fails.
FATAL_CODES: Final = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.UNIMPLEMENTED,
})  # fmt: skip
INITIAL_TOP_UP_MICROS: Final = 500_000_000  # 500 EUR: no prepaid account runs dry
# The operator's bill runs: past cycles from this one on (the chaos plans start then),
# never the load's own cycle (2026-11), which the auditor bills at the end.
OPERATOR_FIRST_CYCLE: Final = (2020, 1)
OPERATOR_LAST_CYCLE: Final = (2026, 10)
OPERATOR_CALLS: Final = ("reconcile", "bill_run", "backup", "usage_pages")


@dataclass(frozen=True, slots=True)
class Account:
    account_id: str
    msisdn: str
    prepaid: bool


@dataclass(frozen=True, slots=True)
class Acked:
    """The first answer the cluster gave for one record."""

    account_id: str
    service: str
    units: int
    status: int
    reason: str
    malformed: bool


@dataclass(slots=True)
class LoadFigures:
    batches: int = 0
    records_sent: int = 0
    duplicate_batches: int = 0
    refusals: collections.Counter[str] = field(default_factory=collections.Counter)
    last_refusal: str = ""
    duplicate_answers_wrong: int = 0
    hijacked_batches: int = 0
    hijack_answers_wrong: int = 0
    operator_calls: collections.Counter[str] = field(default_factory=collections.Counter)


class Load:
    """Runs the load in threads; ``acked``, ``topups`` and ``figures`` are its record."""

    def __init__(
        self,
        client: PetribillClient,
        accounts: list[Account],
        *,
        seed: int,
        workers: int = 2,
        batch: int = 25,
        malformed_rate: float = 0.01,
        duplicate_rate: float = 0.05,
        hijack_rate: float = 0.02,
        topup_every: int = 20,
        pause_s: float = 0.0,
        operator: bool = True,
        operator_pause_s: float = 1.0,
    ) -> None:
        self.client = client
        self.accounts = accounts
        self._by_msisdn = {a.msisdn: a for a in accounts}
        self._prepaid = [a for a in accounts if a.prepaid]
        self.seed = seed
        self.acked: dict[str, Acked] = {}
        self.topups: dict[str, tuple[str, int]] = {}  # request id -> (account, micros)
        self.figures = LoadFigures()
        self.failure: BaseException | None = None
        self._workers = workers
        self._batch = batch
        self._malformed_rate = malformed_rate
        self._duplicate_rate = duplicate_rate
        self._hijack_rate = hijack_rate
        self._topup_every = topup_every
        self._pause_s = pause_s
        self._operator = operator
        self._operator_pause_s = operator_pause_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sent: dict[str, dict[str, Any]] = {}
        self._acked_batches: list[list[dict[str, Any]]] = []

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> Load:
        for worker in range(self._workers):
            body = self._stream_worker if worker == 1 else self._unary_worker
            thread = threading.Thread(
                target=self._guard, args=(body, worker), name=f"chaos-load-{worker}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        if self._operator:
            thread = threading.Thread(
                target=self._guard, args=(self._operator_worker, -1), name="chaos-operator",
                daemon=True,
            )  # fmt: skip
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout_s: float = 300.0) -> None:
        """Stop making new records; each worker first gets its last batch acknowledged."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive()]
        if self.failure is not None:
            raise RuntimeError(f"the load failed: {self.failure!r}") from self.failure
        if stuck:
            raise RuntimeError(
                f"load workers still waiting for an answer: {stuck}; "
                f"last refusal: {self.figures.last_refusal or 'none'}"
            )

    @property
    def records_acked(self) -> int:
        return len(self.acked)

    def _guard(self, body: Any, worker: int) -> None:
        try:
            body(worker)
        except BaseException as exc:  # reported by stop(): a thread cannot fail the run
            self.failure = exc

    # -- records -----------------------------------------------------------------

    def _new_batch(
        self, rng: random.Random, worker: int, ids: Iterator[int]
    ) -> list[dict[str, Any]]:
        batch = []
        for _ in range(self._batch):
            account = rng.choice(self.accounts)
            record: dict[str, Any] = {
                "record_id": f"chaos{self.seed}:w{worker}-{next(ids)}",
                "served_msisdn": account.msisdn,
                "record_opening_time_s": CYCLE_START_S + rng.randrange(CYCLE_SPAN_S),
                "called_number": f"4930{rng.randrange(10**7):07d}",
            }
            if rng.random() < 0.8:
                record.update(service="voice", duration_s=rng.randint(1, 600))
            else:
                record.update(service="sms", sms_count=rng.randint(1, 3))
            if rng.random() < self._malformed_rate:
                record["duration_s"], record["service"] = -rng.randint(1, 99), "voice"
            batch.append(record)
        return batch

    def _record_answers(
        self, batch: list[dict[str, Any]], response: usage_pb2.SubmitUsageResponse
    ) -> None:
        if len(response.results) != len(batch):
            raise AssertionError(f"{len(batch)} records sent, {len(response.results)} answered")
        with self._lock:
            fresh = False
            for record, result in zip(batch, response.results, strict=True):
                if result.record_id != record["record_id"]:
                    raise AssertionError(
                        f"answer for {result.record_id}, sent {record['record_id']}"
                    )
                rid = record["record_id"]
                if rid in self.acked:
                    continue  # a client-side duplicate; checked by the caller
                fresh = True
                service = record["service"]
                units = record.get("duration_s", 0) if service == "voice" else record["sms_count"]
                self.acked[rid] = Acked(
                    account_id=self._by_msisdn[record["served_msisdn"]].account_id,
                    service=service,
                    units=units,
                    status=result.status,
                    reason=result.reason,
                    malformed=units < 0,
                )
            if fresh:
                self._acked_batches.append(batch)

    def _check_duplicate(
        self, batch: list[dict[str, Any]], response: usage_pb2.SubmitUsageResponse
    ) -> None:
        """A batch sent again after its acknowledgement charges nothing: each record answers
        its first status again, flagged as a replay (a rejected one is rejected again)."""
        for record, result in zip(batch, response.results, strict=True):
            first = self.acked[record["record_id"]]
            rejected = usage_pb2.RECORD_STATUS_REJECTED
            again_ok = (result.status == first.status and result.replay) or (
                first.status == rejected and result.status == rejected
            )
            if not again_ok:
                with self._lock:
                    self.figures.duplicate_answers_wrong += 1

    def _hijacked(self, rng: random.Random, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The records of an acknowledged batch with another subscriber's number each."""
        out = []
        for record in batch:
            other = rng.choice([a for a in self.accounts if a.msisdn != record["served_msisdn"]])
            out.append(record | {"served_msisdn": other.msisdn})
        return out

    def _check_hijacked(
        self, batch: list[dict[str, Any]], response: usage_pb2.SubmitUsageResponse
    ) -> None:
        """An acknowledged record id sent with another subscriber's number is refused (its
        first answer was a charge) and charges nobody; a rejected one stays rejected."""
        for record, result in zip(batch, response.results, strict=True):
            first = self.acked[record["record_id"]]
            if first.status in CHARGED:
                ok = (
                    result.status == usage_pb2.RECORD_STATUS_EXISTS_WITH_DIFFERENT_CONTENT
                    and result.reason == "served_msisdn"
                )
            else:
                ok = result.status not in CHARGED
            if not ok:
                with self._lock:
                    self.figures.hijack_answers_wrong += 1

    def _refused(self, exc: PetribillError, what: str = "") -> None:
        """Count a refusal, or end the load if retrying cannot help."""
        with self._lock:
            self.figures.refusals[what + exc.code.name] += 1
            self.figures.last_refusal = str(exc)
        if exc.code in FATAL_CODES:
            raise exc

    # -- workers -----------------------------------------------------------------

    def _unary_worker(self, worker: int) -> None:
        rng = random.Random(f"{self.seed}-load-{worker}")
        ids = itertools.count()
        for n in itertools.count():
            if self._stop.is_set():
                return
            draw = rng.random() if self._acked_batches else 1.0
            duplicate = draw < self._duplicate_rate
            hijack = not duplicate and draw < self._duplicate_rate + self._hijack_rate
            with self._lock:
                if duplicate:
                    batch = rng.choice(self._acked_batches)
                elif hijack:
                    batch = self._hijacked(rng, rng.choice(self._acked_batches))
                else:
                    batch = self._new_batch(rng, worker, ids)
                self.figures.batches += 1
                self.figures.records_sent += len(batch)
                self.figures.duplicate_batches += duplicate
                self.figures.hijacked_batches += hijack
            response = self._submit_until_answered(batch, columns=n % 2 == 1)
            if duplicate:
                self._check_duplicate(batch, response)
            elif hijack:
                self._check_hijacked(batch, response)
            else:
                self._record_answers(batch, response)
            if worker == 0 and n % self._topup_every == 0:
                self._top_up(rng, n)
            if self._pause_s:
                time.sleep(self._pause_s)

    def _submit_until_answered(
        self, batch: list[dict[str, Any]], *, columns: bool = False
    ) -> usage_pb2.SubmitUsageResponse:
        while True:  # the same ids until answered: exactly once
            try:
                if columns:
                    table = pa.Table.from_pylist(batch, schema=WIRE_SCHEMA)
                    return _as_response(self.client.submit_usage_columns(table))
                return self.client.submit_usage(batch)
            except PetribillError as exc:
                self._refused(exc)
                time.sleep(0.2)

    def _top_up(self, rng: random.Random, n: int) -> None:
        if not self._prepaid:
            return
        account = rng.choice(self._prepaid)
        request_id = f"chaos{self.seed}-topup-{n}"
        while True:
            try:
                self.client.top_up(
                    account.account_id, Money(TOP_UP_MICROS, "EUR"), request_id=request_id
                )
                break
            except PetribillError as exc:
                self._refused(exc)
                time.sleep(0.2)
        with self._lock:
            self.topups[request_id] = (account.account_id, TOP_UP_MICROS)

    def _stream_worker(self, worker: int) -> None:
        """Batches over ``StreamUsage``; after a broken stream the SDK resends the
        unanswered ones on a new stream (to another gateway), same ids."""
        rng = random.Random(f"{self.seed}-load-{worker}")
        ids = itertools.count()
        sent: queue.SimpleQueue[list[dict[str, Any]]] = queue.SimpleQueue()

        def batches() -> Iterator[list[dict[str, Any]]]:
            while not self._stop.is_set():
                with self._lock:
                    batch = self._new_batch(rng, worker, ids)
                    self.figures.batches += 1
                    self.figures.records_sent += len(batch)
                sent.put(batch)
                yield batch
                if self._pause_s:
                    time.sleep(self._pause_s)

        source = batches()
        while True:
            try:
                for response in self.client.stream_usage(source, window=2):
                    self._record_answers(sent.get(), response)
                return
            except PetribillError as exc:
                # The SDK gave up on this stream: its unanswered batches are sent
                # again (same ids) on a fresh one, before any new batch.
                self._refused(exc)
                pending = []
                while not sent.empty():
                    pending.append(sent.get())
                for batch in pending:
                    self._record_answers(batch, self._submit_until_answered(batch))
                time.sleep(0.2)

    # -- the operator ------------------------------------------------------------

    def _operator_worker(self, _worker: int) -> None:
        """The operator's long calls in turn until the load stops; each must answer."""
        rng = random.Random(f"{self.seed}-operator")
        year, month = OPERATOR_FIRST_CYCLE
        for n in itertools.count():
            if self._stop.is_set():
                return
            call = OPERATOR_CALLS[n % len(OPERATOR_CALLS)]
            try:
                if call == "reconcile":
                    self.client.reconcile()
                elif call == "bill_run":
                    self._operator_bill_run(f"{year:04d}-{month:02d}", n)
                    if (year, month) < OPERATOR_LAST_CYCLE:
                        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
                elif call == "backup":
                    self.client.backup(request_id=f"chaos{self.seed}-backup-{n}")
                else:
                    account = rng.choice(self.accounts)
                    for _ in self.client.iter_usage(account.account_id, page=100):
                        pass
            except PetribillError as exc:
                self._refused(exc, f"operator:{call}:")
            else:
                with self._lock:
                    self.figures.operator_calls[call] += 1
            self._stop.wait(self._operator_pause_s)

    def _operator_bill_run(self, cycle_id: str, n: int) -> None:
        """A bill run of every account for ``cycle_id``, a month after it ended."""
        year, month = (int(part) for part in cycle_id.split("-"))
        after = (year + 1, 1) if month == 12 else (year, month + 1)
        ended_s = calendar.timegm((*after, 1, 0, 0, 0))  # the chaos catalogue's zone is UTC
        at_s = ended_s + 30 * 86_400  # past any grace period: final invoices
        request_id = f"chaos{self.seed}-operator-billrun-{n}"
        for _ in self.client.run_billing(cycle_id, at_s=at_s, request_id=request_id):
            pass  # progress, until the bill run has finished


def _as_response(results: pa.Table) -> usage_pb2.SubmitUsageResponse:
    """The bulk path's result columns as the per-record answer, for the same checks."""
    return usage_pb2.SubmitUsageResponse(
        results=[
            usage_pb2.RecordResult(
                record_id=row["record_id"],
                status=usage_pb2.RecordStatus.Value("RECORD_STATUS_" + str(row["status"]).upper()),
                reason=row["reason"],
                detail=row["detail"],
                charged_account_id=row["charged_account_id"],
                billed_units=row["billed_units"],
                bundle_units=row["bundle_units"],
                replay=row["replay"],
            )
            for row in results.to_pylist()
        ]
    )
