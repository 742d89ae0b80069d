"""Every store backend the conformance suite runs against.

Each entry maps a backend name to a factory: given a clock, it yields a fresh, empty `LightningStore` that reads
time from that clock and runs its health checks on every call (no debounce). Add a backend here and the whole
conformance suite runs against it unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from agl.store.base import LightningStore
from tests.store.clock import FakeClock

BackendFactory = Callable[[FakeClock], AbstractAsyncContextManager[LightningStore]]


@asynccontextmanager
async def memory_backend(clock: FakeClock) -> AsyncIterator[LightningStore]:
    from agl.store.memory import InMemoryLightningStore

    store = InMemoryLightningStore(clock=clock, scan_debounce_seconds=0)
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def threaded_memory_backend(clock: FakeClock) -> AsyncIterator[LightningStore]:
    from agl.store.memory import InMemoryLightningStore
    from agl.store.threading import LightningStoreThreaded

    store = LightningStoreThreaded(InMemoryLightningStore(clock=clock, scan_debounce_seconds=0, thread_safe=True))
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def sqlite_backend(clock: FakeClock) -> AsyncIterator[LightningStore]:
    import shutil
    import tempfile

    from agl.store.sqlite import SqliteLightningStore

    directory = tempfile.mkdtemp(prefix="agl-sqlite-store-")
    store = SqliteLightningStore(f"{directory}/store.db", clock=clock, scan_debounce_seconds=0)
    try:
        yield store
    finally:
        await store.close()
        shutil.rmtree(directory, ignore_errors=True)


@asynccontextmanager
async def _served(store: LightningStore) -> AsyncIterator[LightningStore]:
    """`store` behind a real HTTP server on 127.0.0.1 (free port), reached through the client."""
    from agl.store.client import LightningStoreClient
    from agl.store.server import LightningStoreServer

    server = LightningStoreServer(store, host="127.0.0.1", port=0)
    server.start()
    client = LightningStoreClient(server.endpoint, retry_delays=(0.1, 0.2), health_retry_delays=(0.05,))
    try:
        yield client
    finally:
        await client.close()
        await server.stop_async()
        await store.close()


@asynccontextmanager
async def http_backend(clock: FakeClock) -> AsyncIterator[LightningStore]:
    """The in-memory store over HTTP."""
    from agl.store.memory import InMemoryLightningStore

    async with _served(InMemoryLightningStore(clock=clock, scan_debounce_seconds=0, thread_safe=True)) as client:
        yield client


@asynccontextmanager
async def http_sqlite_backend(clock: FakeClock) -> AsyncIterator[LightningStore]:
    """The SQLite store over HTTP."""
    async with sqlite_backend(clock) as store, _served(store) as client:
        yield client


BACKENDS: dict[str, BackendFactory] = {
    "memory": memory_backend,
    "threaded": threaded_memory_backend,
    "http": http_backend,
    "sqlite": sqlite_backend,
    "http-sqlite": http_sqlite_backend,
}
