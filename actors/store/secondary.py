"""A read-only view of a unit's database from another process: a RocksDB *secondary*.

A gateway answers queries of the units that have a copy in its own node's folder
without a call to the host that serves them (``actors.reader``). It opens the
copy as a RocksDB secondary instance: no LOCK is taken (the owner keeps writing,
and a takeover's fencing never sees the reader), and the view moves forward only
when asked, by :meth:`SecondaryStore.catch_up`, which replays the owner's new
MANIFEST entries and WAL tail. Every ``WriteBatch`` is one WAL record, so a view
sees a batch whole or not at all, like a query on the owner. A batch the owner
acknowledged was synced to its WAL first, so a catch-up that starts after the
acknowledgement sees it.

The view writes nothing in the unit's folder: RocksDB keeps the secondary's own
info log in ``scratch`` (a folder of the reader's, removed on close).
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Final

from rocksdict import AccessType, Options, Rdict

from actors.store.codec import EPOCH_KEY, decode_u64
from actors.store.fencing import StoreClosed
from actors.store.storage import ReadableStore

__all__ = ["FILES_OPEN_MAX", "SecondaryStore"]

#: Table files one view keeps open (RocksDB's ``max_open_files``); the reader bounds
#: how many views are open, so a gateway's descriptors stay bounded too.
FILES_OPEN_MAX: Final = 64


class SecondaryStore(ReadableStore):
    """One unit's database, read-only, as of its last :meth:`catch_up`."""

    def __init__(self, path: Path, scratch: Path, db: Rdict) -> None:
        self.path, self.scratch = path, scratch
        self._db: Rdict | None = db

    @classmethod
    def open(cls, path: Path, scratch: Path) -> SecondaryStore:
        """Open the database at ``path`` as a secondary (its info log in ``scratch``);
        it already shows what was committed before the open."""
        scratch.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.set_max_open_files(FILES_OPEN_MAX)
        try:
            db = Rdict(str(path), options=options, access_type=AccessType.secondary(str(scratch)))
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        return cls(path, scratch, db)

    def _live(self) -> Rdict:
        if self._db is None:
            raise StoreClosed(f"{self.path}: read view is closed")
        return self._db

    def catch_up(self) -> None:
        """Show everything the owner has committed by now (raises if RocksDB cannot,
        e.g. a WAL file the owner deleted meanwhile: the caller reopens the view)."""
        self._live().try_catch_up_with_primary()

    @property
    def epoch(self) -> int:
        """The epoch stored in the database (``m/epoch``): its owner's, for a primary."""
        raw = self.get_data(EPOCH_KEY)
        return 0 if raw is None else decode_u64(raw)

    def close(self) -> None:
        """Release the view and its scratch folder; idempotent."""
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(Exception):
                db.close()
            shutil.rmtree(self.scratch, ignore_errors=True)
