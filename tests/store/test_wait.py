"""wait_for_rollouts (spec §2.6)."""

from __future__ import annotations

import asyncio
import time

import pytest

from agl.store.base import LightningStore
from agl.types import AttemptedRollout, Rollout, RolloutConfig
from tests.store.helpers import ids

GUARD = 5.0  # upper bound for any single wait in this module, so a broken store fails instead of hanging


async def _finish_later(store: LightningStore, rollout_id: str, delay: float, status: str = "succeeded") -> None:
    await asyncio.sleep(delay)
    await store.update_rollout(rollout_id, status=status)  # type: ignore[arg-type]


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
async def test_already_finished_returns_immediately(store: LightningStore, status: str) -> None:
    rollout = await store.start_rollout(input="x")
    await store.update_rollout(rollout.rollout_id, status=status)  # type: ignore[arg-type]
    started = time.perf_counter()
    done = await asyncio.wait_for(store.wait_for_rollouts(rollout_ids=[rollout.rollout_id], timeout=None), GUARD)
    assert time.perf_counter() - started < 0.5
    assert [(r.rollout_id, r.status) for r in done] == [(rollout.rollout_id, status)]
    assert isinstance(done[0], Rollout) and not isinstance(done[0], AttemptedRollout)


@pytest.mark.parametrize("timeout", [0, 0.0, -1.0])
async def test_nonpositive_timeout_checks_once(store: LightningStore, timeout: float) -> None:
    pending = await store.start_rollout(input="x")
    finished = await store.start_rollout(input="y")
    await store.update_rollout(finished.rollout_id, status="succeeded")
    started = time.perf_counter()
    done = await store.wait_for_rollouts(rollout_ids=[pending.rollout_id, finished.rollout_id], timeout=timeout)
    assert time.perf_counter() - started < 0.05
    assert ids(done) == [finished.rollout_id]


@pytest.mark.parametrize("status", ["queuing", "preparing", "running", "requeuing"])
async def test_non_terminal_statuses_are_not_finished(store: LightningStore, status: str) -> None:
    rollout = await store.start_rollout(input="x")
    if status != "preparing":
        await store.update_rollout(rollout.rollout_id, status=status)  # type: ignore[arg-type]
    assert list(await store.wait_for_rollouts(rollout_ids=[rollout.rollout_id], timeout=0)) == []


async def test_timeout_is_honoured(store: LightningStore) -> None:
    rollout = await store.start_rollout(input="x")
    started = time.perf_counter()
    done = await asyncio.wait_for(store.wait_for_rollouts(rollout_ids=[rollout.rollout_id], timeout=0.1), GUARD)
    elapsed = time.perf_counter() - started
    assert list(done) == []
    assert 0.08 <= elapsed < 1.0


@pytest.mark.parametrize("timeout", [None, 3.0])
async def test_wakes_promptly_when_another_task_finishes_the_rollout(
    store: LightningStore, timeout: float | None
) -> None:
    rollout = await store.start_rollout(input="x")
    finisher = asyncio.create_task(_finish_later(store, rollout.rollout_id, 0.05))
    started = time.perf_counter()
    done = await asyncio.wait_for(store.wait_for_rollouts(rollout_ids=[rollout.rollout_id], timeout=timeout), GUARD)
    elapsed = time.perf_counter() - started
    await finisher
    assert [(r.rollout_id, r.status) for r in done] == [(rollout.rollout_id, "succeeded")]
    assert elapsed < 1.0


async def test_wakes_when_attempt_update_finishes_the_rollout(store: LightningStore) -> None:
    rollout = await store.start_rollout(input="x")

    async def fail_attempt() -> None:
        await asyncio.sleep(0.05)
        await store.update_attempt(rollout.rollout_id, rollout.attempt.attempt_id, status="failed")

    finisher = asyncio.create_task(fail_attempt())
    started = time.perf_counter()
    done = await asyncio.wait_for(store.wait_for_rollouts(rollout_ids=[rollout.rollout_id], timeout=3.0), GUARD)
    await finisher
    assert time.perf_counter() - started < 1.0
    assert [(r.rollout_id, r.status) for r in done] == [(rollout.rollout_id, "failed")]


async def test_requeued_rollout_does_not_wake_waiter(store: LightningStore) -> None:
    config = RolloutConfig(max_attempts=2, retry_condition=["failed"])
    rollout = await store.start_rollout(input="x", config=config)
    await store.update_attempt(rollout.rollout_id, "latest", status="failed")  # -> requeuing, not finished
    done = await asyncio.wait_for(store.wait_for_rollouts(rollout_ids=[rollout.rollout_id], timeout=0.1), GUARD)
    assert list(done) == []


async def test_waits_for_all_rollouts(store: LightningStore) -> None:
    first = await store.start_rollout(input=1)
    second = await store.start_rollout(input=2)
    tasks = [
        asyncio.create_task(_finish_later(store, second.rollout_id, 0.02)),
        asyncio.create_task(_finish_later(store, first.rollout_id, 0.08, "failed")),
    ]
    started = time.perf_counter()
    done = await asyncio.wait_for(
        store.wait_for_rollouts(rollout_ids=[first.rollout_id, second.rollout_id], timeout=None), GUARD
    )
    await asyncio.gather(*tasks)
    assert time.perf_counter() - started < 1.0
    assert ids(done) == [first.rollout_id, second.rollout_id]


async def test_result_in_input_order_not_completion_order(store: LightningStore) -> None:
    rollouts = [await store.start_rollout(input=i) for i in range(3)]
    for rollout in reversed(rollouts):
        await store.update_rollout(rollout.rollout_id, status="succeeded")
    order = [rollouts[1].rollout_id, rollouts[2].rollout_id, rollouts[0].rollout_id]
    done = await store.wait_for_rollouts(rollout_ids=order, timeout=0)
    assert ids(done) == order


async def test_unfinished_rollouts_are_omitted(store: LightningStore) -> None:
    finished = await store.start_rollout(input=1)
    pending = await store.start_rollout(input=2)
    await store.update_rollout(finished.rollout_id, status="succeeded")
    started = time.perf_counter()
    done = await asyncio.wait_for(
        store.wait_for_rollouts(rollout_ids=[pending.rollout_id, finished.rollout_id], timeout=0.05), GUARD
    )
    assert time.perf_counter() - started < 1.0
    assert ids(done) == [finished.rollout_id]


async def test_unknown_ids_are_ignored(store: LightningStore) -> None:
    finished = await store.start_rollout(input=1)
    await store.update_rollout(finished.rollout_id, status="cancelled")
    done = await asyncio.wait_for(
        store.wait_for_rollouts(rollout_ids=["ro-unknown", finished.rollout_id, "ro-other"], timeout=0.05), GUARD
    )
    assert ids(done) == [finished.rollout_id]


async def test_only_unknown_ids_returns_empty(store: LightningStore) -> None:
    done = await asyncio.wait_for(store.wait_for_rollouts(rollout_ids=["ro-a", "ro-b"], timeout=0.05), GUARD)
    assert list(done) == []


async def test_empty_id_list(store: LightningStore) -> None:
    assert list(await asyncio.wait_for(store.wait_for_rollouts(rollout_ids=[], timeout=None), GUARD)) == []


async def test_returned_rollout_reflects_final_state(store: LightningStore) -> None:
    rollout = await store.start_rollout(input={"q": 1}, metadata={"m": 1})
    await store.update_rollout(rollout.rollout_id, status="succeeded", metadata={"m": 2})
    (done,) = await store.wait_for_rollouts(rollout_ids=[rollout.rollout_id], timeout=0)
    assert done.status == "succeeded"
    assert done.metadata == {"m": 2}
    assert done.input == {"q": 1}
    assert done.end_time is not None
