"""`@algo`: turn a function into an `Algorithm`, injecting what it asks for by parameter name."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from agl.algorithm.base import Algorithm

__all__ = ["FunctionalAlgorithm", "algo"]

_INJECTABLE = ("store", "adapter", "llm_proxy", "initial_resources")


class FunctionalAlgorithm(Algorithm):
    """An algorithm made from a function; it receives, by parameter name, `store`, `adapter`, `llm_proxy`,
    `initial_resources`, `train_dataset` and `val_dataset`."""

    def __init__(self, algorithm_func: Callable[..., Any]) -> None:
        super().__init__()
        func = algorithm_func
        self.func = func
        self._params = {
            name
            for name, p in inspect.signature(func).parameters.items()
            if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        }
        self._async = inspect.iscoroutinefunction(func)
        functools.update_wrapper(self, func)

    def is_async(self) -> bool:
        """True when the wrapped function is a coroutine function."""
        return self._async

    def _kwargs(self, train_dataset: Any, val_dataset: Any) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        for name, dataset in (("train_dataset", train_dataset), ("val_dataset", val_dataset)):
            if name in self._params:
                kwargs[name] = dataset
            elif dataset is not None:
                raise TypeError(f"{self.func.__name__} got a {name} but has no parameter named {name!r} to receive it")
        getters = {
            "store": self.get_store,
            "adapter": self.get_adapter,
            "llm_proxy": self.get_llm_proxy,
            "initial_resources": self.get_initial_resources,
        }
        for name in _INJECTABLE:
            if name in self._params:
                kwargs[name] = getters[name]()
        return kwargs

    def run(self, train_dataset: Any = None, val_dataset: Any = None) -> Any:
        """Call the function (a coroutine when it is async) with the injected arguments."""
        return self.func(**self._kwargs(train_dataset, val_dataset))


def algo(func: Callable[..., Any]) -> FunctionalAlgorithm:
    """Make an algorithm from `func(store, adapter, llm_proxy, initial_resources, train_dataset, val_dataset)`
    (any subset of those parameters)."""
    return FunctionalAlgorithm(func)
