"""The PostgreSQL store's transaction threads: results, errors, context and closing (no database needed)."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from agl.store.postgres_threads import TransactionThreads

_request: contextvars.ContextVar[str] = contextvars.ContextVar("_request", default="none")


async def test_a_closure_runs_off_the_loop_thread_in_the_callers_context() -> None:
    threads = TransactionThreads(2, "t-test", "closed")
    try:
        _request.set("key-1")
        seen = await threads.run(lambda: (threading.current_thread().name, _request.get()))
        assert seen[0].startswith("t-test-") and seen[0] != threading.current_thread().name
        assert seen[1] == "key-1"
    finally:
        threads.close()


async def test_an_exception_reaches_the_caller_and_the_thread_keeps_working() -> None:
    threads = TransactionThreads(1, "t-test", "closed")
    try:

        def fail() -> None:
            raise KeyError("boom")

        with pytest.raises(KeyError, match="boom"):
            await threads.run(fail)
        assert await threads.run(lambda: 41 + 1) == 42
    finally:
        threads.close()


async def test_size_closures_run_at_once() -> None:
    threads = TransactionThreads(3, "t-test", "closed")
    together = threading.Barrier(3)
    try:
        # Each waits for the other two: this finishes only when three threads run them at the same time.
        results = await asyncio.gather(*(threads.run(lambda i=i: (together.wait(timeout=10), i)[1]) for i in range(3)))
        assert sorted(results) == [0, 1, 2]
    finally:
        threads.close()


async def test_a_cancelled_caller_does_not_break_the_thread() -> None:
    threads = TransactionThreads(1, "t-test", "closed")
    release = threading.Event()
    try:
        waiting = asyncio.ensure_future(threads.run(lambda: release.wait(10)))
        await asyncio.sleep(0.05)
        waiting.cancel()
        release.set()
        assert await threads.run(lambda: "next") == "next"
    finally:
        threads.close()


async def test_calls_after_close_are_refused_and_queued_ones_finish() -> None:
    threads = TransactionThreads(1, "t-test", "the store is closed")
    first = asyncio.ensure_future(threads.run(lambda: "queued before close"))
    await asyncio.sleep(0)  # queued
    await asyncio.to_thread(threads.close)
    assert await first == "queued before close"
    with pytest.raises(RuntimeError, match="the store is closed"):
        await threads.run(lambda: None)
    threads.close()  # twice: nothing
