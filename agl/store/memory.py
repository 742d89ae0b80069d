"""`InMemoryLightningStore`: the whole store protocol in one process's memory, O(1) per call.

Every method body is synchronous under one `threading.Lock` (no lock is ever held across an `await`), so the store
is safe from several threads and event loops at once. Indexes keep each call independent of how many rollouts are
held: a FIFO queue with lazy deletion, a status index, the set of running rollouts that have health rules, per-rollout
span maps, and a heap of rollouts holding spans ordered for eviction.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

from pydantic import TypeAdapter

from agl.store import state
from agl.store.base import LightningStore, LightningStoreCapabilities, LightningStoreStatistics
from agl.store.budget import MemoryBudget
from agl.store.errors import NotFoundError, StaleAttemptError, StoreFullError
from agl.store.events import AttemptTransition, RolloutTransition, StaleWriteRefused
from agl.store.inputs import (
    as_config,
    as_metadata,
    assign,
    build_model,
    check_attempt_update,
    check_mode,
    check_worker_id,
    copy_model,
    new_id,
    rollout_changes,
)
from agl.store.query import (
    check_page,
    check_sort_order,
    compile_filter,
    paginate,
    rollout_filter,
    sort_items,
    span_filter,
    worker_filter,
)
from agl.store.rollout_index import RolloutIndex
from agl.store.spill import MIN_SPILL_BYTES, SpanSpill, remove_stale_spills_once
from agl.store.waiters import CompletionWaiters
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
    Worker,
    WorkerStatus,
)
from agl.types.resources import NamedResources, ResourcesUpdate
from agl.types.tracer import Span, span_json

__all__ = ["InMemoryLightningStore"]

logger = logging.getLogger(__name__)

_named_resources_adapter: TypeAdapter[NamedResources] = TypeAdapter(NamedResources)
_MODES = ("train", "val", "test")


class _RolloutRecord:
    """Everything the store holds about one rollout."""

    __slots__ = ("attempts", "attempts_by_id", "order", "rollout", "span_bytes", "span_seq", "spans", "spilled")

    def __init__(self, rollout: Rollout, order: int) -> None:
        self.rollout = rollout
        self.order = order
        self.attempts: list[Attempt] = []
        self.attempts_by_id: dict[str, Attempt] = {}
        self.spans: dict[tuple[str, str], bytes] = {}
        """Spans held in memory, as their JSON (a third of the memory of the parsed model), by (attempt, span) id."""
        self.span_bytes = 0
        self.span_seq = 0
        self.spilled = 0
        """How many of this rollout's spans live in the disk spill."""

    def latest(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None


def _kept_json(span: Span) -> bytes:
    """The JSON a store keeps for `span`: `span_json`'s, copied to an exact-size bytes object.

    orjson's output holds a buffer of at least 4 KiB; the copy (50 ns for a typical span) still leaves this 1.5x
    faster than pydantic's serializer.
    """
    return bytes(memoryview(span_json(span)))


class InMemoryLightningStore(LightningStore):
    """A fast, thread-safe store held in memory. Span memory is capped by a budget: past it, the oldest rollouts'
    spans move to a disk spill and stay queryable; when the spill's budget is spent too, new spans are refused with
    a retryable `StoreFullError` and nothing stored is lost.

    Args:
        thread_safe: kept for compatibility; this store is always safe across threads and event loops.
        eviction_memory_threshold: span bytes above which spans are evicted, as a ratio of `memory_capacity_bytes`
            (float) or bytes (int). Default 0.7 of physical memory.
        safe_memory_threshold: eviction stops once span bytes are at or below this. Default 0.8 × eviction.
        span_size_estimator: bytes to count for a span; default is its exact serialized JSON size.
        tracker: accepted for Agent Lightning compatibility (its metrics tracker) and kept as `self.tracker`; the
            store does not call it (AGL reports status changes through `agl.store.events`).
        scan_debounce_seconds: minimum time between two health scans (timeout / unresponsive); ≤ 0 scans every call.
        clock: source of the current time in epoch seconds (tests pass a controllable clock).
        memory_capacity_bytes: the capacity ratios refer to; default is the machine's physical memory.
        spill_dir: where to create the private directory that spilled spans go to (default: the temp dir). Spill
            directories there left by AGL processes that died without cleaning up are removed when the store starts.
        spill_max_bytes: disk budget of the spill: the most bytes its files may take on disk (0: no spill; else at
            least 64 KiB; default: whatever keeps 1 GiB of the disk free). A spill that would pass it is refused
            with `StoreFullError` and nothing is written.
        process_memory_limit: resident bytes the whole process should stay near; past it, spans spill earlier than
            the span thresholds say (default: none, only span bytes count).
        claim_timeout_seconds: a claimed attempt still `preparing` with no sign of life from its runner (its own or
            its worker's heartbeat) for this long is returned to the queue by the health scan; None or 0 turns it off.
    """

    def __init__(
        self,
        *,
        thread_safe: bool = False,
        eviction_memory_threshold: float | int | None = None,
        safe_memory_threshold: float | int | None = None,
        span_size_estimator: Callable[[Span], int] | None = None,
        tracker: Any = None,
        scan_debounce_seconds: float = 10.0,
        clock: Callable[[], float] | None = None,
        memory_capacity_bytes: int | None = None,
        spill_dir: str | None = None,
        spill_max_bytes: int | None = None,
        process_memory_limit: int | None = None,
        claim_timeout_seconds: float | None = state.DEFAULT_CLAIM_TIMEOUT_SECONDS,
    ) -> None:
        self._claim_timeout = state.check_claim_timeout(claim_timeout_seconds)
        self.tracker: Any = tracker
        self._clock: Callable[[], float] = clock or time.time
        self._budget = MemoryBudget.resolve(eviction_memory_threshold, safe_memory_threshold, memory_capacity_bytes)
        self._span_size: Callable[[Span], int] | None = span_size_estimator
        self._scan_debounce = float(scan_debounce_seconds)
        self._lock = threading.Lock()
        self._created = self._clock()
        self._last_scan: float | None = None
        self._order = 0

        self._records: dict[str, _RolloutRecord] = {}
        self._index: RolloutIndex[_RolloutRecord] = RolloutIndex()
        self._queue: deque[str] = deque()
        self._queued: set[str] = set()
        self._watched: dict[str, None] = {}
        self._total_attempts = 0

        self._total_spans = 0
        self._total_span_bytes = 0
        self._eviction_heap: list[tuple[float, str]] = []
        if spill_dir is not None and not os.path.isdir(spill_dir):
            raise ValueError(f"spill_dir {spill_dir!r} does not exist or is not a directory")
        if spill_max_bytes is not None and spill_max_bytes != 0 and not MIN_SPILL_BYTES <= spill_max_bytes:
            raise ValueError(
                f"spill_max_bytes must be 0 (no disk spill), at least {MIN_SPILL_BYTES} bytes (an empty spill file "
                f"already takes a few pages), or None; got {spill_max_bytes}"
            )
        if process_memory_limit is not None and process_memory_limit <= 0:
            raise ValueError(f"process_memory_limit must be positive bytes or None, got {process_memory_limit}")
        self._rss_limit = process_memory_limit
        self._read_rss: Callable[[], int] = _process_rss
        self._span_limit = self._budget.eviction_bytes
        self._rss_check_every = max(64 * 1024, (process_memory_limit or 0) // 64)
        self._bytes_since_rss_check = 0
        self._spill_dir = spill_dir
        if spill_max_bytes != 0:
            remove_stale_spills_once(spill_dir)  # spills left by AGL processes that died where this one will spill
        self._spill_max_bytes = spill_max_bytes
        self._spill: SpanSpill | None = None
        self._spilled_rollouts = 0

        self._resources: dict[str, ResourcesUpdate] = {}
        self._latest_resources_id: str | None = None
        self._workers: dict[str, Worker] = {}
        self._waiters = CompletionWaiters()

    # -- pickling: locks and waiters belong to this process ---------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        with self._lock:
            if self._spill is not None:
                raise TypeError("An InMemoryLightningStore whose spans spilled to disk cannot be pickled")
            data = self.__dict__.copy()
        data["_lock"] = None
        data["_waiters"] = CompletionWaiters()
        data.pop("_events", None)  # listeners belong to this process
        return data

    def __setstate__(self, data: dict[str, Any]) -> None:
        self.__dict__.update(data)
        self._lock = threading.Lock()

    async def close(self) -> None:
        """Delete the disk spill, if one was made."""
        with self._lock:
            spill, self._spill = self._spill, None
        if spill is not None:
            spill.close()

    @property
    def capabilities(self) -> LightningStoreCapabilities:
        """Thread-safe and async-safe; not shared across processes."""
        return LightningStoreCapabilities(thread_safe=True, async_safe=True, zero_copy=False, otlp_traces=False)

    @property
    def budget(self) -> MemoryBudget:
        """The span memory budget in force."""
        return self._budget

    async def statistics(self) -> LightningStoreStatistics:
        """Sizes of every collection, uptime and span memory use against the budget."""
        with self._lock:
            stats = LightningStoreStatistics(
                name=type(self).__name__,
                total_rollouts=len(self._records),
                total_attempts=self._total_attempts,
                total_spans=self._total_spans,
                total_resources=len(self._resources),
                total_workers=len(self._workers),
                uptime=self._clock() - self._created,
                total_span_bytes=self._total_span_bytes,
                spilled_span_bytes=self._spill.bytes if self._spill is not None else 0,
                spilled_spans=self._spill.spans if self._spill is not None else 0,
                spilled_rollouts=self._spilled_rollouts,
                eviction_threshold_bytes=self._budget.eviction_bytes,
                safe_threshold_bytes=self._budget.safe_bytes,
                memory_capacity_bytes=self._budget.capacity_bytes,
            )
            # The spill's disk budget left, when known: a spill exists, or one will have a set budget.
            if self._spill is not None:
                stats["spill_room_bytes"] = self._spill.room()
            elif self._spill_max_bytes is not None:
                stats["spill_room_bytes"] = self._spill_max_bytes
            return stats

    # -- internal helpers (call with the lock held) -----------------------------------------------------------
    def _record(self, rollout_id: str) -> _RolloutRecord:
        record = self._records.get(rollout_id)
        if record is None:
            raise NotFoundError("rollout", rollout_id)
        return record

    @staticmethod
    def _snapshot(record: _RolloutRecord, attempt: Attempt | None = None) -> Rollout:
        """A copy of the rollout, with `attempt` (default: the latest) attached when there is one."""
        attempt = attempt if attempt is not None else record.latest()
        rollout = record.rollout
        if attempt is None:
            return copy_model(rollout)
        fields = dict(rollout.__dict__)
        fields["attempt"] = copy_model(attempt)
        return build_model(AttemptedRollout, fields, rollout.__pydantic_extra__)

    @staticmethod
    def _plain(record: _RolloutRecord) -> Rollout:
        return copy_model(record.rollout)

    def _maybe_scan(self, now: float, *, force: bool = False) -> None:
        if (
            not force
            and self._scan_debounce > 0
            and self._last_scan is not None
            and now - self._last_scan < self._scan_debounce
        ):
            return
        self._last_scan = now
        for rollout_id in list(self._watched):
            record = self._records[rollout_id]
            attempt = record.latest()
            if attempt is None:
                continue
            worker = self._workers.get(attempt.worker_id) if attempt.worker_id else None
            verdict = state.health_verdict(
                attempt,
                record.rollout.config,
                now,
                claim_timeout=self._claim_timeout,
                worker_heartbeat=worker.last_heartbeat_time if worker is not None else None,
            )
            if verdict is not None:
                self._write_attempt_status(record, attempt, verdict[0], now, rollout_status=verdict[1])

    def _set_rollout_status(self, record: _RolloutRecord, status: RolloutStatus, now: float) -> None:
        rollout = record.rollout
        rollout_id = rollout.rollout_id
        old = rollout.status
        if old != status:
            assign(rollout, status=status)
            self._index.status_changed(record, old)
            events = self.events
            if events.active:
                events.emit(RolloutTransition.of(rollout, old, status, now))
        if status in state.FINISHED_STATUSES:
            assign(rollout, end_time=now)
            self._index.ended(record)
            self._waiters.release(rollout_id)
        elif status in state.QUEUING_STATUSES and rollout_id not in self._queued:
            self._queue.append(rollout_id)
            self._queued.add(rollout_id)
        self._refresh_watch(record)

    def _refresh_watch(self, record: _RolloutRecord) -> None:
        """Keep the set of rollouts the health scan must look at in step with status and config."""
        rollout = record.rollout
        if state.watch_rollout(rollout.status, rollout.config, self._claim_timeout):
            self._watched[rollout.rollout_id] = None
        else:
            self._watched.pop(rollout.rollout_id, None)

    def _sync_worker(self, attempt: Attempt, now: float, *, dequeued: bool = False) -> None:
        if not attempt.worker_id:
            return
        fields = state.worker_fields_for_attempt(attempt, now)
        if dequeued:
            fields["last_dequeue_time"] = now
        self._write_worker(attempt.worker_id, fields)

    def _write_worker(self, worker_id: str, fields: dict[str, Any]) -> Worker:
        worker = self._workers.get(worker_id)
        if worker is None:
            worker = Worker(worker_id=worker_id)
            self._workers[worker_id] = worker
        assign(worker, **fields)
        return worker

    def _new_attempt(self, record: _RolloutRecord, worker_id: str | None, now: float) -> Attempt:
        attempt = build_model(
            Attempt,
            {
                "rollout_id": record.rollout.rollout_id,
                "attempt_id": new_id("at-", 4),
                "sequence_id": len(record.attempts) + 1,
                "start_time": now,
                "end_time": None,
                "status": "preparing",
                "worker_id": worker_id,
                "last_heartbeat_time": None,
                "metadata": None,
            },
            {},
        )
        record.attempts.append(attempt)
        record.attempts_by_id[attempt.attempt_id] = attempt
        self._total_attempts += 1
        self._attempt_event(attempt, None, now)
        self._set_rollout_status(record, "preparing", now)
        return attempt

    def _attempt_event(self, attempt: Attempt, old: AttemptStatus | None, now: float) -> None:
        events = self.events
        if events.active and old != attempt.status:
            events.emit(AttemptTransition.of(attempt, old, now))

    def _write_attempt_status(
        self,
        record: _RolloutRecord,
        attempt: Attempt,
        status: AttemptStatus,
        now: float,
        *,
        rollout_status: RolloutStatus | None = None,
    ) -> None:
        """Write an attempt status; the latest attempt drives its rollout (to `rollout_status` if given, else by
        the retry rule)."""
        old = attempt.status
        if status in state.ATTEMPT_END_STATUSES:
            assign(attempt, status=status, end_time=now)
        else:
            assign(attempt, status=status)
        self._attempt_event(attempt, old, now)
        if attempt is record.attempts[-1]:
            new = rollout_status or state.rollout_status_from_attempt(
                status, attempt.sequence_id, record.rollout.config
            )
            if new != record.rollout.status:
                self._set_rollout_status(record, new, now)
        self._sync_worker(attempt, now)

    def _new_rollout(
        self,
        input: TaskInput,
        mode: RolloutMode | None,
        resources_id: str | None,
        config: RolloutConfig | dict[str, Any] | None,
        metadata: dict[str, Any] | None,
        status: RolloutStatus,
        now: float,
    ) -> _RolloutRecord:
        rollout = Rollout(
            rollout_id=new_id("ro-", 6),
            input=input,
            start_time=now,
            mode=check_mode(mode),
            resources_id=resources_id if resources_id is not None else self._latest_resources_id,
            status=status,
            config=as_config(config),
            metadata=as_metadata(metadata),
        )
        self._order += 1
        record = _RolloutRecord(rollout, self._order)
        self._records[rollout.rollout_id] = record
        self._index.add(record)
        events = self.events
        if events.active:
            events.emit(RolloutTransition.of(rollout, None, status, now))
        return record

    def _enqueue(self, record: _RolloutRecord) -> None:
        rollout_id = record.rollout.rollout_id
        self._queue.append(rollout_id)
        self._queued.add(rollout_id)

    def _claim(self, worker_id: str | None, now: float) -> tuple[_RolloutRecord, Attempt] | None:
        while self._queue:
            rollout_id = self._queue.popleft()
            self._queued.discard(rollout_id)
            record = self._records.get(rollout_id)
            if record is None or record.rollout.status not in state.QUEUING_STATUSES:
                logger.warning("Skipping stale queue entry %s (no longer waiting in the queue)", rollout_id)
                continue
            return record, self._new_attempt(record, worker_id, now)
        return None

    async def run_health_checks(self) -> None:
        """Apply the timeout / unresponsive rules to running rollouts now, whatever the debounce says."""
        with self._lock:
            self._maybe_scan(self._clock(), force=True)

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
        check_worker_id(worker_id)
        with self._lock:
            now = self._clock()
            self._maybe_scan(now)
            record = self._new_rollout(input, mode, resources_id, config, metadata, "preparing", now)
            attempt = self._new_attempt(record, worker_id, now)
            self._sync_worker(attempt, now)
            return self._snapshot(record, attempt)  # type: ignore[return-value]

    async def enqueue_rollout(
        self,
        input: TaskInput,
        mode: RolloutMode | None = None,
        resources_id: str | None = None,
        config: RolloutConfig | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Rollout:
        """Create a `queuing` rollout at the tail of the queue."""
        with self._lock:
            now = self._clock()
            self._maybe_scan(now)
            record = self._new_rollout(input, mode, resources_id, config, metadata, "queuing", now)
            self._enqueue(record)
            return self._plain(record)

    async def enqueue_many_rollouts(self, rollouts: Sequence[EnqueueRolloutRequest]) -> Sequence[Rollout]:
        """Enqueue several rollouts in order, all or none; results in input order."""
        requests = [
            r if isinstance(r, EnqueueRolloutRequest) else EnqueueRolloutRequest.model_validate(r) for r in rollouts
        ]
        configs = [as_config(r.config) for r in requests]  # validate everything before storing anything
        for r in requests:
            check_mode(r.mode)
        with self._lock:
            now = self._clock()
            self._maybe_scan(now)
            out: list[Rollout] = []
            for request, config in zip(requests, configs, strict=True):
                record = self._new_rollout(
                    request.input, request.mode, request.resources_id, config, request.metadata, "queuing", now
                )
                self._enqueue(record)
                out.append(self._plain(record))
            return out

    async def dequeue_rollout(self, worker_id: str | None = None) -> AttemptedRollout | None:
        """Claim the rollout at the head of the queue with a new attempt, or None when the queue is empty."""
        check_worker_id(worker_id)
        with self._lock:
            now = self._clock()
            self._maybe_scan(now)
            claimed = self._claim(worker_id, now)
            if claimed is None:
                if worker_id:
                    self._write_worker(
                        worker_id, state.worker_fields_for_empty_dequeue(self._worker_dict(worker_id), now)
                    )
                return None
            record, attempt = claimed
            self._sync_worker(attempt, now, dequeued=True)
            return self._snapshot(record, attempt)  # type: ignore[return-value]

    def _worker_dict(self, worker_id: str) -> dict[str, Any] | None:
        worker = self._workers.get(worker_id)
        return None if worker is None else {"status": worker.status}

    async def dequeue_many_rollouts(
        self, *, limit: int = 1, worker_id: str | None = None
    ) -> Sequence[AttemptedRollout]:
        """Claim up to `limit` rollouts from the head of the queue, in FIFO order."""
        check_worker_id(worker_id)
        if limit <= 0:
            return []
        with self._lock:
            now = self._clock()
            self._maybe_scan(now)
            claimed: list[tuple[_RolloutRecord, Attempt]] = []
            while len(claimed) < limit:
                one = self._claim(worker_id, now)
                if one is None:
                    break
                claimed.append(one)
            if worker_id:
                if claimed:
                    self._sync_worker(claimed[-1][1], now, dequeued=True)
                else:
                    self._write_worker(
                        worker_id, state.worker_fields_for_empty_dequeue(self._worker_dict(worker_id), now)
                    )
            return [self._snapshot(record, attempt) for record, attempt in claimed]  # type: ignore[misc]

    async def start_attempt(self, rollout_id: str, worker_id: str | None = None) -> AttemptedRollout:
        """Create a new attempt for any rollout (a manual retry that ignores `max_attempts`)."""
        check_worker_id(worker_id)
        with self._lock:
            now = self._clock()
            self._maybe_scan(now)
            record = self._record(rollout_id)
            attempt = self._new_attempt(record, worker_id, now)
            self._sync_worker(attempt, now)
            return self._snapshot(record, attempt)  # type: ignore[return-value]

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
        """Rollouts matching the filters (with their latest attempt attached when they have one)."""
        query = rollout_filter(
            status_in=status_in,
            rollout_id_in=rollout_id_in,
            rollout_id_contains=rollout_id_contains,
            filter_logic=filter_logic,
            status=status,
            rollout_ids=rollout_ids,
            mode_in=mode_in,
            start_time_from=start_time_from,
            start_time_to=start_time_to,
        )
        check_page(limit, offset)
        check_sort_order(sort_order)
        with self._lock:
            self._maybe_scan(self._clock())
            records, total = self._index.select(query, sort_by, sort_order, limit, offset)
            items = [self._snapshot(r) for r in records]
        return PaginatedResult[Rollout].model_construct(items=items, limit=limit, offset=offset, total=total)

    async def get_rollout_by_id(self, rollout_id: str) -> Rollout | None:
        """The rollout (with its latest attempt when it has one), or None if unknown."""
        with self._lock:
            self._maybe_scan(self._clock())
            record = self._records.get(rollout_id)
            return None if record is None else self._snapshot(record)

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
        changes = rollout_changes(
            input=input, mode=mode, resources_id=resources_id, status=status, config=config, metadata=metadata
        )
        with self._lock:
            now = self._clock()
            self._maybe_scan(now)
            record = self._record(rollout_id)
            old_mode = record.rollout.mode
            for key, value in changes.items():
                setattr(record.rollout, key, value)
            if record.rollout.mode != old_mode:
                self._index.mode_changed(record, old_mode)
            if status is not UNSET:
                self._set_rollout_status(record, status, now)
            elif "config" in changes:
                self._refresh_watch(record)
            return self._plain(record)

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
        check_page(limit, offset)
        with self._lock:
            self._maybe_scan(self._clock())
            record = self._records.get(rollout_id)
            attempts = [copy_model(a) for a in record.attempts] if record is not None else []
        return paginate(sort_items(attempts, Attempt, sort_by, sort_order), limit, offset)

    async def get_latest_attempt(self, rollout_id: str) -> Attempt | None:
        """The attempt with the highest sequence id, or None."""
        with self._lock:
            self._maybe_scan(self._clock())
            record = self._records.get(rollout_id)
            latest = record.latest() if record is not None else None
            return copy_model(latest) if latest is not None else None

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
        check_attempt_update(
            status=status, worker_id=worker_id, last_heartbeat_time=last_heartbeat_time, metadata=metadata
        )
        with self._lock:
            now = self._clock()
            self._maybe_scan(now)
            record = self._record(rollout_id)
            if not record.attempts:
                raise NotFoundError("attempt", "latest", rollout_id, f"No attempts found for rollout {rollout_id}")
            if attempt_id == "latest":
                attempt = record.attempts[-1]
            else:
                found = record.attempts_by_id.get(attempt_id)
                if found is None:
                    raise NotFoundError("attempt", attempt_id, rollout_id)
                attempt = found
            if status is not UNSET or last_heartbeat_time is not UNSET:
                try:
                    state.check_attempt_holds_rollout(
                        rollout_id, record.rollout.status, attempt.attempt_id, record.attempts[-1].attempt_id
                    )
                except StaleAttemptError as exc:
                    self.events.emit(StaleWriteRefused(rollout_id, exc.attempt_id, exc.current_attempt_id, now))
                    raise
            if worker_id is not UNSET:
                attempt.worker_id = worker_id
            if last_heartbeat_time is not UNSET:
                attempt.last_heartbeat_time = float(last_heartbeat_time) if last_heartbeat_time is not None else None
            if metadata is not UNSET:
                attempt.metadata = metadata
            if status is not UNSET:
                self._write_attempt_status(record, attempt, status, now)
            elif worker_id is not UNSET and worker_id:
                self._sync_worker(attempt, now)
            return copy_model(attempt)

    # -- spans ------------------------------------------------------------------------------------------------
    def _sized(self, spans: Iterable[Span]) -> list[tuple[Span, bytes, int]]:
        """Each span with its JSON (what the store keeps) and the bytes it counts against the budget."""
        sized: list[tuple[Span, bytes, int]] = []
        for span in spans:
            payload = _kept_json(span)
            sized.append((span, payload, self._span_bytes(span, payload)))
        return sized

    def _span_bytes(self, span: Span, payload: bytes) -> int:
        """What `span`, kept as `payload`, counts against the memory budget."""
        estimate = self._span_size
        return len(payload) if estimate is None else max(0, int(estimate(span)))

    def _store_spans(
        self, record: _RolloutRecord, attempt: Attempt, sized: Iterable[tuple[Span, bytes, int]], now: float
    ) -> list[Span]:
        stored = [span for span, payload, size in sized if self._keep_span(record, attempt, span, payload, size)]
        if stored:
            self._heartbeat(record, attempt, now)
        return stored

    def _keep_span(self, record: _RolloutRecord, attempt: Attempt, span: Span, payload: bytes, size: int) -> bool:
        """Keep one span's JSON unless the attempt already has a span with its id (then log and return False)."""
        key = (attempt.attempt_id, span.span_id)
        if key in record.spans or (
            record.spilled and self._spill is not None and self._spill.contains(span.rollout_id, *key)
        ):
            logger.error(
                "Duplicate span %s of rollout %s attempt %s ignored", span.span_id, span.rollout_id, span.attempt_id
            )
            return False
        if not record.spans:
            heapq.heappush(self._eviction_heap, (record.rollout.start_time, record.rollout.rollout_id))
        record.spans[key] = payload
        record.span_bytes += size
        self._total_span_bytes += size
        self._total_spans += 1
        return True

    def _heartbeat(self, record: _RolloutRecord, attempt: Attempt, now: float) -> None:
        """New spans are a heartbeat of their attempt (and may move a preparing rollout/attempt to running)."""
        if attempt.status == "running" and record.rollout.status == "running":  # the usual case, nothing moves
            attempt.__dict__["last_heartbeat_time"] = now
            attempt.__pydantic_fields_set__.add("last_heartbeat_time")
            return
        if not state.attempt_holds_rollout(record.rollout.status, attempt is record.attempts[-1]):
            assign(attempt, last_heartbeat_time=now)  # a stale attempt's late spans are kept but move no status
            return
        old = attempt.status
        assign(attempt, last_heartbeat_time=now, status=state.attempt_status_on_heartbeat(old))
        self._attempt_event(attempt, old, now)
        new = state.rollout_status_on_heartbeat(record.rollout.status)
        if new != record.rollout.status:
            self._set_rollout_status(record, new, now)

    def _make_room(self, incoming: int) -> None:
        """Spill the oldest rollouts' spans to disk until `incoming` bytes fit the memory budget.

        Spills down to the safe threshold once the eviction threshold would be crossed. Raises StoreFullError
        (storing nothing) when the spill's disk budget is spent too.
        """
        if self._rss_limit is None and self._total_span_bytes + incoming <= self._span_limit:
            return  # the usual case: room (without an RSS limit the span limit is the eviction threshold, fixed)
        budget = self._budget
        if incoming > budget.eviction_bytes:
            raise ValueError(
                f"these spans take {incoming} bytes, more than the whole span memory budget "
                f"(eviction_memory_threshold = {budget.eviction_bytes} bytes); send them in smaller batches"
            )
        self._watch_process_memory(incoming)
        limit = min(budget.eviction_bytes, self._span_limit)
        if self._total_span_bytes + incoming <= limit:
            return
        safe = min(budget.safe_bytes, int(limit * budget.safe_bytes / budget.eviction_bytes))
        while self._total_span_bytes + incoming > safe and self._eviction_heap:
            _, rollout_id = self._eviction_heap[0]
            record = self._records.get(rollout_id)
            if record is not None and record.spans:
                try:
                    self._spill_record(record)
                except StoreFullError:
                    break
            heapq.heappop(self._eviction_heap)
        if self._total_span_bytes + incoming > limit:
            raise StoreFullError(
                f"no room for {incoming} more span bytes: memory budget {budget.eviction_bytes} bytes is spent and "
                "the disk spill is full; retry later"
            )

    def _watch_process_memory(self, incoming: int) -> None:
        """Lower the span limit when the process itself is above `process_memory_limit` (and let it recover).

        Span bytes are counted exactly, but a process also holds its interpreter, allocator slack, request buffers
        and records: this keeps the process's resident memory, not just the counted bytes, near the limit. RSS is
        read after every 1/64 of the limit of new span bytes, so the check costs nothing per call.
        """
        if self._rss_limit is None:
            return
        self._bytes_since_rss_check += incoming
        if self._bytes_since_rss_check < self._rss_check_every:
            return
        self._bytes_since_rss_check = 0
        rss = self._read_rss()
        ceiling = self._budget.eviction_bytes
        if rss > self._rss_limit:
            current = min(self._span_limit, self._total_span_bytes)
            self._span_limit = max(self._rss_check_every, current - (rss - self._rss_limit))
            logger.debug("process RSS %d > limit %d: span limit now %d bytes", rss, self._rss_limit, self._span_limit)
        elif rss < 0.9 * self._rss_limit and self._span_limit < ceiling:
            self._span_limit = min(ceiling, self._span_limit + (self._rss_limit - rss) // 2)

    def _spill_record(self, record: _RolloutRecord) -> None:
        if self._spill_max_bytes == 0:
            raise StoreFullError("the span memory budget is spent and this store has no disk spill (spill_max_bytes=0)")
        if self._spill is None:
            self._spill = SpanSpill(self._spill_dir, self._spill_max_bytes)
        rollout_id = record.rollout.rollout_id
        count = len(record.spans)
        self._spill.write(rollout_id, record.spans.items(), record.span_bytes)
        logger.debug("Spilled %d spans (%d bytes) of rollout %s", count, record.span_bytes, rollout_id)
        if not record.spilled:
            self._spilled_rollouts += 1
        record.spilled += count
        self._total_span_bytes -= record.span_bytes
        record.spans = {}
        record.span_bytes = 0

    def _locate(self, rollout_id: str, attempt_id: str) -> tuple[_RolloutRecord, Attempt]:
        record = self._record(rollout_id)
        attempt = record.attempts_by_id.get(attempt_id)
        if attempt is None:
            raise NotFoundError("attempt", attempt_id, rollout_id)
        return record, attempt

    def _raise_seq(self, rollout_id: str, sequence_id: int) -> None:
        record = self._records.get(rollout_id)
        if record is not None and sequence_id > record.span_seq:
            record.span_seq = sequence_id

    async def add_span(self, span: Span) -> Span | None:
        """Store a span; returns None when a span with the same id already exists for that attempt."""
        if not isinstance(span, Span):
            span = Span.model_validate(span)
        return self._add_one(span, _kept_json(span))

    async def add_span_json(self, span: Span, payload: bytes) -> Span | None:
        """`add_span` keeping `payload` (the JSON `span` was just validated from) as it is, instead of re-encoding."""
        return self._add_one(span, payload)

    def _add_one(self, span: Span, payload: bytes) -> Span | None:
        # add_many_spans' steps for one span, without its grouping and lists: the store's most frequent write.
        size = self._span_bytes(span, payload)
        with self._lock:
            self._raise_seq(span.rollout_id, span.sequence_id)
            record, attempt = self._locate(span.rollout_id, span.attempt_id)
            self._make_room(size)
            if not self._keep_span(record, attempt, span, payload, size):
                return None
            self._heartbeat(record, attempt, self._clock())
            return span

    async def add_many_spans(self, spans: Sequence[Span]) -> Sequence[Span]:
        """Store several spans, all validated first; returns those stored (duplicates skipped), grouped by attempt."""
        sized = self._sized(s if isinstance(s, Span) else Span.model_validate(s) for s in spans)
        groups: dict[tuple[str, str], list[tuple[Span, bytes, int]]] = {}
        for item in sized:
            groups.setdefault((item[0].rollout_id, item[0].attempt_id), []).append(item)
        with self._lock:
            now = self._clock()
            for (rollout_id, _), group in groups.items():
                self._raise_seq(rollout_id, max(s.sequence_id for s, _, _ in group))
            located = [(self._locate(rid, aid), group) for (rid, aid), group in groups.items()]
            self._make_room(sum(size for _, _, size in sized))
            stored: list[Span] = []
            for (record, attempt), group in located:
                stored.extend(self._store_spans(record, attempt, group, now))
            return stored

    async def get_next_span_sequence_id(self, rollout_id: str, attempt_id: str) -> int:
        """Allocate the next span sequence id of a rollout (one counter per rollout, first id 1)."""
        with self._lock:
            record = self._records.get(rollout_id)
            if record is None:
                raise NotFoundError("rollout", rollout_id)
            record.span_seq += 1
            return record.span_seq

    async def get_many_span_sequence_ids(self, rollout_attempt_ids: Sequence[tuple[str, str]]) -> Sequence[int]:
        """Allocate one sequence id per (rollout, attempt) pair, consecutive per rollout in request order."""
        with self._lock:
            for rollout_id, _ in rollout_attempt_ids:
                self._record(rollout_id)
            out: list[int] = []
            for rollout_id, _ in rollout_attempt_ids:
                record = self._records[rollout_id]
                record.span_seq += 1
                out.append(record.span_seq)
            return out

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
        check_page(limit, offset)
        predicate = span_filter(
            trace_id=trace_id,
            trace_id_contains=trace_id_contains,
            span_id=span_id,
            span_id_contains=span_id_contains,
            parent_id=parent_id,
            parent_id_contains=parent_id_contains,
            name=name,
            name_contains=name_contains,
            filter_logic=filter_logic,
        )
        payloads: list[bytes] = []
        with self._lock:
            self._maybe_scan(self._clock())
            record = self._records.get(rollout_id)
            if record is not None:
                if attempt_id == "latest":
                    latest = record.latest()
                    attempt_id = latest.attempt_id if latest is not None else None
                    if attempt_id is None:
                        return paginate([], limit, offset)
                if record.spilled and self._spill is not None:
                    payloads = self._spill.read(rollout_id, attempt_id)
                payloads.extend(p for (aid, _), p in record.spans.items() if attempt_id is None or aid == attempt_id)
        # Parsed outside the lock: every caller gets its own copies.
        spans = [Span.model_validate_json(p) for p in payloads]
        if predicate is not None:
            spans = [s for s in spans if predicate(s)]
        return paginate(sort_items(spans, Span, sort_by, sort_order), limit, offset)

    # -- resources --------------------------------------------------------------------------------------------
    async def add_resources(self, resources: NamedResources) -> ResourcesUpdate:
        """Store a new resources snapshot (version 1); it becomes the latest."""
        validated = _named_resources_adapter.validate_python(resources)
        with self._lock:
            now = self._clock()
            update = ResourcesUpdate(
                resources_id=new_id("rs-", 6), create_time=now, update_time=now, version=1, resources=validated
            )
            self._resources[update.resources_id] = update
            self._latest_resources_id = update.resources_id
            return copy_model(update)

    async def update_resources(self, resources_id: str, resources: NamedResources) -> ResourcesUpdate:
        """Replace a snapshot's resources (version + 1), or create it with version 1; it becomes the latest."""
        if not isinstance(resources_id, str) or not resources_id:
            raise ValueError(f"resources_id must be a non-empty string, got {resources_id!r}")
        validated = _named_resources_adapter.validate_python(resources)
        with self._lock:
            now = self._clock()
            self._maybe_scan(now)
            old = self._resources.get(resources_id)
            update = ResourcesUpdate(
                resources_id=resources_id,
                create_time=old.create_time if old is not None else now,
                update_time=now,
                version=old.version + 1 if old is not None else 1,
                resources=validated,
            )
            self._resources[resources_id] = update  # an update keeps the snapshot's insertion position
            self._latest_resources_id = resources_id
            return copy_model(update)

    async def get_resources_by_id(self, resources_id: str) -> ResourcesUpdate | None:
        """A resources snapshot by id, or None."""
        with self._lock:
            update = self._resources.get(resources_id)
            return copy_model(update) if update is not None else None

    async def get_latest_resources(self) -> ResourcesUpdate | None:
        """The snapshot most recently added or updated, or None."""
        with self._lock:
            if self._latest_resources_id is None:
                return None
            return copy_model(self._resources[self._latest_resources_id])

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
        check_page(limit, offset)
        predicate = compile_filter({"resources_id": {"exact": resources_id, "contains": resources_id_contains}})
        with self._lock:
            items = [copy_model(u) for u in self._resources.values() if predicate is None or predicate(u)]
        return paginate(sort_items(items, ResourcesUpdate, sort_by, sort_order), limit, offset)

    # -- workers ----------------------------------------------------------------------------------------------
    async def update_worker(self, worker_id: str, heartbeat_stats: dict[str, Any] = UNSET) -> Worker:
        """Record a worker heartbeat (creating the worker as `unknown` if new); never changes its status."""
        if not isinstance(worker_id, str) or not worker_id:
            raise ValueError(f"worker_id must be a non-empty string, got {worker_id!r}")
        if heartbeat_stats is not UNSET and heartbeat_stats is not None and not isinstance(heartbeat_stats, dict):
            raise ValueError(f"heartbeat_stats must be a dict, got {type(heartbeat_stats).__name__}")
        with self._lock:
            fields: dict[str, Any] = {"last_heartbeat_time": self._clock()}
            if heartbeat_stats is not UNSET:
                fields["heartbeat_stats"] = dict(heartbeat_stats) if heartbeat_stats is not None else None
            return copy_model(self._write_worker(worker_id, fields))

    async def get_worker_by_id(self, worker_id: str) -> Worker | None:
        """A worker by id, or None."""
        with self._lock:
            worker = self._workers.get(worker_id)
            return copy_model(worker) if worker is not None else None

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
        check_page(limit, offset)
        predicate = worker_filter(status_in=status_in, worker_id_contains=worker_id_contains, filter_logic=filter_logic)
        with self._lock:
            self._maybe_scan(self._clock())
            items = [copy_model(w) for w in self._workers.values() if predicate is None or predicate(w)]
        return paginate(sort_items(items, Worker, sort_by, sort_order), limit, offset)

    # -- waiting ----------------------------------------------------------------------------------------------
    async def wait_for_rollout(self, rollout_id: str, timeout: float | None = None) -> Rollout | None:
        """The rollout once it is finished, or None if it is not finished within `timeout` seconds (None: wait
        as long as it takes)."""
        done = await self.wait_for_rollouts(rollout_ids=[rollout_id], timeout=timeout)
        return done[0] if done else None

    async def wait_for_rollouts(self, *, rollout_ids: list[str], timeout: float | None = None) -> list[Rollout]:
        """The rollouts among `rollout_ids` that are finished by the deadline, in input order.

        Wakes as soon as the last of them finishes; `timeout=None` waits for all, `timeout <= 0` checks once.
        Unknown ids are ignored.
        """
        if timeout is not None and timeout < 0:
            timeout = 0
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        futures: list[tuple[str, asyncio.Future[None]]] = []
        try:
            with self._lock:
                self._maybe_scan(self._clock())
                if timeout != 0:
                    for rollout_id in dict.fromkeys(rollout_ids):
                        record = self._records.get(rollout_id)
                        if record is not None and record.rollout.status not in state.FINISHED_STATUSES:
                            future = self._waiters.add(rollout_id, loop)
                            futures.append((rollout_id, future))
            pending = {f for _, f in futures}
            while pending:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    break
                # Health rules only fire when someone scans: wake now and then to scan while rules are pending.
                wake = remaining
                if self._watched:
                    slice_ = max(self._scan_debounce, 0.25)
                    wake = slice_ if wake is None else min(wake, slice_)
                _, pending = await asyncio.wait(pending, timeout=wake)
                if pending and self._watched:
                    with self._lock:
                        self._maybe_scan(self._clock())
        finally:
            if futures:
                with self._lock:
                    for rollout_id, future in futures:
                        self._waiters.discard(rollout_id, future)
        with self._lock:
            out: list[Rollout] = []
            for rollout_id in rollout_ids:
                record = self._records.get(rollout_id)
                if record is not None and record.rollout.status in state.FINISHED_STATUSES:
                    out.append(self._plain(record))
            return out


def _process_rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)
