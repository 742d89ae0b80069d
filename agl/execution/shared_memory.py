"""`SharedMemoryExecutionStrategy` (alias `shm`): the algorithm and the runners as threads of one process."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from agl.execution._loop import StopWatch, run_bundle
from agl.execution.base import AlgorithmBundle, ExecutionStrategy, RunnerBundle, resolve_managed_store_flag
from agl.execution.events import ThreadingEvent

if TYPE_CHECKING:
    from agl.store.base import LightningStore
    from agl.types.core import RolloutStatus

__all__ = ["SharedMemoryExecutionStrategy"]

logger = logging.getLogger(__name__)


class SharedMemoryExecutionStrategy(ExecutionStrategy):
    """Run the algorithm and `n_runners` runners as threads of this process, each on its own event loop.

    Args:
        n_runners: runner threads.
        main_thread: which bundle runs in the calling thread: `"runner"` (requires `n_runners == 1`; the algorithm
            runs in a thread and is waited for when the runner returns) or `"algorithm"` (the runners run in
            threads).
        join_timeout: seconds to wait for each thread to end once the run is over.
        graceful_delay: after the stop event, seconds a bundle gets to return by itself before it is cancelled,
            and again before a bundle that ignores cancellation is abandoned.
        poll_interval: how often each thread checks the stop event.
        managed_store: wrap the store in `LightningStoreThreaded` (None: `AGL_MANAGED_STORE`, default true).
        finish_queued: when the algorithm returns, let the runners first finish every rollout still queued,
            requeued or running in the store, then stop them. None (default) does what Agent Lightning 0.3 does:
            finish them with `main_thread="runner"` (where its runner keeps taking work), stop the runners at once
            with `main_thread="algorithm"`. The wait also ends when every runner has returned, when a bundle fails
            or on Ctrl+C.
        finish_timeout: bound in seconds on that wait (None: no bound; rollout timeouts in the store still apply).
    """

    alias: ClassVar[str | None] = "shm"

    def __init__(
        self,
        n_runners: int = 1,
        main_thread: Literal["algorithm", "runner"] = "runner",
        join_timeout: float = 15.0,
        graceful_delay: float = 5.0,
        poll_interval: float = 0.05,
        managed_store: bool | None = None,
        finish_queued: bool | None = None,
        finish_timeout: float | None = None,
    ) -> None:
        if not isinstance(n_runners, int) or isinstance(n_runners, bool) or n_runners < 1:
            raise ValueError(f"n_runners must be a positive integer, got {n_runners!r}")
        if main_thread not in ("algorithm", "runner"):
            raise ValueError(f"main_thread must be 'algorithm' or 'runner', got {main_thread!r}")
        if main_thread == "runner" and n_runners != 1:
            raise ValueError("main_thread='runner' requires n_runners=1; use main_thread='algorithm' for more runners")
        for label, value in (("join_timeout", join_timeout), ("graceful_delay", graceful_delay)):
            if value < 0:
                raise ValueError(f"{label} must be non-negative, got {value!r}")
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval!r}")
        if finish_timeout is not None and not finish_timeout >= 0:
            raise ValueError(f"finish_timeout must be None or a non-negative number of seconds, got {finish_timeout!r}")
        self.n_runners = n_runners
        self.main_thread: Literal["algorithm", "runner"] = main_thread
        self.join_timeout = float(join_timeout)
        self.graceful_delay = float(graceful_delay)
        self.poll_interval = float(poll_interval)
        self.managed_store = resolve_managed_store_flag(managed_store)
        self.finish_queued = main_thread == "runner" if finish_queued is None else bool(finish_queued)
        self.finish_timeout = None if finish_timeout is None else float(finish_timeout)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_runners={self.n_runners}, main_thread={self.main_thread!r}, "
            f"join_timeout={self.join_timeout}, graceful_delay={self.graceful_delay}, "
            f"poll_interval={self.poll_interval}, managed_store={self.managed_store}, "
            f"finish_queued={self.finish_queued}, finish_timeout={self.finish_timeout})"
        )

    def execute(self, algorithm: AlgorithmBundle, runner: RunnerBundle, store: LightningStore) -> None:
        """Run the bundles as threads; return when the main-thread bundle is done and the others have stopped.

        The first exception of any bundle sets the stop event and is re-raised once the threads are joined.
        Ctrl+C sets the stop event and is not re-raised.
        """
        stop_evt = ThreadingEvent()
        if self.managed_store:
            from agl.store.threading import LightningStoreThreaded

            shared: LightningStore = LightningStoreThreaded(store)
        else:
            shared = store
        errors: queue.SimpleQueue[tuple[str, BaseException]] = queue.SimpleQueue()
        watch = StopWatch(stop_evt, self.graceful_delay, self.poll_interval)
        cleanup = max(self.graceful_delay, 0.1)

        def run_guarded(name: str, make: Callable[[], Coroutine[Any, Any, None]], watched: bool) -> None:
            try:
                run_bundle(make, name=name, watch=watch if watched else None, cleanup_timeout=cleanup)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                logger.error("%s failed: %r", name, exc)
                errors.put((name, exc))
                stop_evt.set()

        live_runners = _LiveCount(self.n_runners)

        async def algorithm_then_stop() -> None:
            try:
                await algorithm(shared, stop_evt)
                if self.finish_queued:
                    await _finish_queued_rollouts(
                        shared, stop_evt, live_runners, self.poll_interval, self.finish_timeout
                    )
            finally:
                # The run ends with the algorithm, whichever bundle holds the main thread.
                stop_evt.set()

        def algorithm_coro() -> Coroutine[Any, Any, None]:
            return algorithm_then_stop()

        async def counted_runner(worker_id: int) -> None:
            try:
                await runner(shared, worker_id, stop_evt)
            finally:
                live_runners.decrement()

        def runner_coro(worker_id: int) -> Callable[[], Coroutine[Any, Any, None]]:
            return lambda: counted_runner(worker_id)

        threads: list[threading.Thread] = []

        def start_thread(name: str, make: Callable[[], Coroutine[Any, Any, None]]) -> threading.Thread:
            thread = threading.Thread(target=run_guarded, args=(name, make, True), name=name, daemon=True)
            thread.start()
            threads.append(thread)
            return thread

        try:
            if self.main_thread == "algorithm":
                for worker_id in range(self.n_runners):
                    start_thread(f"runner-{worker_id}", runner_coro(worker_id))
                try:
                    # The algorithm is the main bundle: it is never cancelled by the watch, only by Ctrl+C.
                    run_guarded("algorithm", algorithm_coro, False)
                finally:
                    stop_evt.set()
            else:
                algorithm_thread = start_thread("algorithm", algorithm_coro)
                run_guarded("runner-0", runner_coro(0), False)
                # The runner is done (it ran out of work or was stopped): the algorithm decides when the run ends.
                while algorithm_thread.is_alive():
                    algorithm_thread.join(0.1)
        except KeyboardInterrupt:
            logger.warning("interrupted: stopping the algorithm and the runners")
            stop_evt.set()
        finally:
            stop_evt.set()
            self._join(threads)
        if not errors.empty():
            _, first = errors.get()
            raise first

    def _join(self, threads: list[threading.Thread]) -> None:
        deadline = time.monotonic() + self.join_timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for thread in threads:
            if thread.is_alive():
                logger.error(
                    "thread %s did not end within %.3gs; leaving it behind (daemon)", thread.name, self.join_timeout
                )


_UNFINISHED: list[RolloutStatus] = ["queuing", "requeuing", "preparing", "running"]


class _LiveCount:
    """How many runner bundles have not returned yet (shared by the threads)."""

    def __init__(self, count: int) -> None:
        self._count = count
        self._lock = threading.Lock()

    def decrement(self) -> None:
        with self._lock:
            self._count -= 1

    def __bool__(self) -> bool:
        with self._lock:
            return self._count > 0


async def _finish_queued_rollouts(
    store: LightningStore, stop_evt: ThreadingEvent, live_runners: _LiveCount, poll: float, timeout: float | None
) -> None:
    """Return once no rollout is queued, requeued or running, no runner is left, the stop event is set, or later
    than `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    announced = False
    while not stop_evt.is_set() and live_runners:
        pending = await store.query_rollouts(status_in=_UNFINISHED, limit=1)
        if pending.total == 0:
            return
        if not announced:
            logger.info("the algorithm returned; the runners finish the %d unfinished rollout(s) first", pending.total)
            announced = True
        if deadline is not None and loop.time() >= deadline:
            logger.warning(
                "stopping the runners with %d rollout(s) unfinished: finish_timeout (%.3gs) elapsed",
                pending.total,
                timeout,
            )
            return
        await asyncio.sleep(poll)
