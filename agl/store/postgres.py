"""`PostgresLightningStore`: the store engine over a driver that keeps everything in a PostgreSQL database, which
several store servers (on several machines) may share.

Design
------
* Storage only: every rule comes from `agl.store.engine`, the same as for the in-memory and SQLite stores. Models are
  stored as their pydantic JSON (BYTEA) next to the columns the queries need, in the schema ``agl`` of the database
  (other schemas are left alone).
* Transactions come from a `psycopg_pool.ConnectionPool` of ordinary (synchronous) connections. Writes run at READ
  COMMITTED and lock what they change: reading a rollout, a worker or the watched rollouts inside a write takes
  their row locks (`FOR UPDATE`), so two servers changing one rollout take turns and each sees the other's commit.
  Reads run at REPEATABLE READ, one consistent snapshot per call. Each transaction runs on one of the driver's
  worker threads (`agl.store.job_threads`) in psycopg's pipeline mode: a statement is sent with the next one
  whose rows are read, so a transaction waits for the database once per read, not once per statement.
* Claiming locks the queue entry and its rollout with `SELECT ... FOR UPDATE SKIP LOCKED`: servers claiming at once
  each take a different rollout and never wait for each other. Span sequence ids come from `UPDATE ... RETURNING` on
  a per-rollout counter row, attempt sequence ids are allocated under the rollout's row lock (and unique per
  rollout), so ids stay correct whichever server or process allocates them.
* A write that finishes rollouts sends `NOTIFY agl_finished` with their ids in its transaction (delivered on
  commit); each store runs a listener thread on its own connection (`LISTEN`) and wakes its `wait_for_rollouts`
  callers at once, so a waiter on one server wakes when a runner on another finishes the rollout. Waiters still
  re-read every `poll_seconds` in case the listener was reconnecting.
* Idempotency keys are kept with their answers in the write's own transaction, with the retention rules of
  `agl.store.idempotency`, so a retry after a restart (or sent to another server) gets the first answer.
* The schema carries a version in ``agl.meta``; opening a database applies the pending migrations in order under an
  advisory lock (servers starting together migrate once) and refuses a database written by a newer AGL.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

from agl.store import idempotency, state
from agl.store import postgres_rollout_query as rollout_sql
from agl.store.base import LightningStoreStatistics
from agl.store.driver import CommitHook, EncodedSpan, M, ReadTransaction, WriteTransaction
from agl.store.engine import StoreEngine
from agl.store.errors import NotFoundError
from agl.store.events import StoreEvent
from agl.store.inputs import INT64_MAX
from agl.store.job_threads import JobThreads
from agl.store.query import RolloutFilter, sort_items
from agl.types.core import Attempt, Rollout, Worker
from agl.types.resources import ResourcesUpdate
from agl.types.tracer import Span

if TYPE_CHECKING:
    import psycopg
    import psycopg_pool

__all__ = [
    "SCHEMA_VERSION",
    "PostgresDriver",
    "PostgresLightningStore",
    "PostgresStoreError",
    "PostgresStoreStatistics",
    "mask_dsn",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA = "agl"
"""The database schema holding the store's tables."""

FINISHED_CHANNEL = "agl_finished"
"""The NOTIFY channel of finished rollouts (payload: their ids separated by spaces)."""

_POLL_SECONDS = 2.0
"""How often waiters re-read statuses anyway (a notification sent while the listener reconnected is not replayed)."""

_NOTIFY_PAYLOAD = 7000
"""Bytes of ids per notification (PostgreSQL's limit is 8000)."""

_MIGRATION_LOCK = 0x61676C5F6D6967
"""The advisory lock key held while migrating ('agl_mig')."""

_RETRIES = 8
"""How often a write that PostgreSQL rolled back to break a deadlock between servers is run again."""


class PostgresStoreError(RuntimeError):
    """The database cannot be used as a store: unreachable, refused, or written by a newer AGL."""


class PostgresStoreStatistics(LightningStoreStatistics, total=False):
    """The store statistics plus where the database is and its size."""

    dsn: str
    database_bytes: int


def mask_dsn(dsn: str) -> str:
    """`dsn` with its password replaced by `***` (a URL's or a `password=` setting), safe to print."""
    if "://" in dsn:
        try:
            parts = urlsplit(dsn)
        except ValueError:
            return re.sub(r":[^:@/]*@", ":***@", dsn)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            if ":" in userinfo:
                netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
        query = re.sub(r"(^|&)password=[^&]*", r"\1password=***", parts.query)
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", dsn)


# -- schema and migrations ------------------------------------------------------------------------------------------


def _migrate_to_1(cur: psycopg.Cursor[Any]) -> None:
    """The first schema: every table and an index for each query the store's API offers."""
    statements = [
        f"""CREATE TABLE {SCHEMA}.rollouts (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            rollout_id TEXT COLLATE "C" NOT NULL UNIQUE,
            status TEXT COLLATE "C" NOT NULL,
            watched BOOLEAN NOT NULL DEFAULT FALSE,
            mode TEXT COLLATE "C",
            start_time DOUBLE PRECISION,
            end_time DOUBLE PRECISION,
            data BYTEA NOT NULL
        )""",
        # query_rollouts: a status filter (and its count) in insertion order, by start or end time; a mode filter
        # by start time; the sorts by start time, end time and mode. rollout_id has its unique index.
        f"CREATE INDEX rollouts_by_status ON {SCHEMA}.rollouts (status, seq)",
        f"CREATE INDEX rollouts_by_start ON {SCHEMA}.rollouts (start_time, seq)",
        f"CREATE INDEX rollouts_by_status_start ON {SCHEMA}.rollouts (status, start_time, seq)",
        f"CREATE INDEX rollouts_by_end ON {SCHEMA}.rollouts (end_time, seq)",
        f"CREATE INDEX rollouts_by_status_end ON {SCHEMA}.rollouts (status, end_time, seq)",
        f"CREATE INDEX rollouts_by_mode_start ON {SCHEMA}.rollouts (mode, start_time, seq)",
        f"CREATE INDEX rollouts_by_mode_sort ON {SCHEMA}.rollouts ((coalesce(mode, '')), seq)",
        # The health scan reads only the claimed rollouts with health rules.
        f"CREATE INDEX rollouts_watched ON {SCHEMA}.rollouts (seq) WHERE watched",
        f"""CREATE TABLE {SCHEMA}.attempts (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            rollout_id TEXT COLLATE "C" NOT NULL,
            attempt_id TEXT COLLATE "C" NOT NULL,
            sequence_id BIGINT NOT NULL,
            data BYTEA NOT NULL,
            UNIQUE (rollout_id, attempt_id),
            UNIQUE (rollout_id, sequence_id)
        )""",
        f"""CREATE TABLE {SCHEMA}.spans (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            rollout_id TEXT COLLATE "C" NOT NULL,
            attempt_id TEXT COLLATE "C" NOT NULL,
            span_id TEXT COLLATE "C" NOT NULL,
            sequence_id BIGINT NOT NULL,
            data BYTEA NOT NULL,
            UNIQUE (rollout_id, attempt_id, span_id)
        )""",
        f"CREATE INDEX spans_by_rollout ON {SCHEMA}.spans (rollout_id, seq)",
        f'CREATE TABLE {SCHEMA}.span_counters (rollout_id TEXT COLLATE "C" PRIMARY KEY, counter BIGINT NOT NULL)',
        f"""CREATE TABLE {SCHEMA}.queue (
            position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            rollout_id TEXT COLLATE "C" NOT NULL UNIQUE
        )""",
        f"""CREATE TABLE {SCHEMA}.resources (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            resources_id TEXT COLLATE "C" NOT NULL UNIQUE,
            data BYTEA NOT NULL
        )""",
        f"""CREATE TABLE {SCHEMA}.workers (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            worker_id TEXT COLLATE "C" NOT NULL UNIQUE,
            status TEXT COLLATE "C" NOT NULL,
            data BYTEA NOT NULL
        )""",
        f"""CREATE TABLE {SCHEMA}.idempotency_keys (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            key TEXT COLLATE "C" NOT NULL UNIQUE,
            created DOUBLE PRECISION NOT NULL,
            fingerprint BIGINT NOT NULL,
            status INTEGER NOT NULL,
            content_type TEXT NOT NULL,
            headers TEXT NOT NULL,
            body BYTEA NOT NULL
        )""",
    ]
    for sql in statements:
        cur.execute(sql)


MIGRATIONS: list[Callable[[psycopg.Cursor[Any]], None]] = [_migrate_to_1]
"""`MIGRATIONS[i]` brings a database from schema version `i` to `i + 1`; append, never edit."""

SCHEMA_VERSION = len(MIGRATIONS)
"""The schema version this code writes."""


def _schema_version(cur: psycopg.Cursor[Any], where: str) -> int:
    row = cur.execute(
        "SELECT count(*) FILTER (WHERE table_name = 'meta'), count(*) FROM information_schema.tables "
        "WHERE table_schema = %s",
        (SCHEMA,),
    ).fetchone()
    assert row is not None
    has_meta, tables = int(row[0]), int(row[1])
    if not has_meta:
        if tables:
            raise PostgresStoreError(
                f"{where}: schema {SCHEMA!r} holds {tables} tables but no meta table; it is not an AGL store "
                "(use another database)"
            )
        return 0
    found = cur.execute(f"SELECT value FROM {SCHEMA}.meta WHERE key = 'schema_version'").fetchone()
    if found is None:
        raise PostgresStoreError(f"{where}: {SCHEMA}.meta has no schema_version; it is not an AGL store")
    try:
        return int(found[0])
    except (TypeError, ValueError):
        raise PostgresStoreError(f"{where}: unreadable schema_version {found[0]!r}") from None


def _migrate(conn: psycopg.Connection[Any], where: str) -> None:
    """Bring the database to `SCHEMA_VERSION` in one transaction per migration; refuse one from a newer AGL."""
    target = SCHEMA_VERSION
    while True:
        with conn.transaction(), conn.cursor() as cur:
            # Servers starting together: one migrates, the others wait here and then find it done.
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            version = _schema_version(cur, where)
            if version > target:
                raise PostgresStoreError(
                    f"{where} has store schema version {version}, newer than this AGL supports ({target}); "
                    "upgrade AGL to open it"
                )
            if version == target:
                return
            if version == 0:
                cur.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
                cur.execute(f"CREATE TABLE {SCHEMA}.meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                cur.execute(f"INSERT INTO {SCHEMA}.meta (key, value) VALUES ('schema_version', '0')")
            MIGRATIONS[version](cur)
            cur.execute(f"UPDATE {SCHEMA}.meta SET value = %s WHERE key = 'schema_version'", (str(version + 1),))
            logger.info("Migrated store %s to schema version %d", where, version + 1)


# -- (de)serialisation ----------------------------------------------------------------------------------------------


def _dump(model: BaseModel) -> bytes:
    try:
        return model.__pydantic_serializer__.to_json(model, warnings=False)
    except PydanticSerializationError as exc:
        raise ValueError(f"{type(model).__name__} cannot be stored: a value is not JSON-serialisable ({exc})") from exc


def _text(value: str, field: str) -> str:
    """`value` as PostgreSQL text: a NUL character cannot be stored there."""
    if "\x00" in value:
        raise ValueError(f"{field} must not contain a NUL character (\\x00); PostgreSQL text cannot hold it")
    return value


def _value_error(exc: psycopg.DataError) -> ValueError:
    """The ValueError for a value PostgreSQL (or psycopg, adapting it) refuses."""
    import psycopg

    if isinstance(exc, psycopg.errors.NumericValueOutOfRange):
        return ValueError(f"an integer is outside the 64-bit range the store keeps: {exc}")
    return ValueError(f"a value cannot be stored in PostgreSQL: {exc}")


def _no_hook(events: list[StoreEvent], finished: list[str]) -> None:
    return None


def _finished_payloads(rollout_ids: Sequence[str]) -> list[str]:
    """The ids split into NOTIFY payloads under PostgreSQL's size limit."""
    payloads: list[str] = []
    current: list[str] = []
    size = 0
    for rid in rollout_ids:
        if current and size + len(rid) + 1 > _NOTIFY_PAYLOAD:
            payloads.append(" ".join(current))
            current, size = [], 0
        current.append(rid)
        size += len(rid) + 1
    if current:
        payloads.append(" ".join(current))
    return payloads


# -- transactions ---------------------------------------------------------------------------------------------------


class _Transaction:
    """One transaction on a pooled connection: the driver's reads (row-locking inside a write) and writes."""

    __slots__ = (
        "_begun",
        "_conn",
        "_cur",
        "_driver",
        "_key_check",
        "_latest_seq",
        "_locked",
        "_pipe",
        "_pipe_cm",
        "_write",
        "events",
        "finished",
    )

    def __init__(self, driver: PostgresDriver, write: bool) -> None:
        self._driver = driver
        self._write = write
        self.events: list[StoreEvent] = []
        self.finished: list[str] = []
        self._conn: psycopg.Connection[Any] | None = None
        self._cur: psycopg.Cursor[Any] | None = None
        self._pipe_cm: AbstractContextManager[psycopg.Pipeline] | None = None
        self._pipe: psycopg.Pipeline | None = None
        self._begun = False
        # Rollouts whose row this write has locked, and their highest attempt sequence id once read: attempts are
        # only added under their rollout's lock, so while this transaction holds it the value cannot change.
        self._locked: set[str] = set()
        self._latest_seq: dict[str, int] = {}
        # The lookup of this write's idempotency key, sent but not yet judged (see `replay_kept`).
        self._key_check: tuple[psycopg.Cursor[Any], idempotency.PendingWrite, float] | None = None

    def __enter__(self) -> _Transaction:
        pool = self._driver.pool()
        conn = pool.getconn()
        try:
            # Pipeline mode: statements whose results are not needed yet (BEGIN, plain writes, COMMIT) travel with
            # the next statement that is read, so a transaction costs a round trip per read, not per statement.
            self._pipe_cm = conn.pipeline()
            self._pipe = self._pipe_cm.__enter__()
            cur = conn.cursor()
        except BaseException:
            self._release(pool, conn)
            raise
        self._conn, self._cur = conn, cur
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        conn, cur = self._conn, self._cur
        assert conn is not None and cur is not None
        self._conn = self._cur = None
        driver = self._driver
        try:
            if kind is not None:
                return  # rolled back by _release
            if self._write and self.finished:
                for payload in _finished_payloads(self.finished):
                    cur.execute("SELECT pg_notify(%s, %s)", (FINISHED_CHANNEL, payload))
            if self._write and (self.events or self.finished):
                if self._key_check is not None:
                    self._judge_key()
                # Every statement sent so far has finished before the lock is taken: one waiting for a row of
                # another transaction of this process that needs the lock to commit would otherwise wait forever.
                assert self._pipe is not None
                self._pipe.sync()
                # Under the lock, so this process's listeners see its commits in commit order.
                with driver.commit_lock:
                    self._commit(cur)
                    driver.on_commit(self.events, self.finished)
            else:
                self._commit(cur)
        finally:
            cur.close()
            self._release(driver.pool(), conn)

    def _commit(self, cur: psycopg.Cursor[Any]) -> None:
        """Send COMMIT with what is still queued, leave pipeline mode and wait for all of it: an error of any queued
        statement is raised here (and `_release` rolls the transaction back)."""
        if self._key_check is not None:
            self._judge_key()  # a write that sent nothing after its key lookup
        if self._begun:  # a transaction that ran no statement needs neither BEGIN nor COMMIT
            cur.execute("COMMIT")
        cm, self._pipe_cm = self._pipe_cm, None
        assert cm is not None
        cm.__exit__(None, None, None)

    def _release(self, pool: psycopg_pool.ConnectionPool[Any], conn: psycopg.Connection[Any]) -> None:
        """Leave pipeline mode, roll back what an error left open, and give the connection back to the pool (which
        discards a broken one)."""
        import psycopg

        cm, self._pipe_cm = self._pipe_cm, None
        try:
            if cm is not None:
                try:
                    cm.__exit__(None, None, None)
                except psycopg.Error:
                    pass  # the error of a queued statement, already raised to the caller or superseded by its own
            if (
                not conn.closed
                and not conn.broken
                and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
            ):
                conn.execute("ROLLBACK")
        except psycopg.Error:
            pass  # the pool checks the connection and discards it if it is unusable
        finally:
            pool.putconn(conn)

    def run(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> psycopg.Cursor[Any]:
        """Queue `sql` (our own text) in this transaction; it is sent with the next statement whose rows are read
        (fetch from the returned cursor) or with the commit. Values PostgreSQL rejects raise ValueError."""
        cur = self._cur
        assert cur is not None, "the transaction is not open"
        import psycopg

        if not self._begun:
            self._begin(cur)
        try:
            cur.execute(sql, params, prepare=True)
        except psycopg.DataError as exc:
            raise _value_error(exc) from exc
        if self._key_check is not None:
            self._judge_key()  # one round trip for the key lookup and this statement
        return cur

    def _begin(self, cur: psycopg.Cursor[Any]) -> None:
        """BEGIN, sent right before the first statement (so both reach the server together, and a transaction that
        runs nothing costs nothing)."""
        cur.execute("BEGIN ISOLATION LEVEL READ COMMITTED" if self._write else "BEGIN ISOLATION LEVEL REPEATABLE READ")
        self._begun = True

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.run(sql, params).fetchone()
        return None if row is None else row[0]

    # -- reads --------------------------------------------------------------------------------------------------
    @staticmethod
    def detach(model: M) -> M:
        """`model` itself: every read parses a fresh copy."""
        return model

    @property
    def _lock(self) -> str:
        """Inside a write, reads of what the write may change take the rows' locks."""
        return " FOR UPDATE" if self._write else ""

    def get_rollout(self, rollout_id: str) -> Rollout | None:
        """A rollout by id (locked inside a write)."""
        if not isinstance(rollout_id, str) or "\x00" in rollout_id:
            return None
        data = self._one(f"SELECT data FROM {SCHEMA}.rollouts WHERE rollout_id = %s{self._lock}", (rollout_id,))
        if data is None:
            return None
        if self._write:
            self._locked.add(rollout_id)
        return Rollout.model_validate_json(data)

    @staticmethod
    def _ids(rollout_ids: Sequence[str]) -> list[str]:
        return [rid for rid in dict.fromkeys(rollout_ids) if isinstance(rid, str) and "\x00" not in rid]

    def get_rollouts(self, rollout_ids: Sequence[str]) -> dict[str, Rollout]:
        """The known rollouts among `rollout_ids`."""
        out: dict[str, Rollout] = {}
        for (data,) in self.run(
            f"SELECT data FROM {SCHEMA}.rollouts WHERE rollout_id = ANY(%s)", (self._ids(rollout_ids),)
        ):
            rollout = Rollout.model_validate_json(data)
            out[rollout.rollout_id] = rollout
        return out

    def rollout_statuses(self, rollout_ids: Sequence[str]) -> dict[str, str]:
        """The statuses of the known rollouts among `rollout_ids` (from the status column, no JSON parsed)."""
        rows = self.run(
            f"SELECT rollout_id, status FROM {SCHEMA}.rollouts WHERE rollout_id = ANY(%s)", (self._ids(rollout_ids),)
        )
        return {rid: status for rid, status in rows}

    def select_rollouts(
        self, query: RolloutFilter, sort_by: str | None, sort_order: str, limit: int, offset: int
    ) -> tuple[list[Rollout], int]:
        """Filtered, counted, sorted and paged in SQL over indexed columns; only the page's rows are parsed. A sort
        by a field without a column loads the matches and sorts them in Python."""
        condition, params = rollout_sql.where(query)
        if sort_by is not None and sort_by not in rollout_sql.SQL_SORTS:
            rows = self.run(f"SELECT data FROM {SCHEMA}.rollouts WHERE {condition} ORDER BY seq", params)
            matches = sort_items([Rollout.model_validate_json(d) for (d,) in rows], Rollout, sort_by, sort_order)
            return matches[offset : None if limit == -1 else offset + limit], len(matches)
        total = int(self._one(f"SELECT count(*) FROM {SCHEMA}.rollouts WHERE {condition}", params))
        if limit == 0 or offset >= total:
            return [], total
        rows = self.run(
            f"SELECT data FROM {SCHEMA}.rollouts WHERE {condition} "
            f"ORDER BY {rollout_sql.order_by(sort_by, sort_order)} LIMIT %s OFFSET %s",
            [*params, None if limit == -1 else limit, offset],
        )
        return [Rollout.model_validate_json(d) for (d,) in rows], total

    def latest_attempt(self, rollout_id: str) -> Attempt | None:
        """The rollout's attempt with the highest sequence id."""
        if not isinstance(rollout_id, str) or "\x00" in rollout_id:
            return None
        data = self._one(
            f"SELECT data FROM {SCHEMA}.attempts WHERE rollout_id = %s ORDER BY sequence_id DESC LIMIT 1",
            (rollout_id,),
        )
        return None if data is None else Attempt.model_validate_json(data)

    def latest_attempts(self, rollout_ids: Sequence[str]) -> dict[str, Attempt]:
        """Each rollout's latest attempt, in one query for the whole list."""
        rows = self.run(
            f"SELECT DISTINCT ON (rollout_id) rollout_id, data FROM {SCHEMA}.attempts WHERE rollout_id = ANY(%s) "
            "ORDER BY rollout_id, sequence_id DESC",
            (self._ids(rollout_ids),),
        )
        return {rid: Attempt.model_validate_json(data) for rid, data in rows}

    def latest_sequence_id(self, rollout_id: str) -> int:
        """The highest attempt sequence id of the rollout (0 without attempts)."""
        known = self._latest_seq.get(rollout_id)
        if known is not None:
            return known
        found = self._one(f"SELECT max(sequence_id) FROM {SCHEMA}.attempts WHERE rollout_id = %s", (rollout_id,))
        return int(found) if found is not None else 0

    def get_attempt(self, rollout_id: str, attempt_id: str) -> Attempt | None:
        """An attempt by id (inside a write that holds the rollout's lock, read with the rollout's highest attempt
        sequence id, which `latest_sequence_id` then answers without a query)."""
        if not isinstance(attempt_id, str) or "\x00" in attempt_id or "\x00" in rollout_id:
            return None
        if rollout_id not in self._locked:
            data = self._one(
                f"SELECT data FROM {SCHEMA}.attempts WHERE rollout_id = %s AND attempt_id = %s",
                (rollout_id, attempt_id),
            )
            return None if data is None else Attempt.model_validate_json(data)
        row = self.run(
            f"SELECT data, (SELECT max(sequence_id) FROM {SCHEMA}.attempts WHERE rollout_id = %s) "
            f"FROM {SCHEMA}.attempts WHERE rollout_id = %s AND attempt_id = %s",
            (rollout_id, rollout_id, attempt_id),
        ).fetchone()
        if row is None:
            return None
        self._latest_seq[rollout_id] = int(row[1])
        return Attempt.model_validate_json(row[0])

    def attempts(self, rollout_id: str) -> list[Attempt]:
        """The rollout's attempts by sequence id."""
        if not isinstance(rollout_id, str) or "\x00" in rollout_id:
            return []
        rows = self.run(f"SELECT data FROM {SCHEMA}.attempts WHERE rollout_id = %s ORDER BY sequence_id", (rollout_id,))
        return [Attempt.model_validate_json(data) for (data,) in rows]

    def span_payloads(self, rollout_id: str, attempt_id: str | None) -> list[bytes]:
        """The JSON of the rollout's spans in insertion order."""
        if not isinstance(rollout_id, str) or "\x00" in rollout_id or (attempt_id is not None and "\x00" in attempt_id):
            return []
        if attempt_id is None:
            rows = self.run(f"SELECT data FROM {SCHEMA}.spans WHERE rollout_id = %s ORDER BY seq", (rollout_id,))
        else:
            rows = self.run(
                f"SELECT data FROM {SCHEMA}.spans WHERE rollout_id = %s AND attempt_id = %s ORDER BY seq",
                (rollout_id, attempt_id),
            )
        return [bytes(data) for (data,) in rows]

    def get_resources(self, resources_id: str) -> ResourcesUpdate | None:
        """A resources snapshot by id."""
        if not isinstance(resources_id, str) or "\x00" in resources_id:
            return None
        data = self._one(f"SELECT data FROM {SCHEMA}.resources WHERE resources_id = %s{self._lock}", (resources_id,))
        return None if data is None else ResourcesUpdate.model_validate_json(data)

    def all_resources(self) -> list[ResourcesUpdate]:
        """Every snapshot in insertion order."""
        rows = self.run(f"SELECT data FROM {SCHEMA}.resources ORDER BY seq").fetchall()
        return [ResourcesUpdate.model_validate_json(d) for (d,) in rows]

    def latest_resources_id(self) -> str | None:
        """The id of the latest snapshot."""
        found = self._one(f"SELECT value FROM {SCHEMA}.meta WHERE key = 'latest_resources_id'")
        return None if found is None else str(found)

    def get_worker(self, worker_id: str) -> Worker | None:
        """A worker by id (locked inside a write)."""
        if not isinstance(worker_id, str) or "\x00" in worker_id:
            return None
        data = self._one(f"SELECT data FROM {SCHEMA}.workers WHERE worker_id = %s{self._lock}", (worker_id,))
        return None if data is None else Worker.model_validate_json(data)

    def all_workers(self) -> list[Worker]:
        """Every worker in insertion order."""
        rows = self.run(f"SELECT data FROM {SCHEMA}.workers ORDER BY seq").fetchall()
        return [Worker.model_validate_json(d) for (d,) in rows]

    def any_watched(self) -> bool:
        """Whether any rollout is marked for the health scan."""
        return self._one(f"SELECT 1 FROM {SCHEMA}.rollouts WHERE watched LIMIT 1") is not None

    def watched_rollouts(self, rollout_ids: Sequence[str] | None = None) -> list[Rollout]:
        """The watched rollouts (all, or those among `rollout_ids`) in insertion order (locked inside a write)."""
        if rollout_ids is None:
            rows = self.run(f"SELECT data FROM {SCHEMA}.rollouts WHERE watched ORDER BY seq{self._lock}")
        else:
            rows = self.run(
                f"SELECT data FROM {SCHEMA}.rollouts WHERE watched AND rollout_id = ANY(%s) ORDER BY seq{self._lock}",
                (self._ids(rollout_ids),),
            )
        return [Rollout.model_validate_json(data) for (data,) in rows.fetchall()]

    # -- writes -------------------------------------------------------------------------------------------------
    def insert_rollout(self, rollout: Rollout, watched: bool) -> None:
        """Insert a rollout row and its span counter."""
        self.run(
            f"INSERT INTO {SCHEMA}.rollouts (rollout_id, status, watched, mode, start_time, end_time, data) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (
                rollout.rollout_id,
                rollout.status,
                watched,
                rollout.mode,
                rollout.start_time,
                rollout.end_time,
                _dump(rollout),
            ),
        )
        self.run(f"INSERT INTO {SCHEMA}.span_counters (rollout_id, counter) VALUES (%s, 0)", (rollout.rollout_id,))

    def put_rollout(self, rollout: Rollout, watched: bool, old_status: str, old_mode: str | None) -> None:
        """Update a rollout row."""
        self.run(
            f"UPDATE {SCHEMA}.rollouts SET status = %s, watched = %s, mode = %s, end_time = %s, data = %s "
            "WHERE rollout_id = %s",
            (rollout.status, watched, rollout.mode, rollout.end_time, _dump(rollout), rollout.rollout_id),
        )

    def enqueue(self, rollout_id: str) -> None:
        """Append to the queue; a rollout already in it keeps its position."""
        self.run(
            f"INSERT INTO {SCHEMA}.queue (rollout_id) VALUES (%s) ON CONFLICT (rollout_id) DO NOTHING", (rollout_id,)
        )

    def claim_next(self) -> Rollout | None:
        """Lock and delete the queue's first entry that no other transaction holds, with its rollout; entries whose
        rollout is no longer queuing are deleted and skipped."""
        looked_again = False
        while True:
            row = self.run(
                f"SELECT q.position, r.data FROM {SCHEMA}.queue q JOIN {SCHEMA}.rollouts r USING (rollout_id) "
                "ORDER BY q.position LIMIT 1 FOR UPDATE OF q, r SKIP LOCKED"
            ).fetchone()
            if row is None:
                # The statement saw the queue as it was when it began: an entry committed while it ran is missed
                # when the entries it did see were all being claimed by others (skipped as locked). One more look
                # begins after those commits, so a queue that was never empty is not reported empty.
                if looked_again:
                    return None
                looked_again = True
                continue
            position, data = row
            self.run(f"DELETE FROM {SCHEMA}.queue WHERE position = %s", (position,))
            rollout = Rollout.model_validate_json(data)
            self._locked.add(rollout.rollout_id)
            if rollout.status not in state.QUEUING_STATUSES:
                logger.warning("Skipping stale queue entry %s (no longer waiting in the queue)", rollout.rollout_id)
                continue
            return rollout

    def insert_attempt(self, attempt: Attempt) -> None:
        """Insert an attempt row."""
        self._latest_seq.pop(attempt.rollout_id, None)
        self.run(
            f"INSERT INTO {SCHEMA}.attempts (rollout_id, attempt_id, sequence_id, data) VALUES (%s, %s, %s, %s)",
            (attempt.rollout_id, attempt.attempt_id, attempt.sequence_id, _dump(attempt)),
        )

    def put_attempt(self, attempt: Attempt) -> None:
        """Update an attempt row."""
        self.run(
            f"UPDATE {SCHEMA}.attempts SET data = %s WHERE rollout_id = %s AND attempt_id = %s",
            (_dump(attempt), attempt.rollout_id, attempt.attempt_id),
        )

    def put_resources(self, update: ResourcesUpdate) -> None:
        """Insert or update a snapshot (in place: it keeps its insertion position) and make it the latest."""
        self.run(
            f"INSERT INTO {SCHEMA}.resources (resources_id, data) VALUES (%s, %s) "
            "ON CONFLICT (resources_id) DO UPDATE SET data = excluded.data",
            (_text(update.resources_id, "resources_id"), _dump(update)),
        )
        self.run(
            f"INSERT INTO {SCHEMA}.meta (key, value) VALUES ('latest_resources_id', %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (update.resources_id,),
        )

    def put_worker(self, worker: Worker) -> None:
        """Insert or update a worker row."""
        self.run(
            f"INSERT INTO {SCHEMA}.workers (worker_id, status, data) VALUES (%s, %s, %s) "
            "ON CONFLICT (worker_id) DO UPDATE SET status = excluded.status, data = excluded.data",
            (_text(worker.worker_id, "worker_id"), worker.status, _dump(worker)),
        )

    # -- spans --------------------------------------------------------------------------------------------------
    def raise_span_counter(self, rollout_id: str, sequence_id: int) -> None:
        """Raise the rollout's counter to `sequence_id` if it is lower."""
        if "\x00" in rollout_id:
            return
        self.run(
            f"UPDATE {SCHEMA}.span_counters SET counter = %s WHERE rollout_id = %s AND counter < %s",
            (sequence_id, rollout_id, sequence_id),
        )

    def allocate_span_sequence_ids(self, counts: Mapping[str, int]) -> dict[str, int]:
        """Advance each rollout's counter by its count; each first new id (an unknown rollout rolls back all)."""
        first: dict[str, int] = {}
        for rollout_id, count in counts.items():
            found = (
                None
                if "\x00" in rollout_id
                else self._one(
                    f"UPDATE {SCHEMA}.span_counters SET counter = counter + %s WHERE rollout_id = %s "
                    "AND counter <= %s RETURNING counter",
                    (count, rollout_id, INT64_MAX - count),
                )
            )
            if found is None:
                if self.get_rollout(rollout_id) is None:
                    raise NotFoundError("rollout", rollout_id)
                raise ValueError(f"span sequence ids of rollout {rollout_id} are exhausted (they stop at {INT64_MAX})")
            first[rollout_id] = int(found) - count + 1
        return first

    def reserve_span_bytes(self, size: int) -> None:
        """Nothing: the database has no span budget."""

    def insert_spans(self, spans: Iterable[EncodedSpan]) -> list[Span]:
        """Insert span rows; a span id the attempt already has is logged and skipped."""
        stored: list[Span] = []
        for span, data, _ in spans:
            inserted = self._one(
                f"INSERT INTO {SCHEMA}.spans (rollout_id, attempt_id, span_id, sequence_id, data) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (rollout_id, attempt_id, span_id) DO NOTHING RETURNING 1",
                (span.rollout_id, span.attempt_id, _text(span.span_id, "span_id"), span.sequence_id, data),
            )
            if inserted is None:
                logger.error(
                    "Duplicate span %s of rollout %s attempt %s ignored", span.span_id, span.rollout_id, span.attempt_id
                )
                continue
            stored.append(span)
        return stored

    # -- idempotency keys (inside a write transaction) ------------------------------------------------------------
    def replay_kept(self, now: float) -> None:
        """First step of a keyed write: raise `AnswerAlreadyKept` when its key already has a live answer (a retry
        of a write committed before, by any server), so nothing runs again; forget the key when it is past its age.

        The lookup travels with the write's next statement: its answer is judged as soon as that statement is
        sent (before the write reads anything), or before the commit."""
        pending = idempotency.current_write()
        if pending is None or pending.encode is None:
            return
        conn, main = self._conn, self._cur
        assert conn is not None and main is not None, "the transaction is not open"
        if not self._begun:
            self._begin(main)
        cur = conn.cursor()
        cur.execute(
            f"SELECT created, fingerprint, status, content_type, headers, body FROM {SCHEMA}.idempotency_keys "
            "WHERE key = %s",
            (_text(pending.key, "Idempotency-Key"),),
            prepare=True,
        )
        self._key_check = (cur, pending, now)

    def _judge_key(self) -> None:
        """Read the key lookup's answer (sent by `replay_kept`) and act on it."""
        assert self._key_check is not None
        cur, pending, now = self._key_check
        self._key_check = None
        row = cur.fetchone()
        if row is None:
            return
        created, fingerprint, status, content_type, headers, body = row
        pairs = tuple((name.encode("latin-1"), value.encode("latin-1")) for name, value in json.loads(headers))
        first = idempotency.KeptAnswer(
            int(fingerprint), int(status), bytes(body), content_type.encode("latin-1"), pairs
        )
        tracker = self._driver.kept_keys
        if now - float(created) <= tracker.retention.max_age_seconds:
            raise idempotency.AnswerAlreadyKept(pending.key, first)
        # Expired, not yet pruned. On the lookup's own cursor: the statement just sent on the main one may be a
        # read whose rows its caller is about to fetch.
        cur.execute(f"DELETE FROM {SCHEMA}.idempotency_keys WHERE key = %s", (pending.key,), prepare=True)
        tracker.entries -= 1
        tracker.bytes -= len(first.body)

    def keep_answer(self, result: Any, now: float) -> None:
        """Last step of a keyed write: keep the answer to `result` with the write itself, so a retry after a crash
        gets it (the write began with `replay_kept`)."""
        pending = idempotency.answer_to_keep(result)
        if pending is None:
            return
        answer = pending.kept
        assert answer is not None
        self.run(
            f"INSERT INTO {SCHEMA}.idempotency_keys (key, created, fingerprint, status, content_type, headers, body) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
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
        tracker = self._driver.kept_keys
        tracker.added(len(answer.body), now)
        if tracker.prune_due(now):
            self._prune_answers(now)

    def _prune_answers(self, now: float, batch: int = 500, most: int = 5000) -> None:
        """Drop the oldest keys the retention says must go (at most `most` per write; the next write goes on)."""
        tracker = self._driver.kept_keys
        tracker.start_prune()
        seen = 0
        while seen < most:
            rows = self.run(
                f"SELECT seq, created, length(body) FROM {SCHEMA}.idempotency_keys ORDER BY seq LIMIT %s", (batch,)
            ).fetchall()
            last = None
            kept_one = False
            for seq, created, size in rows:
                if not tracker.drop(float(created), int(size), now):
                    kept_one = True
                    break
                last = seq
            if last is not None:
                self.run(f"DELETE FROM {SCHEMA}.idempotency_keys WHERE seq <= %s", (last,))
            if kept_one:
                return
            if len(rows) < batch:
                tracker.emptied()
                return
            seen += len(rows)


# -- the driver -----------------------------------------------------------------------------------------------------


class PostgresDriver:
    """The PostgreSQL store's storage: a pool of connections to one database, and a listener for other servers'
    finished rollouts. See `agl.store.driver`.

    Args:
        dsn: libpq connection string or URL of the database.
        retention: how many idempotency keys are kept, and how long.
        claim_timeout: the store's claim timeout (rows written with it off are marked for the health scan).
        min_connections / max_connections: the pool's size.
        connect_timeout: seconds to wait for the database when opening.
        listen: whether to run the LISTEN thread (off: waiters see other servers' finishes by polling only).
    """

    poll_seconds: float | None = _POLL_SECONDS

    def __init__(
        self,
        dsn: str,
        retention: idempotency.IdempotencyRetention,
        claim_timeout: float | None,
        *,
        min_connections: int = 1,
        max_connections: int = 8,
        connect_timeout: float = 10.0,
        listen: bool = True,
    ) -> None:
        try:
            import psycopg
            import psycopg_pool
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError(
                "the PostgreSQL store needs psycopg 3 and psycopg_pool: pip install 'agl[postgres]'"
            ) from exc
        self.dsn = dsn
        self.where = mask_dsn(dsn)
        self.on_commit: CommitHook = _no_hook
        self.commit_lock = threading.Lock()
        self._connect_timeout = connect_timeout
        self._closed = threading.Event()
        self._listener: threading.Thread | None = None
        self._listen_conn: psycopg.Connection[Any] | None = None
        self.listening = threading.Event()
        """Set while the listener is connected and listening (tests wait for it)."""
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=max(1, int(connect_timeout))) as conn:
                _migrate(conn, self.where)
        except psycopg.OperationalError as exc:
            # libpq's message names host and port, never the password; one line for the log.
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise PostgresStoreError(f"cannot connect to PostgreSQL at {self.where}: {reason}") from None
        except psycopg.Error as exc:
            raise PostgresStoreError(f"cannot use PostgreSQL database {self.where}: {exc}") from exc
        self._pool: psycopg_pool.ConnectionPool[Any] | None = psycopg_pool.ConnectionPool(
            dsn,
            min_size=min_connections,
            max_size=max_connections,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(connect_timeout))},
            timeout=connect_timeout,
            name="agl-store",
            open=True,
        )
        with self.read() as tx:
            count, total, oldest = tx.run(
                f"SELECT count(*), coalesce(sum(length(body)), 0), min(created) FROM {SCHEMA}.idempotency_keys"
            ).fetchone() or (0, 0, None)
        self.kept_keys = idempotency.RetentionTracker(retention, int(count), int(total), oldest)
        if claim_timeout is not None:
            # Rows written with the claim timeout off are not marked for the health scan; mark them now.
            with self.write() as wtx:
                wtx.run(f"UPDATE {SCHEMA}.rollouts SET watched = TRUE WHERE status = 'preparing' AND NOT watched")
        # Transactions run here, never on an event loop: one thread per pooled connection.
        self._threads = JobThreads(f"PostgresLightningStore on {self.where} is closed")
        self._threads.start([f"agl-pg-{i}" for i in range(max_connections)])
        if listen:
            self._listener = threading.Thread(target=self._listen, name="agl-pg-listen", daemon=True)
            self._listener.start()

    def pool(self) -> psycopg_pool.ConnectionPool[Any]:
        """The open pool (RuntimeError once closed)."""
        if self._pool is None:
            raise RuntimeError(f"PostgresLightningStore on {self.where} is closed")
        return self._pool

    # -- the driver ---------------------------------------------------------------------------------------------
    def bind(self, on_commit: CommitHook) -> None:
        """Set what to call after each committed write transaction (and for rollouts other servers finished)."""
        self.on_commit = on_commit

    async def run_read(self, body: Callable[[ReadTransaction], T]) -> T:
        """`body` in a read transaction (one REPEATABLE READ snapshot) on a thread of the driver's pool."""
        return await self._run(body, False)

    async def run_write(self, body: Callable[[WriteTransaction], T]) -> T:
        """`body` in a write transaction on a thread of the driver's pool; run again (up to a few times) when
        PostgreSQL rolls it back to break a deadlock with another server's write."""
        return await self._run(body, True)

    async def _run(self, body: Callable[[Any], T], write: bool) -> T:
        return await self._threads.submit(partial(self._transact, body, write))

    def _transact(self, body: Callable[[Any], T], write: bool) -> T:
        """`body(tx)` in one transaction (on the calling thread)."""
        import psycopg

        pending = idempotency.current_write()
        kept_before = pending.kept if pending is not None else None
        for attempt in range(_RETRIES + 1):
            try:
                with _Transaction(self, write) as tx:
                    return body(tx)
            except psycopg.Error as exc:
                # SQLSTATE class 40 (deadlock detected, serialization failure): rolled back, nothing was written.
                if not (exc.sqlstate or "").startswith("40") or attempt == _RETRIES:
                    # A value PostgreSQL refused in a statement whose answer came later (pipeline mode).
                    if isinstance(exc, psycopg.DataError):
                        raise _value_error(exc) from exc
                    raise
                if pending is not None:
                    pending.kept = kept_before  # the answer kept by the rolled-back run is gone with it
                time.sleep(random.uniform(0, 0.01 * (attempt + 1)))
        raise AssertionError("unreachable")

    def read(self) -> _Transaction:
        """A read transaction on the calling thread: one snapshot (REPEATABLE READ)."""
        return _Transaction(self, False)

    def write(self) -> _Transaction:
        """A write transaction on the calling thread (READ COMMITTED, row locks on what it reads to change), committed on normal exit and
        rolled back on an exception."""
        return _Transaction(self, True)

    @staticmethod
    def encode_span(span: Span, payload: bytes | None) -> EncodedSpan:
        """The span with its JSON (re-encoded: the database holds the store's own serialisation)."""
        data = _dump(span)
        return span, data, len(data)

    def close(self) -> None:
        """Finish the transactions handed over, stop the listener and close the pool; later calls raise
        RuntimeError."""
        self._threads.close()
        self._closed.set()
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.join(timeout=10)
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    # -- other servers' finished rollouts -----------------------------------------------------------------------
    def _listen(self) -> None:
        """LISTEN for finished rollouts on a connection of its own and wake this process's waiters; reconnect after
        a lost connection (waiters poll meanwhile)."""
        import psycopg

        delay = 0.2
        while not self._closed.is_set():
            try:
                with psycopg.connect(
                    self.dsn, autocommit=True, connect_timeout=max(1, int(self._connect_timeout))
                ) as conn:
                    conn.execute(f"LISTEN {FINISHED_CHANNEL}")
                    self.listening.set()
                    delay = 0.2
                    while not self._closed.is_set():
                        finished: list[str] = []
                        for note in conn.notifies(timeout=0.1, stop_after=256):
                            finished.extend(note.payload.split())
                        if finished:
                            self.on_commit([], finished)
            except psycopg.Error as exc:
                if self._closed.is_set():
                    return
                logger.warning("PostgreSQL listener on %s lost its connection (%s); reconnecting", self.where, exc)
            finally:
                self.listening.clear()
            self._closed.wait(delay)
            delay = min(delay * 2, 5.0)


class PostgresLightningStore(StoreEngine):
    """A durable, thread-safe store in a PostgreSQL database, which several store servers may share.

    Args:
        dsn: the database, as a libpq URL (`postgresql://user:password@host:5432/dbname`) or key=value string. The
            store creates and migrates its tables in the schema `agl` of that database.
        clock: source of the current time in epoch seconds (tests pass a controllable clock).
        scan_debounce_seconds: minimum time between two health scans (timeout / unresponsive); ≤ 0 scans every call.
        claim_timeout_seconds: a claimed attempt still `preparing` with no sign of life from its runner for this long
            is returned to the queue by the health scan; None or 0 turns it off.
        idempotency_retention: how long and how many idempotency keys of served writes are kept in the database with
            their answers (default: 10 minutes, 100 000 keys, 256 MiB of answers, whichever is reached first).
        min_connections / max_connections: the connection pool's size.
        connect_timeout_seconds: how long to wait for the database when opening (then `PostgresStoreError`).
    """

    def __init__(
        self,
        dsn: str,
        *,
        clock: Callable[[], float] | None = None,
        scan_debounce_seconds: float = 10.0,
        claim_timeout_seconds: float | None = state.DEFAULT_CLAIM_TIMEOUT_SECONDS,
        idempotency_retention: idempotency.IdempotencyRetention | None = None,
        min_connections: int = 1,
        max_connections: int = 8,
        connect_timeout_seconds: float = 10.0,
    ) -> None:
        if not isinstance(dsn, str) or not dsn.strip():
            raise ValueError(f"dsn must be a PostgreSQL connection string such as postgresql://host/db, got {dsn!r}")
        claim_timeout = state.check_claim_timeout(claim_timeout_seconds)
        retention = idempotency_retention if idempotency_retention is not None else idempotency.IdempotencyRetention()
        if not isinstance(retention, idempotency.IdempotencyRetention):
            raise ValueError(f"idempotency_retention must be an IdempotencyRetention, got {retention!r}")
        for name, value in (("min_connections", min_connections), ("max_connections", max_connections)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if max_connections < min_connections:
            raise ValueError(
                f"max_connections ({max_connections}) must be at least min_connections ({min_connections})"
            )
        self._dsn = dsn
        self._options: dict[str, Any] = {
            "min_connections": min_connections,
            "max_connections": max_connections,
            "connect_timeout_seconds": connect_timeout_seconds,
        }
        self._pg = PostgresDriver(
            dsn,
            retention,
            claim_timeout,
            min_connections=min_connections,
            max_connections=max_connections,
            connect_timeout=connect_timeout_seconds,
        )
        super().__init__(
            self._pg,
            clock=clock,
            scan_debounce_seconds=scan_debounce_seconds,
            claim_timeout_seconds=claim_timeout,
        )
        self._created = self._clock()

    # -- pickling: a copy connects to the same database ----------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {
            "dsn": self._dsn,
            "clock": self._clock,
            "scan_debounce_seconds": self._scan_debounce,
            "claim_timeout_seconds": self._claim_timeout,
            "idempotency_retention": self._pg.kept_keys.retention,
            **self._options,
        }

    def __setstate__(self, data: dict[str, Any]) -> None:
        dsn = data.pop("dsn")
        self.__init__(dsn, **data)  # type: ignore[misc]

    @property
    def dsn(self) -> str:
        """Where the database is, with the password masked."""
        return self._pg.where

    def wait_listening(self, timeout: float = 10.0) -> bool:
        """Whether the listener for other servers' finished rollouts is connected within `timeout` seconds."""
        return self._pg.listening.wait(timeout)

    async def statistics(self) -> PostgresStoreStatistics:
        """Row counts of every collection, uptime, and the size of the database."""

        def count(tx: Any) -> Any:
            return tx.run(
                f"SELECT (SELECT count(*) FROM {SCHEMA}.rollouts), (SELECT count(*) FROM {SCHEMA}.attempts), "
                f"(SELECT count(*) FROM {SCHEMA}.spans), (SELECT count(*) FROM {SCHEMA}.resources), "
                f"(SELECT count(*) FROM {SCHEMA}.workers), pg_database_size(current_database())"
            ).fetchone()

        row = await self._pg.run_read(count)
        assert row is not None
        return PostgresStoreStatistics(
            name=type(self).__name__,
            total_rollouts=int(row[0]),
            total_attempts=int(row[1]),
            total_spans=int(row[2]),
            total_resources=int(row[3]),
            total_workers=int(row[4]),
            uptime=self._clock() - self._created,
            dsn=self._pg.where,
            database_bytes=int(row[5]),
        )
