"""The OpenAI wire format of the model server: request validation and response/chunk shapes.

Beyond OpenAI's fields, following vLLM:

- every choice carries `token_ids` (the completion's token ids, including a final end-of-sequence token when one
  was sampled) and the response carries `prompt_token_ids` (in a stream: on the first chunk; every chunk's choice
  carries the ids of the tokens it adds);
- requests may set `top_k`, `stop_token_ids`, `ignore_eos`, and chat requests `chat_template_kwargs`;
- responses carry `weights_version`, the version of the weights that generated them.

`logprob` values are log π(token) under the model's unmodified logits at temperature 1 (see `agl.llm.sampling`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agl.llm.detokenize import TokenInfo
from agl.llm.engine import SequenceEvent
from agl.llm.sampling import SamplingParams
from agl.llm.tools import (
    ParsedCalls,
    ToolSpecError,
    check_tools,
    parse_tool_calls,
    render_tools_for_template,
    template_knows_tools,
    tool_names,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "ChatCompletionRequest",
    "ChoiceState",
    "CompletionRequest",
    "RequestError",
    "chat_chunk",
    "chat_final_chunk",
    "chat_message",
    "chat_prompt_ids",
    "chat_response",
    "completion_chunk",
    "completion_prompt_ids",
    "completion_response",
    "error_body",
    "new_id",
    "parse_request",
    "usage",
]

MAX_N = 128
MAX_TOP_LOGPROBS = 20


class RequestError(ValueError):
    """A request the server cannot serve (answered with HTTP 400 and this message)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None) -> dict[str, Any]:
    """An OpenAI-style error body."""
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


PositiveInt = Annotated[int, Field(ge=1)]


class _SamplingFields(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    n: int = Field(default=1, ge=1, le=MAX_N)
    max_tokens: PositiveInt | None = None
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    stream: bool = False

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def sampling_params(self, max_tokens: int, top_logprobs: int) -> SamplingParams:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=max(0, self.top_k or 0),
            seed=self.seed,
            stop=self.stop_strings(),
            stop_token_ids=tuple(self.stop_token_ids or ()),
            ignore_eos=self.ignore_eos,
            top_logprobs=top_logprobs,
        )


class ChatCompletionRequest(_SamplingFields):
    """`POST /v1/chat/completions`."""

    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: PositiveInt | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    @field_validator("messages")
    @classmethod
    def _check_messages(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, message in enumerate(messages):
            if not isinstance(message.get("role"), str):
                raise ValueError(f"message {i} has no 'role' string")
        return messages

    @field_validator("tool_choice")
    @classmethod
    def _check_tool_choice(cls, choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if isinstance(choice, str) and choice not in ("none", "auto", "required"):
            raise ValueError("must be 'none', 'auto', 'required' or {'type': 'function', 'function': {'name': ...}}")
        return choice

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def callable_tools(self) -> set[str] | None:
        """The tool names whose calls the completion is parsed for (None: leave the text as it is)."""
        if not self.tools or self.tool_choice == "none":
            return None
        return tool_names(self.tools)


class CompletionRequest(_SamplingFields):
    """`POST /v1/completions`."""

    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: Literal[False] = False

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, prompt: Any) -> Any:
        if isinstance(prompt, list) and not prompt:
            raise ValueError("prompt must not be empty")
        if isinstance(prompt, list) and any(isinstance(p, list) and not p for p in prompt):
            raise ValueError("a prompt of token ids must not be empty")
        return prompt


def parse_request(kind: type[_SamplingFields], body: Any) -> Any:
    """Validate a decoded JSON body; raise `RequestError` with a readable message."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    try:
        return kind.model_validate(body)
    except ValidationError as exc:
        problems = []
        param = None
        for error in exc.errors()[:3]:
            where = ".".join(str(part) for part in error["loc"]) or "body"
            param = param or where
            message = str(error["msg"]).removeprefix("Value error, ")
            if error["type"] == "literal_error" and where == "echo":
                message = "echo=true is not supported"
            problems.append(f"{where}: {message}")
        raise RequestError("; ".join(problems), param=param) from None


def chat_prompt_ids(tokenizer: PreTrainedTokenizerBase, request: ChatCompletionRequest) -> list[int]:
    """The prompt token ids: the messages rendered by the tokenizer's chat template, ending with the assistant cue."""
    if not getattr(tokenizer, "chat_template", None):
        raise RequestError("this model's tokenizer has no chat template; use /v1/completions", param="messages")
    messages = [_plain_message(i, m) for i, m in enumerate(request.messages)]
    kwargs: dict[str, Any] = dict(request.chat_template_kwargs or {})
    kwargs.setdefault("add_generation_prompt", True)
    try:
        if request.tools:
            check_tools(request.tools)
        if template_knows_tools(tokenizer.chat_template):
            if request.tools:
                kwargs["tools"] = request.tools
        elif request.tools or any(m.get("tool_calls") or m.get("content") is None for m in messages):
            messages = render_tools_for_template(messages, request.tools)
    except ToolSpecError as exc:
        raise RequestError(exc.message, param=exc.param) from None
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except Exception as exc:  # jinja raises for messages its template rejects
        raise RequestError(f"the chat template rejected the messages: {exc}", param="messages") from None
    if not isinstance(text, str):
        raise RequestError("the chat template did not produce text", param="messages")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [int(i) for i in ids]


def _plain_message(index: int, message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RequestError(f"message {index}: only text content parts are supported", param="messages")
            texts.append(part["text"])
        return {**message, "content": "".join(texts)}
    if content is not None and not isinstance(content, str):
        raise RequestError(f"message {index}: content must be a string or a list of text parts", param="messages")
    return message


def completion_prompt_ids(
    tokenizer: PreTrainedTokenizerBase, request: CompletionRequest, vocab_size: int
) -> list[list[int]]:
    """The token ids of each prompt (a string is tokenized with the tokenizer's special tokens, e.g. BOS)."""
    prompt = request.prompt
    if isinstance(prompt, str):
        prompts: list[str | list[int]] = [prompt]
    elif all(isinstance(p, int) for p in prompt):
        prompts = [[int(p) for p in prompt]]  # type: ignore[arg-type]
    else:
        prompts = list(prompt)  # type: ignore[arg-type]
    result = []
    for p in prompts:
        if isinstance(p, str):
            ids = [int(i) for i in tokenizer(p)["input_ids"]]
            if not ids:
                raise RequestError("the prompt is empty after tokenization", param="prompt")
        else:
            bad = [i for i in p if not 0 <= i < vocab_size]
            if bad:
                raise RequestError(f"token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})", param="prompt")
            ids = list(p)
        result.append(ids)
    return result


def new_id(prefix: str) -> str:
    """A response id such as `chatcmpl-3f2a…`."""
    return f"{prefix}-{uuid.uuid4().hex}"


@dataclass
class ChoiceState:
    """Everything generated so far for one choice."""

    index: int
    prompt_index: int = 0
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    weights_version: str | None = None
    error: str | None = None

    def add(self, event: SequenceEvent) -> None:
        self.token_ids.extend(event.token_ids)
        self.logprobs.extend(event.logprobs)
        self.top_logprobs.extend(event.top_logprobs)
        self.text += event.text
        if event.finish_reason is not None:
            self.finish_reason = event.finish_reason
            self.weights_version = event.weights_version
            self.error = event.error


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The `usage` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _chat_logprobs(info: TokenInfo, ids: Sequence[int], lps: Sequence[float], tops: Sequence[Any]) -> dict[str, Any]:
    content = []
    for j, (token_id, lp) in enumerate(zip(ids, lps, strict=True)):
        text, raw = info.get(token_id)
        alternatives = []
        if j < len(tops):
            for alt_id, alt_lp in tops[j]:
                alt_text, alt_raw = info.get(alt_id)
                alternatives.append({"token": alt_text, "logprob": alt_lp, "bytes": alt_raw})
        content.append({"token": text, "logprob": lp, "bytes": raw, "top_logprobs": alternatives})
    return {"content": content}


def _completion_logprobs(
    info: TokenInfo, ids: Sequence[int], lps: Sequence[float], tops: Sequence[Any], offset: int
) -> dict[str, Any]:
    """The legacy completions shape (`tokens`, `token_logprobs`, …) plus the chat shape under `content`."""
    tokens, offsets, top_maps = [], [], []
    for j, token_id in enumerate(ids):
        text, _ = info.get(token_id)
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
        if j < len(tops):
            top_maps.append({info.get(alt_id)[0]: alt_lp for alt_id, alt_lp in tops[j]})
    result: dict[str, Any] = {
        "tokens": tokens,
        "token_logprobs": list(lps),
        "top_logprobs": top_maps if tops else None,
        "text_offset": offsets,
    }
    result.update(_chat_logprobs(info, ids, lps, tops))
    return result


def chat_message(choice: ChoiceState, tools: set[str] | None) -> tuple[dict[str, Any], str | None]:
    """The assistant message of a finished choice and its finish reason (`"tool_calls"` when it calls tools)."""
    parsed: ParsedCalls | None = parse_tool_calls(choice.text, tools) if tools else None
    if parsed is None:
        return {"role": "assistant", "content": choice.text}, choice.finish_reason
    message = {"role": "assistant", "content": parsed.content, "tool_calls": parsed.tool_calls}
    return message, "tool_calls" if choice.finish_reason == "stop" else choice.finish_reason


def chat_response(
    response_id: str,
    model: str,
    prompt_ids: list[int],
    choices: Sequence[ChoiceState],
    info: TokenInfo,
    with_logprobs: bool,
    created: int | None = None,
    tools: set[str] | None = None,
) -> dict[str, Any]:
    """A complete `chat.completion` object; with `tools`, calls written in the text become `tool_calls`."""
    messages = [chat_message(c, tools) for c in choices]
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": [
            {
                "index": c.index,
                "message": message,
                "logprobs": _chat_logprobs(info, c.token_ids, c.logprobs, c.top_logprobs) if with_logprobs else None,
                "finish_reason": finish_reason,
                "token_ids": c.token_ids,
            }
            for c, (message, finish_reason) in zip(choices, messages, strict=True)
        ],
        "usage": usage(len(prompt_ids), sum(len(c.token_ids) for c in choices)),
        "prompt_token_ids": prompt_ids,
        "weights_version": choices[0].weights_version if choices else None,
    }


def chat_chunk(
    response_id: str,
    model: str,
    created: int,
    index: int,
    event: SequenceEvent | None,
    info: TokenInfo,
    with_logprobs: bool,
    *,
    role: bool = False,
) -> dict[str, Any]:
    """One `chat.completion.chunk` for one choice (`role=True`: the opening chunk announcing the assistant)."""
    delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
    choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None, "token_ids": []}
    if event is not None:
        if event.text or event.token_ids:
            delta["content"] = event.text
        choice["token_ids"] = list(event.token_ids)
        if with_logprobs and event.token_ids:
            choice["logprobs"] = _chat_logprobs(info, event.token_ids, event.logprobs, event.top_logprobs)
        choice["finish_reason"] = event.finish_reason
        if event.finish_reason is not None:
            choice["weights_version"] = event.weights_version
    return {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [choice],
    }


def chat_final_chunk(
    response_id: str,
    model: str,
    created: int,
    choice: ChoiceState,
    info: TokenInfo,
    with_logprobs: bool,
    tools: set[str],
) -> dict[str, Any]:
    """One chunk holding a whole finished choice, for streams that offer tools.

    Whether the text is a tool call is known only at its end, so such streams hold each choice back and send it
    as one delta: `content` and, when the text calls tools, `tool_calls` (each with its `index`).
    """
    message, finish_reason = chat_message(choice, tools)
    delta: dict[str, Any] = {"content": message["content"]}
    if "tool_calls" in message:
        delta["tool_calls"] = [{"index": j, **call} for j, call in enumerate(message["tool_calls"])]
    entry: dict[str, Any] = {
        "index": choice.index,
        "delta": delta,
        "logprobs": _chat_logprobs(info, choice.token_ids, choice.logprobs, choice.top_logprobs)
        if with_logprobs and choice.token_ids
        else None,
        "finish_reason": finish_reason,
        "token_ids": list(choice.token_ids),
        "weights_version": choice.weights_version,
    }
    return {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [entry],
    }


def completion_response(
    response_id: str,
    model: str,
    prompts: list[list[int]],
    choices: Sequence[ChoiceState],
    info: TokenInfo,
    with_logprobs: bool,
    created: int | None = None,
) -> dict[str, Any]:
    """A complete `text_completion` object (one choice per prompt × `n`)."""
    return {
        "id": response_id,
        "object": "text_completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": [
            {
                "index": c.index,
                "text": c.text,
                "logprobs": _completion_logprobs(info, c.token_ids, c.logprobs, c.top_logprobs, 0)
                if with_logprobs
                else None,
                "finish_reason": c.finish_reason,
                "token_ids": c.token_ids,
                "prompt_token_ids": prompts[c.prompt_index],
            }
            for c in choices
        ],
        "usage": usage(sum(len(p) for p in prompts), sum(len(c.token_ids) for c in choices)),
        "prompt_token_ids": prompts[0] if len(prompts) == 1 else prompts,
        "weights_version": choices[0].weights_version if choices else None,
    }


def completion_chunk(
    response_id: str,
    model: str,
    created: int,
    index: int,
    event: SequenceEvent,
    info: TokenInfo,
    with_logprobs: bool,
    text_offset: int,
) -> dict[str, Any]:
    """One streamed `text_completion` chunk for one choice."""
    choice: dict[str, Any] = {
        "index": index,
        "text": event.text,
        "logprobs": _completion_logprobs(info, event.token_ids, event.logprobs, event.top_logprobs, text_offset)
        if with_logprobs
        else None,
        "finish_reason": event.finish_reason,
        "token_ids": list(event.token_ids),
    }
    if event.finish_reason is not None:
        choice["weights_version"] = event.weights_version
    return {"id": response_id, "object": "text_completion", "created": created, "model": model, "choices": [choice]}
