"""Short names for components the Trainer accepts as strings (e.g. `strategy="cs"`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agl.trainer.init_utils import load_class

__all__ = ["STRATEGY_REGISTRY", "Registry"]


@dataclass(frozen=True)
class Registry:
    """Aliases → dotted import paths, resolved lazily so naming a component imports nothing until it is built."""

    paths: Mapping[str, str]

    def create(self, alias: str, **kwargs: Any) -> Any:
        """Instantiate the class behind `alias` with `kwargs`."""
        return load_class(alias, self.paths)(**kwargs)


STRATEGY_REGISTRY = Registry(
    {
        "shm": "agl.execution.shared_memory.SharedMemoryExecutionStrategy",
        "cs": "agl.execution.client_server.ClientServerExecutionStrategy",
    }
)
"""Execution strategies by alias: `shm` (threads in one process) and `cs` (client-server, runner processes)."""
