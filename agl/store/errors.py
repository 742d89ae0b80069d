"""Errors a store raises that callers may want to tell apart (all keep the builtin base the spec names)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

__all__ = ["FULL_STORE_RETRY_DELAYS", "StoreFullError", "retry_when_full"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


class StoreFullError(RuntimeError):
    """The store has no room for more spans (memory budget spent and the disk spill full). Retry later.

    Nothing already stored is lost; the call that raised stored nothing. Over HTTP this is status 507.
    """

    retryable = True


FULL_STORE_RETRY_DELAYS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
"""How long writers back off, one delay per retry, when the store says it is full (~32 s in all)."""


async def retry_when_full(call: Callable[[], Awaitable[T]], delays: Sequence[float] = FULL_STORE_RETRY_DELAYS) -> T:
    """Await `call()`, backing off and retrying while the store raises `StoreFullError` (the last one propagates)."""
    for delay in delays:
        try:
            return await call()
        except StoreFullError as exc:
            logger.warning("The store is full (%s); retrying in %.2f s", exc, delay)
            await asyncio.sleep(delay)
    return await call()
