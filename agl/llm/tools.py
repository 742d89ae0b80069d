"""Tool calling for the local model server: tools into the prompt, `<tool_call>` blocks out of the completion.

Models are asked to call a tool by writing, anywhere in their answer,

    <tool_call>
    {"name": "calculator", "arguments": {"expression": "12 * 3"}}
    </tool_call>

(the Hermes convention that Qwen2.5 and SmolLM2's larger siblings were tuned on). When a request lists `tools`
the server parses such blocks into OpenAI `tool_calls` (`finish_reason: "tool_calls"`); if any block is not a JSON
object naming one of the request's tools, nothing is parsed and the whole text stays plain `content`.

A chat template that knows tools (its source mentions `tools`) gets the request's tools and messages unchanged.
Otherwise (SmolLM2-135M's template, for one) the server renders them itself: the tool list and the calling
convention are appended to the system message, an assistant message's `tool_calls` become `<tool_call>` blocks in
its content, and a `tool` message keeps its role with its content as the text.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ParsedCalls",
    "ToolSpecError",
    "check_tools",
    "parse_tool_calls",
    "render_tool_call",
    "render_tools_for_template",
    "template_knows_tools",
    "tool_names",
]

_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_OPEN = "<tool_call>"


class ToolSpecError(ValueError):
    """A `tools` or `messages` entry that is not a valid OpenAI tool definition or call (the message names it)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def check_tools(tools: Sequence[Any]) -> None:
    """Raise `ToolSpecError` unless every tool is `{"type": "function", "function": {"name": <str>, ...}}`."""
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise ToolSpecError(f"tools.{i}: each tool must be {{'type': 'function', 'function': {{...}}}}", "tools")
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise ToolSpecError(f"tools.{i}.function.name: give the function's name as a non-empty string", "tools")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise ToolSpecError(f"tools.{i}.function.parameters: must be a JSON schema object", "tools")


def tool_names(tools: Sequence[dict[str, Any]]) -> set[str]:
    """The function names of (checked) tools."""
    return {str(tool["function"]["name"]) for tool in tools}


def template_knows_tools(template: str | None) -> bool:
    """Whether a chat template renders tools itself (it refers to a `tools` variable)."""
    return bool(template) and re.search(r"\btools\b", str(template)) is not None


def render_tool_call(name: str, arguments: Any) -> str:
    """One call as the `<tool_call>` block a model is asked to write."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass  # kept as the string the caller gave
    return f"{_OPEN}\n{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}\n</tool_call>"


def _tools_text(tools: Sequence[dict[str, Any]]) -> str:
    listing = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    return (
        "You can call these tools:\n<tools>\n"
        f"{listing}\n</tools>\n"
        "To call a tool, reply with a JSON object with its name and arguments in <tool_call></tool_call> tags:\n"
        '<tool_call>\n{"name": <tool name>, "arguments": <arguments object>}\n</tool_call>'
    )


def render_tools_for_template(
    messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """Messages a tool-unaware chat template can render: tools in the system message, calls as text blocks."""
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        message = dict(message)
        calls = message.pop("tool_calls", None)
        if calls:
            if not isinstance(calls, list):
                raise ToolSpecError(f"messages.{i}.tool_calls: must be a list of calls", "messages")
            blocks = []
            for j, call in enumerate(calls):
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                    raise ToolSpecError(
                        f"messages.{i}.tool_calls.{j}.function.name: each call needs a function name", "messages"
                    )
                blocks.append(render_tool_call(function["name"], function.get("arguments", {})))
            text = message.get("content") or ""
            message["content"] = (text + "\n" if text else "") + "\n".join(blocks)
        if message.get("content") is None:
            message["content"] = ""
        message.pop("tool_call_id", None)
        out.append(message)
    if tools:
        addition = _tools_text(tools)
        if out and out[0].get("role") == "system":
            base = out[0]["content"]
            out[0]["content"] = f"{base}\n\n{addition}" if base else addition
        else:
            out.insert(0, {"role": "system", "content": addition})
    return out


@dataclass
class ParsedCalls:
    """A completion's text split into plain content (None when empty) and OpenAI `tool_calls`."""

    content: str | None
    tool_calls: list[dict[str, Any]]


def parse_tool_calls(text: str, names: set[str]) -> ParsedCalls | None:
    """The tool calls written in `text`, or None when it has none or any block is malformed.

    A block is malformed when it is not a JSON object, its `name` is not one of `names`, or its `arguments` are
    neither an object nor a JSON string holding one. An unclosed last block counts when it parses.
    """
    if _OPEN not in text:
        return None
    calls: list[dict[str, Any]] = []
    for match in _BLOCK.finditer(text):
        try:
            payload = json.loads(match.group(1))
        except ValueError:
            return None
        if not isinstance(payload, dict) or payload.get("name") not in names:
            return None
        arguments = payload.get("arguments", payload.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return None
        if not isinstance(arguments, dict):
            return None
        calls.append(
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {"name": payload["name"], "arguments": json.dumps(arguments, ensure_ascii=False)},
            }
        )
    if not calls:
        return None
    rest = _BLOCK.sub("", text).strip()
    return ParsedCalls(content=rest or None, tool_calls=calls)
