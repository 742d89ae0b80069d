"""The rollout, attempt and worker state machines: pure rules every store backend applies.

Nothing here touches storage; a backend asks what the next state is and writes it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from agl.store.errors import StaleAttemptError
from agl.types.core import (
    ATTEMPT_STATUSES,
    ROLLOUT_STATUSES,
    WORKER_STATUSES,
    Attempt,
    AttemptStatus,
    Rollout,
    RolloutConfig,
    RolloutStatus,
    WorkerStatus,
)

__all__ = [
    "ATTEMPT_END_STATUSES",
    "DEFAULT_CLAIM_TIMEOUT_SECONDS",
    "FINISHED_STATUSES",
    "QUEUING_STATUSES",
    "RUNNING_STATUSES",
    "attempt_holds_rollout",
    "attempt_status_on_heartbeat",
    "check_attempt_holds_rollout",
    "check_attempt_status",
    "check_claim_timeout",
    "check_rollout_status",
    "check_worker_status",
    "claim_is_lost",
    "health_verdict",
    "is_finished",
    "is_queuing",
    "is_running",
    "rollout_status_from_attempt",
    "rollout_status_on_heartbeat",
    "unhealthy_status",
    "watch_rollout",
    "worker_fields_for_attempt",
    "worker_fields_for_empty_dequeue",
]

QUEUING_STATUSES: frozenset[str] = frozenset({"queuing", "requeuing"})
RUNNING_STATUSES: frozenset[str] = frozenset({"preparing", "running"})
FINISHED_STATUSES: frozenset[str] = frozenset({"failed", "succeeded", "cancelled"})
ATTEMPT_END_STATUSES: frozenset[str] = frozenset({"failed", "succeeded"})
"""Attempt statuses whose write stamps `end_time` (timeout/unresponsive do not)."""

DEFAULT_CLAIM_TIMEOUT_SECONDS = 30.0
"""How long a claimed attempt may go without any sign of life from its runner before it is returned to the queue."""


def _status_of(rollout: Any) -> Any:
    """The status a rollout-like argument stands for: a status string as is, else its `status` attribute."""
    return rollout if isinstance(rollout, str) else getattr(rollout, "status", rollout)


def is_queuing(rollout: Rollout | str) -> bool:
    """Waiting in the queue for a worker; takes a rollout (anything with `status`) or a status."""
    return _status_of(rollout) in QUEUING_STATUSES


def is_running(rollout: Rollout | str) -> bool:
    """Claimed by a worker and not finished; takes a rollout (anything with `status`) or a status."""
    return _status_of(rollout) in RUNNING_STATUSES


def is_finished(rollout: Rollout | str) -> bool:
    """Terminal (succeeded, failed or cancelled); takes a rollout (anything with `status`) or a status."""
    return _status_of(rollout) in FINISHED_STATUSES


def check_rollout_status(status: Any, field: str = "status") -> RolloutStatus:
    """Return `status` if it is a rollout status, else raise a ValueError naming the allowed values."""
    if status not in ROLLOUT_STATUSES:
        raise ValueError(f"{field} {status!r} is not a rollout status; expected one of {', '.join(ROLLOUT_STATUSES)}")
    return status  # type: ignore[no-any-return]


def check_attempt_status(status: Any, field: str = "status") -> AttemptStatus:
    """Return `status` if it is an attempt status, else raise a ValueError naming the allowed values."""
    if status not in ATTEMPT_STATUSES:
        raise ValueError(f"{field} {status!r} is not an attempt status; expected one of {', '.join(ATTEMPT_STATUSES)}")
    return status  # type: ignore[no-any-return]


def check_worker_status(status: Any, field: str = "status") -> WorkerStatus:
    """Return `status` if it is a worker status, else raise a ValueError naming the allowed values."""
    if status not in WORKER_STATUSES:
        raise ValueError(f"{field} {status!r} is not a worker status; expected one of {', '.join(WORKER_STATUSES)}")
    return status  # type: ignore[no-any-return]


def rollout_status_from_attempt(status: AttemptStatus, sequence_id: int, config: RolloutConfig) -> RolloutStatus:
    """The rollout status implied by its latest attempt's status (the retry rule).

    A failed, timed-out or unresponsive attempt sends the rollout back to the queue (`requeuing`) when its status
    is in `config.retry_condition` and attempts remain (`sequence_id < max_attempts`); otherwise the rollout fails.
    """
    if status in ("preparing", "running", "succeeded"):
        return status
    if status in ("failed", "timeout", "unresponsive"):
        if status in config.retry_condition and sequence_id < config.max_attempts:
            return "requeuing"
        return "failed"
    raise ValueError(
        f"attempt status {status!r} is not an attempt status; expected one of {', '.join(ATTEMPT_STATUSES)}"
    )


def attempt_holds_rollout(rollout_status: str, is_latest: bool) -> bool:
    """Whether an attempt may still change its rollout (the fencing rule).

    Only the latest attempt of a claimed rollout (`preparing` or `running`) does. Writes of any other attempt — one
    whose rollout was requeued, finished or cancelled, or that a newer attempt replaced — are stale: status and
    heartbeat updates are refused, late spans are kept on that attempt without moving anything.
    """
    return is_latest and rollout_status in RUNNING_STATUSES


def check_attempt_holds_rollout(
    rollout_id: str, rollout_status: str, attempt_id: str, latest_attempt_id: str | None
) -> None:
    """Raise `StaleAttemptError` (naming the current attempt) unless the attempt may still change its rollout."""
    if not attempt_holds_rollout(rollout_status, attempt_id == latest_attempt_id):
        raise StaleAttemptError(rollout_id, attempt_id, rollout_status, latest_attempt_id)


def attempt_status_on_heartbeat(status: AttemptStatus) -> AttemptStatus:
    """An attempt's status after a span or heartbeat arrives for it."""
    if status in ("preparing", "unresponsive"):
        return "running"
    return status


def rollout_status_on_heartbeat(status: RolloutStatus) -> RolloutStatus:
    """A rollout's status after a span or heartbeat arrives for its latest attempt."""
    if status in ("preparing", "requeuing"):
        return "running"
    return status


def unhealthy_status(attempt: Attempt, config: RolloutConfig, now: float) -> AttemptStatus | None:
    """`timeout` or `unresponsive` if the attempt breaks its rollout's health rules at `now`, else None.

    Timeout is measured from the attempt's start; unresponsiveness from the last heartbeat, or from the start when
    no heartbeat has arrived yet.
    """
    if config.timeout_seconds is not None and now - attempt.start_time > config.timeout_seconds:
        return "timeout"
    if config.unresponsive_seconds is not None:
        since = attempt.last_heartbeat_time if attempt.last_heartbeat_time is not None else attempt.start_time
        if now - since > config.unresponsive_seconds:
            return "unresponsive"
    return None


def check_claim_timeout(value: Any, field: str = "claim_timeout_seconds") -> float | None:
    """`value` as a claim timeout in seconds, None (or 0) meaning off; else a ValueError naming `field`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
        raise ValueError(f"{field} must be a number of seconds >= 0 (0 or None turns it off), got {value!r}")
    return None if value == 0 or math.isinf(value) else float(value)


def watch_rollout(status: str, config: RolloutConfig, claim_timeout: float | None) -> bool:
    """Whether the health scan must look at a rollout in `status` with `config`.

    A claimed rollout is watched when its config has a timeout or unresponsive rule; a `preparing` one (claimed, not
    yet confirmed by its runner) also whenever a claim timeout is in force.
    """
    if status == "preparing" and claim_timeout is not None:
        return True
    return status in RUNNING_STATUSES and (
        config.timeout_seconds is not None or config.unresponsive_seconds is not None
    )


def claim_is_lost(attempt: Attempt, worker_heartbeat: float | None, claim_timeout: float | None, now: float) -> bool:
    """Whether a claimed attempt its runner never confirmed has been silent for longer than the claim timeout.

    An attempt is confirmed by a span or a status update (both move it past `preparing`). Until then its signs of
    life are its start, its own heartbeats (`last_heartbeat_time`) and the heartbeats of the worker holding it
    (`worker_heartbeat`, that worker's `last_heartbeat_time`), so a runner that keeps sending heartbeats within the
    timeout keeps its claims however long its rollouts run.
    """
    if claim_timeout is None or attempt.status != "preparing":
        return False
    since = attempt.start_time
    if attempt.last_heartbeat_time is not None and attempt.last_heartbeat_time > since:
        since = attempt.last_heartbeat_time
    if worker_heartbeat is not None and worker_heartbeat > since:
        since = worker_heartbeat
    return now - since > claim_timeout


def health_verdict(
    attempt: Attempt,
    config: RolloutConfig,
    now: float,
    *,
    claim_timeout: float | None = None,
    worker_heartbeat: float | None = None,
) -> tuple[AttemptStatus, RolloutStatus | None] | None:
    """What the health scan does to a rollout's latest attempt at `now`: None (nothing), or the attempt's new status
    and the rollout's new status (None: the retry rule of `rollout_status_from_attempt` decides).

    The rollout's own rules come first (`unhealthy_status`). Otherwise a lost claim (`claim_is_lost`) makes the
    attempt `unresponsive` and puts the rollout back in the queue (`requeuing`) whatever its retry rule: its runner
    never started it, so nothing ran that a retry rule could judge.
    """
    bad = unhealthy_status(attempt, config, now)
    if bad is not None:
        return (bad, None) if attempt.status != bad else None
    if claim_is_lost(attempt, worker_heartbeat, claim_timeout, now):
        return "unresponsive", "requeuing"
    return None


def worker_fields_for_attempt(attempt: Attempt, now: float) -> dict[str, Any]:
    """The worker fields to write when an attempt held by that worker is created or changes status."""
    if attempt.status in ("preparing", "running"):
        return {
            "status": "busy",
            "last_busy_time": now,
            "current_rollout_id": attempt.rollout_id,
            "current_attempt_id": attempt.attempt_id,
        }
    if attempt.status in ("succeeded", "failed"):
        return {"status": "idle", "last_idle_time": now, "current_rollout_id": None, "current_attempt_id": None}
    return {"status": "unknown", "last_idle_time": now, "current_rollout_id": None, "current_attempt_id": None}


def worker_fields_for_empty_dequeue(current: Mapping[str, Any] | None, now: float) -> dict[str, Any]:
    """The worker fields to write when a worker polls an empty queue."""
    fields: dict[str, Any] = {"last_dequeue_time": now}
    if current is None or current.get("status") != "idle":
        fields.update(status="idle", last_idle_time=now)
    return fields
