"""Bearer tokens: the tokens file, creating and revoking tokens, and verifying a presented one.

**The bearer token** a client sends is ``pb1_<token id>_<secret>``: the token
id (12 hex digits) is public — it names the token in the file, the audit log
and ``petribill token revoke`` — and the secret (64 hex digits, 256 bits from
:mod:`secrets`) is shown once, when the token is created, and never stored.
Carrying the id inside the token lets the server find the one entry to check
instead of hashing against every entry; the ``pb1_`` prefix lets secret
scanners recognise a leaked token. Only hex digits and ``_``: a double click
selects the whole token, and it needs no quoting in a shell or a header.

**The tokens file** is JSON Lines, one object per token::

    {"token_id": "3f9c0a1b2c4d", "role": "selfcare", "account_id": "a-1001",
     "name": "app", "secret_sha256": "…64 hex…", "created_at": "2026-05-01T09:00:00Z",
     "revoked_at": null}

JSON Lines rather than TOML because this file is written by a program
(``petribill token create/revoke``) and Python can read TOML but not write it
without another package; one self-contained object per line still diffs,
greps and ``jq``-s well for a person. Every key is validated on load, unknown
keys are refused, and errors name the file, the line and the key.

**Why SHA-256** and not a slow password hash (bcrypt, scrypt, Argon2): those
slow down guessing of *low-entropy* secrets such as passwords. A 256-bit
random secret cannot be guessed however fast the hash is, so a slow hash
would add only latency, paid by the gateway on every call. This is how
GitHub and others store API tokens.

**Verifying** (:class:`TokenStore`) compares hashes with
:func:`hmac.compare_digest`, and re-reads the file when it changes (inode,
size, modification or change time), checking at most every
``check_interval_ms``: a revoked token is refused within that interval, with
no restart. A file that becomes unreadable or invalid fails closed: every
token is refused until it is fixed, so a mangled file cannot keep a revoked
token alive.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import structlog

from cluster.security.files import folder_lock, write_atomic
from cluster.security.roles import ACCOUNT_BOUND_ROLES, Role

__all__ = [
    "CHECK_INTERVAL_MS_DEFAULT",
    "InvalidToken",
    "IssuedToken",
    "TokenFileError",
    "TokenRecord",
    "TokenStore",
    "TokenUsageError",
    "create_token",
    "hash_secret",
    "parse_bearer",
    "read_tokens",
    "revoke_token",
    "write_tokens",
]

log = structlog.get_logger("petribill.security")

TOKEN_PREFIX: Final = "pb1"
CHECK_INTERVAL_MS_DEFAULT: Final = 250
_ID_HEX_CHARS: Final = 12
_SECRET_BYTES: Final = 32
_BEARER = re.compile(rf"{TOKEN_PREFIX}_([0-9a-f]{{{_ID_HEX_CHARS}}})_([0-9a-f]{{64}})")
_BEARER_CHARS_MAX: Final = 200  # longer input is refused before any regex or hash work
_NAME_CHARS_MAX: Final = 200
_ACCOUNT_CHARS_MAX: Final = 128
_KEYS: Final = frozenset(
    {"token_id", "role", "account_id", "name", "secret_sha256", "created_at", "revoked_at"}
)
# Compared against when the token id is unknown, so that an unknown id costs
# the same hash and comparison as a known one.
_NO_HASH: Final = "0" * 64


class TokenFileError(Exception):
    """Raised when the tokens file cannot be read, is invalid, or cannot be written.

    The message names the file and, for an invalid entry, its line and key.
    """


class TokenUsageError(ValueError):
    """Raised by :func:`create_token` and :func:`revoke_token` for a request that cannot be
    done: an account id missing for ``selfcare`` or given for another role, an unknown token id."""


class InvalidToken(Exception):
    """Raised by :meth:`TokenStore.verify` when a presented token is not a valid one.

    ``reason`` is ``malformed`` (not of the ``pb1_<id>_<secret>`` form),
    ``unknown`` (no such id, or the secret does not match) or ``revoked``
    (the right secret of a revoked token: only its holder can learn that).
    """

    def __init__(self, reason: Literal["malformed", "unknown", "revoked"], message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenRecord:
    """One entry of the tokens file: everything about a token but its secret."""

    token_id: str
    role: Role
    secret_sha256: str  # hex SHA-256 of the secret part of the bearer token
    account_id: str | None = None  # the one account a selfcare token may read
    name: str = ""  # free text for people: whose token, what for
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def to_json(self) -> dict[str, Any]:
        """The file's object for this entry (also what ``token list --json`` prints)."""
        return {
            "token_id": self.token_id,
            "role": self.role.value,
            "account_id": self.account_id,
            "name": self.name,
            "secret_sha256": self.secret_sha256,
            "created_at": _time_text(self.created_at),
            "revoked_at": None if self.revoked_at is None else _time_text(self.revoked_at),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuedToken:
    """A token just created: its entry, and the bearer token to hand over once."""

    record: TokenRecord
    bearer: str = field(repr=False)  # never in a repr, a log line or a traceback


def hash_secret(secret: str) -> str:
    """The hex SHA-256 of a token's secret part, as the tokens file stores it."""
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def parse_bearer(bearer: str) -> tuple[str, str]:
    """Split a bearer token into (token id, secret); :class:`InvalidToken` if malformed."""
    match = _BEARER.fullmatch(bearer) if len(bearer) <= _BEARER_CHARS_MAX else None
    if match is None:
        expected = f"{TOKEN_PREFIX}_<id>_<secret>"
        raise InvalidToken("malformed", f"not a petribill token (expected {expected})")
    return match.group(1), match.group(2)


# --- the file ------------------------------------------------------------------------------


def _time_text(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: Any, where: str) -> datetime:
    if not isinstance(text, str):
        raise TokenFileError(f"{where}: must be a UTC time such as 2026-05-01T09:00:00Z")
    try:
        when = datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        raise TokenFileError(
            f"{where}: {text!r} is not a UTC time such as 2026-05-01T09:00:00Z"
        ) from None
    return when.replace(tzinfo=UTC)


def _check_account(role: Role, account_id: str | None, where: str) -> None:
    if role in ACCOUNT_BOUND_ROLES:
        if account_id is None:
            raise TokenUsageError(f"{where}: a {role.value} token needs an account id")
        if (
            not account_id
            or len(account_id) > _ACCOUNT_CHARS_MAX
            or not account_id.isprintable()
            or account_id != account_id.strip()
        ):
            raise TokenUsageError(
                f"{where}: account id must be 1..{_ACCOUNT_CHARS_MAX} printable characters "
                "without surrounding spaces"
            )
    elif account_id is not None:
        bound = ", ".join(sorted(r.value for r in ACCOUNT_BOUND_ROLES))
        raise TokenUsageError(
            f"{where}: only {bound} tokens are bound to an account; a {role.value} token is not"
        )


def _check_name(name: str, where: str) -> None:
    if len(name) > _NAME_CHARS_MAX or not name.isprintable():
        limit = _NAME_CHARS_MAX
        raise TokenUsageError(f"{where}: name must be at most {limit} printable characters")


def _record_from_json(obj: Any, where: str) -> TokenRecord:
    if not isinstance(obj, dict):
        raise TokenFileError(f"{where}: must be a JSON object")
    unknown = sorted(set(obj) - _KEYS)
    if unknown:
        raise TokenFileError(f"{where}: unknown key {unknown[0]!r}")
    token_id = obj.get("token_id")
    if not isinstance(token_id, str) or not re.fullmatch(f"[0-9a-f]{{{_ID_HEX_CHARS}}}", token_id):
        raise TokenFileError(f"{where}.token_id: must be {_ID_HEX_CHARS} lowercase hex digits")
    try:
        role = Role(str(obj.get("role")))
    except ValueError:
        known = ", ".join(r.value for r in Role)
        raise TokenFileError(f"{where}.role: must be one of {known}") from None
    digest = obj.get("secret_sha256")
    if not isinstance(digest, str) or not re.fullmatch("[0-9a-f]{64}", digest):
        raise TokenFileError(f"{where}.secret_sha256: must be 64 lowercase hex digits")
    account_id = obj.get("account_id")
    name = obj.get("name", "")
    if account_id is not None and not isinstance(account_id, str):
        raise TokenFileError(f"{where}.account_id: must be a string or null")
    if not isinstance(name, str):
        raise TokenFileError(f"{where}.name: must be a string")
    try:
        _check_account(role, account_id, f"{where}.account_id")
        _check_name(name, f"{where}.name")
    except TokenUsageError as exc:
        raise TokenFileError(str(exc)) from None
    revoked = obj.get("revoked_at")
    return TokenRecord(
        token_id=token_id,
        role=role,
        secret_sha256=digest,
        account_id=account_id,
        name=name,
        created_at=_parse_time(obj.get("created_at"), f"{where}.created_at"),
        revoked_at=None if revoked is None else _parse_time(revoked, f"{where}.revoked_at"),
    )


def _parse_tokens(text: str, path: Path) -> tuple[TokenRecord, ...]:
    records: list[TokenRecord] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}: line {number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TokenFileError(f"{where}: not JSON ({exc.msg})") from None
        record = _record_from_json(obj, where)
        if record.token_id in seen:
            raise TokenFileError(f"{where}.token_id: {record.token_id} appears twice")
        seen.add(record.token_id)
        records.append(record)
    return tuple(records)


def _check_mode(mode: int, path: Path) -> None:
    # Whoever can write the file can add a token of any role: refuse a file others can
    # write, as ssh refuses a group-writable authorized_keys.
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise TokenFileError(
            f"{path}: writable by group or others (mode {stat.S_IMODE(mode):o}); chmod 600 {path}"
        )


def read_tokens(path: Path) -> tuple[TokenRecord, ...]:
    """Every entry of the tokens file ``path``; :class:`TokenFileError` if it is unusable."""
    records, _stamp = _read_with_stamp(path)
    return records


_Stamp = tuple[int, int, int, int, int]


def _stamp_of(st: os.stat_result) -> _Stamp:
    # A rename (every write of ours) changes the inode; an edit in place changes the
    # size or the times. The change time also moves on chmod, which may fix a mode.
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read_with_stamp(path: Path) -> tuple[tuple[TokenRecord, ...], _Stamp]:
    # Stat and read the same open file, so the stamp describes exactly what was read.
    try:
        with open(path, "rb") as handle:
            st = os.fstat(handle.fileno())
            _check_mode(st.st_mode, path)
            data = handle.read()
    except OSError as exc:
        raise TokenFileError(f"{path}: cannot read the tokens file: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise TokenFileError(f"{path}: not UTF-8 text") from None
    return _parse_tokens(text, path), _stamp_of(st)


def write_tokens(path: Path, records: Iterable[TokenRecord]) -> None:
    """Replace the tokens file with ``records``: atomically, durably, mode 0600."""
    text = "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in records)
    try:
        write_atomic(path, text.encode("utf-8"), mode=0o600)
    except OSError as exc:
        raise TokenFileError(f"{path}: cannot write the tokens file: {exc.strerror}") from None


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def create_token(
    path: Path,
    *,
    role: Role,
    account_id: str | None = None,
    name: str = "",
    now: datetime | None = None,
) -> IssuedToken:
    """Add a new token to the tokens file ``path`` (created if missing) and return it.

    The returned :attr:`IssuedToken.bearer` is the only copy of the secret.
    Raises :class:`TokenUsageError` for an account id missing (``selfcare``) or
    not allowed (other roles), :class:`TokenFileError` if the file is unusable.
    """
    _check_account(role, account_id, "--account")
    _check_name(name, "--name")
    with _locked(path):
        existing = read_tokens(path) if path.exists() else ()
        taken = {r.token_id for r in existing}
        token_id = secrets.token_hex(_ID_HEX_CHARS // 2)
        while token_id in taken:  # 48 bits: a clash is rare, but must not merge two tokens
            token_id = secrets.token_hex(_ID_HEX_CHARS // 2)
        secret = secrets.token_hex(_SECRET_BYTES)
        record = TokenRecord(
            token_id=token_id,
            role=role,
            secret_sha256=hash_secret(secret),
            account_id=account_id,
            name=name,
            created_at=now or _now(),
        )
        write_tokens(path, (*existing, record))
    return IssuedToken(record=record, bearer=f"{TOKEN_PREFIX}_{token_id}_{secret}")


def revoke_token(path: Path, token_id: str, *, now: datetime | None = None) -> TokenRecord:
    """Mark ``token_id`` revoked in the tokens file ``path``; return its entry.

    Revoking a revoked token changes nothing and returns it as it is (the
    first revocation time stays). Raises :class:`TokenUsageError` for an
    unknown id, :class:`TokenFileError` if the file is unusable.
    """
    with _locked(path):
        records = read_tokens(path)
        for index, record in enumerate(records):
            if record.token_id != token_id:
                continue
            if record.revoked:
                return record
            revoked = replace(record, revoked_at=now or _now())
            write_tokens(path, (*records[:index], revoked, *records[index + 1 :]))
            return revoked
    raise TokenUsageError(f"{path}: no token with id {token_id!r}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(folder_lock(path.parent))
        except OSError as exc:
            raise TokenFileError(f"{path.parent}: cannot lock the folder: {exc.strerror}") from None
        yield


# --- verifying -----------------------------------------------------------------------------


class TokenStore:
    """The tokens file as the gateway sees it: verifies presented tokens, follows changes.

    Thread-safe: one lock guards the re-read; the table it swaps in is never
    changed afterwards. The constructor reads the file and raises
    :class:`TokenFileError` if it is unusable, so a gateway does not start
    with a broken one.
    """

    def __init__(
        self,
        path: Path,
        *,
        check_interval_ms: int = CHECK_INTERVAL_MS_DEFAULT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if check_interval_ms < 0:
            raise ValueError("check_interval_ms must be >= 0")
        self.path = Path(path)
        self._interval_s = check_interval_ms / 1000
        self._clock = clock
        self._lock = threading.Lock()
        records, stamp = _read_with_stamp(self.path)
        self._by_id: Mapping[str, TokenRecord] = {r.token_id: r for r in records}
        self._stamp: _Stamp | None = stamp
        self._error: TokenFileError | None = None
        self._checked_at = clock()

    def verify(self, bearer: str) -> TokenRecord:
        """The entry of the token ``bearer`` if it is valid and not revoked.

        Raises :class:`InvalidToken` (malformed, unknown, revoked), or
        :class:`TokenFileError` while the file is unusable (every token is then
        refused).
        """
        token_id, secret = parse_bearer(bearer)
        with self._lock:
            self._refresh()
            if self._error is not None:
                raise self._error
            record = self._by_id.get(token_id)
        # Hash and compare even for an unknown id, in constant time for the digest.
        matches = hmac.compare_digest(
            hash_secret(secret), record.secret_sha256 if record is not None else _NO_HASH
        )
        if record is None or not matches:
            raise InvalidToken("unknown", "unknown token")
        if record.revoked:
            raise InvalidToken("revoked", f"token {token_id} was revoked")
        return record

    def records(self) -> tuple[TokenRecord, ...]:
        """The entries as last read (after a check for changes)."""
        with self._lock:
            self._refresh()
            if self._error is not None:
                raise self._error
            return tuple(self._by_id.values())

    def _refresh(self) -> None:
        # Called with the lock held.
        now = self._clock()
        if now - self._checked_at < self._interval_s:
            return
        self._checked_at = now
        try:
            stamp: _Stamp | None = _stamp_of(os.stat(self.path))
        except OSError:
            stamp = None
        if stamp is not None and stamp == self._stamp:
            return
        try:
            records, stamp = _read_with_stamp(self.path)
        except TokenFileError as exc:
            if self._error is None or str(self._error) != str(exc):
                log.error("tokens_file_unusable", path=str(self.path), error=str(exc))
            self._error, self._stamp = exc, stamp
            return
        self._by_id = {r.token_id: r for r in records}
        self._stamp, self._error = stamp, None
        log.info(
            "tokens_file_reloaded",
            path=str(self.path),
            tokens=len(records),
            revoked=sum(r.revoked for r in records),
        )
