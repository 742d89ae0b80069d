"""What a stored span means to a reader: LLM call, tool call, reward, exception; and the span tree as lines.

Recognised, from the attributes AGL's tracers, emitters and LLM proxy write (see `agl.semconv`):
LLM calls (`gen_ai.prompt.*` / `gen_ai.completion.*` / `gen_ai.usage.*`, token id lists, or the names the proxy
and vLLM use), tool calls (`tool.name` / `gen_ai.tool.name`, or a span name starting with "tool"), rewards
(`agl.emitter.reward.get_reward_value`), exceptions (`exception` events, `agentlightning.exception` spans, ERROR
status), operations and messages.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agl import semconv
from agl.adapter.tree import VIRTUAL_ROOT_ID, TraceTree
from agl.cli.output import Node, excerpt, fmt_duration, fmt_number
from agl.types.reward import RewardDimension, get_reward_value, get_rewards_from_span
from agl.types.tracer import Span

__all__ = ["SpanFacts", "facts_of", "span_tree"]

LLM_SPAN_NAMES = frozenset(
    {"openai.chat.completion", "openai.completion", "raw_gen_ai_request", "litellm_request", "gen_ai.chat"}
)
"""Span names of LLM calls (AGL's proxy, vLLM, LiteLLM) recognised even without GenAI attributes."""

_PROMPT_INDEX = re.compile(r"^gen_ai\.prompt\.(\d+)\.")
_TOOL_CALL_INDEX = re.compile(r"^gen_ai\.completion\.0\.tool_calls\.(\d+)\.name$")
EXCERPT_CHARS = 160


@dataclass
class SpanFacts:
    """The readable facts of one span."""

    kind: str = "span"
    """One of llm, tool, reward, exception, operation, message, span."""
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt: str | None = None
    """The last prompt message, as `role: content`."""
    response: str | None = None
    tool: str | None = None
    tool_args: str | None = None
    tool_result: str | None = None
    tool_calls: list[str] = field(default_factory=list)
    """Tool calls an LLM response asked for, as `name(arguments)`."""
    rewards: list[RewardDimension] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    operation: str | None = None
    message: str | None = None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _count(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, list):
        return len(value)
    return None


def _first(attrs: dict[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        if attrs.get(key) is not None:
            return attrs[key]
    return None


def _is_llm(span: Span) -> bool:
    if span.name in LLM_SPAN_NAMES:
        return True
    return any(
        key.startswith(("gen_ai.prompt.", "gen_ai.completion.", "gen_ai.usage.")) or key.endswith("prompt_token_ids")
        for key in span.attributes
    )


def _is_tool(span: Span) -> bool:
    attrs = span.attributes
    return (
        "tool.name" in attrs
        or "gen_ai.tool.name" in attrs
        or span.name.lower().startswith(("tool", "execute_tool"))
        or attrs.get("gen_ai.operation.name") == "execute_tool"
    )


def _llm_facts(span: Span, facts: SpanFacts) -> None:
    attrs = span.attributes
    facts.kind = "llm"
    facts.model = _str(_first(attrs, (semconv.GEN_AI_RESPONSE_MODEL, semconv.GEN_AI_REQUEST_MODEL)))
    facts.prompt_tokens = _count(
        _first(
            attrs,
            (
                semconv.GEN_AI_USAGE_PROMPT_TOKENS,
                semconv.GEN_AI_USAGE_INPUT_TOKENS,
                "prompt_token_ids",
                "llm.hosted_vllm.prompt_token_ids",
            ),
        )
    )
    facts.completion_tokens = _count(
        _first(
            attrs,
            (semconv.GEN_AI_USAGE_COMPLETION_TOKENS, semconv.GEN_AI_USAGE_OUTPUT_TOKENS, "response_token_ids"),
        )
    )
    indices = [int(m.group(1)) for key in attrs if (m := _PROMPT_INDEX.match(key))]
    if indices:
        last = max(indices)
        role = _str(attrs.get(f"{semconv.GEN_AI_PROMPT}.{last}.role")) or "prompt"
        content = attrs.get(f"{semconv.GEN_AI_PROMPT}.{last}.content")
        facts.prompt = f"{role}: {excerpt(content, EXCERPT_CHARS)}"
    content = attrs.get(f"{semconv.GEN_AI_COMPLETION}.0.content")
    if content is not None:
        role = _str(attrs.get(f"{semconv.GEN_AI_COMPLETION}.0.role")) or "response"
        facts.response = f"{role}: {excerpt(content, EXCERPT_CHARS)}"
    calls = sorted(int(m.group(1)) for key in attrs if (m := _TOOL_CALL_INDEX.match(key)))
    for j in calls:
        prefix = f"{semconv.GEN_AI_COMPLETION}.0.tool_calls.{j}"
        args = excerpt(attrs.get(f"{prefix}.arguments"), 80)
        facts.tool_calls.append(f"{attrs.get(f'{prefix}.name')}({args})")


def _errors(span: Span) -> list[str]:
    errors: list[str] = []
    for event in span.events:
        if event.name == "exception":
            kind = event.attributes.get(semconv.EXCEPTION_TYPE, "exception")
            errors.append(f"{kind}: {excerpt(event.attributes.get(semconv.EXCEPTION_MESSAGE), EXCERPT_CHARS)}")
    if span.name == semconv.AGL_EXCEPTION:
        kind = span.attributes.get(semconv.EXCEPTION_TYPE, "exception")
        errors.append(f"{kind}: {excerpt(span.attributes.get(semconv.EXCEPTION_MESSAGE), EXCERPT_CHARS)}")
    if span.status.status_code == "ERROR":
        description = span.status.description
        if not errors or (description and not any(description in e for e in errors)):
            errors.append(f"status ERROR: {excerpt(description, EXCERPT_CHARS) or '(no description)'}")
    return errors


def facts_of(span: Span) -> SpanFacts:
    """What `span` records, in the terms a reader looks for."""
    facts = SpanFacts()
    attrs = span.attributes
    if _is_llm(span):
        _llm_facts(span, facts)
    elif _is_tool(span):
        facts.kind = "tool"
        facts.tool = _str(_first(attrs, ("tool.name", "gen_ai.tool.name"))) or span.name
        args = _first(attrs, ("tool.parameters", "tool.arguments", "gen_ai.tool.call.arguments"))
        facts.tool_args = excerpt(args, EXCERPT_CHARS) if args is not None else None
        result = _first(attrs, ("tool.output", "tool.result", "gen_ai.tool.call.result"))
        facts.tool_result = excerpt(result, EXCERPT_CHARS) if result is not None else None
    elif span.name == semconv.AGL_OPERATION:
        facts.kind = "operation"
        facts.operation = _str(attrs.get(semconv.OPERATION_NAME))
    elif span.name == semconv.AGL_MESSAGE:
        facts.kind = "message"
        facts.message = excerpt(attrs.get(semconv.MESSAGE_BODY), EXCERPT_CHARS)
    facts.rewards = get_rewards_from_span(span)
    if not facts.rewards:
        value = get_reward_value(span)
        if value is not None:
            facts.rewards = [RewardDimension(name=semconv.PRIMARY_REWARD_NAME, value=value)]
    if facts.rewards and facts.kind == "span":
        facts.kind = "reward"
    facts.errors = _errors(span)
    if facts.errors and facts.kind == "span":
        facts.kind = "exception"
    return facts


def _label(span: Span, facts: SpanFacts) -> tuple[str, list[str], str]:
    """The one-line label, the note lines under it, and a rich style."""
    duration = None
    if span.start_time is not None and span.end_time is not None:
        duration = span.end_time - span.start_time
    parts = [span.name, fmt_duration(duration)]
    notes: list[str] = []
    style = ""
    if facts.kind == "llm":
        tokens = f"{fmt_number(facts.prompt_tokens)} -> {fmt_number(facts.completion_tokens)} tokens"
        parts.append(f"LLM {facts.model or '?'}, {tokens}")
        notes += [f"prompt   {facts.prompt}"] if facts.prompt else []
        notes += [f"response {facts.response}"] if facts.response else []
        notes += [f"calls    {call}" for call in facts.tool_calls]
        style = "cyan"
    elif facts.kind == "tool":
        parts.append(f"tool {facts.tool}")
        notes += [f"args     {facts.tool_args}"] if facts.tool_args else []
        notes += [f"result   {facts.tool_result}"] if facts.tool_result else []
        style = "magenta"
    elif facts.kind == "operation" and facts.operation:
        parts.append(f"operation {facts.operation}")
    elif facts.kind == "message" and facts.message:
        notes.append(f"message  {facts.message}")
    if facts.rewards:
        shown = ", ".join(f"{r['name']}={fmt_number(r['value'])}" for r in facts.rewards)
        parts.append(f"reward {shown}")
        style = style or "green"
    for error in facts.errors:
        notes.append(f"error    {error}")
        style = "red"
    return "  ".join(parts), notes, style


def _node(tree: TraceTree) -> Node:
    children = [_node(child) for child in tree.children]
    if tree.virtual:
        return Node(f"(span {tree.id} not recorded)", children=children, style="dim")
    label, notes, style = _label(tree.span, facts_of(tree.span))
    return Node(label, notes=notes, children=children, style=style)


def span_tree(spans: Sequence[Span]) -> list[Node]:
    """The spans as printable trees: children under their parents, ordered by start time; [] for no spans."""
    if not spans:
        return []
    root = TraceTree.from_spans(spans)
    if root.virtual and root.span.name == VIRTUAL_ROOT_ID:
        return [_node(child) for child in root.children]
    return [_node(root)]
