"""The `LightningStore` protocol: the one interface to rollouts, attempts, spans, resources and workers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from typing_extensions import TypedDict

from agl.store.events import StoreEvents
from agl.store.state import is_finished, is_queuing, is_running
from agl.types.core import (
    UNSET,
    Attempt,
    AttemptedRollout,
    AttemptStatus,
    EnqueueRolloutRequest,
    PaginatedResult,
    Rollout,
    RolloutConfig,
    RolloutMode,
    RolloutStatus,
    TaskInput,
    Unset,
    Worker,
    WorkerStatus,
)
from agl.types.resources import NamedResources, ResourcesUpdate
from agl.types.tracer import Span

__all__ = [
    "UNSET",
    "LightningStore",
    "LightningStoreCapabilities",
    "LightningStoreStatistics",
    "Unset",
    "is_finished",
    "is_queuing",
    "is_running",
]


class LightningStoreCapabilities(TypedDict, total=False):
    """What a store supports; an absent key means False."""

    thread_safe: bool
    async_safe: bool
    zero_copy: bool
    otlp_traces: bool


class LightningStoreStatistics(TypedDict, total=False):
    """Counters a store reports about itself; every key is optional."""

    name: str
    total_rollouts: int
    total_attempts: int
    total_spans: int
    total_resources: int
    total_workers: int
    uptime: float
    total_span_bytes: int
    spilled_span_bytes: int
    spilled_spans: int
    spilled_rollouts: int
    eviction_threshold_bytes: int
    safe_threshold_bytes: int
    memory_capacity_bytes: int
    spill_room_bytes: int
    """Bytes the disk spill can still take (memory store, when its disk budget is known)."""


def _abstract(name: str) -> NotImplementedError:
    return NotImplementedError(f"this LightningStore does not implement {name}()")


class LightningStore:
    """The store protocol: every method is async and appears atomic to concurrent callers.

    Mutating calls with unknown ids raise `ValueError`. `UNSET` in an update means "leave the field as it is".
    """

    @property
    def events(self) -> StoreEvents:
        """Status changes of this process's store, for listeners such as metrics and the dashboard."""
        events: StoreEvents | None = self.__dict__.get("_events")
        if events is None:
            events = self.__dict__["_events"] = StoreEvents()
        return events

    @property
    def capabilities(self) -> LightningStoreCapabilities:
        """What this store supports (thread safety, async safety, zero-copy sharing, OTLP ingest)."""
        return LightningStoreCapabilities(thread_safe=False, async_safe=False, zero_copy=False, otlp_traces=False)

    def otlp_traces_endpoint(self) -> str:
        """The OTLP/HTTP traces URL of this store, if it has one."""
        raise NotImplementedError(f"{type(self).__name__} has no OTLP traces endpoint")

    async def statistics(self) -> LightningStoreStatistics:
        """Counters about the store's contents and resource use."""
        return LightningStoreStatistics(name=type(self).__name__)

    # -- rollouts and the queue -------------------------------------------------------------------------------
    async def start_rollout(
        self,
        input: TaskInput,
        mode: RolloutMode | None = None,
        resources_id: str | None = None,
        config: RolloutConfig | None = None,
        metadata: dict[str, Any] | None = None,
        worker_id: str | None = None,
    ) -> AttemptedRollout:
        """Create a rollout and its first attempt, both `preparing`, without queueing it."""
        raise _abstract("start_rollout")

    async def enqueue_rollout(
        self,
        input: TaskInput,
        mode: RolloutMode | None = None,
        resources_id: str | None = None,
        config: RolloutConfig | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Rollout:
        """Create a `queuing` rollout at the tail of the queue."""
        raise _abstract("enqueue_rollout")

    async def enqueue_many_rollouts(self, rollouts: Sequence[EnqueueRolloutRequest]) -> Sequence[Rollout]:
        """Enqueue several rollouts in order; results in input order."""
        raise _abstract("enqueue_many_rollouts")

    async def dequeue_rollout(self, worker_id: str | None = None) -> AttemptedRollout | None:
        """Claim the rollout at the head of the queue with a new attempt, or None when the queue is empty."""
        raise _abstract("dequeue_rollout")

    async def dequeue_many_rollouts(
        self, *, limit: int = 1, worker_id: str | None = None
    ) -> Sequence[AttemptedRollout]:
        """Claim up to `limit` rollouts from the head of the queue, in FIFO order."""
        raise _abstract("dequeue_many_rollouts")

    async def start_attempt(self, rollout_id: str, worker_id: str | None = None) -> AttemptedRollout:
        """Create a new attempt for any rollout (a manual retry that ignores `max_attempts`)."""
        raise _abstract("start_attempt")

    async def query_rollouts(
        self,
        *,
        status_in: Sequence[RolloutStatus] | None = None,
        rollout_id_in: Sequence[str] | None = None,
        rollout_id_contains: str | None = None,
        mode_in: Sequence[RolloutMode] | None = None,
        start_time_from: float | None = None,
        start_time_to: float | None = None,
        filter_logic: Literal["and", "or"] = "and",
        sort_by: str | None = None,
        sort_order: Literal["asc", "desc"] = "asc",
        limit: int = -1,
        offset: int = 0,
        status: Sequence[RolloutStatus] | None = None,
        rollout_ids: Sequence[str] | None = None,
    ) -> PaginatedResult[Rollout]:
        """Rollouts matching the filters (with their latest attempt attached when they have one).

        Filters: `status_in`, `rollout_id_in` (membership), `rollout_id_contains` (substring), `mode_in` (rollouts
        without a mode never match) and the start-time window `start_time_from <= start_time < start_time_to`
        (either bound optional; the window counts as one filter). Given filters are combined by `filter_logic`.
        Without `sort_by` the order is insertion order (and `sort_order` is ignored); ties of a sort keep it.
        A bad status, mode or non-finite time raises ValueError naming the argument.
        """
        raise _abstract("query_rollouts")

    async def get_rollout_by_id(self, rollout_id: str) -> Rollout | None:
        """The rollout (with its latest attempt when it has one), or None if unknown."""
        raise _abstract("get_rollout_by_id")

    async def update_rollout(
        self,
        rollout_id: str,
        input: TaskInput = UNSET,
        mode: RolloutMode | None = UNSET,
        resources_id: str | None = UNSET,
        status: RolloutStatus = UNSET,
        config: RolloutConfig = UNSET,
        metadata: dict[str, Any] | None = UNSET,
    ) -> Rollout:
        """Replace the given fields of a rollout; a terminal status stamps `end_time` and wakes waiters."""
        raise _abstract("update_rollout")

    # -- attempts ---------------------------------------------------------------------------------------------
    async def query_attempts(
        self,
        rollout_id: str,
        *,
        sort_by: str | None = "sequence_id",
        sort_order: Literal["asc", "desc"] = "asc",
        limit: int = -1,
        offset: int = 0,
    ) -> PaginatedResult[Attempt]:
        """The attempts of a rollout (empty for an unknown rollout)."""
        raise _abstract("query_attempts")

    async def get_latest_attempt(self, rollout_id: str) -> Attempt | None:
        """The attempt with the highest sequence id, or None."""
        raise _abstract("get_latest_attempt")

    async def update_attempt(
        self,
        rollout_id: str,
        attempt_id: str,
        status: AttemptStatus = UNSET,
        worker_id: str = UNSET,
        last_heartbeat_time: float = UNSET,
        metadata: dict[str, Any] = UNSET,
    ) -> Attempt:
        """Set fields of an attempt (`attempt_id` may be "latest"); the latest attempt's status drives the rollout."""
        raise _abstract("update_attempt")

    # -- spans ------------------------------------------------------------------------------------------------
    async def add_span(self, span: Span) -> Span | None:
        """Store a span; returns None when a span with the same id already exists for that attempt."""
        raise _abstract("add_span")

    async def add_span_json(self, span: Span, payload: bytes) -> Span | None:
        """`add_span` for a span just validated from the JSON `payload` (AGL extension, used by the server).

        A store that keeps spans as JSON may keep `payload` as it is instead of encoding `span` again; reads see
        the same span either way. By default this is `add_span(span)`.
        """
        return await self.add_span(span)

    async def add_many_spans(self, spans: Sequence[Span]) -> Sequence[Span]:
        """Store several spans; returns those stored (duplicates skipped)."""
        raise _abstract("add_many_spans")

    async def add_otel_span(
        self, rollout_id: str, attempt_id: str, readable_span: Any, sequence_id: int | None = None
    ) -> Span | None:
        """Convert an OpenTelemetry `ReadableSpan` and store it."""
        if sequence_id is None:
            sequence_id = await self.get_next_span_sequence_id(rollout_id, attempt_id)
        span = Span.from_opentelemetry(readable_span, rollout_id, attempt_id, sequence_id)
        return await self.add_span(span)

    async def get_next_span_sequence_id(self, rollout_id: str, attempt_id: str) -> int:
        """Allocate the next span sequence id of a rollout (one counter per rollout, first id 1)."""
        raise _abstract("get_next_span_sequence_id")

    async def get_many_span_sequence_ids(self, rollout_attempt_ids: Sequence[tuple[str, str]]) -> Sequence[int]:
        """Allocate one sequence id per (rollout, attempt) pair, consecutive per rollout in request order."""
        raise _abstract("get_many_span_sequence_ids")

    async def query_spans(
        self,
        rollout_id: str,
        attempt_id: str | None = None,
        *,
        trace_id: str | None = None,
        trace_id_contains: str | None = None,
        span_id: str | None = None,
        span_id_contains: str | None = None,
        parent_id: str | None = None,
        parent_id_contains: str | None = None,
        name: str | None = None,
        name_contains: str | None = None,
        filter_logic: Literal["and", "or"] = "and",
        limit: int = -1,
        offset: int = 0,
        sort_by: str | None = "sequence_id",
        sort_order: Literal["asc", "desc"] = "asc",
    ) -> PaginatedResult[Span]:
        """Spans of a rollout: of one attempt, of the latest attempt ("latest"), or of all attempts (None)."""
        raise _abstract("query_spans")

    # -- resources --------------------------------------------------------------------------------------------
    async def add_resources(self, resources: NamedResources) -> ResourcesUpdate:
        """Store a new resources snapshot (version 1); it becomes the latest."""
        raise _abstract("add_resources")

    async def update_resources(self, resources_id: str, resources: NamedResources) -> ResourcesUpdate:
        """Replace a snapshot's resources (version + 1), or create it; it becomes the latest."""
        raise _abstract("update_resources")

    async def get_resources_by_id(self, resources_id: str) -> ResourcesUpdate | None:
        """A resources snapshot by id, or None."""
        raise _abstract("get_resources_by_id")

    async def get_latest_resources(self) -> ResourcesUpdate | None:
        """The snapshot most recently added or updated, or None."""
        raise _abstract("get_latest_resources")

    async def query_resources(
        self,
        *,
        resources_id: str | None = None,
        resources_id_contains: str | None = None,
        sort_by: str | None = None,
        sort_order: Literal["asc", "desc"] = "asc",
        limit: int = -1,
        offset: int = 0,
    ) -> PaginatedResult[ResourcesUpdate]:
        """Resources snapshots matching the id filters, in insertion order unless sorted."""
        raise _abstract("query_resources")

    # -- workers ----------------------------------------------------------------------------------------------
    async def update_worker(self, worker_id: str, heartbeat_stats: dict[str, Any] = UNSET) -> Worker:
        """Record a worker heartbeat (creating the worker as `unknown` if new)."""
        raise _abstract("update_worker")

    async def get_worker_by_id(self, worker_id: str) -> Worker | None:
        """A worker by id, or None."""
        raise _abstract("get_worker_by_id")

    async def query_workers(
        self,
        *,
        status_in: Sequence[WorkerStatus] | None = None,
        worker_id_contains: str | None = None,
        filter_logic: Literal["and", "or"] = "and",
        sort_by: str | None = None,
        sort_order: Literal["asc", "desc"] = "asc",
        limit: int = -1,
        offset: int = 0,
    ) -> PaginatedResult[Worker]:
        """Workers matching the filters."""
        raise _abstract("query_workers")

    # -- waiting ----------------------------------------------------------------------------------------------
    async def wait_for_rollouts(self, *, rollout_ids: list[str], timeout: float | None = None) -> list[Rollout]:
        """The rollouts among `rollout_ids` that are finished by the deadline, in input order.

        `timeout=None` waits until all are finished; `timeout <= 0` checks once. Unknown ids are ignored.
        """
        raise _abstract("wait_for_rollouts")

    async def run_health_checks(self) -> None:
        """Apply the timeout / unresponsive rules now (AGL extension; stores without health rules do nothing).

        Stores also apply them lazily at the start of most calls; a server calls this on a timer so a silent or
        stuck attempt is noticed even when nobody calls the store.
        """
        return None

    async def close(self) -> None:
        """Release what the store holds (connections, files, threads)."""
        return None
