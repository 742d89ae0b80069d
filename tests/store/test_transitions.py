"""The state tables of the spec, one parametrized case per row.

§5.1 rollout status, §5.2 attempt status, §5.3 retry rule, §3 worker status derivation, §5.4 health scan.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from agl.store.base import LightningStore
from agl.store.errors import StaleAttemptError
from agl.types import EnqueueRolloutRequest, RolloutConfig
from tests.store.clock import FakeClock
from tests.store.helpers import make_otel_span, make_span, sample_resources

ROLLOUT_STATUSES = ["queuing", "preparing", "running", "failed", "succeeded", "cancelled", "requeuing"]
ATTEMPT_STATUSES = ["preparing", "running", "failed", "succeeded", "unresponsive", "timeout"]
TERMINAL = {"failed", "succeeded", "cancelled"}


async def _start_in_status(store: LightningStore, clock: FakeClock, status: str, **kwargs: Any) -> Any:
    """start_rollout (attempt #1 preparing), then force the rollout status; returns (rollout, time of force)."""
    rollout = await store.start_rollout(input="x", **kwargs)
    forced_at = clock.advance(1)
    if status != "preparing":
        await store.update_rollout(rollout.rollout_id, status=status)  # type: ignore[arg-type]
    return rollout, forced_at


# ==== §5.1 rollout status =====================================================================================


@pytest.mark.parametrize("trigger", ["enqueue_rollout", "enqueue_many_rollouts", "start_rollout"])
async def test_5_1_creation(store: LightningStore, trigger: str) -> None:
    if trigger == "enqueue_rollout":
        rollout = await store.enqueue_rollout(input="x")
        expected, queued = "queuing", True
    elif trigger == "enqueue_many_rollouts":
        (rollout,) = await store.enqueue_many_rollouts([EnqueueRolloutRequest(input="x")])
        expected, queued = "queuing", True
    else:
        rollout = await store.start_rollout(input="x")
        expected, queued = "preparing", False
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None and fetched.status == expected
    claimed = await store.dequeue_rollout()
    assert (claimed is not None) is queued


@pytest.mark.parametrize(("from_status", "prior_attempts"), [("queuing", 0), ("queuing", 1), ("requeuing", 1)])
async def test_5_1_dequeue_at_head(
    store: LightningStore, clock: FakeClock, from_status: str, prior_attempts: int
) -> None:
    if prior_attempts == 0:
        rollout = await store.enqueue_rollout(input="x")
    else:
        rollout, _ = await _start_in_status(store, clock, from_status)
    claimed = await store.dequeue_rollout()
    assert claimed is not None and claimed.rollout_id == rollout.rollout_id
    assert claimed.status == "preparing"
    assert claimed.attempt.sequence_id == prior_attempts + 1
    assert claimed.attempt.status == "preparing"
    assert len(await store.query_attempts(rollout.rollout_id)) == prior_attempts + 1


@pytest.mark.parametrize("status", ["preparing", "running", "failed", "succeeded", "cancelled"])
async def test_5_1_dequeue_stale_entry(store: LightningStore, status: str) -> None:
    rollout = await store.enqueue_rollout(input="x")
    await store.update_rollout(rollout.rollout_id, status=status)  # type: ignore[arg-type]
    assert await store.dequeue_rollout() is None
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None and fetched.status == status
    assert len(await store.query_attempts(rollout.rollout_id)) == 0


@pytest.mark.parametrize("from_status", ROLLOUT_STATUSES)
async def test_5_1_start_attempt_from_any(store: LightningStore, clock: FakeClock, from_status: str) -> None:
    rollout, forced_at = await _start_in_status(store, clock, from_status)
    clock.advance(1)
    retried = await store.start_attempt(rollout.rollout_id)
    assert retried.status == "preparing"
    assert retried.attempt.sequence_id == 2
    assert retried.end_time == (forced_at if from_status in TERMINAL else None)
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None and fetched.status == "preparing"


# Span on the latest attempt: preparing -> running; every other status unchanged. Fencing (AGL): a requeued rollout
# is no longer held by its attempt, so a late span leaves it requeuing (Agent Lightning 0.3 moves it to running).
SPAN_ON_LATEST = [
    ("queuing", "queuing"),
    ("preparing", "running"),
    ("running", "running"),
    ("failed", "failed"),
    ("succeeded", "succeeded"),
    ("cancelled", "cancelled"),
    ("requeuing", "requeuing"),
]


@pytest.mark.parametrize(("from_status", "to_status"), SPAN_ON_LATEST)
async def test_5_1_span_on_latest_attempt(
    store: LightningStore, clock: FakeClock, from_status: str, to_status: str
) -> None:
    rollout, forced_at = await _start_in_status(store, clock, from_status)
    clock.advance(1)
    stored = await store.add_span(make_span(rollout.rollout_id, rollout.attempt.attempt_id))
    assert stored is not None
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None and fetched.status == to_status
    assert fetched.end_time == (forced_at if from_status in TERMINAL else None)


async def test_5_1_late_span_leaves_a_requeued_rollout_claimable(store: LightningStore, clock: FakeClock) -> None:
    rollout, _ = await _start_in_status(store, clock, "requeuing")
    late = make_span(rollout.rollout_id, rollout.attempt.attempt_id)
    await store.add_span(late)
    claimed = await store.dequeue_rollout()
    assert claimed is not None and claimed.rollout_id == rollout.rollout_id and claimed.attempt.sequence_id == 2
    # The late span is kept on its own attempt and is not one of the current attempt's.
    assert [s.span_id for s in await store.query_spans(rollout.rollout_id, rollout.attempt.attempt_id)] == [
        late.span_id
    ]
    assert len(await store.query_spans(rollout.rollout_id, "latest")) == 0


async def test_5_1_span_on_queuing_rollout_keeps_it_claimable(store: LightningStore, clock: FakeClock) -> None:
    rollout, _ = await _start_in_status(store, clock, "queuing")
    await store.add_span(make_span(rollout.rollout_id, rollout.attempt.attempt_id))
    claimed = await store.dequeue_rollout()
    assert claimed is not None and claimed.rollout_id == rollout.rollout_id
    assert claimed.attempt.sequence_id == 2


@pytest.mark.parametrize("from_status", ROLLOUT_STATUSES)
async def test_5_1_span_on_old_attempt_never_moves_rollout(
    store: LightningStore, clock: FakeClock, from_status: str
) -> None:
    rollout = await store.start_rollout(input="x")
    await store.start_attempt(rollout.rollout_id)
    if from_status != "preparing":
        await store.update_rollout(rollout.rollout_id, status=from_status)  # type: ignore[arg-type]
    clock.advance(1)
    await store.add_span(make_span(rollout.rollout_id, rollout.attempt.attempt_id))
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None and fetched.status == from_status


@pytest.mark.parametrize("from_status", ROLLOUT_STATUSES)
@pytest.mark.parametrize("to_status", ROLLOUT_STATUSES)
async def test_5_1_update_rollout_any_to_any(
    store: LightningStore, clock: FakeClock, from_status: str, to_status: str
) -> None:
    rollout, forced_at = await _start_in_status(store, clock, from_status)
    now = clock.advance(1)
    updated = await store.update_rollout(rollout.rollout_id, status=to_status)  # type: ignore[arg-type]
    assert updated.status == to_status
    if to_status in TERMINAL:
        assert updated.end_time == now
    elif from_status in TERMINAL:
        assert updated.end_time == forced_at
    else:
        assert updated.end_time is None
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None and fetched.status == to_status


@pytest.mark.parametrize("from_status", ["cancelled", "succeeded", "failed", "requeuing", "queuing"])
@pytest.mark.parametrize("write", ["running", "succeeded", "failed", "heartbeat"])
async def test_5_1_attempt_writes_cannot_move_a_rollout_that_moved_on(
    store: LightningStore, clock: FakeClock, from_status: str, write: str
) -> None:
    rollout, _ = await _start_in_status(store, clock, from_status)
    fields: dict[str, Any] = {"last_heartbeat_time": clock()} if write == "heartbeat" else {"status": write}
    with pytest.raises(StaleAttemptError) as refused:
        await store.update_attempt(rollout.rollout_id, "latest", **fields)
    assert refused.value.current_attempt_id == rollout.attempt.attempt_id
    assert rollout.attempt.attempt_id in str(refused.value) and from_status in str(refused.value)
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None and fetched.status == from_status
    attempt = await store.get_latest_attempt(rollout.rollout_id)
    assert attempt is not None and attempt.status == "preparing" and attempt.last_heartbeat_time is None


# ==== §5.2 attempt status =====================================================================================


@pytest.mark.parametrize("trigger", ["start_rollout", "dequeue_rollout", "dequeue_many_rollouts", "start_attempt"])
async def test_5_2_creation(store: LightningStore, clock: FakeClock, trigger: str) -> None:
    if trigger == "start_rollout":
        now = clock.advance(1)
        created = await store.start_rollout(input="x")
    elif trigger in ("dequeue_rollout", "dequeue_many_rollouts"):
        await store.enqueue_rollout(input="x")
        now = clock.advance(1)
        if trigger == "dequeue_rollout":
            created = await store.dequeue_rollout()
        else:
            (created,) = await store.dequeue_many_rollouts(limit=1)
    else:
        rollout = await store.start_rollout(input="x")
        now = clock.advance(1)
        created = await store.start_attempt(rollout.rollout_id)
    assert created is not None
    attempt = created.attempt
    assert attempt.status == "preparing"
    assert attempt.start_time == now
    assert attempt.end_time is None
    assert attempt.last_heartbeat_time is None


# The attempt's status after a span. Fencing (AGL): an unresponsive attempt has lost its rollout (requeued or failed),
# so its late span no longer revives it (Agent Lightning 0.3: unresponsive -> running).
SPAN_ON_ATTEMPT = [
    ("preparing", "running"),
    ("unresponsive", "unresponsive"),
    ("running", "running"),
    ("timeout", "timeout"),
    ("failed", "failed"),
    ("succeeded", "succeeded"),
]


async def _send_span(store: LightningStore, method: str, rollout_id: str, attempt_id: str) -> None:
    if method == "add_span":
        assert await store.add_span(make_span(rollout_id, attempt_id)) is not None
    elif method == "add_many_spans":
        spans = [make_span(rollout_id, attempt_id, 1), make_span(rollout_id, attempt_id, 2)]
        assert len(await store.add_many_spans(spans)) == 2
    else:
        assert await store.add_otel_span(rollout_id, attempt_id, make_otel_span()) is not None


@pytest.mark.parametrize("method", ["add_span", "add_many_spans", "add_otel_span"])
@pytest.mark.parametrize(("from_status", "to_status"), SPAN_ON_ATTEMPT)
async def test_5_2_span_arrival(
    store: LightningStore, clock: FakeClock, method: str, from_status: str, to_status: str
) -> None:
    rollout = await store.start_rollout(input="x")
    aid = rollout.attempt.attempt_id
    if from_status != "preparing":
        await store.update_attempt(rollout.rollout_id, aid, status=from_status)  # type: ignore[arg-type]
    now = clock.advance(2)
    await _send_span(store, method, rollout.rollout_id, aid)
    (attempt,) = await store.query_attempts(rollout.rollout_id)
    assert attempt.status == to_status
    assert attempt.last_heartbeat_time == now


@pytest.mark.parametrize("from_status", [f for f, _ in SPAN_ON_ATTEMPT])
async def test_5_2_span_arrival_on_old_attempt(store: LightningStore, clock: FakeClock, from_status: str) -> None:
    rollout = await store.start_rollout(input="x")
    aid = rollout.attempt.attempt_id
    if from_status != "preparing":
        await store.update_attempt(rollout.rollout_id, aid, status=from_status)  # type: ignore[arg-type]
    retried = await store.start_attempt(rollout.rollout_id)
    now = clock.advance(2)
    await store.add_span(make_span(rollout.rollout_id, aid))
    old, new = await store.query_attempts(rollout.rollout_id)
    assert old.status == from_status and old.last_heartbeat_time == now  # a replaced attempt's status never moves
    assert new.attempt_id == retried.attempt.attempt_id
    assert new.status == "preparing" and new.last_heartbeat_time is None
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None and fetched.status == "preparing"


@pytest.mark.parametrize("from_status", ATTEMPT_STATUSES)
@pytest.mark.parametrize("to_status", ATTEMPT_STATUSES)
async def test_5_2_update_attempt_any_to_any(
    store: LightningStore, clock: FakeClock, from_status: str, to_status: str
) -> None:
    rollout = await store.start_rollout(input="x")
    aid = rollout.attempt.attempt_id
    first = clock.advance(1)
    if from_status != "preparing":
        await store.update_attempt(rollout.rollout_id, aid, status=from_status)  # type: ignore[arg-type]
    now = clock.advance(1)
    if from_status not in ("preparing", "running"):  # the rollout moved on (finished or requeued): fenced
        with pytest.raises(StaleAttemptError):
            await store.update_attempt(rollout.rollout_id, aid, status=to_status)  # type: ignore[arg-type]
        (stored,) = await store.query_attempts(rollout.rollout_id)
        assert stored.status == from_status
        return
    updated = await store.update_attempt(rollout.rollout_id, aid, status=to_status)  # type: ignore[arg-type]
    assert updated.status == to_status
    if to_status in ("failed", "succeeded"):
        assert updated.end_time == now
    elif from_status in ("failed", "succeeded"):
        assert updated.end_time == first
    else:
        assert updated.end_time is None
    (stored,) = await store.query_attempts(rollout.rollout_id)
    assert stored.status == to_status


# ==== §5.3 retry rule =========================================================================================

# (latest attempt status, retry_condition, max_attempts, sequence id of the written attempt, expected rollout status)
RETRY_RULE = [
    ("preparing", [], 1, 1, "preparing"),
    ("running", [], 1, 1, "running"),
    ("succeeded", [], 1, 1, "succeeded"),
    ("succeeded", ["failed"], 3, 1, "succeeded"),
    *[
        row
        for status in ("failed", "timeout", "unresponsive")
        for row in (
            (status, [status], 2, 1, "requeuing"),
            (status, [status], 3, 2, "requeuing"),
            (status, [status], 1, 1, "failed"),
            (status, [status], 2, 2, "failed"),
            (status, [s for s in ("failed", "timeout", "unresponsive") if s != status], 5, 1, "failed"),
            (status, [], 5, 1, "failed"),
        )
    ],
]


@pytest.mark.parametrize(("attempt_status", "retry_condition", "max_attempts", "sequence_id", "expected"), RETRY_RULE)
async def test_5_3_retry_rule(
    store: LightningStore,
    clock: FakeClock,
    attempt_status: str,
    retry_condition: list[str],
    max_attempts: int,
    sequence_id: int,
    expected: str,
) -> None:
    config = RolloutConfig(max_attempts=max_attempts, retry_condition=retry_condition)  # type: ignore[arg-type]
    rollout = await store.start_rollout(input="x", config=config)
    for _ in range(sequence_id - 1):
        await store.start_attempt(rollout.rollout_id)
    # Put the rollout somewhere else first so that the write is observable.
    await store.update_rollout(rollout.rollout_id, status="running" if expected != "running" else "preparing")
    now = clock.advance(1)
    written = await store.update_attempt(rollout.rollout_id, "latest", status=attempt_status)  # type: ignore[arg-type]
    assert written.sequence_id == sequence_id
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None and fetched.status == expected
    if expected in TERMINAL:
        assert fetched.end_time == now
    else:
        assert fetched.end_time is None
    claimed = await store.dequeue_rollout()
    if expected == "requeuing":
        assert claimed is not None and claimed.rollout_id == rollout.rollout_id
        assert claimed.attempt.sequence_id == sequence_id + 1
    else:
        assert claimed is None


async def test_5_3_requeued_rollout_goes_to_queue_tail(store: LightningStore) -> None:
    config = RolloutConfig(max_attempts=2, retry_condition=["failed"])
    rollout = await store.start_rollout(input="x", config=config)
    other = await store.enqueue_rollout(input="other")
    await store.update_attempt(rollout.rollout_id, "latest", status="failed")
    claimed = await store.dequeue_many_rollouts(limit=3)
    assert [r.rollout_id for r in claimed] == [other.rollout_id, rollout.rollout_id]


# ==== §3 worker status derivation =============================================================================

# attempt status after the change -> (worker status, stamped time field, holds the attempt)
WORKER_FROM_ATTEMPT = [
    ("preparing", "busy", "last_busy_time", True),
    ("running", "busy", "last_busy_time", True),
    ("succeeded", "idle", "last_idle_time", False),
    ("failed", "idle", "last_idle_time", False),
    ("timeout", "unknown", "last_idle_time", False),
    ("unresponsive", "unknown", "last_idle_time", False),
]


@pytest.mark.parametrize(("attempt_status", "worker_status", "stamped", "holds"), WORKER_FROM_ATTEMPT)
async def test_3_worker_follows_attempt_status(
    store: LightningStore, clock: FakeClock, attempt_status: str, worker_status: str, stamped: str, holds: bool
) -> None:
    rollout = await store.start_rollout(input="x", worker_id="Worker-0")
    now = clock.advance(3)
    await store.update_attempt(rollout.rollout_id, "latest", status=attempt_status)  # type: ignore[arg-type]
    worker = await store.get_worker_by_id("Worker-0")
    assert worker is not None
    assert worker.status == worker_status
    assert getattr(worker, stamped) == now
    if holds:
        assert worker.current_rollout_id == rollout.rollout_id
        assert worker.current_attempt_id == rollout.attempt.attempt_id
    else:
        assert worker.current_rollout_id is None and worker.current_attempt_id is None


@pytest.mark.parametrize("trigger", ["start_rollout", "start_attempt", "dequeue_rollout", "dequeue_many_rollouts"])
async def test_3_worker_busy_on_attempt_creation(store: LightningStore, clock: FakeClock, trigger: str) -> None:
    if trigger == "start_attempt":
        base = await store.start_rollout(input="x")
        now = clock.advance(1)
        created = await store.start_attempt(base.rollout_id, worker_id="Worker-3")
    elif trigger == "start_rollout":
        now = clock.advance(1)
        created = await store.start_rollout(input="x", worker_id="Worker-3")
    else:
        await store.enqueue_rollout(input="x")
        now = clock.advance(1)
        if trigger == "dequeue_rollout":
            created = await store.dequeue_rollout(worker_id="Worker-3")
        else:
            (created,) = await store.dequeue_many_rollouts(limit=1, worker_id="Worker-3")
    assert created is not None
    worker = await store.get_worker_by_id("Worker-3")
    assert worker is not None
    assert worker.status == "busy"
    assert worker.last_busy_time == now
    assert worker.current_rollout_id == created.rollout_id
    assert worker.current_attempt_id == created.attempt.attempt_id
    if trigger.startswith("dequeue"):
        assert worker.last_dequeue_time == now
    else:
        assert worker.last_dequeue_time is None


async def test_3_worker_id_written_by_update_attempt(store: LightningStore, clock: FakeClock) -> None:
    rollout = await store.start_rollout(input="x")
    now = clock.advance(1)
    await store.update_attempt(rollout.rollout_id, "latest", worker_id="Worker-5")
    worker = await store.get_worker_by_id("Worker-5")
    assert worker is not None and worker.status == "busy"
    assert worker.last_busy_time == now
    assert worker.current_rollout_id == rollout.rollout_id
    assert worker.current_attempt_id == rollout.attempt.attempt_id


async def test_3_status_write_without_worker_creates_no_worker(store: LightningStore) -> None:
    rollout = await store.start_rollout(input="x")
    await store.update_attempt(rollout.rollout_id, "latest", status="succeeded")
    assert len(await store.query_workers()) == 0


# worker state before an empty dequeue -> whether last_idle_time is refreshed
EMPTY_DEQUEUE = [("new", True), ("unknown", True), ("busy", True), ("idle", False)]


@pytest.mark.parametrize(("before", "refreshes_idle_time"), EMPTY_DEQUEUE)
async def test_3_empty_dequeue(store: LightningStore, clock: FakeClock, before: str, refreshes_idle_time: bool) -> None:
    if before == "unknown":
        await store.update_worker("Worker-1")
    elif before == "busy":
        await store.start_rollout(input="x", worker_id="Worker-1")
    elif before == "idle":
        assert await store.dequeue_rollout(worker_id="Worker-1") is None
    previous = await store.get_worker_by_id("Worker-1")
    now = clock.advance(2)
    assert await store.dequeue_rollout(worker_id="Worker-1") is None
    worker = await store.get_worker_by_id("Worker-1")
    assert worker is not None
    assert worker.status == "idle"
    assert worker.last_dequeue_time == now
    if refreshes_idle_time:
        assert worker.last_idle_time == now
    else:
        assert previous is not None and worker.last_idle_time == previous.last_idle_time != now


async def test_3_timestamps_refresh_on_every_sync(store: LightningStore, clock: FakeClock) -> None:
    rollout = await store.start_rollout(input="x", worker_id="Worker-0")
    await store.update_attempt(rollout.rollout_id, "latest", status="running")
    later = clock.advance(5)
    await store.update_attempt(rollout.rollout_id, "latest", status="running")
    worker = await store.get_worker_by_id("Worker-0")
    assert worker is not None and worker.status == "busy" and worker.last_busy_time == later


# ==== §5.4 health scan ========================================================================================

# (timeout_seconds, unresponsive_seconds, heartbeat at (s after start) or None, check at (s after start), expected)
HEALTH_RULES = [
    (10.0, None, None, 10.0, "preparing"),
    (10.0, None, None, 10.5, "timeout"),
    (10.0, None, 2.0, 9.0, "running"),
    (10.0, None, 2.0, 10.5, "timeout"),
    (10.0, 5.0, 9.0, 10.5, "timeout"),
    (10.0, 3.0, None, 10.5, "timeout"),
    (None, 5.0, None, 5.0, "preparing"),
    (None, 5.0, None, 5.5, "unresponsive"),
    (None, 5.0, 3.0, 7.0, "running"),
    (None, 5.0, 3.0, 8.0, "running"),
    (None, 5.0, 3.0, 8.5, "unresponsive"),
    (20.0, 5.0, 3.0, 8.5, "unresponsive"),
    # No rule of its own: the claim timeout (default 30 s) returns an attempt nobody confirmed to the queue.
    (None, None, None, 30.0, "preparing"),
    (None, None, None, 30.5, "unresponsive"),
    (None, None, 1.0, 1e6, "running"),
]


@pytest.mark.parametrize(("timeout", "unresponsive", "heartbeat_at", "check_at", "expected"), HEALTH_RULES)
async def test_5_4_health_rules(
    store: LightningStore,
    clock: FakeClock,
    timeout: float | None,
    unresponsive: float | None,
    heartbeat_at: float | None,
    check_at: float,
    expected: str,
) -> None:
    config = RolloutConfig(timeout_seconds=timeout, unresponsive_seconds=unresponsive)
    start = clock()
    rollout = await store.start_rollout(input="x", config=config)
    if heartbeat_at is not None:
        clock.advance(heartbeat_at)
        await store.add_span(make_span(rollout.rollout_id, rollout.attempt.attempt_id))
    clock.advance(start + check_at - clock())
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None
    attempt = fetched.attempt  # type: ignore[attr-defined]
    assert attempt.status == expected
    if expected in ("timeout", "unresponsive") and timeout is None and unresponsive is None:
        assert attempt.end_time is None  # a lost claim: back to the queue whatever the retry rule
        assert fetched.status == "requeuing"
        assert fetched.end_time is None
    elif expected in ("timeout", "unresponsive"):
        assert attempt.end_time is None
        assert fetched.status == "failed"
        assert fetched.end_time == clock()
    else:
        assert fetched.status == expected
        assert fetched.end_time is None


async def test_5_4_heartbeat_written_by_update_attempt_counts(store: LightningStore, clock: FakeClock) -> None:
    rollout = await store.start_rollout(input="x", config=RolloutConfig(unresponsive_seconds=5.0))
    hb = clock.advance(4)
    await store.update_attempt(rollout.rollout_id, "latest", last_heartbeat_time=hb)
    clock.advance(4)  # 8 s after start, 4 s after the heartbeat
    attempt = await store.get_latest_attempt(rollout.rollout_id)
    assert attempt is not None and attempt.status == "preparing"
    clock.advance(1.5)
    attempt = await store.get_latest_attempt(rollout.rollout_id)
    assert attempt is not None and attempt.status == "unresponsive"


async def test_5_4_timeout_measured_from_attempt_start(store: LightningStore, clock: FakeClock) -> None:
    rollout = await store.start_rollout(input="x", config=RolloutConfig(timeout_seconds=10.0))
    clock.advance(8)
    retried = await store.start_attempt(rollout.rollout_id)
    clock.advance(4)  # 12 s after the rollout started, 4 s after this attempt started
    attempt = await store.get_latest_attempt(rollout.rollout_id)
    assert attempt is not None and attempt.attempt_id == retried.attempt.attempt_id
    assert attempt.status == "preparing"
    clock.advance(6.5)
    attempt = await store.get_latest_attempt(rollout.rollout_id)
    assert attempt is not None and attempt.status == "timeout"


async def test_5_4_only_latest_attempt_is_checked(store: LightningStore, clock: FakeClock) -> None:
    rollout = await store.start_rollout(input="x", config=RolloutConfig(timeout_seconds=10.0))
    clock.advance(8)
    await store.start_attempt(rollout.rollout_id)
    clock.advance(5)
    first, second = await store.query_attempts(rollout.rollout_id)
    assert first.status == "preparing"
    assert second.status == "preparing"


@pytest.mark.parametrize("status", ["queuing", "requeuing", "failed", "succeeded", "cancelled"])
async def test_5_4_only_preparing_or_running_rollouts_are_scanned(
    store: LightningStore, clock: FakeClock, status: str
) -> None:
    config = RolloutConfig(timeout_seconds=1.0, unresponsive_seconds=1.0)
    rollout = await store.start_rollout(input="x", config=config)
    await store.update_rollout(rollout.rollout_id, status=status)  # type: ignore[arg-type]
    clock.advance(50)
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None and fetched.status == status
    assert fetched.attempt.status == "preparing"  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["timeout", "unresponsive"])
async def test_5_4_unhealthy_attempt_retries_when_allowed(store: LightningStore, clock: FakeClock, kind: str) -> None:
    if kind == "timeout":
        config = RolloutConfig(timeout_seconds=5.0, max_attempts=2, retry_condition=["timeout"])
    else:
        config = RolloutConfig(unresponsive_seconds=5.0, max_attempts=2, retry_condition=["unresponsive"])
    rollout = await store.enqueue_rollout(input="x", config=config)
    first = await store.dequeue_rollout(worker_id="Worker-0")
    assert first is not None
    clock.advance(6)
    # The scan runs at the start of the dequeue: the rollout is requeued and claimed by the same call.
    second = await store.dequeue_rollout(worker_id="Worker-1")
    assert second is not None and second.rollout_id == rollout.rollout_id
    assert second.attempt.sequence_id == 2
    attempts = await store.query_attempts(rollout.rollout_id)
    assert [a.status for a in attempts] == [kind, "preparing"]


async def test_5_4_unhealthy_attempt_marks_worker_unknown(store: LightningStore, clock: FakeClock) -> None:
    rollout = await store.start_rollout(input="x", config=RolloutConfig(timeout_seconds=5.0), worker_id="Worker-0")
    now = clock.advance(6)
    assert (await store.get_rollout_by_id(rollout.rollout_id)) is not None
    worker = await store.get_worker_by_id("Worker-0")
    assert worker is not None
    assert worker.status == "unknown"
    assert worker.last_idle_time == now
    assert worker.current_rollout_id is None and worker.current_attempt_id is None


async def test_5_4_transition_visible_in_same_query(store: LightningStore, clock: FakeClock) -> None:
    rollout = await store.start_rollout(input="x", config=RolloutConfig(timeout_seconds=5.0))
    clock.advance(6)
    failed = await store.query_rollouts(status_in=["failed"])
    assert [r.rollout_id for r in failed] == [rollout.rollout_id]


async def test_5_4_wait_sees_watchdog_failure(store: LightningStore, clock: FakeClock) -> None:
    rollout = await store.start_rollout(input="x", config=RolloutConfig(timeout_seconds=5.0))
    clock.advance(6)
    done = await store.wait_for_rollouts(rollout_ids=[rollout.rollout_id], timeout=0)
    assert [(r.rollout_id, r.status) for r in done] == [(rollout.rollout_id, "failed")]


@pytest.mark.parametrize(("retry", "rollout_after_span"), [(False, "failed"), (True, "requeuing")])
async def test_5_4_span_after_unresponsive(
    store: LightningStore, clock: FakeClock, retry: bool, rollout_after_span: str
) -> None:
    config = RolloutConfig(
        unresponsive_seconds=5.0, max_attempts=2 if retry else 1, retry_condition=["unresponsive"] if retry else []
    )
    rollout = await store.start_rollout(input="x", config=config)
    clock.advance(6)
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None and fetched.status == ("requeuing" if retry else "failed")
    await store.add_span(make_span(rollout.rollout_id, rollout.attempt.attempt_id))
    attempt = await store.get_latest_attempt(rollout.rollout_id)
    assert attempt is not None and attempt.status == "unresponsive"  # fenced: the late span revives nothing
    fetched = await store.get_rollout_by_id(rollout.rollout_id)
    assert fetched is not None and fetched.status == rollout_after_span
    assert len(await store.query_spans(rollout.rollout_id, rollout.attempt.attempt_id)) == 1  # but it is kept


ScanTrigger = Callable[[LightningStore, str, str], Awaitable[Any]]

SCAN_TRIGGERS: dict[str, ScanTrigger] = {
    "start_rollout": lambda s, target, other: s.start_rollout(input="t"),
    "enqueue_rollout": lambda s, target, other: s.enqueue_rollout(input="t"),
    "enqueue_many_rollouts": lambda s, target, other: s.enqueue_many_rollouts([EnqueueRolloutRequest(input="t")]),
    "dequeue_rollout": lambda s, target, other: s.dequeue_rollout(),
    "dequeue_many_rollouts": lambda s, target, other: s.dequeue_many_rollouts(limit=2),
    "start_attempt": lambda s, target, other: s.start_attempt(other),
    "query_rollouts": lambda s, target, other: s.query_rollouts(),
    "get_rollout_by_id": lambda s, target, other: s.get_rollout_by_id(other),
    "query_attempts": lambda s, target, other: s.query_attempts(other),
    "get_latest_attempt": lambda s, target, other: s.get_latest_attempt(other),
    "update_resources": lambda s, target, other: s.update_resources("rs-scan", sample_resources()),
    "wait_for_rollouts": lambda s, target, other: s.wait_for_rollouts(rollout_ids=[other], timeout=0),
    "query_spans": lambda s, target, other: s.query_spans(other),
    "update_rollout": lambda s, target, other: s.update_rollout(other, metadata={"poke": 1}),
    "update_attempt": lambda s, target, other: s.update_attempt(other, "latest", metadata={"poke": 1}),
    "query_workers": lambda s, target, other: s.query_workers(),
}


@pytest.mark.parametrize("trigger", list(SCAN_TRIGGERS))
async def test_5_4_scan_triggering_methods(store: LightningStore, clock: FakeClock, trigger: str) -> None:
    target = await store.start_rollout(input="target", config=RolloutConfig(timeout_seconds=5.0), worker_id="W-t")
    other = await store.start_rollout(input="other")
    clock.advance(6)
    await SCAN_TRIGGERS[trigger](store, target.rollout_id, other.rollout_id)
    # get_worker_by_id does not scan, so the worker shows whether the trigger itself ran the scan.
    worker = await store.get_worker_by_id("W-t")
    assert worker is not None and worker.status == "unknown"
