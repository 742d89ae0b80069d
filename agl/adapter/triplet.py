"""Triplet adapters: turn a rollout's spans into (prompt, response, reward) steps for training."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pydantic import BaseModel

from agl import semconv
from agl.adapter._attrs import (
    as_float_list,
    as_int_list,
    first_float_list,
    first_int_list,
    first_str,
    parse_literal,
    unflatten,
    unflatten_first,
)
from agl.adapter.base import TraceAdapter, normalize_spans
from agl.adapter.tree import TraceTree
from agl.emitter.reward import get_reward_value, is_reward_span
from agl.types.core import Triplet
from agl.types.tracer import Span

logger = logging.getLogger(__name__)

__all__ = [
    "CallScope",
    "LlmCall",
    "LlmCallMatcher",
    "LlmProxyTraceToTriplet",
    "RewardMatchPolicy",
    "TraceToTripletBase",
    "TraceTree",
    "TracerTraceToTriplet",
    "Transition",
    "assign_rewards",
    "image_urls",
    "is_reward_node",
]

DEFAULT_LLM_CALL_MATCH = r"openai\.chat\.completion"

# Where token ids, ids and payloads live on an LLM-call span; the first present key wins.
_RESPONSE_ID_KEYS = (semconv.GEN_AI_RESPONSE_ID, f"{semconv.OPERATION_OUTPUT}.id")
_PROMPT_TOKEN_KEYS = ("prompt_token_ids", f"{semconv.OPERATION_OUTPUT}.prompt_token_ids")
_RESPONSE_TOKEN_KEYS = (
    "response_token_ids",
    f"{semconv.OPERATION_OUTPUT}.response_token_ids.0",
    f"{semconv.OPERATION_OUTPUT}.choices.0.token_ids",
    f"{semconv.OPERATION_OUTPUT}.choices.0.provider_specific_fields.token_ids",
)
_RESPONSE_LOGPROB_KEYS = ("response_logprobs",)
_LOGPROBS_CONTENT_KEY = "logprobs.content"
_REQUEST_PREFIXES = ("gen_ai.request", semconv.OPERATION_INPUT)
_RESPONSE_PREFIXES = ("gen_ai.response", semconv.OPERATION_OUTPUT)
_PROMPT_PREFIXES = (semconv.GEN_AI_PROMPT, f"{semconv.OPERATION_INPUT}.messages")
_COMPLETION_PREFIXES = (semconv.GEN_AI_COMPLETION, f"{semconv.OPERATION_OUTPUT}.choices")


class Transition(BaseModel):
    """One step of a token-level trajectory: the prompt token ids (state), the response token ids (action), the
    response id, the agent that made the call and the reward the step received.
    """

    state: list[int]
    action: list[int]
    response_id: str | None
    agent_name: str
    reward: float | None


class RewardMatchPolicy(str, Enum):
    """How reward spans are matched to the LLM calls they reward."""

    FIRST_SIBLING = "first_sibling"
    """A reward goes to the latest unrewarded LLM call among its siblings that ended before it started."""

    FIRST_OCCURRENCE = "first_occurrence"
    """A reward goes to the latest unrewarded LLM call anywhere in the trace that ended before it started."""


def _compile(pattern: Any, argument: str) -> re.Pattern[str]:
    if not isinstance(pattern, str):
        raise TypeError(f"{argument} must be a regular expression string, got {type(pattern).__name__}")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{argument} is not a valid regular expression ({exc}): {pattern!r}") from exc


def is_reward_node(node: TraceTree) -> bool:
    """Whether `node`'s span records a reward: a reward annotation, or a `@reward` operation."""
    span = node.span
    if is_reward_span(span):
        return True
    # A reward recorded as an `operation` named after the reward span (0.3 `@reward` on a tracer).
    return span.name == semconv.AGL_OPERATION and span.attributes.get(semconv.OPERATION_NAME) == semconv.AGL_REWARD


# -- matching LLM calls ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LlmCall:
    """An LLM-call node chosen for a triplet and the agent it ran under (None outside any agent span)."""

    node: TraceTree
    agent_name: str | None


@dataclass(frozen=True)
class CallScope:
    """What the ancestors of a node say about it while searching for LLM calls."""

    eligible: bool  # inside an agent subtree that `agent_match` accepts (always, without `agent_match`)
    agent_name: str | None
    in_reward: bool
    in_llm_call: bool


class LlmCallMatcher:
    """Selects the LLM-call spans of a trace tree that become triplets.

    A node is an LLM call when its span name matches `llm_call_match` (regex search) and, judging by its
    ancestors, it lies inside an agent subtree whose name matches `agent_match` (any span qualifies when
    `agent_match` is None), not under a reward span when `exclude_llm_call_in_reward`, and its response id
    (`gen_ai.response.id`) has not been seen yet. With `dedup_llm_call`, a nested match without a response id
    inside an accepted call is taken to be the same call seen by another instrumentation and is skipped.
    """

    def __init__(
        self,
        llm_call_match: str,
        agent_match: str | None = None,
        exclude_llm_call_in_reward: bool = True,
        dedup_llm_call: bool = True,
    ):
        self.llm_call_match = _compile(llm_call_match, "llm_call_match")
        self.agent_match = None if agent_match is None else _compile(agent_match, "agent_match")
        self.exclude_llm_call_in_reward = exclude_llm_call_in_reward
        self.dedup_llm_call = dedup_llm_call

    def find(
        self, root: TraceTree, *, start: CallScope | None = None, seen_response_ids: set[str] | None = None
    ) -> list[LlmCall]:
        """The LLM calls of the tree under `root`, depth first with children in time order.

        `start` is what `root`'s ancestors imply (default: outside any agent, reward or call); response ids
        found are added to `seen_response_ids` and ids already there are skipped.
        """
        calls: list[LlmCall] = []
        if seen_response_ids is None:
            seen_response_ids = set()
        if start is None:
            start = CallScope(eligible=self.agent_match is None, agent_name=None, in_reward=False, in_llm_call=False)
        stack: list[tuple[TraceTree, CallScope]] = [(root, start)]
        while stack:
            node, scope = stack.pop()
            is_call = self._is_call(node, scope, seen_response_ids)
            if is_call:
                calls.append(LlmCall(node, scope.agent_name))
            inner = self._scope_inside(node, scope, is_call)
            stack.extend((child, inner) for child in reversed(node.children))
        return calls

    def _is_call(self, node: TraceTree, scope: CallScope, seen_response_ids: set[str]) -> bool:
        if node.virtual or not scope.eligible or self.llm_call_match.search(node.span.name) is None:
            return False
        if scope.in_reward and self.exclude_llm_call_in_reward:
            return False
        response_id = first_str(node.span.attributes, _RESPONSE_ID_KEYS)
        if response_id is None:
            return not (self.dedup_llm_call and scope.in_llm_call)
        if response_id in seen_response_ids:
            return False
        seen_response_ids.add(response_id)
        return True

    def _scope_inside(self, node: TraceTree, scope: CallScope, is_call: bool) -> CallScope:
        eligible, agent_name = scope.eligible, scope.agent_name
        declared = node.agent_name()
        if declared is not None:
            eligible = self.agent_match is None or self.agent_match.search(declared) is not None
            agent_name = declared
        return CallScope(
            eligible=eligible,
            agent_name=agent_name,
            in_reward=scope.in_reward or is_reward_node(node),
            in_llm_call=scope.in_llm_call or is_call,
        )


# -- assigning rewards ----------------------------------------------------------------------------------------


def _start_of(node: TraceTree) -> float:
    if node.start_time is not None:
        return node.start_time
    return node.end_time if node.end_time is not None else math.inf


def _end_of(node: TraceTree) -> float:
    if node.end_time is not None:
        return node.end_time
    return node.start_time if node.start_time is not None else math.inf


def _reward_of(node: TraceTree) -> float | None:
    return None if node.virtual else get_reward_value(node.span)


def _assign_in_sequence(nodes: Iterable[TraceTree], call_ids: set[str], rewards: dict[str, float]) -> None:
    """Walk `nodes` in order; give each reward to the latest unrewarded call seen that ended before it started."""
    pending: list[TraceTree] = []
    for node in nodes:
        if node.id in call_ids:
            pending.append(node)
        value = _reward_of(node)
        if value is None:
            continue
        reward_start = _start_of(node)
        for call in reversed(pending):
            if call.id not in rewards and _end_of(call) <= reward_start:
                rewards[call.id] = value
                break


def assign_rewards(root: TraceTree, calls: Sequence[TraceTree], policy: RewardMatchPolicy) -> dict[str, float]:
    """Map the span ids of `calls` that receive a reward to that reward, following `policy`.

    `FIRST_OCCURRENCE` walks every node of the tree by start time; `FIRST_SIBLING` walks the children of each
    node separately, so a reward only reaches LLM calls that are its siblings.
    """
    call_ids = {call.id for call in calls}
    rewards: dict[str, float] = {}
    if policy is RewardMatchPolicy.FIRST_OCCURRENCE:
        _assign_in_sequence(sorted(root.traverse(), key=_start_of), call_ids, rewards)
    elif policy is RewardMatchPolicy.FIRST_SIBLING:
        for parent in root.traverse():
            _assign_in_sequence(parent.children, call_ids, rewards)
    else:  # pragma: no cover - guarded by the enum
        raise ValueError(f"unknown reward match policy: {policy!r}")
    return rewards


# -- building triplets ----------------------------------------------------------------------------------------


def image_urls(prompt: Any) -> list[str]:
    """Image URLs referenced by the prompt messages' content parts, in order."""
    if isinstance(prompt, dict):
        indices = sorted((key for key in prompt if key.isdigit()), key=int)
        messages = [prompt[key] for key in indices] if indices else [prompt]
    elif isinstance(prompt, list):
        messages = prompt
    else:
        return []
    urls: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = parse_literal(message.get("content"))
        if isinstance(content, dict):  # content parts flattened as `content.0.type`, ...
            content = [content[key] for key in sorted(content, key=lambda k: int(k) if k.isdigit() else -1)]
        if not isinstance(content, list):
            continue
        for part in content:
            if isinstance(part, dict) and part.get("type") == "image_url":
                image = part.get("image_url")
                url = image.get("url") if isinstance(image, dict) else image
                if isinstance(url, str):
                    urls.append(url)
    return urls


def _logprobs(attributes: dict[str, Any]) -> Any:
    """Response logprobs: AGL's `response_logprobs` list, else the parsed OpenAI `logprobs.content`."""
    values = first_float_list(attributes, _RESPONSE_LOGPROB_KEYS)
    if values is not None:
        return values
    content = attributes.get(_LOGPROBS_CONTENT_KEY)
    if isinstance(content, str):
        try:
            return json.loads(content)
        except ValueError:
            logger.warning("Attribute %r is not valid JSON; logprobs ignored", _LOGPROBS_CONTENT_KEY)
            return None
    if isinstance(content, list):
        return content
    return unflatten(attributes, _LOGPROBS_CONTENT_KEY)


def _without(payload: Any, keys: Iterable[str]) -> Any:
    if isinstance(payload, dict):
        dropped = set(keys)
        return {key: value for key, value in payload.items() if key not in dropped}
    return payload


class TraceToTripletBase(TraceAdapter[list[Triplet]]):
    """Base of the adapters that turn a trace into a list of `Triplet`s."""


class TracerTraceToTriplet(TraceToTripletBase):
    """Turns the spans a tracer recorded for one rollout into one `Triplet` per LLM call.

    Args:
        repair_hierarchy: re-parent top-level spans under the tightest span enclosing them in time.
        llm_call_match: regex searched in span names to recognise LLM calls.
        agent_match: regex an enclosing agent's name must match; None accepts every LLM call.
        exclude_llm_call_in_reward: ignore LLM calls made under a reward span (e.g. an LLM judge).
        reward_match: how rewards are matched to LLM calls.
        _skip_empty_token_spans: drop LLM calls that lack prompt or response token ids.
    """

    def __init__(
        self,
        repair_hierarchy: bool = True,
        llm_call_match: str = DEFAULT_LLM_CALL_MATCH,
        agent_match: str | None = None,
        exclude_llm_call_in_reward: bool = True,
        reward_match: RewardMatchPolicy | str = RewardMatchPolicy.FIRST_OCCURRENCE,
        _skip_empty_token_spans: bool = False,
    ):
        try:
            policy = RewardMatchPolicy(reward_match)
        except ValueError:
            choices = ", ".join(repr(p.value) for p in RewardMatchPolicy)
            raise ValueError(f"reward_match must be one of {choices}, got {reward_match!r}") from None
        self._matcher = LlmCallMatcher(llm_call_match, agent_match, exclude_llm_call_in_reward)
        self.repair_hierarchy = repair_hierarchy
        self.llm_call_match = llm_call_match
        self.agent_match = agent_match
        self.exclude_llm_call_in_reward = exclude_llm_call_in_reward
        self.reward_match = policy
        self._skip_empty_token_spans = _skip_empty_token_spans

    def trace_tree(self, source: Sequence[Any], /) -> TraceTree:
        """The span tree `adapt` works on (hierarchy repaired if configured), for inspection.

        Raises:
            TypeError: `source` is not a sequence of spans.
            ValueError: `source` is empty.
        """
        return self._build_tree(normalize_spans(source))

    def _build_tree(self, spans: Sequence[Span]) -> TraceTree:
        tree = TraceTree.from_spans(spans)
        if self.repair_hierarchy:
            tree.repair_hierarchy()
        return tree

    def adapt(self, source: Sequence[Any], /) -> list[Triplet]:
        """One triplet per LLM call of the trace `source` (Spans or OpenTelemetry ReadableSpans), with rewards.

        An empty trace gives an empty list.

        Raises:
            TypeError: `source` is not a sequence of spans.
        """
        spans = normalize_spans(source)
        if not spans:
            return []
        tree = self._build_tree(spans)
        kept: list[tuple[TraceTree, Triplet]] = []
        for call in self._matcher.find(tree):
            triplet = self.span_to_triplet(call.node.span, call.agent_name)
            if self._skip_empty_token_spans and not (triplet.prompt["token_ids"] and triplet.response["token_ids"]):
                logger.warning("Skipping LLM call %r: prompt or response token ids not recorded", call.node.id)
                continue
            kept.append((call.node, triplet))
        rewards = assign_rewards(tree, [node for node, _ in kept], self.reward_match)
        for node, triplet in kept:
            triplet.reward = rewards.get(node.id)
        return [triplet for _, triplet in kept]

    def span_to_triplet(self, span: Span, agent_name: str | None) -> Triplet:
        """The triplet (without reward) for one LLM-call span; override to record more fields."""
        attrs = span.attributes
        prompt_raw = unflatten_first(attrs, _PROMPT_PREFIXES)
        completion_raw = unflatten_first(attrs, _COMPLETION_PREFIXES)
        request = _without(unflatten_first(attrs, _REQUEST_PREFIXES), ["messages"])
        response_meta = _without(
            unflatten_first(attrs, _RESPONSE_PREFIXES), ["choices", "prompt_token_ids", "response_token_ids"]
        )
        response: dict[str, Any] = {
            "token_ids": first_int_list(attrs, _RESPONSE_TOKEN_KEYS) or [],
            "raw_content": completion_raw,
        }
        logprobs = _logprobs(attrs)
        if logprobs is not None:
            response["logprobs"] = logprobs
        return Triplet(
            prompt={
                "token_ids": first_int_list(attrs, _PROMPT_TOKEN_KEYS) or [],
                "raw_content": prompt_raw,
                "image_urls": image_urls(prompt_raw),
            },
            response=response,
            reward=None,
            metadata={
                "request": request,
                "response": response_meta,
                "response_id": first_str(attrs, _RESPONSE_ID_KEYS),
                "agent_name": agent_name,
            },
        )


# -- LLM proxy traces -----------------------------------------------------------------------------------------

_RAW_VLLM_SPAN = "raw_gen_ai_request"
_VLLM = "llm.hosted_vllm"
_PROXY_RESPONSE_ID_KEYS = (semconv.GEN_AI_RESPONSE_ID, f"{_VLLM}.id")


@dataclass
class _ProxyCall:
    span: Span
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float] | None
    response_id: str | None


def _first_choice(attrs: dict[str, Any]) -> dict[str, Any] | None:
    choices = parse_literal(attrs.get(f"{_VLLM}.choices"))
    if choices is None:
        choices = unflatten(attrs, f"{_VLLM}.choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return None


def _choice_logprobs(choice: dict[str, Any] | None) -> list[float] | None:
    if choice is None:
        return None
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list) or not content:
        return None
    values = [entry.get("logprob") if isinstance(entry, dict) else None for entry in content]
    return as_float_list(values)


def _vllm_tokens(attrs: dict[str, Any]) -> tuple[list[int] | None, list[int] | None, list[float] | None]:
    prompt = as_int_list(attrs.get(f"{_VLLM}.prompt_token_ids"))
    response: list[int] | None = None
    nested = parse_literal(attrs.get(f"{_VLLM}.response_token_ids"))
    if isinstance(nested, (list, tuple)) and nested:
        response = as_int_list(nested[0])
    choice = _first_choice(attrs)
    if not response and choice is not None:
        response = as_int_list(choice.get("token_ids"))
    logprobs = first_float_list(attrs, _RESPONSE_LOGPROB_KEYS) or _choice_logprobs(choice)
    return prompt, response, logprobs


def _flat_tokens(attrs: dict[str, Any]) -> tuple[list[int] | None, list[int] | None, list[float] | None]:
    if "prompt_token_ids" not in attrs or "response_token_ids" not in attrs:
        return None, None, None
    prompt = as_int_list(attrs["prompt_token_ids"])
    response = as_int_list(attrs["response_token_ids"])
    return prompt, response, first_float_list(attrs, _RESPONSE_LOGPROB_KEYS)


def _proxy_call(span: Span) -> _ProxyCall | None:
    attrs = span.attributes
    prompt, response, logprobs = _vllm_tokens(attrs) if span.name == _RAW_VLLM_SPAN else _flat_tokens(attrs)
    if not prompt or not response:
        return None
    if logprobs is not None and len(logprobs) != len(response):
        logger.warning(
            "Span %r has %d response logprobs for %d response tokens; logprobs dropped",
            span.span_id,
            len(logprobs),
            len(response),
        )
        logprobs = None
    return _ProxyCall(span, prompt, response, logprobs, first_str(attrs, _PROXY_RESPONSE_ID_KEYS))


def _sequence_order(span: Span) -> tuple[int, bool, float]:
    return span.sequence_id, span.start_time is None, span.start_time or 0.0


class LlmProxyTraceToTriplet(TraceToTripletBase):
    """Turns the spans the LLM proxy recorded for one rollout into one `Triplet` per LLM call.

    Order comes from span sequence ids only (the proxy and the agent may run on machines with different clocks).
    A call is a span with both prompt and response token ids: a `raw_gen_ai_request` span with vLLM's
    `llm.hosted_vllm.*` attributes, or any other span (such as `litellm_request`, or AGL's proxy span) with
    `prompt_token_ids` and `response_token_ids`. Response logprobs (`response_logprobs`, or vLLM's
    `choices[0].logprobs`) are kept when there is one per response token. Calls repeating a response id
    (`gen_ai.response.id` / `llm.hosted_vllm.id`), or the same token ids within one sequence id, are dropped.
    A reward at sequence id R goes to the latest call without a reward whose sequence id is below R.
    """

    def adapt(self, source: Sequence[Any], /) -> list[Triplet]:
        """One triplet per LLM call in `source` (Spans or ReadableSpans), in sequence order, with rewards.

        Raises:
            TypeError: `source` is not a sequence of spans.
        """
        spans = sorted(normalize_spans(source), key=_sequence_order)
        calls = self._collect_calls(spans)
        rewards = self._match_rewards(spans, calls)
        triplets: list[Triplet] = []
        for index, call in enumerate(calls):
            response: dict[str, Any] = {"token_ids": call.response_ids}
            if call.logprobs is not None:
                response["logprobs"] = call.logprobs
            triplets.append(
                Triplet(
                    prompt={"token_ids": call.prompt_ids},
                    response=response,
                    reward=rewards.get(index),
                    metadata={"response_id": call.response_id, "sequence_id": call.span.sequence_id},
                )
            )
        return triplets

    @staticmethod
    def _collect_calls(spans: Sequence[Span]) -> list[_ProxyCall]:
        calls: list[_ProxyCall] = []
        seen: set[Any] = set()
        for span in spans:
            call = _proxy_call(span)
            if call is None:
                continue
            # One response with n choices is n calls (the proxy writes one span per choice).
            choice = span.attributes.get("agentlightning.llm_proxy.choice_index")
            key: Any = (call.response_id, choice)
            if call.response_id is None:
                key = (span.sequence_id, choice, tuple(call.prompt_ids), tuple(call.response_ids))
            if key in seen:
                continue
            seen.add(key)
            calls.append(call)
        return calls

    @staticmethod
    def _match_rewards(spans: Sequence[Span], calls: Sequence[_ProxyCall]) -> dict[int, float]:
        """Map call positions to rewards: each reward goes to the latest unrewarded call with a lower sequence id."""
        assigned: dict[int, float] = {}
        for span in spans:
            value = get_reward_value(span)
            if value is None:
                continue
            for index in range(len(calls) - 1, -1, -1):
                if index not in assigned and calls[index].span.sequence_id < span.sequence_id:
                    assigned[index] = value
                    break
        return assigned
