"""`InterProcessExecutionStrategy`: a name Agent Lightning reserves (alias `ipc`) for a strategy it has not built.

As upstream, it is a placeholder: running it raises. Use `SharedMemoryExecutionStrategy` (`"shm"`) or
`ClientServerExecutionStrategy` (`"cs"`).
"""

from __future__ import annotations

from agl.execution.base import AlgorithmBundle, ExecutionStrategy, RunnerBundle
from agl.store.base import LightningStore

__all__ = ["InterProcessExecutionStrategy"]


class InterProcessExecutionStrategy(ExecutionStrategy):
    """Reserved, not implemented (also not in Agent Lightning 0.3): `execute` raises `NotImplementedError`."""

    alias = "ipc"

    def execute(self, algorithm: AlgorithmBundle, runner: RunnerBundle, store: LightningStore) -> None:
        """Raises `NotImplementedError` naming the strategies that exist."""
        raise NotImplementedError(
            "InterProcessExecutionStrategy is a reserved name without an implementation (as in Agent Lightning "
            "0.3); use strategy='shm' (SharedMemoryExecutionStrategy) or 'cs' (ClientServerExecutionStrategy)"
        )
