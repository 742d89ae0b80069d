"""`SpanSpill`: where an in-memory store moves old spans when its memory budget is spent, so none are lost.

Spans are kept as JSON rows of a SQLite file inside a directory the spill owns and deletes on `close()` (or when
the owning store is garbage-collected). The file is scratch space for one process: it is not kept across restarts.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import tempfile
import weakref
from collections.abc import Iterable

from agl.store.errors import StoreFullError

__all__ = ["SpanSpill"]

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spans (
    rollout_id TEXT NOT NULL,
    attempt_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (rollout_id, attempt_id, span_id)
) WITHOUT ROWID;
"""

_FREE_DISK_MARGIN = 1024**3
"""Bytes of free disk the default budget always leaves to the rest of the machine."""


def _cleanup(conn: sqlite3.Connection, directory: str) -> None:
    try:
        conn.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class SpanSpill:
    """An on-disk overflow area for spans, with a byte budget.

    Args:
        directory: parent directory for the spill (default: the system temp dir); a private subdirectory is created.
        max_bytes: most span bytes the spill may hold; None means "while the disk keeps 1 GiB free".
    """

    def __init__(self, directory: str | None = None, max_bytes: int | None = None) -> None:
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"spill max_bytes must be non-negative or None, got {max_bytes}")
        if directory is not None and not os.path.isdir(directory):
            raise ValueError(f"spill directory {directory!r} does not exist or is not a directory")
        self.directory = tempfile.mkdtemp(prefix="agl-spill-", dir=directory)
        self.path = os.path.join(self.directory, "spans.sqlite")
        self.max_bytes = max_bytes
        self.bytes = 0
        self.spans = 0
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # Scratch data that dies with the process: no journal fsyncs needed.
        self._conn.execute("PRAGMA journal_mode=OFF")
        self._conn.execute("PRAGMA synchronous=OFF")
        self._conn.executescript(_SCHEMA)
        self._finalizer = weakref.finalize(self, _cleanup, self._conn, self.directory)

    def room(self) -> int:
        """Bytes the spill can still take."""
        if self.max_bytes is not None:
            return max(0, self.max_bytes - self.bytes)
        free = shutil.disk_usage(self.directory).free
        return max(0, free - _FREE_DISK_MARGIN)

    def write(self, rollout_id: str, spans: Iterable[tuple[tuple[str, str], bytes]], nbytes: int) -> None:
        """Move a rollout's spans, ((attempt id, span id), JSON) pairs counted as `nbytes` in all, to disk in one
        transaction; StoreFullError if over budget."""
        if nbytes > self.room():
            raise StoreFullError(
                f"the span spill is full ({self.bytes} bytes on disk, budget "
                f"{self.max_bytes if self.max_bytes is not None else 'free disk minus 1 GiB'}); "
                "retry later or raise spill_max_bytes"
            )
        with self._conn:
            self._conn.execute("BEGIN")
            rows = [(rollout_id, attempt_id, span_id, payload) for (attempt_id, span_id), payload in spans]
            self._conn.executemany(
                "INSERT OR IGNORE INTO spans (rollout_id, attempt_id, span_id, payload) VALUES (?, ?, ?, ?)", rows
            )
        self.bytes += nbytes
        self.spans += len(rows)

    def contains(self, rollout_id: str, attempt_id: str, span_id: str) -> bool:
        """Whether this span was spilled."""
        row = self._conn.execute(
            "SELECT 1 FROM spans WHERE rollout_id = ? AND attempt_id = ? AND span_id = ?",
            (rollout_id, attempt_id, span_id),
        ).fetchone()
        return row is not None

    def read(self, rollout_id: str, attempt_id: str | None = None) -> list[bytes]:
        """The JSON of every spilled span of a rollout (of one attempt, when given)."""
        if attempt_id is None:
            rows = self._conn.execute("SELECT payload FROM spans WHERE rollout_id = ?", (rollout_id,)).fetchall()
        else:
            rows = self._conn.execute(
                "SELECT payload FROM spans WHERE rollout_id = ? AND attempt_id = ?", (rollout_id, attempt_id)
            ).fetchall()
        return [bytes(payload) for (payload,) in rows]

    def close(self) -> None:
        """Delete the spill directory and everything in it."""
        self._finalizer()
