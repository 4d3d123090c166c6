"""Abandoned online-charging sessions: the part of the chaos load that reserves money.

A thread opens sessions on the prepaid accounts, one account at a time, and never
terminates them: an INITIAL that reserves, half of the time an UPDATE that reports
used units (sent twice with one request id: the second answer must be the first),
then nothing, as a switch that lost its subscriber would. The cluster's owner of
the account's shard must release what the session holds at the end of its
validity, whatever faults are under way. A second thread, with a client of its
own that gives up quickly (so that a fault does not stall it), polls the
reserved money of each account whose session's validity (as the answer gave it)
has ended: released by ``bound_s`` after it is on time, and the report keeps
the latest release it saw (the first poll that found the money back, at most a
poll period plus one call late).

What it records for the auditor: the money the updates charged, by account (at
the reference price, :mod:`chaos.reference`), and its violations:

- ``reserved``: money still reserved ``bound_s`` after a session's validity ended;
- ``replayed``: a step repeated with its request id answered other money than first;
- ``mispriced``: an update charged other than the reference price of its units.

Like the usage load, every step is retried with the same request id until
answered, so a step cut short by a fault is applied once.
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from petribill.v1 import charging_pb2

from chaos.load import FATAL_CODES, Account
from chaos.reference import price
from cluster.client import PetribillClient
from cluster.client.transport import PetribillError

__all__ = ["AbandonedSessions", "SessionFigures", "WriteStalls"]

REQUESTED_S: Final = 120  # voice seconds asked for by each INITIAL
CALLED: Final = "4930555000"  # a national number of the chaos catalogue
_SUCCESS: Final = charging_pb2.SESSION_RESULT_SUCCESS


@dataclass(slots=True)
class SessionFigures:
    """What the sessions did, and what went wrong (``violations``: check -> texts)."""

    opened: int = 0
    updated: int = 0
    released: int = 0
    late_s_max: float = 0.0
    charged: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    violations: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def summary(self) -> dict[str, Any]:
        return {
            "opened": self.opened,
            "updated": self.updated,
            "released": self.released,
            "release_late_s_max": round(self.late_s_max, 2),
        }


class AbandonedSessions:
    """Opens and abandons sessions on ``accounts`` (prepaid) until :meth:`stop`."""

    def __init__(
        self,
        client: PetribillClient,
        accounts: list[Account],
        *,
        seed: int,
        bound_s: float,
        checker: PetribillClient | None = None,
        every_s: float = 0.5,
        poll_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        stalled: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.client = client
        # Seconds so far that the cluster could not acknowledge writes (WriteStalls): a
        # release is a write, so that time does not count against a session's bound.
        self._stalled = stalled
        # account -> the stalled seconds when its session's validity was seen ended.
        self._stalled_at_end: dict[str, float] = {}
        # Polls balances; a client with short time limits keeps the polls frequent.
        self.checker = checker if checker is not None else client
        self.accounts = accounts
        self.seed = seed
        self.bound_s = bound_s
        self.figures = SessionFigures()
        self.failure: BaseException | None = None
        self._every_s = every_s
        self._poll_s = poll_s
        self._clock = clock
        self._rng = random.Random(f"{seed}-sessions")
        self._lock = threading.Lock()
        # account -> (session, validity end); None while its session is being opened.
        self._pending: dict[str, tuple[str, float] | None] = {}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._guard, args=(self._open_loop,), daemon=True,
                             name="chaos-sessions"),
            threading.Thread(target=self._guard, args=(self._check_loop,), daemon=True,
                             name="chaos-sessions-check"),
        ]  # fmt: skip

    def start(self) -> AbandonedSessions:
        if self.accounts:
            for thread in self._threads:
                thread.start()
        return self

    def stop(self, timeout_s: float = 120.0) -> SessionFigures:
        """Open no more sessions; return once every open one was seen released (or late)."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(deadline - time.monotonic(), 0.1))
        if self.failure is not None:
            raise RuntimeError(f"the sessions failed: {self.failure!r}") from self.failure
        if any(thread.is_alive() for thread in self._threads):
            raise RuntimeError(f"sessions still pending after {timeout_s} s: {self._pending}")
        return self.figures

    def _guard(self, body: Callable[[], None]) -> None:
        try:
            body()
        except BaseException as exc:  # reported by stop()
            self.failure = exc
            self._stop.set()

    def _open_loop(self) -> None:
        n = 0
        while not self._stop.is_set():
            with self._lock:
                free = [a for a in self.accounts if a.account_id not in self._pending]
                account = self._rng.choice(free).account_id if free else None
                if account is not None:
                    self._pending[account] = None
            if account is not None:
                self._open(account, n)
                n += 1
            self._stop.wait(self._every_s)

    def _check_loop(self) -> None:
        while True:
            stopping = self._stop.is_set()
            self._check_pending()
            with self._lock:
                if stopping and not self._pending and not self._threads[0].is_alive():
                    return
            time.sleep(self._poll_s)

    # -- one session ---------------------------------------------------------------------

    def _answered(self, step: Callable[[], charging_pb2.SessionAnswer]) -> Any:
        """The step's answer, retried with its request id until the cluster gives one."""
        while True:
            try:
                return step()
            except PetribillError as exc:
                if exc.code in FATAL_CODES:
                    raise
                time.sleep(0.2)

    def _open(self, account_id: str, n: int) -> None:
        sid = f"chaos{self.seed}-session-{n}"
        client = self.client
        answer = self._answered(
            lambda: client.charge_session(
                sid, "initial", account_id=account_id, service="voice", called_number=CALLED,
                requested_units=REQUESTED_S, request_id=f"{sid}:i",
            )
        )  # fmt: skip
        if answer.result != _SUCCESS:
            self.figures.violations["sessions"].append(f"{sid}: INITIAL answered {answer.result}")
            with self._lock:
                del self._pending[account_id]
            return
        self.figures.opened += 1
        if self._rng.random() < 0.5:
            used = self._rng.randint(1, REQUESTED_S)

            def update() -> charging_pb2.SessionAnswer:
                return client.charge_session(
                    sid, "update", account_id=account_id, used_units=used, requested_units=60,
                    request_id=f"{sid}:u",
                )  # fmt: skip

            first = self._answered(update)
            again = self._answered(update)
            again.detail = first.detail  # the replay flag; everything else must be equal
            if again != first:
                self.figures.violations["replayed"].append(
                    f"{sid}: UPDATE repeated answered {again.charged.micros} charged, "
                    f"{again.reserved.micros} reserved; first {first.charged.micros}, "
                    f"{first.reserved.micros}"
                )
            # A late update (a fault held it past the session's supervision) is refused
            # and charges nothing; one in time charges the reference price of its units.
            want = price("voice", used) if first.result == _SUCCESS else 0
            if first.charged.micros != want:
                self.figures.violations["mispriced"].append(
                    f"{sid}: UPDATE of {used} s charged {first.charged.micros}, reference {want}"
                )
            self.figures.updated += 1
            self.figures.charged[account_id] += first.charged.micros
            if first.result == _SUCCESS:
                answer = first
        with self._lock:
            self._pending[account_id] = (sid, self._clock() + answer.validity_s)

    def _check_pending(self) -> None:
        with self._lock:
            due = [(a, p) for a, p in self._pending.items() if p is not None]
        for account_id, (sid, ends) in due:
            if self._clock() < ends:
                continue
            stalled_at_end = self._stalled_at_end.setdefault(account_id, self._stalled())
            try:
                reserved = self.checker.get_balance(account_id).reserved.micros
            except PetribillError as exc:
                if exc.code in FATAL_CODES:
                    raise
                # Not answered now (a fault, or a busy machine): an unanswered poll says
                # nothing of the money, so look again at the next one. One never answered
                # is left to the auditor's final check of every account's reserved money.
                continue
            now = self._clock()
            stalled = self._stalled() - stalled_at_end
            if reserved == 0:
                self.figures.released += 1
                self.figures.late_s_max = max(self.figures.late_s_max, now - ends)
            elif now > ends + stalled + self.bound_s:
                self.figures.violations["reserved"].append(
                    f"{account_id}: {sid} still holds {reserved} micros "
                    f"{now - ends:.1f} s after its validity ended "
                    f"({stalled:.1f} s of it with the cluster unable to acknowledge writes)"
                )
            else:
                continue
            with self._lock:
                del self._pending[account_id]
                del self._stalled_at_end[account_id]


class WriteStalls:
    """Counts the seconds during which the cluster could not acknowledge every unit's
    writes: its status said not ``writable`` (a unit below ``min_in_sync`` while a new
    follower catches up, a unit without an owner during a takeover), or the status was
    not answered (a fault under way). Polled every ``poll_s`` on a thread of its own;
    :meth:`seconds` is the running total."""

    def __init__(
        self,
        writable: Callable[[], bool],
        *,
        poll_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._writable = writable
        self._poll_s = poll_s
        self._clock = clock
        self._total = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="chaos-stalls")

    def start(self) -> WriteStalls:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def seconds(self) -> float:
        return self._total

    def poll(self, since: float) -> float:
        """One poll: add the time from ``since`` to now if the cluster cannot acknowledge
        writes; returns now."""
        try:
            writable = self._writable()
        except PetribillError:
            writable = False
        now = self._clock()
        if not writable:
            self._total += now - since
        return now

    def _loop(self) -> None:
        since = self._clock()
        while not self._stop.wait(self._poll_s):
            since = self.poll(since)
