"""A `cs` run with two runner processes that the test kills with SIGKILL once the runners are at work.

`fork` / `spawn` / `forkserver` (the start method): a training with a real agent; the algorithm (in this process,
which also serves the store) runs four rollouts. `stuck`: runners that swallow cancellation, as a stuck agent would.
Then the algorithm prints `RUNNERS <pid> <pid>` and waits to be killed. `runner-main`: the other way round
(`main_process="runner"`): this process runs the one runner, and the algorithm process it starts serves the store,
runs four rollouts, prints `RUNNERS <its own pid>` (the process that must end) and waits;
`runner-main-forkserver`: the same, started through a fork server (so the algorithm process's parent in the process
tree is the fork server, which outlives this process).

Usage: python -m tests.execution.orphan_script {fork|spawn|forkserver|stuck|runner-main|runner-main-forkserver}
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sys
import time
from typing import Any

from agl.algorithm import Algorithm
from agl.execution import ClientServerExecutionStrategy, ExecutionEvent
from agl.store.base import LightningStore
from agl.store.memory import InMemoryLightningStore
from agl.trainer import Trainer
from tests.execution.agents import Doubler


def _announce_runners() -> None:
    if multiprocessing.parent_process() is not None:  # the algorithm is the child (main_process="runner")
        print(f"RUNNERS {os.getpid()}", flush=True)
        return
    print("RUNNERS " + " ".join(str(p.pid) for p in multiprocessing.active_children()), flush=True)


class RunThenWait(Algorithm):
    """Runs four rollouts, prints the runner pids, then waits for ever."""

    async def run(self, train_dataset: Any = None, val_dataset: Any = None) -> None:
        store = self.get_store()
        ids = [(await store.enqueue_rollout(input=i)).rollout_id for i in range(4)]
        while len(await store.wait_for_rollouts(rollout_ids=ids, timeout=1.0)) < len(ids):
            pass
        _announce_runners()
        await asyncio.Event().wait()


async def runner_swallows_cancellation(store: LightningStore, worker_id: int, event: ExecutionEvent) -> None:
    """Registers as a worker, then never stops: the stop event is ignored and cancellation swallowed."""
    await store.update_worker(f"stuck-{os.getpid()}", {})
    while True:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            pass


async def algorithm_waits_for_stuck_runners(store: LightningStore, event: ExecutionEvent) -> None:
    deadline = time.monotonic() + 60
    while len([w for w in await store.query_workers() if w.worker_id.startswith("stuck-")]) < 2:
        assert time.monotonic() < deadline, "the runners never registered"
        await asyncio.sleep(0.02)
    _announce_runners()
    await asyncio.Event().wait()


def main() -> int:
    mode = sys.argv[1]
    if mode.startswith("runner-main"):
        strategy = ClientServerExecutionStrategy(
            server_host="127.0.0.1",
            server_port=0,
            n_runners=1,
            main_process="runner",
            start_method="forkserver" if mode == "runner-main-forkserver" else None,
            metrics=False,
        )
        Trainer(strategy=strategy, algorithm=RunThenWait()).fit(Doubler())
        return 0
    strategy = ClientServerExecutionStrategy(
        server_host="127.0.0.1",
        server_port=0,
        n_runners=2,
        start_method="fork" if mode == "stuck" else mode,
        metrics=False,
    )
    if mode == "stuck":
        strategy.execute(algorithm_waits_for_stuck_runners, runner_swallows_cancellation, InMemoryLightningStore())
    else:
        Trainer(strategy=strategy, algorithm=RunThenWait()).fit(Doubler())
    return 0


if __name__ == "__main__":
    sys.exit(main())
