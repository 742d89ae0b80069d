"""Run one bundle on a private event loop, with a bounded clean-up (internal helper of the strategies).

`asyncio.run` waits without limit for tasks that ignore cancellation and for the default executor's threads (a
synchronous agent blocked in `asyncio.to_thread`), which is how a stuck runner turns a normal stop into a hang.
`run_bundle` bounds both waits and leaves what does not finish behind, with a log line that says so.
"""

from __future__ import annotations

import _thread
import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from agl.event_loops import new_event_loop
from agl.execution.events import ExecutionEvent

__all__ = ["StopWatch", "run_bundle"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class StopWatch:
    """How a bundle reacts to the stop event: after `grace` seconds it is cancelled, `grace` later abandoned.

    `poll_interval` is how often the event is checked (the event may live in another process, so it is polled).
    `grace=None` means never cancel: the bundle decides itself when to return.
    """

    def __init__(self, event: ExecutionEvent, grace: float | None, poll_interval: float = 0.05) -> None:
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval!r}")
        self.event = event
        self.grace = grace
        self.poll_interval = poll_interval


async def _supervise(coro: Coroutine[Any, Any, T], watch: StopWatch | None, name: str) -> tuple[bool, T | None]:
    """Run `coro`; returns (finished, result). `finished` is False when the task was abandoned."""
    task: asyncio.Task[T] = asyncio.ensure_future(coro)
    if watch is None or watch.grace is None:
        return True, await task
    try:
        while not task.done():
            if watch.event.is_set():
                break
            await asyncio.wait({task}, timeout=watch.poll_interval)
        if not task.done():
            await asyncio.wait({task}, timeout=watch.grace)
        if not task.done():
            logger.warning("%s did not stop within %.3gs of the stop event; cancelling it", name, watch.grace)
            task.cancel()
            await asyncio.wait({task}, timeout=watch.grace)
        if not task.done():
            logger.error("%s ignored cancellation for %.3gs; abandoning it", name, watch.grace)
            return False, None
    except asyncio.CancelledError:
        task.cancel()
        raise
    if task.cancelled():
        # Cancelled by the watch above: a stop, not an error of the bundle.
        return True, None
    return True, task.result()


def _close_loop(loop: asyncio.AbstractEventLoop, timeout: float, name: str) -> bool:
    """Cancel what is left on `loop`, wait up to `timeout`, close it; False if tasks had to be left behind."""
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.wait(pending, timeout=max(timeout, 0.0)))
    stuck = [task for task in pending if not task.done()]
    if stuck:
        logger.error("%s: %d task(s) ignored cancellation; leaving them behind", name, len(stuck))
        return False
    try:
        loop.run_until_complete(loop.shutdown_asyncgens())
    except Exception:  # pragma: no cover - a broken async generator must not hide the bundle's outcome
        logger.debug("%s: error shutting down async generators", name, exc_info=True)
    # close() shuts the default executor down without waiting for its threads.
    loop.close()
    return True


def run_bundle(
    make_coro: Callable[[], Coroutine[Any, Any, T]],
    *,
    name: str,
    watch: StopWatch | None = None,
    cleanup_timeout: float = 5.0,
    force_interrupt_after: float = 0.5,
    fast_loop: bool = False,
) -> T | None:
    """Run the coroutine made by `make_coro` on a new event loop in this thread and return its result.

    In the main thread, the first Ctrl+C cancels the bundle and `KeyboardInterrupt` is raised once it has
    unwound (if the loop is blocked by synchronous code, it is raised there after `force_interrupt_after`
    seconds); a second Ctrl+C raises at once. The bundle's own exception propagates. Returns None if the bundle
    was cancelled or abandoned by `watch`. `fast_loop` runs it on uvloop when that is installed (a runner process
    talking to the store over HTTP spends most of its time in the event loop's I/O).
    """
    loop = new_event_loop(fast_loop)
    main_task: asyncio.Task[tuple[bool, T | None]] | None = None
    interrupted = False
    previous_handler: Any = None
    in_main_thread = threading.current_thread() is threading.main_thread()

    def on_sigint(signum: int, frame: Any) -> None:
        nonlocal interrupted
        if main_task is None or main_task.done() or interrupted:
            raise KeyboardInterrupt()
        interrupted = True
        loop.call_soon_threadsafe(main_task.cancel)
        # A bundle blocked in synchronous code on the loop thread never lets the cancellation run: if the loop does
        # not answer within `force_interrupt_after`, the interrupt is raised right where the bundle is stuck.
        answered = threading.Event()
        loop.call_soon_threadsafe(answered.set)
        task = main_task

        def force() -> None:
            if not answered.wait(force_interrupt_after) and not task.done():
                _thread.interrupt_main()

        threading.Thread(target=force, name="agl-sigint-watch", daemon=True).start()

    if in_main_thread and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous_handler = signal.signal(signal.SIGINT, on_sigint)
    try:
        asyncio.set_event_loop(loop)
        main_task = loop.create_task(_supervise(make_coro(), watch, name))
        try:
            finished, result = loop.run_until_complete(main_task)
        except asyncio.CancelledError:
            if interrupted:
                raise KeyboardInterrupt() from None
            raise
        if interrupted:
            raise KeyboardInterrupt()
        if not finished:
            cleanup_timeout = 0.0
        return result
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
        try:
            _close_loop(loop, cleanup_timeout, name)
        finally:
            asyncio.set_event_loop(None)
