"""`LightningStoreThreaded` serialises the calls of a store that is not thread-safe, from threads and coroutines."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from agl.store.base import LightningStore, LightningStoreCapabilities
from agl.store.threading import LightningStoreThreaded
from agl.types import UNSET, Rollout, RolloutStatus


class RacyStore(LightningStore):
    """Deliberately not thread-safe: `update_rollout` reads a counter, yields, then writes it back plus one.

    Two updates running at once both read the same value, so one of them is lost.
    """

    def __init__(self) -> None:
        self.count = 0
        self.max_concurrent = 0
        self._running = 0

    async def update_rollout(self, rollout_id: str, *args: Any, **kwargs: Any) -> Rollout:
        self._running += 1
        self.max_concurrent = max(self.max_concurrent, self._running)
        seen = self.count
        await asyncio.sleep(0.002)
        self.count = seen + 1
        self._running -= 1
        return Rollout(rollout_id=rollout_id, input=None, start_time=time.time(), status="queuing")

    async def wait_for_rollouts(self, *, rollout_ids: list[str], timeout: float | None = None) -> list[Rollout]:
        await asyncio.sleep(timeout or 0)
        return []


def _update(store: LightningStore, status: RolloutStatus = UNSET) -> Any:
    return store.update_rollout("ro-1", status=status)


def test_twenty_updates_from_twenty_threads_are_all_kept() -> None:
    racy = RacyStore()
    threaded = LightningStoreThreaded(racy)
    start = threading.Barrier(20)

    def worker() -> None:
        start.wait()
        asyncio.run(_update(threaded))

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    asyncio.run(threaded.close())
    assert racy.count == 20 and racy.max_concurrent == 1


async def test_twenty_concurrent_updates_on_one_loop_are_all_kept() -> None:
    racy = RacyStore()
    threaded = LightningStoreThreaded(racy)
    try:
        await asyncio.gather(*(_update(threaded) for _ in range(20)))
    finally:
        await threaded.close()
    assert racy.count == 20 and racy.max_concurrent == 1


async def test_a_long_wait_for_rollouts_does_not_hold_up_other_calls() -> None:
    threaded = LightningStoreThreaded(RacyStore())
    try:
        waiting = asyncio.ensure_future(threaded.wait_for_rollouts(rollout_ids=["ro-1"], timeout=2.0))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await _update(threaded)
        assert time.monotonic() - started < 1.0
        assert not waiting.done()
        waiting.cancel()
    finally:
        await threaded.close()


async def test_a_thread_safe_store_is_called_directly() -> None:
    class SafeStore(RacyStore):
        caller: threading.Thread | None = None

        @property
        def capabilities(self) -> LightningStoreCapabilities:
            return LightningStoreCapabilities(thread_safe=True, async_safe=True, zero_copy=False, otlp_traces=False)

        async def update_rollout(self, rollout_id: str, *args: Any, **kwargs: Any) -> Rollout:
            self.caller = threading.current_thread()
            return await super().update_rollout(rollout_id, *args, **kwargs)

    inner = SafeStore()
    threaded = LightningStoreThreaded(inner)
    await _update(threaded)
    assert inner.caller is threading.current_thread()  # no hop to a private loop thread
    await threaded.close()
