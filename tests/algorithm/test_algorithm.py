"""Algorithm base, @algo injection, Baseline and the algorithm helpers."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from agl.algorithm import Algorithm, Baseline, FunctionalAlgorithm, algo
from agl.algorithm.utils import batch_iter_over_dataset, with_llm_proxy, with_store
from agl.store.memory import InMemoryLightningStore


def test_algorithm_references() -> None:
    a = Algorithm()
    with pytest.raises(ValueError, match="no store"):
        a.get_store()
    with pytest.raises(ValueError, match="no adapter"):
        a.get_adapter()
    assert a.get_llm_proxy() is None and a.get_initial_resources() is None
    store = InMemoryLightningStore()
    a.set_store(store)
    assert a.get_store() is store

    class Thing:
        pass

    adapter = Thing()
    a.set_adapter(adapter)
    assert a.get_adapter() is adapter
    del adapter
    gc.collect()
    with pytest.raises(ValueError, match="no adapter"):
        a.get_adapter()


async def test_algo_injects_by_parameter_name() -> None:
    seen: dict[str, Any] = {}

    @algo
    async def train(store: Any, initial_resources: Any, train_dataset: Any, llm_proxy: Any) -> None:
        seen.update(store=store, initial=initial_resources, data=train_dataset, proxy=llm_proxy)

    assert isinstance(train, FunctionalAlgorithm) and train.is_async()
    store = InMemoryLightningStore()
    train.set_store(store)
    train.set_initial_resources({"x": 1})  # type: ignore[dict-item]
    await train.run(train_dataset=[1, 2])
    assert seen == {"store": store, "initial": {"x": 1}, "data": [1, 2], "proxy": None}


def test_algo_rejects_a_dataset_it_cannot_receive() -> None:
    @algo
    def train(store: Any) -> None:
        return None

    train.set_store(InMemoryLightningStore())
    assert not train.is_async()
    with pytest.raises(TypeError, match="has no parameter named 'val_dataset'"):
        train.run(val_dataset=[1])


def test_algo_needs_an_adapter_when_it_asks_for_one() -> None:
    @algo
    def train(adapter: Any) -> None:
        return None

    with pytest.raises(ValueError, match="no adapter"):
        train.run()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"train_split": 1.0}, "train_split"), ({"n_epochs": 0}, "n_epochs"), ({"max_queue_length": 0}, "max_queue"),
     ({"span_verbosity": "all"}, "span_verbosity")],
)  # fmt: skip
def test_baseline_validates_its_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Baseline(**kwargs)


def test_batches_cover_the_dataset_each_pass() -> None:
    batches = batch_iter_over_dataset(list(range(10)), 4, seed=1)
    seen = [x for _ in range(5) for x in next(batches)]
    assert sorted(seen[:10]) == list(range(10))  # the first ten items are one full pass
    whole = batch_iter_over_dataset([1, 2, 3], 5, seed=0)
    assert sorted(next(whole)) == [1, 2, 3] and sorted(next(whole)) == [1, 2, 3]
    with pytest.raises(ValueError, match="batch_size"):
        next(batch_iter_over_dataset([1], 0))


class _Proxy:
    def __init__(self) -> None:
        self.running = False
        self.events: list[str] = []

    def is_running(self) -> bool:
        return self.running

    async def start(self) -> None:
        self.running = True
        self.events.append("start")

    async def stop(self) -> None:
        self.running = False
        self.events.append("stop")


class _Algo(Algorithm):
    @with_store
    async def count(self, store: Any) -> int:
        return len(await store.query_rollouts())

    @with_llm_proxy()
    async def use_proxy(self, proxy: Any) -> bool:
        return proxy is not None and proxy.is_running()

    @with_llm_proxy(required=True)
    async def need_proxy(self, proxy: Any) -> None:
        return None


async def test_store_and_proxy_injection() -> None:
    a = _Algo()
    a.set_store(InMemoryLightningStore())
    assert await a.count() == 0
    assert await a.use_proxy() is False
    with pytest.raises(ValueError, match="needs an LLM proxy"):
        await a.need_proxy()
    proxy = _Proxy()
    a.set_llm_proxy(proxy)
    assert await a.use_proxy() is True
    assert proxy.events == ["start", "stop"]


class _Owner:
    """Stands in for a trainer: something an algorithm refers to weakly."""


def test_an_algorithm_pickles_with_its_trainer() -> None:
    # A trainer sent to a Ray actor or a spawned process carries its algorithm, which refers to it weakly.
    import pickle

    algorithm = Algorithm()
    trainer = _Owner()
    algorithm.set_trainer(trainer)
    algorithm.set_llm_proxy(None)
    copy_algorithm, copy_trainer = pickle.loads(pickle.dumps((algorithm, trainer)))
    assert copy_algorithm.get_trainer() is copy_trainer and copy_algorithm.get_llm_proxy() is None
    assert algorithm.get_trainer() is trainer
