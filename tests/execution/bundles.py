"""Module-level bundles for the execution tests (module level so they pickle for `spawn`)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import Any

from agl.execution.events import ExecutionEvent
from agl.store.base import LightningStore


async def algorithm_enqueue_and_wait(store: LightningStore, event: ExecutionEvent) -> None:
    """Enqueue three rollouts and wait until all are finished."""
    ids = [(await store.enqueue_rollout(input={"i": i})).rollout_id for i in range(3)]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done = await store.wait_for_rollouts(rollout_ids=ids, timeout=0.05)
        if len(done) == len(ids):
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("rollouts not finished")


async def algorithm_returns(store: LightningStore, event: ExecutionEvent) -> None:
    """An algorithm with nothing to do."""
    await asyncio.sleep(0.05)


async def algorithm_short(store: LightningStore, event: ExecutionEvent) -> None:
    await asyncio.sleep(0.3)


async def algorithm_raises(store: LightningStore, event: ExecutionEvent) -> None:
    await asyncio.sleep(0.05)
    raise RuntimeError("algorithm boom")


async def algorithm_until_event(store: LightningStore, event: ExecutionEvent) -> None:
    """Runs until the stop event is set."""
    while not event.is_set():
        await asyncio.sleep(0.02)


async def algorithm_enqueue_one_then_wait_event(store: LightningStore, event: ExecutionEvent) -> None:
    await store.enqueue_rollout(input={"x": 1})
    while not event.is_set():
        await asyncio.sleep(0.02)


async def runner_claims(store: LightningStore, worker_id: int, event: ExecutionEvent) -> None:
    """Claim rollouts and mark them succeeded until the stop event."""
    while not event.is_set():
        claimed = await store.dequeue_rollout(worker_id=f"w{worker_id}")
        if claimed is None:
            await asyncio.sleep(0.01)
            continue
        await store.update_attempt(claimed.rollout_id, claimed.attempt.attempt_id, status="succeeded")


async def runner_cooperative(store: LightningStore, worker_id: int, event: ExecutionEvent) -> None:
    while not event.is_set():
        await asyncio.sleep(0.01)


async def runner_claims_then_hangs(store: LightningStore, worker_id: int, event: ExecutionEvent) -> None:
    """Claim one rollout and then block the process in synchronous code (ignores the stop event)."""
    while True:
        claimed = await store.dequeue_rollout(worker_id=f"w{worker_id}")
        if claimed is not None:
            break
        await asyncio.sleep(0.01)
    while True:
        time.sleep(0.05)


async def runner_ignores_event(store: LightningStore, worker_id: int, event: ExecutionEvent) -> None:
    """Never looks at the event; SIGINT ends it."""
    while True:
        await asyncio.sleep(0.05)


async def runner_ignores_sigint(store: LightningStore, worker_id: int, event: ExecutionEvent) -> None:
    """Ignores the event and SIGINT; SIGTERM ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        await asyncio.sleep(0.05)


async def runner_ignores_sigterm(store: LightningStore, worker_id: int, event: ExecutionEvent) -> None:
    """Ignores the event, SIGINT and SIGTERM; only SIGKILL ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        await asyncio.sleep(0.05)


async def runner_crashes(store: LightningStore, worker_id: int, event: ExecutionEvent) -> None:
    await asyncio.sleep(0.05)
    raise RuntimeError(f"runner {worker_id} boom")


async def runner_exits_hard(store: LightningStore, worker_id: int, event: ExecutionEvent) -> None:
    """Dies abruptly with exit code 3 (no clean-up)."""
    await asyncio.sleep(0.05)
    sys.stdout.flush()
    os._exit(3)


async def runner_crash_once_marker(store: LightningStore, worker_id: int, event: ExecutionEvent) -> None:
    """Dies the first time (a marker file in AGL_TEST_MARKER_DIR remembers), behaves after a restart."""
    marker = os.path.join(os.environ["AGL_TEST_MARKER_DIR"], f"crashed-{worker_id}")
    if not os.path.exists(marker):
        with open(marker, "w") as fh:
            fh.write(str(os.getpid()))
        os._exit(4)
    await runner_claims(store, worker_id, event)


async def runner_records_pid(store: LightningStore, worker_id: int, event: ExecutionEvent) -> None:
    """Records that it ran in which process, then waits for the event."""
    await store.update_worker(f"pid-{os.getpid()}", {"worker_id": worker_id})
    while not event.is_set():
        await asyncio.sleep(0.01)


def dummy(*args: Any) -> None:
    return None


async def runner_claims_one(store: LightningStore, worker_id: int, event: ExecutionEvent) -> None:
    """Claim one rollout, mark it succeeded, return (a runner with max_rollouts=1)."""
    while not event.is_set():
        claimed = await store.dequeue_rollout(worker_id=f"w{worker_id}")
        if claimed is None:
            await asyncio.sleep(0.01)
            continue
        await store.update_attempt(claimed.rollout_id, claimed.attempt.attempt_id, status="succeeded")
        return


async def algorithm_wait_until_claimed(store: LightningStore, event: ExecutionEvent) -> None:
    """Enqueue one rollout, return as soon as a runner has claimed it (so the runner is mid-rollout)."""
    rollout = await store.enqueue_rollout(input={"x": 1})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        current = await store.get_rollout_by_id(rollout.rollout_id)
        if current is not None and current.status in ("preparing", "running"):
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("never claimed")


async def algorithm_prints_then_waits(store: LightningStore, event: ExecutionEvent) -> None:
    """For the Ctrl+C test: says it started, then runs until the stop event."""
    print("ALGORITHM-STARTED", flush=True)
    while not event.is_set():
        await asyncio.sleep(0.02)


async def runner_claims_one_or_return(store: LightningStore, worker_id: int, event: ExecutionEvent) -> None:
    """Return at once (a runner with nothing to do)."""
    return None


async def runner_blocked_in_sync_agent(store: LightningStore, worker_id: int, event: ExecutionEvent) -> None:
    """A synchronous agent stuck in the default executor (a non-daemon thread): upstream's SIGINT could not end it."""
    await asyncio.to_thread(time.sleep, 60)


async def runner_blocks_its_loop(store: LightningStore, worker_id: int, event: ExecutionEvent) -> None:
    """Synchronous code on the event loop thread: neither the event nor a cancellation can reach it."""
    while True:
        time.sleep(0.05)


async def algorithm_prints_then_blocks_its_loop(store: LightningStore, event: ExecutionEvent) -> None:
    """For the Ctrl+C test: a synchronous algorithm that never yields to its loop."""
    print("ALGORITHM-STARTED", flush=True)
    while True:
        time.sleep(0.05)
