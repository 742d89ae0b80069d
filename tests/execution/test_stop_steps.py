"""The four-step stop with real child processes: event → SIGINT → SIGTERM → SIGKILL, each bounded."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import re
import time

import pytest

from agl.execution import ClientServerExecutionStrategy, MultiprocessingEvent
from agl.execution.supervisor import stop_processes
from agl.store.memory import InMemoryLightningStore
from tests.execution import bundles

GRACE = 0.3
TERM = 0.3


def cs(**kwargs: object) -> ClientServerExecutionStrategy:
    options: dict[str, object] = {
        "server_host": "127.0.0.1",
        "server_port": 0,
        "graceful_timeout": GRACE,
        "terminate_timeout": TERM,
    }
    options.update(kwargs)
    return ClientServerExecutionStrategy(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("runner", "step", "exitcode", "min_elapsed"),
    [
        (bundles.runner_ignores_event, "SIGINT", 130, GRACE),
        (bundles.runner_blocked_in_sync_agent, "SIGINT", 130, GRACE),
        (bundles.runner_blocks_its_loop, "SIGINT", 130, GRACE),
        (bundles.runner_ignores_sigint, "SIGTERM", -15, GRACE + TERM),
        (bundles.runner_ignores_sigterm, "SIGKILL", -9, GRACE + 2 * TERM),
    ],
)
def test_normal_end_escalates_stuck_runners_and_warns_instead_of_raising(
    caplog: pytest.LogCaptureFixture, runner: object, step: str, exitcode: int, min_elapsed: float
) -> None:
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        cs(n_runners=1).execute(bundles.algorithm_short, runner, InMemoryLightningStore())  # type: ignore[arg-type]
    elapsed = time.monotonic() - started
    stop_time = elapsed - 0.3  # the algorithm works for 0.3 s
    assert min_elapsed - 0.05 <= stop_time < min_elapsed + TERM + 1.0, elapsed
    assert re.search(rf"runner-0 \(pid \d+, stopped by {step}, exitcode={exitcode}\)", caplog.text), caplog.text


def test_cooperative_runner_is_not_escalated(caplog: pytest.LogCaptureFixture) -> None:
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        cs(n_runners=2, graceful_timeout=5.0).execute(
            bundles.algorithm_returns, bundles.runner_cooperative, InMemoryLightningStore()
        )
    assert time.monotonic() - started < 1.5
    assert "stopped by" not in caplog.text


def test_warning_lists_the_interrupted_rollouts(caplog: pytest.LogCaptureFixture) -> None:
    store = InMemoryLightningStore()
    with caplog.at_level(logging.WARNING):
        cs(n_runners=1).execute(bundles.algorithm_wait_until_claimed, bundles.runner_claims_then_hangs, store)
    rollouts = asyncio.run(store.query_rollouts())
    assert len(rollouts) == 1
    rollout_id = rollouts.items[0].rollout_id
    assert re.search(rf"interrupted rollouts: {rollout_id}", caplog.text), caplog.text


def test_stop_processes_reports_the_step_per_process() -> None:
    ctx = multiprocessing.get_context("fork")
    event = MultiprocessingEvent(ctx)
    store = InMemoryLightningStore()
    processes = []
    for bundle in (bundles.runner_cooperative, bundles.runner_ignores_event, bundles.runner_ignores_sigint,
                   bundles.runner_ignores_sigterm):  # fmt: skip
        process = ctx.Process(target=_run_bundle_in_child, args=(bundle, store, event), name=bundle.__name__)
        process.start()
        processes.append(process)
    try:
        time.sleep(0.3)  # let each child install its signal handlers
        started = time.monotonic()
        steps = stop_processes(processes, event, 0.3, 0.3)
        elapsed = time.monotonic() - started
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
            process.join(5)
    assert [steps[p.pid] for p in processes if p.pid is not None] == ["event", "SIGINT", "SIGTERM", "SIGKILL"]
    assert [p.exitcode for p in processes] == [0, 1, -15, -9]
    assert 0.3 + 2 * 0.3 - 0.05 <= elapsed < 0.3 + 3 * 0.3 + 1.0


def _run_bundle_in_child(bundle: object, store: InMemoryLightningStore, event: MultiprocessingEvent) -> None:
    asyncio.run(bundle(store, 0, event))  # type: ignore[operator]
