"""The tokens file and the token store, on real files: hashes only, validation, reloads."""

from __future__ import annotations

import json
import os
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cluster.security.roles import Role
from cluster.security.tokens import (
    InvalidToken,
    TokenFileError,
    TokenStore,
    TokenUsageError,
    create_token,
    read_tokens,
    revoke_token,
    write_tokens,
)

WHEN = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_the_file_keeps_the_hash_never_the_token(tmp_path: Path) -> None:
    """Neither the bearer token nor its secret part is in the file, which is mode 0600."""
    path = tmp_path / "tokens.jsonl"
    issued = create_token(path, role=Role.CRM, name="crm system", now=WHEN)
    secret = issued.bearer.rsplit("_", 1)[1]
    data = path.read_bytes()
    assert issued.bearer.encode() not in data
    assert secret.encode() not in data
    assert issued.record.token_id.encode() in data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secret not in repr(issued)
    (line,) = data.decode().splitlines()
    assert json.loads(line) == {
        "token_id": issued.record.token_id,
        "role": "crm",
        "account_id": None,
        "name": "crm system",
        "secret_sha256": issued.record.secret_sha256,
        "created_at": "2026-05-01T09:00:00Z",
        "revoked_at": None,
    }


def test_tokens_are_random_and_verify_only_with_their_own_secret(tmp_path: Path) -> None:
    """Two tokens differ; each verifies to its own entry; a swapped secret does not verify."""
    path = tmp_path / "tokens.jsonl"
    first = create_token(path, role=Role.BILLING)
    second = create_token(path, role=Role.OPERATOR)
    assert first.bearer != second.bearer
    store = TokenStore(path)
    assert store.verify(first.bearer) == first.record
    assert store.verify(second.bearer) == second.record
    swapped = f"pb1_{first.record.token_id}_{second.bearer.rsplit('_', 1)[1]}"
    with pytest.raises(InvalidToken) as refused:
        store.verify(swapped)
    assert refused.value.reason == "unknown"


@pytest.mark.parametrize(
    "bearer",
    ["", "pb1_", "pb1_0123456789ab_" + "0" * 63, "PB1_0123456789AB_" + "0" * 64, "x" * 10_000],
)
def test_malformed_tokens_are_refused_as_malformed(tmp_path: Path, bearer: str) -> None:
    """Anything but ``pb1_<12 hex>_<64 hex>`` is malformed, however long."""
    path = tmp_path / "tokens.jsonl"
    create_token(path, role=Role.CRM)
    with pytest.raises(InvalidToken) as refused:
        TokenStore(path).verify(bearer)
    assert refused.value.reason == "malformed"


def test_a_selfcare_token_needs_an_account_and_others_refuse_one(tmp_path: Path) -> None:
    """The account id is required for selfcare and refused for every other role."""
    path = tmp_path / "tokens.jsonl"
    with pytest.raises(TokenUsageError, match="needs an account id"):
        create_token(path, role=Role.SELFCARE)
    with pytest.raises(TokenUsageError, match="a crm token is not"):
        create_token(path, role=Role.CRM, account_id="a-1")
    with pytest.raises(TokenUsageError, match="printable"):
        create_token(path, role=Role.SELFCARE, account_id=" a-1")
    assert not path.exists()
    issued = create_token(path, role=Role.SELFCARE, account_id="a-1")
    assert TokenStore(path).verify(issued.bearer).account_id == "a-1"


def test_the_store_follows_a_revocation_after_its_check_interval(tmp_path: Path) -> None:
    """The store looks at the file at most every interval; the first look after a revocation
    refuses the token, and the other tokens stay valid."""
    path = tmp_path / "tokens.jsonl"
    kept = create_token(path, role=Role.CRM)
    doomed = create_token(path, role=Role.BILLING)
    clock = Clock()
    store = TokenStore(path, check_interval_ms=500, clock=clock)
    revoked = revoke_token(path, doomed.record.token_id, now=WHEN)
    assert revoked.revoked_at == WHEN
    clock.now_s += 0.4
    assert store.verify(doomed.bearer) == doomed.record  # not looked yet: within the interval
    clock.now_s += 0.2
    with pytest.raises(InvalidToken) as refused:
        store.verify(doomed.bearer)
    assert refused.value.reason == "revoked"
    assert store.verify(kept.bearer) == kept.record


def test_revoking_twice_keeps_the_first_time_and_an_unknown_id_is_an_error(
    tmp_path: Path,
) -> None:
    """A second revocation changes nothing; an unknown id names itself."""
    path = tmp_path / "tokens.jsonl"
    issued = create_token(path, role=Role.CRM)
    revoke_token(path, issued.record.token_id, now=WHEN)
    again = revoke_token(path, issued.record.token_id, now=datetime(2027, 1, 1, tzinfo=UTC))
    assert again.revoked_at == WHEN
    with pytest.raises(TokenUsageError, match="no token with id 'ffffffffffff'"):
        revoke_token(path, "ffffffffffff")


def test_an_edit_in_place_is_seen_too(tmp_path: Path) -> None:
    """A file rewritten in place (same inode, as an editor may) is re-read as well."""
    path = tmp_path / "tokens.jsonl"
    issued = create_token(path, role=Role.CRM)
    clock = Clock()
    store = TokenStore(path, check_interval_ms=0, clock=clock)
    inode = path.stat().st_ino
    text = path.read_text().replace('"revoked_at": null', '"revoked_at": "2026-05-01T09:00:00Z"')
    with open(path, "r+") as handle:
        handle.write(text)
    assert path.stat().st_ino == inode
    with pytest.raises(InvalidToken, match="revoked"):
        store.verify(issued.bearer)


def test_a_file_swapped_for_one_of_equal_size_and_time_is_seen(tmp_path: Path) -> None:
    """A tokens file renamed over the old one with the same size and modification time (a
    deployment tool restoring a copy) is still re-read: its inode differs."""
    path, other = tmp_path / "tokens.jsonl", tmp_path / "other.jsonl"
    old = create_token(path, role=Role.CRM, name="a", now=WHEN)
    new = create_token(other, role=Role.CRM, name="b", now=WHEN)
    assert path.stat().st_size == other.stat().st_size
    mtime_ns = path.stat().st_mtime_ns
    store = TokenStore(path, check_interval_ms=0)
    assert store.verify(old.bearer) == old.record
    os.utime(other, ns=(mtime_ns, mtime_ns))
    os.replace(other, path)
    assert path.stat().st_mtime_ns == mtime_ns
    assert store.verify(new.bearer) == new.record
    with pytest.raises(InvalidToken, match="unknown"):
        store.verify(old.bearer)


def test_a_broken_or_missing_file_fails_closed_until_fixed(tmp_path: Path) -> None:
    """Every token is refused while the file is invalid or gone, and valid again once fixed."""
    path = tmp_path / "tokens.jsonl"
    issued = create_token(path, role=Role.CRM)
    good = path.read_bytes()
    store = TokenStore(path, check_interval_ms=0)
    path.write_bytes(good + b"{not json\n")
    with pytest.raises(TokenFileError, match="line 2: not JSON"):
        store.verify(issued.bearer)
    path.unlink()
    with pytest.raises(TokenFileError, match="cannot read"):
        store.verify(issued.bearer)
    path.write_bytes(good)
    os.chmod(path, 0o600)
    assert store.verify(issued.bearer) == issued.record


def test_a_file_others_can_write_is_refused(tmp_path: Path) -> None:
    """Whoever can write the file can add a token: a group- or world-writable file is refused."""
    path = tmp_path / "tokens.jsonl"
    create_token(path, role=Role.CRM)
    os.chmod(path, 0o620)
    with pytest.raises(TokenFileError, match="writable by group or others"):
        TokenStore(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e | {"colour": "red"}, "line 1: unknown key 'colour'"),
        (lambda e: e | {"role": "root"}, "line 1.role: must be one of mediation"),
        (lambda e: e | {"token_id": "XYZ"}, "line 1.token_id: must be 12 lowercase hex"),
        (lambda e: e | {"secret_sha256": "00"}, "line 1.secret_sha256: must be 64"),
        (lambda e: e | {"account_id": "a-1"}, "line 1.account_id: only selfcare tokens"),
        (lambda e: e | {"created_at": "yesterday"}, "line 1.created_at: 'yesterday' is not"),
        (lambda e: e | {"revoked_at": 5}, "line 1.revoked_at: must be a UTC time"),
        (lambda e: [e], "line 1: must be a JSON object"),
    ],
)
def test_every_key_is_validated_with_file_line_and_key(
    tmp_path: Path, change: object, message: str
) -> None:
    """An invalid entry is refused with a message naming the file, the line and the key."""
    path = tmp_path / "tokens.jsonl"
    create_token(path, role=Role.CRM)
    entry = json.loads(path.read_text())
    path.write_text(json.dumps(change(entry)) + "\n")  # type: ignore[operator]
    with pytest.raises(TokenFileError) as refused:
        read_tokens(path)
    assert str(refused.value).startswith(f"{path}: line 1")
    assert message in str(refused.value)


def test_a_repeated_token_id_is_refused(tmp_path: Path) -> None:
    """Two entries with one id would make revocation ambiguous: refused."""
    path = tmp_path / "tokens.jsonl"
    create_token(path, role=Role.CRM)
    (record,) = read_tokens(path)
    write_tokens(path, [record, record])
    with pytest.raises(TokenFileError, match=r"line 2\.token_id: .* appears twice"):
        read_tokens(path)


def test_concurrent_creates_lose_no_token(tmp_path: Path) -> None:
    """Eight creates at once, each reading and rewriting the file, all end up in it."""
    path = tmp_path / "tokens.jsonl"
    issued: list[str] = []
    start = threading.Barrier(8)

    def create() -> None:
        start.wait()
        issued.append(create_token(path, role=Role.MEDIATION).record.token_id)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.token_id for r in read_tokens(path)) == sorted(issued)
    assert len(issued) == 8
    assert [p.name for p in tmp_path.iterdir()] == ["tokens.jsonl"]  # no temp or lock files


def test_verifying_while_the_file_changes_from_many_threads(tmp_path: Path) -> None:
    """Threads verifying while another revokes tokens see each token valid or revoked, and
    nothing else (no torn read, no error)."""
    path = tmp_path / "tokens.jsonl"
    tokens = [create_token(path, role=Role.CHARGING) for _ in range(6)]
    store = TokenStore(path, check_interval_ms=0)
    outcomes: set[str] = set()
    errors: list[BaseException] = []
    stop = threading.Event()

    def verify() -> None:
        while not stop.is_set():
            for token in tokens:
                try:
                    store.verify(token.bearer)
                    outcomes.add("ok")
                except InvalidToken as exc:
                    outcomes.add(exc.reason)
                except BaseException as exc:  # anything else is a failure of the store
                    errors.append(exc)

    threads = [threading.Thread(target=verify) for _ in range(3)]
    for thread in threads:
        thread.start()
    for token in tokens:
        revoke_token(path, token.record.token_id)
    stop.set()
    for thread in threads:
        thread.join()
    assert errors == []
    assert outcomes <= {"ok", "revoked"}
    for token in tokens:
        with pytest.raises(InvalidToken, match="revoked"):
            store.verify(token.bearer)
