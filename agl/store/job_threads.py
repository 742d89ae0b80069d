"""Threads that run synchronous closures for callers on any event loop: the durable drivers' way off the loop.

A caller puts its closure on one queue and awaits a future of its own loop; a thread takes it, runs it in the
caller's `contextvars` context and settles the future with one `call_soon_threadsafe` per loop. That is about half
the CPU of `loop.run_in_executor` (which chains a `concurrent.futures.Future` to an asyncio one) on the stores' most
frequent path. What a driver does around a closure (SQLite's group commit, a thread's own connection) is its own.

Between jobs a thread holds nothing of the store that made it (only its queue and what its driver gave it), so a
store dropped without `close()` can be garbage-collected and its finalizer can stop the threads.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Callable, Sequence
from queue import SimpleQueue
from typing import Any, TypeVar

__all__ = ["Job", "JobThreads", "hand_back", "hand_back_one"]

T = TypeVar("T")

_NO_CONTEXT = contextvars.Context()
"""What a job that has run keeps instead of its context (which may hold the store)."""


def _spent(*args: Any) -> Any:
    raise RuntimeError("this job has already run")


class Job:
    """One closure waiting to run on a thread, and what it gave."""

    __slots__ = ("body", "context", "error", "future", "loop", "result")

    def __init__(self, body: Callable[..., Any], loop: asyncio.AbstractEventLoop) -> None:
        self.body = body
        self.context = contextvars.copy_context()
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()
        self.result: Any = None
        self.error: BaseException | None = None


def _settle_one(job: Job) -> None:
    """On the caller's loop: hand the job's result or exception to its caller (if still waiting)."""
    future = job.future
    if not future.done():  # done: the caller was cancelled (a write itself stands)
        if job.error is not None:
            future.set_exception(job.error)
        else:
            future.set_result(job.result)


def _settle(jobs: list[Job]) -> None:
    for job in jobs:
        _settle_one(job)


def hand_back_one(job: Job) -> None:
    """Settle `job` on its caller's loop.

    It lets go of its closure and context first: they may hold the store, and the thread that ran the job may
    still hold the job when it waits for the next one, which would keep a store dropped meanwhile alive.
    """
    job.body, job.context = _spent, _NO_CONTEXT
    try:
        job.loop.call_soon_threadsafe(_settle_one, job)
    except RuntimeError:  # the caller's loop is closed: nobody is waiting
        pass


def hand_back(jobs: list[Job]) -> None:
    """Settle `jobs` on their loops, one wake-up per loop (each job let go of as `hand_back_one` says)."""
    if len(jobs) == 1:
        hand_back_one(jobs[0])
        return
    by_loop: dict[asyncio.AbstractEventLoop, list[Job]] = {}
    for job in jobs:
        job.body, job.context = _spent, _NO_CONTEXT
        by_loop.setdefault(job.loop, []).append(job)
    for loop, group in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, group)
        except RuntimeError:
            pass


class JobThreads:
    """A queue of closures and the threads that run them, closed once.

    On its own it runs each closure as it comes, with no argument; a driver that needs more around a closure (a
    connection of its thread, a transaction, several closures in one commit) overrides `_serve`.

    Args:
        closed_message: the RuntimeError's text for calls after `stop()` or `close()`.
    """

    def __init__(self, closed_message: str) -> None:
        self.closed_message = closed_message
        self.queue: SimpleQueue[Job | None] = SimpleQueue()
        """The jobs in the order they came; one None per thread tells it to stop."""
        self._state = threading.Lock()
        self._open = True
        self._threads: list[threading.Thread] = []

    def start(self, names: Sequence[str]) -> None:
        """Start one thread per name, each running `_serve`."""
        threads = [threading.Thread(target=self._serve, name=name, daemon=True) for name in names]
        self._threads.extend(threads)
        for thread in threads:
            thread.start()

    async def submit(self, body: Callable[..., T]) -> T:
        """What a thread's run of `body` gives: its result, or its exception raised here."""
        job = Job(body, asyncio.get_running_loop())
        with self._state:
            if not self._open:
                raise RuntimeError(self.closed_message)
            self.queue.put(job)
        result: T = await job.future
        return result

    def queued(self) -> int:
        """How many jobs wait for a thread (roughly: the count may change meanwhile)."""
        return self.queue.qsize()

    def stop(self, wait: float | None) -> None:
        """Take no more jobs; each thread ends after the jobs queued before it. Waits up to `wait` seconds (None:
        without limit) for them, never for the calling thread itself. A second call returns at once."""
        with self._state:
            if not self._open:
                return
            self._open = False
            for _ in self._threads:
                self.queue.put(None)
        deadline = None if wait is None else time.monotonic() + wait
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        """Run the closures already queued, then stop the threads (later calls raise RuntimeError)."""
        self.stop(wait=None)

    def serve_each(self, call: Callable[[Callable[..., Any]], Any] | None = None) -> None:
        """On a thread: run the jobs one at a time, each in its caller's context as `call(body)` (None: `body()`),
        handing each result or exception back, until told to stop."""
        get = self.queue.get
        while (job := get()) is not None:
            try:
                job.result = job.context.run(job.body) if call is None else job.context.run(call, job.body)
            except BaseException as exc:  # handed to the caller, whatever it is
                job.error = exc
            hand_back_one(job)
            del job  # hold nothing of the last caller while waiting for the next job

    def _serve(self) -> None:
        self.serve_each()
