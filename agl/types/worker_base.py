"""`ParallelWorkerBase`: the lifecycle shared by components that run once per worker (runners, tracers)."""

from __future__ import annotations

from typing import Any

__all__ = ["ParallelWorkerBase"]


class ParallelWorkerBase:
    """Lifecycle of a component used by several workers: `init` once in the main process, then in each worker
    `init_worker`, `run` any number of times and `teardown_worker`, then `teardown` once. Every step does nothing
    by default, except `run`, which a subclass must provide.
    """

    def __init__(self) -> None:
        self.worker_id: int | None = None

    def init(self, *args: Any, **kwargs: Any) -> None:
        """Prepare shared state before any worker starts."""

    def init_worker(self, worker_id: int, *args: Any, **kwargs: Any) -> None:
        """Become worker `worker_id`."""
        self.worker_id = worker_id

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Do the component's work in the current worker."""
        raise NotImplementedError(f"{type(self).__name__} must implement run()")

    def teardown_worker(self, worker_id: int, *args: Any, **kwargs: Any) -> None:
        """Release what `init_worker` acquired."""

    def teardown(self, *args: Any, **kwargs: Any) -> None:
        """Release what `init` acquired."""
