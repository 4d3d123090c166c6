"""Shard store: encodings, atomic synced batches, reads and the read cache (one process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.shard.keys import (
    account_key,
    idempotency_key,
    ledger_key,
    ledger_prefix,
    split_ledger_key,
)
from actors.store.codec import (
    EPOCH_KEY,
    CodecError,
    decode_i64,
    decode_i128,
    decode_u64,
    encode_i64,
    encode_i128,
    encode_u64,
)
from actors.store.storage import (
    Batch,
    LruCache,
    ShardStore,
    StaleEpoch,
    StoreClosed,
    StoreLocked,
    read_write_log,
)
from billing.invariant import InvariantViolation


def test_integer_codecs_round_trip_at_their_bounds() -> None:
    """Fixed-width encodings round-trip at the edges and refuse values that do not fit."""
    for value in (0, 1, -1, (1 << 63) - 1, -(1 << 63)):
        assert decode_i64(encode_i64(value)) == value
        assert len(encode_i64(value)) == 8
    for value in (0, -1, (1 << 127) - 1, -(1 << 127)):
        assert decode_i128(encode_i128(value)) == value
    assert encode_i64(-1) == b"\xff" * 8
    with pytest.raises(CodecError):
        encode_i64(1 << 63)
    with pytest.raises(CodecError):
        decode_i64(encode_i128(5))
    with pytest.raises(CodecError):
        encode_u64(-1)


def test_keys_sort_by_account_then_sequence() -> None:
    """Ledger keys sort by account id then numeric sequence; ids never bleed into each other."""
    keys = [ledger_key("ab", 256), ledger_key("abc", 1), ledger_key("ab", 2)]
    assert sorted(keys) == [ledger_key("ab", 2), ledger_key("ab", 256), ledger_key("abc", 1)]
    assert not ledger_key("abc", 1).startswith(ledger_prefix("ab"))
    assert split_ledger_key(ledger_key("ab", 256)) == ("ab", 256)
    assert decode_u64(encode_u64(7)) == 7
    with pytest.raises(CodecError):
        account_key("a\x00b")
    with pytest.raises(CodecError):
        idempotency_key("")


def test_batch_commits_atomically_and_scans_in_order(tmp_path: Path) -> None:
    """A committed batch is readable as a whole; prefix scans return one account's postings."""
    with ShardStore.open(tmp_path / "s", epoch=1) as store:
        batch = Batch()
        batch.put(account_key("alice"), encode_i64(-1_500_000))
        for seq in (3, 1, 2):
            batch.put(ledger_key("alice", seq), encode_i64(seq))
        batch.put(ledger_key("alicia", 1), encode_i64(99))
        batch.put(idempotency_key("sw1:42"), b"charged")
        store.commit(batch)
        postings = list(store.scan_prefix(ledger_prefix("alice")))
        assert [split_ledger_key(k)[1] for k, _ in postings] == [1, 2, 3]
        assert decode_i64(store.get(account_key("alice")) or b"") == -1_500_000
        assert store.get(idempotency_key("sw1:42")) == b"charged"
        assert list(store.scan(b"i/", b"i0")) == [(idempotency_key("sw1:42"), b"charged")]
        assert len(list(store.scan_prefix(b"l/", limit=2))) == 2


def test_batch_is_single_use_and_may_not_write_metadata(tmp_path: Path) -> None:
    """A batch cannot be committed twice, and the epoch key is out of a batch's reach."""
    with ShardStore.open(tmp_path / "s", epoch=1) as store:
        batch = Batch()
        batch.put(b"x/1", b"1")
        store.commit(batch)
        with pytest.raises(InvariantViolation):
            store.commit(batch)
        with pytest.raises(InvariantViolation):
            Batch().put(EPOCH_KEY, encode_u64(9))


def test_read_cache_follows_commits(tmp_path: Path) -> None:
    """Account rows are cached on read and updated or dropped by later commits."""
    with ShardStore.open(tmp_path / "s", epoch=1, cache_entries_max=2) as store:
        first = Batch()
        for name in ("a", "b", "c"):
            first.put(account_key(name), encode_i64(1))
        store.commit(first)
        assert len(store.cache) == 2
        second = Batch()
        second.put(account_key("a"), encode_i64(2))
        second.delete(account_key("b"))
        store.commit(second)
        assert decode_i64(store.get(account_key("a")) or b"") == 2
        assert store.get(account_key("b")) is None
        assert store.cache.get(account_key("b")) is None


def test_write_log_keeps_each_epochs_commit_range(tmp_path: Path) -> None:
    """Commits are numbered across owners; each epoch's range follows the one before."""

    def commit(store: ShardStore, n: int) -> None:
        for i in range(n):
            batch = Batch()
            batch.put(b"d/" + bytes([i]), b"x")
            store.commit(batch)

    with ShardStore.open(tmp_path / "s", epoch=1) as store:
        commit(store, 3)
    with ShardStore.open(tmp_path / "s", epoch=4) as store:
        pass  # an owner that never wrote leaves no range
    with ShardStore.open(tmp_path / "s", epoch=5) as store:
        commit(store, 2)
        log = read_write_log(store._live())
    assert log == {1: (1, 3), 5: (4, 5)}


def test_lru_cache_evicts_least_recently_used() -> None:
    """The LRU keeps at most its bound and evicts the entry untouched longest."""
    cache: LruCache[str, int] = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and len(cache) == 2


def test_epoch_only_grows(tmp_path: Path) -> None:
    """Opening at an epoch not above the shard's is refused; a higher one is accepted."""
    path = tmp_path / "s"
    ShardStore.open(path, epoch=5).close()
    for stale in (5, 4):
        with pytest.raises(StaleEpoch) as info:
            ShardStore.open(path, epoch=stale)
        assert info.value.stored == 5
    with ShardStore.open(path, epoch=6) as store:
        assert decode_u64(store.get(EPOCH_KEY) or b"") == 6


def test_second_open_in_one_process_is_refused(tmp_path: Path) -> None:
    """One process cannot hold a shard twice; a closed store refuses use."""
    store = ShardStore.open(tmp_path / "s", epoch=1)
    with pytest.raises(StoreLocked):
        ShardStore.open(tmp_path / "s", epoch=2)
    store.close()
    with pytest.raises(StoreClosed):
        store.get(b"a/x")
    ShardStore.open(tmp_path / "s", epoch=2).close()
