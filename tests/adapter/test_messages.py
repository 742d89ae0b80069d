"""TraceToMessages: OpenAI fine-tuning conversations rebuilt from gen_ai.* attributes."""

from __future__ import annotations

import json

import pytest

from agl.adapter import TraceToMessages

from .spans import Trace

_WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def _tool_using_trace() -> Trace:
    trace = Trace()
    trace.add("root", "agent.run", 0.0, 10.0)
    trace.add(
        "llm",
        "openai.chat.completion",
        1.0,
        5.0,
        parent="root",
        **{
            "gen_ai.request.model": "gpt",
            "gen_ai.request.functions.0.name": "get_weather",
            "gen_ai.request.functions.0.description": "Weather for a city",
            "gen_ai.request.functions.0.parameters": json.dumps(_WEATHER_SCHEMA),
            "gen_ai.prompt.0.role": "system",
            "gen_ai.prompt.0.content": "You are helpful.",
            "gen_ai.prompt.1.role": "user",
            "gen_ai.prompt.1.content": "Weather in Paris and Rome?",
            "gen_ai.completion.0.role": "assistant",
            "gen_ai.completion.0.content": "",
            "gen_ai.response.id": "chatcmpl-9",
        },
    )
    # The tool invocations the completion asked for, recorded as children of the LLM span (out of time order).
    trace.add(
        "t2",
        "tool.get_weather",
        3.0,
        4.0,
        parent="llm",
        **{
            "tool.name": "get_weather",
            "tool.parameters": '{"city": "Rome"}',
            "tool.call.id": "call_2",
            "tool.call.type": "function",
        },
    )
    trace.add(
        "t1",
        "tool.get_weather",
        2.0,
        3.0,
        parent="llm",
        **{
            "tool.name": "get_weather",
            "tool.parameters": '{"city": "Paris"}',
            "tool.call.id": "call_1",
            "tool.call.type": "function",
        },
    )
    trace.add("unrelated", "http.request", 2.0, 2.5, parent="llm", **{"http.method": "GET"})
    return trace


def test_tool_calls_from_child_spans_and_functions_as_tools() -> None:
    [conversation] = TraceToMessages().adapt(_tool_using_trace().spans)
    assert conversation["messages"] == [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                },
            ],
        },
    ]
    assert conversation["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "Weather for a city", "parameters": _WEATHER_SCHEMA},
        }
    ]


def test_second_turn_with_tool_results_and_no_functions() -> None:
    trace = Trace()
    trace.add(
        "llm2",
        "openai.chat.completion",
        6.0,
        8.0,
        **{
            "gen_ai.prompt.0.role": "user",
            "gen_ai.prompt.0.content": "Weather in Paris?",
            "gen_ai.prompt.1.role": "assistant",
            "gen_ai.prompt.1.tool_calls.0.id": "call_1",
            "gen_ai.prompt.1.tool_calls.0.name": "get_weather",
            "gen_ai.prompt.1.tool_calls.0.arguments": '{"city": "Paris"}',
            "gen_ai.prompt.2.role": "tool",
            "gen_ai.prompt.2.content": "18C, sunny",
            "gen_ai.prompt.2.tool_call_id": "call_1",
            # A re-emitted tool turn that lost its role: inferred from tool_call_id.
            "gen_ai.prompt.3.content": "again 18C",
            "gen_ai.prompt.3.tool_call_id": "call_1",
            # No role and nothing to infer it from: skipped.
            "gen_ai.prompt.4.content": "orphan",
            "gen_ai.completion.0.role": "assistant",
            "gen_ai.completion.0.content": "It is 18C and sunny in Paris.",
        },
    )
    [conversation] = TraceToMessages()(trace.spans)
    assert conversation["tools"] is None
    assert conversation["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "content": "18C, sunny", "tool_call_id": "call_1"},
        {"role": "tool", "content": "again 18C", "tool_call_id": "call_1"},
        {"role": "assistant", "content": "It is 18C and sunny in Paris."},
    ]


def test_one_conversation_per_genai_span_and_others_ignored() -> None:
    trace = _tool_using_trace()
    trace.add(
        "llm-b",
        "openai.chat.completion",
        6.0,
        7.0,
        parent="root",
        **{
            "gen_ai.prompt.0.role": "user",
            "gen_ai.prompt.0.content": "hi",
            "gen_ai.prompt.prompt_filter_results": "[]",  # Azure extra beside the indexed messages
            "gen_ai.completion.0.role": "assistant",
            "gen_ai.completion.0.content": "hello",
        },
    )
    conversations = TraceToMessages().adapt(trace.spans)
    assert len(conversations) == 2
    assert conversations[1] == {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        "tools": None,
    }
    assert TraceToMessages().adapt([trace.spans[0]]) == []


def test_completion_tool_calls_are_used_when_no_child_tool_spans() -> None:
    trace = Trace()
    trace.add(
        "llm",
        "openai.chat.completion",
        0.0,
        1.0,
        **{
            "gen_ai.prompt.0.role": "user",
            "gen_ai.prompt.0.content": "go",
            "gen_ai.completion.0.role": "assistant",
            "gen_ai.completion.0.tool_calls.0.id": "c9",
            "gen_ai.completion.0.tool_calls.0.name": "run",
            "gen_ai.completion.0.tool_calls.0.arguments": "{}",
        },
    )
    [conversation] = TraceToMessages().adapt(trace.spans)
    assert conversation["messages"][-1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c9", "type": "function", "function": {"name": "run", "arguments": "{}"}}],
    }


def test_malformed_attributes_raise_naming_the_span() -> None:
    trace = Trace()
    trace.add("bad", "openai.chat.completion", 0.0, 1.0, **{"gen_ai.prompt.role": "user"})
    with pytest.raises(ValueError, match=r"'bad'.*gen_ai\.prompt"):
        TraceToMessages().adapt(trace.spans)
    with pytest.raises(TypeError, match="source"):
        TraceToMessages().adapt(42)  # type: ignore[arg-type]
