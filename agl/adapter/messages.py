"""Rebuild OpenAI chat conversations (fine-tuning JSONL shape) from the `gen_ai.*` attributes of LLM spans."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any, TypedDict

from agl import semconv
from agl.adapter._attrs import unflatten
from agl.adapter.base import TraceAdapter, normalize_spans
from agl.types.tracer import Span

logger = logging.getLogger(__name__)

__all__ = ["OpenAIMessages", "TraceToMessages", "group_genai_dict"]

_REQUEST = "gen_ai.request"
_RESPONSE = "gen_ai.response"
_TOOL = "tool"


class OpenAIMessages(TypedDict):
    """One conversation: chat messages in order, and the function tools offered (None when none were)."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None


def group_genai_dict(data: dict[str, Any], prefix: str) -> dict[str, Any] | list[Any]:
    """The flat attributes under `prefix.` rebuilt into nested dicts and lists (levels keyed by indices become
    lists), e.g. `gen_ai.prompt.0.role` under `gen_ai.prompt` -> `[{"role": ...}]`; `{}` when there are none.
    """
    return unflatten(data, prefix) or {}


def _as_list(value: Any, what: str, span: Span) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, dict):  # mixed keys such as {"0": {...}, "prompt_filter_results": ...}
        indices = sorted((key for key in value if key.isdigit()), key=int)
        if indices:
            return [value[key] for key in indices]
    if not isinstance(value, list):
        raise ValueError(f"span {span.span_id!r} ({span.name}): {what} attributes do not form a list: {value!r}")
    return value


def _as_dict(value: Any, what: str, span: Span) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"span {span.span_id!r} ({span.name}): {what} attributes do not form a mapping: {value!r}")
    return value


def _function_call(call: Any) -> dict[str, Any]:
    """A tool call in OpenAI shape, from either `{id, name, arguments}` or `{id, type, function: {...}}`."""
    if not isinstance(call, dict):
        raise ValueError(f"tool call must be a mapping, got {call!r}")
    function = call.get("function")
    name = function.get("name") if isinstance(function, dict) else call.get("name")
    arguments = function.get("arguments") if isinstance(function, dict) else call.get("arguments")
    if arguments is not None and not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    return {
        "id": call.get("id"),
        "type": call.get("type") or "function",
        "function": {"name": name, "arguments": arguments if arguments is not None else ""},
    }


def _prompt_message(message: Any) -> dict[str, Any] | None:
    if not isinstance(message, dict):
        logger.warning("Skipping prompt message that is not a mapping: %r", message)
        return None
    role = message.get("role")
    if role is None:
        role = "assistant" if "tool_calls" in message else "tool" if "tool_call_id" in message else None
        if role is None:
            logger.warning("Skipping prompt message without a role: %r", message)
            return None
    if role == "assistant" and message.get("tool_calls"):
        calls = message["tool_calls"]
        calls = calls if isinstance(calls, list) else [calls]
        return {
            "role": "assistant",
            "content": message.get("content"),
            "tool_calls": [_function_call(c) for c in calls],
        }
    result: dict[str, Any] = {"role": role, "content": message.get("content", "")}
    if message.get("tool_call_id") is not None:
        result["tool_call_id"] = message["tool_call_id"]
    return result


def _child_tool_calls(span: Span, children: Sequence[Span]) -> list[dict[str, Any]]:
    """Tool calls recorded by the direct children of `span` as `tool.name`, `tool.parameters`, `tool.call.*`."""
    calls: list[dict[str, Any]] = []
    for child in sorted(children, key=lambda c: (c.start_time is None, c.start_time or 0.0)):
        tool = unflatten(child.attributes, _TOOL)
        if not tool:
            continue
        if not isinstance(tool, dict):
            raise ValueError(f"span {child.span_id!r} ({child.name}): tool attributes do not form a mapping: {tool!r}")
        raw_call = tool.get("call")
        call: dict[str, Any] = raw_call if isinstance(raw_call, dict) else {}
        arguments = tool.get("parameters")
        if arguments is not None and not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        calls.append(
            {
                "id": call.get("id"),
                "type": call.get("type") or "function",
                "function": {"name": tool.get("name"), "arguments": arguments if arguments is not None else ""},
            }
        )
    return calls


def _tools(request: dict[str, Any], span: Span) -> list[dict[str, Any]] | None:
    if "functions" not in request:
        return None
    tools: list[dict[str, Any]] = []
    for function in _as_list(request["functions"], "gen_ai.request.functions", span):
        if not isinstance(function, dict):
            raise ValueError(f"span {span.span_id!r} ({span.name}): a request function is not a mapping: {function!r}")
        parameters = function.get("parameters")
        if isinstance(parameters, str):
            try:
                parameters = json.loads(parameters)
            except ValueError as exc:
                raise ValueError(
                    f"span {span.span_id!r} ({span.name}): parameters of function {function.get('name')!r} "
                    f"are not valid JSON"
                ) from exc
        tools.append(
            {
                "type": "function",
                "function": {
                    "name": function.get("name"),
                    "description": function.get("description", ""),
                    "parameters": parameters,
                },
            }
        )
    return tools


class TraceToMessages(TraceAdapter[list[OpenAIMessages]]):
    """Turns a trace into OpenAI fine-tuning conversations, one per span carrying `gen_ai.*` chat attributes.

    Messages are the prompt messages (`role`, `content`, `tool_call_id`; an assistant's `tool_calls` kept)
    followed by the assistant completions. When the span's direct children record tool invocations (`tool.*`
    attributes), the assistant completion carries them as `tool_calls`. `tools` lists the request's
    `gen_ai.request.functions`, or is None.
    """

    def get_tool_calls(self, completion: Span, all_spans: Sequence[Span], /) -> Iterable[dict[str, Any]]:
        """The raw `tool.*` attributes (grouped into dicts) of the direct children of `completion` that record a
        tool call, in the order of `all_spans`.

        Raises:
            ValueError: a child's `tool.*` attributes do not form a mapping.
        """
        for span in all_spans:
            if span.parent_id != completion.span_id:
                continue
            tool = group_genai_dict(span.attributes, _TOOL)
            if not isinstance(tool, dict):
                raise ValueError(
                    f"span {span.span_id!r} ({span.name}): tool attributes do not form a mapping: {tool!r}"
                )
            if tool:
                yield tool

    def adapt(self, source: Sequence[Any], /) -> list[OpenAIMessages]:
        """The conversations recorded in the trace `source`, in span order.

        Raises:
            TypeError: `source` is not a sequence of spans.
            ValueError: a span's `gen_ai.*` attributes cannot be read as messages.
        """
        spans = normalize_spans(source)
        children: dict[str, list[Span]] = {}
        for span in spans:
            if span.parent_id is not None:
                children.setdefault(span.parent_id, []).append(span)
        conversations: list[OpenAIMessages] = []
        for span in spans:
            conversation = self._conversation(span, children.get(span.span_id, []))
            if conversation is not None:
                conversations.append(conversation)
        return conversations

    def _conversation(self, span: Span, children: Sequence[Span]) -> OpenAIMessages | None:
        attrs = span.attributes
        prompt = _as_list(unflatten(attrs, semconv.GEN_AI_PROMPT), "gen_ai.prompt", span)
        completion = _as_list(unflatten(attrs, semconv.GEN_AI_COMPLETION), "gen_ai.completion", span)
        request = _as_dict(unflatten(attrs, _REQUEST), _REQUEST, span)
        response = _as_dict(unflatten(attrs, _RESPONSE), _RESPONSE, span)
        if not (prompt or completion or request or response):
            return None
        messages = [m for m in (_prompt_message(message) for message in prompt) if m is not None]
        tool_calls = _child_tool_calls(span, children)
        for choice in completion:
            if not isinstance(choice, dict) or choice.get("role") != "assistant":
                continue
            message: dict[str, Any] = {"role": "assistant", "content": choice.get("content")}
            own_calls = choice.get("tool_calls")
            if tool_calls:
                message["tool_calls"] = tool_calls
            elif own_calls:
                message["tool_calls"] = [_function_call(c) for c in _as_list(own_calls, "tool_calls", span)]
            messages.append(message)
        return OpenAIMessages(messages=messages, tools=_tools(request, span))
