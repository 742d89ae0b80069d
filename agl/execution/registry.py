"""Short names of the execution strategies, as the trainer accepts them (`strategy="cs"`)."""

from __future__ import annotations

import importlib

from agl.execution.base import ExecutionStrategy

__all__ = ["STRATEGY_REGISTRY", "resolve_strategy_class"]

STRATEGY_REGISTRY: dict[str, str] = {
    "shm": "agl.execution.shared_memory.SharedMemoryExecutionStrategy",
    "cs": "agl.execution.client_server.ClientServerExecutionStrategy",
    "ray": "agl.execution.ray.RayExecutionStrategy",
}
"""Alias -> dotted path of the strategy class (imported on first use)."""


def resolve_strategy_class(alias: str) -> type[ExecutionStrategy]:
    """The strategy class registered under `alias` (`"shm"`, `"cs"`, `"ray"`); ValueError naming the known aliases."""
    path = STRATEGY_REGISTRY.get(alias)
    if path is None:
        raise ValueError(f"unknown execution strategy {alias!r}; known aliases: {sorted(STRATEGY_REGISTRY)}")
    module_name, _, class_name = path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, ExecutionStrategy)):  # pragma: no cover - registry is static
        raise TypeError(f"{path} is not an ExecutionStrategy")
    return cls
