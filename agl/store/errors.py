"""Errors a store raises that callers may want to tell apart (all keep the builtin base the spec names)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

__all__ = ["FULL_STORE_RETRY_DELAYS", "NotFoundError", "StaleAttemptError", "StoreFullError", "retry_when_full"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


class NotFoundError(ValueError):
    """A call named a rollout, attempt, resources snapshot or worker the store does not have. HTTP 404.

    A `ValueError`, as Agent Lightning's stores raise for unknown ids. `kind` is what was looked for ("rollout",
    "attempt", ...), `id` its id and `rollout_id` the rollout an attempt was looked for in (else None).
    """

    def __init__(self, kind: str, id: str, rollout_id: str | None = None, message: str | None = None) -> None:
        self.kind = kind
        self.id = id
        self.rollout_id = rollout_id
        if message is None:
            where = f" for rollout {rollout_id}" if rollout_id is not None and kind != "rollout" else ""
            message = f"{kind.capitalize()} {id} not found{where}"
        super().__init__(message)


class StoreFullError(RuntimeError):
    """The store has no room for more spans (memory budget spent and the disk spill full). Retry later.

    Nothing already stored is lost; the call that raised stored nothing. Over HTTP this is status 507.
    """

    retryable = True


class StaleAttemptError(RuntimeError):
    """A write on behalf of an attempt that no longer holds its rollout; the rollout is unchanged. HTTP 409.

    An attempt holds its rollout while it is the rollout's latest attempt and the rollout is claimed (`preparing` or
    `running`). Once the rollout has moved on — requeued, finished, cancelled, or given a newer attempt — status and
    heartbeat writes of the older attempt are refused with this error (its late spans are still kept, on its own
    attempt). A runner that gets it abandons the rollout and takes new work.
    """

    def __init__(
        self, rollout_id: str, attempt_id: str, rollout_status: str, current_attempt_id: str | None = None
    ) -> None:
        self.rollout_id = rollout_id
        self.attempt_id = attempt_id
        self.rollout_status = rollout_status
        self.current_attempt_id = current_attempt_id
        """The rollout's latest attempt (None when it has none), which may be `attempt_id` itself."""
        super().__init__(
            f"Attempt {attempt_id} of rollout {rollout_id} is stale: the rollout is {rollout_status} and its current "
            f"attempt is {current_attempt_id}; writes of attempt {attempt_id} can no longer change it "
            "(abandon this rollout and take new work)"
        )


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
