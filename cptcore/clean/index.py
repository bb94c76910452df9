"""The "first seen" index of the dedup filters, on disk: index key (bytes) -> the key of
the first kept document that stored it, in a SQLite file (the standard library's
``sqlite3``; one ``WITHOUT ROWID`` B-tree on the key), so the memory deduplication
needs does not grow with the corpus.

Memory: SQLite's page cache, bounded by ``cache_mb`` (``PRAGMA cache_size``), plus one
query's worth of keys; the rest of the index lives in the file (~20 bytes per key plus
B-tree overhead: ~0.3 kB per kept document for ``near`` with 9 bands, ~40 bytes for
``exact``) and in the kernel's page cache, which the kernel drops under memory pressure.
The file is scratch: created empty when the index is first used (a resumed run rebuilds
it from the signatures in ``state/part-NNNNN.sig.npz``) and deleted by :meth:`close`.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Sequence

#: Inserts per transaction (bounds the journal-less transaction's dirty pages).
_COMMIT_EVERY = 20_000


class SeenIndex:
    """``first(keys)``: the smallest document key stored under any of ``keys``, or None;
    ``add(keys, doc)``: store ``doc`` under each key not stored yet.

    Args:
        path: the SQLite file (replaced if it exists; its folder must exist).
        cache_mb: SQLite page cache in MiB (the index's memory, whatever its size).
    """

    def __init__(self, path: str | Path, cache_mb: int = 16):
        self.path = Path(path)
        self.cache_mb = cache_mb
        for suffix in ("", "-journal"):
            Path(str(self.path) + suffix).unlink(missing_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "temp_store=FILE", f"cache_size=-{cache_mb * 1024}"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute("CREATE TABLE seen (k BLOB PRIMARY KEY, doc INTEGER NOT NULL) WITHOUT ROWID")
        self._db.execute("BEGIN")
        self._pending = 0
        self._queries: dict[int, str] = {}

    def first(self, keys: Sequence[bytes]) -> int | None:
        sql = self._queries.get(len(keys))
        if sql is None:
            sql = self._queries[len(keys)] = f"SELECT min(doc) FROM seen WHERE k IN ({','.join('?' * len(keys))})"
        return self._db.execute(sql, keys).fetchone()[0]

    def add(self, keys: Sequence[bytes], doc: int) -> None:
        self._db.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?)", ((k, doc) for k in keys))
        self._pending += len(keys)
        if self._pending >= _COMMIT_EVERY:
            self._commit()

    def _commit(self) -> None:
        self._db.execute("COMMIT")
        self._db.execute("BEGIN")
        self._pending = 0

    def __len__(self) -> int:
        return self._db.execute("SELECT count(*) FROM seen").fetchone()[0]

    def disk_bytes(self) -> int:
        """Size of the file, after writing the pending inserts."""
        self._commit()
        return os.path.getsize(self.path)

    def close(self) -> None:
        """Close and delete the file."""
        self._db.close()
        for suffix in ("", "-journal"):
            Path(str(self.path) + suffix).unlink(missing_ok=True)
