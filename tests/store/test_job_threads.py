"""The durable drivers' job threads: results, errors, context, concurrency and closing (no database needed)."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from agl.store.job_threads import JobThreads

_request: contextvars.ContextVar[str] = contextvars.ContextVar("_request", default="none")


def _threads(count: int, closed_message: str) -> JobThreads:
    threads = JobThreads(closed_message)
    threads.start([f"t-test-{i}" for i in range(count)])
    return threads


async def test_a_closure_runs_off_the_loop_thread_in_the_callers_context() -> None:
    threads = _threads(2, "closed")
    try:
        _request.set("key-1")
        seen = await threads.submit(lambda: (threading.current_thread().name, _request.get()))
        assert seen[0].startswith("t-test-") and seen[0] != threading.current_thread().name
        assert seen[1] == "key-1"
    finally:
        threads.close()


async def test_an_exception_reaches_the_caller_and_the_thread_keeps_working() -> None:
    threads = _threads(1, "closed")
    try:

        def fail() -> None:
            raise KeyError("boom")

        with pytest.raises(KeyError, match="boom"):
            await threads.submit(fail)
        assert await threads.submit(lambda: 41 + 1) == 42
    finally:
        threads.close()


async def test_size_closures_run_at_once() -> None:
    threads = _threads(3, "closed")
    together = threading.Barrier(3)
    try:
        # Each waits for the other two: this finishes only when three threads run them at the same time.
        results = await asyncio.gather(
            *(threads.submit(lambda i=i: (together.wait(timeout=10), i)[1]) for i in range(3))
        )
        assert sorted(results) == [0, 1, 2]
    finally:
        threads.close()


async def test_a_cancelled_caller_does_not_break_the_thread() -> None:
    threads = _threads(1, "closed")
    release = threading.Event()
    try:
        waiting = asyncio.ensure_future(threads.submit(lambda: release.wait(10)))
        await asyncio.sleep(0.05)
        waiting.cancel()
        release.set()
        assert await threads.submit(lambda: "next") == "next"
    finally:
        threads.close()


async def test_calls_after_close_are_refused_and_queued_ones_finish() -> None:
    threads = _threads(1, "the store is closed")
    first = asyncio.ensure_future(threads.submit(lambda: "queued before close"))
    await asyncio.sleep(0)  # queued
    await asyncio.to_thread(threads.close)
    assert await first == "queued before close"
    with pytest.raises(RuntimeError, match="the store is closed"):
        await threads.submit(lambda: None)
    threads.close()  # twice: nothing


async def test_callers_on_two_loops_each_get_their_own_result() -> None:
    threads = _threads(2, "closed")
    try:
        other = await asyncio.to_thread(asyncio.run, threads.submit(lambda: "from the other loop"))
        assert other == "from the other loop"
        assert await threads.submit(lambda: "from this loop") == "from this loop"
    finally:
        threads.close()
