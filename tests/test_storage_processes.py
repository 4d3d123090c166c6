"""Shard store across real processes: crash durability, RocksDB's LOCK, and epoch fencing.

Each test runs a writer in a child Python process that commits synced batches
and prints ``ack <k>`` only after batch ``k`` is durable, so the parent knows
exactly what was acknowledged when it kills or pauses the child.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.store.fencing import lock_holder_pid, read_owner
from actors.store.storage import ShardStore, StoreLocked

REPO = Path(__file__).resolve().parents[1]
RECORDS_PER_BATCH = 50

WRITER = """
import sys
from actors.store.storage import Batch, ShardStore, StaleEpoch
path, epoch, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
store = ShardStore.open(path, epoch=epoch)
print("open", flush=True)
k = 0
while mode == "loop" or sys.stdin.readline():
    batch = Batch()
    for i in range(RECORDS):
        batch.put(b"r/%08d/%04d" % (k, i), b"x" * 16)
    try:
        store.commit(batch)
    except StaleEpoch as exc:
        print("stale", exc.stored, flush=True)
        sys.exit(3)
    print("ack", k, flush=True)
    k += 1
""".replace("RECORDS", str(RECORDS_PER_BATCH))


@pytest.fixture
def spawn() -> Iterator[object]:
    """Start writer children; whatever a test leaves running is killed by PID."""
    children: list[subprocess.Popen[str]] = []

    def start(path: Path, epoch: int, mode: str) -> subprocess.Popen[str]:
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(epoch), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        children.append(child)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "open"
        return child

    yield start
    for child in children:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGCONT)
            child.kill()
        child.wait()


def _acks_until(child: subprocess.Popen[str], count: int) -> int:
    assert child.stdout is not None
    last = -1
    while last + 1 < count:
        line = child.stdout.readline().split()
        assert line[0] == "ack", line
        last = int(line[1])
    return last


def _assert_batches_complete(store: ShardStore, acked: int) -> int:
    """Every acknowledged batch is wholly present, and no batch is partly present."""
    seen: dict[int, int] = {}
    for key, _ in store.scan_prefix(b"r/"):
        batch = int(key.split(b"/")[1])
        seen[batch] = seen.get(batch, 0) + 1
    assert all(seen.get(k) == RECORDS_PER_BATCH for k in range(acked + 1))
    assert all(n == RECORDS_PER_BATCH for n in seen.values())
    return len(seen)


def test_kill_9_loses_nothing_acknowledged(tmp_path: Path, spawn) -> None:  # type: ignore[no-untyped-def]
    """After SIGKILL of a writer mid-stream, reopening finds every acknowledged batch, whole."""
    child = spawn(tmp_path / "s", 1, "loop")
    acked = _acks_until(child, 30)
    child.kill()
    child.wait()
    assert child.stdout is not None
    for line in child.stdout:  # acks printed before the kill landed
        acked = max(acked, int(line.split()[1]))
    with ShardStore.open(tmp_path / "s", epoch=2) as store:
        assert _assert_batches_complete(store, acked) >= acked + 1


def test_paused_holder_keeps_the_lock_and_open_fails_fast(tmp_path: Path, spawn) -> None:  # type: ignore[no-untyped-def]
    """A SIGSTOPped owner still holds RocksDB's LOCK; an unfenced open fails at once, naming it."""
    child = spawn(tmp_path / "s", 1, "stdin")
    os.kill(child.pid, signal.SIGSTOP)
    assert lock_holder_pid(tmp_path / "s") == child.pid
    started = time.monotonic()
    with pytest.raises(StoreLocked) as info:
        ShardStore.open(tmp_path / "s", epoch=2, fence=False)
    assert info.value.holder_pid == child.pid
    assert time.monotonic() - started < 10.0  # at once, not after a wait (any machine speed)


def test_takeover_kills_paused_zombie_which_never_commits_again(tmp_path: Path, spawn) -> None:  # type: ignore[no-untyped-def]
    """Takeover SIGKILLs the recorded, paused owner; after SIGCONT it cannot commit anything."""
    child = spawn(tmp_path / "s", 1, "stdin")
    assert child.stdin is not None
    for _ in range(3):
        child.stdin.write("go\n")
    child.stdin.flush()
    acked = _acks_until(child, 3)
    owner = read_owner(tmp_path / "s")
    assert owner is not None and owner.pid == child.pid and owner.epoch == 1
    os.kill(child.pid, signal.SIGSTOP)
    child.stdin.write("go\n")  # queued: the zombie would commit this on waking
    child.stdin.flush()
    started = time.monotonic()
    store = ShardStore.open(tmp_path / "s", epoch=2, fence=True)
    print(f"takeover of a paused owner took {time.monotonic() - started:.3f}s")
    os.kill(child.pid, signal.SIGCONT)
    assert child.wait(timeout=10) == -signal.SIGKILL
    with store:
        assert _assert_batches_complete(store, acked) == acked + 1


def test_lost_lock_zombie_is_refused_by_the_epoch_file(tmp_path: Path, spawn) -> None:  # type: ignore[no-untyped-def]
    """If the LOCK is lost (file deleted), a woken zombie's next commit is refused by epoch."""
    path = tmp_path / "s"
    child = spawn(path, 1, "stdin")
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write("go\n")
    child.stdin.flush()
    _acks_until(child, 1)
    os.kill(child.pid, signal.SIGSTOP)
    (path / "LOCK").unlink()  # what a broken lock looks like: both may now open
    store = ShardStore.open(path, epoch=2, fence=False)
    os.kill(child.pid, signal.SIGCONT)
    child.stdin.write("go\n")
    child.stdin.flush()
    assert child.stdout.readline().split() == ["stale", "2"]
    assert child.wait(timeout=10) == 3
    with store:
        assert len(list(store.scan_prefix(b"r/00000001/"))) == 0
