"""BodyDeadlines: one timer per loop cuts off calls that outlive their deadline, and leaves every other call alone."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import time

import pytest

from agl.store.http.deadlines import BodyDeadlines, DeadlinePassed


async def test_a_late_call_is_cut_off_between_the_deadline_and_one_tick_after() -> None:
    deadlines = BodyDeadlines(0.2, tick=0.05)
    start = time.perf_counter()
    with pytest.raises(DeadlinePassed):
        await deadlines.run(asyncio.sleep(10))
    assert 0.2 <= time.perf_counter() - start < 0.6
    if sys.version_info >= (3, 11):
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0  # the cancellation was taken back: the task goes on
    await asyncio.sleep(0.1)  # and it is not cancelled again later


async def test_calls_in_time_get_their_result_and_the_timer_stops() -> None:
    deadlines = BodyDeadlines(0.2, tick=0.05)

    async def quick(value: int) -> int:
        await asyncio.sleep(0.01)
        return value

    assert await asyncio.gather(*(deadlines.run(quick(i)) for i in range(50))) == list(range(50))
    await asyncio.sleep(0.1)
    assert deadlines._timer is None and not deadlines._deadlines


async def test_only_late_tasks_are_cut_off() -> None:
    deadlines = BodyDeadlines(0.15, tick=0.03)
    slow = asyncio.ensure_future(deadlines.run(asyncio.sleep(10)))
    fast = asyncio.ensure_future(deadlines.run(asyncio.sleep(0.05, "done")))
    assert await fast == "done"
    with pytest.raises(DeadlinePassed):
        await slow


async def test_another_cancellation_goes_through() -> None:
    deadlines = BodyDeadlines(5)
    task = asyncio.ensure_future(deadlines.run(asyncio.sleep(10)))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_the_deadline_must_be_positive() -> None:
    for bad in (0, -1, float("inf")):
        with pytest.raises(ValueError, match="seconds"):
            BodyDeadlines(bad)


def test_each_new_loop_and_thread_has_its_own_late_calls_cut_off() -> None:
    """The task is looked up on the loop seen last only from its thread while it runs: a new loop, in this thread or
    another, is found anew, and its late call (not some other task) is the one cut off."""
    deadlines = BodyDeadlines(0.1, tick=0.02)

    async def late() -> str:
        try:
            await deadlines.run(asyncio.sleep(10))
        except DeadlinePassed:
            return "cut off"
        return "not cut off"

    async def in_time() -> str:
        return await deadlines.run(asyncio.sleep(0.01, "in time"))

    assert asyncio.run(in_time()) == "in time"
    assert asyncio.run(late()) == "cut off"  # a second loop of this thread
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert pool.submit(asyncio.run, late()).result(5) == "cut off"  # another thread's loop
    assert asyncio.run(late()) == "cut off"
