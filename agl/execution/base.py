"""`ExecutionStrategy`: where the algorithm and the runners run (threads, processes, machines) and how they stop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, ClassVar

from agl.execution.events import ExecutionEvent

if TYPE_CHECKING:
    from agl.store.base import LightningStore

__all__ = ["AlgorithmBundle", "ExecutionStrategy", "RunnerBundle", "resolve_managed_store_flag"]

AlgorithmBundle = Callable[["LightningStore", ExecutionEvent], Awaitable[None]]
"""`async (store, stop_event) -> None`: the algorithm side of a run (enqueue, wait, learn, publish resources)."""

RunnerBundle = Callable[["LightningStore", int, ExecutionEvent], Awaitable[None]]
"""`async (store, worker_id, stop_event) -> None`: one runner, claiming rollouts until the event is set."""


def resolve_managed_store_flag(value: bool | None) -> bool:
    """Whether the strategy wraps the store for its workers: `value` if given, else `AGL_MANAGED_STORE`, else True.

    Raises `ValueError` naming the variable when it holds something other than 1/0/true/false/yes/no/on/off.
    """
    from agl.env_var import LightningEnvVar, resolve_bool_env_var

    resolved = resolve_bool_env_var(LightningEnvVar.AGL_MANAGED_STORE, override=value, fallback=True)
    return True if resolved is None else bool(resolved)


class ExecutionStrategy:
    """Runs one algorithm bundle and runner bundles against a store until the work is done or a stop is asked.

    `execute` returns when the run is over: normally after the algorithm finished and every runner stopped, also
    after Ctrl+C (the interrupt is handled, not re-raised). An exception of a bundle is re-raised once everything
    it started has stopped.
    """

    alias: ClassVar[str | None] = None
    """The short name the trainer accepts for this strategy (`"shm"`, `"cs"`)."""

    def execute(self, algorithm: AlgorithmBundle, runner: RunnerBundle, store: LightningStore) -> None:
        """Run `algorithm` and the runners against `store`; return when the run is over."""
        raise NotImplementedError(f"{type(self).__name__} does not implement execute()")
