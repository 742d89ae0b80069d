"""LlmProxyTraceToTriplet: sequence-id ordering, token-id shapes, dedup and reward attribution."""

from __future__ import annotations

import pytest

from agl.adapter import LlmProxyTraceToTriplet

from .spans import Trace


def _vllm_call(
    trace: Trace, span_id: str, seq: int, start: float, rid: str, prompt: list[int], response: list[int]
) -> None:
    """A LiteLLM `raw_gen_ai_request` span as recorded for a hosted vLLM backend (stringified lists)."""
    trace.add(
        span_id,
        "raw_gen_ai_request",
        start,
        start + 1.0,
        sequence_id=seq,
        **{
            "llm.hosted_vllm.id": rid,
            "llm.hosted_vllm.prompt_token_ids": str(prompt),
            "llm.hosted_vllm.response_token_ids": str([response]),
        },
    )


def test_calls_are_ordered_by_sequence_id_not_by_clock_or_list_order() -> None:
    trace = Trace()
    # Clocks disagree with the sequence: later requests carry earlier timestamps.
    _vllm_call(trace, "c3", 3, start=1.0, rid="r3", prompt=[3], response=[30])
    _vllm_call(trace, "c1", 1, start=50.0, rid="r1", prompt=[1], response=[10])
    _vllm_call(trace, "c2", 2, start=20.0, rid="r2", prompt=[2], response=[20])
    triplets = LlmProxyTraceToTriplet().adapt(trace.spans)
    assert [t.metadata["response_id"] for t in triplets] == ["r1", "r2", "r3"]
    assert [t.prompt for t in triplets] == [{"token_ids": [1]}, {"token_ids": [2]}, {"token_ids": [3]}]
    assert [t.response for t in triplets] == [{"token_ids": [10]}, {"token_ids": [20]}, {"token_ids": [30]}]
    assert [t.metadata["sequence_id"] for t in triplets] == [1, 2, 3]


def test_each_reward_goes_to_the_latest_unrewarded_call_before_its_sequence_id() -> None:
    trace = Trace()
    _vllm_call(trace, "c1", 1, start=0.0, rid="r1", prompt=[1], response=[10])
    _vllm_call(trace, "c2", 2, start=0.0, rid="r2", prompt=[2], response=[20])
    trace.reward("rew-a", 0.0, 0.5, parent=None, sequence_id=3)
    _vllm_call(trace, "c4", 4, start=0.0, rid="r4", prompt=[4], response=[40])
    trace.reward("rew-b", 0.0, 1.0, parent=None, sequence_id=5)
    trace.reward("rew-c", 0.0, 0.25, parent=None, sequence_id=6)
    trace.reward("rew-early", 0.0, 9.0, parent=None, sequence_id=1)  # nothing precedes sequence 1
    triplets = LlmProxyTraceToTriplet()(list(reversed(trace.spans)))
    assert [t.reward for t in triplets] == [0.25, 0.5, 1.0]


def test_litellm_and_agl_proxy_spans_carry_tokens_and_logprobs() -> None:
    trace = Trace()
    trace.add(
        "lite",
        "litellm_request",
        0.0,
        1.0,
        sequence_id=1,
        **{"gen_ai.response.id": "r1", "prompt_token_ids": "[1, 2]", "response_token_ids": "[3]"},
    )
    trace.add(
        "agl",
        "agl.llm_proxy.request",
        0.0,
        1.0,
        sequence_id=2,
        prompt_token_ids=[4, 5],
        response_token_ids=[6, 7],
        response_logprobs=[-0.1, -0.2],
        **{"gen_ai.response.id": "r2"},
    )
    trace.reward("rew", 2.0, 1.0, parent=None, sequence_id=3)
    first, second = LlmProxyTraceToTriplet().adapt(trace.spans)
    assert (first.prompt, first.response, first.reward) == ({"token_ids": [1, 2]}, {"token_ids": [3]}, None)
    assert second.prompt == {"token_ids": [4, 5]}
    assert second.response == {"token_ids": [6, 7], "logprobs": [-0.1, -0.2]}
    assert second.reward == 1.0


def test_vllm_choices_shape_supplies_response_tokens_and_logprobs() -> None:
    trace = Trace()
    choices = [
        {
            "token_ids": [8, 9],
            "logprobs": {"content": [{"token": "a", "logprob": -1.0}, {"token": "b", "logprob": -2.0}]},
        }
    ]
    trace.add(
        "raw",
        "raw_gen_ai_request",
        0.0,
        1.0,
        sequence_id=1,
        **{"llm.hosted_vllm.prompt_token_ids": "[1]", "llm.hosted_vllm.choices": repr(choices)},
    )
    [triplet] = LlmProxyTraceToTriplet().adapt(trace.spans)
    assert triplet.response == {"token_ids": [8, 9], "logprobs": [-1.0, -2.0]}
    assert triplet.metadata["response_id"] is None


def test_duplicates_and_incomplete_spans_are_dropped() -> None:
    trace = Trace()
    _vllm_call(trace, "raw", 1, start=0.0, rid="same", prompt=[1], response=[2])
    # The same request seen by the litellm span of the same HTTP request.
    trace.add(
        "lite",
        "litellm_request",
        0.0,
        1.0,
        sequence_id=1,
        prompt_token_ids=[1],
        response_token_ids=[2],
        **{"gen_ai.response.id": "same"},
    )
    # Two spans of one request without ids but with the same tokens.
    trace.add("p", "proxy", 0.0, 1.0, sequence_id=2, prompt_token_ids=[5], response_token_ids=[6])
    trace.add("q", "proxy.child", 0.0, 1.0, sequence_id=2, prompt_token_ids=[5], response_token_ids=[6])
    # Incomplete: no response tokens, empty lists, non-integer tokens.
    trace.add("x", "litellm_request", 0.0, 1.0, sequence_id=3, prompt_token_ids=[1])
    trace.add("y", "litellm_request", 0.0, 1.0, sequence_id=3, prompt_token_ids=[], response_token_ids=[1])
    trace.add("z", "litellm_request", 0.0, 1.0, sequence_id=3, prompt_token_ids=["a"], response_token_ids=[1])
    triplets = LlmProxyTraceToTriplet().adapt(trace.spans)
    assert [(t.metadata["response_id"], t.metadata["sequence_id"]) for t in triplets] == [("same", 1), (None, 2)]


def test_logprobs_not_matching_the_response_length_are_dropped() -> None:
    trace = Trace()
    trace.add(
        "a",
        "litellm_request",
        0.0,
        1.0,
        sequence_id=1,
        prompt_token_ids=[1],
        response_token_ids=[2, 3],
        response_logprobs=[-0.5],
    )
    [triplet] = LlmProxyTraceToTriplet().adapt(trace.spans)
    assert "logprobs" not in triplet.response


def test_empty_trace_and_bad_input() -> None:
    assert LlmProxyTraceToTriplet().adapt([]) == []
    with pytest.raises(TypeError, match="source"):
        LlmProxyTraceToTriplet().adapt(None)  # type: ignore[arg-type]
