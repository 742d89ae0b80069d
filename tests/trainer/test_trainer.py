"""Trainer: component building, deprecated aliases, and fit()/dev() through a real strategy and store."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agl.algorithm import Algorithm, Baseline, algo
from agl.execution.shared_memory import SharedMemoryExecutionStrategy
from agl.litagent import LitAgent
from agl.runner import Hook, LitAgentRunner
from agl.store.memory import InMemoryLightningStore
from agl.tracer.dummy import DummyTracer
from agl.trainer import Trainer
from agl.trainer.init_utils import build_component
from agl.types import Rollout


class Doubler(LitAgent[int]):
    def rollout(self, task: int, resources: Any, rollout: Rollout) -> float:
        return float(task * 2)


def shm_trainer(**kwargs: Any) -> Trainer:
    kwargs.setdefault("tracer", DummyTracer())
    kwargs.setdefault("strategy", {"type": "shm", "main_thread": "algorithm", "graceful_delay": 0.5})
    return Trainer(**kwargs)


class Plain:
    def __init__(self, x: int = 0, *, tag: str = "") -> None:
        self.x, self.tag = x, tag


def test_build_component_accepts_every_spec_form() -> None:
    instance = Plain(1)
    kw: dict[str, Any] = {"expected_type": Plain, "spec_name": "thing"}
    assert build_component(instance, **kw) is instance
    assert build_component(None, **kw, default_factory=lambda: Plain(2)).x == 2
    assert build_component(None, **kw, allow_none=True) is None
    built = build_component(Plain, **kw, optional_defaults={"tag": "t", "unknown": 1})
    assert (built.x, built.tag) == (0, "t")
    assert build_component(Plain, **kw, optional_defaults={"tag": lambda: "made"}).tag == "made"
    assert build_component(lambda: Plain(3), **kw).x == 3
    path = f"{__name__}.Plain"
    assert build_component(path, **kw, optional_defaults={"x": 4}).x == 4
    assert build_component({"type": path, "x": 5}, **kw, optional_defaults={"x": 9}).x == 5
    assert build_component({"name": "p"}, **kw, registry={"p": path}).x == 0
    assert build_component({"x": 6}, **kw, dict_requires_type=False, dict_default_cls=Plain).x == 6


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        (None, ValueError, "thing must be given"),
        ({"x": 1}, ValueError, "must have a 'type' key"),
        (42, ValueError, "Invalid thing type"),
        (int, ValueError, "is not a Plain"),
        (lambda: 1, TypeError, "factory returned int"),
        ("nomodule", ValueError, "not a dotted import path"),
        ("agl.nothing_here.Plain", ValueError, "Cannot import"),
    ],
)
def test_build_component_errors_are_clear(spec: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        build_component(spec, expected_type=Plain, spec_name="thing")


def test_trainer_defaults_and_injection() -> None:
    trainer = Trainer(
        n_runners=3, max_rollouts=7, tracer=DummyTracer(), strategy={"type": "shm", "main_thread": "algorithm"}
    )
    assert isinstance(trainer.strategy, SharedMemoryExecutionStrategy) and trainer.strategy.n_runners == 3
    assert isinstance(trainer.store, InMemoryLightningStore)
    assert isinstance(trainer.runner, LitAgentRunner) and trainer.runner.max_rollouts == 7
    assert trainer.runner.tracer is trainer.tracer
    assert type(trainer.adapter).__name__ == "TracerTraceToTriplet"
    assert trainer.algorithm is None and trainer.hooks == []


def test_strategy_n_runners_wins() -> None:
    trainer = shm_trainer(n_runners=5, strategy=SharedMemoryExecutionStrategy(n_runners=2, main_thread="algorithm"))
    assert trainer.n_runners == 2


def test_deprecated_aliases_warn() -> None:
    with pytest.warns(DeprecationWarning, match="n_workers"):
        trainer = shm_trainer(n_workers=2, strategy={"name": "shm", "main_thread": "algorithm"})
    assert trainer.n_runners == 2
    with pytest.warns(DeprecationWarning, match="max_tasks"):
        assert shm_trainer(max_tasks=3).max_rollouts == 3


def test_bad_hooks_and_agents_are_rejected() -> None:
    with pytest.raises(TypeError, match="Hook"):
        shm_trainer(hooks=[object()])
    with pytest.raises(TypeError, match="must be a LitAgent"):
        shm_trainer().fit(lambda task: 1.0, [1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"v0\.1"):
        shm_trainer().fit(Doubler(), "http://localhost:9999")


def test_fit_runs_every_task_through_the_runner() -> None:
    store = InMemoryLightningStore()
    baseline = Baseline(polling_interval=0.1, max_queue_length=8)
    trainer = shm_trainer(store=store, algorithm=baseline, hooks=Hook())
    trainer.fit(Doubler(), [1, 2, 3], val_dataset=[10])
    rewards = sorted((r.input, r.mode, r.status) for r in baseline.results)
    assert rewards == [(1, "train", "succeeded"), (2, "train", "succeeded"), (3, "train", "succeeded"),
                       (10, "val", "succeeded")]  # fmt: skip


def test_fit_with_a_functional_algorithm_and_initial_resources() -> None:
    seen: dict[str, Any] = {}

    @algo
    async def check(store: Any, initial_resources: Any, train_dataset: Any) -> None:
        latest = await store.get_latest_resources()
        seen["resources"] = latest
        seen["data"] = train_dataset

    from agl.types import PromptTemplate

    resources = {"prompt": PromptTemplate(template="{x}", engine="f-string")}
    trainer = shm_trainer(algorithm=check, initial_resources=resources)
    trainer.fit(Doubler(), [1])
    assert seen["data"] == [1] and seen["resources"] is None  # @algo functions publish resources themselves


def test_dev_requires_a_fast_algorithm() -> None:
    class Slow(Algorithm):
        def run(self, train_dataset: Any = None, val_dataset: Any = None) -> None:
            return None

    with pytest.raises(TypeError, match="FastAlgorithm"):
        shm_trainer(algorithm=Slow()).dev(Doubler(), [1])


def test_dev_defaults_to_baseline() -> None:
    store = InMemoryLightningStore()
    shm_trainer(store=store).dev(Doubler(), [4, 5])
    rollouts = asyncio.run(store.query_rollouts())
    assert sorted((r.input, r.status) for r in rollouts) == [(4, "succeeded"), (5, "succeeded")]


def test_fit_on_default_shm_ends_when_the_algorithm_ends() -> None:
    # main_thread="runner" (the shm default): the runner must stop once the algorithm is done, not poll forever.
    baseline = Baseline(polling_interval=0.1)
    trainer = Trainer(tracer=DummyTracer(), strategy="shm", algorithm=baseline)
    trainer.fit(Doubler(), [1, 2])
    assert sorted(r.status for r in baseline.results) == ["succeeded", "succeeded"]


def test_fit_on_default_shm_runs_what_the_algorithm_left_queued() -> None:
    # As Agent Lightning 0.3: an algorithm that enqueues work and returns still gets all of it run.
    @algo
    async def enqueue_ten(store: Any) -> None:
        for i in range(10):
            await store.enqueue_rollout(input=i)

    store = InMemoryLightningStore()
    Trainer(tracer=DummyTracer(), strategy="shm", store=store, algorithm=enqueue_ten).fit(Doubler())
    rollouts = asyncio.run(store.query_rollouts())
    assert sorted((r.input, r.status) for r in rollouts) == [(i, "succeeded") for i in range(10)]
