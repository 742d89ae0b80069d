"""`Runner`: the worker side of AGL, which claims rollouts from the store and runs an agent on them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from agl.store.base import LightningStore
from agl.types.core import Rollout, RolloutMode
from agl.types.resources import NamedResources

if TYPE_CHECKING:
    from agl.litagent.litagent import LitAgent
    from agl.runner.hooks import Hook

__all__ = ["Runner", "StopEvent"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class StopEvent(Protocol):
    """What a runner needs of a stop signal: whether it is set."""

    def is_set(self) -> bool: ...


class Runner(Generic[T]):
    """Base of a runner: set up once (`init`), per worker (`init_worker`), then loop (`iter`) or run one task (`step`)."""

    def init(self, agent: LitAgent[T], *, hooks: Sequence[Hook] | None = None, **kwargs: Any) -> None:
        """Prepare to run `agent` (once per process or thread group)."""

    def init_worker(self, worker_id: int, store: LightningStore, **kwargs: Any) -> None:
        """Prepare worker `worker_id` to talk to `store`."""

    def teardown_worker(self, worker_id: int, *args: Any, **kwargs: Any) -> None:
        """Release what `init_worker` set up."""

    def teardown(self, *args: Any, **kwargs: Any) -> None:
        """Release what `init` set up."""

    async def iter(self, *, event: StopEvent | None = None) -> None:
        """Claim and run rollouts until `event` is set (or a limit is reached)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement iter()")

    async def step(
        self,
        input: T,
        *,
        resources: NamedResources | None = None,
        mode: RolloutMode | None = None,
        event: StopEvent | None = None,
    ) -> Rollout:
        """Run one task right now (not through the queue) and return its finished rollout."""
        raise NotImplementedError(f"{type(self).__name__} does not implement step()")

    def run(self, *args: Any, **kwargs: Any) -> None:
        """Not supported: use `iter()` or `step()`."""
        raise RuntimeError("Runner.run() is not supported; use iter() or step() (or a Trainer)")

    @contextmanager
    def run_context(
        self,
        *,
        agent: LitAgent[T],
        store: LightningStore,
        hooks: Sequence[Hook] | None = None,
        worker_id: int | None = None,
    ) -> Iterator[Runner[T]]:
        """Set the runner up as worker 0 for `agent` and `store`, and tear it down on exit (for debugging)."""
        self.init(agent, hooks=hooks)
        try:
            self.init_worker(0, store)
            try:
                yield self
            finally:
                try:
                    self.teardown_worker(0)
                except Exception:
                    logger.exception("teardown_worker failed")
        finally:
            try:
                self.teardown()
            except Exception:
                logger.exception("teardown failed")


async def sleep_until(seconds: float, event: StopEvent, check_every: float = 0.1) -> bool:
    """Sleep up to `seconds`, returning early (True) as soon as `event` is set."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        if event.is_set():
            return True
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(check_every, remaining))
