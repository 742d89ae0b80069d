"""The store: the one shared state of AGL (rollouts, attempts, spans, resources, workers)."""

from agl.store.base import LightningStore, LightningStoreCapabilities, LightningStoreStatistics
from agl.store.memory import InMemoryLightningStore
from agl.store.threading import LightningStoreThreaded

__all__ = [
    "InMemoryLightningStore",
    "LightningStore",
    "LightningStoreCapabilities",
    "LightningStoreStatistics",
    "LightningStoreThreaded",
]
