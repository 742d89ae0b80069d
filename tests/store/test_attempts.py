"""Attempts: listing, the latest attempt and `update_attempt` (spec §2.2)."""

from __future__ import annotations

import pytest

from agl.store.base import UNSET, LightningStore
from agl.store.errors import StaleAttemptError
from agl.types import Attempt, RolloutConfig
from tests.store.clock import FakeClock


async def _rollout_with_attempts(store: LightningStore, clock: FakeClock, count: int) -> tuple[str, list[str]]:
    rollout = await store.start_rollout(input="x")
    attempt_ids = [rollout.attempt.attempt_id]
    for _ in range(count - 1):
        clock.advance(1)
        attempt_ids.append((await store.start_attempt(rollout.rollout_id)).attempt.attempt_id)
    return rollout.rollout_id, attempt_ids


async def test_query_attempts_in_sequence_order(store: LightningStore, clock: FakeClock) -> None:
    rollout_id, attempt_ids = await _rollout_with_attempts(store, clock, 3)
    attempts = await store.query_attempts(rollout_id)
    assert [a.sequence_id for a in attempts] == [1, 2, 3]
    assert [a.attempt_id for a in attempts] == attempt_ids
    assert all(isinstance(a, Attempt) and a.rollout_id == rollout_id for a in attempts)
    assert attempts.total == 3


async def test_query_attempts_only_returns_that_rollouts_attempts(store: LightningStore, clock: FakeClock) -> None:
    rollout_id, attempt_ids = await _rollout_with_attempts(store, clock, 2)
    other_id, _ = await _rollout_with_attempts(store, clock, 2)
    assert [a.attempt_id for a in await store.query_attempts(rollout_id)] == attempt_ids
    assert all(a.rollout_id == other_id for a in await store.query_attempts(other_id))


async def test_query_attempts_unknown_rollout_is_empty(store: LightningStore) -> None:
    result = await store.query_attempts("ro-missing")
    assert len(result) == 0
    assert list(result) == []


async def test_query_attempts_sort_desc(store: LightningStore, clock: FakeClock) -> None:
    rollout_id, attempt_ids = await _rollout_with_attempts(store, clock, 3)
    attempts = await store.query_attempts(rollout_id, sort_order="desc")
    assert [a.attempt_id for a in attempts] == attempt_ids[::-1]


async def test_query_attempts_sort_by_start_time(store: LightningStore, clock: FakeClock) -> None:
    rollout_id, attempt_ids = await _rollout_with_attempts(store, clock, 3)
    attempts = await store.query_attempts(rollout_id, sort_by="start_time", sort_order="desc")
    assert [a.attempt_id for a in attempts] == attempt_ids[::-1]


@pytest.mark.parametrize(
    ("limit", "offset", "expected"),
    [(-1, 0, [1, 2, 3, 4]), (2, 0, [1, 2]), (2, 1, [2, 3]), (2, 3, [4]), (0, 0, []), (-1, 2, [3, 4]), (3, 9, [])],
)
async def test_query_attempts_pagination(
    store: LightningStore, clock: FakeClock, limit: int, offset: int, expected: list[int]
) -> None:
    rollout_id, _ = await _rollout_with_attempts(store, clock, 4)
    page = await store.query_attempts(rollout_id, limit=limit, offset=offset)
    assert [a.sequence_id for a in page] == expected
    assert page.total == 4
    assert page.limit == limit and page.offset == offset


async def test_get_latest_attempt(store: LightningStore, clock: FakeClock) -> None:
    rollout_id, attempt_ids = await _rollout_with_attempts(store, clock, 3)
    latest = await store.get_latest_attempt(rollout_id)
    assert latest is not None
    assert latest.attempt_id == attempt_ids[-1] and latest.sequence_id == 3


async def test_get_latest_attempt_none_without_attempts(store: LightningStore) -> None:
    rollout = await store.enqueue_rollout(input="x")
    assert await store.get_latest_attempt(rollout.rollout_id) is None
    assert await store.get_latest_attempt("ro-missing") is None


async def test_update_attempt_sets_given_fields_only(store: LightningStore, clock: FakeClock) -> None:
    rollout = await store.start_rollout(input="x", worker_id="Worker-0")
    aid = rollout.attempt.attempt_id
    updated = await store.update_attempt(rollout.rollout_id, aid, metadata={"note": 1})
    assert isinstance(updated, Attempt)
    assert updated.metadata == {"note": 1}
    assert updated.status == "preparing"
    assert updated.worker_id == "Worker-0"
    assert updated.last_heartbeat_time is None
    hb = clock() - 0.5
    updated = await store.update_attempt(rollout.rollout_id, aid, last_heartbeat_time=hb)
    assert updated.last_heartbeat_time == hb
    assert updated.metadata == {"note": 1}
    updated = await store.update_attempt(rollout.rollout_id, aid, worker_id="Worker-9")
    assert updated.worker_id == "Worker-9"
    assert updated.last_heartbeat_time == hb
    fetched = await store.get_latest_attempt(rollout.rollout_id)
    assert fetched is not None
    assert (fetched.worker_id, fetched.last_heartbeat_time, fetched.metadata) == ("Worker-9", hb, {"note": 1})


async def test_update_attempt_all_unset_changes_nothing(store: LightningStore) -> None:
    rollout = await store.start_rollout(input="x")
    updated = await store.update_attempt(
        rollout.rollout_id,
        rollout.attempt.attempt_id,
        status=UNSET,
        worker_id=UNSET,
        last_heartbeat_time=UNSET,
        metadata=UNSET,
    )
    assert updated.model_dump() == rollout.attempt.model_dump()


async def test_update_attempt_latest_targets_highest_sequence(store: LightningStore, clock: FakeClock) -> None:
    rollout_id, attempt_ids = await _rollout_with_attempts(store, clock, 3)
    updated = await store.update_attempt(rollout_id, "latest", status="running")
    assert updated.attempt_id == attempt_ids[-1]
    attempts = await store.query_attempts(rollout_id)
    assert [a.status for a in attempts] == ["preparing", "preparing", "running"]


async def test_status_write_on_a_replaced_attempt_is_refused(store: LightningStore, clock: FakeClock) -> None:
    rollout_id, attempt_ids = await _rollout_with_attempts(store, clock, 2)
    with pytest.raises(StaleAttemptError) as refused:
        await store.update_attempt(rollout_id, attempt_ids[0], status="succeeded")
    assert refused.value.current_attempt_id == attempt_ids[1] and refused.value.attempt_id == attempt_ids[0]
    old = (await store.query_attempts(rollout_id)).items[0]
    assert old.status != "succeeded" and old.end_time is None
    assert (await store.update_attempt(rollout_id, attempt_ids[0], metadata={"note": 1})).metadata == {"note": 1}
    rollout = await store.get_rollout_by_id(rollout_id)
    assert rollout is not None and rollout.status == "preparing" and rollout.end_time is None
    latest = await store.get_latest_attempt(rollout_id)
    assert latest is not None and latest.attempt_id == attempt_ids[1] and latest.status == "preparing"


async def test_update_attempt_is_persisted(store: LightningStore) -> None:
    rollout = await store.start_rollout(input="x")
    await store.update_attempt(rollout.rollout_id, rollout.attempt.attempt_id, status="running")
    (attempt,) = await store.query_attempts(rollout.rollout_id)
    assert attempt.status == "running"
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None and fetched.status == "running"
    assert fetched.attempt.status == "running"  # type: ignore[attr-defined]


async def test_update_attempt_non_status_write_does_not_restamp_finished_rollout(
    store: LightningStore, clock: FakeClock
) -> None:
    rollout = await store.start_rollout(input="x")
    finished_at = clock.advance(1)
    await store.update_attempt(rollout.rollout_id, "latest", status="succeeded")
    clock.advance(5)
    await store.update_attempt(rollout.rollout_id, "latest", metadata={"late": True})
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None
    assert fetched.status == "succeeded"
    assert fetched.end_time == finished_at
    attempt = await store.get_latest_attempt(rollout.rollout_id)
    assert attempt is not None and attempt.end_time == finished_at


async def test_failed_attempt_fails_rollout_with_end_time(store: LightningStore, clock: FakeClock) -> None:
    rollout = await store.start_rollout(input="x")
    now = clock.advance(4)
    await store.update_attempt(rollout.rollout_id, rollout.attempt.attempt_id, status="failed")
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None and fetched.status == "failed" and fetched.end_time == now


async def test_retry_flow_through_dequeue_until_attempts_exhausted(store: LightningStore) -> None:
    config = RolloutConfig(max_attempts=3, retry_condition=["failed"])
    rollout = await store.enqueue_rollout(input="x", config=config)
    seen: list[int] = []
    for _ in range(3):
        claimed = await store.dequeue_rollout(worker_id="Worker-0")
        assert claimed is not None and claimed.rollout_id == rollout.rollout_id
        seen.append(claimed.attempt.sequence_id)
        await store.update_attempt(rollout.rollout_id, claimed.attempt.attempt_id, status="failed")
    assert seen == [1, 2, 3]
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None and fetched.status == "failed" and fetched.end_time is not None
    assert await store.dequeue_rollout() is None
    assert [a.status for a in await store.query_attempts(rollout.rollout_id)] == ["failed"] * 3
