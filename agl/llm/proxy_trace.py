"""What the LLM proxy records about one OpenAI-compatible call, and the spans it writes for it.

A call is a `POST …/chat/completions` (`kind="chat"`) or `POST …/completions` (`kind="text_completion"`). The
request body gives the `gen_ai.request.*` and `gen_ai.prompt.*` attributes; the response (one JSON document, or
the chunks of a server-sent-event stream folded together by `ResponseRecord.add_chunk`) gives, per choice, the
completion, its token ids and logprobs.

Span shape (one span per choice; a call with `n=1` gives exactly one span):

* name `openai.chat.completion` or `openai.completion`; no parent; every span of one call shares a trace id and
  the call's sequence id;
* `gen_ai.system`, `gen_ai.operation.name`, `gen_ai.request.model` (the name the agent asked for),
  `gen_ai.request.{temperature,max_tokens,top_p,choice.count,seed,...}`, `gen_ai.request.functions.<i>.*`,
  `gen_ai.prompt.<i>.{role,content,tool_call_id,name,tool_calls.<j>.{id,name,arguments}}`;
* `gen_ai.response.{id,model,finish_reasons}`, `gen_ai.usage.{input_tokens,output_tokens}`,
  `gen_ai.completion.0.{role,content,finish_reason,tool_calls.<j>.{id,name,arguments}}` (the span's choice);
* `prompt_token_ids`, `response_token_ids` (lists of ints) and `response_logprobs` (list of floats, one per
  response token) when the backend returned them;
* `agentlightning.llm_proxy.{choice_index,choice_count,stream,backend,backend_model,endpoint}`;
* on failure: status `ERROR` with a description, `http.response.status_code`, `error.type` and the backend's
  error body (truncated) under `agentlightning.llm_proxy.error_body`; no token ids.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from agl import semconv
from agl.types.tracer import OtelResource, Span, SpanContext, TraceStatus

__all__ = [
    "BACKEND",
    "BACKEND_MODEL",
    "CHAT",
    "CHOICE_COUNT",
    "CHOICE_INDEX",
    "ENDPOINT",
    "ERROR_BODY",
    "PROMPT_TOKEN_IDS",
    "RESPONSE_LOGPROBS",
    "RESPONSE_TOKEN_IDS",
    "SPAN_NAMES",
    "STREAM",
    "TEXT_COMPLETION",
    "WEIGHTS_VERSION",
    "CallFailure",
    "CallKind",
    "ChoiceRecord",
    "ResponseRecord",
    "SSEParser",
    "build_spans",
    "request_attributes",
]

CallKind = Literal["chat", "text_completion"]
CHAT: CallKind = "chat"
TEXT_COMPLETION: CallKind = "text_completion"
SPAN_NAMES: dict[str, str] = {CHAT: "openai.chat.completion", TEXT_COMPLETION: "openai.completion"}

PROMPT_TOKEN_IDS = "prompt_token_ids"
RESPONSE_TOKEN_IDS = "response_token_ids"
RESPONSE_LOGPROBS = "response_logprobs"

_PREFIX = f"{semconv.AGL_PREFIX}.llm_proxy"
CHOICE_INDEX = f"{_PREFIX}.choice_index"
"""Index of the response choice a span records (0 for `n=1`)."""
CHOICE_COUNT = f"{_PREFIX}.choice_count"
"""Number of choices in the response (the number of spans written for the call)."""
STREAM = f"{_PREFIX}.stream"
BACKEND = f"{_PREFIX}.backend"
BACKEND_MODEL = f"{_PREFIX}.backend_model"
ENDPOINT = f"{_PREFIX}.endpoint"
ERROR_BODY = f"{_PREFIX}.error_body"
WEIGHTS_VERSION = f"{_PREFIX}.weights_version"
"""The version of the weights that generated the choice, when the backend reports one (AGL's model server)."""

_OPERATION_NAME = "gen_ai.operation.name"
_HTTP_STATUS = "http.response.status_code"
_ERROR_TYPE = "error.type"
_ERROR_BODY_LIMIT = 4000
_SERVICE = OtelResource(attributes={"service.name": "agl.llm_proxy"})

# Request fields recorded as `gen_ai.request.<name>` (value copied when it is a JSON scalar or list of them).
_REQUEST_FIELDS = {
    "temperature": semconv.GEN_AI_REQUEST_TEMPERATURE,
    "top_p": semconv.GEN_AI_REQUEST_TOP_P,
    "n": "gen_ai.request.choice.count",
    "seed": "gen_ai.request.seed",
    "stop": "gen_ai.request.stop_sequences",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "top_k": "gen_ai.request.top_k",
}


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    """Message content as an attribute value: strings as they are, anything else (content parts) as JSON."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _flatten_tool_calls(prefix: str, calls: Any, out: dict[str, Any]) -> None:
    if not isinstance(calls, list):
        return
    for j, call in enumerate(calls):
        if not isinstance(call, dict):
            continue
        function = _mapping(call.get("function"))
        arguments = function.get("arguments", call.get("arguments"))
        out[f"{prefix}.tool_calls.{j}.id"] = call.get("id")
        out[f"{prefix}.tool_calls.{j}.type"] = call.get("type") or "function"
        out[f"{prefix}.tool_calls.{j}.name"] = function.get("name", call.get("name"))
        out[f"{prefix}.tool_calls.{j}.arguments"] = arguments if isinstance(arguments, str) else _text(arguments)


def request_attributes(kind: CallKind, body: dict[str, Any], requested_model: str, system: str) -> dict[str, Any]:
    """The `gen_ai.request.*` / `gen_ai.prompt.*` attributes of a call, from the body the agent sent."""
    attrs: dict[str, Any] = {
        semconv.GEN_AI_SYSTEM: system,
        _OPERATION_NAME: kind,
        semconv.GEN_AI_REQUEST_MODEL: requested_model,
    }
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is not None and _scalar(max_tokens):
        attrs[semconv.GEN_AI_REQUEST_MAX_TOKENS] = max_tokens
    for name, key in _REQUEST_FIELDS.items():
        value = body.get(name)
        if value is None:
            continue
        if _scalar(value) or (isinstance(value, list) and all(_scalar(v) for v in value)):
            attrs[key] = value
    tools = body.get("tools")
    if isinstance(tools, list):
        for i, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(function, dict):
                continue
            attrs[f"gen_ai.request.functions.{i}.name"] = function.get("name")
            attrs[f"gen_ai.request.functions.{i}.description"] = function.get("description", "")
            attrs[f"gen_ai.request.functions.{i}.parameters"] = json.dumps(function.get("parameters", {}))
    if kind == CHAT:
        messages = body.get("messages")
        if isinstance(messages, list):
            for i, message in enumerate(messages):
                if not isinstance(message, dict):
                    continue
                prefix = f"{semconv.GEN_AI_PROMPT}.{i}"
                attrs[f"{prefix}.role"] = message.get("role")
                attrs[f"{prefix}.content"] = _text(message.get("content"))
                for extra in ("tool_call_id", "name"):
                    if isinstance(message.get(extra), str):
                        attrs[f"{prefix}.{extra}"] = message[extra]
                _flatten_tool_calls(prefix, message.get("tool_calls"), attrs)
    else:
        prompt = body.get("prompt")
        prompts = prompt if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt) else [prompt]
        for i, text in enumerate(prompts):
            attrs[f"{semconv.GEN_AI_PROMPT}.{i}.role"] = "user"
            attrs[f"{semconv.GEN_AI_PROMPT}.{i}.content"] = _text(text)
    return attrs


# -- response records ---------------------------------------------------------------------------------------------


def _int_list(value: Any) -> list[int] | None:
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    return None


def _chosen_logprobs(logprobs: Any) -> list[float | None] | None:
    """Per-token logprobs from an OpenAI chat (`content: [{logprob}]`) or completions (`token_logprobs`) block."""
    if not isinstance(logprobs, dict):
        return None
    content = logprobs.get("content")
    if isinstance(content, list):
        return [
            float(e["logprob"]) if isinstance(e, dict) and isinstance(e.get("logprob"), (int, float)) else None
            for e in content
        ]
    values = logprobs.get("token_logprobs")
    if isinstance(values, list):
        return [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None for v in values]
    return None


@dataclass
class ChoiceRecord:
    """One choice of a response, as a whole or folded together from stream deltas."""

    index: int
    role: str = "assistant"
    content: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    token_ids: list[int] | None = None
    logprobs: list[float | None] | None = None
    prompt_token_ids: list[int] | None = None
    weights_version: Any = None

    def _extend_tokens(self, ids: list[int] | None) -> None:
        if ids is not None:
            self.token_ids = (self.token_ids or []) + ids

    def _extend_logprobs(self, values: list[float | None] | None) -> None:
        if values is not None:
            self.logprobs = (self.logprobs or []) + values

    def _append_content(self, text: Any) -> None:
        if isinstance(text, str):
            self.content = (self.content or "") + text

    def _merge_tool_call_deltas(self, deltas: Any) -> None:
        if not isinstance(deltas, list):
            return
        for position, delta in enumerate(deltas):
            if not isinstance(delta, dict):
                continue
            index = delta.get("index", position)
            while len(self.tool_calls) <= index:
                self.tool_calls.append({"id": None, "type": "function", "function": {"name": None, "arguments": ""}})
            call = self.tool_calls[index]
            if delta.get("id"):
                call["id"] = delta["id"]
            if delta.get("type"):
                call["type"] = delta["type"]
            function = delta.get("function")
            if isinstance(function, dict):
                if function.get("name"):
                    call["function"]["name"] = function["name"]
                if isinstance(function.get("arguments"), str):
                    call["function"]["arguments"] += function["arguments"]


@dataclass
class ResponseRecord:
    """A response to a call: metadata, prompt token ids and its choices by index."""

    kind: CallKind
    id: str | None = None
    model: str | None = None
    prompt_token_ids: list[int] | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    weights_version: Any = None
    choices: dict[int, ChoiceRecord] = field(default_factory=dict)
    chunks: int = 0

    def _choice(self, raw: dict[str, Any], position: int) -> ChoiceRecord:
        index = raw.get("index", position)
        if not isinstance(index, int):
            index = position
        choice = self.choices.get(index)
        if choice is None:
            choice = self.choices[index] = ChoiceRecord(index=index)
        return choice

    def _header(self, data: dict[str, Any]) -> None:
        if self.id is None and isinstance(data.get("id"), str):
            self.id = data["id"]
        if self.model is None and isinstance(data.get("model"), str):
            self.model = data["model"]
        prompt_ids = _int_list(data.get("prompt_token_ids"))
        if prompt_ids is not None and self.prompt_token_ids is None:
            self.prompt_token_ids = prompt_ids
        if isinstance(data.get("usage"), dict):
            self.usage = dict(data["usage"])
        if _scalar(data.get("weights_version")) and data.get("weights_version") is not None:
            self.weights_version = data["weights_version"]

    @classmethod
    def from_json(cls, kind: CallKind, data: dict[str, Any]) -> ResponseRecord:
        """The record of a complete (non-streamed) response."""
        record = cls(kind=kind)
        record._header(data)
        choices = data.get("choices")
        for position, raw in enumerate(choices if isinstance(choices, list) else []):
            if not isinstance(raw, dict):
                continue
            choice = record._choice(raw, position)
            if kind == CHAT:
                message = _mapping(raw.get("message"))
                choice.role = message.get("role") or "assistant"
                choice.content = message.get("content") if isinstance(message.get("content"), str) else None
                calls = message.get("tool_calls")
                if isinstance(calls, list):
                    choice.tool_calls = [c for c in calls if isinstance(c, dict)]
            else:
                choice.content = raw.get("text") if isinstance(raw.get("text"), str) else None
            choice.finish_reason = raw.get("finish_reason")
            choice.token_ids = _int_list(raw.get("token_ids"))
            choice.logprobs = _chosen_logprobs(raw.get("logprobs"))
            choice.prompt_token_ids = _int_list(raw.get("prompt_token_ids"))
            if _scalar(raw.get("weights_version")):
                choice.weights_version = raw.get("weights_version")
        return record

    def add_chunk(self, data: dict[str, Any]) -> None:
        """Fold one streamed chunk (`chat.completion.chunk` or streamed `text_completion`) into the record."""
        self.chunks += 1
        self._header(data)
        choices = data.get("choices")
        for position, raw in enumerate(choices if isinstance(choices, list) else []):
            if not isinstance(raw, dict):
                continue
            choice = self._choice(raw, position)
            if self.kind == CHAT:
                delta = _mapping(raw.get("delta"))
                if isinstance(delta.get("role"), str):
                    choice.role = delta["role"]
                choice._append_content(delta.get("content"))
                choice._merge_tool_call_deltas(delta.get("tool_calls"))
                choice._extend_tokens(_int_list(delta.get("token_ids")))
            else:
                choice._append_content(raw.get("text"))
            if raw.get("finish_reason") is not None:
                choice.finish_reason = raw["finish_reason"]
            choice._extend_tokens(_int_list(raw.get("token_ids")))
            choice._extend_logprobs(_chosen_logprobs(raw.get("logprobs")))
            prompt_ids = _int_list(raw.get("prompt_token_ids"))
            if prompt_ids is not None and choice.prompt_token_ids is None:
                choice.prompt_token_ids = prompt_ids
            if raw.get("weights_version") is not None and _scalar(raw["weights_version"]):
                choice.weights_version = raw["weights_version"]

    def to_json(self) -> dict[str, Any]:
        """The record as a complete OpenAI-shaped response body (used to replay a converted stream)."""
        choices: list[dict[str, Any]] = []
        for index in sorted(self.choices):
            choice = self.choices[index]
            entry: dict[str, Any] = {"index": index, "finish_reason": choice.finish_reason}
            if self.kind == CHAT:
                message: dict[str, Any] = {"role": choice.role, "content": choice.content}
                if choice.tool_calls:
                    message["tool_calls"] = choice.tool_calls
                entry["message"] = message
            else:
                entry["text"] = choice.content or ""
            if choice.token_ids is not None:
                entry["token_ids"] = choice.token_ids
            choices.append(entry)
        body: dict[str, Any] = {"id": self.id, "model": self.model, "choices": choices}
        if self.prompt_token_ids is not None:
            body["prompt_token_ids"] = self.prompt_token_ids
        if self.usage:
            body["usage"] = self.usage
        return body


# -- server-sent events -------------------------------------------------------------------------------------------


class SSEParser:
    """Splits a byte stream of server-sent events into events, keeping each event's raw bytes for forwarding.

    Lines end with `\\n` or `\\r\\n`; a blank line ends an event. `feed` returns `(raw_bytes, data)` per complete
    event, where `data` joins the event's `data:` lines with newlines (None when it has none, e.g. a comment).
    """

    def __init__(self) -> None:
        self._pending = b""
        self._raw: list[bytes] = []
        self._data: list[str] = []

    def _line(self, line: bytes) -> tuple[bytes, str | None] | None:
        self._raw.append(line)
        text = line.rstrip(b"\r\n").decode("utf-8", errors="replace")
        if text:
            if text.startswith("data:"):
                value = text[5:]
                self._data.append(value[1:] if value.startswith(" ") else value)
            return None
        return self._emit()

    def _emit(self) -> tuple[bytes, str | None]:
        event = (b"".join(self._raw), "\n".join(self._data) if self._data else None)
        self._raw, self._data = [], []
        return event

    def feed(self, chunk: bytes) -> list[tuple[bytes, str | None]]:
        """The events completed by `chunk`."""
        events: list[tuple[bytes, str | None]] = []
        buffer = self._pending + chunk
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            event = self._line(buffer[start : end + 1])
            if event is not None:
                events.append(event)
            start = end + 1
        self._pending = buffer[start:]
        return events

    def close(self) -> list[tuple[bytes, str | None]]:
        """The last event when the stream ended without a blank line after it."""
        if self._pending:
            self._line(self._pending)
            self._pending = b""
        if self._raw:
            return [self._emit()]
        return []


# -- spans --------------------------------------------------------------------------------------------------------


def _usage_int(usage: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = usage.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _choice_attributes(record: ResponseRecord, choice: ChoiceRecord, count: int) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    if record.id is not None:
        attrs[semconv.GEN_AI_RESPONSE_ID] = record.id
    if record.model is not None:
        attrs[semconv.GEN_AI_RESPONSE_MODEL] = record.model
    if choice.finish_reason is not None:
        attrs[semconv.GEN_AI_RESPONSE_FINISH_REASONS] = [choice.finish_reason]
    prompt_ids = choice.prompt_token_ids if choice.prompt_token_ids is not None else record.prompt_token_ids
    input_tokens = _usage_int(record.usage, "prompt_tokens", "input_tokens")
    if input_tokens is None and prompt_ids is not None:
        input_tokens = len(prompt_ids)
    output_tokens = _usage_int(record.usage, "completion_tokens", "output_tokens") if count == 1 else None
    if output_tokens is None and choice.token_ids is not None:
        output_tokens = len(choice.token_ids)
    if input_tokens is not None:
        attrs[semconv.GEN_AI_USAGE_INPUT_TOKENS] = input_tokens
    if output_tokens is not None:
        attrs[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] = output_tokens
    prefix = f"{semconv.GEN_AI_COMPLETION}.0"
    attrs[f"{prefix}.role"] = choice.role
    attrs[f"{prefix}.content"] = choice.content
    if choice.finish_reason is not None:
        attrs[f"{prefix}.finish_reason"] = choice.finish_reason
    _flatten_tool_calls(prefix, choice.tool_calls, attrs)
    if prompt_ids is not None:
        attrs[PROMPT_TOKEN_IDS] = prompt_ids
    if choice.token_ids is not None:
        attrs[RESPONSE_TOKEN_IDS] = choice.token_ids
    if choice.logprobs is not None:
        attrs[RESPONSE_LOGPROBS] = choice.logprobs
    weights_version = choice.weights_version if choice.weights_version is not None else record.weights_version
    if weights_version is not None:
        attrs[WEIGHTS_VERSION] = weights_version
    attrs[CHOICE_INDEX] = choice.index
    attrs[CHOICE_COUNT] = count
    return attrs


@dataclass
class CallFailure:
    """Why a call failed: the HTTP status the agent received, a short description, the error body."""

    status_code: int
    description: str
    error_type: str
    body: str = ""


def build_spans(
    *,
    kind: CallKind,
    rollout_id: str,
    attempt_id: str,
    sequence_id: int,
    request_attrs: dict[str, Any],
    record: ResponseRecord | None,
    failure: CallFailure | None,
    start_time: float,
    end_time: float,
) -> list[Span]:
    """The spans of one call: one per choice on success; one `ERROR` span (no token ids) on failure."""
    trace_id = os.urandom(16).hex()
    name = SPAN_NAMES[kind]

    def make(attrs: dict[str, Any], status: TraceStatus) -> Span:
        span_id = os.urandom(8).hex()
        return Span(
            rollout_id=rollout_id,
            attempt_id=attempt_id,
            sequence_id=sequence_id,
            trace_id=trace_id,
            span_id=span_id,
            name=name,
            status=status,
            attributes=attrs,
            start_time=start_time,
            end_time=end_time,
            context=SpanContext(trace_id=trace_id, span_id=span_id),
            resource=_SERVICE,
        )

    if failure is not None or record is None:
        attrs = dict(request_attrs)
        if failure is not None:
            attrs[_HTTP_STATUS] = failure.status_code
            attrs[_ERROR_TYPE] = failure.error_type
            if failure.body:
                attrs[ERROR_BODY] = failure.body[:_ERROR_BODY_LIMIT]
        if record is not None:  # what arrived before a stream broke off, for debugging (no token ids)
            if record.id is not None:
                attrs[semconv.GEN_AI_RESPONSE_ID] = record.id
            for index in sorted(record.choices):
                attrs[f"{semconv.GEN_AI_COMPLETION}.{index}.content"] = record.choices[index].content
        description = failure.description if failure is not None else "no response"
        return [make(attrs, TraceStatus(status_code="ERROR", description=description))]

    choices = [record.choices[index] for index in sorted(record.choices)] or [ChoiceRecord(index=0)]
    return [
        make({**request_attrs, **_choice_attributes(record, choice, len(choices))}, TraceStatus(status_code="OK"))
        for choice in choices
    ]
