"""Store events: one per committed status change, creation included, on every in-process backend."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agl.store.base import LightningStore
from agl.store.events import AttemptTransition, RolloutTransition, StoreEvent, StoreEvents
from agl.types.core import RolloutConfig
from tests.store.backends import BACKENDS
from tests.store.clock import FakeClock
from tests.store.helpers import make_span

IN_PROCESS = ["memory", "threaded", "sqlite"]


@pytest.fixture(params=IN_PROCESS, ids=IN_PROCESS)
async def local_store(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[LightningStore]:
    async with BACKENDS[request.param](clock) as instance:
        yield instance


def _listen(store: LightningStore) -> list[StoreEvent]:
    seen: list[StoreEvent] = []
    store.events.subscribe(seen.append)
    return seen


def _rollout_moves(events: list[StoreEvent]) -> list[tuple[str | None, str]]:
    return [(e.old, e.new) for e in events if isinstance(e, RolloutTransition)]


def _attempt_moves(events: list[StoreEvent]) -> list[tuple[str | None, str]]:
    return [(e.old, e.new) for e in events if isinstance(e, AttemptTransition)]


async def test_a_successful_rollout_reports_each_change_once(local_store: LightningStore, clock: FakeClock) -> None:
    seen = _listen(local_store)
    rollout = await local_store.enqueue_rollout({"q": 1}, mode="train")
    claimed = await local_store.dequeue_rollout(worker_id="w-1")
    assert claimed is not None
    await local_store.add_span(make_span(claimed.rollout_id, claimed.attempt.attempt_id, 1))
    await local_store.add_span(make_span(claimed.rollout_id, claimed.attempt.attempt_id, 2))  # no change: no event
    clock.advance(2.0)
    await local_store.update_attempt(claimed.rollout_id, claimed.attempt.attempt_id, status="succeeded")

    assert _rollout_moves(seen) == [(None, "queuing"), ("queuing", "preparing"), ("preparing", "running"),
                                    ("running", "succeeded")]  # fmt: skip
    assert _attempt_moves(seen) == [(None, "preparing"), ("preparing", "running"), ("running", "succeeded")]
    first = seen[0]
    assert isinstance(first, RolloutTransition) and first.rollout_id == rollout.rollout_id and first.mode == "train"
    finished = next(e for e in seen if isinstance(e, RolloutTransition) and e.new == "succeeded")
    assert finished.time == clock()
    attempt_events = [e for e in seen if isinstance(e, AttemptTransition)]
    assert {e.worker_id for e in attempt_events} == {"w-1"}
    assert {e.sequence_id for e in attempt_events} == {1}


async def test_a_retried_rollout_reports_the_requeue_and_the_second_attempt(
    local_store: LightningStore, clock: FakeClock
) -> None:
    await local_store.enqueue_rollout({"q": 1}, config=RolloutConfig(max_attempts=2, retry_condition=["failed"]))
    seen = _listen(local_store)
    first = await local_store.dequeue_rollout()
    assert first is not None
    await local_store.update_attempt(first.rollout_id, first.attempt.attempt_id, status="failed")
    second = await local_store.dequeue_rollout()
    assert second is not None
    await local_store.update_attempt(second.rollout_id, second.attempt.attempt_id, status="failed")
    assert _rollout_moves(seen) == [("queuing", "preparing"), ("preparing", "requeuing"), ("requeuing", "preparing"),
                                    ("preparing", "failed")]  # fmt: skip
    assert [(e.sequence_id, e.old, e.new) for e in seen if isinstance(e, AttemptTransition)] == [
        (1, None, "preparing"), (1, "preparing", "failed"), (2, None, "preparing"), (2, "preparing", "failed"),
    ]  # fmt: skip


async def test_health_scan_and_update_rollout_report_changes(local_store: LightningStore, clock: FakeClock) -> None:
    await local_store.enqueue_rollout({"q": 1}, config=RolloutConfig(timeout_seconds=5))
    other = await local_store.enqueue_rollout({"q": 2})
    claimed = await local_store.dequeue_rollout()
    assert claimed is not None
    seen = _listen(local_store)
    clock.advance(6.0)
    await local_store.run_health_checks()
    await local_store.update_rollout(other.rollout_id, status="cancelled")
    assert ("preparing", "timeout") in _attempt_moves(seen)
    assert ("preparing", "failed") in _rollout_moves(seen)
    assert ("queuing", "cancelled") in _rollout_moves(seen)


async def test_unsubscribe_and_a_failing_listener_never_break_the_store(local_store: LightningStore) -> None:
    seen: list[StoreEvent] = []

    def broken(event: StoreEvent) -> None:
        raise RuntimeError("listener bug")

    local_store.events.subscribe(broken)
    stop = local_store.events.subscribe(seen.append)
    await local_store.enqueue_rollout({"q": 1})
    stop()
    await local_store.enqueue_rollout({"q": 2})
    assert len(seen) == 1
    assert len((await local_store.query_rollouts()).items) == 2


async def test_a_rolled_back_sqlite_change_reports_nothing(tmp_path: object, clock: FakeClock) -> None:
    from agl.store.sqlite import SqliteLightningStore

    store = SqliteLightningStore(f"{tmp_path}/s.db", clock=clock, scan_debounce_seconds=0)
    try:
        seen = _listen(store)
        claimed = await store.start_rollout({"q": 1})
        seen.clear()
        with pytest.raises(ValueError):  # unknown attempt: the transaction rolls back
            await store.update_attempt(claimed.rollout_id, "at-unknown", status="succeeded")
        assert seen == []
    finally:
        await store.close()


async def test_the_server_reports_its_stores_events() -> None:
    from agl.store.memory import InMemoryLightningStore
    from agl.store.server import LightningStoreServer

    inner = InMemoryLightningStore()
    server = LightningStoreServer(inner, port=0)
    assert server.events is inner.events
    assert isinstance(StoreEvents().active, bool) and not StoreEvents().active


async def test_a_refused_stale_write_is_reported(local_store: LightningStore) -> None:
    from agl.store.errors import StaleAttemptError
    from agl.store.events import StaleWriteRefused

    claimed = await local_store.start_rollout({"q": 1})
    await local_store.update_rollout(claimed.rollout_id, status="cancelled")
    seen = _listen(local_store)
    with pytest.raises(StaleAttemptError):
        await local_store.update_attempt(claimed.rollout_id, claimed.attempt.attempt_id, status="succeeded")
    assert seen == [StaleWriteRefused(claimed.rollout_id, claimed.attempt.attempt_id, claimed.attempt.attempt_id,
                                      seen[0].time)]  # fmt: skip
