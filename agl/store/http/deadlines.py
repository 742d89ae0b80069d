"""Deadlines for the tasks reading request bodies, kept by one timer per event loop instead of one per request.

`asyncio.timeout` around every body read cost about a tenth of the store app's CPU per call (a timer handle made,
pushed on the loop's heap and cancelled per request); almost every body has arrived with its head, so the deadline
almost never fires. Here a request only notes its deadline in a dict, and one check per `tick` cancels the tasks
whose deadline passed: a late body is cut off between `seconds` and `seconds + tick` after its head.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["BodyDeadlines", "DeadlinePassed"]

T = TypeVar("T")


class DeadlinePassed(Exception):
    """The awaited call did not finish before its deadline (it was cancelled)."""


class BodyDeadlines:
    """Runs awaitables under a shared deadline of `seconds` each, checked every `tick` seconds on the running loop."""

    def __init__(self, seconds: float, tick: float | None = None) -> None:
        if not 0 < seconds < float("inf"):
            raise ValueError(f"seconds must be positive and finite, got {seconds!r}")
        self.seconds = seconds
        self.tick = tick if tick is not None else min(1.0, seconds / 4)
        self._deadlines: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0

    async def run(self, call: Awaitable[T]) -> T:
        """`await call` from the current task; `DeadlinePassed` if it takes longer than `seconds` (+ up to a tick)."""
        # The task is looked up on the loop it ran on last time, from the same thread: that loop, if it is running,
        # is this thread's running loop. `asyncio.current_task()` would ask for the running loop, which costs a
        # getpid(2) system call per request on Python 3.11.
        loop, thread = self._loop, threading.get_ident()
        task = asyncio.current_task(loop) if loop is not None and thread == self._thread else None
        if task is None or loop is None:
            task = asyncio.current_task()
            if task is None:  # pragma: no cover - a coroutine always runs in a task under asyncio
                return await call
            loop = task.get_loop()
            if loop is not self._loop:  # served on a new loop (a restart): the old one's timer and tasks are gone
                self._loop, self._timer = loop, None
                self._deadlines.clear()
                self._expired.clear()
            self._thread = thread
        self._deadlines[task] = loop.time() + self.seconds
        if self._timer is None:
            self._timer = loop.call_later(self.tick, self._check, loop)
        try:
            return await call
        except asyncio.CancelledError:
            if task not in self._expired:
                raise
            self._expired.discard(task)
            uncancel = getattr(task, "uncancel", None)  # Python 3.11+: this cancellation is handled here
            if uncancel is not None:
                uncancel()
            raise DeadlinePassed from None
        finally:
            self._deadlines.pop(task, None)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:
            return
        self._timer = None
        now = loop.time()
        for task, deadline in list(self._deadlines.items()):
            if deadline <= now and task not in self._expired:
                self._expired.add(task)
                task.cancel()
        if self._deadlines:
            self._timer = loop.call_later(self.tick, self._check, loop)
