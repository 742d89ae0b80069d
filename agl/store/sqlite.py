"""`SqliteLightningStore`: the whole store protocol in one SQLite file, durable across restarts.

Design
------
* One connection owned by the store; every method does its work synchronously under one `threading.Lock` (calls
  are short and no lock is ever held across an `await`), so the store is safe from several threads and event loops.
* The database runs in WAL mode: readers never block the writer and the writer never blocks readers, also across
  processes. Writes use `BEGIN IMMEDIATE` transactions; other processes wait up to `busy_timeout_seconds` for the
  write lock. Every batch call (`enqueue_many_rollouts`, `dequeue_many_rollouts`, `add_many_spans`, ...) is one
  transaction.
* Every acknowledged write is committed before the method returns. `synchronous` decides what "committed" survives:

  - ``"FULL"`` (the default): SQLite fsyncs the WAL on every commit, so an acknowledged write survives a crash of
    the process *and* a power loss or kernel panic. This costs one fsync per write call (well under a millisecond
    on an SSD with a write cache, several on a slow disk).
  - ``"NORMAL"``: in WAL mode a commit is durable across a crash of the process (the WAL is in the OS page cache)
    but the last transactions may be rolled back by a power loss; the database itself is never corrupted. Roughly
    an order of magnitude faster for small writes. Pass it when the host is trusted and throughput matters more.

  FULL is the default because the point of this backend is that an acknowledged rollout, span or status is never
  lost; the in-memory store is the fast option.
* The health scan (timeout / unresponsive) runs at the start of the same calls as in the in-memory store, debounced
  by `scan_debounce_seconds`; the first scanning call after opening a file always scans, so attempts that were
  running when a previous process died are judged by their rollout's rules then (timeout → retried or failed per
  the config). Queued rollouts simply stay in the queue in their order.
* `wait_for_rollouts` wakes without polling when the rollout finishes through this store object, and re-reads the
  database every 0.5 s in case another process (or another store object on the same file) finished it.
* Models are stored as pydantic JSON next to the columns the queries need (ids, status, ordering); rules come from
  `agl.store.state` and filtering, sorting and paging from `agl.store.query`, exactly as in the in-memory store.
  Values must therefore be JSON-serialisable (rollout input, metadata, span attributes).
* `zero_copy` is False: several processes may open the same file and see one state, but waiters wake across
  processes only by the 0.5 s re-read and each process debounces its own health scans; use the HTTP server to share
  one store between processes.

The schema carries a version in its `meta` table; opening a file applies the pending migrations in order and
refuses a file written by a newer AGL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

from pydantic import BaseModel, TypeAdapter
from pydantic_core import PydanticSerializationError

from agl.store import idempotency, state
from agl.store import sqlite_rollout_query as rollout_sql
from agl.store.base import LightningStore, LightningStoreCapabilities, LightningStoreStatistics
from agl.store.errors import NotFoundError, StaleAttemptError
from agl.store.events import AttemptTransition, RolloutTransition, StaleWriteRefused, StoreEvent
from agl.store.inputs import (
    as_config,
    as_metadata,
    build_model,
    check_attempt_update,
    check_mode,
    check_worker_id,
    new_id,
    rollout_changes,
)
from agl.store.query import (
    RolloutFilter,
    check_page,
    check_sort_field,
    check_sort_order,
    compile_filter,
    paginate,
    rollout_filter,
    sort_items,
    span_filter,
    worker_filter,
)
from agl.store.waiters import CompletionWaiters
from agl.types.core import (
    UNSET,
    Attempt,
    AttemptedRollout,
    AttemptStatus,
    EnqueueRolloutRequest,
    PaginatedResult,
    Rollout,
    RolloutConfig,
    RolloutMode,
    RolloutStatus,
    TaskInput,
    Worker,
    WorkerStatus,
)
from agl.types.resources import NamedResources, ResourcesUpdate
from agl.types.tracer import Span

__all__ = ["SCHEMA_VERSION", "SqliteLightningStore", "SqliteStoreError", "SqliteStoreStatistics"]

logger = logging.getLogger(__name__)

_named_resources_adapter: TypeAdapter[NamedResources] = TypeAdapter(NamedResources)

_POLL_SECONDS = 0.5
"""How often `wait_for_rollouts` re-reads the database for rollouts finished by another process."""

_IN_CHUNK = 500
"""Ids per `IN (...)` query."""

Synchronous = Literal["FULL", "NORMAL", "EXTRA", "OFF"]


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


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _IN_CHUNK):
        yield items[start : start + _IN_CHUNK]


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _snapshot(rollout: Rollout, attempt: Attempt | None) -> Rollout:
    """The rollout with `attempt` attached when there is one (both freshly read, so no copy is needed)."""
    if attempt is None:
        return rollout
    fields = dict(rollout.__dict__)
    fields["attempt"] = attempt
    return build_model(AttemptedRollout, fields, rollout.__pydantic_extra__)


class SqliteLightningStore(LightningStore):
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
        self._claim_timeout = state.check_claim_timeout(claim_timeout_seconds)
        retention = idempotency_retention if idempotency_retention is not None else idempotency.IdempotencyRetention()
        if not isinstance(retention, idempotency.IdempotencyRetention):
            raise ValueError(f"idempotency_retention must be an IdempotencyRetention, got {retention!r}")
        if synchronous not in ("FULL", "NORMAL", "EXTRA", "OFF"):
            raise ValueError(f"synchronous must be one of FULL, NORMAL, EXTRA, OFF; got {synchronous!r}")
        self._path = os.fspath(path)
        self._clock: Callable[[], float] = clock or time.time
        self._scan_debounce = float(scan_debounce_seconds)
        self._synchronous: Synchronous = synchronous
        self._busy_timeout = float(busy_timeout_seconds)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = _connect(self._path, synchronous, self._busy_timeout)
        self._created = self._clock()
        self._last_scan: float | None = None
        self._waiters = CompletionWaiters()
        self._finished_in_tx: list[str] = []
        self._events_in_tx: list[StoreEvent] = []
        count, total, oldest = (
            self._conn()
            .execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0), MIN(created) FROM idempotency_keys")
            .fetchone()
        )
        self._kept_keys = idempotency.RetentionTracker(retention, int(count), int(total), oldest)
        if self._claim_timeout is not None:
            self._watch_unconfirmed_claims()

    def _watch_unconfirmed_claims(self) -> None:
        """Mark every `preparing` rollout for the health scan (rows written with the claim timeout off lack it)."""
        with self._lock:
            db = self._conn()
            if db.execute("SELECT 1 FROM rollouts WHERE status = 'preparing' AND watched = 0 LIMIT 1").fetchone():
                with self._write() as db:
                    db.execute("UPDATE rollouts SET watched = 1 WHERE status = 'preparing' AND watched = 0")

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
            "idempotency_retention": self._kept_keys.retention,
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

    @property
    def capabilities(self) -> LightningStoreCapabilities:
        """Thread-safe and async-safe; not a zero-copy store shared across processes (see the module docstring)."""
        return LightningStoreCapabilities(thread_safe=True, async_safe=True, zero_copy=False, otlp_traces=False)

    async def statistics(self) -> SqliteStoreStatistics:
        """Row counts of every collection, uptime, and the size of the database and WAL files."""
        with self._lock:
            db = self._conn()
            db.execute("BEGIN")
            try:
                counted = dict(db.execute("SELECT name, value FROM counters").fetchall())
                counts = [
                    counted[table] if table in counted else db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                    for table in ("rollouts", "attempts", "spans", "resources", "workers")
                ]
            finally:
                db.execute("COMMIT")
            uptime = self._clock() - self._created
        return SqliteStoreStatistics(
            name=type(self).__name__,
            total_rollouts=counts[0],
            total_attempts=counts[1],
            total_spans=counts[2],
            total_resources=counts[3],
            total_workers=counts[4],
            uptime=uptime,
            db_path=self._path,
            db_file_bytes=_file_size(self._path),
            wal_file_bytes=_file_size(self._path + "-wal"),
        )

    async def close(self) -> None:
        """Close the database (checkpointing the WAL); later calls raise RuntimeError."""
        with self._lock:
            db, self._db = self._db, None
            if db is not None:
                db.close()

    # -- transactions (call with self._lock held) -------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"SqliteLightningStore on {self._path} is closed")
        return self._db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; waiters of rollouts it finished are woken only after it commits."""
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        self._finished_in_tx = []
        self._events_in_tx = []
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._finished_in_tx = []
            self._events_in_tx = []
            raise
        finished, self._finished_in_tx = self._finished_in_tx, []
        for rollout_id in finished:
            self._waiters.release(rollout_id)
        if self._events_in_tx:
            happened, self._events_in_tx = self._events_in_tx, []
            for event in happened:  # only committed changes are reported
                self.events.emit(event)

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: a consistent snapshot that never blocks writers (WAL)."""
        db = self._conn()
        db.execute("BEGIN")
        try:
            yield db
        finally:
            db.execute("COMMIT")

    # -- row access -----------------------------------------------------------------------------------------
    def _get_rollout(self, db: sqlite3.Connection, rollout_id: str) -> Rollout | None:
        if not isinstance(rollout_id, str):
            return None
        row = db.execute("SELECT data FROM rollouts WHERE rollout_id = ?", (rollout_id,)).fetchone()
        return None if row is None else Rollout.model_validate_json(row[0])

    def _rollout(self, db: sqlite3.Connection, rollout_id: str) -> Rollout:
        rollout = self._get_rollout(db, rollout_id)
        if rollout is None:
            raise NotFoundError("rollout", rollout_id)
        return rollout

    def _put_rollout(self, db: sqlite3.Connection, rollout: Rollout) -> None:
        # start_time never changes; mode only through update_rollout, which writes it itself.
        db.execute(
            "UPDATE rollouts SET status = ?, watched = ?, end_time = ?, data = ? WHERE rollout_id = ?",
            (rollout.status, self._watched(rollout), rollout.end_time, _dump(rollout), rollout.rollout_id),
        )

    def _watched(self, rollout: Rollout) -> int:
        """1 if the health scan must look at this rollout (`state.watch_rollout`)."""
        return int(state.watch_rollout(rollout.status, rollout.config, self._claim_timeout))

    def _latest_attempt(self, db: sqlite3.Connection, rollout_id: str) -> Attempt | None:
        row = db.execute(
            "SELECT data FROM attempts WHERE rollout_id = ? ORDER BY sequence_id DESC LIMIT 1", (rollout_id,)
        ).fetchone()
        return None if row is None else Attempt.model_validate_json(row[0])

    def _latest_sequence(self, db: sqlite3.Connection, rollout_id: str) -> int:
        row = db.execute("SELECT MAX(sequence_id) FROM attempts WHERE rollout_id = ?", (rollout_id,)).fetchone()
        return int(row[0]) if row[0] is not None else 0

    def _get_attempt(self, db: sqlite3.Connection, rollout_id: str, attempt_id: str) -> Attempt | None:
        if not isinstance(attempt_id, str):
            return None
        row = db.execute(
            "SELECT data FROM attempts WHERE rollout_id = ? AND attempt_id = ?", (rollout_id, attempt_id)
        ).fetchone()
        return None if row is None else Attempt.model_validate_json(row[0])

    def _put_attempt(self, db: sqlite3.Connection, attempt: Attempt) -> None:
        db.execute(
            "UPDATE attempts SET data = ? WHERE rollout_id = ? AND attempt_id = ?",
            (_dump(attempt), attempt.rollout_id, attempt.attempt_id),
        )

    def _get_worker(self, db: sqlite3.Connection, worker_id: str) -> Worker | None:
        row = db.execute("SELECT data FROM workers WHERE worker_id = ?", (worker_id,)).fetchone()
        return None if row is None else Worker.model_validate_json(row[0])

    def _write_worker(self, db: sqlite3.Connection, worker_id: str, fields: dict[str, Any]) -> Worker:
        worker = self._get_worker(db, worker_id)
        if worker is None:
            worker = Worker(worker_id=worker_id)
        for key, value in fields.items():
            setattr(worker, key, value)
        db.execute(
            "INSERT INTO workers (worker_id, status, data) VALUES (?, ?, ?) "
            "ON CONFLICT (worker_id) DO UPDATE SET status = excluded.status, data = excluded.data",
            (worker_id, worker.status, _dump(worker)),
        )
        return worker

    def _latest_resources_id(self, db: sqlite3.Connection) -> str | None:
        row = db.execute("SELECT value FROM meta WHERE key = 'latest_resources_id'").fetchone()
        return None if row is None else str(row[0])

    def _set_latest_resources_id(self, db: sqlite3.Connection, resources_id: str) -> None:
        db.execute(
            "INSERT INTO meta (key, value) VALUES ('latest_resources_id', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (resources_id,),
        )

    # -- idempotency keys (call inside a write transaction) -------------------------------------------------
    def _replay_kept(self, db: sqlite3.Connection, now: float) -> None:
        """First step of a keyed write: raise `AnswerAlreadyKept` when its key already has a live answer (a retry
        of a write committed before), so nothing runs again; forget the key when it is past its age."""
        pending = idempotency.current_write()
        if pending is None or pending.encode is None:
            return
        found = self._kept_answer(db, pending.key)
        if found is None:
            return
        created, first = found
        if now - created <= self._kept_keys.retention.max_age_seconds:
            raise idempotency.AnswerAlreadyKept(pending.key, first)
        db.execute("DELETE FROM idempotency_keys WHERE key = ?", (pending.key,))  # expired, not yet pruned
        self._kept_keys.entries -= 1
        self._kept_keys.bytes -= len(first.body)

    def _keep_answer(self, db: sqlite3.Connection, result: Any, now: float) -> None:
        """Last step of a keyed write: keep the answer to `result` with the write itself, so a retry after a crash
        gets it (the write began with `_replay_kept`). Nothing after it may fail, or the kept count drifts."""
        pending = idempotency.answer_to_keep(result)
        if pending is None:
            return
        answer = pending.kept
        assert answer is not None
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
        tracker = self._kept_keys
        tracker.added(len(answer.body), now)
        if tracker.prune_due(now):
            self._prune_answers(db, now)

    @staticmethod
    def _kept_answer(db: sqlite3.Connection, key: str) -> tuple[float, idempotency.KeptAnswer] | None:
        """When `key` was kept and its answer, or None."""
        row = db.execute(
            "SELECT created, fingerprint, status, content_type, headers, body FROM idempotency_keys WHERE key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        created, fingerprint, status, content_type, headers, body = row
        pairs = tuple((name.encode("latin-1"), value.encode("latin-1")) for name, value in json.loads(headers))
        return float(created), idempotency.KeptAnswer(
            int(fingerprint), int(status), bytes(body), content_type.encode("latin-1"), pairs
        )

    def _prune_answers(self, db: sqlite3.Connection, now: float, batch: int = 500, most: int = 5000) -> None:
        """Drop the oldest keys the retention says must go (at most `most` per write; the next write goes on)."""
        tracker = self._kept_keys
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

    # -- state transitions (call inside a write transaction) ------------------------------------------------
    def _set_rollout_status(
        self, db: sqlite3.Connection, rollout: Rollout, status: RolloutStatus, now: float, *, old: RolloutStatus | None
    ) -> None:
        """Write `status` (the rollout was in `old`, which update_rollout has already overwritten)."""
        rollout.status = status
        if old != status and self.events.active:
            self._events_in_tx.append(RolloutTransition.of(rollout, old, status, now))
        if status in state.FINISHED_STATUSES:
            rollout.end_time = now
            self._finished_in_tx.append(rollout.rollout_id)
        elif status in state.QUEUING_STATUSES:
            # One queue entry per rollout: a stale entry still in the queue keeps its old position.
            db.execute("INSERT OR IGNORE INTO queue (rollout_id) VALUES (?)", (rollout.rollout_id,))
        self._put_rollout(db, rollout)

    def _sync_worker(self, db: sqlite3.Connection, attempt: Attempt, now: float, *, dequeued: bool = False) -> None:
        if not attempt.worker_id:
            return
        fields = state.worker_fields_for_attempt(attempt, now)
        if dequeued:
            fields["last_dequeue_time"] = now
        self._write_worker(db, attempt.worker_id, fields)

    def _apply_attempt_status(
        self,
        db: sqlite3.Connection,
        rollout: Rollout,
        attempt: Attempt,
        status: AttemptStatus,
        now: float,
        *,
        latest: bool,
        rollout_status: RolloutStatus | None = None,
    ) -> None:
        """Write an attempt status (the caller stores the attempt); the latest attempt drives its rollout (to
        `rollout_status` if given, else by the retry rule)."""
        old = attempt.status
        attempt.status = status
        self._attempt_event(attempt, old, now)
        if status in state.ATTEMPT_END_STATUSES:
            attempt.end_time = now
        if latest:
            new = rollout_status or state.rollout_status_from_attempt(status, attempt.sequence_id, rollout.config)
            if new != rollout.status:
                self._set_rollout_status(db, rollout, new, now, old=rollout.status)
        self._sync_worker(db, attempt, now)

    def _attempt_event(self, attempt: Attempt, old: AttemptStatus | None, now: float) -> None:
        if old != attempt.status and self.events.active:
            self._events_in_tx.append(AttemptTransition.of(attempt, old, now))

    def _maybe_scan(self, now: float, *, force: bool = False) -> None:
        """Apply the timeout / unresponsive rules to claimed rollouts, unless a scan ran within the debounce."""
        if (
            not force
            and self._scan_debounce > 0
            and self._last_scan is not None
            and now - self._last_scan < self._scan_debounce
        ):
            return
        self._last_scan = now
        db = self._conn()
        if db.execute("SELECT 1 FROM rollouts WHERE watched = 1 LIMIT 1").fetchone() is None:
            return
        # Judged in a read transaction first: most scans change nothing and then take no write lock.
        with self._read() as db:
            due = [rollout.rollout_id for rollout, _, _ in self._health_verdicts(db, now)]
        if not due:
            return
        with self._write() as db:  # judged again under the write lock: the rows may have moved meanwhile
            for rollout, attempt, verdict in self._health_verdicts(db, now, due):
                self._apply_attempt_status(
                    db, rollout, attempt, verdict[0], now, latest=True, rollout_status=verdict[1]
                )
                self._put_attempt(db, attempt)

    def _health_verdicts(
        self, db: sqlite3.Connection, now: float, rollout_ids: Sequence[str] | None = None
    ) -> list[tuple[Rollout, Attempt, tuple[AttemptStatus, RolloutStatus | None]]]:
        """The watched rollouts (all, or those among `rollout_ids`) the health rules act on at `now`."""
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
        out: list[tuple[Rollout, Attempt, tuple[AttemptStatus, RolloutStatus | None]]] = []
        for (data,) in rows:
            rollout = Rollout.model_validate_json(data)
            attempt = self._latest_attempt(db, rollout.rollout_id)
            if attempt is None:
                continue
            worker = self._get_worker(db, attempt.worker_id) if attempt.worker_id else None
            verdict = state.health_verdict(
                attempt,
                rollout.config,
                now,
                claim_timeout=self._claim_timeout,
                worker_heartbeat=worker.last_heartbeat_time if worker is not None else None,
            )
            if verdict is not None:
                out.append((rollout, attempt, verdict))
        return out

    def _new_rollout(
        self,
        db: sqlite3.Connection,
        input: TaskInput,
        mode: RolloutMode | None,
        resources_id: str | None,
        config: RolloutConfig | dict[str, Any] | None,
        metadata: dict[str, Any] | None,
        status: RolloutStatus,
        now: float,
        latest_resources_id: str | None,
    ) -> Rollout:
        rollout = Rollout(
            rollout_id=new_id("ro-", 6),
            input=input,
            start_time=now,
            mode=check_mode(mode),
            resources_id=resources_id if resources_id is not None else latest_resources_id,
            status=status,
            config=as_config(config),
            metadata=as_metadata(metadata),
        )
        db.execute(
            "INSERT INTO rollouts (rollout_id, status, watched, mode, start_time, end_time, data) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                rollout.rollout_id,
                rollout.status,
                self._watched(rollout),
                rollout.mode,
                rollout.start_time,
                rollout.end_time,
                _dump(rollout),
            ),
        )
        db.execute("INSERT INTO span_counters (rollout_id, counter) VALUES (?, 0)", (rollout.rollout_id,))
        if self.events.active:
            self._events_in_tx.append(RolloutTransition.of(rollout, None, status, now))
        if status in state.QUEUING_STATUSES:
            db.execute("INSERT OR IGNORE INTO queue (rollout_id) VALUES (?)", (rollout.rollout_id,))
        return rollout

    def _new_attempt(self, db: sqlite3.Connection, rollout: Rollout, worker_id: str | None, now: float) -> Attempt:
        attempt = build_model(
            Attempt,
            {
                "rollout_id": rollout.rollout_id,
                "attempt_id": new_id("at-", 4),
                "sequence_id": self._latest_sequence(db, rollout.rollout_id) + 1,
                "start_time": now,
                "end_time": None,
                "status": "preparing",
                "worker_id": worker_id,
                "last_heartbeat_time": None,
                "metadata": None,
            },
            {},
        )
        db.execute(
            "INSERT INTO attempts (rollout_id, attempt_id, sequence_id, data) VALUES (?, ?, ?, ?)",
            (attempt.rollout_id, attempt.attempt_id, attempt.sequence_id, _dump(attempt)),
        )
        self._attempt_event(attempt, None, now)
        self._set_rollout_status(db, rollout, "preparing", now, old=rollout.status)
        return attempt

    def _claim(self, db: sqlite3.Connection, worker_id: str | None, now: float) -> tuple[Rollout, Attempt] | None:
        while True:
            row = db.execute("SELECT position, rollout_id FROM queue ORDER BY position LIMIT 1").fetchone()
            if row is None:
                return None
            position, rollout_id = row
            db.execute("DELETE FROM queue WHERE position = ?", (position,))
            rollout = self._get_rollout(db, rollout_id)
            if rollout is None or rollout.status not in state.QUEUING_STATUSES:
                logger.warning("Skipping stale queue entry %s (no longer waiting in the queue)", rollout_id)
                continue
            return rollout, self._new_attempt(db, rollout, worker_id, now)

    def _empty_dequeue(self, db: sqlite3.Connection, worker_id: str, now: float) -> None:
        worker = self._get_worker(db, worker_id)
        current = None if worker is None else {"status": worker.status}
        self._write_worker(db, worker_id, state.worker_fields_for_empty_dequeue(current, now))

    async def run_health_checks(self) -> None:
        """Apply the timeout / unresponsive rules to running rollouts now, whatever the debounce says."""
        with self._lock:
            self._maybe_scan(self._clock(), force=True)

    # -- rollouts and the queue -----------------------------------------------------------------------------
    async def start_rollout(
        self,
        input: TaskInput,
        mode: RolloutMode | None = None,
        resources_id: str | None = None,
        config: RolloutConfig | None = None,
        metadata: dict[str, Any] | None = None,
        worker_id: str | None = None,
    ) -> AttemptedRollout:
        """Create a rollout and its first attempt, both `preparing`, without queueing it."""
        check_worker_id(worker_id)
        with self._lock:
            now = self._clock()
            self._maybe_scan(now)
            with self._write() as db:
                self._replay_kept(db, now)
                latest = self._latest_resources_id(db) if resources_id is None else None
                rollout = self._new_rollout(db, input, mode, resources_id, config, metadata, "preparing", now, latest)
                attempt = self._new_attempt(db, rollout, worker_id, now)
                self._sync_worker(db, attempt, now)
                started = _snapshot(rollout, attempt)
                self._keep_answer(db, started, now)
        return started  # type: ignore[return-value]

    async def enqueue_rollout(
        self,
        input: TaskInput,
        mode: RolloutMode | None = None,
        resources_id: str | None = None,
        config: RolloutConfig | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Rollout:
        """Create a `queuing` rollout at the tail of the queue."""
        with self._lock:
            now = self._clock()
            self._maybe_scan(now)
            with self._write() as db:
                self._replay_kept(db, now)
                latest = self._latest_resources_id(db) if resources_id is None else None
                rollout = self._new_rollout(db, input, mode, resources_id, config, metadata, "queuing", now, latest)
                self._keep_answer(db, rollout, now)
                return rollout

    async def enqueue_many_rollouts(self, rollouts: Sequence[EnqueueRolloutRequest]) -> Sequence[Rollout]:
        """Enqueue several rollouts in order in one transaction (all or none); results in input order."""
        requests = [
            r if isinstance(r, EnqueueRolloutRequest) else EnqueueRolloutRequest.model_validate(r) for r in rollouts
        ]
        configs = [as_config(r.config) for r in requests]
        for r in requests:
            check_mode(r.mode)
        with self._lock:
            now = self._clock()
            self._maybe_scan(now)
            with self._write() as db:
                self._replay_kept(db, now)
                latest = self._latest_resources_id(db)
                enqueued = [
                    self._new_rollout(db, r.input, r.mode, r.resources_id, config, r.metadata, "queuing", now, latest)
                    for r, config in zip(requests, configs, strict=True)
                ]
                self._keep_answer(db, enqueued, now)
                return enqueued

    async def dequeue_rollout(self, worker_id: str | None = None) -> AttemptedRollout | None:
        """Claim the rollout at the head of the queue with a new attempt, or None when the queue is empty."""
        check_worker_id(worker_id)
        with self._lock:
            now = self._clock()
            self._maybe_scan(now)
            with self._write() as db:
                self._replay_kept(db, now)
                claimed = self._claim(db, worker_id, now)
                if claimed is None:
                    if worker_id:
                        self._empty_dequeue(db, worker_id, now)
                    return None
                rollout, attempt = claimed
                self._sync_worker(db, attempt, now, dequeued=True)
                snapshot = _snapshot(rollout, attempt)
                self._keep_answer(db, snapshot, now)
        return snapshot  # type: ignore[return-value]

    async def dequeue_many_rollouts(
        self, *, limit: int = 1, worker_id: str | None = None
    ) -> Sequence[AttemptedRollout]:
        """Claim up to `limit` rollouts from the head of the queue, in FIFO order, in one transaction."""
        check_worker_id(worker_id)
        if limit <= 0:
            return []
        with self._lock:
            now = self._clock()
            self._maybe_scan(now)
            with self._write() as db:
                self._replay_kept(db, now)
                claimed: list[tuple[Rollout, Attempt]] = []
                while len(claimed) < limit:
                    one = self._claim(db, worker_id, now)
                    if one is None:
                        break
                    claimed.append(one)
                if worker_id:
                    if claimed:
                        self._sync_worker(db, claimed[-1][1], now, dequeued=True)
                    else:
                        self._empty_dequeue(db, worker_id, now)
                snapshots = [_snapshot(rollout, attempt) for rollout, attempt in claimed]
                if snapshots:
                    self._keep_answer(db, snapshots, now)
        return snapshots  # type: ignore[return-value]

    async def start_attempt(self, rollout_id: str, worker_id: str | None = None) -> AttemptedRollout:
        """Create a new attempt for any rollout (a manual retry that ignores `max_attempts`)."""
        check_worker_id(worker_id)
        with self._lock:
            now = self._clock()
            self._maybe_scan(now)
            with self._write() as db:
                self._replay_kept(db, now)
                rollout = self._rollout(db, rollout_id)
                attempt = self._new_attempt(db, rollout, worker_id, now)
                self._sync_worker(db, attempt, now)
                started = _snapshot(rollout, attempt)
                self._keep_answer(db, started, now)
        return started  # type: ignore[return-value]

    async def query_rollouts(
        self,
        *,
        status_in: Sequence[RolloutStatus] | None = None,
        rollout_id_in: Sequence[str] | None = None,
        rollout_id_contains: str | None = None,
        mode_in: Sequence[RolloutMode] | None = None,
        start_time_from: float | None = None,
        start_time_to: float | None = None,
        filter_logic: Literal["and", "or"] = "and",
        sort_by: str | None = None,
        sort_order: Literal["asc", "desc"] = "asc",
        limit: int = -1,
        offset: int = 0,
        status: Sequence[RolloutStatus] | None = None,
        rollout_ids: Sequence[str] | None = None,
    ) -> PaginatedResult[Rollout]:
        """Rollouts matching the filters (with their latest attempt attached when they have one).

        Filtered, counted, sorted and paged in SQL over indexed columns; only the page's rows are parsed. A sort by
        a field without a column loads the matches and sorts them in Python.
        """
        query = rollout_filter(
            status_in=status_in,
            rollout_id_in=rollout_id_in,
            rollout_id_contains=rollout_id_contains,
            filter_logic=filter_logic,
            status=status,
            rollout_ids=rollout_ids,
            mode_in=mode_in,
            start_time_from=start_time_from,
            start_time_to=start_time_to,
        )
        check_page(limit, offset)
        check_sort_order(sort_order)
        if sort_by is not None:
            check_sort_field(Rollout, sort_by)
        condition, params = rollout_sql.where(query)
        # The page may steer SQLite to the index of its order; the count keeps every index available.
        page_condition, page_params = rollout_sql.where(query, sort_by)
        with self._lock:
            self._maybe_scan(self._clock())
            with self._read() as db:
                if sort_by is not None and sort_by not in rollout_sql.SQL_SORTS:
                    rows = db.execute(f"SELECT data FROM rollouts WHERE {condition} ORDER BY seq", params)
                    matches = sort_items(
                        [Rollout.model_validate_json(d) for (d,) in rows], Rollout, sort_by, sort_order
                    )
                    total = len(matches)
                    page = matches[offset : None if limit == -1 else offset + limit]
                else:
                    total = self._count_rollouts(db, query, condition, params)
                    # An id-substring filter has no index: when it matches few rows, find them in one scan of the
                    # (seq, rollout_id) index instead of walking the sort index and reading rows until the page fills.
                    rare = any(c.op == "contains" for c in query.conditions) and (
                        limit == -1 or total <= 4 * (offset + limit)
                    )
                    page = self._rollout_page(
                        db, page_condition, page_params, sort_by, sort_order, limit, offset, rare=rare
                    )
                items = [_snapshot(r, self._latest_attempt(db, r.rollout_id)) for r in page]
        return PaginatedResult[Rollout].model_construct(items=items, limit=limit, offset=offset, total=total)

    @staticmethod
    def _count_rollouts(db: sqlite3.Connection, query: RolloutFilter, condition: str, params: list[Any]) -> int:
        """How many rollouts match: from the maintained counters when the filter is none or only statuses."""
        if not query.conditions:
            return int(db.execute("SELECT value FROM counters WHERE name = 'rollouts'").fetchone()[0])
        if len(query.conditions) == 1 and query.conditions[0].field == "status":
            names = [f"status:{s}" for s in dict.fromkeys(query.conditions[0].expected)]
            if not names:
                return 0
            row = db.execute(f"SELECT SUM(value) FROM counters WHERE name IN ({_marks(len(names))})", names).fetchone()
            return int(row[0] or 0)
        return int(db.execute(f"SELECT COUNT(*) FROM rollouts WHERE {condition}", params).fetchone()[0])

    @staticmethod
    def _rollout_page(
        db: sqlite3.Connection,
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
        for start in range(0, len(seqs), _IN_CHUNK):
            chunk = seqs[start : start + _IN_CHUNK]
            data.update(db.execute(f"SELECT seq, data FROM rollouts WHERE seq IN ({_marks(len(chunk))})", chunk))
        return [Rollout.model_validate_json(data[seq]) for seq in seqs]

    async def get_rollout_by_id(self, rollout_id: str) -> Rollout | None:
        """The rollout (with its latest attempt when it has one), or None if unknown."""
        with self._lock:
            self._maybe_scan(self._clock())
            with self._read() as db:
                rollout = self._get_rollout(db, rollout_id)
                if rollout is None:
                    return None
                return _snapshot(rollout, self._latest_attempt(db, rollout_id))

    async def update_rollout(
        self,
        rollout_id: str,
        input: TaskInput = UNSET,
        mode: RolloutMode | None = UNSET,
        resources_id: str | None = UNSET,
        status: RolloutStatus = UNSET,
        config: RolloutConfig = UNSET,
        metadata: dict[str, Any] | None = UNSET,
    ) -> Rollout:
        """Replace the given fields of a rollout; a terminal status stamps `end_time` and wakes waiters."""
        changes = rollout_changes(
            input=input, mode=mode, resources_id=resources_id, status=status, config=config, metadata=metadata
        )
        with self._lock:
            now = self._clock()
            self._maybe_scan(now)
            with self._write() as db:
                self._replay_kept(db, now)
                rollout = self._rollout(db, rollout_id)
                old = rollout.status
                for key, value in changes.items():
                    setattr(rollout, key, value)
                if "mode" in changes:
                    db.execute("UPDATE rollouts SET mode = ? WHERE rollout_id = ?", (rollout.mode, rollout_id))
                if status is not UNSET:
                    self._set_rollout_status(db, rollout, status, now, old=old)
                else:
                    self._put_rollout(db, rollout)
                self._keep_answer(db, rollout, now)
        return rollout

    # -- attempts -------------------------------------------------------------------------------------------
    async def query_attempts(
        self,
        rollout_id: str,
        *,
        sort_by: str | None = "sequence_id",
        sort_order: Literal["asc", "desc"] = "asc",
        limit: int = -1,
        offset: int = 0,
    ) -> PaginatedResult[Attempt]:
        """The attempts of a rollout (empty for an unknown rollout)."""
        check_page(limit, offset)
        with self._lock:
            self._maybe_scan(self._clock())
            with self._read() as db:
                rows = db.execute(
                    "SELECT data FROM attempts WHERE rollout_id = ? ORDER BY sequence_id", (rollout_id,)
                ).fetchall()
        attempts = [Attempt.model_validate_json(data) for (data,) in rows]
        return paginate(sort_items(attempts, Attempt, sort_by, sort_order), limit, offset)

    async def get_latest_attempt(self, rollout_id: str) -> Attempt | None:
        """The attempt with the highest sequence id, or None."""
        with self._lock:
            self._maybe_scan(self._clock())
            return self._latest_attempt(self._conn(), rollout_id)

    async def update_attempt(
        self,
        rollout_id: str,
        attempt_id: str,
        status: AttemptStatus = UNSET,
        worker_id: str = UNSET,
        last_heartbeat_time: float = UNSET,
        metadata: dict[str, Any] = UNSET,
    ) -> Attempt:
        """Set fields of an attempt (`attempt_id` may be "latest"); the latest attempt's status drives the rollout."""
        check_attempt_update(
            status=status, worker_id=worker_id, last_heartbeat_time=last_heartbeat_time, metadata=metadata
        )
        with self._lock:
            now = self._clock()
            self._maybe_scan(now)
            with self._write() as db:
                self._replay_kept(db, now)
                rollout = self._rollout(db, rollout_id)
                latest = self._latest_attempt(db, rollout_id)
                if latest is None:
                    raise NotFoundError("attempt", "latest", rollout_id, f"No attempts found for rollout {rollout_id}")
                if attempt_id == "latest" or attempt_id == latest.attempt_id:
                    attempt = latest
                else:
                    found = self._get_attempt(db, rollout_id, attempt_id)
                    if found is None:
                        raise NotFoundError("attempt", attempt_id, rollout_id)
                    attempt = found
                if status is not UNSET or last_heartbeat_time is not UNSET:
                    try:
                        state.check_attempt_holds_rollout(
                            rollout_id, rollout.status, attempt.attempt_id, latest.attempt_id
                        )
                    except StaleAttemptError as exc:  # a refusal, not a change: reported at once
                        self.events.emit(StaleWriteRefused(rollout_id, exc.attempt_id, exc.current_attempt_id, now))
                        raise
                if worker_id is not UNSET:
                    attempt.worker_id = worker_id
                if last_heartbeat_time is not UNSET:
                    attempt.last_heartbeat_time = (
                        float(last_heartbeat_time) if last_heartbeat_time is not None else None
                    )
                if metadata is not UNSET:
                    attempt.metadata = metadata
                if status is not UNSET:
                    is_latest = attempt.sequence_id == latest.sequence_id
                    self._apply_attempt_status(db, rollout, attempt, status, now, latest=is_latest)
                elif worker_id is not UNSET and worker_id:
                    self._sync_worker(db, attempt, now)
                self._put_attempt(db, attempt)
                self._keep_answer(db, attempt, now)
        return attempt

    # -- spans ----------------------------------------------------------------------------------------------
    def _raise_counter(self, db: sqlite3.Connection, rollout_id: str, sequence_id: int) -> None:
        db.execute(
            "UPDATE span_counters SET counter = ? WHERE rollout_id = ? AND counter < ?",
            (sequence_id, rollout_id, sequence_id),
        )

    def _locate(self, db: sqlite3.Connection, rollout_id: str, attempt_id: str) -> tuple[Rollout, Attempt, bool]:
        """The rollout, the attempt, and whether it is the rollout's latest attempt."""
        rollout = self._rollout(db, rollout_id)
        attempt = self._get_attempt(db, rollout_id, attempt_id)
        if attempt is None:
            raise NotFoundError("attempt", attempt_id, rollout_id)
        return rollout, attempt, attempt.sequence_id == self._latest_sequence(db, rollout_id)

    def _store_spans(
        self,
        db: sqlite3.Connection,
        rollout: Rollout,
        attempt: Attempt,
        latest: bool,
        spans: Iterable[Span],
        now: float,
    ) -> list[Span]:
        stored: list[Span] = []
        for span in spans:
            cursor = db.execute(
                "INSERT OR IGNORE INTO spans (rollout_id, attempt_id, span_id, sequence_id, data) "
                "VALUES (?, ?, ?, ?, ?)",
                (span.rollout_id, span.attempt_id, span.span_id, span.sequence_id, _dump(span)),
            )
            if cursor.rowcount == 0:
                logger.error(
                    "Duplicate span %s of rollout %s attempt %s ignored", span.span_id, span.rollout_id, span.attempt_id
                )
                continue
            stored.append(span)
        if not stored:
            return stored
        # The arrival of new spans is a heartbeat of the attempt; of a stale attempt it moves no status (fencing).
        attempt.last_heartbeat_time = now
        if not state.attempt_holds_rollout(rollout.status, latest):
            self._put_attempt(db, attempt)
            return stored
        old = attempt.status
        attempt.status = state.attempt_status_on_heartbeat(old)
        self._attempt_event(attempt, old, now)
        self._put_attempt(db, attempt)
        new = state.rollout_status_on_heartbeat(rollout.status)
        if new != rollout.status:
            self._set_rollout_status(db, rollout, new, now, old=rollout.status)
        return stored

    async def add_span(self, span: Span) -> Span | None:
        """Store a span; returns None when a span with the same id already exists for that attempt."""
        if not isinstance(span, Span):
            span = Span.model_validate(span)
        error: ValueError | None = None
        with self._lock:
            now = self._clock()
            with self._write() as db:
                # The counter is raised even when the span is then refused (as in the in-memory store).
                self._raise_counter(db, span.rollout_id, span.sequence_id)
                try:
                    rollout, attempt, latest = self._locate(db, span.rollout_id, span.attempt_id)
                except ValueError as exc:
                    error = exc
                else:
                    stored = self._store_spans(db, rollout, attempt, latest, (span,), now)
        if error is not None:
            raise error
        return stored[0] if stored else None

    async def add_many_spans(self, spans: Sequence[Span]) -> Sequence[Span]:
        """Store several spans in one transaction, all validated first; returns those stored, grouped by attempt.

        An unknown rollout or attempt in any group rejects the whole batch with a ValueError (nothing is stored;
        the sequence counters are still raised, as in the in-memory store).
        """
        spans = [s if isinstance(s, Span) else Span.model_validate(s) for s in spans]
        groups: dict[tuple[str, str], list[Span]] = {}
        for span in spans:
            groups.setdefault((span.rollout_id, span.attempt_id), []).append(span)
        error: ValueError | None = None
        stored: list[Span] = []
        with self._lock:
            now = self._clock()
            with self._write() as db:
                for (rollout_id, _), group in groups.items():
                    self._raise_counter(db, rollout_id, max(s.sequence_id for s in group))
                try:
                    located = [(self._locate(db, rid, aid), group) for (rid, aid), group in groups.items()]
                except ValueError as exc:
                    error = exc
                else:
                    for (rollout, attempt, latest), group in located:
                        stored.extend(self._store_spans(db, rollout, attempt, latest, group, now))
        if error is not None:
            raise error
        return stored

    async def get_next_span_sequence_id(self, rollout_id: str, attempt_id: str) -> int:
        """Allocate the next span sequence id of a rollout (one counter per rollout, first id 1)."""
        with self._lock, self._write() as db:
            row = db.execute(
                "UPDATE span_counters SET counter = counter + 1 WHERE rollout_id = ? RETURNING counter", (rollout_id,)
            ).fetchone()
            if row is None:
                raise NotFoundError("rollout", rollout_id)
            return int(row[0])

    async def get_many_span_sequence_ids(self, rollout_attempt_ids: Sequence[tuple[str, str]]) -> Sequence[int]:
        """Allocate one sequence id per (rollout, attempt) pair, consecutive per rollout in request order."""
        counts: dict[str, int] = {}
        for rollout_id, _ in rollout_attempt_ids:
            counts[rollout_id] = counts.get(rollout_id, 0) + 1
        with self._lock, self._write() as db:
            next_id: dict[str, int] = {}
            for rollout_id, count in counts.items():
                row = db.execute(
                    "UPDATE span_counters SET counter = counter + ? WHERE rollout_id = ? RETURNING counter",
                    (count, rollout_id),
                ).fetchone()
                if row is None:
                    raise NotFoundError("rollout", rollout_id)
                next_id[rollout_id] = int(row[0]) - count + 1
            out: list[int] = []
            for rollout_id, _ in rollout_attempt_ids:
                out.append(next_id[rollout_id])
                next_id[rollout_id] += 1
            return out

    async def query_spans(
        self,
        rollout_id: str,
        attempt_id: str | None = None,
        *,
        trace_id: str | None = None,
        trace_id_contains: str | None = None,
        span_id: str | None = None,
        span_id_contains: str | None = None,
        parent_id: str | None = None,
        parent_id_contains: str | None = None,
        name: str | None = None,
        name_contains: str | None = None,
        filter_logic: Literal["and", "or"] = "and",
        limit: int = -1,
        offset: int = 0,
        sort_by: str | None = "sequence_id",
        sort_order: Literal["asc", "desc"] = "asc",
    ) -> PaginatedResult[Span]:
        """Spans of a rollout: of one attempt, of the latest attempt ("latest"), or of all attempts (None)."""
        check_page(limit, offset)
        predicate = span_filter(
            trace_id=trace_id,
            trace_id_contains=trace_id_contains,
            span_id=span_id,
            span_id_contains=span_id_contains,
            parent_id=parent_id,
            parent_id_contains=parent_id_contains,
            name=name,
            name_contains=name_contains,
            filter_logic=filter_logic,
        )
        with self._lock:
            self._maybe_scan(self._clock())
            with self._read() as db:
                if attempt_id == "latest":
                    latest = self._latest_attempt(db, rollout_id)
                    if latest is None:
                        return paginate([], limit, offset)
                    attempt_id = latest.attempt_id
                if attempt_id is None:
                    rows = db.execute("SELECT data FROM spans WHERE rollout_id = ? ORDER BY seq", (rollout_id,))
                else:
                    rows = db.execute(
                        "SELECT data FROM spans WHERE rollout_id = ? AND attempt_id = ? ORDER BY seq",
                        (rollout_id, attempt_id),
                    )
                raw = [data for (data,) in rows]
        spans = [s for s in (Span.model_validate_json(data) for data in raw) if predicate is None or predicate(s)]
        return paginate(sort_items(spans, Span, sort_by, sort_order), limit, offset)

    # -- resources ------------------------------------------------------------------------------------------
    async def add_resources(self, resources: NamedResources) -> ResourcesUpdate:
        """Store a new resources snapshot (version 1); it becomes the latest."""
        validated = _named_resources_adapter.validate_python(resources)
        with self._lock:
            now = self._clock()
            update = ResourcesUpdate(
                resources_id=new_id("rs-", 6), create_time=now, update_time=now, version=1, resources=validated
            )
            with self._write() as db:
                self._replay_kept(db, now)
                db.execute(
                    "INSERT INTO resources (resources_id, data) VALUES (?, ?)", (update.resources_id, _dump(update))
                )
                self._set_latest_resources_id(db, update.resources_id)
                self._keep_answer(db, update, now)
        return update

    async def update_resources(self, resources_id: str, resources: NamedResources) -> ResourcesUpdate:
        """Replace a snapshot's resources (version + 1), or create it with version 1; it becomes the latest."""
        if not isinstance(resources_id, str) or not resources_id:
            raise ValueError(f"resources_id must be a non-empty string, got {resources_id!r}")
        validated = _named_resources_adapter.validate_python(resources)
        with self._lock:
            now = self._clock()
            self._maybe_scan(now)
            with self._write() as db:
                self._replay_kept(db, now)
                old = self._get_resources(db, resources_id)
                update = ResourcesUpdate(
                    resources_id=resources_id,
                    create_time=old.create_time if old is not None else now,
                    update_time=now,
                    version=old.version + 1 if old is not None else 1,
                    resources=validated,
                )
                # Updated in place: it keeps its insertion position, but becomes the latest.
                db.execute(
                    "INSERT INTO resources (resources_id, data) VALUES (?, ?) "
                    "ON CONFLICT (resources_id) DO UPDATE SET data = excluded.data",
                    (resources_id, _dump(update)),
                )
                self._set_latest_resources_id(db, resources_id)
                self._keep_answer(db, update, now)
        return update

    def _get_resources(self, db: sqlite3.Connection, resources_id: str) -> ResourcesUpdate | None:
        if not isinstance(resources_id, str):
            return None
        row = db.execute("SELECT data FROM resources WHERE resources_id = ?", (resources_id,)).fetchone()
        return None if row is None else ResourcesUpdate.model_validate_json(row[0])

    async def get_resources_by_id(self, resources_id: str) -> ResourcesUpdate | None:
        """A resources snapshot by id, or None."""
        with self._lock:
            return self._get_resources(self._conn(), resources_id)

    async def get_latest_resources(self) -> ResourcesUpdate | None:
        """The snapshot most recently added or updated, or None."""
        with self._lock, self._read() as db:
            latest = self._latest_resources_id(db)
            return None if latest is None else self._get_resources(db, latest)

    async def query_resources(
        self,
        *,
        resources_id: str | None = None,
        resources_id_contains: str | None = None,
        sort_by: str | None = None,
        sort_order: Literal["asc", "desc"] = "asc",
        limit: int = -1,
        offset: int = 0,
    ) -> PaginatedResult[ResourcesUpdate]:
        """Resources snapshots matching the id filters, in insertion order unless sorted."""
        check_page(limit, offset)
        predicate = compile_filter({"resources_id": {"exact": resources_id, "contains": resources_id_contains}})
        with self._lock:
            rows = self._conn().execute("SELECT data FROM resources ORDER BY seq").fetchall()
        items = [
            u for u in (ResourcesUpdate.model_validate_json(d) for (d,) in rows) if predicate is None or predicate(u)
        ]
        return paginate(sort_items(items, ResourcesUpdate, sort_by, sort_order), limit, offset)

    # -- workers --------------------------------------------------------------------------------------------
    async def update_worker(self, worker_id: str, heartbeat_stats: dict[str, Any] = UNSET) -> Worker:
        """Record a worker heartbeat (creating the worker as `unknown` if new); never changes its status."""
        if not isinstance(worker_id, str) or not worker_id:
            raise ValueError(f"worker_id must be a non-empty string, got {worker_id!r}")
        if heartbeat_stats is not UNSET and heartbeat_stats is not None and not isinstance(heartbeat_stats, dict):
            raise ValueError(f"heartbeat_stats must be a dict, got {type(heartbeat_stats).__name__}")
        with self._lock:
            fields: dict[str, Any] = {"last_heartbeat_time": self._clock()}
            if heartbeat_stats is not UNSET:
                fields["heartbeat_stats"] = dict(heartbeat_stats) if heartbeat_stats is not None else None
            with self._write() as db:
                return self._write_worker(db, worker_id, fields)

    async def get_worker_by_id(self, worker_id: str) -> Worker | None:
        """A worker by id, or None."""
        with self._lock:
            return self._get_worker(self._conn(), worker_id)

    async def query_workers(
        self,
        *,
        status_in: Sequence[WorkerStatus] | None = None,
        worker_id_contains: str | None = None,
        filter_logic: Literal["and", "or"] = "and",
        sort_by: str | None = None,
        sort_order: Literal["asc", "desc"] = "asc",
        limit: int = -1,
        offset: int = 0,
    ) -> PaginatedResult[Worker]:
        """Workers matching the filters."""
        check_page(limit, offset)
        predicate = worker_filter(status_in=status_in, worker_id_contains=worker_id_contains, filter_logic=filter_logic)
        with self._lock:
            self._maybe_scan(self._clock())
            rows = self._conn().execute("SELECT data FROM workers ORDER BY seq").fetchall()
        items = [w for w in (Worker.model_validate_json(d) for (d,) in rows) if predicate is None or predicate(w)]
        return paginate(sort_items(items, Worker, sort_by, sort_order), limit, offset)

    # -- waiting --------------------------------------------------------------------------------------------
    def _statuses(self, db: sqlite3.Connection, rollout_ids: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        wanted = [rid for rid in dict.fromkeys(rollout_ids) if isinstance(rid, str)]
        for chunk in _chunks(wanted):
            for rid, status in db.execute(
                f"SELECT rollout_id, status FROM rollouts WHERE rollout_id IN ({_marks(len(chunk))})", tuple(chunk)
            ):
                out[rid] = status
        return out

    async def wait_for_rollouts(self, *, rollout_ids: list[str], timeout: float | None = None) -> list[Rollout]:
        """The rollouts among `rollout_ids` that are finished by the deadline, in input order.

        Wakes as soon as the last of them finishes through this store, or within 0.5 s when another process
        finished it; `timeout=None` waits for all, `timeout <= 0` checks once. Unknown ids are ignored.
        """
        if timeout is not None and timeout < 0:
            timeout = 0
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        registered: dict[asyncio.Future[None], str] = {}
        try:
            with self._lock:
                self._maybe_scan(self._clock())
                if timeout != 0:
                    for rollout_id, status in self._statuses(self._conn(), rollout_ids).items():
                        if status not in state.FINISHED_STATUSES:
                            future = self._waiters.add(rollout_id, loop)
                            registered[future] = rollout_id
            pending = dict(registered)
            while pending:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    break
                wake = _POLL_SECONDS if remaining is None else min(remaining, _POLL_SECONDS)
                done, _ = await asyncio.wait(set(pending), timeout=wake)
                for future in done:
                    pending.pop(future, None)
                if pending:
                    # Another process may have finished them, or a health rule may have fired.
                    with self._lock:
                        self._maybe_scan(self._clock())
                        statuses = self._statuses(self._conn(), list(pending.values()))
                    for future, rollout_id in list(pending.items()):
                        if statuses.get(rollout_id) in state.FINISHED_STATUSES:
                            pending.pop(future)
        finally:
            if registered:
                with self._lock:
                    for future, rollout_id in registered.items():
                        self._waiters.discard(rollout_id, future)
        with self._lock, self._read() as db:
            finished: dict[str, Rollout] = {}
            wanted = [rid for rid in dict.fromkeys(rollout_ids) if isinstance(rid, str)]
            for chunk in _chunks(wanted):
                for (data,) in db.execute(
                    f"SELECT data FROM rollouts WHERE rollout_id IN ({_marks(len(chunk))})", tuple(chunk)
                ):
                    rollout = Rollout.model_validate_json(data)
                    if rollout.status in state.FINISHED_STATUSES:
                        finished[rollout.rollout_id] = rollout
        return [finished[rid] for rid in rollout_ids if isinstance(rid, str) and rid in finished]


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
