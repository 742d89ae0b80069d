"""The pure state-machine rules in agl.store.state, table by table."""

from __future__ import annotations

import pytest

from agl.store import state
from agl.types import Attempt, RolloutConfig

RETRY = RolloutConfig(max_attempts=3, retry_condition=["failed", "timeout", "unresponsive"])


@pytest.mark.parametrize(
    ("status", "sequence_id", "config", "expected"),
    [
        ("preparing", 1, RolloutConfig(), "preparing"),
        ("running", 1, RolloutConfig(), "running"),
        ("succeeded", 1, RolloutConfig(), "succeeded"),
        ("failed", 1, RolloutConfig(), "failed"),
        ("timeout", 1, RolloutConfig(), "failed"),
        ("unresponsive", 1, RolloutConfig(), "failed"),
        ("failed", 1, RETRY, "requeuing"),
        ("timeout", 2, RETRY, "requeuing"),
        ("unresponsive", 2, RETRY, "requeuing"),
        ("failed", 3, RETRY, "failed"),
        ("timeout", 1, RolloutConfig(max_attempts=3, retry_condition=["failed"]), "failed"),
        ("succeeded", 1, RETRY, "succeeded"),
    ],
)
def test_retry_rule(status: str, sequence_id: int, config: RolloutConfig, expected: str) -> None:
    assert state.rollout_status_from_attempt(status, sequence_id, config) == expected  # type: ignore[arg-type]


def test_retry_rule_rejects_unknown_status() -> None:
    with pytest.raises(ValueError, match="'exploded' is not an attempt status"):
        state.rollout_status_from_attempt("exploded", 1, RolloutConfig())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("before", "after"),
    [("preparing", "running"), ("unresponsive", "running"), ("running", "running"), ("timeout", "timeout"),
     ("failed", "failed"), ("succeeded", "succeeded")],
)  # fmt: skip
def test_heartbeat_on_attempt(before: str, after: str) -> None:
    assert state.attempt_status_on_heartbeat(before) == after  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("before", "after"),
    [("preparing", "running"), ("requeuing", "running"), ("queuing", "queuing"), ("running", "running"),
     ("succeeded", "succeeded"), ("failed", "failed"), ("cancelled", "cancelled")],
)  # fmt: skip
def test_heartbeat_on_rollout(before: str, after: str) -> None:
    assert state.rollout_status_on_heartbeat(before) == after  # type: ignore[arg-type]


def _attempt(start: float = 100.0, heartbeat: float | None = None) -> Attempt:
    return Attempt(rollout_id="r", attempt_id="a", sequence_id=1, start_time=start, last_heartbeat_time=heartbeat)


@pytest.mark.parametrize(
    ("attempt", "config", "now", "expected"),
    [
        (_attempt(), RolloutConfig(), 1e9, None),
        (_attempt(), RolloutConfig(timeout_seconds=10), 110.0, None),
        (_attempt(), RolloutConfig(timeout_seconds=10), 110.5, "timeout"),
        (_attempt(heartbeat=109), RolloutConfig(timeout_seconds=10, unresponsive_seconds=1), 111, "timeout"),
        (_attempt(heartbeat=105), RolloutConfig(unresponsive_seconds=5), 110.0, None),
        (_attempt(heartbeat=105), RolloutConfig(unresponsive_seconds=5), 110.1, "unresponsive"),
        (_attempt(), RolloutConfig(unresponsive_seconds=5), 105.1, "unresponsive"),
        (_attempt(), RolloutConfig(unresponsive_seconds=5), 104.9, None),
    ],
)
def test_unhealthy_rules(attempt: Attempt, config: RolloutConfig, now: float, expected: str | None) -> None:
    assert state.unhealthy_status(attempt, config, now) == expected


@pytest.mark.parametrize(
    ("status", "worker_status", "holds"),
    [("preparing", "busy", True), ("running", "busy", True), ("succeeded", "idle", False), ("failed", "idle", False),
     ("timeout", "unknown", False), ("unresponsive", "unknown", False)],
)  # fmt: skip
def test_worker_fields_follow_the_attempt(status: str, worker_status: str, holds: bool) -> None:
    attempt = _attempt().model_copy(update={"status": status, "worker_id": "w"})
    fields = state.worker_fields_for_attempt(attempt, 5.0)
    assert fields["status"] == worker_status
    assert (fields["current_attempt_id"] == "a") is holds
    assert fields["last_busy_time" if holds else "last_idle_time"] == 5.0


def test_empty_dequeue_marks_idle_once() -> None:
    assert state.worker_fields_for_empty_dequeue(None, 3.0) == {"last_dequeue_time": 3.0, "status": "idle",
                                                                 "last_idle_time": 3.0}  # fmt: skip
    assert state.worker_fields_for_empty_dequeue({"status": "idle"}, 4.0) == {"last_dequeue_time": 4.0}


@pytest.mark.parametrize("check", [state.check_rollout_status, state.check_attempt_status, state.check_worker_status])
def test_status_checks_name_the_field(check: object) -> None:
    with pytest.raises(ValueError, match="status_in item 'bogus' is not"):
        check("bogus", "status_in item")  # type: ignore[operator]


# -- claim timeout ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [(None, None), (0, None), (0.0, None), (30, 30.0), (0.5, 0.5)])
def test_claim_timeout_values(value: float | None, expected: float | None) -> None:
    assert state.check_claim_timeout(value) == expected


@pytest.mark.parametrize("value", [-1, float("nan"), "30", True])
def test_claim_timeout_refuses_bad_values(value: object) -> None:
    with pytest.raises(ValueError, match="claim_timeout_seconds must be a number of seconds >= 0"):
        state.check_claim_timeout(value)


def test_stores_refuse_a_bad_claim_timeout(tmp_path: object) -> None:
    from agl.store.memory import InMemoryLightningStore
    from agl.store.sqlite import SqliteLightningStore

    with pytest.raises(ValueError, match="claim_timeout_seconds"):
        InMemoryLightningStore(claim_timeout_seconds=-5)
    with pytest.raises(ValueError, match="claim_timeout_seconds"):
        SqliteLightningStore(":memory:", claim_timeout_seconds=-5)


def _claimed(status: str, start: float = 100.0, heartbeat: float | None = None) -> Attempt:
    return Attempt(
        rollout_id="ro-1",
        attempt_id="at-1",
        sequence_id=1,
        start_time=start,
        status=status,  # type: ignore[arg-type]
        last_heartbeat_time=heartbeat,
    )


@pytest.mark.parametrize(
    ("status", "heartbeat", "worker_heartbeat", "now", "lost"),
    [
        ("preparing", None, None, 130.0, False),  # exactly at the limit
        ("preparing", None, None, 130.1, True),
        ("preparing", 120.0, None, 149.0, False),  # its own heartbeat
        ("preparing", 120.0, None, 150.1, True),
        ("preparing", None, 125.0, 154.0, False),  # its worker's heartbeat
        ("preparing", None, 90.0, 130.1, True),  # a worker heartbeat from before the claim counts for nothing
        ("running", None, None, 1e9, False),  # confirmed
        ("unresponsive", None, None, 1e9, False),
    ],
)
def test_claim_is_lost(
    status: str, heartbeat: float | None, worker_heartbeat: float | None, now: float, lost: bool
) -> None:
    assert state.claim_is_lost(_claimed(status, heartbeat=heartbeat), worker_heartbeat, 30.0, now) is lost
    assert state.claim_is_lost(_claimed(status, heartbeat=heartbeat), worker_heartbeat, None, now) is False


def test_health_verdict_prefers_the_rollouts_rules() -> None:
    attempt = _claimed("preparing")
    assert state.health_verdict(attempt, RolloutConfig(timeout_seconds=10), 111.0, claim_timeout=5.0) == (
        "timeout",
        None,
    )
    assert state.health_verdict(attempt, RolloutConfig(), 106.0, claim_timeout=5.0) == ("unresponsive", "requeuing")
    assert state.health_verdict(attempt, RolloutConfig(), 106.0, claim_timeout=None) is None
    assert state.health_verdict(_claimed("timeout"), RolloutConfig(timeout_seconds=1), 1e9, claim_timeout=5.0) is None


@pytest.mark.parametrize(
    ("status", "config", "claim_timeout", "watched"),
    [
        ("preparing", RolloutConfig(), 30.0, True),
        ("preparing", RolloutConfig(), None, False),
        ("running", RolloutConfig(), 30.0, False),
        ("running", RolloutConfig(unresponsive_seconds=5), None, True),
        ("queuing", RolloutConfig(timeout_seconds=5), 30.0, False),
    ],
)
def test_watch_rollout(status: str, config: RolloutConfig, claim_timeout: float | None, watched: bool) -> None:
    assert state.watch_rollout(status, config, claim_timeout) is watched
