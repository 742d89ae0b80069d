"""`ExecutionStrategyRegistry`: the short strategy names the trainer accepts; held in `agl.execution.registry`."""

from agl.execution.registry import STRATEGY_REGISTRY

__all__ = ["ExecutionStrategyRegistry"]

ExecutionStrategyRegistry: dict[str, str] = STRATEGY_REGISTRY
"""Alias (`"shm"`, `"cs"`, `"ray"`) -> dotted path of the execution strategy class."""
