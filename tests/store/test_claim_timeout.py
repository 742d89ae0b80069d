"""The claim timeout, on every backend: a claimed attempt its runner never confirms goes back to the queue.

The stores run with a 5 s claim timeout on the fake clock and scan on every call (and the served ones also on the
server's own timer), so each step below is judged at the instant the clock shows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agl.store.base import LightningStore
from agl.store.errors import StaleAttemptError
from agl.types import RolloutConfig
from tests.store.backends import BACKENDS
from tests.store.clock import FakeClock
from tests.store.helpers import make_span

CLAIM = 5.0


@pytest.fixture(params=list(BACKENDS), ids=list(BACKENDS))
async def store(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[LightningStore]:
    """A fresh store of each backend with a 5 s claim timeout."""
    async with BACKENDS[request.param](clock, claim_timeout_seconds=CLAIM) as instance:
        yield instance


@pytest.fixture(params=list(BACKENDS), ids=list(BACKENDS))
async def store_without_claim_timeout(
    request: pytest.FixtureRequest, clock: FakeClock
) -> AsyncIterator[LightningStore]:
    """A fresh store of each backend with the claim timeout turned off."""
    async with BACKENDS[request.param](clock, claim_timeout_seconds=None) as instance:
        yield instance


async def _status(store: LightningStore, rollout_id: str) -> tuple[str, str, int]:
    """(rollout status, latest attempt status, latest attempt sequence id)."""
    rollout = await store.get_rollout_by_id(rollout_id)
    assert rollout is not None
    attempt = await store.get_latest_attempt(rollout_id)
    assert attempt is not None
    return rollout.status, attempt.status, attempt.sequence_id


async def test_unconfirmed_claim_is_requeued_without_any_rule(store: LightningStore, clock: FakeClock) -> None:
    enqueued = await store.enqueue_rollout(input="x")  # default config: no timeout, no unresponsive rule, 1 attempt
    assert enqueued.config.timeout_seconds is None and enqueued.config.unresponsive_seconds is None
    claimed = await store.dequeue_rollout(worker_id="w-1")
    assert claimed is not None
    clock.advance(CLAIM)
    assert await _status(store, claimed.rollout_id) == ("preparing", "preparing", 1)  # at the limit: still held
    clock.advance(0.5)
    await store.run_health_checks()
    assert await _status(store, claimed.rollout_id) == ("requeuing", "unresponsive", 1)
    again = await store.dequeue_rollout(worker_id="w-2")
    assert again is not None and again.rollout_id == claimed.rollout_id
    assert again.attempt.sequence_id == 2 and again.attempt.worker_id == "w-2"
    worker = await store.get_worker_by_id("w-1")
    assert worker is not None and worker.status == "unknown" and worker.current_rollout_id is None


async def test_started_rollout_nobody_confirms_is_queued(store: LightningStore, clock: FakeClock) -> None:
    started = await store.start_rollout(input="x", worker_id="w-1")
    clock.advance(CLAIM + 1)
    assert await _status(store, started.rollout_id) == ("requeuing", "unresponsive", 1)
    claimed = await store.dequeue_rollout()
    assert claimed is not None and claimed.rollout_id == started.rollout_id


async def test_worker_heartbeats_keep_a_long_claim(store: LightningStore, clock: FakeClock) -> None:
    await store.enqueue_rollout(input="x")
    claimed = await store.dequeue_rollout(worker_id="w-1")
    assert claimed is not None
    for _ in range(20):  # 80 s of work, a heartbeat every 4 s: never requeued
        clock.advance(CLAIM - 1)
        await store.update_worker("w-1", {"cpu": 1})
        await store.run_health_checks()
        assert await _status(store, claimed.rollout_id) == ("preparing", "preparing", 1)
    await store.update_attempt(claimed.rollout_id, claimed.attempt.attempt_id, status="succeeded")
    assert await _status(store, claimed.rollout_id) == ("succeeded", "succeeded", 1)


async def test_a_stopped_heartbeat_loses_the_claim(store: LightningStore, clock: FakeClock) -> None:
    await store.enqueue_rollout(input="x")
    claimed = await store.dequeue_rollout(worker_id="w-1")
    assert claimed is not None
    clock.advance(4)
    await store.update_worker("w-1")
    clock.advance(4)
    await store.update_worker("w-2")  # another worker's heartbeat says nothing about w-1's claim
    assert await _status(store, claimed.rollout_id) == ("preparing", "preparing", 1)
    clock.advance(1.5)  # 5.5 s since w-1's last heartbeat
    assert await _status(store, claimed.rollout_id) == ("requeuing", "unresponsive", 1)


async def test_attempt_heartbeats_keep_the_claim(store: LightningStore, clock: FakeClock) -> None:
    await store.enqueue_rollout(input="x")
    claimed = await store.dequeue_rollout()  # no worker id: only the attempt's own heartbeats count
    assert claimed is not None
    for _ in range(5):
        now = clock.advance(CLAIM - 1)
        await store.update_attempt(claimed.rollout_id, claimed.attempt.attempt_id, last_heartbeat_time=now)
    clock.advance(CLAIM - 1)
    assert await _status(store, claimed.rollout_id) == ("preparing", "preparing", 1)
    clock.advance(1.5)
    assert await _status(store, claimed.rollout_id) == ("requeuing", "unresponsive", 1)


@pytest.mark.parametrize("confirm", ["span", "status"])
async def test_a_confirmed_attempt_is_never_requeued(store: LightningStore, clock: FakeClock, confirm: str) -> None:
    await store.enqueue_rollout(input="x")
    claimed = await store.dequeue_rollout(worker_id="w-1")
    assert claimed is not None
    clock.advance(CLAIM - 1)
    if confirm == "span":
        await store.add_span(make_span(claimed.rollout_id, claimed.attempt.attempt_id))
    else:
        await store.update_attempt(claimed.rollout_id, claimed.attempt.attempt_id, status="running")
    clock.advance(10_000)  # without a rule of its own, a running rollout is left alone however long it takes
    await store.run_health_checks()
    assert await _status(store, claimed.rollout_id) == ("running", "running", 1)


async def test_lost_claim_is_fenced(store: LightningStore, clock: FakeClock) -> None:
    await store.enqueue_rollout(input="x")
    lost = await store.dequeue_rollout(worker_id="w-1")
    assert lost is not None
    clock.advance(CLAIM + 1)
    await store.run_health_checks()
    with pytest.raises(StaleAttemptError) as refused:
        await store.update_attempt(lost.rollout_id, lost.attempt.attempt_id, status="succeeded")
    assert refused.value.rollout_status == "requeuing"
    late = await store.add_span(make_span(lost.rollout_id, lost.attempt.attempt_id))  # kept, moves nothing
    assert late is not None
    assert await _status(store, lost.rollout_id) == ("requeuing", "unresponsive", 1)
    current = await store.dequeue_rollout(worker_id="w-2")
    assert current is not None and current.rollout_id == lost.rollout_id
    with pytest.raises(StaleAttemptError) as refused:
        await store.update_attempt(lost.rollout_id, lost.attempt.attempt_id, status="failed")
    assert refused.value.current_attempt_id == current.attempt.attempt_id
    await store.update_attempt(current.rollout_id, current.attempt.attempt_id, status="succeeded")
    assert await _status(store, lost.rollout_id) == ("succeeded", "succeeded", 2)
    spans = await store.query_spans(lost.rollout_id, "latest")
    assert list(spans) == []  # the late span stays on the lost attempt


async def test_the_rollouts_own_rule_comes_first(store: LightningStore, clock: FakeClock) -> None:
    # An unresponsive rule shorter than the claim timeout judges the attempt by the rollout's retry rule (one
    # attempt: failed), as before; the claim timeout only acts where no rule did.
    await store.enqueue_rollout(input="x", config=RolloutConfig(unresponsive_seconds=2.0))
    claimed = await store.dequeue_rollout(worker_id="w-1")
    assert claimed is not None
    clock.advance(2.5)
    assert await _status(store, claimed.rollout_id) == ("failed", "unresponsive", 1)


async def test_lost_claims_requeue_beyond_max_attempts(store: LightningStore, clock: FakeClock) -> None:
    rollout = await store.enqueue_rollout(input="x", config=RolloutConfig(max_attempts=1))
    for sequence_id in (1, 2, 3):
        claimed = await store.dequeue_rollout(worker_id=f"w-{sequence_id}")
        assert claimed is not None and claimed.attempt.sequence_id == sequence_id
        clock.advance(CLAIM + 1)
        assert await _status(store, rollout.rollout_id) == ("requeuing", "unresponsive", sequence_id)


async def test_turned_off_the_claim_stays(store_without_claim_timeout: LightningStore, clock: FakeClock) -> None:
    store = store_without_claim_timeout
    await store.enqueue_rollout(input="x")
    claimed = await store.dequeue_rollout(worker_id="w-1")
    assert claimed is not None
    clock.advance(1e6)
    await store.run_health_checks()
    assert await _status(store, claimed.rollout_id) == ("preparing", "preparing", 1)
