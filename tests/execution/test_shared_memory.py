"""SharedMemoryExecutionStrategy: threads, the stop event, grace/cancel/abandon, exceptions, Ctrl+C."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from agl.execution import ExecutionEvent, SharedMemoryExecutionStrategy
from agl.store.base import LightningStore
from agl.store.memory import InMemoryLightningStore
from agl.store.threading import LightningStoreThreaded
from tests.execution import bundles


def fast(**kwargs: object) -> SharedMemoryExecutionStrategy:
    options: dict[str, object] = {"join_timeout": 3.0, "graceful_delay": 0.2, "poll_interval": 0.01}
    options.update(kwargs)
    return SharedMemoryExecutionStrategy(**options)  # type: ignore[arg-type]


def test_main_algorithm_with_three_runner_threads_processes_all_rollouts() -> None:
    store = InMemoryLightningStore()
    seen: set[str] = set()

    async def runner(s: LightningStore, worker_id: int, event: ExecutionEvent) -> None:
        seen.add(threading.current_thread().name)
        await bundles.runner_claims(s, worker_id, event)

    started = time.monotonic()
    fast(n_runners=3, main_thread="algorithm").execute(bundles.algorithm_enqueue_and_wait, runner, store)
    assert time.monotonic() - started < 3
    assert seen == {"runner-0", "runner-1", "runner-2"}
    result = asyncio.run(store.query_rollouts(status_in=["succeeded"]))
    assert len(result) == 3


def test_managed_store_is_wrapped_and_unmanaged_is_passed_through() -> None:
    store = InMemoryLightningStore()
    got: list[LightningStore] = []

    async def algorithm(s: LightningStore, event: ExecutionEvent) -> None:
        got.append(s)

    async def runner(s: LightningStore, worker_id: int, event: ExecutionEvent) -> None:
        got.append(s)

    fast(managed_store=True).execute(algorithm, runner, store)
    assert all(isinstance(s, LightningStoreThreaded) for s in got) and got[0] is got[1]
    got.clear()
    fast(managed_store=False).execute(algorithm, runner, store)
    assert got == [store, store]


def test_main_runner_waits_for_the_algorithm_thread() -> None:
    events: list[str] = []

    async def algorithm(s: LightningStore, event: ExecutionEvent) -> None:
        await asyncio.sleep(0.3)
        events.append("algorithm-done")

    async def runner(s: LightningStore, worker_id: int, event: ExecutionEvent) -> None:
        assert threading.current_thread() is threading.main_thread()
        events.append("runner-done")

    fast(main_thread="runner").execute(algorithm, runner, InMemoryLightningStore())
    assert events == ["runner-done", "algorithm-done"]


def test_algorithm_end_sets_the_event_for_runners() -> None:
    stopped: list[int] = []

    async def runner(s: LightningStore, worker_id: int, event: ExecutionEvent) -> None:
        while not event.is_set():
            await asyncio.sleep(0.01)
        stopped.append(worker_id)

    started = time.monotonic()
    fast(n_runners=2, main_thread="algorithm").execute(bundles.algorithm_returns, runner, InMemoryLightningStore())
    assert sorted(stopped) == [0, 1]
    assert time.monotonic() - started < 1.0


def test_runner_thread_exception_sets_event_and_is_reraised() -> None:
    async def runner(s: LightningStore, worker_id: int, event: ExecutionEvent) -> None:
        raise KeyError("runner broke")

    started = time.monotonic()
    with pytest.raises(KeyError, match="runner broke"):
        fast(n_runners=2, main_thread="algorithm").execute(
            bundles.algorithm_until_event, runner, InMemoryLightningStore()
        )
    assert time.monotonic() - started < 2.0


def test_main_thread_algorithm_exception_is_reraised() -> None:
    with pytest.raises(RuntimeError, match="algorithm boom"):
        fast(n_runners=1, main_thread="algorithm").execute(
            bundles.algorithm_raises, bundles.runner_cooperative, InMemoryLightningStore()
        )


def test_runner_ignoring_the_event_is_cancelled_after_graceful_delay() -> None:
    cancelled: list[bool] = []

    async def runner(s: LightningStore, worker_id: int, event: ExecutionEvent) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    started = time.monotonic()
    fast(n_runners=1, main_thread="algorithm").execute(bundles.algorithm_returns, runner, InMemoryLightningStore())
    elapsed = time.monotonic() - started
    assert cancelled == [True]
    assert 0.2 <= elapsed < 1.5


def test_runner_ignoring_cancellation_is_abandoned(caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()

    async def runner(s: LightningStore, worker_id: int, event: ExecutionEvent) -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                continue  # swallows every cancellation

    started = time.monotonic()
    try:
        fast(n_runners=1, main_thread="algorithm").execute(bundles.algorithm_returns, runner, InMemoryLightningStore())
        elapsed = time.monotonic() - started
    finally:
        release.set()
    assert elapsed < 2.0
    assert "abandoning it" in caplog.text


def test_thread_not_ending_within_join_timeout_is_left_behind(caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()

    async def runner(s: LightningStore, worker_id: int, event: ExecutionEvent) -> None:
        release.wait(10)  # blocks its loop: neither the watch nor cancellation can reach it

    started = time.monotonic()
    try:
        fast(n_runners=1, main_thread="algorithm", join_timeout=0.3).execute(
            bundles.algorithm_returns, runner, InMemoryLightningStore()
        )
        elapsed = time.monotonic() - started
    finally:
        release.set()
    assert elapsed < 1.5
    assert "did not end within" in caplog.text


# -- what happens to queued rollouts when the algorithm returns ----------------------------------------------------


async def _enqueue_ten_and_return(s: LightningStore, event: ExecutionEvent) -> None:
    for i in range(10):
        await s.enqueue_rollout(input={"i": i})


async def _slow_runner(s: LightningStore, worker_id: int, event: ExecutionEvent) -> None:
    """Claims rollouts one by one, each taking 50 ms, until the stop event."""
    while not event.is_set():
        claimed = await s.dequeue_rollout(worker_id=f"w{worker_id}")
        if claimed is None:
            await asyncio.sleep(0.01)
            continue
        await asyncio.sleep(0.05)
        await s.update_attempt(claimed.rollout_id, claimed.attempt.attempt_id, status="succeeded")


def _succeeded(store: InMemoryLightningStore) -> int:
    return len(asyncio.run(store.query_rollouts(status_in=["succeeded"])))


def test_main_thread_algorithm_stops_runners_at_once_unless_asked_to_finish() -> None:
    store = InMemoryLightningStore()
    fast(n_runners=2, main_thread="algorithm").execute(_enqueue_ten_and_return, _slow_runner, store)
    assert _succeeded(store) < 10  # as upstream: the runners stop when the algorithm returns
    store = InMemoryLightningStore()
    fast(n_runners=2, main_thread="algorithm", finish_queued=True).execute(_enqueue_ten_and_return, _slow_runner, store)
    assert _succeeded(store) == 10


def test_finish_timeout_bounds_the_wait(caplog: pytest.LogCaptureFixture) -> None:
    store = InMemoryLightningStore()
    started = time.monotonic()
    fast(finish_timeout=0.2).execute(_enqueue_ten_and_return, _slow_runner, store)
    assert time.monotonic() - started < 2
    assert 1 <= _succeeded(store) < 10
    assert "finish_timeout" in caplog.text


def test_the_wait_ends_when_every_runner_has_returned() -> None:
    async def runner_takes_two(s: LightningStore, worker_id: int, event: ExecutionEvent) -> None:
        for _ in range(2):
            while (claimed := await s.dequeue_rollout()) is None:
                await asyncio.sleep(0.01)
            await s.update_attempt(claimed.rollout_id, claimed.attempt.attempt_id, status="succeeded")

    store = InMemoryLightningStore()
    started = time.monotonic()
    fast(n_runners=2, main_thread="algorithm", finish_queued=True).execute(
        _enqueue_ten_and_return, runner_takes_two, store
    )
    assert _succeeded(store) == 4
    assert time.monotonic() - started < 2


def test_finish_options_are_checked() -> None:
    with pytest.raises(ValueError, match="finish_timeout"):
        SharedMemoryExecutionStrategy(finish_timeout=-1)
