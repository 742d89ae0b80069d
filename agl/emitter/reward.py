"""Reward spans: emitting them (`emit_reward`) and reading rewards back from spans."""

from __future__ import annotations

import functools
import inspect
import json
import warnings
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypedDict, TypeVar, cast

from agl import semconv
from agl.types.tracer import SpanCoreFields

__all__ = [
    "RewardDimension",
    "emit_reward",
    "find_final_reward",
    "find_reward_spans",
    "get_reward_value",
    "get_rewards_from_span",
    "is_reward_span",
    "reward",
]

_AGENTOPS_OUTPUT_KEYS = ("agentops.task.output", "agentops.entity.output")

SpanT = TypeVar("SpanT")
F = TypeVar("F", bound=Callable[..., Any])


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


def reward_attributes(reward: Any, primary_key: str | None = None) -> dict[str, Any]:
    """Span attributes encoding `reward` (a number or a dict of named numbers) as reward dimensions."""
    if isinstance(reward, Mapping):
        if primary_key is None:
            raise ValueError("primary_key is required when reward is a dict")
        if primary_key not in reward:
            raise ValueError(f"primary_key {primary_key!r} is not a key of reward (keys: {list(reward)})")
        ordered = [primary_key, *(key for key in reward if key != primary_key)]
        attrs: dict[str, Any] = {}
        for index, key in enumerate(ordered):
            if not isinstance(key, str):
                raise ValueError(f"reward keys must be strings, got {key!r}")
            value = reward[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"reward[{key!r}] must be a number, got {type(value).__name__}")
            attrs[semconv.reward_name_key(index)] = key
            attrs[semconv.reward_value_key(index)] = float(value)
        return attrs
    if not isinstance(reward, (int, float)):  # bool is an int
        raise TypeError(f"reward must be a float, int, bool or dict, got {type(reward).__name__}")
    number = float(reward)
    return {
        semconv.reward_name_key(0): semconv.PRIMARY_REWARD_NAME,
        semconv.reward_value_key(0): number,
    }


def emit_reward(
    reward: float | int | bool | Mapping[str, float | int | bool],
    *,
    primary_key: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    propagate: bool = True,
) -> SpanCoreFields:
    """Record a reward as an `agentlightning.annotation` span on the active tracer.

    A number is a single `primary` dimension; a dict is a multi-dimensional reward whose `primary_key` dimension
    comes first. With `propagate=False` the span is only built, not recorded.

    Raises:
        TypeError: `reward` is neither a number nor a dict.
        ValueError: a dict reward without a valid `primary_key`, or with a non-numeric value.
        RuntimeError: `propagate` is true and no tracer is active.
    """
    from agl.emitter.annotation import emit_span

    attrs = reward_attributes(reward, primary_key)
    return emit_span(semconv.AGL_ANNOTATION, attrs, extra=attributes, propagate=propagate)


def _emit_result(result: Any) -> None:
    if result is not None:
        emit_reward(result)


def reward(fn: F) -> F:
    """Deprecated: decorate a function so that its (numeric) return value is also emitted with `emit_reward`."""
    warnings.warn("@reward is deprecated; call emit_reward(value) instead", DeprecationWarning, stacklevel=2)

    if inspect.iscoroutinefunction(fn):
        async_fn = cast(Callable[..., Awaitable[Any]], fn)

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            result = await async_fn(*args, **kwargs)
            _emit_result(result)
            return result

        return cast(F, async_wrapper)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        _emit_result(result)
        return result

    return cast(F, wrapper)
