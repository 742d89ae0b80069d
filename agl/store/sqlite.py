"""`SqliteLightningStore`: the store engine over a driver that keeps everything in one SQLite file, durable across
restarts.

Design
------
* No call runs SQLite on the caller's event loop. One writer thread owns the write connection and commits in
  groups: the writes queued while a commit is in flight are applied together in one transaction, each inside its
  own savepoint (a failing write is rolled back alone and raises to its own caller), and one COMMIT (one fsync in
  FULL) acknowledges them all. Reads run on reader threads, each with its own connection (`agl.store.sqlite_threads`).
* The database runs in WAL mode: a reader sees the last committed state and never waits for a commit or its fsync,
  and the writer never waits for readers, also across processes. Writes use `BEGIN IMMEDIATE` transactions; other
  processes wait up to `busy_timeout_seconds` for the write lock. Every batch call (`enqueue_many_rollouts`,
  `dequeue_many_rollouts`, `add_many_spans`, ...) is one write.
* Every acknowledged write is committed before the method returns. `synchronous` decides what "committed" survives:

  - ``"FULL"`` (the default): SQLite fsyncs the WAL on every commit, so an acknowledged write survives a crash of
    the process *and* a power loss or kernel panic. This costs one fsync per commit, shared by the writes of its
    group (well under a millisecond on an SSD with a write cache, several on a slow disk).
  - ``"NORMAL"``: in WAL mode a commit is durable across a crash of the process (the WAL is in the OS page cache)
    but the last transactions may be rolled back by a power loss; the database itself is never corrupted. Faster
    for small writes. Pass it when the host is trusted and throughput matters more.

  FULL is the default because the point of this backend is that an acknowledged rollout, span or status is never
  lost; the in-memory store is the fast option.
* The health scan (timeout / unresponsive) runs at the start of the same calls as in the in-memory store, debounced
  by `scan_debounce_seconds`; the first scanning call after opening a file always scans, so attempts that were
  running when a previous process died are judged by their rollout's rules then (timeout → retried or failed per
  the config). Queued rollouts simply stay in the queue in their order.
* `wait_for_rollouts` wakes without polling when the rollout finishes through this store object, and re-reads the
  database every 0.5 s in case another process (or another store object on the same file) finished it.
* Models are stored as JSON (pydantic's; a span given with its JSON keeps it) next to the columns the queries need
  (ids, status, ordering); every rule comes from `agl.store.engine`, the same as for the in-memory store, and
  `query_rollouts` is answered in SQL (`agl.store.sqlite_rollout_query`). Values must therefore be JSON-serialisable (rollout input, metadata, spans).
* `zero_copy` is False: several processes may open the same file and see one state, but waiters wake across
  processes only by the 0.5 s re-read and each process debounces its own health scans; use the HTTP server to share
  one store between processes.

The schema carries a version in its `meta` table; opening a file applies the pending migrations in order and
refuses a file written by a newer AGL.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, TypeVar

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

from agl.store import idempotency, state
from agl.store import sqlite_rollout_query as rollout_sql
from agl.store.base import LightningStoreStatistics
from agl.store.driver import CommitHook, EncodedSpan, M, ReadTransaction, WriteTransaction
from agl.store.engine import StoreEngine
from agl.store.errors import NotFoundError
from agl.store.events import StoreEvent
from agl.store.inputs import INT64_MAX
from agl.store.query import RolloutFilter, sort_items
from agl.store.sqlite_threads import GroupWriter, ReaderPool, stop_unclosed
from agl.types.core import Attempt, Rollout, Worker
from agl.types.resources import ResourcesUpdate
from agl.types.tracer import Span, span_json

__all__ = ["SCHEMA_VERSION", "SqliteLightningStore", "SqliteStoreError", "SqliteStoreStatistics"]

logger = logging.getLogger(__name__)

_POLL_SECONDS = 0.5
"""How often `wait_for_rollouts` re-reads the database for rollouts finished by another process."""

_IN_CHUNK = 500
"""Ids per `IN (...)` query."""

_DECODE_CHUNK = 100
"""Rows a large read decodes between two calls of `SqliteRows.step_aside` (about 1.5 ms of rollouts)."""

Synchronous = Literal["FULL", "NORMAL", "EXTRA", "OFF"]

T = TypeVar("T")


class SqliteStoreError(RuntimeError):
    """The database file cannot be used as a store: not SQLite, corrupt, foreign, or from a newer AGL."""


class SqliteStoreStatistics(LightningStoreStatistics, total=False):
    """The store statistics plus the size of the database files."""

    db_path: str
    db_file_bytes: int
    wal_file_bytes: int


# -- schema and migrations ------------------------------------------------------------------------------------------


def _migrate_to_1(db: sqlite3.Connection) -> None:
    """The first schema."""
    statements = [
        """CREATE TABLE rollouts (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            rollout_id TEXT NOT NULL UNIQUE,
            status TEXT NOT NULL,
            watched INTEGER NOT NULL DEFAULT 0,
            data BLOB NOT NULL
        )""",
        "CREATE INDEX rollouts_by_status ON rollouts (status, seq)",
        "CREATE INDEX rollouts_watched ON rollouts (seq) WHERE watched = 1",
        """CREATE TABLE attempts (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            rollout_id TEXT NOT NULL,
            attempt_id TEXT NOT NULL,
            sequence_id INTEGER NOT NULL,
            data BLOB NOT NULL,
            UNIQUE (rollout_id, attempt_id),
            UNIQUE (rollout_id, sequence_id)
        )""",
        """CREATE TABLE spans (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            rollout_id TEXT NOT NULL,
            attempt_id TEXT NOT NULL,
            span_id TEXT NOT NULL,
            sequence_id INTEGER NOT NULL,
            data BLOB NOT NULL,
            UNIQUE (rollout_id, attempt_id, span_id)
        )""",
        "CREATE INDEX spans_by_rollout ON spans (rollout_id, seq)",
        "CREATE TABLE span_counters (rollout_id TEXT PRIMARY KEY, counter INTEGER NOT NULL) WITHOUT ROWID",
        "CREATE TABLE queue (position INTEGER PRIMARY KEY AUTOINCREMENT, rollout_id TEXT NOT NULL UNIQUE)",
        """CREATE TABLE resources (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            resources_id TEXT NOT NULL UNIQUE,
            data BLOB NOT NULL
        )""",
        """CREATE TABLE workers (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            worker_id TEXT NOT NULL UNIQUE,
            status TEXT NOT NULL,
            data BLOB NOT NULL
        )""",
    ]
    for sql in statements:
        db.execute(sql)


_COUNTED_TABLES = ("rollouts", "attempts", "spans")
"""Tables whose row count `statistics()` reads from the `counters` table instead of counting rows."""


def _migrate_to_2(db: sqlite3.Connection) -> None:
    """Columns and indexes that let `query_rollouts` filter, sort and page in SQL; maintained row counts."""
    for column in ("mode TEXT", "start_time REAL", "end_time REAL"):
        db.execute(f"ALTER TABLE rollouts ADD COLUMN {column}")
    # Filled from each row's JSON with Python's parser, so the columns hold exactly the floats the models hold.
    last = 0
    while True:
        rows = db.execute("SELECT seq, data FROM rollouts WHERE seq > ? ORDER BY seq LIMIT 5000", (last,)).fetchall()
        if not rows:
            break
        updates = []
        for seq, data in rows:
            fields = json.loads(data)
            updates.append((fields.get("mode"), fields.get("start_time"), fields.get("end_time"), seq))
        db.executemany("UPDATE rollouts SET mode = ?, start_time = ?, end_time = ? WHERE seq = ?", updates)
        last = rows[-1][0]
    statements = [
        # Insertion order without reading the wide rows: deep pages skip index entries, not JSON, and an id
        # substring search reads the ids from the index.
        "CREATE INDEX rollouts_by_seq ON rollouts (seq, rollout_id)",
        "CREATE INDEX rollouts_by_start ON rollouts (start_time)",
        "CREATE INDEX rollouts_by_status_start ON rollouts (status, start_time)",
        "CREATE INDEX rollouts_by_mode_start ON rollouts (mode, start_time)",
        # `end_time IS NULL` first: the sort puts rollouts without an end time last ascending, first descending.
        "CREATE INDEX rollouts_by_end ON rollouts (end_time IS NULL, end_time)",
        "CREATE INDEX rollouts_by_status_end ON rollouts (status, end_time IS NULL, end_time)",
        "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    ]
    for sql in statements:
        db.execute(sql)
    # Rollouts per status ('status:<status>'), so a status count costs one lookup, not an index range.
    db.execute("INSERT INTO counters (name, value) SELECT 'status:' || status, COUNT(*) FROM rollouts GROUP BY status")
    db.execute(
        "CREATE TRIGGER count_rollout_status_new AFTER INSERT ON rollouts BEGIN "
        "INSERT INTO counters (name, value) VALUES ('status:' || NEW.status, 1) "
        "ON CONFLICT (name) DO UPDATE SET value = value + 1; END"
    )
    db.execute(
        "CREATE TRIGGER count_rollout_status_change AFTER UPDATE OF status ON rollouts "
        "WHEN OLD.status IS NOT NEW.status BEGIN "
        "UPDATE counters SET value = value - 1 WHERE name = 'status:' || OLD.status; "
        "INSERT INTO counters (name, value) VALUES ('status:' || NEW.status, 1) "
        "ON CONFLICT (name) DO UPDATE SET value = value + 1; END"
    )
    for table in _COUNTED_TABLES:
        db.execute(f"INSERT INTO counters (name, value) SELECT '{table}', COUNT(*) FROM {table}")
        # Rows are never deleted from these tables, so counting inserts keeps the count exact.
        db.execute(
            f"CREATE TRIGGER count_{table} AFTER INSERT ON {table} "
            f"BEGIN UPDATE counters SET value = value + 1 WHERE name = '{table}'; END"
        )


def _migrate_to_3(db: sqlite3.Connection) -> None:
    """Four rollout indexes for `query_rollouts` instead of six, each holding the filter columns of its order.

    Fewer index pages to write per rollout write; the columns a filter needs sit inside the index the page's order
    walks, so rows that do not match are skipped there.
    """
    for name in (
        "rollouts_by_start",
        "rollouts_by_status_start",
        "rollouts_by_mode_start",
        "rollouts_by_end",
        "rollouts_by_status_end",
    ):
        db.execute(f"DROP INDEX IF EXISTS {name}")
    statements = [
        # Start-time order; `mode` inside so a mode filter over a time window is checked in the index. Insert-only
        # (start_time never changes, mode rarely).
        "CREATE INDEX rollouts_by_start ON rollouts (start_time, mode)",
        # A status's rollouts by start time (the dashboard's main list); `mode` inside for status + mode filters.
        "CREATE INDEX rollouts_by_status_start ON rollouts (status, start_time, mode)",
        # `end_time IS NULL` first: the sort puts rollouts without an end time last ascending, first descending;
        # `status` inside so a status filter on this order is checked in the index.
        "CREATE INDEX rollouts_by_end ON rollouts (end_time IS NULL, end_time, status)",
    ]
    for sql in statements:
        db.execute(sql)


def _migrate_to_4(db: sqlite3.Connection) -> None:
    """Idempotency keys, each kept with its answer in the transaction of the write it answered
    (`agl.store.idempotency`); `seq` orders them oldest first for pruning."""
    db.execute(
        """CREATE TABLE idempotency_keys (
            seq INTEGER PRIMARY KEY,
            key TEXT NOT NULL UNIQUE,
            created REAL NOT NULL,
            fingerprint INTEGER NOT NULL,
            status INTEGER NOT NULL,
            content_type TEXT NOT NULL,
            headers TEXT NOT NULL,
            body BLOB NOT NULL
        )"""
    )


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migrate_to_1, _migrate_to_2, _migrate_to_3, _migrate_to_4]
"""`MIGRATIONS[i]` brings a database from schema version `i` to `i + 1`; append, never edit."""

SCHEMA_VERSION = len(MIGRATIONS)
"""The schema version this code writes."""


def _schema_version(db: sqlite3.Connection, path: str) -> int:
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "meta" not in tables:
        foreign = {t for t in tables if not t.startswith("sqlite_")}
        if foreign:
            raise SqliteStoreError(
                f"{path} is a SQLite database but not an AGL store (it has tables {sorted(foreign)} and no meta table)"
            )
        return 0
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        raise SqliteStoreError(f"{path} has a meta table without a schema_version; it is not an AGL store")
    try:
        return int(row[0])
    except (TypeError, ValueError):
        raise SqliteStoreError(f"{path} has an unreadable schema_version {row[0]!r}") from None


def _migrate(db: sqlite3.Connection, path: str) -> None:
    """Bring the file to the latest schema, one transaction per migration; refuse files from a newer AGL."""
    target = len(MIGRATIONS)
    while True:
        version = _schema_version(db, path)
        if version > target:
            raise SqliteStoreError(
                f"{path} has store schema version {version}, newer than this AGL supports ({target}); "
                "upgrade AGL to open it"
            )
        if version == target:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated meanwhile.
            version = _schema_version(db, path)
            if version < target:
                if version == 0:
                    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                    db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '0')")
                MIGRATIONS[version](db)
                db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version + 1),))
                logger.info("Migrated store %s to schema version %d", path, version + 1)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


def _connect(path: str, synchronous: str, busy_timeout: float) -> sqlite3.Connection:
    """A connection to the store file at `path` in WAL mode, migrated to `SCHEMA_VERSION` (or SqliteStoreError)."""
    try:
        db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise SqliteStoreError(f"cannot open store database {path}: {exc}") from exc
    try:
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal" and path not in ("", ":memory:"):
            logger.warning("Store %s runs in journal mode %r, not WAL: readers may block the writer", path, mode)
        db.execute(f"PRAGMA synchronous = {synchronous}")
        _migrate(db, path)
    except sqlite3.DatabaseError as exc:
        db.close()
        raise SqliteStoreError(f"{path} is not a usable SQLite store database ({exc})") from exc
    except BaseException:
        db.close()
        raise
    return db


# -- (de)serialisation ----------------------------------------------------------------------------------------------


def _dump(model: BaseModel) -> bytes:
    try:
        return model.__pydantic_serializer__.to_json(model, warnings=False)
    except PydanticSerializationError as exc:
        raise ValueError(f"{type(model).__name__} cannot be stored: a value is not JSON-serialisable ({exc})") from exc


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), _IN_CHUNK):
        yield items[start : start + _IN_CHUNK]


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _stay() -> None:
    """`SqliteRows.step_aside` where nothing waits for the thread (the writer)."""


def _no_hook(events: list[StoreEvent], finished: list[str]) -> None:
    return None


_LOCATE_ATTEMPT = (
    "SELECT r.data, a.data, (SELECT MAX(sequence_id) FROM attempts WHERE rollout_id = r.rollout_id) "
    "FROM rollouts r LEFT JOIN attempts a ON a.rollout_id = r.rollout_id AND a.attempt_id = ? "
    "WHERE r.rollout_id = ?"
)
"""A rollout, one of its attempts and its highest attempt sequence id (indexes: rollout id, (rollout, attempt),
(rollout, sequence id))."""

_READER_THREADS = 2
"""Reader connections (each on its own thread): reads beside one long query still find one free."""


class SqliteDriver:
    """The SQLite store's storage: a writer thread committing writes in groups on its connection, reader threads
    with their own connections (WAL snapshots), rows as pydantic JSON next to the columns queries need.

    See `agl.store.driver` for the interface and `agl.store.sqlite_threads` for the threads.
    """

    poll_seconds: float | None = _POLL_SECONDS

    def __init__(
        self,
        path: str,
        synchronous: Synchronous,
        busy_timeout: float,
        retention: idempotency.IdempotencyRetention,
        claim_timeout: float | None,
    ) -> None:
        self.path = path
        self.on_commit: CommitHook = _no_hook
        db = _connect(path, synchronous, busy_timeout)
        try:
            count, total, oldest = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0), MIN(created) FROM idempotency_keys"
            ).fetchone()
            if claim_timeout is not None:
                # Rows written with the claim timeout off are not marked for the health scan; mark them now.
                if db.execute("SELECT 1 FROM rollouts WHERE status = 'preparing' AND watched = 0 LIMIT 1").fetchone():
                    db.execute("UPDATE rollouts SET watched = 1 WHERE status = 'preparing' AND watched = 0")
        except BaseException:
            db.close()
            raise
        self.kept_keys = idempotency.RetentionTracker(retention, int(count), int(total), oldest)
        self._rows = SqliteRows(db, path, self.kept_keys)
        # The threads get nothing that holds this driver strongly, so a store dropped without close() is collected
        # and its finalizer stops them.
        self._writer: GroupWriter[SqliteRows] = GroupWriter(self._rows, _CommitRelay(self), path)
        # A private in-memory database exists on its one connection only: its reads go through the writer.
        self._readers: ReaderPool[SqliteRows] | None = (
            None
            if path in ("", ":memory:")
            else ReaderPool(_ReaderOpener(path, synchronous, busy_timeout, self.kept_keys), _READER_THREADS, path)
        )
        self._finalizer = weakref.finalize(self, stop_unclosed, [self._readers, self._writer], os.getpid())

    @property
    def writer(self) -> GroupWriter[SqliteRows]:
        """The writer thread (its `commits` and `writes` tell how writes were grouped)."""
        return self._writer

    # -- the driver ---------------------------------------------------------------------------------------------
    def bind(self, on_commit: CommitHook) -> None:
        """Set what to call after each committed write transaction."""
        self.on_commit = on_commit

    async def run_read(self, body: Callable[[ReadTransaction], T]) -> T:
        """`body` on a reader thread in one WAL snapshot: it never waits for a commit, and no event loop waits for
        it."""
        if self._readers is None:
            return await self._writer.run(body)
        return await self._readers.run(body)

    async def run_write(self, body: Callable[[WriteTransaction], T]) -> T:
        """`body` on the writer thread, committed with the writes queued beside it (each in its own savepoint)."""
        return await self._writer.run(body)

    @staticmethod
    def encode_span(span: Span, payload: bytes | None) -> EncodedSpan:
        """The span with its JSON: `payload` as it is when given (`span` was just validated from it, so reading it
        back gives the same span), else the span's own encoding."""
        if payload is None:
            try:
                payload = span_json(span)
            except PydanticSerializationError as exc:
                raise ValueError(f"Span cannot be stored: a value is not JSON-serialisable ({exc})") from exc
        return span, payload, len(payload)

    def close(self) -> None:
        """Finish queued writes and reads, then close every connection (checkpointing the WAL); later calls raise
        RuntimeError."""
        self._finalizer.detach()
        if self._readers is not None:
            self._readers.close()
        self._writer.close()
        self._rows.close()


class _CommitRelay:
    """The writer's commit hook: passes each commit on to the driver's `on_commit` while the driver lives (a weak
    reference, so the writer thread does not keep the store alive)."""

    def __init__(self, driver: SqliteDriver) -> None:
        self._driver = weakref.ref(driver)

    def __call__(self, events: list[StoreEvent], finished: list[str]) -> None:
        driver = self._driver()
        if driver is not None:
            driver.on_commit(events, finished)


class _ReaderOpener:
    """Opens a reader thread's connection: the database's settings only, nothing of the driver."""

    def __init__(
        self, path: str, synchronous: Synchronous, busy_timeout: float, kept_keys: idempotency.RetentionTracker
    ) -> None:
        self.path, self.synchronous, self.busy_timeout, self.kept_keys = path, synchronous, busy_timeout, kept_keys

    def __call__(self) -> SqliteRows:
        db = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA synchronous = {self.synchronous}")
        return SqliteRows(db, self.path, self.kept_keys)


class SqliteRows:
    """A transaction over one connection of the SQLite store: the rows as pydantic JSON next to the columns queries
    need (see `agl.store.driver`'s `WriteTransaction`). Used by one thread at a time."""

    def __init__(self, db: sqlite3.Connection, path: str, kept_keys: idempotency.RetentionTracker) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = db
        self.kept_keys = kept_keys
        self.events: list[StoreEvent] = []
        self.finished: list[str] = []
        self.step_aside: Callable[[], None] = _stay
        """Called between chunks of a large read (a reader thread's pauses while other reads wait)."""

    def conn(self) -> sqlite3.Connection:
        """The open connection (RuntimeError once closed)."""
        if self._db is None:
            raise RuntimeError(f"SqliteLightningStore on {self.path} is closed")
        return self._db

    def close(self) -> None:
        """Close the connection."""
        db, self._db = self._db, None
        if db is not None:
            db.close()

    # -- reads --------------------------------------------------------------------------------------------------
    @staticmethod
    def detach(model: M) -> M:
        """`model` itself: every read parses a fresh copy."""
        return model

    def get_rollout(self, rollout_id: str) -> Rollout | None:
        """A rollout by id."""
        if not isinstance(rollout_id, str):
            return None
        row = self.conn().execute("SELECT data FROM rollouts WHERE rollout_id = ?", (rollout_id,)).fetchone()
        return None if row is None else Rollout.model_validate_json(row[0])

    def get_rollouts(self, rollout_ids: Sequence[str]) -> dict[str, Rollout]:
        """The known rollouts among `rollout_ids`."""
        out: dict[str, Rollout] = {}
        wanted = [rid for rid in dict.fromkeys(rollout_ids) if isinstance(rid, str)]
        for chunk in _chunks(wanted):
            for (data,) in self.conn().execute(
                f"SELECT data FROM rollouts WHERE rollout_id IN ({_marks(len(chunk))})", tuple(chunk)
            ):
                rollout = Rollout.model_validate_json(data)
                out[rollout.rollout_id] = rollout
        return out

    def rollout_statuses(self, rollout_ids: Sequence[str]) -> dict[str, str]:
        """The statuses of the known rollouts among `rollout_ids` (from the status column, no JSON parsed)."""
        out: dict[str, str] = {}
        wanted = [rid for rid in dict.fromkeys(rollout_ids) if isinstance(rid, str)]
        for chunk in _chunks(wanted):
            for rid, status in self.conn().execute(
                f"SELECT rollout_id, status FROM rollouts WHERE rollout_id IN ({_marks(len(chunk))})", tuple(chunk)
            ):
                out[rid] = status
        return out

    def select_rollouts(
        self, query: RolloutFilter, sort_by: str | None, sort_order: str, limit: int, offset: int
    ) -> tuple[list[Rollout], int]:
        """Filtered, counted, sorted and paged in SQL over indexed columns; only the page's rows are parsed. A sort
        by a field without a column loads the matches and sorts them in Python."""
        db = self.conn()
        condition, params = rollout_sql.where(query)
        if sort_by is not None and sort_by not in rollout_sql.SQL_SORTS:
            rows = db.execute(f"SELECT data FROM rollouts WHERE {condition} ORDER BY seq", params)
            matches = sort_items([Rollout.model_validate_json(d) for (d,) in rows], Rollout, sort_by, sort_order)
            return matches[offset : None if limit == -1 else offset + limit], len(matches)
        total = self._count_rollouts(query, condition, params)
        # The page may steer SQLite to the index of its order; the count keeps every index available.
        page_condition, page_params = rollout_sql.where(query, sort_by)
        # An id-substring filter has no index: when it matches few rows, find them in one scan of the
        # (seq, rollout_id) index instead of walking the sort index and reading rows until the page fills.
        rare = any(c.op == "contains" for c in query.conditions) and (limit == -1 or total <= 4 * (offset + limit))
        return self._rollout_page(page_condition, page_params, sort_by, sort_order, limit, offset, rare=rare), total

    def _count_rollouts(self, query: RolloutFilter, condition: str, params: list[Any]) -> int:
        """How many rollouts match: from the maintained counters when the filter is none or only statuses."""
        db = self.conn()
        if not query.conditions:
            return int(db.execute("SELECT value FROM counters WHERE name = 'rollouts'").fetchone()[0])
        if len(query.conditions) == 1 and query.conditions[0].field == "status":
            names = [f"status:{s}" for s in dict.fromkeys(query.conditions[0].expected)]
            if not names:
                return 0
            row = db.execute(f"SELECT SUM(value) FROM counters WHERE name IN ({_marks(len(names))})", names).fetchone()
            return int(row[0] or 0)
        return int(db.execute(f"SELECT COUNT(*) FROM rollouts WHERE {condition}", params).fetchone()[0])

    def _rollout_page(
        self,
        condition: str,
        params: list[Any],
        sort_by: str | None,
        sort_order: str,
        limit: int,
        offset: int,
        *,
        rare: bool = False,
    ) -> list[Rollout]:
        """The page's rollouts: their `seq`s found from the indexes first, then only those rows read."""
        if limit == 0:
            return []
        db = self.conn()
        order = rollout_sql.order_by(sort_by, sort_order)
        if rare:
            condition = f"seq IN (SELECT seq FROM rollouts INDEXED BY rollouts_by_seq WHERE {condition})"
        seqs = [
            seq
            for (seq,) in db.execute(
                f"SELECT seq FROM rollouts WHERE {condition} ORDER BY {order} LIMIT ? OFFSET ?",
                [*params, limit, offset],
            )
        ]
        data: dict[int, bytes] = {}
        for chunk in _chunks(seqs):
            data.update(db.execute(f"SELECT seq, data FROM rollouts WHERE seq IN ({_marks(len(chunk))})", chunk))
        if len(seqs) <= _DECODE_CHUNK:
            return [Rollout.model_validate_json(data[seq]) for seq in seqs]
        out: list[Rollout] = []
        for start in range(0, len(seqs), _DECODE_CHUNK):
            if start:
                self.step_aside()
            out.extend(Rollout.model_validate_json(data[seq]) for seq in seqs[start : start + _DECODE_CHUNK])
        return out

    def latest_attempt(self, rollout_id: str) -> Attempt | None:
        """The rollout's attempt with the highest sequence id."""
        row = (
            self.conn()
            .execute("SELECT data FROM attempts WHERE rollout_id = ? ORDER BY sequence_id DESC LIMIT 1", (rollout_id,))
            .fetchone()
        )
        return None if row is None else Attempt.model_validate_json(row[0])

    def latest_attempts(self, rollout_ids: Sequence[str]) -> dict[str, Attempt]:
        """Each rollout's latest attempt, a chunk of rollouts per query (SQLite returns `data` of the row holding
        the group's MAX)."""
        out: dict[str, Attempt] = {}
        wanted = [rid for rid in dict.fromkeys(rollout_ids) if isinstance(rid, str)]
        db = self.conn()
        for index, chunk in enumerate(_chunks(wanted)):
            if index:
                self.step_aside()
            for rid, _, data in db.execute(
                f"SELECT rollout_id, MAX(sequence_id), data FROM attempts WHERE rollout_id IN ({_marks(len(chunk))}) "
                "GROUP BY rollout_id",
                tuple(chunk),
            ):
                out[rid] = Attempt.model_validate_json(data)
        return out

    def locate_attempt(self, rollout_id: str, attempt_id: str) -> tuple[Rollout | None, Attempt | None, int]:
        """The rollout, its attempt `attempt_id` and its highest attempt sequence id, read by one statement (the
        engine's optional `locate_attempt`: every span write needs all three)."""
        if not isinstance(rollout_id, str) or not isinstance(attempt_id, str):
            return self.get_rollout(rollout_id), None, 0
        row = self.conn().execute(_LOCATE_ATTEMPT, (attempt_id, rollout_id)).fetchone()
        if row is None:
            return None, None, 0
        rollout_data, attempt_data, latest = row
        attempt = None if attempt_data is None else Attempt.model_validate_json(attempt_data)
        return Rollout.model_validate_json(rollout_data), attempt, int(latest) if latest is not None else 0

    def latest_sequence_id(self, rollout_id: str) -> int:
        """The highest attempt sequence id of the rollout (0 without attempts)."""
        row = (
            self.conn().execute("SELECT MAX(sequence_id) FROM attempts WHERE rollout_id = ?", (rollout_id,)).fetchone()
        )
        return int(row[0]) if row[0] is not None else 0

    def get_attempt(self, rollout_id: str, attempt_id: str) -> Attempt | None:
        """An attempt by id."""
        if not isinstance(attempt_id, str):
            return None
        row = (
            self.conn()
            .execute("SELECT data FROM attempts WHERE rollout_id = ? AND attempt_id = ?", (rollout_id, attempt_id))
            .fetchone()
        )
        return None if row is None else Attempt.model_validate_json(row[0])

    def attempts(self, rollout_id: str) -> list[Attempt]:
        """The rollout's attempts by sequence id."""
        rows = self.conn().execute("SELECT data FROM attempts WHERE rollout_id = ? ORDER BY sequence_id", (rollout_id,))
        return [Attempt.model_validate_json(data) for (data,) in rows]

    def span_payloads(self, rollout_id: str, attempt_id: str | None) -> list[bytes]:
        """The JSON of the rollout's spans in insertion order."""
        db = self.conn()
        if attempt_id is None:
            rows = db.execute("SELECT data FROM spans WHERE rollout_id = ? ORDER BY seq", (rollout_id,))
        else:
            rows = db.execute(
                "SELECT data FROM spans WHERE rollout_id = ? AND attempt_id = ? ORDER BY seq", (rollout_id, attempt_id)
            )
        return [data for (data,) in rows]

    def get_resources(self, resources_id: str) -> ResourcesUpdate | None:
        """A resources snapshot by id."""
        if not isinstance(resources_id, str):
            return None
        row = self.conn().execute("SELECT data FROM resources WHERE resources_id = ?", (resources_id,)).fetchone()
        return None if row is None else ResourcesUpdate.model_validate_json(row[0])

    def all_resources(self) -> list[ResourcesUpdate]:
        """Every snapshot in insertion order."""
        rows = self.conn().execute("SELECT data FROM resources ORDER BY seq").fetchall()
        return [ResourcesUpdate.model_validate_json(d) for (d,) in rows]

    def latest_resources_id(self) -> str | None:
        """The id of the latest snapshot."""
        row = self.conn().execute("SELECT value FROM meta WHERE key = 'latest_resources_id'").fetchone()
        return None if row is None else str(row[0])

    def get_worker(self, worker_id: str) -> Worker | None:
        """A worker by id."""
        row = self.conn().execute("SELECT data FROM workers WHERE worker_id = ?", (worker_id,)).fetchone()
        return None if row is None else Worker.model_validate_json(row[0])

    def all_workers(self) -> list[Worker]:
        """Every worker in insertion order."""
        rows = self.conn().execute("SELECT data FROM workers ORDER BY seq").fetchall()
        return [Worker.model_validate_json(d) for (d,) in rows]

    def any_watched(self) -> bool:
        """Whether any rollout is marked for the health scan."""
        return self.conn().execute("SELECT 1 FROM rollouts WHERE watched = 1 LIMIT 1").fetchone() is not None

    def watched_rollouts(self, rollout_ids: Sequence[str] | None = None) -> list[Rollout]:
        """The watched rollouts (all, or those among `rollout_ids`) in insertion order."""
        db = self.conn()
        if rollout_ids is None:
            rows = db.execute("SELECT data FROM rollouts WHERE watched = 1 ORDER BY seq").fetchall()
        else:
            rows = []
            for chunk in _chunks(rollout_ids):
                rows.extend(
                    db.execute(
                        f"SELECT data FROM rollouts WHERE watched = 1 AND rollout_id IN ({_marks(len(chunk))}) "
                        "ORDER BY seq",
                        tuple(chunk),
                    )
                )
        return [Rollout.model_validate_json(data) for (data,) in rows]

    # -- writes -------------------------------------------------------------------------------------------------
    def insert_rollout(self, rollout: Rollout, watched: bool) -> None:
        """Insert a rollout row and its span counter."""
        db = self.conn()
        db.execute(
            "INSERT INTO rollouts (rollout_id, status, watched, mode, start_time, end_time, data) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                rollout.rollout_id,
                rollout.status,
                int(watched),
                rollout.mode,
                rollout.start_time,
                rollout.end_time,
                _dump(rollout),
            ),
        )
        db.execute("INSERT INTO span_counters (rollout_id, counter) VALUES (?, 0)", (rollout.rollout_id,))

    def put_rollout(self, rollout: Rollout, watched: bool, old_status: str, old_mode: str | None) -> None:
        """Update a rollout row (`start_time` never changes; `mode` is written only when it changed, sparing its
        indexes)."""
        db = self.conn()
        if old_mode != rollout.mode:
            db.execute("UPDATE rollouts SET mode = ? WHERE rollout_id = ?", (rollout.mode, rollout.rollout_id))
        db.execute(
            "UPDATE rollouts SET status = ?, watched = ?, end_time = ?, data = ? WHERE rollout_id = ?",
            (rollout.status, int(watched), rollout.end_time, _dump(rollout), rollout.rollout_id),
        )

    def enqueue(self, rollout_id: str) -> None:
        """Append to the queue; a rollout already in it keeps its position."""
        self.conn().execute("INSERT OR IGNORE INTO queue (rollout_id) VALUES (?)", (rollout_id,))

    def claim_next(self) -> Rollout | None:
        """Delete queue entries from the head until one whose rollout is still queuing."""
        db = self.conn()
        while True:
            row = db.execute("SELECT position, rollout_id FROM queue ORDER BY position LIMIT 1").fetchone()
            if row is None:
                return None
            position, rollout_id = row
            db.execute("DELETE FROM queue WHERE position = ?", (position,))
            rollout = self.get_rollout(rollout_id)
            if rollout is None or rollout.status not in state.QUEUING_STATUSES:
                logger.warning("Skipping stale queue entry %s (no longer waiting in the queue)", rollout_id)
                continue
            return rollout

    def insert_attempt(self, attempt: Attempt) -> None:
        """Insert an attempt row."""
        self.conn().execute(
            "INSERT INTO attempts (rollout_id, attempt_id, sequence_id, data) VALUES (?, ?, ?, ?)",
            (attempt.rollout_id, attempt.attempt_id, attempt.sequence_id, _dump(attempt)),
        )

    def put_attempt(self, attempt: Attempt) -> None:
        """Update an attempt row."""
        self.conn().execute(
            "UPDATE attempts SET data = ? WHERE rollout_id = ? AND attempt_id = ?",
            (_dump(attempt), attempt.rollout_id, attempt.attempt_id),
        )

    def put_resources(self, update: ResourcesUpdate) -> None:
        """Insert or update a snapshot (in place: it keeps its insertion position) and make it the latest."""
        db = self.conn()
        db.execute(
            "INSERT INTO resources (resources_id, data) VALUES (?, ?) "
            "ON CONFLICT (resources_id) DO UPDATE SET data = excluded.data",
            (update.resources_id, _dump(update)),
        )
        db.execute(
            "INSERT INTO meta (key, value) VALUES ('latest_resources_id', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (update.resources_id,),
        )

    def put_worker(self, worker: Worker) -> None:
        """Insert or update a worker row."""
        self.conn().execute(
            "INSERT INTO workers (worker_id, status, data) VALUES (?, ?, ?) "
            "ON CONFLICT (worker_id) DO UPDATE SET status = excluded.status, data = excluded.data",
            (worker.worker_id, worker.status, _dump(worker)),
        )

    # -- spans --------------------------------------------------------------------------------------------------
    def raise_span_counter(self, rollout_id: str, sequence_id: int) -> None:
        """Raise the rollout's counter to `sequence_id` if it is lower."""
        self.conn().execute(
            "UPDATE span_counters SET counter = ? WHERE rollout_id = ? AND counter < ?",
            (sequence_id, rollout_id, sequence_id),
        )

    def allocate_span_sequence_ids(self, counts: Mapping[str, int]) -> dict[str, int]:
        """Advance each rollout's counter by its count; each first new id (an unknown rollout rolls back all)."""
        first: dict[str, int] = {}
        for rollout_id, count in counts.items():
            # Guarded in SQL: past 2**63-1 SQLite would turn the counter into a float.
            row = (
                self.conn()
                .execute(
                    "UPDATE span_counters SET counter = counter + ? WHERE rollout_id = ? AND counter <= ? "
                    "RETURNING counter",
                    (count, rollout_id, INT64_MAX - count),
                )
                .fetchone()
            )
            if row is None:
                if self.get_rollout(rollout_id) is None:
                    raise NotFoundError("rollout", rollout_id)
                raise ValueError(f"span sequence ids of rollout {rollout_id} are exhausted (they stop at {INT64_MAX})")
            first[rollout_id] = int(row[0]) - count + 1
        return first

    def reserve_span_bytes(self, size: int) -> None:
        """Nothing: the file has no span budget."""

    def insert_spans(self, spans: Iterable[EncodedSpan]) -> list[Span]:
        """Insert span rows; a span id the attempt already has is logged and skipped."""
        db = self.conn()
        stored: list[Span] = []
        for span, data, _ in spans:
            cursor = db.execute(
                "INSERT OR IGNORE INTO spans (rollout_id, attempt_id, span_id, sequence_id, data) "
                "VALUES (?, ?, ?, ?, ?)",
                (span.rollout_id, span.attempt_id, span.span_id, span.sequence_id, data),
            )
            if cursor.rowcount == 0:
                logger.error(
                    "Duplicate span %s of rollout %s attempt %s ignored", span.span_id, span.rollout_id, span.attempt_id
                )
                continue
            stored.append(span)
        return stored

    # -- idempotency keys (inside a write transaction) ------------------------------------------------------------
    def replay_kept(self, now: float) -> None:
        """First step of a keyed write: raise `AnswerAlreadyKept` when its key already has a live answer (a retry
        of a write committed before), so nothing runs again; forget the key when it is past its age."""
        pending = idempotency.current_write()
        if pending is None or pending.encode is None:
            return
        found = self._kept_answer(pending.key)
        if found is None:
            return
        created, first = found
        if now - created <= self.kept_keys.retention.max_age_seconds:
            raise idempotency.AnswerAlreadyKept(pending.key, first)
        self.conn().execute("DELETE FROM idempotency_keys WHERE key = ?", (pending.key,))  # expired, not yet pruned
        self.kept_keys.entries -= 1
        self.kept_keys.bytes -= len(first.body)

    def keep_answer(self, result: Any, now: float) -> None:
        """Last step of a keyed write: keep the answer to `result` with the write itself, so a retry after a crash
        gets it (the write began with `replay_kept`). Nothing after it may fail, or the kept count drifts."""
        pending = idempotency.answer_to_keep(result)
        if pending is None:
            return
        answer = pending.kept
        assert answer is not None
        db = self.conn()
        db.execute(
            "INSERT INTO idempotency_keys (key, created, fingerprint, status, content_type, headers, body) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                pending.key,
                now,
                answer.fingerprint,
                answer.status,
                answer.content_type.decode("latin-1"),
                json.dumps([[name.decode("latin-1"), value.decode("latin-1")] for name, value in answer.headers])
                if answer.headers
                else "[]",
                answer.body,
            ),
        )
        tracker = self.kept_keys
        tracker.added(len(answer.body), now)
        if tracker.prune_due(now):
            self._prune_answers(now)

    def _kept_answer(self, key: str) -> tuple[float, idempotency.KeptAnswer] | None:
        """When `key` was kept and its answer, or None."""
        row = (
            self.conn()
            .execute(
                "SELECT created, fingerprint, status, content_type, headers, body FROM idempotency_keys WHERE key = ?",
                (key,),
            )
            .fetchone()
        )
        if row is None:
            return None
        created, fingerprint, status, content_type, headers, body = row
        pairs = tuple((name.encode("latin-1"), value.encode("latin-1")) for name, value in json.loads(headers))
        return float(created), idempotency.KeptAnswer(
            int(fingerprint), int(status), bytes(body), content_type.encode("latin-1"), pairs
        )

    def _prune_answers(self, now: float, batch: int = 500, most: int = 5000) -> None:
        """Drop the oldest keys the retention says must go (at most `most` per write; the next write goes on)."""
        db = self.conn()
        tracker = self.kept_keys
        tracker.start_prune()
        seen = 0
        while seen < most:
            rows = db.execute(
                "SELECT seq, created, LENGTH(body) FROM idempotency_keys ORDER BY seq LIMIT ?", (batch,)
            ).fetchall()
            last = None
            kept_one = False
            for seq, created, size in rows:
                if not tracker.drop(float(created), int(size), now):
                    kept_one = True
                    break
                last = seq
            if last is not None:
                db.execute("DELETE FROM idempotency_keys WHERE seq <= ?", (last,))
            if kept_one:
                return
            if len(rows) < batch:
                tracker.emptied()
                return
            seen += len(rows)


class SqliteLightningStore(StoreEngine):
    """A durable, thread-safe store in one SQLite file (WAL); reopening the file resumes where it stopped.

    Args:
        path: the database file (created if missing); `":memory:"` gives a private, non-durable database.
        clock: source of the current time in epoch seconds (tests pass a controllable clock).
        scan_debounce_seconds: minimum time between two health scans (timeout / unresponsive); ≤ 0 scans every call.
        synchronous: SQLite `synchronous` mode: "FULL" (default, durable across power loss) or "NORMAL" (durable
            across a crash of the process, faster); see the module docstring.
        busy_timeout_seconds: how long to wait for another process holding the write lock.
        claim_timeout_seconds: a claimed attempt still `preparing` with no sign of life from its runner (its own or
            its worker's heartbeat) for this long is returned to the queue by the health scan; None or 0 turns it off.
        idempotency_retention: how long and how many idempotency keys of served writes are kept in the file with
            their answers (default: 10 minutes, 100 000 keys, 256 MiB of answers, whichever is reached first).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] | None = None,
        scan_debounce_seconds: float = 10.0,
        synchronous: Synchronous = "FULL",
        busy_timeout_seconds: float = 30.0,
        claim_timeout_seconds: float | None = state.DEFAULT_CLAIM_TIMEOUT_SECONDS,
        idempotency_retention: idempotency.IdempotencyRetention | None = None,
    ) -> None:
        claim_timeout = state.check_claim_timeout(claim_timeout_seconds)
        retention = idempotency_retention if idempotency_retention is not None else idempotency.IdempotencyRetention()
        if not isinstance(retention, idempotency.IdempotencyRetention):
            raise ValueError(f"idempotency_retention must be an IdempotencyRetention, got {retention!r}")
        if synchronous not in ("FULL", "NORMAL", "EXTRA", "OFF"):
            raise ValueError(f"synchronous must be one of FULL, NORMAL, EXTRA, OFF; got {synchronous!r}")
        self._path = os.fspath(path)
        self._synchronous: Synchronous = synchronous
        self._busy_timeout = float(busy_timeout_seconds)
        self._sqlite = SqliteDriver(self._path, synchronous, self._busy_timeout, retention, claim_timeout)
        super().__init__(
            self._sqlite,
            clock=clock,
            scan_debounce_seconds=scan_debounce_seconds,
            claim_timeout_seconds=claim_timeout,
        )
        self._created = self._clock()

    # -- pickling: a copy reopens the same file ---------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        if self._path == ":memory:" or self._path == "":
            raise TypeError("a SqliteLightningStore on a private in-memory database cannot be pickled")
        return {
            "path": self._path,
            "clock": self._clock,
            "scan_debounce_seconds": self._scan_debounce,
            "synchronous": self._synchronous,
            "busy_timeout_seconds": self._busy_timeout,
            "claim_timeout_seconds": self._claim_timeout,
            "idempotency_retention": self._sqlite.kept_keys.retention,
        }

    def __setstate__(self, data: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            data["path"],
            clock=data["clock"],
            scan_debounce_seconds=data["scan_debounce_seconds"],
            synchronous=data["synchronous"],
            busy_timeout_seconds=data["busy_timeout_seconds"],
            claim_timeout_seconds=data.get("claim_timeout_seconds", state.DEFAULT_CLAIM_TIMEOUT_SECONDS),
            idempotency_retention=data.get("idempotency_retention"),
        )

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    async def statistics(self) -> SqliteStoreStatistics:
        """Row counts of every collection, uptime, and the size of the database and WAL files."""

        def count(tx: ReadTransaction) -> list[int]:
            assert isinstance(tx, SqliteRows)
            db = tx.conn()
            counted = dict(db.execute("SELECT name, value FROM counters").fetchall())
            return [
                counted[table] if table in counted else db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                for table in ("rollouts", "attempts", "spans", "resources", "workers")
            ]

        counts = await self._sqlite.run_read(count)
        return SqliteStoreStatistics(
            name=type(self).__name__,
            total_rollouts=counts[0],
            total_attempts=counts[1],
            total_spans=counts[2],
            total_resources=counts[3],
            total_workers=counts[4],
            uptime=self._clock() - self._created,
            db_path=self._path,
            db_file_bytes=_file_size(self._path),
            wal_file_bytes=_file_size(self._path + "-wal"),
        )
