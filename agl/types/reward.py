"""Reading rewards back from spans: the conventions every layer (store dashboard, adapters, algorithms) shares."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypedDict, TypeVar

from agl import semconv

__all__ = [
    "RewardDimension",
    "find_final_reward",
    "find_reward_spans",
    "get_reward_value",
    "get_rewards_from_span",
    "is_reward_span",
]

_AGENTOPS_OUTPUT_KEYS = ("agentops.task.output", "agentops.entity.output")

SpanT = TypeVar("SpanT")


class RewardDimension(TypedDict):
    """One named dimension of a (possibly multi-dimensional) reward."""

    name: str
    value: float


def _attributes(span: Any) -> Mapping[str, Any]:
    attrs = getattr(span, "attributes", None)
    if attrs is None and isinstance(span, Mapping):
        attrs = span.get("attributes")
    return attrs if isinstance(attrs, Mapping) else {}


def _name(span: Any) -> str | None:
    name = getattr(span, "name", None)
    if name is None and isinstance(span, Mapping):
        name = span.get("name")
    return name if isinstance(name, str) else None


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def get_rewards_from_span(span: Any) -> list[RewardDimension]:
    """All reward dimensions (`agentlightning.reward.<i>.name/value`) recorded on a span, primary first.

    Returns an empty list for a span that carries no structured reward.
    """
    attrs = _attributes(span)
    rewards: list[RewardDimension] = []
    index = 0
    while True:
        value_key = semconv.reward_value_key(index)
        if value_key not in attrs:
            break
        value = _as_number(attrs[value_key])
        if value is not None:
            name = attrs.get(semconv.reward_name_key(index))
            rewards.append(RewardDimension(name=str(name) if name is not None else str(index), value=value))
        index += 1
    return rewards


def _agentops_reward(payload: Any) -> float | None:
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except ValueError:
            return None
    if isinstance(payload, Mapping) and payload.get("type") == "reward":
        return _as_number(payload.get("value"))
    return None


def get_reward_value(span: Any) -> float | None:
    """The reward carried by a span (its first dimension), or None if the span is not a reward.

    Besides `emit_reward`'s attributes this recognises AgentOps outputs `{"type": "reward", "value": v}` and the
    legacy `reward` attribute of annotation / 0.2.x reward spans.
    """
    rewards = get_rewards_from_span(span)
    if rewards:
        return rewards[0]["value"]
    attrs = _attributes(span)
    for key in _AGENTOPS_OUTPUT_KEYS:
        if key in attrs:
            value = _agentops_reward(attrs[key])
            if value is not None:
                return value
    if _name(span) in (semconv.AGL_ANNOTATION, semconv.AGL_REWARD) and semconv.LEGACY_REWARD_ATTR in attrs:
        return _as_number(attrs[semconv.LEGACY_REWARD_ATTR])
    return None


def is_reward_span(span: Any) -> bool:
    """Whether the span carries a reward that `get_reward_value` can read."""
    return get_reward_value(span) is not None


def find_reward_spans(spans: Iterable[SpanT]) -> list[SpanT]:
    """The reward spans among `spans`, in their given order."""
    return [span for span in spans if is_reward_span(span)]


def find_final_reward(spans: Sequence[Any]) -> float | None:
    """The reward of the last reward span in list order, or None when there is none."""
    for span in reversed(spans):
        value = get_reward_value(span)
        if value is not None:
            return value
    return None
