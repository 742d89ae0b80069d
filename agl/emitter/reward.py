"""Reward spans: emitting them (`emit_reward`) and reading rewards back from spans."""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast

from agl import semconv
from agl.types.reward import (
    RewardDimension,
    find_final_reward,
    find_reward_spans,
    get_reward_value,
    get_rewards_from_span,
    is_reward_span,
)
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

F = TypeVar("F", bound=Callable[..., Any])


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
