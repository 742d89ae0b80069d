"""Helpers for writing algorithms: dataset batching and injection of the store / LLM proxy."""

from __future__ import annotations

import functools
import random
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

from agl.algorithm.base import Algorithm

__all__ = ["batch_iter_over_dataset", "with_llm_proxy", "with_store"]

T = TypeVar("T")
A = TypeVar("A", bound=Algorithm)
P = ParamSpec("P")
R = TypeVar("R")


def batch_iter_over_dataset(dataset: Sequence[T], batch_size: int, *, seed: int | None = None) -> Iterator[list[T]]:
    """Endless batches of `batch_size` items, reshuffling each pass (the whole dataset when it is smaller)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if len(dataset) == 0:
        raise ValueError("batch_iter_over_dataset needs a non-empty dataset")
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        if batch_size >= len(dataset):
            order = list(range(len(dataset)))
            rng.shuffle(order)
            yield [dataset[i] for i in order]
            continue
        if len(order) < batch_size:
            fresh = list(range(len(dataset)))
            rng.shuffle(fresh)
            order.extend(fresh)
        batch, order = order[:batch_size], order[batch_size:]
        yield [dataset[i] for i in batch]


def with_store(
    func: Callable[Concatenate[A, Any, P], Awaitable[R]],
) -> Callable[Concatenate[A, P], Awaitable[R]]:
    """Decorate an async algorithm method to receive `self.get_store()` as its first argument."""

    @functools.wraps(func)
    async def wrapper(self: A, *args: P.args, **kwargs: P.kwargs) -> R:
        return await func(self, self.get_store(), *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def with_llm_proxy(
    required: bool = False, auto_start: bool = True
) -> Callable[[Callable[Concatenate[A, Any, P], Awaitable[R]]], Callable[Concatenate[A, P], Awaitable[R]]]:
    """Decorate an async algorithm method to receive the LLM proxy (or None) as its first argument.

    With `auto_start`, a proxy that is not running is started before the call and stopped after it.
    """

    def decorate(
        method: Callable[Concatenate[A, Any, P], Awaitable[R]],
    ) -> Callable[Concatenate[A, P], Awaitable[R]]:
        @functools.wraps(method)
        async def wrapper(self: A, *args: P.args, **kwargs: P.kwargs) -> R:
            proxy = self.get_llm_proxy()
            if proxy is None:
                if required:
                    raise ValueError(f"{method.__name__} needs an LLM proxy: pass llm_proxy= to the Trainer")
                return await method(self, None, *args, **kwargs)
            started_here = auto_start and not proxy.is_running()
            if started_here:
                await proxy.start()
            try:
                return await method(self, proxy, *args, **kwargs)
            finally:
                if started_here:
                    await proxy.stop()

        return wrapper  # type: ignore[return-value]

    return decorate
