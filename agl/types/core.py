"""Core data model of the store: rollouts, attempts, workers, queries and their statuses."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Generic, Literal, TypeVar, overload

from pydantic import BaseModel, ConfigDict, FailFast, Field, model_validator
from typing_extensions import TypedDict

__all__ = [
    "ATTEMPT_STATUSES",
    "ROLLOUT_STATUSES",
    "UNSET",
    "WORKER_STATUSES",
    "Attempt",
    "AttemptStatus",
    "AttemptedRollout",
    "Dataset",
    "EnqueueRolloutRequest",
    "FilterField",
    "FilterOptions",
    "GenericResponse",
    "Hook",
    "PaginatedResult",
    "ParallelWorkerBase",
    "Rollout",
    "RolloutConfig",
    "RolloutLegacy",
    "RolloutMode",
    "RolloutRawResult",
    "RolloutRawResultLegacy",
    "RolloutStatus",
    "SortOptions",
    "Task",
    "TaskIfAny",
    "TaskInput",
    "Triplet",
    "Unset",
    "Worker",
    "WorkerStatus",
]

if TYPE_CHECKING:
    from agl.types.dataset import Dataset
    from agl.types.hook import Hook
    from agl.types.legacy import GenericResponse, RolloutLegacy, RolloutRawResultLegacy, Task, TaskIfAny
    from agl.types.rollout_result import RolloutRawResult
    from agl.types.worker_base import ParallelWorkerBase

# Names Agent Lightning keeps in this module but AGL defines in modules that import this one: resolved on first use.
_ELSEWHERE = {
    "Dataset": "agl.types.dataset",
    "GenericResponse": "agl.types.legacy",
    "Hook": "agl.types.hook",
    "ParallelWorkerBase": "agl.types.worker_base",
    "RolloutLegacy": "agl.types.legacy",
    "RolloutRawResult": "agl.types.rollout_result",
    "RolloutRawResultLegacy": "agl.types.legacy",
    "Task": "agl.types.legacy",
    "TaskIfAny": "agl.types.legacy",
}


def __getattr__(name: str) -> Any:
    module = _ELSEWHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


RolloutStatus = Literal["queuing", "preparing", "running", "failed", "succeeded", "cancelled", "requeuing"]
"""Status of a rollout (a task and its attempts)."""

AttemptStatus = Literal["preparing", "running", "failed", "succeeded", "unresponsive", "timeout"]
"""Status of one attempt at a rollout."""

WorkerStatus = Literal["idle", "busy", "unknown"]
"""Status of a worker (a runner), derived from the attempts it holds."""

RolloutMode = Literal["train", "val", "test"]
"""Which dataset split a rollout belongs to."""

ROLLOUT_STATUSES: tuple[RolloutStatus, ...] = (
    "queuing",
    "preparing",
    "running",
    "failed",
    "succeeded",
    "cancelled",
    "requeuing",
)
ATTEMPT_STATUSES: tuple[AttemptStatus, ...] = ("preparing", "running", "failed", "succeeded", "unresponsive", "timeout")
WORKER_STATUSES: tuple[WorkerStatus, ...] = ("idle", "busy", "unknown")

TaskInput = Any
"""The input of a task: any JSON-serialisable value."""


class Unset:
    """Type of the `UNSET` sentinel: "leave this field as it is" (explicit `None` means "set to None")."""

    _instance: Unset | None = None

    def __new__(cls) -> Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        # Pickles as a reference to the module-level singleton.
        return "UNSET"


UNSET: Any = Unset()
"""The process-wide "do not touch" sentinel for update calls."""


class RolloutConfig(BaseModel):
    """Retry and health-check policy of a rollout."""

    model_config = ConfigDict(extra="allow")

    timeout_seconds: float | None = None
    """An attempt running longer than this (from its start) becomes `timeout`."""
    unresponsive_seconds: float | None = None
    """An attempt silent for longer than this (no span or heartbeat) becomes `unresponsive`."""
    max_attempts: int = Field(default=1, ge=1)
    """Total attempts allowed, counting the first."""
    retry_condition: Annotated[list[AttemptStatus], FailFast()] = Field(default_factory=list)
    """Attempt statuses that send the rollout back to the queue (while attempts remain)."""


class Rollout(BaseModel):
    """One task to run: its input, status, retry policy and bookkeeping times."""

    model_config = ConfigDict(extra="allow")

    rollout_id: str
    input: TaskInput = None
    start_time: float
    end_time: float | None = None
    mode: RolloutMode | None = None
    resources_id: str | None = None
    status: RolloutStatus = "queuing"
    config: RolloutConfig = Field(default_factory=RolloutConfig)
    metadata: dict[str, Any] | None = None


class Attempt(BaseModel):
    """One execution of a rollout by a worker."""

    model_config = ConfigDict(extra="allow")

    rollout_id: str
    attempt_id: str
    sequence_id: int
    """1-based position of this attempt among the rollout's attempts."""
    start_time: float
    end_time: float | None = None
    status: AttemptStatus = "preparing"
    worker_id: str | None = None
    last_heartbeat_time: float | None = None
    metadata: dict[str, Any] | None = None


class AttemptedRollout(Rollout):
    """A rollout together with one of its attempts (normally the latest)."""

    attempt: Attempt

    @model_validator(mode="after")
    def check_consistency(self) -> AttemptedRollout:
        """Reject an attempt that belongs to another rollout."""
        if self.attempt.rollout_id != self.rollout_id:
            raise ValueError(
                f"attempt.rollout_id ({self.attempt.rollout_id!r}) must equal rollout_id ({self.rollout_id!r})"
            )
        return self


class EnqueueRolloutRequest(BaseModel):
    """One item of a batch enqueue: the arguments of `enqueue_rollout`."""

    input: TaskInput
    mode: RolloutMode | None = None
    resources_id: str | None = None
    config: RolloutConfig | None = None
    metadata: dict[str, Any] | None = None


class Worker(BaseModel):
    """A runner known to the store, its heartbeat and current assignment."""

    model_config = ConfigDict(extra="allow")

    worker_id: str
    status: WorkerStatus = "unknown"
    heartbeat_stats: dict[str, Any] | None = None
    last_heartbeat_time: float | None = None
    last_dequeue_time: float | None = None
    last_busy_time: float | None = None
    last_idle_time: float | None = None
    current_rollout_id: str | None = None
    current_attempt_id: str | None = None


T = TypeVar("T")


class PaginatedResult(BaseModel, Sequence[T], Generic[T]):
    """One page of a query: `items` plus the request's `limit`/`offset` and the `total` number of matches.

    Behaves as a read-only sequence of its items.
    """

    items: list[T]
    limit: int = -1
    offset: int = 0
    total: int = 0

    def __len__(self) -> int:
        return len(self.items)

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> list[T]: ...
    def __getitem__(self, index: int | slice) -> T | list[T]:
        return self.items[index]

    def __iter__(self) -> Iterator[T]:  # type: ignore[override]
        return iter(self.items)

    def __contains__(self, value: object) -> bool:
        return value in self.items

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PaginatedResult):
            return super().__eq__(other)
        if isinstance(other, (list, tuple)):
            return self.items == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


class FilterField(TypedDict, total=False):
    """Operators applied to one field: equality, membership in a sequence, substring/membership."""

    exact: Any
    within: Sequence[Any]
    contains: Any


FilterOptions = dict[str, Any]
"""Field name → `FilterField`, plus the reserved keys `_aggregate` ("and"/"or") and `_must` (always-AND filters)."""


class SortOptions(TypedDict):
    """Sort by one field, ascending or descending."""

    name: str
    order: Literal["asc", "desc"]


class Triplet(BaseModel):
    """One (prompt, response, reward) step extracted from a trace, for training."""

    model_config = ConfigDict(extra="allow")

    prompt: Any
    response: Any
    reward: float | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
