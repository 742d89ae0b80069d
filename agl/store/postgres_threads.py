"""The PostgreSQL store's worker threads: they run transactions (synchronous closures) off the event loop.

A call puts its closure on one queue and awaits a future of its own loop; an idle worker takes it, runs it in the
caller's `contextvars` context and hands the result back with one `call_soon_threadsafe`. That is half the CPU of
`loop.run_in_executor` (which chains a `concurrent.futures.Future` to an asyncio one) on the store's most frequent
path, one hop per store call.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, TypeVar

__all__ = ["TransactionThreads"]

T = TypeVar("T")

_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", contextvars.Context, Callable[[], Any]]


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """On the caller's loop: its result or exception (nothing when the caller stopped waiting)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class TransactionThreads:
    """`size` worker threads running closures for callers on any event loop.

    Args:
        size: how many closures run at once (the store gives each thread at most one pooled connection).
        name: prefix of the threads' names.
        closed_message: the RuntimeError's text for calls after `close()`.
    """

    def __init__(self, size: int, name: str, closed_message: str) -> None:
        self._queue: SimpleQueue[_Job | None] = SimpleQueue()
        self._state = threading.Lock()
        self._open = True
        self._closed_message = closed_message
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(size)]
        for thread in self._threads:
            thread.start()

    async def run(self, fn: Callable[[], T]) -> T:
        """`fn()` on a worker thread, in a copy of the caller's context; its result or exception."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._state:
            if not self._open:
                raise RuntimeError(self._closed_message)
            self._queue.put((loop, future, contextvars.copy_context(), fn))
        return await future

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            loop, future, context, fn = job
            result: Any = None
            error: BaseException | None = None
            try:
                result = context.run(fn)
            except BaseException as exc:  # handed to the caller, whatever it is
                error = exc
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the caller's loop is closed: nobody is waiting
                pass
            del job, future, result, error  # drop references before blocking on the next job

    def close(self) -> None:
        """Run the closures already queued, then stop the threads (later calls raise RuntimeError)."""
        with self._state:
            if not self._open:
                return
            self._open = False
            for _ in self._threads:
                self._queue.put(None)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join()
