"""How `agl rollouts show` reads spans: LLM calls, tool calls, rewards, exceptions, and the tree's shape."""

from __future__ import annotations

from typing import Any

from agl.cli.output import Output
from agl.cli.span_view import facts_of, span_tree
from agl.types import Span, TraceStatus
from agl.types.tracer import Event


def span(span_id: str, name: str, parent: str | None = None, start: float = 0.0, **extra: Any) -> Span:
    return Span(
        rollout_id="ro-1",
        attempt_id="at-1",
        sequence_id=1,
        trace_id="t" * 32,
        span_id=span_id,
        parent_id=parent,
        name=name,
        start_time=start,
        end_time=start + 0.25,
        **extra,
    )


def test_llm_proxy_span_gives_model_tokens_prompt_and_response() -> None:
    facts = facts_of(
        span(
            "s1",
            "openai.chat.completion",
            attributes={
                "gen_ai.request.model": "asked",
                "gen_ai.response.model": "served",
                "gen_ai.usage.input_tokens": 12,
                "gen_ai.usage.output_tokens": 3,
                "gen_ai.prompt.0.role": "user",
                "gen_ai.prompt.0.content": "x" * 500,
                "gen_ai.completion.0.content": "ok",
            },
        )
    )
    assert (facts.kind, facts.model, facts.prompt_tokens, facts.completion_tokens) == ("llm", "served", 12, 3)
    assert facts.prompt is not None and facts.prompt.startswith("user: xxx") and facts.prompt.endswith("…")
    assert len(facts.prompt) == len("user: ") + 160
    assert facts.response == "response: ok"


def test_token_counts_fall_back_to_token_id_lists() -> None:
    facts = facts_of(
        span("s1", "litellm_request", attributes={"prompt_token_ids": [1, 2, 3, 4], "response_token_ids": [5]})
    )
    assert (facts.kind, facts.prompt_tokens, facts.completion_tokens) == ("llm", 4, 1)


def test_tool_reward_exception_operation_and_message_spans() -> None:
    tool = facts_of(span("s1", "execute", attributes={"tool.name": "search", "tool.parameters": {"q": "ai"}}))
    assert (tool.kind, tool.tool, tool.tool_args) == ("tool", "search", '{"q":"ai"}')
    legacy = facts_of(span("s2", "agentlightning.reward", attributes={"reward": 2}))
    assert legacy.kind == "reward" and legacy.rewards == [{"name": "primary", "value": 2.0}]
    multi = facts_of(
        span(
            "s3",
            "agentlightning.annotation",
            attributes={
                "agentlightning.reward.0.name": "acc",
                "agentlightning.reward.0.value": 1.0,
                "agentlightning.reward.1.name": "len",
                "agentlightning.reward.1.value": 0.5,
            },
        )
    )
    assert [r["name"] for r in multi.rewards] == ["acc", "len"]
    emitted = facts_of(
        span("s4", "agentlightning.exception", attributes={"exception.type": "KeyError", "exception.message": "'k'"})
    )
    assert emitted.kind == "exception" and emitted.errors == ["KeyError: 'k'"]
    status_only = facts_of(span("s5", "step", status=TraceStatus(status_code="ERROR", description="timed out")))
    assert status_only.errors == ["status ERROR: timed out"]
    evented = facts_of(
        span(
            "s6",
            "step",
            status=TraceStatus(status_code="ERROR", description="ValueError: bad"),
            events=[Event(name="exception", attributes={"exception.type": "ValueError", "exception.message": "bad"})],
        )
    )
    assert evented.errors == ["ValueError: bad"]  # the status repeats the event: shown once
    op = facts_of(span("s7", "agentlightning.operation", attributes={"agentlightning.operation.name": "plan"}))
    assert (op.kind, op.operation) == ("operation", "plan")
    plain = facts_of(span("s8", "http.get"))
    assert (plain.kind, plain.rewards, plain.errors) == ("span", [], [])


def test_tree_puts_children_under_parents_and_marks_missing_parents() -> None:
    spans = [
        span("root", "agent", start=0.0),
        span("b", "second", parent="root", start=2.0),
        span("a", "first", parent="root", start=1.0),
        span("orphan", "lost", parent="gone", start=3.0),
    ]
    nodes = span_tree(spans)
    assert [n.label.split()[0] for n in nodes] == ["agent", "(span"]
    assert [c.label.split()[0] for c in nodes[0].children] == ["first", "second"]
    assert nodes[1].label == "(span gone not recorded)" and nodes[1].children[0].label.startswith("lost")
    assert span_tree([]) == []


def test_plain_tree_indents_two_spaces_per_level(capsys: Any) -> None:
    out = Output(json_mode=False)
    out.tree("T", span_tree([span("r", "agent"), span("c", "child", parent="r", attributes={"tool.name": "t"})]))
    assert capsys.readouterr().out == "T\n  agent  250 ms\n    child  250 ms  tool t\n"
