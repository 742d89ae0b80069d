"""`LightningStoreThreaded`: makes any store safe to call from several threads and event loops."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from agl.store.base import LightningStore, LightningStoreCapabilities, LightningStoreStatistics
from agl.store.delegation import forwards_protocol
from agl.store.events import StoreEvents

__all__ = ["LightningStoreThreaded"]

T = TypeVar("T")


@forwards_protocol
class LightningStoreThreaded(LightningStore):
    """Wraps a store so it can be called from any thread or event loop.

    A store that is already thread-safe is called directly. Any other store gets one private event-loop thread and
    every call runs there, one at a time, whether it comes from another thread or from concurrent coroutines: a
    call that awaits inside the store cannot interleave with another. `wait_for_rollouts` only reads, and may wait
    long, so it runs beside the others instead of holding them up (as in Agent Lightning 0.3). The calls queue on an
    `asyncio.Lock` of the private loop; no thread ever blocks on a lock held across an `await`.
    """

    def __init__(self, store: LightningStore) -> None:
        self.store = store
        self._direct = bool(store.capabilities.get("thread_safe"))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._serial: asyncio.Lock | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"store": self.store}

    def __setstate__(self, data: dict[str, Any]) -> None:
        self.__init__(data["store"])  # type: ignore[misc]

    @property
    def capabilities(self) -> LightningStoreCapabilities:
        """Thread-safe and async-safe; the rest as the wrapped store."""
        caps = LightningStoreCapabilities(**self.store.capabilities)
        caps["thread_safe"] = True
        caps["async_safe"] = True
        return caps

    @property
    def events(self) -> StoreEvents:
        """The wrapped store's events."""
        return self.store.events

    def otlp_traces_endpoint(self) -> str:
        """The wrapped store's OTLP endpoint."""
        return self.store.otlp_traces_endpoint()

    def _owner_loop(self) -> tuple[asyncio.AbstractEventLoop, asyncio.Lock]:
        with self._start_lock:
            if self._loop is None or self._serial is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="agl-store-owner", daemon=True)
                thread.start()
                self._loop, self._thread, self._serial = loop, thread, asyncio.Lock()
            return self._loop, self._serial

    async def _call(self, factory: Callable[[], Awaitable[T]], *, serialised: bool = True) -> T:
        if self._direct:
            return await factory()
        loop, serial = self._owner_loop()

        async def run() -> T:
            if not serialised:
                return await factory()
            async with serial:
                return await factory()

        coro: Coroutine[Any, Any, T] = run()
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    async def _forward(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Make a protocol call on the wrapped store; `wait_for_rollouts` (only reads, may wait long) beside others."""
        method = getattr(self.store, name)
        return await self._call(lambda: method(*args, **kwargs), serialised=name != "wait_for_rollouts")

    async def statistics(self) -> LightningStoreStatistics:
        """The wrapped store's statistics."""
        return await self._call(self.store.statistics)

    async def close(self) -> None:
        """Close the wrapped store and stop the private loop thread, if one was started."""
        await self._call(self.store.close)
        with self._start_lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
            self._serial = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            await asyncio.to_thread(thread.join, 5)
            loop.close()
