"""Module-level agents and algorithms for the strategy suite (module level so Ray and `spawn` can pickle them)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

from agl.algorithm import Algorithm, FunctionalAlgorithm, algo
from agl.execution.events import ExecutionEvent
from agl.litagent import LitAgent
from agl.store.base import LightningStore
from agl.types import Rollout


class Doubler(LitAgent[int]):
    """Reward = twice the task; task 13 raises (an agent error, which must fail that rollout only)."""

    def rollout(self, task: int, resources: Any, rollout: Rollout) -> float:
        if task == 13:
            raise ValueError("the agent cannot do 13")
        return float(task * 2)


async def _fail(store: Any) -> None:
    await asyncio.sleep(0.05)
    raise RuntimeError("algorithm boom")


def failing_algorithm() -> FunctionalAlgorithm:
    """A fresh `@algo` algorithm that raises (fresh: an algorithm remembers the trainer of its last run)."""
    return algo(_fail)


async def enqueue_ten_and_return(store: LightningStore, event: ExecutionEvent) -> None:
    for i in range(10):
        await store.enqueue_rollout(input={"i": i})


async def slow_runner(store: LightningStore, worker_id: int, event: ExecutionEvent) -> None:
    """Claims rollouts one by one, each taking `input["sleep"]` seconds (default 0.1), until the stop event."""
    while not event.is_set():
        claimed = await store.dequeue_rollout(worker_id=f"w{worker_id}")
        if claimed is None:
            await asyncio.sleep(0.01)
            continue
        await asyncio.sleep(float(claimed.input.get("sleep", 0.1)))
        await store.update_attempt(claimed.rollout_id, claimed.attempt.attempt_id, status="succeeded")


async def algorithm_returns_once_claimed(store: LightningStore, event: ExecutionEvent) -> None:
    """Enqueue one rollout; return as soon as a runner holds it (so it is mid-rollout when the run stops)."""
    rollout = await store.enqueue_rollout(input={"sleep": 0.5})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        current = await store.get_rollout_by_id(rollout.rollout_id)
        if current is not None and current.status in ("preparing", "running"):
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("never claimed")


async def runner_registers_identity(store: LightningStore, worker_id: int, event: ExecutionEvent) -> None:
    """Records which process and thread it runs in, then waits for the stop event."""
    await store.update_worker(f"ident-{os.getpid()}-{threading.get_ident()}", {"worker_id": worker_id})
    while not event.is_set():
        await asyncio.sleep(0.01)


async def algorithm_waits_for_two_identities(store: LightningStore, event: ExecutionEvent) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        workers = [w for w in await store.query_workers() if w.worker_id.startswith("ident-")]
        if len(workers) >= 2:
            await asyncio.sleep(0.3)  # a third runner, if one were started, would show up by now
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("fewer than two runners registered")


class DiesOnceAgent(LitAgent[dict]):
    """Reward = 2 × task["i"]; the process running task 3 dies (os._exit) the first time, mid-rollout.

    A marker file in `task["marker_dir"]` remembers that it died, so the retried rollout succeeds.
    """

    def rollout(self, task: dict, resources: Any, rollout: Rollout) -> float:
        marker = os.path.join(task["marker_dir"], f"died-{task['i']}")
        if task["i"] == 3 and not os.path.exists(marker):
            with open(marker, "w") as fh:
                fh.write(str(os.getpid()))
            os._exit(1)
        return float(task["i"] * 2)


class EnqueueAndWait(Algorithm):
    """Enqueues `n` rollouts (tasks `{"i": i, "marker_dir": ...}`) with a retry config and waits for all of them."""

    def __init__(self, n: int, marker_dir: str, timeout: float = 90.0) -> None:
        super().__init__()
        self.n, self.marker_dir, self.timeout = n, marker_dir, timeout

    async def run(self, train_dataset: Any = None, val_dataset: Any = None) -> None:
        from agl.types import RolloutConfig

        store = self.get_store()
        config = RolloutConfig(unresponsive_seconds=3.0, max_attempts=3, retry_condition=["unresponsive"])
        ids = [
            (await store.enqueue_rollout(input={"i": i, "marker_dir": self.marker_dir}, config=config)).rollout_id
            for i in range(self.n)
        ]
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            done = await store.wait_for_rollouts(rollout_ids=ids, timeout=0.2)
            if len(done) == len(ids):
                return
        raise TimeoutError("not every rollout finished")


async def runner_writes_pid_then_waits(store: LightningStore, worker_id: int, event: ExecutionEvent) -> None:
    """Writes its pid into `$AGL_TEST_PID_DIR/runner-<id>` and waits for the stop event."""
    path = os.path.join(os.environ["AGL_TEST_PID_DIR"], f"runner-{worker_id}")
    with open(path, "w") as fh:
        fh.write(str(os.getpid()))
    while not event.is_set():
        await asyncio.sleep(0.05)
