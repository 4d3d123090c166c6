"""Online backups of a unit's database: RocksDB checkpoints, and opening one to restore.

A checkpoint (RocksDB's ``Checkpoint``, exposed by rocksdict) is a new database
folder made of hard links to the live database's immutable SST files plus a
copy of its manifest and WAL tail, so it costs little space and time on the
same filesystem (a full copy on another). The host takes it under the unit's
lock, between two write calls: every committed batch is in it and no batch
is half in it. It first has RocksDB flush the memtable in the background
(:func:`flush_in_background`, outside the lock), so the checkpoint itself is short.

Layout of one backup (``root``)::

    root/units/<unit_id>/        the checkpoint: a complete raw-mode RocksDB
    root/units/<unit_id>.json    what it holds: unit, epoch, sequence, time

A lost unit is restored by ``petribill restore`` (``AdminService.RestoreUnits``):
a host on an alive node copies the unit's checkpoint into its own node folder
(:func:`stage_restore`), then the coordinator fires the net's ``restore`` and
the host opens the copy at an epoch above every one the unit had, as after
any takeover. (Without replication, copying the checkpoint folder to
``<data_dir>/units/<unit_id>/`` while the cluster is down does the same.) Units
are each consistent at their own batch boundary, not frozen together: a
sponsor forward still in a shard's outbox is redelivered after the restore,
and the shards' idempotency marks make anything resubmitted after it a
duplicate.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rocksdict import AccessType, Checkpoint, Options, Rdict

from actors.store.codec import EPOCH_KEY, decode_u64
from actors.store.files import replace_folder
from actors.store.storage import ShardStore

__all__ = [
    "BackupExists",
    "BackupFailed",
    "BackupRefused",
    "RestoreRefused",
    "UnitBackup",
    "backup_target",
    "checkpoint_epoch",
    "checkpoint_unit",
    "flush_in_background",
    "open_checkpoint",
    "read_backup",
    "stage_restore",
]

# How long a backup waits for RocksDB to flush a unit's memtable before it checkpoints
# anyway (the checkpoint then flushes the rest itself).
FLUSH_WAIT_S = 5.0
_FLUSH_POLL_S = 0.005


class BackupExists(FileExistsError):
    """Raised by :func:`checkpoint_unit` when the unit's target folder already holds
    something other than this request's backup (a backup is never overwritten)."""


class BackupFailed(OSError):
    """Raised by :func:`checkpoint_unit` when RocksDB could not write the checkpoint (the
    unit's disk is full, an IO error): nothing of it is kept, and the same request may be
    tried again once the cause is gone."""


class BackupRefused(ValueError):
    """Raised by :func:`backup_target` for a folder that is not a plain relative path that
    stays below the backup root once every link is followed. The gateway refuses such a
    path first (``cluster.security.paths``); this is the host's own check, on its node."""


def backup_target(root: Path, folder: str) -> Path:
    """The folder a backup goes to: ``folder`` (relative, no ``..``) below ``root``.

    ``root`` is created if missing. The message of :class:`BackupRefused` does not
    say whether anything exists at the path.
    """
    relative = Path(folder)
    refused = BackupRefused(f"backup folder {folder!r}: not below the backup root")
    if not folder or "\x00" in folder or relative.is_absolute() or ".." in relative.parts:
        raise refused
    root.mkdir(parents=True, exist_ok=True)
    base = root.resolve()
    try:
        target = (base / relative).resolve()
    except (OSError, RuntimeError):  # RuntimeError: a link loop (Python 3.11)
        raise refused from None
    if target == base or not target.is_relative_to(base):
        raise refused
    return target


class RestoreRefused(ValueError):
    """Raised by :func:`stage_restore` for a backup folder that holds no checkpoint of the
    unit (missing, not a backup, or a backup without it), and by a host asked to stage a
    unit it serves: a live unit is never overwritten."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UnitBackup:
    """What one unit's checkpoint holds."""

    unit_id: str
    request_id: str
    epoch: int
    sequence: int
    taken_at_s: float
    path: str


def _db(store: ShardStore) -> Rdict:
    # ShardStore offers no public handle on its database (actors/store/storage.py is not ours
    # to change here); _live() is the accessor that refuses a closed store.
    return store._live()


def flush_in_background(store: ShardStore, *, timeout_s: float = FLUSH_WAIT_S) -> bool:
    """Have RocksDB flush the memtable in its own threads, and wait for it while sleeping;
    False if it still flushes after ``timeout_s``.

    Why: a checkpoint flushes the memtable itself, inside one native call that holds
    Python's GIL (rocksdict does not release it), so every thread of the host — its
    liveness thread too — stops for the whole flush (measured: 154 ms for a 30 MB
    memtable). Flushed beforehand, the checkpoint held the GIL 12 ms.
    """
    db = _db(store)
    db.flush(wait=False)
    deadline = time.monotonic() + timeout_s
    while db.property_int_value("rocksdb.num-immutable-mem-table") or db.property_int_value(
        "rocksdb.mem-table-flush-pending"
    ):
        if time.monotonic() >= deadline or db.property_int_value("rocksdb.background-errors"):
            return False  # a flush that failed (a full disk) is not waited for
        time.sleep(_FLUSH_POLL_S)
    return True


def checkpoint_unit(
    store: ShardStore, root: Path, unit_id: str, *, request_id: str = ""
) -> UnitBackup:
    """Write a checkpoint of ``store`` to ``root/units/<unit_id>`` and its description
    beside it; the caller holds the unit's lock, so no write is in flight.

    Idempotent by ``request_id``: when this request's backup of the unit is
    already there, its description is returned. Raises :class:`BackupExists`
    when the folder holds anything else.
    """
    db = _db(store)
    units = Path(root) / "units"
    target = units / unit_id
    meta = units / f"{unit_id}.json"
    if target.exists() or meta.exists():
        if request_id and meta.exists():
            done = UnitBackup(**json.loads(meta.read_text()))
            if done.request_id == request_id:
                return done
        raise BackupExists(f"{target}: the folder already holds a backup of {unit_id}")
    units.mkdir(parents=True, exist_ok=True)
    sequence = int(db.latest_sequence_number())
    try:
        Checkpoint(db).create_checkpoint(str(target))
    except Exception as exc:  # rocksdict raises plain Exception for RocksDB's IO errors
        shutil.rmtree(target, ignore_errors=True)  # a retry must not find it "taken"
        raise BackupFailed(f"{target}: the checkpoint of {unit_id} failed: {exc}") from None
    info = UnitBackup(
        unit_id=unit_id,
        request_id=request_id,
        epoch=store.epoch,
        sequence=sequence,
        taken_at_s=time.time(),
        path=str(target),
    )
    tmp = meta.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(info), indent=1))
    tmp.replace(meta)
    return info


def read_backup(root: Path) -> dict[str, UnitBackup]:
    """The units of the backup in ``root``, by unit id (those whose description was written)."""
    units = Path(root) / "units"
    found: dict[str, UnitBackup] = {}
    for meta in sorted(units.glob("*.json")):
        info = UnitBackup(**json.loads(meta.read_text()))
        found[info.unit_id] = info
    return found


def stage_restore(
    root: Path, unit_id: str, target: Path, *, staging: Path, trash: Path
) -> UnitBackup:
    """Copy ``unit_id``'s checkpoint from the backup in ``root`` to ``target`` (through
    ``staging``, synced, swapped in whole over whatever was there); the backup itself is
    left as it was. Its description says what it holds. :class:`RestoreRefused` when
    ``root`` holds no checkpoint of the unit."""
    checkpoint = Path(root) / "units" / unit_id
    meta = checkpoint.with_name(f"{unit_id}.json")
    if not meta.is_file() or not (checkpoint / "CURRENT").is_file():
        raise RestoreRefused(f"{root}: holds no backup of {unit_id}")
    info = UnitBackup(**json.loads(meta.read_text()))
    shutil.rmtree(staging, ignore_errors=True)  # a restore that stopped half-way
    staging.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(checkpoint, staging)  # a copy: the live unit never writes the backup
    replace_folder(target, staging, trash=trash, tag=f"restore.{time.monotonic_ns()}")
    return info


def open_checkpoint(path: Path) -> Rdict:
    """Open a checkpoint read-only (raw mode), e.g. to verify or inspect a backup."""
    return Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())


def checkpoint_epoch(db: Rdict) -> int:
    """The ownership epoch recorded in a database (0 if none)."""
    raw = db.get(EPOCH_KEY)
    return 0 if raw is None else decode_u64(raw)
