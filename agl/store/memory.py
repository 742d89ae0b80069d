"""`InMemoryLightningStore`: the store engine over a driver that holds everything in this process's memory.

The driver's transactions are one `threading.Lock` (never held across an `await`), so the store is safe from several
threads and event loops at once. Indexes keep each call independent of how many rollouts are held: a FIFO queue with
lazy deletion, status/mode buckets and insertion order (`RolloutIndex`), the set of rollouts the health scan watches,
per-rollout span maps, and a heap of rollouts holding spans ordered for eviction to the disk spill.
"""

from __future__ import annotations

import heapq
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from agl.store import state
from agl.store.base import LightningStoreStatistics
from agl.store.budget import MemoryBudget
from agl.store.driver import CommitHook, EncodedSpan, M, ReadTransaction, WriteTransaction
from agl.store.engine import StoreEngine
from agl.store.errors import NotFoundError, StoreFullError
from agl.store.events import StoreEvent
from agl.store.inputs import INT64_MAX, copy_model
from agl.store.query import RolloutFilter
from agl.store.rollout_index import RolloutIndex
from agl.store.spill import MIN_SPILL_BYTES, SpanSpill, remove_stale_spills_once
from agl.types.core import Attempt, Rollout, Worker
from agl.types.resources import ResourcesUpdate
from agl.types.tracer import Span, span_json

__all__ = ["InMemoryLightningStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class _RolloutRecord:
    """Everything the store holds about one rollout."""

    __slots__ = ("attempts", "attempts_by_id", "rollout", "span_bytes", "span_seq", "spans", "spilled")

    def __init__(self, rollout: Rollout) -> None:
        self.rollout = rollout
        self.attempts: list[Attempt] = []
        self.attempts_by_id: dict[str, Attempt] = {}
        self.spans: dict[tuple[str, str], bytes] = {}
        """Spans held in memory, as their JSON (a third of the memory of the parsed model), by (attempt, span) id."""
        self.span_bytes = 0
        self.span_seq = 0
        self.spilled = 0
        """How many of this rollout's spans live in the disk spill."""


def _kept_json(span: Span) -> bytes:
    """The JSON a store keeps for `span`: `span_json`'s, copied to an exact-size bytes object.

    orjson's output holds a buffer of at least 4 KiB; the copy (50 ns for a typical span) still leaves this 1.5x
    faster than pydantic's serializer.
    """
    return bytes(memoryview(span_json(span)))


def _process_rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _no_hook(events: list[StoreEvent], finished: list[str]) -> None:
    return None


class _Read:
    """A read transaction of the memory driver: its lock held."""

    __slots__ = ("_acquire", "_driver", "_release")

    def __init__(self, driver: MemoryDriver) -> None:
        self._driver = driver
        self._acquire = driver.lock.acquire
        self._release = driver.lock.release

    def __enter__(self) -> MemoryDriver:
        self._acquire()
        return self._driver

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._release()


class _Write(_Read):
    """A write transaction of the memory driver: its lock held; what it collected goes to the engine before the
    lock is released."""

    __slots__ = ()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        driver = self._driver
        if not driver.events and not driver.finished:
            self._release()
            return
        # Nothing is rolled back in memory: what changed before an error is reported like any change. Reported
        # under the lock, so listeners see the changes one at a time and in the order they were made.
        events, finished = driver.events, driver.finished
        driver.events, driver.finished = [], []
        try:
            driver.on_commit(events, finished)
        finally:
            self._release()


class MemoryDriver:
    """The in-memory store's storage: records, indexes, queue, spans with their budget and spill, resources, workers.

    It is its own transaction object (`read()` / `write()` hold its lock); see `agl.store.driver`.
    """

    poll_seconds: float | None = None

    def __init__(
        self,
        budget: MemoryBudget,
        span_size: Callable[[Span], int] | None,
        spill_dir: str | None,
        spill_max_bytes: int | None,
        process_memory_limit: int | None,
    ) -> None:
        self.lock = threading.Lock()
        self.on_commit: CommitHook = _no_hook
        self.events: list[StoreEvent] = []
        self.finished: list[str] = []
        self._reader = _Read(self)
        self._writer = _Write(self)

        self.records: dict[str, _RolloutRecord] = {}
        self._index: RolloutIndex[_RolloutRecord] = RolloutIndex()
        self._queue: deque[str] = deque()
        self._queued: set[str] = set()
        self._watched: dict[str, None] = {}
        self.total_attempts = 0
        self.resources: dict[str, ResourcesUpdate] = {}
        self._latest_resources_id: str | None = None
        self.workers: dict[str, Worker] = {}

        self.budget = budget
        self._span_size = span_size
        self.total_spans = 0
        self.total_span_bytes = 0
        self._eviction_heap: list[tuple[float, str]] = []
        self._rss_limit = process_memory_limit
        self.read_rss: Callable[[], int] = _process_rss
        self._span_limit = budget.eviction_bytes
        self._rss_check_every = max(64 * 1024, (process_memory_limit or 0) // 64)
        self._bytes_since_rss_check = 0
        self._spill_dir = spill_dir
        self.spill_max_bytes = spill_max_bytes
        self.spill: SpanSpill | None = None
        self.spilled_rollouts = 0

    # -- pickling: the lock, the hook and pending reports belong to this process ---------------------------------
    def __getstate__(self) -> dict[str, Any]:
        with self.lock:
            if self.spill is not None:
                raise TypeError("An InMemoryLightningStore whose spans spilled to disk cannot be pickled")
            data = self.__dict__.copy()
        for name in ("lock", "on_commit", "_reader", "_writer"):
            data.pop(name)
        return data

    def __setstate__(self, data: dict[str, Any]) -> None:
        self.__dict__.update(data)
        self.lock = threading.Lock()
        self.on_commit = _no_hook
        self._reader = _Read(self)
        self._writer = _Write(self)

    # -- the driver ---------------------------------------------------------------------------------------------
    def bind(self, on_commit: CommitHook) -> None:
        """Set what to call after each write transaction."""
        self.on_commit = on_commit

    def read(self) -> _Read:
        """The lock, held for reading."""
        return self._reader

    def write(self) -> _Write:
        """The lock, held for writing; collected events and finished rollouts go to the hook afterwards."""
        return self._writer

    async def run_read(self, body: Callable[[ReadTransaction], T]) -> T:
        """`body(self)` under the lock, at once on the caller (memory reads never wait on I/O)."""
        with self._reader as tx:
            return body(tx)

    async def run_write(self, body: Callable[[WriteTransaction], T]) -> T:
        """`body(self)` under the lock, at once on the caller; what it changed before an exception stays changed."""
        with self._writer as tx:
            return body(tx)

    def encode_span(self, span: Span, payload: bytes | None) -> EncodedSpan:
        """The span, its JSON (`payload` kept as it is when given) and the bytes it counts against the budget."""
        if payload is None:
            payload = _kept_json(span)
        estimate = self._span_size
        return span, payload, len(payload) if estimate is None else max(0, int(estimate(span)))

    def close(self) -> None:
        """Delete the disk spill, if one was made."""
        with self.lock:
            spill, self.spill = self.spill, None
        if spill is not None:
            spill.close()

    # -- reads --------------------------------------------------------------------------------------------------
    @staticmethod
    def detach(model: M) -> M:
        """A shallow copy: the stored models stay the store's."""
        return copy_model(model)

    def get_rollout(self, rollout_id: str) -> Rollout | None:
        """A rollout by id."""
        record = self.records.get(rollout_id)
        return None if record is None else record.rollout

    def get_rollouts(self, rollout_ids: Sequence[str]) -> dict[str, Rollout]:
        """The known rollouts among `rollout_ids`."""
        records = self.records
        return {rid: records[rid].rollout for rid in rollout_ids if isinstance(rid, str) and rid in records}

    def rollout_statuses(self, rollout_ids: Sequence[str]) -> dict[str, str]:
        """The statuses of the known rollouts among `rollout_ids`."""
        return {rid: rollout.status for rid, rollout in self.get_rollouts(rollout_ids).items()}

    def select_rollouts(
        self, query: RolloutFilter, sort_by: str | None, sort_order: str, limit: int, offset: int
    ) -> tuple[list[Rollout], int]:
        """One page of matching rollouts, answered from the indexes, and the total."""
        records, total = self._index.select(query, sort_by, sort_order, limit, offset)
        return [r.rollout for r in records], total

    def latest_attempt(self, rollout_id: str) -> Attempt | None:
        """The rollout's latest attempt."""
        record = self.records.get(rollout_id)
        return record.attempts[-1] if record is not None and record.attempts else None

    def latest_attempts(self, rollout_ids: Sequence[str]) -> dict[str, Attempt]:
        """Each rollout's latest attempt, for those that have one."""
        records = self.records
        out: dict[str, Attempt] = {}
        for rollout_id in rollout_ids:
            record = records.get(rollout_id)
            if record is not None and record.attempts:
                out[rollout_id] = record.attempts[-1]
        return out

    def latest_sequence_id(self, rollout_id: str) -> int:
        """How many attempts the rollout has (sequence ids count from 1)."""
        record = self.records.get(rollout_id)
        return 0 if record is None else len(record.attempts)

    def get_attempt(self, rollout_id: str, attempt_id: str) -> Attempt | None:
        """An attempt by id."""
        record = self.records.get(rollout_id)
        return None if record is None else record.attempts_by_id.get(attempt_id)

    def attempts(self, rollout_id: str) -> list[Attempt]:
        """The rollout's attempts by sequence id."""
        record = self.records.get(rollout_id)
        return list(record.attempts) if record is not None else []

    def span_payloads(self, rollout_id: str, attempt_id: str | None) -> list[bytes]:
        """The JSON of the rollout's spans, spilled ones first."""
        record = self.records.get(rollout_id)
        if record is None:
            return []
        payloads: list[bytes] = []
        if record.spilled and self.spill is not None:
            payloads = self.spill.read(rollout_id, attempt_id)
        payloads.extend(p for (aid, _), p in record.spans.items() if attempt_id is None or aid == attempt_id)
        return payloads

    def get_resources(self, resources_id: str) -> ResourcesUpdate | None:
        """A resources snapshot by id."""
        return self.resources.get(resources_id)

    def all_resources(self) -> list[ResourcesUpdate]:
        """Every snapshot in insertion order."""
        return list(self.resources.values())

    def latest_resources_id(self) -> str | None:
        """The id of the latest snapshot."""
        return self._latest_resources_id

    def get_worker(self, worker_id: str) -> Worker | None:
        """A worker by id."""
        return self.workers.get(worker_id)

    def all_workers(self) -> list[Worker]:
        """Every worker in insertion order."""
        return list(self.workers.values())

    def any_watched(self) -> bool:
        """Whether the health scan has anything to look at."""
        return bool(self._watched)

    def watched_rollouts(self, rollout_ids: Sequence[str] | None = None) -> list[Rollout]:
        """The watched rollouts (all, or those among `rollout_ids`) in insertion order."""
        records = self.records
        if rollout_ids is None:
            return [records[rid].rollout for rid in self._watched]
        wanted = set(rollout_ids)
        return [records[rid].rollout for rid in self._watched if rid in wanted]

    # -- writes -------------------------------------------------------------------------------------------------
    def insert_rollout(self, rollout: Rollout, watched: bool) -> None:
        """Hold a new rollout."""
        record = _RolloutRecord(rollout)
        self.records[rollout.rollout_id] = record
        self._index.add(record)
        if watched:
            self._watched[rollout.rollout_id] = None

    def put_rollout(self, rollout: Rollout, watched: bool, old_status: str, old_mode: str | None) -> None:
        """Bring the indexes in step with a changed rollout (the record holds the rollout itself)."""
        rollout_id = rollout.rollout_id
        record = self.records[rollout_id]
        if old_status != rollout.status:
            self._index.status_changed(record, old_status)
        if rollout.status in state.FINISHED_STATUSES:
            self._index.ended(record)
        if old_mode != rollout.mode:
            self._index.mode_changed(record, old_mode)
        if watched:
            self._watched[rollout_id] = None
        else:
            self._watched.pop(rollout_id, None)

    def enqueue(self, rollout_id: str) -> None:
        """Append to the queue unless already in it."""
        if rollout_id not in self._queued:
            self._queue.append(rollout_id)
            self._queued.add(rollout_id)

    def claim_next(self) -> Rollout | None:
        """Pop the queue until a rollout still queuing comes out (entries are deleted lazily)."""
        while self._queue:
            rollout_id = self._queue.popleft()
            self._queued.discard(rollout_id)
            record = self.records.get(rollout_id)
            if record is None or record.rollout.status not in state.QUEUING_STATUSES:
                logger.warning("Skipping stale queue entry %s (no longer waiting in the queue)", rollout_id)
                continue
            return record.rollout
        return None

    def insert_attempt(self, attempt: Attempt) -> None:
        """Hold a new attempt (the latest of its rollout)."""
        record = self.records[attempt.rollout_id]
        record.attempts.append(attempt)
        record.attempts_by_id[attempt.attempt_id] = attempt
        self.total_attempts += 1

    def put_attempt(self, attempt: Attempt) -> None:
        """Nothing to do: the record holds the attempt itself."""

    def put_resources(self, update: ResourcesUpdate) -> None:
        """Hold a snapshot (a known id keeps its position) and make it the latest."""
        self.resources[update.resources_id] = update
        self._latest_resources_id = update.resources_id

    def put_worker(self, worker: Worker) -> None:
        """Hold a worker (a known one is the same object)."""
        self.workers[worker.worker_id] = worker

    def replay_kept(self, now: float) -> None:
        """Nothing: idempotency keys are kept by the HTTP app for this store."""

    def keep_answer(self, result: Any, now: float) -> None:
        """Nothing: idempotency keys are kept by the HTTP app for this store."""

    # -- spans --------------------------------------------------------------------------------------------------
    def raise_span_counter(self, rollout_id: str, sequence_id: int) -> None:
        """Raise the rollout's counter to `sequence_id` if it is lower."""
        record = self.records.get(rollout_id)
        if record is not None and sequence_id > record.span_seq:
            record.span_seq = sequence_id

    def allocate_span_sequence_ids(self, counts: Mapping[str, int]) -> dict[str, int]:
        """Advance each rollout's counter by its count (every rollout checked first); each first new id."""
        records = self.records
        for rollout_id, count in counts.items():
            if rollout_id not in records:
                raise NotFoundError("rollout", rollout_id)
            if records[rollout_id].span_seq + count > INT64_MAX:
                raise ValueError(f"span sequence ids of rollout {rollout_id} are exhausted (they stop at {INT64_MAX})")
        first: dict[str, int] = {}
        for rollout_id, count in counts.items():
            record = records[rollout_id]
            first[rollout_id] = record.span_seq + 1
            record.span_seq += count
        return first

    def insert_spans(self, spans: Iterable[EncodedSpan]) -> list[Span]:
        """Keep each span's JSON unless its attempt already has a span with its id (then log and skip it)."""
        stored: list[Span] = []
        for span, payload, size in spans:
            record = self.records[span.rollout_id]
            key = (span.attempt_id, span.span_id)
            if key in record.spans or (
                record.spilled and self.spill is not None and self.spill.contains(span.rollout_id, *key)
            ):
                logger.error(
                    "Duplicate span %s of rollout %s attempt %s ignored", span.span_id, span.rollout_id, span.attempt_id
                )
                continue
            if not record.spans:
                heapq.heappush(self._eviction_heap, (record.rollout.start_time, record.rollout.rollout_id))
            record.spans[key] = payload
            record.span_bytes += size
            self.total_span_bytes += size
            self.total_spans += 1
            stored.append(span)
        return stored

    def reserve_span_bytes(self, size: int) -> None:
        """Spill the oldest rollouts' spans to disk until `size` more bytes fit the memory budget.

        Spills down to the safe threshold once the eviction threshold would be crossed. Raises StoreFullError
        (storing nothing) when the spill's disk budget is spent too.
        """
        if self._rss_limit is None and self.total_span_bytes + size <= self._span_limit:
            return  # the usual case: room (without an RSS limit the span limit is the eviction threshold, fixed)
        budget = self.budget
        if size > budget.eviction_bytes:
            raise ValueError(
                f"these spans take {size} bytes, more than the whole span memory budget "
                f"(eviction_memory_threshold = {budget.eviction_bytes} bytes); send them in smaller batches"
            )
        self._watch_process_memory(size)
        limit = min(budget.eviction_bytes, self._span_limit)
        if self.total_span_bytes + size <= limit:
            return
        safe = min(budget.safe_bytes, int(limit * budget.safe_bytes / budget.eviction_bytes))
        while self.total_span_bytes + size > safe and self._eviction_heap:
            _, rollout_id = self._eviction_heap[0]
            record = self.records.get(rollout_id)
            if record is not None and record.spans:
                try:
                    self._spill_record(record)
                except StoreFullError:
                    break
            heapq.heappop(self._eviction_heap)
        if self.total_span_bytes + size > limit:
            raise StoreFullError(
                f"no room for {size} more span bytes: memory budget {budget.eviction_bytes} bytes is spent and "
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
        rss = self.read_rss()
        ceiling = self.budget.eviction_bytes
        if rss > self._rss_limit:
            current = min(self._span_limit, self.total_span_bytes)
            self._span_limit = max(self._rss_check_every, current - (rss - self._rss_limit))
            logger.debug("process RSS %d > limit %d: span limit now %d bytes", rss, self._rss_limit, self._span_limit)
        elif rss < 0.9 * self._rss_limit and self._span_limit < ceiling:
            self._span_limit = min(ceiling, self._span_limit + (self._rss_limit - rss) // 2)

    def _spill_record(self, record: _RolloutRecord) -> None:
        if self.spill_max_bytes == 0:
            raise StoreFullError("the span memory budget is spent and this store has no disk spill (spill_max_bytes=0)")
        if self.spill is None:
            self.spill = SpanSpill(self._spill_dir, self.spill_max_bytes)
        rollout_id = record.rollout.rollout_id
        count = len(record.spans)
        self.spill.write(rollout_id, record.spans.items(), record.span_bytes)
        logger.debug("Spilled %d spans (%d bytes) of rollout %s", count, record.span_bytes, rollout_id)
        if not record.spilled:
            self.spilled_rollouts += 1
        record.spilled += count
        self.total_span_bytes -= record.span_bytes
        record.spans = {}
        record.span_bytes = 0


class InMemoryLightningStore(StoreEngine):
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
        budget = MemoryBudget.resolve(eviction_memory_threshold, safe_memory_threshold, memory_capacity_bytes)
        if spill_dir is not None and not os.path.isdir(spill_dir):
            raise ValueError(f"spill_dir {spill_dir!r} does not exist or is not a directory")
        if spill_max_bytes is not None and spill_max_bytes != 0 and not MIN_SPILL_BYTES <= spill_max_bytes:
            raise ValueError(
                f"spill_max_bytes must be 0 (no disk spill), at least {MIN_SPILL_BYTES} bytes (an empty spill file "
                f"already takes a few pages), or None; got {spill_max_bytes}"
            )
        if process_memory_limit is not None and process_memory_limit <= 0:
            raise ValueError(f"process_memory_limit must be positive bytes or None, got {process_memory_limit}")
        driver = MemoryDriver(budget, span_size_estimator, spill_dir, spill_max_bytes, process_memory_limit)
        super().__init__(
            driver,
            clock=clock,
            scan_debounce_seconds=scan_debounce_seconds,
            claim_timeout_seconds=claim_timeout_seconds,
        )
        self._memory = driver
        self.tracker: Any = tracker
        self._created = self._clock()
        if spill_max_bytes != 0:
            remove_stale_spills_once(spill_dir)  # spills left by AGL processes that died where this one will spill

    # -- pickling: locks, waiters and listeners belong to this process ------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        data = self.__dict__.copy()
        for name in ("_waiters", "_waiters_lock", "_events"):
            data.pop(name, None)
        return data

    def __setstate__(self, data: dict[str, Any]) -> None:
        self.__dict__.update(data)
        self._rebind()

    @property
    def _read_rss(self) -> Callable[[], int]:
        """How the process's resident memory is read (tests replace it)."""
        return self._memory.read_rss

    @_read_rss.setter
    def _read_rss(self, read: Callable[[], int]) -> None:
        self._memory.read_rss = read

    @property
    def budget(self) -> MemoryBudget:
        """The span memory budget in force."""
        return self._memory.budget

    async def statistics(self) -> LightningStoreStatistics:
        """Sizes of every collection, uptime and span memory use against the budget."""
        memory = self._memory
        with memory.lock:
            spill = memory.spill
            stats = LightningStoreStatistics(
                name=type(self).__name__,
                total_rollouts=len(memory.records),
                total_attempts=memory.total_attempts,
                total_spans=memory.total_spans,
                total_resources=len(memory.resources),
                total_workers=len(memory.workers),
                uptime=self._clock() - self._created,
                total_span_bytes=memory.total_span_bytes,
                spilled_span_bytes=spill.bytes if spill is not None else 0,
                spilled_spans=spill.spans if spill is not None else 0,
                spilled_rollouts=memory.spilled_rollouts,
                eviction_threshold_bytes=memory.budget.eviction_bytes,
                safe_threshold_bytes=memory.budget.safe_bytes,
                memory_capacity_bytes=memory.budget.capacity_bytes,
            )
            # The spill's disk budget left, when known: a spill exists, or one will have a set budget.
            if spill is not None:
                stats["spill_room_bytes"] = spill.room()
            elif memory.spill_max_bytes is not None:
                stats["spill_room_bytes"] = memory.spill_max_bytes
            return stats
