"""`StoreEngine`: the store protocol's rules, written once over a storage driver (`agl.store.driver`).

Dequeue order and claiming, the retry rule and the health scan (`agl.store.state`), fencing of stale attempts,
span sequence ids, query arguments, filters and pages (`agl.store.query`), workers and their status fields,
resources, status-change events and waiting for rollouts are all here; a backend (`InMemoryLightningStore`,
`SqliteLightningStore`) is a driver plus its public constructor.

Each transaction's work is a synchronous closure handed to the driver (`run_read` / `run_write`), which decides
where it runs (inline for memory, off the event loop for SQLite); nothing in a closure awaits. Events and waiter
wake-ups of a write are collected in its transaction and delivered once it has committed, in commit order (the
driver calls back before that write's `run_write` returns).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, Literal

from pydantic import TypeAdapter

from agl.store import state
from agl.store.base import LightningStore, LightningStoreCapabilities
from agl.store.driver import EncodedSpan, ReadTransaction, StorageDriver, WriteTransaction
from agl.store.errors import NotFoundError, StaleAttemptError
from agl.store.events import AttemptTransition, RolloutTransition, StaleWriteRefused, StoreEvent
from agl.store.inputs import (
    as_config,
    as_metadata,
    assign,
    build_model,
    check_attempt_update,
    check_int64,
    check_mode,
    check_worker_id,
    new_id,
    rollout_changes,
)
from agl.store.query import (
    check_page,
    check_sort_field,
    check_sort_order,
    compile_filter,
    paginate,
    rollout_filter,
    sort_items,
    span_filter,
    worker_filter,
)
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
from agl.types.tracer import Span

__all__ = ["StoreEngine"]

logger = logging.getLogger(__name__)

_named_resources_adapter: TypeAdapter[NamedResources] = TypeAdapter(NamedResources)

Verdict = tuple[AttemptStatus, RolloutStatus | None]


class StoreEngine(LightningStore):
    """A `LightningStore` whose rules run over `driver`; backends subclass it with their driver and constructor.

    Args:
        driver: the storage.
        clock: source of the current time in epoch seconds.
        scan_debounce_seconds: minimum time between two health scans; ≤ 0 scans on every call.
        claim_timeout_seconds: how long a claimed attempt may stay `preparing` without a sign of life from its runner
            before the health scan returns it to the queue; None or 0 turns it off.
    """

    def __init__(
        self,
        driver: StorageDriver,
        *,
        clock: Callable[[], float] | None,
        scan_debounce_seconds: float,
        claim_timeout_seconds: float | None,
    ) -> None:
        self._claim_timeout = state.check_claim_timeout(claim_timeout_seconds)
        self._clock: Callable[[], float] = clock or time.time
        self._scan_debounce = float(scan_debounce_seconds)
        self._last_scan: float | None = None
        self._driver = driver
        self._waiters = CompletionWaiters()
        self._waiters_lock = threading.Lock()
        driver.bind(self._committed)

    def _rebind(self) -> None:
        """Process-local parts after unpickling: waiters, their lock, the commit hook."""
        self._waiters = CompletionWaiters()
        self._waiters_lock = threading.Lock()
        self._driver.bind(self._committed)

    @property
    def capabilities(self) -> LightningStoreCapabilities:
        """Thread-safe and async-safe; not a zero-copy store shared across processes."""
        return LightningStoreCapabilities(thread_safe=True, async_safe=True, zero_copy=False, otlp_traces=False)

    async def close(self) -> None:
        """Release what the driver holds."""
        self._driver.close()

    # -- after a commit ---------------------------------------------------------------------------------------
    def _committed(self, events: list[StoreEvent], finished: list[str]) -> None:
        if finished:
            with self._waiters_lock:
                for rollout_id in finished:
                    self._waiters.release(rollout_id)
        if events:
            emitter = self.events
            for event in events:
                emitter.emit(event)

    # -- rules applied inside a write transaction -------------------------------------------------------------
    def _watched(self, rollout: Rollout) -> bool:
        return state.watch_rollout(rollout.status, rollout.config, self._claim_timeout)

    def _set_rollout_status(
        self, tx: WriteTransaction, rollout: Rollout, status: RolloutStatus, now: float, old: RolloutStatus
    ) -> None:
        """Write `status` (the rollout was in `old`): a terminal one stamps `end_time` and wakes waiters after the
        commit, a queuing one puts the rollout in the queue (an entry still there keeps its position)."""
        assign(rollout, status=status)
        if old != status and self.events.active:
            tx.events.append(RolloutTransition.of(rollout, old, status, now))
        if status in state.FINISHED_STATUSES:
            assign(rollout, end_time=now)
            tx.finished.append(rollout.rollout_id)
        elif status in state.QUEUING_STATUSES:
            tx.enqueue(rollout.rollout_id)
        tx.put_rollout(rollout, self._watched(rollout), old, rollout.mode)

    def _attempt_event(self, tx: WriteTransaction, attempt: Attempt, old: AttemptStatus | None, now: float) -> None:
        if old != attempt.status and self.events.active:
            tx.events.append(AttemptTransition.of(attempt, old, now))

    def _write_worker(self, tx: WriteTransaction, worker_id: str, fields: dict[str, Any]) -> Worker:
        worker = tx.get_worker(worker_id)
        if worker is None:
            worker = Worker(worker_id=worker_id)
        assign(worker, **fields)
        tx.put_worker(worker)
        return worker

    def _sync_worker(self, tx: WriteTransaction, attempt: Attempt, now: float, *, dequeued: bool = False) -> None:
        """Set the fields of the worker holding `attempt` that follow from the attempt's status."""
        if not attempt.worker_id:
            return
        fields = state.worker_fields_for_attempt(attempt, now)
        if dequeued:
            fields["last_dequeue_time"] = now
        self._write_worker(tx, attempt.worker_id, fields)

    def _empty_dequeue(self, tx: WriteTransaction, worker_id: str, now: float) -> None:
        worker = tx.get_worker(worker_id)
        current = None if worker is None else {"status": worker.status}
        self._write_worker(tx, worker_id, state.worker_fields_for_empty_dequeue(current, now))

    def _apply_attempt_status(
        self,
        tx: WriteTransaction,
        rollout: Rollout,
        attempt: Attempt,
        status: AttemptStatus,
        now: float,
        *,
        latest: bool,
        rollout_status: RolloutStatus | None = None,
    ) -> None:
        """Write an attempt status (then the caller stores the attempt); the latest attempt drives its rollout (to
        `rollout_status` if given, else by the retry rule)."""
        old = attempt.status
        if status in state.ATTEMPT_END_STATUSES:
            assign(attempt, status=status, end_time=now)
        else:
            assign(attempt, status=status)
        self._attempt_event(tx, attempt, old, now)
        if latest:
            new = rollout_status or state.rollout_status_from_attempt(status, attempt.sequence_id, rollout.config)
            if new != rollout.status:
                self._set_rollout_status(tx, rollout, new, now, rollout.status)
        self._sync_worker(tx, attempt, now)

    def _new_rollout(
        self,
        tx: WriteTransaction,
        input: TaskInput,
        mode: RolloutMode | None,
        resources_id: str | None,
        config: RolloutConfig | dict[str, Any] | None,
        metadata: dict[str, Any] | None,
        status: RolloutStatus,
        now: float,
    ) -> Rollout:
        rollout = Rollout(
            rollout_id=new_id("ro-", 6),
            input=input,
            start_time=now,
            mode=check_mode(mode),
            resources_id=resources_id if resources_id is not None else tx.latest_resources_id(),
            status=status,
            config=as_config(config),
            metadata=as_metadata(metadata),
        )
        tx.insert_rollout(rollout, self._watched(rollout))
        if self.events.active:
            tx.events.append(RolloutTransition.of(rollout, None, status, now))
        if status in state.QUEUING_STATUSES:
            tx.enqueue(rollout.rollout_id)
        return rollout

    def _attempt_in(self, tx: WriteTransaction, rollout: Rollout, worker_id: str | None, now: float) -> Rollout:
        """Start a new attempt of `rollout` inside `tx`, sync its worker, keep the answer under the request's key."""
        attempt = self._new_attempt(tx, rollout, worker_id, now)
        self._sync_worker(tx, attempt, now)
        started = self._snapshot(tx, rollout, attempt)
        tx.keep_answer(started, now)
        return started

    def _new_attempt(self, tx: WriteTransaction, rollout: Rollout, worker_id: str | None, now: float) -> Attempt:
        attempt = build_model(
            Attempt,
            {
                "rollout_id": rollout.rollout_id,
                "attempt_id": new_id("at-", 4),
                "sequence_id": tx.latest_sequence_id(rollout.rollout_id) + 1,
                "start_time": now,
                "end_time": None,
                "status": "preparing",
                "worker_id": worker_id,
                "last_heartbeat_time": None,
                "metadata": None,
            },
            {},
        )
        tx.insert_attempt(attempt)
        self._attempt_event(tx, attempt, None, now)
        self._set_rollout_status(tx, rollout, "preparing", now, rollout.status)
        return attempt

    def _claim(self, tx: WriteTransaction, worker_id: str | None, now: float) -> tuple[Rollout, Attempt] | None:
        rollout = tx.claim_next()
        if rollout is None:
            return None
        return rollout, self._new_attempt(tx, rollout, worker_id, now)

    @staticmethod
    def _snapshot(tx: ReadTransaction, rollout: Rollout, attempt: Attempt | None) -> Rollout:
        """What a caller gets for a rollout: a copy, with `attempt` attached when there is one."""
        if attempt is None:
            return tx.detach(rollout)
        fields = dict(rollout.__dict__)
        fields["attempt"] = tx.detach(attempt)
        return build_model(AttemptedRollout, fields, rollout.__pydantic_extra__)

    @staticmethod
    def _rollout(tx: ReadTransaction, rollout_id: str) -> Rollout:
        rollout = tx.get_rollout(rollout_id)
        if rollout is None:
            raise NotFoundError("rollout", rollout_id)
        return rollout

    # -- the health scan ----------------------------------------------------------------------------------------
    async def _maybe_scan(self, now: float, *, force: bool = False) -> None:
        """Apply the health rules to the watched rollouts, unless a scan ran within the debounce."""
        last = self._last_scan
        if not force and self._scan_debounce > 0 and last is not None and now - last < self._scan_debounce:
            return
        self._last_scan = now

        def judge(tx: ReadTransaction) -> list[str]:
            if not tx.any_watched():
                return []
            return [rollout.rollout_id for rollout, _, _ in self._health_verdicts(tx, now)]

        # Judged in a read transaction first: most scans change nothing and then take no write lock.
        due = await self._driver.run_read(judge)
        if not due:
            return

        def apply(tx: WriteTransaction) -> None:  # judged again in the write: the rows may have moved meanwhile
            for rollout, attempt, verdict in self._health_verdicts(tx, now, due):
                self._apply_attempt_status(
                    tx, rollout, attempt, verdict[0], now, latest=True, rollout_status=verdict[1]
                )
                tx.put_attempt(attempt)

        await self._driver.run_write(apply)

    def _health_verdicts(
        self, tx: ReadTransaction, now: float, rollout_ids: Sequence[str] | None = None
    ) -> list[tuple[Rollout, Attempt, Verdict]]:
        """The watched rollouts (all, or those among `rollout_ids`) the health rules act on at `now`."""
        out: list[tuple[Rollout, Attempt, Verdict]] = []
        for rollout in tx.watched_rollouts(rollout_ids):
            attempt = tx.latest_attempt(rollout.rollout_id)
            if attempt is None:
                continue
            worker = tx.get_worker(attempt.worker_id) if attempt.worker_id else None
            verdict = state.health_verdict(
                attempt,
                rollout.config,
                now,
                claim_timeout=self._claim_timeout,
                worker_heartbeat=worker.last_heartbeat_time if worker is not None else None,
            )
            if verdict is not None:
                out.append((rollout, attempt, verdict))
        return out

    async def run_health_checks(self) -> None:
        """Apply the timeout / unresponsive / claim-timeout rules to claimed rollouts now, whatever the debounce."""
        await self._maybe_scan(self._clock(), force=True)

    # -- rollouts and the queue ---------------------------------------------------------------------------------
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
        now = self._clock()
        await self._maybe_scan(now)

        def body(tx: WriteTransaction) -> Rollout:
            tx.replay_kept(now)
            rollout = self._new_rollout(tx, input, mode, resources_id, config, metadata, "preparing", now)
            return self._attempt_in(tx, rollout, worker_id, now)

        result = await self._driver.run_write(body)
        return result  # type: ignore[return-value]  # the snapshots carry their attempt

    async def enqueue_rollout(
        self,
        input: TaskInput,
        mode: RolloutMode | None = None,
        resources_id: str | None = None,
        config: RolloutConfig | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Rollout:
        """Create a `queuing` rollout at the tail of the queue."""
        now = self._clock()
        await self._maybe_scan(now)

        def body(tx: WriteTransaction) -> Rollout:
            tx.replay_kept(now)
            rollout = tx.detach(self._new_rollout(tx, input, mode, resources_id, config, metadata, "queuing", now))
            tx.keep_answer(rollout, now)
            return rollout

        return await self._driver.run_write(body)

    async def enqueue_many_rollouts(self, rollouts: Sequence[EnqueueRolloutRequest]) -> Sequence[Rollout]:
        """Enqueue several rollouts in order, all or none; results in input order."""
        requests = [
            r if isinstance(r, EnqueueRolloutRequest) else EnqueueRolloutRequest.model_validate(r) for r in rollouts
        ]
        configs = [as_config(r.config) for r in requests]  # validate everything before storing anything
        for r in requests:
            check_mode(r.mode)
        now = self._clock()
        await self._maybe_scan(now)

        def body(tx: WriteTransaction) -> list[Rollout]:
            tx.replay_kept(now)
            enqueued = [
                tx.detach(self._new_rollout(tx, r.input, r.mode, r.resources_id, config, r.metadata, "queuing", now))
                for r, config in zip(requests, configs, strict=True)
            ]
            tx.keep_answer(enqueued, now)
            return enqueued

        return await self._driver.run_write(body)

    async def dequeue_rollout(self, worker_id: str | None = None) -> AttemptedRollout | None:
        """Claim the rollout at the head of the queue with a new attempt, or None when the queue is empty."""
        check_worker_id(worker_id)
        now = self._clock()
        await self._maybe_scan(now)

        def body(tx: WriteTransaction) -> Rollout | None:
            tx.replay_kept(now)
            claimed = self._claim(tx, worker_id, now)
            if claimed is None:
                if worker_id:
                    self._empty_dequeue(tx, worker_id, now)
                return None
            rollout, attempt = claimed
            self._sync_worker(tx, attempt, now, dequeued=True)
            snapshot = self._snapshot(tx, rollout, attempt)
            tx.keep_answer(snapshot, now)
            return snapshot

        result = await self._driver.run_write(body)
        return result  # type: ignore[return-value]  # the snapshots carry their attempt

    async def dequeue_many_rollouts(
        self, *, limit: int = 1, worker_id: str | None = None
    ) -> Sequence[AttemptedRollout]:
        """Claim up to `limit` rollouts from the head of the queue, in FIFO order, in one transaction."""
        check_worker_id(worker_id)
        if limit <= 0:
            return []
        now = self._clock()
        await self._maybe_scan(now)

        def body(tx: WriteTransaction) -> list[Rollout]:
            tx.replay_kept(now)
            claimed: list[tuple[Rollout, Attempt]] = []
            while len(claimed) < limit:
                one = self._claim(tx, worker_id, now)
                if one is None:
                    break
                claimed.append(one)
            if worker_id:
                if claimed:
                    self._sync_worker(tx, claimed[-1][1], now, dequeued=True)
                else:
                    self._empty_dequeue(tx, worker_id, now)
            snapshots = [self._snapshot(tx, rollout, attempt) for rollout, attempt in claimed]
            if snapshots:
                tx.keep_answer(snapshots, now)
            return snapshots

        result = await self._driver.run_write(body)
        return result  # type: ignore[return-value]  # the snapshots carry their attempt

    async def start_attempt(self, rollout_id: str, worker_id: str | None = None) -> AttemptedRollout:
        """Create a new attempt for any rollout (a manual retry that ignores `max_attempts`)."""
        check_worker_id(worker_id)
        now = self._clock()
        await self._maybe_scan(now)

        def body(tx: WriteTransaction) -> Rollout:
            tx.replay_kept(now)
            return self._attempt_in(tx, self._rollout(tx, rollout_id), worker_id, now)

        result = await self._driver.run_write(body)
        return result  # type: ignore[return-value]  # the snapshots carry their attempt

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
        if sort_by is not None:
            check_sort_field(Rollout, sort_by)
        await self._maybe_scan(self._clock())

        def body(tx: ReadTransaction) -> tuple[list[Rollout], int]:
            page, total = tx.select_rollouts(query, sort_by, sort_order, limit, offset)
            latest = tx.latest_attempts([r.rollout_id for r in page])
            return [self._snapshot(tx, r, latest.get(r.rollout_id)) for r in page], total

        items, total = await self._driver.run_read(body)
        return PaginatedResult[Rollout].model_construct(items=items, limit=limit, offset=offset, total=total)

    async def get_rollout_by_id(self, rollout_id: str) -> Rollout | None:
        """The rollout (with its latest attempt when it has one), or None if unknown."""
        await self._maybe_scan(self._clock())

        def body(tx: ReadTransaction) -> Rollout | None:
            rollout = tx.get_rollout(rollout_id)
            return None if rollout is None else self._snapshot(tx, rollout, tx.latest_attempt(rollout_id))

        return await self._driver.run_read(body)

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
        now = self._clock()
        await self._maybe_scan(now)

        def body(tx: WriteTransaction) -> Rollout:
            tx.replay_kept(now)
            rollout = self._rollout(tx, rollout_id)
            old_status, old_mode = rollout.status, rollout.mode
            for key, value in changes.items():
                setattr(rollout, key, value)
            if status is not UNSET:
                if rollout.mode != old_mode:
                    tx.put_rollout(rollout, self._watched(rollout), old_status, old_mode)
                self._set_rollout_status(tx, rollout, status, now, old_status)
            else:
                tx.put_rollout(rollout, self._watched(rollout), old_status, old_mode)
            updated = tx.detach(rollout)
            tx.keep_answer(updated, now)
            return updated

        return await self._driver.run_write(body)

    # -- attempts -----------------------------------------------------------------------------------------------
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
        await self._maybe_scan(self._clock())
        attempts = await self._driver.run_read(lambda tx: [tx.detach(a) for a in tx.attempts(rollout_id)])
        return paginate(sort_items(attempts, Attempt, sort_by, sort_order), limit, offset)

    async def get_latest_attempt(self, rollout_id: str) -> Attempt | None:
        """The attempt with the highest sequence id, or None."""
        await self._maybe_scan(self._clock())

        def body(tx: ReadTransaction) -> Attempt | None:
            latest = tx.latest_attempt(rollout_id)
            return None if latest is None else tx.detach(latest)

        return await self._driver.run_read(body)

    async def update_attempt(
        self,
        rollout_id: str,
        attempt_id: str,
        status: AttemptStatus = UNSET,
        worker_id: str = UNSET,
        last_heartbeat_time: float = UNSET,
        metadata: dict[str, Any] = UNSET,
    ) -> Attempt:
        """Set fields of an attempt (`attempt_id` may be "latest"); the latest attempt's status drives the rollout.

        A status or heartbeat of an attempt that no longer holds its rollout is refused with `StaleAttemptError`.
        """
        check_attempt_update(
            status=status, worker_id=worker_id, last_heartbeat_time=last_heartbeat_time, metadata=metadata
        )
        now = self._clock()
        await self._maybe_scan(now)

        def body(tx: WriteTransaction) -> Attempt:
            tx.replay_kept(now)
            rollout = self._rollout(tx, rollout_id)
            latest = tx.latest_attempt(rollout_id)
            if latest is None:
                raise NotFoundError("attempt", "latest", rollout_id, f"No attempts found for rollout {rollout_id}")
            if attempt_id == "latest" or attempt_id == latest.attempt_id:
                attempt = latest
            else:
                found = tx.get_attempt(rollout_id, attempt_id)
                if found is None:
                    raise NotFoundError("attempt", attempt_id, rollout_id)
                attempt = found
            if status is not UNSET or last_heartbeat_time is not UNSET:
                try:
                    state.check_attempt_holds_rollout(rollout_id, rollout.status, attempt.attempt_id, latest.attempt_id)
                except StaleAttemptError as exc:  # a refusal, not a change: reported at once
                    self.events.emit(StaleWriteRefused(rollout_id, exc.attempt_id, exc.current_attempt_id, now))
                    raise
            if worker_id is not UNSET:
                attempt.worker_id = worker_id
            if last_heartbeat_time is not UNSET:
                attempt.last_heartbeat_time = float(last_heartbeat_time) if last_heartbeat_time is not None else None
            if metadata is not UNSET:
                attempt.metadata = metadata
            if status is not UNSET:
                is_latest = attempt.sequence_id == latest.sequence_id
                self._apply_attempt_status(tx, rollout, attempt, status, now, latest=is_latest)
            elif worker_id is not UNSET and worker_id:
                self._sync_worker(tx, attempt, now)
            tx.put_attempt(attempt)
            updated = tx.detach(attempt)
            tx.keep_answer(updated, now)
            return updated

        return await self._driver.run_write(body)

    # -- spans --------------------------------------------------------------------------------------------------
    def _locate(self, tx: ReadTransaction, rollout_id: str, attempt_id: str) -> tuple[Rollout, Attempt, bool]:
        """The rollout, the attempt, and whether it is the rollout's latest attempt."""
        locate = getattr(tx, "locate_attempt", None)  # optional: a driver may read all three in one query
        if locate is not None:
            found, attempt, latest_sequence_id = locate(rollout_id, attempt_id)
            if found is None:
                raise NotFoundError("rollout", rollout_id)
            if attempt is None:
                raise NotFoundError("attempt", attempt_id, rollout_id)
            return found, attempt, attempt.sequence_id == latest_sequence_id
        rollout = self._rollout(tx, rollout_id)
        attempt = tx.get_attempt(rollout_id, attempt_id)
        if attempt is None:
            raise NotFoundError("attempt", attempt_id, rollout_id)
        return rollout, attempt, attempt.sequence_id == tx.latest_sequence_id(rollout_id)

    def _spans_arrived(
        self, tx: WriteTransaction, rollout: Rollout, attempt: Attempt, latest: bool, now: float
    ) -> None:
        """New spans are a heartbeat of their attempt; of the attempt holding its rollout they may also move a
        preparing attempt and rollout to running (fencing: a stale attempt's late spans move no status)."""
        if attempt.status == "running" and rollout.status == "running":  # the usual case: nothing moves
            attempt.__dict__["last_heartbeat_time"] = now
            attempt.__pydantic_fields_set__.add("last_heartbeat_time")
            tx.put_attempt(attempt)
            return
        if not state.attempt_holds_rollout(rollout.status, latest):
            assign(attempt, last_heartbeat_time=now)
            tx.put_attempt(attempt)
            return
        old = attempt.status
        assign(attempt, last_heartbeat_time=now, status=state.attempt_status_on_heartbeat(old))
        self._attempt_event(tx, attempt, old, now)
        tx.put_attempt(attempt)
        new = state.rollout_status_on_heartbeat(rollout.status)
        if new != rollout.status:
            self._set_rollout_status(tx, rollout, new, now, rollout.status)

    async def _add_encoded(self, groups: dict[tuple[str, str], list[EncodedSpan]], size: int) -> list[Span]:
        """Store spans grouped by (rollout, attempt) in one transaction.

        Each rollout's span counter is raised to the group's highest sequence id first, and stays raised when the
        batch is then refused: an unknown rollout or attempt refuses the whole batch with ValueError.
        """
        now = self._clock()

        def body(tx: WriteTransaction) -> list[Span] | ValueError:
            for (rollout_id, _), group in groups.items():
                tx.raise_span_counter(rollout_id, max(span.sequence_id for span, _, _ in group))
            try:
                located = [(self._locate(tx, rid, aid), group) for (rid, aid), group in groups.items()]
            except ValueError as exc:
                return exc  # raised after the commit, so the counters stay raised
            tx.reserve_span_bytes(size)
            stored: list[Span] = []
            for (rollout, attempt, latest), group in located:
                kept = tx.insert_spans(group)
                if kept:
                    self._spans_arrived(tx, rollout, attempt, latest, now)
                    stored.extend(kept)
            return stored

        result = await self._driver.run_write(body)
        if isinstance(result, ValueError):
            raise result
        return result

    async def _add_one(self, encoded: EncodedSpan) -> Span | None:
        """`_add_encoded` for one span, without its grouping: the store's most frequent write."""
        span = encoded[0]
        rollout_id = span.rollout_id
        now = self._clock()

        def body(tx: WriteTransaction) -> bool | ValueError:
            tx.raise_span_counter(rollout_id, span.sequence_id)
            try:
                rollout, attempt, latest = self._locate(tx, rollout_id, span.attempt_id)
            except ValueError as exc:
                return exc  # raised after the commit, so the counter stays raised
            tx.reserve_span_bytes(encoded[2])
            if not tx.insert_spans((encoded,)):
                return False
            self._spans_arrived(tx, rollout, attempt, latest, now)
            return True

        result = await self._driver.run_write(body)
        if isinstance(result, ValueError):
            raise result
        return span if result else None

    async def add_span(self, span: Span) -> Span | None:
        """Store a span; returns None when a span with the same id already exists for that attempt."""
        if not isinstance(span, Span):
            span = Span.model_validate(span)
        check_int64("sequence_id", span.sequence_id)
        return await self._add_one(self._driver.encode_span(span, None))

    async def add_span_json(self, span: Span, payload: bytes) -> Span | None:
        """`add_span` for a span just validated from `payload`; a driver keeping JSON may keep `payload` as it is."""
        check_int64("sequence_id", span.sequence_id)
        return await self._add_one(self._driver.encode_span(span, payload))

    async def add_many_spans(self, spans: Sequence[Span]) -> Sequence[Span]:
        """Store several spans in one transaction, all validated first; returns those stored, grouped by attempt.

        An unknown rollout or attempt in any group rejects the whole batch with a ValueError (nothing is stored;
        the sequence counters are still raised).
        """
        encode = self._driver.encode_span
        groups: dict[tuple[str, str], list[EncodedSpan]] = {}
        size = 0
        for item in spans:
            span = item if isinstance(item, Span) else Span.model_validate(item)
            check_int64("sequence_id", span.sequence_id)
            encoded = encode(span, None)
            size += encoded[2]
            groups.setdefault((span.rollout_id, span.attempt_id), []).append(encoded)
        return await self._add_encoded(groups, size)

    async def get_next_span_sequence_id(self, rollout_id: str, attempt_id: str) -> int:
        """Allocate the next span sequence id of a rollout (one counter per rollout, first id 1)."""
        first = await self._driver.run_write(lambda tx: tx.allocate_span_sequence_ids({rollout_id: 1}))
        return first[rollout_id]

    async def get_many_span_sequence_ids(self, rollout_attempt_ids: Sequence[tuple[str, str]]) -> Sequence[int]:
        """Allocate one sequence id per (rollout, attempt) pair, consecutive per rollout in request order."""
        counts: dict[str, int] = {}
        for rollout_id, _ in rollout_attempt_ids:
            counts[rollout_id] = counts.get(rollout_id, 0) + 1
        next_id = await self._driver.run_write(lambda tx: tx.allocate_span_sequence_ids(counts))
        out: list[int] = []
        for rollout_id, _ in rollout_attempt_ids:
            out.append(next_id[rollout_id])
            next_id[rollout_id] += 1
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
        await self._maybe_scan(self._clock())

        def body(tx: ReadTransaction) -> PaginatedResult[Span]:
            wanted = attempt_id
            if wanted == "latest":
                latest = tx.latest_attempt(rollout_id)
                if latest is None:
                    return paginate([], limit, offset)
                wanted = latest.attempt_id
            # Parsed, filtered and paged in the closure: a large read runs where the driver runs reads (off the
            # caller's event loop for a database), and every caller gets its own copies.
            spans = [Span.model_validate_json(p) for p in tx.span_payloads(rollout_id, wanted)]
            if predicate is not None:
                spans = [s for s in spans if predicate(s)]
            return paginate(sort_items(spans, Span, sort_by, sort_order), limit, offset)

        return await self._driver.run_read(body)

    # -- resources ----------------------------------------------------------------------------------------------
    async def add_resources(self, resources: NamedResources) -> ResourcesUpdate:
        """Store a new resources snapshot (version 1); it becomes the latest."""
        validated = _named_resources_adapter.validate_python(resources)
        now = self._clock()

        def body(tx: WriteTransaction) -> ResourcesUpdate:
            tx.replay_kept(now)
            update = ResourcesUpdate(
                resources_id=new_id("rs-", 6), create_time=now, update_time=now, version=1, resources=validated
            )
            tx.put_resources(update)
            update = tx.detach(update)
            tx.keep_answer(update, now)
            return update

        return await self._driver.run_write(body)

    async def update_resources(self, resources_id: str, resources: NamedResources) -> ResourcesUpdate:
        """Replace a snapshot's resources (version + 1), or create it with version 1; it becomes the latest."""
        if not isinstance(resources_id, str) or not resources_id:
            raise ValueError(f"resources_id must be a non-empty string, got {resources_id!r}")
        validated = _named_resources_adapter.validate_python(resources)
        now = self._clock()
        await self._maybe_scan(now)

        def body(tx: WriteTransaction) -> ResourcesUpdate:
            tx.replay_kept(now)
            old = tx.get_resources(resources_id)
            update = ResourcesUpdate(
                resources_id=resources_id,
                create_time=old.create_time if old is not None else now,
                update_time=now,
                version=old.version + 1 if old is not None else 1,
                resources=validated,
            )
            tx.put_resources(update)  # an update keeps the snapshot's insertion position
            update = tx.detach(update)
            tx.keep_answer(update, now)
            return update

        return await self._driver.run_write(body)

    async def get_resources_by_id(self, resources_id: str) -> ResourcesUpdate | None:
        """A resources snapshot by id, or None."""

        def body(tx: ReadTransaction) -> ResourcesUpdate | None:
            update = tx.get_resources(resources_id)
            return None if update is None else tx.detach(update)

        return await self._driver.run_read(body)

    async def get_latest_resources(self) -> ResourcesUpdate | None:
        """The snapshot most recently added or updated, or None."""

        def body(tx: ReadTransaction) -> ResourcesUpdate | None:
            latest = tx.latest_resources_id()
            update = None if latest is None else tx.get_resources(latest)
            return None if update is None else tx.detach(update)

        return await self._driver.run_read(body)

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
        items = await self._driver.run_read(lambda tx: _matching(tx, tx.all_resources(), predicate))
        return paginate(sort_items(items, ResourcesUpdate, sort_by, sort_order), limit, offset)

    # -- workers ------------------------------------------------------------------------------------------------
    async def update_worker(self, worker_id: str, heartbeat_stats: dict[str, Any] = UNSET) -> Worker:
        """Record a worker heartbeat (creating the worker as `unknown` if new); never changes its status."""
        if not isinstance(worker_id, str) or not worker_id:
            raise ValueError(f"worker_id must be a non-empty string, got {worker_id!r}")
        if heartbeat_stats is not UNSET and heartbeat_stats is not None and not isinstance(heartbeat_stats, dict):
            raise ValueError(f"heartbeat_stats must be a dict, got {type(heartbeat_stats).__name__}")
        fields: dict[str, Any] = {"last_heartbeat_time": self._clock()}
        if heartbeat_stats is not UNSET:
            fields["heartbeat_stats"] = dict(heartbeat_stats) if heartbeat_stats is not None else None
        return await self._driver.run_write(lambda tx: tx.detach(self._write_worker(tx, worker_id, fields)))

    async def get_worker_by_id(self, worker_id: str) -> Worker | None:
        """A worker by id, or None."""

        def body(tx: ReadTransaction) -> Worker | None:
            worker = tx.get_worker(worker_id)
            return None if worker is None else tx.detach(worker)

        return await self._driver.run_read(body)

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
        await self._maybe_scan(self._clock())
        items = await self._driver.run_read(lambda tx: _matching(tx, tx.all_workers(), predicate))
        return paginate(sort_items(items, Worker, sort_by, sort_order), limit, offset)

    # -- waiting ------------------------------------------------------------------------------------------------
    async def wait_for_rollout(self, rollout_id: str, timeout: float | None = None) -> Rollout | None:
        """The rollout once it is finished, or None if it is not finished within `timeout` seconds (None: wait
        as long as it takes)."""
        done = await self.wait_for_rollouts(rollout_ids=[rollout_id], timeout=timeout)
        return done[0] if done else None

    async def _wake_every(self) -> float | None:
        """How long a waiter may sleep before it must look again: the driver's poll for other processes' writes,
        and a scan slice while some rollout has health rules (they fire only when someone scans)."""
        poll = self._driver.poll_seconds
        if poll is not None:
            return poll
        watched = await self._driver.run_read(lambda tx: tx.any_watched())
        return max(self._scan_debounce, 0.25) if watched else None

    async def wait_for_rollouts(self, *, rollout_ids: list[str], timeout: float | None = None) -> list[Rollout]:
        """The rollouts among `rollout_ids` that are finished by the deadline, in input order.

        Wakes as soon as the last of them finishes through this store (or, for a driver shared with other
        processes, at its next poll); `timeout=None` waits for all, `timeout <= 0` checks once. Unknown ids are
        ignored.
        """
        if timeout is not None and timeout < 0:
            timeout = 0
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        registered: dict[asyncio.Future[None], str] = {}
        statuses: dict[str, str] = {}
        try:
            await self._maybe_scan(self._clock())
            if timeout != 0:
                # Registered before the statuses are read, so a rollout finishing in between still wakes us (the
                # read may run on another thread while writes commit); then the finished and unknown ones go.
                with self._waiters_lock:
                    for rollout_id in dict.fromkeys(r for r in rollout_ids if isinstance(r, str)):
                        registered[self._waiters.add(rollout_id, loop)] = rollout_id
                statuses = await self._driver.run_read(lambda tx: tx.rollout_statuses(list(registered.values())))
            pending = {
                future: rollout_id
                for future, rollout_id in registered.items()
                if rollout_id in statuses and statuses[rollout_id] not in state.FINISHED_STATUSES
            }
            while pending:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    break
                wake = await self._wake_every()
                if remaining is not None:
                    wake = remaining if wake is None else min(wake, remaining)
                done, _ = await asyncio.wait(set(pending), timeout=wake)
                for future in done:
                    pending.pop(future, None)
                if pending:
                    # Another process may have finished them, or a health rule may have fired.
                    await self._maybe_scan(self._clock())
                    statuses = await self._driver.run_read(partial(_statuses, ids=list(pending.values())))
                    for future, rollout_id in list(pending.items()):
                        if statuses.get(rollout_id) in state.FINISHED_STATUSES:
                            pending.pop(future)
        finally:
            if registered:
                with self._waiters_lock:
                    for future, rollout_id in registered.items():
                        self._waiters.discard(rollout_id, future)

        def body(tx: ReadTransaction) -> list[Rollout]:
            found = tx.get_rollouts(rollout_ids)
            return [
                tx.detach(found[rid])
                for rid in rollout_ids
                if isinstance(rid, str) and rid in found and found[rid].status in state.FINISHED_STATUSES
            ]

        return await self._driver.run_read(body)


def _statuses(tx: ReadTransaction, ids: list[str]) -> dict[str, str]:
    return tx.rollout_statuses(ids)


def _matching(tx: ReadTransaction, items: Iterable[Any], predicate: Callable[[Any], bool] | None) -> list[Any]:
    """The items passing `predicate` (all when None), as copies the caller may keep."""
    return [tx.detach(item) for item in items if predicate is None or predicate(item)]
