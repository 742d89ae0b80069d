"""emit_reward and the reward readers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agl.emitter.reward import (
    emit_reward,
    find_final_reward,
    find_reward_spans,
    get_reward_value,
    get_rewards_from_span,
    is_reward_span,
    reward,
)
from agl.tracer import DummyTracer
from agl.types.tracer import Span, SpanCoreFields


def make_span(name: str, attributes: dict[str, Any], seq: int = 1) -> Span:
    return Span(
        rollout_id="ro",
        attempt_id="at",
        sequence_id=seq,
        trace_id="t" * 32,
        span_id=f"{seq:016x}",
        name=name,
        attributes=attributes,
    )


@pytest.mark.usefixtures("active")
def test_scalar_reward() -> None:
    span = emit_reward(0.5)
    assert isinstance(span, SpanCoreFields)
    assert span.name == "agentlightning.annotation"
    assert span.attributes == {"agentlightning.reward.0.name": "primary", "agentlightning.reward.0.value": 0.5}
    assert span.status.status_code == "OK"


@pytest.mark.parametrize(("value", "expected"), [(1, 1.0), (True, 1.0), (False, 0.0), (-2.5, -2.5)])
def test_ints_and_bools_become_floats(value: Any, expected: float) -> None:
    span = emit_reward(value, propagate=False)
    assert span.attributes["agentlightning.reward.0.value"] == expected
    assert isinstance(span.attributes["agentlightning.reward.0.value"], float)


def test_multi_dimensional_reward_puts_the_primary_key_first() -> None:
    span = emit_reward({"speed": 1, "accuracy": 0.9, "cost": -0.1}, primary_key="accuracy", propagate=False)
    assert span.attributes == {
        "agentlightning.reward.0.name": "accuracy",
        "agentlightning.reward.0.value": 0.9,
        "agentlightning.reward.1.name": "speed",
        "agentlightning.reward.1.value": 1.0,
        "agentlightning.reward.2.name": "cost",
        "agentlightning.reward.2.value": -0.1,
    }
    assert get_reward_value(span) == 0.9
    assert get_rewards_from_span(span) == [
        {"name": "accuracy", "value": 0.9},
        {"name": "speed", "value": 1.0},
        {"name": "cost", "value": -0.1},
    ]


def test_dict_reward_errors() -> None:
    with pytest.raises(ValueError, match="primary_key is required"):
        emit_reward({"a": 1.0}, propagate=False)
    with pytest.raises(ValueError, match="primary_key 'b' is not a key"):
        emit_reward({"a": 1.0}, primary_key="b", propagate=False)
    with pytest.raises(ValueError, match=r"reward\['a'\] must be a number"):
        emit_reward({"a": "high"}, primary_key="a", propagate=False)  # type: ignore[dict-item]


@pytest.mark.parametrize("bad", ["1.0", None, [1.0], object()])
def test_non_numeric_reward_is_a_type_error(bad: Any) -> None:
    with pytest.raises(TypeError, match="reward must be"):
        emit_reward(bad, propagate=False)


def test_extra_attributes_are_merged_but_cannot_override_the_reward() -> None:
    span = emit_reward(
        1.0,
        attributes={"task": {"id": 7}, "agentlightning.reward.0.value": 99},
        propagate=False,
    )
    assert span.attributes["task.id"] == 7
    assert span.attributes["agentlightning.reward.0.value"] == 1.0


def test_without_an_active_tracer_emitting_fails() -> None:
    with pytest.raises(RuntimeError, match="No active tracer found"):
        emit_reward(1.0)


def test_emitting_goes_to_the_active_tracer(active: DummyTracer, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    original = active.create_span

    def spy(name: str, *args: Any, **kwargs: Any) -> SpanCoreFields:
        seen.append(name)
        return original(name, *args, **kwargs)

    monkeypatch.setattr(active, "create_span", spy)
    emit_reward(1.0)
    emit_reward(1.0, propagate=False)
    assert seen == ["agentlightning.annotation"]


def test_readers_on_stored_spans() -> None:
    reward_1 = make_span("agentlightning.annotation", emit_reward(0.2, propagate=False).attributes, seq=1)
    other = make_span("llm", {"gen_ai.response.id": "x"}, seq=2)
    reward_2 = make_span("agentlightning.annotation", emit_reward(0.8, propagate=False).attributes, seq=3)
    spans = [reward_1, other, reward_2]
    assert [is_reward_span(s) for s in spans] == [True, False, True]
    assert find_reward_spans(spans) == [reward_1, reward_2]
    assert find_final_reward(spans) == 0.8
    assert find_final_reward(list(reversed(spans))) == 0.2  # list order, not time
    assert find_final_reward([other]) is None
    assert find_final_reward([]) is None
    assert get_reward_value(other) is None
    assert get_rewards_from_span(other) == []


@pytest.mark.parametrize(
    "payload",
    [{"type": "reward", "value": 0.3}, json.dumps({"type": "reward", "value": 0.3})],
)
@pytest.mark.parametrize("key", ["agentops.task.output", "agentops.entity.output"])
def test_agentops_reward_payloads(key: str, payload: Any) -> None:
    span = make_span("reward_fn.task", {key: payload})
    assert get_reward_value(span) == 0.3
    assert is_reward_span(span)


def test_agentops_non_reward_payloads_are_ignored() -> None:
    assert get_reward_value(make_span("t", {"agentops.task.output": '{"type": "answer", "value": 1}'})) is None
    assert get_reward_value(make_span("t", {"agentops.task.output": "not json"})) is None


def test_legacy_reward_attribute() -> None:
    assert get_reward_value(make_span("agentlightning.annotation", {"reward": 0.6})) == 0.6
    assert get_reward_value(make_span("agentlightning.reward", {"reward": 1})) == 1.0
    assert get_reward_value(make_span("something.else", {"reward": 0.6})) is None


def test_reward_decorator_is_deprecated_and_emits(active: DummyTracer) -> None:
    with pytest.warns(DeprecationWarning):

        @reward
        def score(x: int) -> float:
            return x / 10

    assert score(3) == 0.3


async def test_reward_decorator_async() -> None:
    with pytest.warns(DeprecationWarning):

        @reward
        async def score() -> float:
            return 1.0

    with pytest.raises(RuntimeError, match="No active tracer"):
        await score()
