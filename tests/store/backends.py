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


BACKENDS: dict[str, BackendFactory] = {
    "memory": memory_backend,
    "threaded": threaded_memory_backend,
}
