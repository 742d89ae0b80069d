"""`SpanSpill`: where an in-memory store moves old spans when its memory budget is spent, so none are lost.

Spans are kept in a SQLite file inside a directory the spill owns and deletes on `close()` (or when the owning store
is garbage-collected). The file is scratch space for one process: it is not kept across restarts.

The disk budget bounds the real size of the spill's files, not the span bytes moved: a write that would take them
past it is rolled back and refused with `StoreFullError`, so what is already on disk stays and nothing is half
written. The directory holds a lock file, locked while its owner lives; a spill left behind by a process that died
without cleaning up (kill -9, power loss) is unlocked, and `remove_stale_spills` (run when a store or spill starts)
deletes it. Another live process's spill is locked and never touched.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import tempfile
import weakref
from array import array
from collections.abc import Iterable

from agl.store.errors import StoreFullError

try:
    import fcntl
except ImportError:  # not POSIX: no locks, so stale spills are never judged (and never removed)
    fcntl = None  # type: ignore[assignment]

__all__ = ["MIN_SPILL_BYTES", "SPILL_PREFIX", "SpanSpill", "remove_stale_spills", "remove_stale_spills_once"]

logger = logging.getLogger(__name__)

SPILL_PREFIX = "agl-spill-"
"""Name prefix of every spill directory."""

LOCK_NAME = "owner.lock"
"""The lock file in a spill directory: holds the owner's pid, locked (flock) while the owner lives."""

MIN_SPILL_BYTES = 64 * 1024
"""Smallest non-zero disk budget: an empty spill already takes a few pages (0 means "no spill at all")."""

_FREE_DISK_MARGIN = 1024**3
"""Bytes of free disk the default budget always leaves to the rest of the machine."""

# One row per (rollout, attempt) and write, holding its spans' JSON back to back (`sizes` splits them). A row of a
# rowid table keeps up to ~4 KB in its own page and puts the rest in whole overflow pages; the former layout (one
# WITHOUT ROWID row per span) sent every span above ~1 KB to an overflow page of its own, and 1 KB spans took 4.7x
# their size on disk (bench/spill_disk.py). Span keys sit in their own small table, for duplicate checks.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    rollout_id TEXT NOT NULL,
    attempt_id TEXT NOT NULL,
    sizes BLOB NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_by_attempt ON batches (rollout_id, attempt_id);
CREATE TABLE IF NOT EXISTS span_keys (
    rollout_id TEXT NOT NULL,
    attempt_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    PRIMARY KEY (rollout_id, attempt_id, span_id)
) WITHOUT ROWID;
"""

_swept: set[str] = set()


def _cleanup(conn: sqlite3.Connection, directory: str, lock_fd: int | None, owner_pid: int) -> None:
    try:
        conn.close()
    finally:
        if os.getpid() == owner_pid:  # a forked child exiting must not delete its parent's spill
            shutil.rmtree(directory, ignore_errors=True)
        if lock_fd is not None:
            os.close(lock_fd)


def _lock_directory(directory: str) -> int | None:
    """Create and lock the directory's lock file for this process's lifetime (None where there are no locks)."""
    if fcntl is None:
        return None
    fd = os.open(os.path.join(directory, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks only while a sweeper looks at it (it then sees an empty file)
        os.write(fd, f"{os.getpid()}\n".encode())
    except BaseException:
        os.close(fd)
        raise
    return fd


def remove_stale_spills(parent: str | None = None) -> list[str]:
    """Delete the spill directories under `parent` (default: the temp dir) whose owner process is gone.

    A spill is stale when its lock file exists, holds a pid and is not locked: its owner died without cleaning up.
    Directories that cannot be opened (another user's), that have no lock file, or whose lock is held are left
    alone. Returns the removed paths.
    """
    if fcntl is None:
        return []
    parent = parent or tempfile.gettempdir()
    removed: list[str] = []
    try:
        entries = [e for e in os.scandir(parent) if e.name.startswith(SPILL_PREFIX)]
    except OSError:
        return removed
    for entry in entries:
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            fd = os.open(os.path.join(entry.path, LOCK_NAME), os.O_RDONLY)
        except OSError:  # no lock file (being created, or not a spill of this kind), or not ours to read
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # locked: its owner is alive
                continue
            if not os.read(fd, 32).strip():  # its creator is between creating and locking the file
                continue
            size = sum(os.path.getsize(os.path.join(entry.path, name)) for name in os.listdir(entry.path))
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
            logger.warning(
                "removed %s (%d bytes), a span spill left by a process that did not close it", entry.path, size
            )
        except OSError as exc:
            logger.warning("could not check or remove the stale span spill %s: %s", entry.path, exc)
        finally:
            os.close(fd)
    return removed


def remove_stale_spills_once(parent: str | None = None) -> None:
    """`remove_stale_spills(parent)` the first time a process asks for this parent directory."""
    parent = os.path.abspath(parent or tempfile.gettempdir())
    if parent not in _swept:
        _swept.add(parent)
        remove_stale_spills(parent)


class SpanSpill:
    """An on-disk overflow area for spans, with a disk budget.

    Args:
        directory: parent directory for the spill (default: the system temp dir); a private subdirectory is created.
        max_bytes: most bytes the spill's files may take on disk (0, or at least `MIN_SPILL_BYTES`); None means
            "while the disk keeps 1 GiB free".
    """

    def __init__(self, directory: str | None = None, max_bytes: int | None = None) -> None:
        if max_bytes is not None and max_bytes != 0 and not MIN_SPILL_BYTES <= max_bytes:
            raise ValueError(
                f"spill max_bytes must be 0 (no spill), at least {MIN_SPILL_BYTES} bytes, or None; got {max_bytes}"
            )
        if directory is not None and not os.path.isdir(directory):
            raise ValueError(f"spill directory {directory!r} does not exist or is not a directory")
        remove_stale_spills_once(directory)
        self.directory = tempfile.mkdtemp(prefix=SPILL_PREFIX, dir=directory)
        self.path = os.path.join(self.directory, "spans.sqlite")
        self.max_bytes = max_bytes
        self.bytes = 0
        """Span bytes moved here, as the store counts them (their JSON size unless it estimates sizes)."""
        self.spans = 0
        lock_fd: int | None = None
        try:
            lock_fd = _lock_directory(self.directory)
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            shutil.rmtree(self.directory, ignore_errors=True)
            raise
        self._finalizer = weakref.finalize(self, _cleanup, self._conn, self.directory, lock_fd, os.getpid())
        # Scratch data that dies with the process: no fsyncs. The rollback journal stays in memory (no file on disk)
        # so that a write found over budget can still be undone.
        self._conn.execute("PRAGMA journal_mode=MEMORY")
        self._conn.execute("PRAGMA synchronous=OFF")
        self._conn.executescript(_SCHEMA)
        self._page_size = int(self._conn.execute("PRAGMA page_size").fetchone()[0])
        self._other_bytes = os.path.getsize(os.path.join(self.directory, LOCK_NAME)) if lock_fd is not None else 0
        self._file_bytes = self._database_bytes()

    def _database_bytes(self) -> int:
        return int(self._conn.execute("PRAGMA page_count").fetchone()[0]) * self._page_size

    @property
    def disk_bytes(self) -> int:
        """Bytes the spill's files take (the database and the lock file); what the budget bounds."""
        return self._file_bytes + self._other_bytes

    def _limit(self) -> int:
        """The most `disk_bytes` may become now."""
        if self.max_bytes is not None:
            return self.max_bytes
        return self.disk_bytes + max(0, shutil.disk_usage(self.directory).free - _FREE_DISK_MARGIN)

    def room(self) -> int:
        """Bytes the spill can still take on disk."""
        return max(0, self._limit() - self.disk_bytes)

    def _full(self, reason: str) -> StoreFullError:
        budget = self.max_bytes if self.max_bytes is not None else "free disk minus 1 GiB"
        return StoreFullError(
            f"the span spill is full ({reason}; {self.disk_bytes} bytes on disk, budget {budget}); "
            "retry later or raise spill_max_bytes"
        )

    def write(self, rollout_id: str, spans: Iterable[tuple[tuple[str, str], bytes]], nbytes: int) -> None:
        """Move a rollout's spans, ((attempt id, span id), JSON) pairs counted as `nbytes` in all, to disk in one
        transaction; StoreFullError (nothing written) if the files would grow past the budget."""
        keys: list[tuple[str, str, str]] = []
        groups: dict[str, tuple[array[int], list[bytes]]] = {}
        raw = 0
        for (attempt_id, span_id), payload in spans:
            keys.append((rollout_id, attempt_id, span_id))
            group = groups.get(attempt_id)
            if group is None:
                group = groups[attempt_id] = (array("Q"), [])
            group[0].append(len(payload))
            group[1].append(payload)
            raw += len(payload) + len(attempt_id) + len(span_id)
        limit = self._limit()
        if self.disk_bytes + raw > limit:  # the spans alone would not fit: refuse before writing anything
            raise self._full(f"{raw} more bytes would not fit")
        rows = [(rollout_id, aid, sizes.tobytes(), b"".join(parts)) for aid, (sizes, parts) in groups.items()]
        conn = self._conn
        try:
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO span_keys (rollout_id, attempt_id, span_id) VALUES (?, ?, ?)", keys)
            conn.executemany("INSERT INTO batches (rollout_id, attempt_id, sizes, payload) VALUES (?, ?, ?, ?)", rows)
            grown = self._database_bytes()
            if grown + self._other_bytes > limit:
                conn.execute("ROLLBACK")  # the file shrinks back to its size before this write
                raise self._full(f"these {len(keys)} spans take {grown - self._file_bytes} bytes on disk")
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:  # e.g. the disk itself is full: the same answer, retry later
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise self._full(f"SQLite could not write: {exc}") from exc
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._file_bytes = grown
        self.bytes += nbytes
        self.spans += len(keys)

    def contains(self, rollout_id: str, attempt_id: str, span_id: str) -> bool:
        """Whether this span was spilled."""
        row = self._conn.execute(
            "SELECT 1 FROM span_keys WHERE rollout_id = ? AND attempt_id = ? AND span_id = ?",
            (rollout_id, attempt_id, span_id),
        ).fetchone()
        return row is not None

    def read(self, rollout_id: str, attempt_id: str | None = None) -> list[bytes]:
        """The JSON of every spilled span of a rollout (of one attempt, when given)."""
        if attempt_id is None:
            rows = self._conn.execute("SELECT sizes, payload FROM batches WHERE rollout_id = ?", (rollout_id,))
        else:
            rows = self._conn.execute(
                "SELECT sizes, payload FROM batches WHERE rollout_id = ? AND attempt_id = ?", (rollout_id, attempt_id)
            )
        out: list[bytes] = []
        for sizes_blob, payload in rows.fetchall():
            sizes = array("Q")
            sizes.frombytes(sizes_blob)
            view = memoryview(payload)
            start = 0
            for size in sizes:
                out.append(bytes(view[start : start + size]))
                start += size
        return out

    def close(self) -> None:
        """Delete the spill directory and everything in it."""
        self._finalizer()
