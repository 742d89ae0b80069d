"""`Algorithm`: the learning side of AGL, which enqueues rollouts, reads their spans and publishes resources."""

from __future__ import annotations

import inspect
import weakref
from typing import Any

from agl.store.base import LightningStore
from agl.types.resources import NamedResources
from agl.weak_owners import WeakOwners

__all__ = ["Algorithm"]


class Algorithm(WeakOwners):
    """Base of an algorithm: override `run(train_dataset, val_dataset)` (sync or async).

    The trainer hands it the store (`get_store()`), the adapter that turns spans into training data
    (`get_adapter()`), the initial resources and, when configured, the LLM proxy.
    """

    _owner_refs = ("_trainer_ref", "_adapter_ref", "_llm_proxy_ref")

    def __init__(self) -> None:
        self._trainer_ref: weakref.ReferenceType[Any] | None = None
        self._adapter_ref: weakref.ReferenceType[Any] | None = None
        self._llm_proxy_ref: weakref.ReferenceType[Any] | None = None
        self._store: LightningStore | None = None
        self._initial_resources: NamedResources | None = None

    def is_async(self) -> bool:
        """True when `run` is a coroutine function."""
        return inspect.iscoroutinefunction(self.run)

    def run(self, train_dataset: Any = None, val_dataset: Any = None) -> Any:
        """Train (and validate) on the datasets."""
        raise NotImplementedError(f"{type(self).__name__} must implement run(train_dataset, val_dataset)")

    def __call__(self, train_dataset: Any = None, val_dataset: Any = None) -> Any:
        return self.run(train_dataset=train_dataset, val_dataset=val_dataset)

    def set_trainer(self, trainer: Any) -> None:
        """Remember (weakly) the trainer running this algorithm."""
        self._trainer_ref = weakref.ref(trainer)

    def get_trainer(self) -> Any:
        """The trainer (ValueError if unset or gone)."""
        trainer = self._trainer_ref() if self._trainer_ref is not None else None
        if trainer is None:
            raise ValueError("This algorithm has no trainer: call set_trainer() first (Trainer.fit does it)")
        return trainer

    def set_store(self, store: LightningStore) -> None:
        """Set the store the algorithm works on."""
        self._store = store

    def get_store(self) -> LightningStore:
        """The store (ValueError if unset)."""
        if self._store is None:
            raise ValueError("This algorithm has no store: call set_store() first (Trainer.fit does it)")
        return self._store

    def set_adapter(self, adapter: Any) -> None:
        """Remember (weakly) the adapter that turns spans into training data."""
        self._adapter_ref = weakref.ref(adapter)

    def get_adapter(self) -> Any:
        """The adapter (ValueError if unset or gone)."""
        adapter = self._adapter_ref() if self._adapter_ref is not None else None
        if adapter is None:
            raise ValueError("This algorithm has no adapter: call set_adapter() first (Trainer.fit does it)")
        return adapter

    def set_initial_resources(self, resources: NamedResources | None) -> None:
        """Set the resources to start from."""
        self._initial_resources = resources

    def get_initial_resources(self) -> NamedResources | None:
        """The resources to start from, or None."""
        return self._initial_resources

    def set_llm_proxy(self, llm_proxy: Any) -> None:
        """Remember (weakly) the LLM proxy, or forget it with None."""
        self._llm_proxy_ref = weakref.ref(llm_proxy) if llm_proxy is not None else None

    def get_llm_proxy(self) -> Any:
        """The LLM proxy, or None."""
        return self._llm_proxy_ref() if self._llm_proxy_ref is not None else None

    def get_client(self) -> Any:
        """Removed with the v0.1 protocol: use `get_store()`."""
        raise RuntimeError("Algorithm.get_client() belonged to the v0.1 protocol; use get_store()")
