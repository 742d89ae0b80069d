"""Emitters: record rewards, annotations, messages, objects, exceptions and operations as spans."""

from __future__ import annotations

from agl.emitter.annotation import emit_annotation
from agl.emitter.attributes import flatten_attributes
from agl.emitter.exception import emit_exception
from agl.emitter.message import emit_message, get_message_value
from agl.emitter.object import emit_object, get_object_value
from agl.emitter.operation import OperationContext, operation
from agl.emitter.reward import (
    RewardDimension,
    emit_reward,
    find_final_reward,
    find_reward_spans,
    get_reward_value,
    get_rewards_from_span,
    is_reward_span,
    reward,
)

__all__ = [
    "OperationContext",
    "RewardDimension",
    "emit_annotation",
    "emit_exception",
    "emit_message",
    "emit_object",
    "emit_reward",
    "find_final_reward",
    "find_reward_spans",
    "flatten_attributes",
    "get_message_value",
    "get_object_value",
    "get_reward_value",
    "get_rewards_from_span",
    "is_reward_span",
    "operation",
    "reward",
]
