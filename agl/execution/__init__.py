"""Execution strategies: where the algorithm and the runners run, and how they are stopped.

`SharedMemoryExecutionStrategy` (`"shm"`) runs everything as threads of one process; `ClientServerExecutionStrategy`
(`"cs"`) serves the store over HTTP from the algorithm process and runs the runners as processes, here or on other
machines; `RayExecutionStrategy` (`"ray"`) runs the runners as actors of a Ray cluster (`pip install 'agl[ray]'`).
"""

from agl.execution.base import AlgorithmBundle, ExecutionStrategy, RunnerBundle, resolve_managed_store_flag
from agl.execution.client_server import ClientServerExecutionStrategy
from agl.execution.drain import DrainWatcher, request_drain
from agl.execution.events import ExecutionEvent, MultiprocessingEvent, ThreadingEvent
from agl.execution.ray import RayExecutionStrategy
from agl.execution.registry import STRATEGY_REGISTRY, resolve_strategy_class
from agl.execution.shared_memory import SharedMemoryExecutionStrategy

__all__ = [
    "STRATEGY_REGISTRY",
    "AlgorithmBundle",
    "ClientServerExecutionStrategy",
    "DrainWatcher",
    "ExecutionEvent",
    "ExecutionStrategy",
    "MultiprocessingEvent",
    "RayExecutionStrategy",
    "RunnerBundle",
    "SharedMemoryExecutionStrategy",
    "ThreadingEvent",
    "request_drain",
    "resolve_managed_store_flag",
    "resolve_strategy_class",
]
