"""Store helpers under Agent Lightning's names (`agentlightning.store.utils`); the rules live in `agl.store.state`."""

from __future__ import annotations

import time
from collections.abc import Iterable

from agl.store import state
from agl.types.core import Attempt, AttemptedRollout, AttemptStatus, RolloutConfig, RolloutStatus

__all__ = ["rollout_status_from_attempt", "scan_unhealthy_rollouts"]


def rollout_status_from_attempt(attempt: Attempt, config: RolloutConfig) -> RolloutStatus:
    """The status a rollout takes when its latest attempt ends up in `attempt.status` (the retry rule)."""
    return state.rollout_status_from_attempt(attempt.status, attempt.sequence_id, config)


async def scan_unhealthy_rollouts(rollouts: Iterable[AttemptedRollout]) -> dict[tuple[str, str], AttemptStatus]:
    """`{(rollout_id, attempt_id): "timeout" | "unresponsive"}` for the latest attempts of `rollouts` that break
    their rollout's health rules now; healthy ones are left out. Nothing is written.
    """
    now = time.time()
    updates: dict[tuple[str, str], AttemptStatus] = {}
    for rollout in rollouts:
        verdict = state.unhealthy_status(rollout.attempt, rollout.config, now)
        if verdict is not None:
            updates[(rollout.attempt.rollout_id, rollout.attempt.attempt_id)] = verdict
    return updates
