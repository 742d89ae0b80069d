"""Emitters: record rewards, annotations, messages, objects, exceptions and operations as spans."""

from __future__ import annotations

from agl.emitter.reward import (
    RewardDimension,
    emit_reward,
    find_final_reward,
    find_reward_spans,
    get_reward_value,
    get_rewards_from_span,
    is_reward_span,
)

__all__ = [
    "RewardDimension",
    "emit_reward",
    "find_final_reward",
    "find_reward_spans",
    "get_reward_value",
    "get_rewards_from_span",
    "is_reward_span",
]
