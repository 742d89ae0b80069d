"""The SQLite store's threads: one writer that commits queued writes in groups, and reader threads.

Both take synchronous closures from any event loop or thread and hand back their result on the caller's loop, so
a slow fsync or a large query never runs on an event loop.

* `GroupWriter` owns the write connection. Writes queued while it commits are applied together in one
  transaction, each inside its own `SAVEPOINT`: a write that raises is rolled back alone and its caller gets its
  exception, while the others commit. One `COMMIT` (one fsync in `synchronous=FULL`) acknowledges the whole group;
  no caller gets its result before that commit.
* `ReaderPool` runs reads on its own connections (WAL snapshots), so a read never waits for a commit's fsync nor
  holds up a write.

Each thread closes its own connection when it stops. The queue, the hand-back of results to the callers' loops and
the closing are `agl.store.job_threads`'; a store dropped without `close()` is collected and its finalizer
(`stop_unclosed`) stops the threads.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from queue import Empty
from typing import Any, Generic, Protocol, TypeVar

from agl.store.job_threads import Job, JobThreads, hand_back

__all__ = ["GroupWriter", "ReaderPool", "WriteRows", "stop_unclosed"]

logger = logging.getLogger(__name__)

R = TypeVar("R")
T = TypeVar("T")

GROUP_MAX = 512
"""The most writes one transaction takes, so one group's commit stays short."""

STEP_ASIDE_SECONDS = 0.0002
"""How long a large read pauses between chunks while another read is in flight (see `ReaderPool.step_aside`)."""

UNCLOSED_WAIT = 5.0
"""Seconds the finalizer of a store dropped without close() waits for its threads to finish their queued jobs."""


class WriteRows(Protocol):
    """What the writer needs of a transaction object: its connection and the reports it collects."""

    events: list[Any]
    finished: list[str]

    def conn(self) -> sqlite3.Connection:
        """The write connection."""

    def close(self) -> None:
        """Close the connection (the writer thread does, when it stops)."""


def _closed(name: str) -> str:
    return f"SqliteLightningStore on {name} is closed"


class GroupWriter(JobThreads, Generic[R]):
    """The writer thread: runs write closures on `rows` (its connection), committing queued ones together.

    Args:
        rows: the transaction object the closures get; only this thread uses its connection, and closes it when
            it stops.
        on_commit: called after each committed write with what it collected, in commit order, before its caller
            gets the result. It must not hold the store strongly (the thread holds it), or an unclosed store is
            never collected.
        name: the database, for messages.
    """

    def __init__(self, rows: R, on_commit: Callable[[list[Any], list[str]], None], name: str) -> None:
        super().__init__(_closed(name))
        self._name = name
        self._rows = rows
        self.on_commit = on_commit
        self.commits = 0
        """Transactions committed so far (each a group of writes)."""
        self.writes = 0
        """Writes committed so far: `writes / commits` is the mean group size."""
        self.start(["agl-sqlite-writer"])

    async def run(self, body: Callable[[R], T]) -> T:
        """`body(rows)` in a write transaction; its result once committed, or its exception (its changes rolled
        back)."""
        return await self.submit(body)

    # -- the thread ------------------------------------------------------------------------------------------------
    def _serve(self) -> None:
        try:
            while self._serve_group():
                pass
        finally:
            rows: Any = self._rows
            try:
                rows.close()
            except Exception:
                logger.exception("could not close the SQLite write connection to %s", self._name)

    def _serve_group(self) -> bool:
        """Wait for writes and commit them as one group; False once told to stop."""
        queue = self.queue
        first = queue.get()
        if first is None:
            return False
        group = [first]
        stop = False
        while len(group) < GROUP_MAX:
            try:
                job = queue.get_nowait()
            except Empty:
                break
            if job is None:
                stop = True
                break
            group.append(job)
        try:
            self._commit(group)
        except BaseException as exc:  # never leave a caller waiting, whatever went wrong
            logger.exception("SQLite writer failed on a group of %d writes", len(group))
            for job in group:
                if job.error is None:
                    job.error = exc
            hand_back(group)
        return not stop

    def _commit(self, group: list[Job]) -> None:
        rows: Any = self._rows
        db: sqlite3.Connection = rows.conn()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            for job in group:
                job.error = exc
            hand_back(group)
            return
        # Each applied write with the events and finished rollouts it collected, reported once committed.
        applied: list[tuple[Job, list[Any], list[str]]] = []
        single = len(group) == 1  # alone, the transaction itself is the savepoint
        for job in group:
            if not single:
                db.execute("SAVEPOINT w")
            try:
                job.result = job.context.run(job.body, rows)
            except BaseException as exc:
                job.error = exc
                rows.events, rows.finished = [], []
                if db.in_transaction:
                    db.execute("ROLLBACK" if single else "ROLLBACK TO w")
                    if not single:
                        db.execute("RELEASE w")
                elif applied:
                    # SQLite itself ended the transaction (e.g. the disk is full): the writes applied before in this
                    # group are gone too, so they fail with the same error; the rest go on in a new transaction.
                    for done, _, _ in applied:
                        done.error = exc
                    applied = []
                    db.execute("BEGIN IMMEDIATE")
                elif not single:
                    db.execute("BEGIN IMMEDIATE")
                continue
            if not single:
                db.execute("RELEASE w")
            applied.append((job, rows.events, rows.finished))
            rows.events, rows.finished = [], []
        if db.in_transaction:
            try:
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                for job, _, _ in applied:
                    job.error = exc
                applied = []
        if applied:
            self.commits += 1
            self.writes += len(applied)
        hook = self.on_commit
        for _, events, finished in applied:
            if events or finished:
                try:
                    hook(events, finished)
                except Exception:
                    logger.exception("store commit hook failed")
        hand_back(group)


class ReaderPool(JobThreads, Generic[R]):
    """Reader threads, each with its own read connection (from `open_rows`), running read closures.

    Args:
        open_rows: a transaction object over a new read connection, called once per thread. It must not hold the
            store strongly (the threads hold it), or an unclosed store is never collected.
        threads: how many reads may run at once.
        name: the database, for messages.
    """

    def __init__(self, open_rows: Callable[[], R], threads: int, name: str) -> None:
        super().__init__(_closed(name))
        self._open_rows = open_rows
        self._count = threading.Lock()
        self._reading = 0
        self.pauses = 0
        """How many times a large read paused for another one so far."""
        self.start([f"agl-sqlite-reader-{i}" for i in range(threads)])

    async def run(self, body: Callable[[R], T]) -> T:
        """`body(rows)` in a read transaction (one snapshot) on a reader thread; its result or exception."""
        with self._count:
            self._reading += 1
        try:
            return await self.submit(body)
        finally:
            with self._count:
                self._reading -= 1

    def step_aside(self) -> None:
        """Called by a large read between chunks of its rows: while another read is in flight, pause briefly.

        Decoding rows holds the interpreter lock, and a thread waiting for it waits up to the switch interval
        (5 ms) each time; a point read takes it several times (each SQLite call lets it go), on its reader thread
        and on the event loop. Pausing here hands it over at once, so a read of tens of thousands of rows slows
        point reads beside it by about a chunk's decoding instead (bench/store_stall.py)."""
        if self._reading > 1:
            self.pauses += 1
            time.sleep(STEP_ASIDE_SECONDS)

    def _serve(self) -> None:
        reader = _Reader(self._open_rows, self.step_aside)
        try:
            self.serve_each(reader.read)
        finally:
            reader.close()


class _Reader:
    """One reader thread's connection, opened at its first read."""

    def __init__(self, open_rows: Callable[[], Any], step_aside: Callable[[], None]) -> None:
        self._open_rows = open_rows
        self._step_aside = step_aside
        self._rows: Any = None
        self._db: sqlite3.Connection | None = None

    def read(self, body: Callable[[Any], T]) -> T:
        """`body(rows)` in one read transaction."""
        if self._db is None:
            self._rows = self._open_rows()
            self._rows.step_aside = self._step_aside
            self._db = self._rows.conn()
        db = self._db
        db.execute("BEGIN")
        try:
            return body(self._rows)
        finally:
            db.execute("COMMIT")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


def stop_unclosed(pools: Sequence[JobThreads | None], owner_pid: int, wait: float = UNCLOSED_WAIT) -> None:
    """Finalizer of a store garbage-collected (or still open at interpreter exit) without close(): stop its threads
    in order, after the jobs already queued, each closing its connection; waits up to `wait` seconds in all.

    Does nothing in a forked child (not `owner_pid`): the threads live in the parent only."""
    if os.getpid() != owner_pid:
        return
    deadline = time.monotonic() + wait
    for pool in pools:
        if pool is not None:
            pool.stop(max(0.0, deadline - time.monotonic()))
