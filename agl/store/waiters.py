"""`CompletionWaiters`: callers waiting for rollouts to finish, woken across threads and event loops."""

from __future__ import annotations

import asyncio

__all__ = ["CompletionWaiters"]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class CompletionWaiters:
    """One future per waiting caller and rollout, resolved on the caller's own loop when the rollout finishes.

    Not locked itself: call every method under the owning store's lock.
    """

    def __init__(self) -> None:
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = {}

    def add(self, rollout_id: str, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """A future of `loop` that resolves when `rollout_id` is released."""
        future: asyncio.Future[None] = loop.create_future()
        self._waiters.setdefault(rollout_id, []).append((loop, future))
        return future

    def release(self, rollout_id: str) -> None:
        """Wake every caller waiting for `rollout_id`."""
        for loop, future in self._waiters.pop(rollout_id, ()):
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # the waiting loop is closed
                pass

    def discard(self, rollout_id: str, future: asyncio.Future[None]) -> None:
        """Forget one caller's future (after it stopped waiting)."""
        waiters = self._waiters.get(rollout_id)
        if waiters:
            waiters[:] = [w for w in waiters if w[1] is not future]
            if not waiters:
                del self._waiters[rollout_id]

    def clear(self) -> None:
        """Forget every waiter (their loops belong to this process only)."""
        self._waiters = {}
