"""Live aggregates of one store for the dashboard and `agl stats`: counts, throughput, workers and rewards.

Counts, the queue and workers are read from the store on each call (indexed queries). Throughput comes from the
store's events since the insight was created. Rewards are read from spans: each finished rollout's final reward (the
last reward span of its latest attempt) is read once, by a background task that runs only while someone looks, in
small slices so it never holds the event loop long; it first catches up on rollouts that finished before it started.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from agl.store import state
from agl.store.base import LightningStore
from agl.store.events import AttemptTransition, RolloutTransition, StoreEvent
from agl.types.core import ROLLOUT_STATUSES, Rollout, RolloutMode, RolloutStatus, Worker
from agl.types.reward import find_final_reward

__all__ = ["RolloutPage", "StoreInsight", "rollout_summary"]

logger = logging.getLogger(__name__)

_FINISHED: tuple[RolloutStatus, ...] = ("succeeded", "failed", "cancelled")
_FAILED_ATTEMPT = frozenset({"failed", "timeout", "unresponsive"})
_MAX_REWARD_POINTS = 120
_NICE_BUCKETS = (10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 43200, 86400, 604800)


@dataclass
class _RewardSum:
    total: float = 0.0
    count: int = 0

    def add(self, value: float) -> None:
        self.total += value
        self.count += 1


@dataclass
class _Finished:
    rollout_id: str
    resources_id: str | None
    mode: str | None
    end_time: float


def rollout_summary(rollout: Rollout, reward: float | None) -> dict[str, Any]:
    """One row of a rollout list: id, status, mode, times, resources, attempts, latest worker and `reward`."""
    attempt = getattr(rollout, "attempt", None)
    return {
        "rollout_id": rollout.rollout_id,
        "status": rollout.status,
        "mode": rollout.mode,
        "start_time": rollout.start_time,
        "end_time": rollout.end_time,
        "resources_id": rollout.resources_id,
        "attempts": attempt.sequence_id if attempt is not None else 0,
        "worker_id": attempt.worker_id if attempt is not None else None,
        "reward": reward,
    }


@dataclass
class RolloutPage:
    """One page of the dashboard's rollout list: summary rows and the number of matches."""

    items: list[dict[str, Any]]
    total: int
    limit: int
    offset: int
    extra: dict[str, Any] = field(default_factory=dict)


class StoreInsight:
    """Aggregates of `store` for people watching it: subscribe once, then ask `overview()`, `rollouts()`, ...

    Args:
        store: the store to watch (in this process: its events are needed).
        clock: epoch seconds.
        bucket_seconds: width of the throughput buckets.
        keep_seconds: how long throughput buckets are kept.
        silent_after_seconds: a worker not heard from (heartbeat, dequeue, status change) for this long is silent.
        reward_cache_size: how many finished rollouts' rewards are kept in memory (oldest dropped first; the
            per-version and over-time aggregates keep counting).
    """

    def __init__(
        self,
        store: LightningStore,
        *,
        clock: Callable[[], float] = time.time,
        bucket_seconds: int = 10,
        keep_seconds: float = 86400.0,
        silent_after_seconds: float = 30.0,
        reward_cache_size: int = 1_000_000,
    ) -> None:
        if bucket_seconds <= 0:
            raise ValueError(f"bucket_seconds must be positive, got {bucket_seconds!r}")
        self.store = store
        self.clock = clock
        self.bucket_seconds = int(bucket_seconds)
        self.keep_seconds = float(keep_seconds)
        self.silent_after_seconds = float(silent_after_seconds)
        self._lock = threading.Lock()  # events may come from any thread that calls the store
        self._finished_buckets: dict[int, list[int]] = {}  # bucket start -> [succeeded, failed, cancelled]
        self._last_errors: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._pending: collections.deque[_Finished] = collections.deque()
        self._rewards: collections.OrderedDict[str, float | None] = collections.OrderedDict()
        self._reward_cache_size = reward_cache_size
        self._by_resources: dict[str | None, _RewardSum] = {}
        self._by_resources_mode: dict[tuple[str | None, str | None], _RewardSum] = {}
        self._by_time: dict[int, _RewardSum] = {}  # fine buckets of bucket_seconds, merged when asked
        self._caught_up = False
        self._task: asyncio.Task[None] | None = None
        self._last_asked = 0.0
        self._unsubscribe = store.events.subscribe(self._on_event)

    def close(self) -> None:
        """Stop listening and cancel the background reward reader."""
        self._unsubscribe()
        task, self._task = self._task, None
        if task is not None and not task.done():
            try:
                task.cancel()
            except RuntimeError:  # its loop is already closed: the task went with it
                pass

    async def aclose(self) -> None:
        """Stop listening and wait for the background reward reader to end (call on its event loop)."""
        task = self._task
        self.close()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- events (any thread) -----------------------------------------------------------------------------------

    def _on_event(self, event: StoreEvent) -> None:
        if isinstance(event, RolloutTransition):
            if event.new in state.FINISHED_STATUSES:
                bucket = int(event.time // self.bucket_seconds) * self.bucket_seconds
                with self._lock:
                    counts = self._finished_buckets.get(bucket)
                    if counts is None:
                        counts = self._finished_buckets[bucket] = [0, 0, 0]
                        self._prune(event.time)
                    counts[_FINISHED.index(event.new)] += 1
                self._pending.append(_Finished(event.rollout_id, event.resources_id, event.mode, event.time))
        elif isinstance(event, AttemptTransition) and event.new in _FAILED_ATTEMPT and event.worker_id is not None:
            with self._lock:
                errors = self._last_errors
                errors.pop(event.worker_id, None)
                errors[event.worker_id] = {
                    "rollout_id": event.rollout_id,
                    "attempt_id": event.attempt_id,
                    "status": event.new,
                    "time": event.time,
                }
                if len(errors) > 100_000:
                    errors.popitem(last=False)

    def _prune(self, now: float) -> None:
        horizon = now - self.keep_seconds
        for start in [b for b in self._finished_buckets if b < horizon]:
            del self._finished_buckets[start]

    # -- rewards (the event loop) ------------------------------------------------------------------------------

    def _wake(self) -> None:
        """Note that someone looks; start the reward reader if it is not running."""
        self._last_asked = time.monotonic()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._read_rewards(), name="agl-insight-rewards")

    async def _read_rewards(self) -> None:
        try:
            if not self._caught_up:
                await self._catch_up()
                self._caught_up = True
            while time.monotonic() - self._last_asked < 60.0:  # nobody looks for a minute: stop until asked
                if not self._pending:
                    await asyncio.sleep(0.5)
                    continue
                batch = [self._pending.popleft() for _ in range(min(100, len(self._pending)))]
                await self._resolve(batch)
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("reading rewards for the dashboard failed; it retries when asked again")

    async def _catch_up(self) -> None:
        """Read the rewards of rollouts that finished before this insight listened, in pages."""
        offset = 0
        while True:
            page = await self.store.query_rollouts(status_in=list(_FINISHED), limit=500, offset=offset)
            items = list(page.items)
            batch = [_Finished(r.rollout_id, r.resources_id, r.mode, r.end_time or r.start_time) for r in items]
            await self._resolve(batch)
            offset += len(items)
            if len(items) < 500:
                return
            await asyncio.sleep(0.001)  # let requests through between pages

    async def _resolve(self, batch: Sequence[_Finished]) -> None:
        for finished in batch:
            if finished.rollout_id in self._rewards:
                continue
            value = await self._final_reward(finished.rollout_id)
            self._remember(finished, value)

    async def _final_reward(self, rollout_id: str) -> float | None:
        spans = await self.store.query_spans(rollout_id, "latest")
        return find_final_reward(list(spans))

    def _remember(self, finished: _Finished, value: float | None) -> None:
        rewards = self._rewards
        rewards[finished.rollout_id] = value
        if len(rewards) > self._reward_cache_size:
            rewards.popitem(last=False)
        if value is None or not math.isfinite(value):
            return
        self._by_resources.setdefault(finished.resources_id, _RewardSum()).add(value)
        self._by_resources_mode.setdefault((finished.resources_id, finished.mode), _RewardSum()).add(value)
        bucket = int(finished.end_time // self.bucket_seconds) * self.bucket_seconds
        self._by_time.setdefault(bucket, _RewardSum()).add(value)

    # -- questions ---------------------------------------------------------------------------------------------

    async def overview(self, window_seconds: float = 900.0) -> dict[str, Any]:
        """Counts by status, the queue, workers, throughput over the last `window_seconds`, rewards, resources."""
        self._wake()
        store = self.store
        now = self.clock()
        by_status: dict[str, int] = {}
        for status in ROLLOUT_STATUSES:
            by_status[status] = (await store.query_rollouts(status_in=[status], limit=0)).total
        oldest = await store.query_rollouts(status_in=["queuing", "requeuing"], sort_by="start_time", limit=1)
        depth = oldest.total
        workers = list(await store.query_workers())
        summary = self._worker_summary(workers, now)
        resources = await store.query_resources(limit=0)
        latest = await store.get_latest_resources()
        return {
            "now": now,
            "rollouts": {"total": sum(by_status.values()), "by_status": by_status},
            "queue": {
                "depth": depth,
                "oldest_age_seconds": max(0.0, now - oldest.items[0].start_time) if oldest.items else None,
            },
            "workers": summary,
            "series": self._series(now, window_seconds),
            "reward": await self._reward_summary(),
            "resources": {"latest_id": latest.resources_id if latest is not None else None, "count": resources.total},
            "store": dict(await store.statistics()),
        }

    def _series(self, now: float, window_seconds: float) -> dict[str, Any]:
        width = self.bucket_seconds
        last = int(now // width) * width
        first = last - (max(1, math.ceil(window_seconds / width)) - 1) * width
        with self._lock:
            counts = dict(self._finished_buckets)
        buckets = []
        for start in range(first, last + 1, width):
            succeeded, failed, cancelled = counts.get(start, (0, 0, 0))
            buckets.append(
                {
                    "t": float(start),
                    "finished": succeeded + failed + cancelled,
                    "succeeded": succeeded,
                    "failed": failed,
                    "cancelled": cancelled,
                }
            )
        return {"bucket_seconds": width, "buckets": buckets}

    async def _reward_summary(self) -> dict[str, Any]:
        order: dict[str | None, int] = {}
        page = await self.store.query_resources(sort_by="create_time")
        for index, update in enumerate(page.items, start=1):
            order[update.resources_id] = index
        by_version = [
            {
                "resources_id": resources_id,
                "version": order.get(resources_id),
                "mean": sums.total / sums.count,
                "count": sums.count,
                "modes": {
                    mode or "none": {"mean": part.total / part.count, "count": part.count}
                    for (rid, mode), part in self._by_resources_mode.items()
                    if rid == resources_id
                },
            }
            for resources_id, sums in self._by_resources.items()
        ]
        by_version.sort(key=lambda row: (row["version"] is None, row["version"] or 0))
        return {
            "count": sum(s.count for s in self._by_resources.values()),
            "by_version": by_version,
            **self._reward_over_time(),
            "pending": len(self._pending) + (0 if self._caught_up else 1),
        }

    def _reward_over_time(self) -> dict[str, Any]:
        if not self._by_time:
            return {"over_time": [], "bucket_seconds": self.bucket_seconds}
        first, last = min(self._by_time), max(self._by_time)
        span = last - first + self.bucket_seconds
        width = next(
            (w for w in _NICE_BUCKETS if w >= self.bucket_seconds and span / w <= _MAX_REWARD_POINTS),
            max(self.bucket_seconds, math.ceil(span / _MAX_REWARD_POINTS)),
        )
        merged: dict[int, _RewardSum] = {}
        for start, sums in self._by_time.items():
            into = merged.setdefault(int(start // width) * width, _RewardSum())
            into.total += sums.total
            into.count += sums.count
        points = [{"t": float(t), "mean": s.total / s.count, "count": s.count} for t, s in sorted(merged.items())]
        return {"over_time": points, "bucket_seconds": width}

    def _worker_summary(self, workers: Sequence[Worker], now: float) -> dict[str, Any]:
        busy = idle = silent = 0
        for worker in workers:
            if self._is_silent(worker, now):
                silent += 1
            elif worker.status == "busy":
                busy += 1
            else:
                idle += 1
        return {
            "total": len(workers),
            "busy": busy,
            "idle": idle,
            "silent": silent,
            "silent_after_seconds": self.silent_after_seconds,
        }

    @staticmethod
    def _last_seen(worker: Worker) -> float | None:
        times = [
            t
            for t in (
                worker.last_heartbeat_time,
                worker.last_dequeue_time,
                worker.last_busy_time,
                worker.last_idle_time,
            )
            if t is not None
        ]
        return max(times) if times else None

    def _is_silent(self, worker: Worker, now: float) -> bool:
        seen = self._last_seen(worker)
        return seen is None or now - seen > self.silent_after_seconds

    async def workers(self) -> dict[str, Any]:
        """Every worker with its heartbeat age, silence and last failed attempt (seen since the insight started)."""
        self._wake()
        now = self.clock()
        items = []
        with self._lock:
            errors = dict(self._last_errors)
        for worker in await self.store.query_workers():
            row = worker.model_dump(mode="json")
            row["heartbeat_age_seconds"] = (
                now - worker.last_heartbeat_time if worker.last_heartbeat_time is not None else None
            )
            seen = self._last_seen(worker)
            row["last_seen_age_seconds"] = now - seen if seen is not None else None
            row["silent"] = self._is_silent(worker, now)
            row["last_error"] = errors.get(worker.worker_id)
            items.append(row)
        return {"now": now, "silent_after_seconds": self.silent_after_seconds, "items": items}

    async def rollouts(
        self,
        *,
        status_in: Sequence[RolloutStatus] | None = None,
        mode_in: Sequence[RolloutMode] | None = None,
        start_time_from: float | None = None,
        start_time_to: float | None = None,
        rollout_id_contains: str | None = None,
        sort_by: str = "start_time",
        sort_order: Literal["asc", "desc"] = "desc",
        limit: int = 50,
        offset: int = 0,
    ) -> RolloutPage:
        """One page of rollout summaries (with attempts count, worker and final reward) matching the filters."""
        self._wake()
        filters: dict[str, Any] = {}
        if mode_in is not None:
            filters["mode_in"] = list(mode_in)
        if start_time_from is not None:
            filters["start_time_from"] = start_time_from
        if start_time_to is not None:
            filters["start_time_to"] = start_time_to
        page = await self.store.query_rollouts(
            status_in=list(status_in) if status_in is not None else None,
            rollout_id_contains=rollout_id_contains or None,
            sort_by=sort_by,
            sort_order=sort_order,
            limit=limit,
            offset=offset,
            **filters,
        )
        items = [await self._summary(rollout) for rollout in page.items]
        return RolloutPage(items=items, total=page.total, limit=limit, offset=offset)

    async def _summary(self, rollout: Rollout) -> dict[str, Any]:
        reward: float | None = None
        if rollout.status in state.FINISHED_STATUSES:
            if rollout.rollout_id in self._rewards:
                reward = self._rewards[rollout.rollout_id]
            else:
                reward = await self._final_reward(rollout.rollout_id)
        return rollout_summary(rollout, reward)

    async def rollout(self, rollout_id: str, *, max_spans: int = 2000) -> dict[str, Any] | None:
        """Everything about one rollout: itself, its attempts, its spans (up to `max_spans`), its final reward."""
        self._wake()
        store = self.store
        rollout = await store.get_rollout_by_id(rollout_id)
        if rollout is None:
            return None
        attempts = await store.query_attempts(rollout_id)
        spans = await store.query_spans(rollout_id, limit=max_spans)
        return {
            "rollout": rollout.model_dump(mode="json"),
            "attempts": [a.model_dump(mode="json") for a in attempts.items],
            "spans": [s.model_dump(mode="json") for s in spans.items],
            "spans_total": spans.total,
            "reward": await self._final_reward(rollout_id),
            "input": rollout.model_dump(mode="json", include={"input"}).get("input"),
        }
