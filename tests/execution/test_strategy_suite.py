"""One suite for every execution strategy: the behaviours `shm`, `cs` and `ray` all promise, run on each.

Each case runs a real store; `cs` runs real runner processes and a real store server, `ray` a real local Ray cluster
with 2 CPUs (the `ray_cluster` fixture; those cases are slow: the cluster takes seconds to start).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from agl.algorithm import Baseline
from agl.execution import (
    ClientServerExecutionStrategy,
    ExecutionStrategy,
    RayExecutionStrategy,
    SharedMemoryExecutionStrategy,
)
from agl.store.memory import InMemoryLightningStore
from agl.trainer import Trainer
from agl.types.reward import find_final_reward
from tests.execution import agents, bundles

MakeStrategy = Callable[..., ExecutionStrategy]

FINISHES_QUEUED_BY_DEFAULT = {"shm": True, "cs": False, "ray": False}
"""Whether runners run every queued rollout after the algorithm returns (documented in docs/execution.md)."""


def _make(kind: str, n_runners: int = 1) -> ExecutionStrategy:
    if kind == "shm":
        # The default main_thread="runner" takes one runner; more runners need runner threads.
        main_thread = "runner" if n_runners == 1 else "algorithm"
        return SharedMemoryExecutionStrategy(
            n_runners=n_runners, main_thread=main_thread, join_timeout=3.0, graceful_delay=2.0, poll_interval=0.01
        )
    if kind == "cs":
        return ClientServerExecutionStrategy(
            server_host="127.0.0.1", server_port=0, n_runners=n_runners, graceful_timeout=2.0, terminate_timeout=1.0
        )
    return RayExecutionStrategy(n_runners=n_runners, graceful_timeout=2.0, terminate_timeout=1.0)


@pytest.fixture(params=["shm", "cs", pytest.param("ray", marks=pytest.mark.slow)])
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
    return str(request.param)


def _rollouts(store: InMemoryLightningStore) -> list[Any]:
    return list(asyncio.run(store.query_rollouts()))


def test_a_small_run_succeeds_with_every_reward(kind: str) -> None:
    store = InMemoryLightningStore()
    baseline = Baseline(polling_interval=0.05)
    Trainer(strategy=_make(kind, n_runners=2), store=store, algorithm=baseline).fit(agents.Doubler(), [1, 2, 3, 4])
    rollouts = _rollouts(store)
    assert sorted((r.input, r.status) for r in rollouts) == [(i, "succeeded") for i in (1, 2, 3, 4)]
    for rollout in rollouts:
        spans = asyncio.run(store.query_spans(rollout.rollout_id))
        assert find_final_reward(spans) == rollout.input * 2


def test_the_algorithms_exception_is_raised_from_fit(kind: str) -> None:
    trainer = Trainer(strategy=_make(kind), store=InMemoryLightningStore(), algorithm=agents.failing_algorithm())
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="algorithm boom"):
        trainer.fit(agents.Doubler())
    assert time.monotonic() - started < 15


def test_an_agent_exception_fails_the_rollout_not_the_run(kind: str) -> None:
    store = InMemoryLightningStore()
    Trainer(strategy=_make(kind), store=store, algorithm=Baseline(polling_interval=0.05)).fit(
        agents.Doubler(), [1, 13, 3]
    )
    assert sorted((r.input, r.status) for r in _rollouts(store)) == [(1, "succeeded"), (3, "succeeded"), (13, "failed")]


def test_runners_finish_queued_work_per_the_documented_default(kind: str) -> None:
    # Agent Lightning 0.3's default (shm with main_thread="runner") keeps running queued rollouts after the
    # algorithm returns; cs and ray stop the runners once their current rollout is done, as upstream's cs does.
    strategy = _make(kind)
    assert getattr(strategy, "finish_queued", False) is FINISHES_QUEUED_BY_DEFAULT[kind]
    store = InMemoryLightningStore()
    started = time.monotonic()
    strategy.execute(agents.enqueue_ten_and_return, agents.slow_runner, store)
    elapsed = time.monotonic() - started
    statuses = [r.status for r in _rollouts(store)]
    if FINISHES_QUEUED_BY_DEFAULT[kind]:
        assert statuses == ["succeeded"] * 10
    else:
        # The runners stop when the algorithm returns: what they claimed is finished, the rest stays queued.
        assert set(statuses) <= {"succeeded", "queuing"} and statuses.count("succeeded") < 10, statuses
    assert elapsed < 15


def test_a_rollout_in_flight_when_the_algorithm_returns_is_finished(kind: str) -> None:
    store = InMemoryLightningStore()
    _make(kind).execute(agents.algorithm_returns_once_claimed, agents.slow_runner, store)
    assert [r.status for r in _rollouts(store)] == ["succeeded"]


def test_a_runner_failure_is_raised_after_everything_stopped(kind: str) -> None:
    started = time.monotonic()
    # shm re-raises the runner's exception; cs and ray name the failed runner (and ray the exception too).
    with pytest.raises(RuntimeError, match=r"runner 0 boom|runner-0"):
        _make(kind).execute(bundles.algorithm_until_event, bundles.runner_crashes, InMemoryLightningStore())
    assert time.monotonic() - started < 15


def test_n_runners_is_honoured(kind: str) -> None:
    store = InMemoryLightningStore()
    _make(kind, n_runners=2).execute(agents.algorithm_waits_for_two_identities, agents.runner_registers_identity, store)
    workers = [w for w in asyncio.run(store.query_workers()) if w.worker_id.startswith("ident-")]
    assert len(workers) == 2  # two distinct processes or threads
    assert sorted(w.heartbeat_stats["worker_id"] for w in workers if w.heartbeat_stats) == [0, 1]
