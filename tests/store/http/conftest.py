"""Fixtures for the HTTP layer tests: a real server on 127.0.0.1 (free port) over an in-memory store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from agl.store.client import LightningStoreClient
from agl.store.memory import InMemoryLightningStore
from agl.store.server import LightningStoreServer


@pytest.fixture
def memory_store() -> InMemoryLightningStore:
    """A fresh thread-safe in-memory store."""
    return InMemoryLightningStore(thread_safe=True, scan_debounce_seconds=0)


@pytest.fixture
def server(memory_store: InMemoryLightningStore) -> Iterator[LightningStoreServer]:
    """A started server on a free port; stopped after the test."""
    srv = LightningStoreServer(memory_store, host="127.0.0.1", port=0)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
async def client(server: LightningStoreServer) -> AsyncIterator[LightningStoreClient]:
    """A client of `server` with short retry delays; closed after the test."""
    c = LightningStoreClient(server.endpoint, retry_delays=(0.05, 0.1), health_retry_delays=(0.05,))
    try:
        yield c
    finally:
        await c.close()
