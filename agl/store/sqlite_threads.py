"""The SQLite store's threads: one writer that commits queued writes in groups, and reader threads.

Both take synchronous closures from any event loop or thread and hand back their result on the caller's loop, so
a slow fsync or a large query never runs on an event loop.

* `GroupWriter` owns the write connection. Writes queued while it commits are applied together in one
  transaction, each inside its own `SAVEPOINT`: a write that raises is rolled back alone and its caller gets its
  exception, while the others commit. One `COMMIT` (one fsync in `synchronous=FULL`) acknowledges the whole group;
  no caller gets its result before that commit.
* `ReaderPool` runs reads on its own connections (WAL snapshots), so a read never waits for a commit's fsync nor
  holds up a write.

Each thread closes its own connection when it stops. Between jobs a thread holds nothing of the store that made it
(only its queue and its connection), so a store dropped without `close()` can be garbage-collected, and its
finalizer (`stop_unclosed`) stops the threads.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from queue import Empty, SimpleQueue
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["GroupWriter", "ReaderPool", "WriteRows", "stop_unclosed"]

logger = logging.getLogger(__name__)

R = TypeVar("R")
T = TypeVar("T")

GROUP_MAX = 512
"""The most writes one transaction takes, so one group's commit stays short."""

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


_NO_CONTEXT = contextvars.Context()
"""What a job that has run keeps instead of its context (which may hold the store)."""


class _Job:
    """One closure waiting to run, and what it gave."""

    __slots__ = ("body", "context", "error", "events", "finished", "future", "loop", "result")

    def __init__(self, body: Callable[[Any], Any], loop: asyncio.AbstractEventLoop) -> None:
        self.body = body
        self.context = contextvars.copy_context()
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()
        self.result: Any = None
        self.error: BaseException | None = None
        self.events: list[Any] = []
        self.finished: list[str] = []


def _settle(jobs: list[_Job]) -> None:
    """On the callers' loop: hand each job's result or exception to its caller (one still waiting)."""
    for job in jobs:
        future = job.future
        if future.done():  # the caller was cancelled; the write itself stands
            continue
        if job.error is not None:
            future.set_exception(job.error)
        else:
            future.set_result(job.result)


def _spent(rows: Any) -> None:
    raise RuntimeError("this SQLite job has already run")


def _hand_back(jobs: list[_Job]) -> None:
    """Settle `jobs` on their loops, one wake-up per loop.

    Each job lets go of its closure and context first: they may hold the store, and the thread that ran the job
    still holds the job until it takes the next one, which would keep a store dropped meanwhile alive.
    """
    by_loop: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
    for job in jobs:
        job.body = _spent
        job.context = _NO_CONTEXT
        by_loop.setdefault(job.loop, []).append(job)
    for loop, group in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, group)
        except RuntimeError:  # the caller's loop is closed: nobody is waiting
            pass


def _closed(name: str) -> RuntimeError:
    return RuntimeError(f"SqliteLightningStore on {name} is closed")


class _JobQueue:
    """What the writer and the reader pool share: a queue of closures for their threads, closed once."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: SimpleQueue[_Job | None] = SimpleQueue()
        self._state = threading.Lock()
        self._open = True
        self._threads: list[threading.Thread] = []

    async def _submit(self, body: Callable[[Any], T]) -> T:
        job = _Job(body, asyncio.get_running_loop())
        with self._state:
            if not self._open:
                raise _closed(self._name)
            self._queue.put(job)
        result: T = await job.future
        return result

    def _stop(self, wait: float | None) -> None:
        """Take no more jobs; each thread ends after the jobs queued before it. Waits up to `wait` seconds (None:
        without limit) for them, never for the calling thread itself. A second call returns at once."""
        with self._state:
            if not self._open:
                return
            self._open = False
            for _ in self._threads:
                self._queue.put(None)
        deadline = None if wait is None else time.monotonic() + wait
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))


class GroupWriter(_JobQueue, Generic[R]):
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
        super().__init__(name)
        self._rows = rows
        self.on_commit = on_commit
        self.commits = 0
        """Transactions committed so far (each a group of writes)."""
        self.writes = 0
        """Writes committed so far: `writes / commits` is the mean group size."""
        self._thread = threading.Thread(target=self._serve, name="agl-sqlite-writer", daemon=True)
        self._threads = [self._thread]
        self._thread.start()

    async def run(self, body: Callable[[R], T]) -> T:
        """`body(rows)` in a write transaction; its result once committed, or its exception (its changes rolled
        back)."""
        return await self._submit(body)

    def queued(self) -> int:
        """How many writes wait for the writer (roughly: the count may change meanwhile)."""
        return self._queue.qsize()

    def close(self) -> None:
        """Finish the writes already queued, then stop the thread, which closes the connection."""
        self._stop(wait=None)

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
        queue = self._queue
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
            _hand_back(group)
        return not stop

    def _commit(self, group: list[_Job]) -> None:
        rows: Any = self._rows
        db: sqlite3.Connection = rows.conn()
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            for job in group:
                job.error = exc
            _hand_back(group)
            return
        applied: list[_Job] = []
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
                    for done in applied:
                        done.error = exc
                    applied = []
                    db.execute("BEGIN IMMEDIATE")
                elif not single:
                    db.execute("BEGIN IMMEDIATE")
                continue
            if not single:
                db.execute("RELEASE w")
            job.events, job.finished = rows.events, rows.finished
            rows.events, rows.finished = [], []
            applied.append(job)
        if db.in_transaction:
            try:
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                for job in applied:
                    job.error = exc
                applied = []
        if applied:
            self.commits += 1
            self.writes += len(applied)
        hook = self.on_commit
        for job in applied:
            if job.events or job.finished:
                try:
                    hook(job.events, job.finished)
                except Exception:
                    logger.exception("store commit hook failed")
        _hand_back(group)


class ReaderPool(_JobQueue, Generic[R]):
    """Reader threads, each with its own read connection (from `open_rows`), running read closures.

    Args:
        open_rows: a transaction object over a new read connection, called once per thread. It must not hold the
            store strongly (the threads hold it), or an unclosed store is never collected.
        threads: how many reads may run at once.
        name: the database, for messages.
    """

    def __init__(self, open_rows: Callable[[], R], threads: int, name: str) -> None:
        super().__init__(name)
        self._open_rows = open_rows
        self._threads = [
            threading.Thread(target=self._serve, name=f"agl-sqlite-reader-{i}", daemon=True) for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    async def run(self, body: Callable[[R], T]) -> T:
        """`body(rows)` in a read transaction (one snapshot) on a reader thread; its result or exception."""
        return await self._submit(body)

    def close(self) -> None:
        """Finish the reads already queued, stop the threads and close their connections."""
        self._stop(wait=None)

    def _serve(self) -> None:
        rows: Any = None
        db: sqlite3.Connection | None = None
        try:
            while True:
                job = self._queue.get()
                if job is None:
                    return
                try:
                    if rows is None:
                        rows = self._open_rows()
                        db = rows.conn()
                    assert db is not None
                    db.execute("BEGIN")
                    try:
                        job.result = job.context.run(job.body, rows)
                    finally:
                        db.execute("COMMIT")
                except BaseException as exc:
                    job.error = exc
                _hand_back([job])
        finally:
            if db is not None:
                db.close()


def stop_unclosed(pools: Sequence[_JobQueue | None], owner_pid: int, wait: float = UNCLOSED_WAIT) -> None:
    """Finalizer of a store garbage-collected (or still open at interpreter exit) without close(): stop its threads
    in order, after the jobs already queued, each closing its connection; waits up to `wait` seconds in all.

    Does nothing in a forked child (not `owner_pid`): the threads live in the parent only."""
    if os.getpid() != owner_pid:
        return
    deadline = time.monotonic() + wait
    for pool in pools:
        if pool is not None:
            pool._stop(max(0.0, deadline - time.monotonic()))
