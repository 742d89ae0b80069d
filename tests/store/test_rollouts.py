"""Rollout creation, the FIFO queue, manual retries and rollout updates (spec §2.1)."""

from __future__ import annotations

import asyncio

import pytest

from agl.store.base import UNSET, LightningStore
from agl.types import AttemptedRollout, EnqueueRolloutRequest, RolloutConfig
from tests.store.clock import FakeClock
from tests.store.helpers import ids, sample_resources

# -- start_rollout ----------------------------------------------------------------------------------------------


async def test_start_rollout_creates_preparing_rollout_and_first_attempt(
    store: LightningStore, clock: FakeClock
) -> None:
    rollout = await store.start_rollout(input={"q": 1}, mode="train")
    assert isinstance(rollout, AttemptedRollout)
    assert rollout.rollout_id
    assert rollout.status == "preparing"
    assert rollout.input == {"q": 1}
    assert rollout.mode == "train"
    assert rollout.start_time == clock()
    assert rollout.end_time is None
    attempt = rollout.attempt
    assert attempt.rollout_id == rollout.rollout_id
    assert attempt.attempt_id
    assert attempt.sequence_id == 1
    assert attempt.status == "preparing"
    assert attempt.start_time == rollout.start_time
    assert attempt.end_time is None
    assert attempt.worker_id is None
    assert attempt.last_heartbeat_time is None


async def test_start_rollout_is_persisted(store: LightningStore) -> None:
    rollout = await store.start_rollout(input="task")
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert isinstance(fetched, AttemptedRollout)
    assert fetched.status == "preparing"
    assert fetched.attempt.attempt_id == rollout.attempt.attempt_id
    attempts = await store.query_attempts(rollout.rollout_id)
    assert [a.attempt_id for a in attempts] == [rollout.attempt.attempt_id]


async def test_start_rollout_is_not_queued(store: LightningStore) -> None:
    await store.start_rollout(input="task")
    assert await store.dequeue_rollout() is None


async def test_start_rollout_with_worker_records_it_on_the_attempt(store: LightningStore) -> None:
    rollout = await store.start_rollout(input="task", worker_id="Worker-0")
    assert rollout.attempt.worker_id == "Worker-0"
    latest = await store.get_latest_attempt(rollout.rollout_id)
    assert latest is not None and latest.worker_id == "Worker-0"


async def test_rollout_ids_and_attempt_ids_are_unique(store: LightningStore) -> None:
    started = [await store.start_rollout(input=i) for i in range(5)]
    enqueued = [await store.enqueue_rollout(input=i) for i in range(5)]
    rollout_ids = [r.rollout_id for r in started + enqueued]
    assert len(set(rollout_ids)) == 10
    extra = await store.start_attempt(started[0].rollout_id)
    attempt_ids = [r.attempt.attempt_id for r in started] + [extra.attempt.attempt_id]
    assert len(set(attempt_ids)) == 6


@pytest.mark.parametrize("how", ["start", "enqueue", "enqueue_many"])
async def test_metadata_defaults_to_empty_dict(store: LightningStore, how: str) -> None:
    if how == "start":
        rollout = await store.start_rollout(input="x")
    elif how == "enqueue":
        rollout = await store.enqueue_rollout(input="x")
    else:
        (rollout,) = await store.enqueue_many_rollouts([EnqueueRolloutRequest(input="x")])
    assert rollout.metadata == {}
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None and fetched.metadata == {}


@pytest.mark.parametrize("how", ["start", "enqueue", "enqueue_many"])
async def test_config_defaults_to_fresh_rollout_config(store: LightningStore, how: str) -> None:
    if how == "start":
        rollout = await store.start_rollout(input="x")
    elif how == "enqueue":
        rollout = await store.enqueue_rollout(input="x")
    else:
        (rollout,) = await store.enqueue_many_rollouts([EnqueueRolloutRequest(input="x")])
    assert rollout.config == RolloutConfig()
    assert rollout.config.max_attempts == 1
    assert rollout.config.retry_condition == []


@pytest.mark.parametrize("how", ["start", "enqueue"])
async def test_config_is_deep_copied(store: LightningStore, how: str) -> None:
    config = RolloutConfig(max_attempts=2, retry_condition=["failed"], timeout_seconds=30.0)
    create = store.start_rollout if how == "start" else store.enqueue_rollout
    rollout = await create(input="x", config=config)
    config.retry_condition.append("timeout")
    config.max_attempts = 7
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None
    assert fetched.config.retry_condition == ["failed"]
    assert fetched.config.max_attempts == 2
    assert fetched.config.timeout_seconds == 30.0


@pytest.mark.parametrize("how", ["start", "enqueue"])
async def test_metadata_is_copied(store: LightningStore, how: str) -> None:
    metadata = {"owner": "alice"}
    create = store.start_rollout if how == "start" else store.enqueue_rollout
    rollout = await create(input="x", metadata=metadata)
    metadata["owner"] = "mallory"
    metadata["added"] = True
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None and fetched.metadata == {"owner": "alice"}


@pytest.mark.parametrize("how", ["start", "enqueue", "enqueue_many"])
async def test_resources_id_defaults_to_none_without_resources(store: LightningStore, how: str) -> None:
    if how == "start":
        rollout = await store.start_rollout(input="x")
    elif how == "enqueue":
        rollout = await store.enqueue_rollout(input="x")
    else:
        (rollout,) = await store.enqueue_many_rollouts([EnqueueRolloutRequest(input="x")])
    assert rollout.resources_id is None


@pytest.mark.parametrize("how", ["start", "enqueue", "enqueue_many"])
async def test_resources_id_defaults_to_latest_resources(store: LightningStore, how: str) -> None:
    first = await store.add_resources(sample_resources("a"))
    second = await store.add_resources(sample_resources("b"))
    await store.update_resources(first.resources_id, sample_resources("c"))  # first becomes the latest again
    if how == "start":
        rollout = await store.start_rollout(input="x")
    elif how == "enqueue":
        rollout = await store.enqueue_rollout(input="x")
    else:
        (rollout,) = await store.enqueue_many_rollouts([EnqueueRolloutRequest(input="x")])
    assert rollout.resources_id == first.resources_id != second.resources_id


async def test_explicit_resources_id_is_kept(store: LightningStore) -> None:
    first = await store.add_resources(sample_resources("a"))
    await store.add_resources(sample_resources("b"))
    started = await store.start_rollout(input="x", resources_id=first.resources_id)
    enqueued = await store.enqueue_rollout(input="x", resources_id=first.resources_id)
    assert started.resources_id == first.resources_id
    assert enqueued.resources_id == first.resources_id


# -- enqueue ----------------------------------------------------------------------------------------------------


async def test_enqueue_rollout_is_queuing_without_attempt(store: LightningStore, clock: FakeClock) -> None:
    rollout = await store.enqueue_rollout(input={"q": 2}, mode="val", metadata={"k": "v"})
    assert rollout.status == "queuing"
    assert rollout.input == {"q": 2}
    assert rollout.mode == "val"
    assert rollout.metadata == {"k": "v"}
    assert rollout.start_time == clock()
    assert rollout.end_time is None
    assert not isinstance(rollout, AttemptedRollout)
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None and fetched.status == "queuing"
    assert not isinstance(fetched, AttemptedRollout)
    assert len(await store.query_attempts(rollout.rollout_id)) == 0
    assert await store.get_latest_attempt(rollout.rollout_id) is None


async def test_enqueue_many_returns_rollouts_in_input_order(store: LightningStore) -> None:
    requests = [
        EnqueueRolloutRequest(input=0),
        EnqueueRolloutRequest(input=1, mode="test", metadata={"i": 1}),
        EnqueueRolloutRequest(input=2, config=RolloutConfig(max_attempts=3)),
    ]
    rollouts = await store.enqueue_many_rollouts(requests)
    assert [r.input for r in rollouts] == [0, 1, 2]
    assert all(r.status == "queuing" for r in rollouts)
    assert len(set(ids(rollouts))) == 3
    assert rollouts[1].mode == "test" and rollouts[1].metadata == {"i": 1}
    assert rollouts[2].config.max_attempts == 3
    claimed = [await store.dequeue_rollout() for _ in range(3)]
    assert ids(claimed) == ids(rollouts)  # type: ignore[arg-type]


async def test_enqueue_many_empty_batch(store: LightningStore) -> None:
    assert list(await store.enqueue_many_rollouts([])) == []
    assert await store.dequeue_rollout() is None


async def test_enqueue_many_goes_after_earlier_enqueues(store: LightningStore) -> None:
    single = await store.enqueue_rollout(input="first")
    batch = await store.enqueue_many_rollouts(
        [EnqueueRolloutRequest(input="second"), EnqueueRolloutRequest(input="third")]
    )
    last = await store.enqueue_rollout(input="fourth")
    claimed = await store.dequeue_many_rollouts(limit=10)
    assert ids(claimed) == [single.rollout_id, *ids(batch), last.rollout_id]


# -- dequeue ----------------------------------------------------------------------------------------------------


async def test_dequeue_empty_queue_returns_none(store: LightningStore) -> None:
    assert await store.dequeue_rollout() is None


async def test_dequeue_is_fifo(store: LightningStore) -> None:
    enqueued = [await store.enqueue_rollout(input=i) for i in range(4)]
    claimed = [await store.dequeue_rollout() for _ in range(4)]
    assert ids(claimed) == ids(enqueued)  # type: ignore[arg-type]
    assert await store.dequeue_rollout() is None


async def test_dequeue_creates_attempt_and_marks_preparing(store: LightningStore, clock: FakeClock) -> None:
    enqueued = await store.enqueue_rollout(input="x")
    now = clock.advance(5)
    claimed = await store.dequeue_rollout(worker_id="Worker-1")
    assert isinstance(claimed, AttemptedRollout)
    assert claimed.rollout_id == enqueued.rollout_id
    assert claimed.status == "preparing"
    assert claimed.start_time == enqueued.start_time
    assert claimed.attempt.sequence_id == 1
    assert claimed.attempt.status == "preparing"
    assert claimed.attempt.start_time == now
    assert claimed.attempt.worker_id == "Worker-1"
    fetched = await store.get_rollout_by_id(enqueued.rollout_id)
    assert isinstance(fetched, AttemptedRollout)
    assert fetched.status == "preparing"
    assert fetched.attempt.attempt_id == claimed.attempt.attempt_id


async def test_dequeue_without_worker_leaves_attempt_worker_empty(store: LightningStore) -> None:
    await store.enqueue_rollout(input="x")
    claimed = await store.dequeue_rollout()
    assert claimed is not None and claimed.attempt.worker_id is None


async def test_dequeue_skips_stale_entries_lazily(store: LightningStore) -> None:
    cancelled = await store.enqueue_rollout(input="cancel me")
    running = await store.enqueue_rollout(input="run me")
    waiting = await store.enqueue_rollout(input="wait")
    await store.update_rollout(cancelled.rollout_id, status="cancelled")
    await store.update_rollout(running.rollout_id, status="running")
    claimed = await store.dequeue_rollout()
    assert claimed is not None and claimed.rollout_id == waiting.rollout_id
    assert await store.dequeue_rollout() is None
    stale_cancelled = await store.get_rollout_by_id(cancelled.rollout_id)
    stale_running = await store.get_rollout_by_id(running.rollout_id)
    assert stale_cancelled is not None and stale_cancelled.status == "cancelled"
    assert stale_running is not None and stale_running.status == "running"
    assert len(await store.query_attempts(cancelled.rollout_id)) == 0
    assert len(await store.query_attempts(running.rollout_id)) == 0


async def test_dequeue_claims_requeuing_rollout_with_next_attempt(store: LightningStore) -> None:
    rollout = await store.start_rollout(input="x")
    await store.update_rollout(rollout.rollout_id, status="requeuing")
    claimed = await store.dequeue_rollout()
    assert claimed is not None and claimed.rollout_id == rollout.rollout_id
    assert claimed.attempt.sequence_id == 2
    assert claimed.status == "preparing"


async def test_a_dequeue_after_ones_own_enqueue_never_finds_the_queue_empty(store: LightningStore) -> None:
    """Eight callers each enqueue then dequeue, over and over: at every dequeue at least one rollout waits that no
    one else is claiming (each caller enqueued before it dequeues), so none may come back empty-handed, and no
    rollout is claimed twice. (PostgreSQL once failed this: a claim's snapshot could miss a row committed during
    it.)"""
    claimed: list[str | None] = []

    async def caller(index: int) -> None:
        for _ in range(25):
            await store.enqueue_rollout(input=index)
            attempted = await store.dequeue_rollout(worker_id=f"w{index}")
            claimed.append(attempted.rollout_id if attempted is not None else None)

    await asyncio.gather(*(caller(i) for i in range(8)))
    assert claimed.count(None) == 0
    assert len(set(claimed)) == 200  # and each rollout was claimed once


# -- dequeue_many -----------------------------------------------------------------------------------------------


async def test_dequeue_many_respects_limit_and_fifo(store: LightningStore) -> None:
    enqueued = [await store.enqueue_rollout(input=i) for i in range(3)]
    first = await store.dequeue_many_rollouts(limit=2)
    assert ids(first) == ids(enqueued[:2])
    assert all(isinstance(r, AttemptedRollout) and r.status == "preparing" for r in first)
    assert all(r.attempt.sequence_id == 1 for r in first)
    rest = await store.dequeue_many_rollouts(limit=5)
    assert ids(rest) == ids(enqueued[2:])
    assert list(await store.dequeue_many_rollouts(limit=5)) == []


async def test_dequeue_many_default_limit_is_one(store: LightningStore) -> None:
    for i in range(2):
        await store.enqueue_rollout(input=i)
    assert len(await store.dequeue_many_rollouts()) == 1


@pytest.mark.parametrize("limit", [0, -1])
async def test_dequeue_many_nonpositive_limit_claims_nothing(store: LightningStore, limit: int) -> None:
    rollout = await store.enqueue_rollout(input="x")
    assert list(await store.dequeue_many_rollouts(limit=limit)) == []
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None and fetched.status == "queuing"
    claimed = await store.dequeue_rollout()
    assert claimed is not None and claimed.rollout_id == rollout.rollout_id


async def test_dequeue_many_assigns_worker_to_every_attempt(store: LightningStore) -> None:
    for i in range(3):
        await store.enqueue_rollout(input=i)
    claimed = await store.dequeue_many_rollouts(limit=3, worker_id="Worker-7")
    assert [r.attempt.worker_id for r in claimed] == ["Worker-7"] * 3


async def test_dequeue_many_skips_stale_entries(store: LightningStore) -> None:
    a = await store.enqueue_rollout(input="a")
    b = await store.enqueue_rollout(input="b")
    c = await store.enqueue_rollout(input="c")
    await store.update_rollout(b.rollout_id, status="succeeded")
    claimed = await store.dequeue_many_rollouts(limit=3)
    assert ids(claimed) == [a.rollout_id, c.rollout_id]


# -- re-queueing by status writes -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["queuing", "requeuing"])
async def test_status_write_to_queue_state_requeues(store: LightningStore, status: str) -> None:
    rollout = await store.start_rollout(input="x")
    assert await store.dequeue_rollout() is None
    await store.update_rollout(rollout.rollout_id, status=status)  # type: ignore[arg-type]
    claimed = await store.dequeue_rollout()
    assert claimed is not None and claimed.rollout_id == rollout.rollout_id
    assert claimed.attempt.sequence_id == 2
    assert await store.dequeue_rollout() is None


async def test_requeue_goes_to_the_tail(store: LightningStore) -> None:
    rollout = await store.start_rollout(input="x")
    other = await store.enqueue_rollout(input="other")
    await store.update_rollout(rollout.rollout_id, status="requeuing")
    claimed = await store.dequeue_many_rollouts(limit=5)
    assert ids(claimed) == [other.rollout_id, rollout.rollout_id]


async def test_status_write_while_in_queue_does_not_duplicate_entry(store: LightningStore) -> None:
    rollout = await store.enqueue_rollout(input="x")
    await store.update_rollout(rollout.rollout_id, status="requeuing")
    await store.update_rollout(rollout.rollout_id, status="queuing")
    claimed = await store.dequeue_rollout()
    assert claimed is not None and claimed.rollout_id == rollout.rollout_id
    assert await store.dequeue_rollout() is None


async def test_leaving_and_reentering_queue_state_keeps_one_entry_at_old_position(store: LightningStore) -> None:
    first = await store.enqueue_rollout(input="first")
    second = await store.enqueue_rollout(input="second")
    await store.update_rollout(first.rollout_id, status="running")
    await store.update_rollout(first.rollout_id, status="queuing")
    claimed = await store.dequeue_many_rollouts(limit=5)
    assert ids(claimed) == [first.rollout_id, second.rollout_id]


async def test_update_without_status_does_not_requeue(store: LightningStore) -> None:
    rollout = await store.enqueue_rollout(input="x")
    claimed = await store.dequeue_rollout()
    assert claimed is not None
    await store.update_rollout(rollout.rollout_id, status="queuing")
    again = await store.dequeue_rollout()
    assert again is not None and again.attempt.sequence_id == 2
    await store.update_rollout(rollout.rollout_id, metadata={"touched": True})
    assert await store.dequeue_rollout() is None


# -- start_attempt ----------------------------------------------------------------------------------------------


async def test_start_attempt_creates_next_attempt(store: LightningStore, clock: FakeClock) -> None:
    rollout = await store.start_rollout(input="x")
    now = clock.advance(3)
    retried = await store.start_attempt(rollout.rollout_id, worker_id="Worker-2")
    assert isinstance(retried, AttemptedRollout)
    assert retried.rollout_id == rollout.rollout_id
    assert retried.status == "preparing"
    assert retried.attempt.sequence_id == 2
    assert retried.attempt.status == "preparing"
    assert retried.attempt.start_time == now
    assert retried.attempt.worker_id == "Worker-2"
    assert retried.attempt.attempt_id != rollout.attempt.attempt_id
    latest = await store.get_latest_attempt(rollout.rollout_id)
    assert latest is not None and latest.attempt_id == retried.attempt.attempt_id


async def test_start_attempt_is_not_queued(store: LightningStore) -> None:
    rollout = await store.enqueue_rollout(input="x")
    await store.start_attempt(rollout.rollout_id)
    # The queue entry is stale now (rollout preparing) and must be dropped, not claimed.
    assert await store.dequeue_rollout() is None


async def test_start_attempt_ignores_max_attempts(store: LightningStore) -> None:
    rollout = await store.start_rollout(input="x", config=RolloutConfig(max_attempts=1))
    for expected in (2, 3, 4):
        retried = await store.start_attempt(rollout.rollout_id)
        assert retried.attempt.sequence_id == expected


async def test_start_attempt_reopens_finished_rollout_keeping_end_time(store: LightningStore, clock: FakeClock) -> None:
    rollout = await store.start_rollout(input="x")
    finished_at = clock.advance(1)
    await store.update_rollout(rollout.rollout_id, status="succeeded")
    clock.advance(1)
    retried = await store.start_attempt(rollout.rollout_id)
    assert retried.status == "preparing"
    assert retried.end_time == finished_at
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None and fetched.status == "preparing" and fetched.end_time == finished_at


# -- get_rollout_by_id ------------------------------------------------------------------------------------------


async def test_get_rollout_by_id_unknown_is_none(store: LightningStore) -> None:
    assert await store.get_rollout_by_id("ro-does-not-exist") is None


async def test_get_rollout_by_id_attaches_latest_attempt(store: LightningStore) -> None:
    rollout = await store.start_rollout(input="x")
    second = await store.start_attempt(rollout.rollout_id)
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert isinstance(fetched, AttemptedRollout)
    assert fetched.attempt.attempt_id == second.attempt.attempt_id
    assert fetched.attempt.sequence_id == 2


# -- update_rollout ---------------------------------------------------------------------------------------------


async def test_update_rollout_changes_only_given_fields(store: LightningStore) -> None:
    resources = await store.add_resources(sample_resources())
    rollout = await store.enqueue_rollout(
        input={"a": 1}, mode="train", resources_id=resources.resources_id, metadata={"m": 1}
    )
    updated = await store.update_rollout(rollout.rollout_id, input={"a": 2})
    assert updated.input == {"a": 2}
    assert updated.mode == "train"
    assert updated.resources_id == resources.resources_id
    assert updated.metadata == {"m": 1}
    assert updated.status == "queuing"
    assert updated.config == RolloutConfig()
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None
    assert fetched.input == {"a": 2} and fetched.mode == "train" and fetched.metadata == {"m": 1}


async def test_update_rollout_all_unset_changes_nothing(store: LightningStore) -> None:
    rollout = await store.enqueue_rollout(input="x", mode="val", metadata={"m": 1})
    updated = await store.update_rollout(
        rollout.rollout_id, input=UNSET, mode=UNSET, resources_id=UNSET, status=UNSET, config=UNSET, metadata=UNSET
    )
    assert updated.model_dump() == rollout.model_dump()


@pytest.mark.parametrize("field", ["mode", "resources_id", "metadata", "input"])
async def test_update_rollout_explicit_none_sets_none(store: LightningStore, field: str) -> None:
    resources = await store.add_resources(sample_resources())
    rollout = await store.enqueue_rollout(
        input="x", mode="test", resources_id=resources.resources_id, metadata={"m": 1}
    )
    updated = await store.update_rollout(rollout.rollout_id, **{field: None})
    assert getattr(updated, field) is None
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None and getattr(fetched, field) is None
    others = {"mode": "test", "resources_id": resources.resources_id, "metadata": {"m": 1}, "input": "x"}
    for other, value in others.items():
        if other != field:
            assert getattr(fetched, other) == value


async def test_update_rollout_replaces_config_and_metadata(store: LightningStore) -> None:
    rollout = await store.enqueue_rollout(input="x", metadata={"old": 1})
    config = RolloutConfig(max_attempts=4, retry_condition=["timeout"], unresponsive_seconds=9.0)
    updated = await store.update_rollout(rollout.rollout_id, config=config, metadata={"new": 2})
    assert updated.config == config
    assert updated.metadata == {"new": 2}
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None and fetched.config.max_attempts == 4 and fetched.metadata == {"new": 2}


@pytest.mark.parametrize("status", ["failed", "succeeded", "cancelled"])
async def test_update_rollout_terminal_status_stamps_end_time_every_time(
    store: LightningStore, clock: FakeClock, status: str
) -> None:
    rollout = await store.start_rollout(input="x")
    first = clock.advance(2)
    updated = await store.update_rollout(rollout.rollout_id, status=status)  # type: ignore[arg-type]
    assert updated.status == status and updated.end_time == first
    second = clock.advance(3)
    again = await store.update_rollout(rollout.rollout_id, status=status)  # type: ignore[arg-type]
    assert again.end_time == second


@pytest.mark.parametrize("status", ["queuing", "preparing", "running", "requeuing"])
async def test_non_terminal_status_write_keeps_end_time(store: LightningStore, clock: FakeClock, status: str) -> None:
    rollout = await store.start_rollout(input="x")
    finished_at = clock.advance(2)
    await store.update_rollout(rollout.rollout_id, status="failed")
    clock.advance(2)
    updated = await store.update_rollout(rollout.rollout_id, status=status)  # type: ignore[arg-type]
    assert updated.status == status
    assert updated.end_time == finished_at


async def test_non_terminal_status_write_does_not_set_end_time(store: LightningStore, clock: FakeClock) -> None:
    rollout = await store.start_rollout(input="x")
    clock.advance(1)
    updated = await store.update_rollout(rollout.rollout_id, status="running")
    assert updated.end_time is None


async def test_update_rollout_non_status_fields_do_not_stamp_end_time(store: LightningStore, clock: FakeClock) -> None:
    rollout = await store.start_rollout(input="x")
    finished_at = clock.advance(1)
    await store.update_rollout(rollout.rollout_id, status="succeeded")
    clock.advance(1)
    updated = await store.update_rollout(rollout.rollout_id, metadata={"note": "late"})
    assert updated.end_time == finished_at
    assert updated.status == "succeeded"
