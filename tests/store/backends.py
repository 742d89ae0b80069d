"""Every store backend the conformance suite runs against.

Each entry maps a backend name to a factory: given a clock, it yields a fresh, empty `LightningStore` that reads
time from that clock and runs its health checks on every call (no debounce). Keyword options (e.g.
`claim_timeout_seconds`) go to the store's constructor. Add a backend here and the whole conformance suite runs
against it unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from agl.store.base import LightningStore
from tests.store.clock import FakeClock

BackendFactory = Callable[..., AbstractAsyncContextManager[LightningStore]]
"""`factory(clock, **store_options)`."""


@asynccontextmanager
async def memory_backend(clock: FakeClock, **options: Any) -> AsyncIterator[LightningStore]:
    from agl.store.memory import InMemoryLightningStore

    store = InMemoryLightningStore(clock=clock, scan_debounce_seconds=0, **options)
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def threaded_memory_backend(clock: FakeClock, **options: Any) -> AsyncIterator[LightningStore]:
    from agl.store.memory import InMemoryLightningStore
    from agl.store.threading import LightningStoreThreaded

    store = LightningStoreThreaded(
        InMemoryLightningStore(clock=clock, scan_debounce_seconds=0, thread_safe=True, **options)
    )
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def sqlite_backend(clock: FakeClock, **options: Any) -> AsyncIterator[LightningStore]:
    import shutil
    import tempfile

    from agl.store.sqlite import SqliteLightningStore

    directory = tempfile.mkdtemp(prefix="agl-sqlite-store-")
    store = SqliteLightningStore(f"{directory}/store.db", clock=clock, scan_debounce_seconds=0, **options)
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
async def http_backend(clock: FakeClock, **options: Any) -> AsyncIterator[LightningStore]:
    """The in-memory store over HTTP."""
    from agl.store.memory import InMemoryLightningStore

    store = InMemoryLightningStore(clock=clock, scan_debounce_seconds=0, thread_safe=True, **options)
    async with _served(store) as client:
        yield client


@asynccontextmanager
async def http_sqlite_backend(clock: FakeClock, **options: Any) -> AsyncIterator[LightningStore]:
    """The SQLite store over HTTP."""
    async with sqlite_backend(clock, **options) as store, _served(store) as client:
        yield client


@asynccontextmanager
async def postgres_backend(clock: FakeClock, **options: Any) -> AsyncIterator[LightningStore]:
    """The PostgreSQL store on a fresh database of the session's throwaway cluster (skips without PostgreSQL)."""
    from agl.store.postgres import PostgresLightningStore
    from tests.store.postgres_server import fresh_database

    with fresh_database() as dsn:
        store = PostgresLightningStore(dsn, clock=clock, scan_debounce_seconds=0, **options)
        try:
            yield store
        finally:
            await store.close()


@asynccontextmanager
async def http_postgres_backend(clock: FakeClock, **options: Any) -> AsyncIterator[LightningStore]:
    """The PostgreSQL store over HTTP."""
    async with postgres_backend(clock, **options) as store, _served(store) as client:
        yield client


BACKENDS: dict[str, BackendFactory] = {
    "memory": memory_backend,
    "threaded": threaded_memory_backend,
    "http": http_backend,
    "sqlite": sqlite_backend,
    "http-sqlite": http_sqlite_backend,
    "postgres": postgres_backend,
    "http-postgres": http_postgres_backend,
}
