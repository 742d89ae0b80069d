"""The store: the one shared state of AGL (rollouts, attempts, spans, resources, workers).

`LightningStoreClient` / `LightningStoreServer` (optional dependencies), `SqliteLightningStore` and
`PostgresLightningStore` (needs the `postgres` extra) are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from agl.store.base import LightningStore, LightningStoreCapabilities, LightningStoreStatistics
from agl.store.memory import InMemoryLightningStore
from agl.store.threading import LightningStoreThreaded

__all__ = [
    "InMemoryLightningStore",
    "LightningStore",
    "LightningStoreCapabilities",
    "LightningStoreClient",
    "LightningStoreServer",
    "LightningStoreStatistics",
    "LightningStoreThreaded",
    "PostgresLightningStore",
    "SqliteLightningStore",
]

_LAZY = {
    "LightningStoreClient": "agl.store.client_server",
    "LightningStoreServer": "agl.store.client_server",
    "SqliteLightningStore": "agl.store.sqlite",
    "PostgresLightningStore": "agl.store.postgres",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'agl.store' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


if TYPE_CHECKING:
    from agl.store.client import LightningStoreClient
    from agl.store.postgres import PostgresLightningStore
    from agl.store.server import LightningStoreServer
    from agl.store.sqlite import SqliteLightningStore
