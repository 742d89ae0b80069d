"""Workers: heartbeats and status derived from the attempts they hold (spec §2.5, §3)."""

from __future__ import annotations

import pytest

from agl.store.base import LightningStore
from agl.store.errors import StaleAttemptError
from agl.types import Worker
from tests.store.clock import FakeClock


async def test_update_worker_creates_unknown_worker(store: LightningStore, clock: FakeClock) -> None:
    worker = await store.update_worker("Worker-0", heartbeat_stats={"cpu": 0.5})
    assert isinstance(worker, Worker)
    assert worker.worker_id == "Worker-0"
    assert worker.status == "unknown"
    assert worker.last_heartbeat_time == clock()
    assert worker.heartbeat_stats == {"cpu": 0.5}
    assert worker.current_rollout_id is None and worker.current_attempt_id is None
    fetched = await store.get_worker_by_id("Worker-0")
    assert fetched is not None and fetched.model_dump() == worker.model_dump()


async def test_update_worker_without_stats(store: LightningStore, clock: FakeClock) -> None:
    worker = await store.update_worker("Worker-0")
    assert worker.status == "unknown"
    assert worker.last_heartbeat_time == clock()
    assert worker.heartbeat_stats is None


async def test_get_worker_by_id_unknown_is_none(store: LightningStore) -> None:
    assert await store.get_worker_by_id("Worker-404") is None


async def test_update_worker_refreshes_heartbeat_and_replaces_stats(store: LightningStore, clock: FakeClock) -> None:
    await store.update_worker("Worker-0", heartbeat_stats={"cpu": 0.5, "mem": 1})
    later = clock.advance(10)
    worker = await store.update_worker("Worker-0", heartbeat_stats={"gpu": 2})
    assert worker.last_heartbeat_time == later
    assert worker.heartbeat_stats == {"gpu": 2}


async def test_update_worker_unset_stats_keeps_previous(store: LightningStore, clock: FakeClock) -> None:
    await store.update_worker("Worker-0", heartbeat_stats={"cpu": 0.5})
    later = clock.advance(3)
    worker = await store.update_worker("Worker-0")
    assert worker.heartbeat_stats == {"cpu": 0.5}
    assert worker.last_heartbeat_time == later


async def test_update_worker_copies_stats(store: LightningStore) -> None:
    stats = {"cpu": 0.5}
    await store.update_worker("Worker-0", heartbeat_stats=stats)
    stats["cpu"] = 0.99
    stats["extra"] = 1
    fetched = await store.get_worker_by_id("Worker-0")
    assert fetched is not None and fetched.heartbeat_stats == {"cpu": 0.5}


async def test_update_worker_never_changes_status_or_assignment(store: LightningStore, clock: FakeClock) -> None:
    rollout = await store.start_rollout(input="x", worker_id="Worker-0")
    busy_since = clock()
    clock.advance(5)
    worker = await store.update_worker("Worker-0", heartbeat_stats={"ok": True})
    assert worker.status == "busy"
    assert worker.current_rollout_id == rollout.rollout_id
    assert worker.current_attempt_id == rollout.attempt.attempt_id
    assert worker.last_busy_time == busy_since
    await store.dequeue_rollout(worker_id="Worker-0")  # empty queue -> idle
    idle = await store.update_worker("Worker-0")
    assert idle.status == "idle"


async def test_heartbeat_does_not_touch_attempts(store: LightningStore, clock: FakeClock) -> None:
    rollout = await store.start_rollout(input="x", worker_id="Worker-0")
    clock.advance(1)
    await store.update_worker("Worker-0")
    attempt = await store.get_latest_attempt(rollout.rollout_id)
    assert attempt is not None and attempt.status == "preparing" and attempt.last_heartbeat_time is None


async def test_dequeue_marks_worker_busy(store: LightningStore, clock: FakeClock) -> None:
    await store.enqueue_rollout(input="x")
    now = clock.advance(1)
    claimed = await store.dequeue_rollout(worker_id="Worker-0")
    assert claimed is not None
    worker = await store.get_worker_by_id("Worker-0")
    assert worker is not None
    assert worker.status == "busy"
    assert worker.last_dequeue_time == now
    assert worker.last_busy_time == now
    assert worker.current_rollout_id == claimed.rollout_id
    assert worker.current_attempt_id == claimed.attempt.attempt_id


async def test_empty_dequeue_marks_new_worker_idle(store: LightningStore, clock: FakeClock) -> None:
    assert await store.dequeue_rollout(worker_id="Worker-0") is None
    worker = await store.get_worker_by_id("Worker-0")
    assert worker is not None
    assert worker.status == "idle"
    assert worker.last_idle_time == clock()
    assert worker.last_dequeue_time == clock()


async def test_empty_dequeue_without_worker_creates_no_worker(store: LightningStore) -> None:
    assert await store.dequeue_rollout() is None
    assert len(await store.query_workers()) == 0


async def test_dequeue_many_records_only_last_claim(store: LightningStore, clock: FakeClock) -> None:
    for i in range(3):
        await store.enqueue_rollout(input=i)
    now = clock.advance(1)
    claimed = await store.dequeue_many_rollouts(limit=3, worker_id="Worker-0")
    assert len(claimed) == 3
    worker = await store.get_worker_by_id("Worker-0")
    assert worker is not None
    assert worker.status == "busy"
    assert worker.current_rollout_id == claimed[-1].rollout_id
    assert worker.current_attempt_id == claimed[-1].attempt.attempt_id
    assert worker.last_dequeue_time == now


async def test_dequeue_many_nothing_claimed_marks_idle(store: LightningStore, clock: FakeClock) -> None:
    rollout = await store.start_rollout(input="x", worker_id="Worker-0")
    now = clock.advance(1)
    assert list(await store.dequeue_many_rollouts(limit=4, worker_id="Worker-0")) == []
    worker = await store.get_worker_by_id("Worker-0")
    assert worker is not None and worker.status == "idle" and worker.last_idle_time == now
    assert worker.last_dequeue_time == now
    # The empty-dequeue sync writes only status and times (§3); the previous assignment is left as it was.
    assert worker.current_rollout_id == rollout.rollout_id


async def test_worker_lifecycle_through_dequeue_and_update_attempt(store: LightningStore, clock: FakeClock) -> None:
    await store.enqueue_rollout(input="x")
    claimed = await store.dequeue_rollout(worker_id="Worker-0")
    assert claimed is not None
    await store.update_attempt(claimed.rollout_id, claimed.attempt.attempt_id, status="running")
    worker = await store.get_worker_by_id("Worker-0")
    assert worker is not None and worker.status == "busy"
    done_at = clock.advance(2)
    await store.update_attempt(claimed.rollout_id, claimed.attempt.attempt_id, status="succeeded")
    worker = await store.get_worker_by_id("Worker-0")
    assert worker is not None
    assert worker.status == "idle"
    assert worker.last_idle_time == done_at
    assert worker.current_rollout_id is None and worker.current_attempt_id is None


async def test_refused_status_write_on_old_attempt_leaves_workers_alone(
    store: LightningStore, clock: FakeClock
) -> None:
    rollout = await store.start_rollout(input="x", worker_id="Worker-old")
    await store.start_attempt(rollout.rollout_id, worker_id="Worker-new")
    clock.advance(1)
    with pytest.raises(StaleAttemptError):
        await store.update_attempt(rollout.rollout_id, rollout.attempt.attempt_id, status="failed")
    old = await store.get_worker_by_id("Worker-old")
    new = await store.get_worker_by_id("Worker-new")
    assert old is not None and old.status == "busy"
    assert new is not None and new.status == "busy"


async def test_reassigning_attempt_marks_new_worker_busy(store: LightningStore, clock: FakeClock) -> None:
    rollout = await store.start_rollout(input="x", worker_id="Worker-a")
    now = clock.advance(1)
    updated = await store.update_attempt(rollout.rollout_id, "latest", worker_id="Worker-b")
    assert updated.worker_id == "Worker-b"
    worker = await store.get_worker_by_id("Worker-b")
    assert worker is not None and worker.status == "busy" and worker.last_busy_time == now
    assert worker.current_attempt_id == rollout.attempt.attempt_id


async def test_worker_keeps_heartbeat_stats_across_status_changes(store: LightningStore) -> None:
    await store.update_worker("Worker-0", heartbeat_stats={"host": "a"})
    rollout = await store.start_rollout(input="x", worker_id="Worker-0")
    await store.update_attempt(rollout.rollout_id, "latest", status="succeeded")
    worker = await store.get_worker_by_id("Worker-0")
    assert worker is not None and worker.heartbeat_stats == {"host": "a"} and worker.status == "idle"
