"""Span names and attribute keys that AGL writes and reads (Agent Lightning's semantic conventions).

Every module that produces or interprets spans imports its names from here, so the wire vocabulary is
defined once.
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel

__all__ = [
    "AGL_ANNOTATION",
    "AGL_EXCEPTION",
    "AGL_MESSAGE",
    "AGL_OBJECT",
    "AGL_OPERATION",
    "AGL_PREFIX",
    "AGL_REWARD",
    "AGL_VIRTUAL",
    "ATTEMPT_ID",
    "EXCEPTION_ESCAPED",
    "EXCEPTION_MESSAGE",
    "EXCEPTION_STACKTRACE",
    "EXCEPTION_TYPE",
    "GEN_AI_COMPLETION",
    "GEN_AI_PROMPT",
    "GEN_AI_REQUEST_MAX_TOKENS",
    "GEN_AI_REQUEST_MODEL",
    "GEN_AI_REQUEST_TEMPERATURE",
    "GEN_AI_REQUEST_TOP_P",
    "GEN_AI_RESPONSE_FINISH_REASONS",
    "GEN_AI_RESPONSE_ID",
    "GEN_AI_RESPONSE_MODEL",
    "GEN_AI_SYSTEM",
    "GEN_AI_USAGE_COMPLETION_TOKENS",
    "GEN_AI_USAGE_INPUT_TOKENS",
    "GEN_AI_USAGE_OUTPUT_TOKENS",
    "GEN_AI_USAGE_PROMPT_TOKENS",
    "GEN_AI_USAGE_TOTAL_TOKENS",
    "LEGACY_REWARD",
    "LEGACY_REWARD_ATTR",
    "LINK",
    "MESSAGE_BODY",
    "OBJECT_JSON",
    "OBJECT_LITERAL",
    "OBJECT_TYPE",
    "OPERATION_INPUT",
    "OPERATION_NAME",
    "OPERATION_OUTPUT",
    "PRIMARY_REWARD_NAME",
    "REQUESTER_CUSTOM_HEADERS",
    "REWARD",
    "ROLLOUT_ID",
    "SPAN_SEQUENCE_ID",
    "TAG",
    "LightningResourceAttributes",
    "LightningSpanAttributes",
    "LinkAttributes",
    "LinkPydanticModel",
    "RewardAttributes",
    "RewardPydanticModel",
    "reward_name_key",
    "reward_value_key",
]

AGL_PREFIX = "agentlightning"
"""Prefix of every Agent Lightning span name and attribute key."""

# -- span names --------------------------------------------------------------------------------------------------
AGL_ANNOTATION = "agentlightning.annotation"
"""Span name of annotations, including rewards."""
AGL_MESSAGE = "agentlightning.message"
"""Span name of a free-text message."""
AGL_OBJECT = "agentlightning.object"
"""Span name of an emitted object."""
AGL_EXCEPTION = "agentlightning.exception"
"""Span name of an emitted exception."""
AGL_OPERATION = "agentlightning.operation"
"""Span name of an `operation` (decorated function or context block)."""
AGL_REWARD = "agentlightning.reward"
"""Span name of a 0.2.x reward span (still recognised by the readers)."""
AGL_VIRTUAL = "agentlightning.virtual"
"""Span name of a made-up span that stands for no real operation (e.g. the root joining several roots)."""
LEGACY_REWARD = AGL_REWARD
"""Alias of `AGL_REWARD`."""

# -- attribute keys on spans -------------------------------------------------------------------------------------
REWARD = "agentlightning.reward"
"""Attribute-key prefix of reward dimensions: `agentlightning.reward.<i>.name` / `.value`."""
PRIMARY_REWARD_NAME = "primary"
"""Name of the single dimension of a scalar reward."""
LEGACY_REWARD_ATTR = "reward"
"""Attribute holding the reward on a 0.2.x reward span."""
MESSAGE_BODY = "agentlightning.message.body"
"""Text of a message span."""
OBJECT_TYPE = "agentlightning.object.type"
"""Type name of an emitted object."""
OBJECT_LITERAL = "agentlightning.object.literal"
"""`str()` of a primitive object, or base64 of bytes."""
OBJECT_JSON = "agentlightning.object.json"
"""JSON encoding of a non-primitive object."""
OPERATION_NAME = "agentlightning.operation.name"
"""Name of an operation (function name by default)."""
OPERATION_INPUT = "agentlightning.operation.input"
"""Attribute-key prefix of an operation's inputs."""
OPERATION_OUTPUT = "agentlightning.operation.output"
"""Attribute-key prefix of an operation's output."""
LINK = "agentlightning.link"
"""Attribute-key prefix of links from a span to other spans."""
TAG = "agentlightning.tag"
"""Attribute-key prefix of tags on a span."""

# OpenTelemetry exception conventions, used by `emit_exception`.
EXCEPTION_TYPE = "exception.type"
EXCEPTION_MESSAGE = "exception.message"
EXCEPTION_ESCAPED = "exception.escaped"
EXCEPTION_STACKTRACE = "exception.stacktrace"

# -- resource attributes (OTLP export to a store) ----------------------------------------------------------------
ROLLOUT_ID = "agentlightning.rollout_id"
"""Resource attribute: rollout the exported spans belong to."""
ATTEMPT_ID = "agentlightning.attempt_id"
"""Resource attribute: attempt the exported spans belong to."""
SPAN_SEQUENCE_ID = "agentlightning.span_sequence_id"
"""Resource attribute: sequence id shared by the exported spans."""

# -- GenAI conventions read and written by the LLM proxy and the adapters ----------------------------------------
GEN_AI_SYSTEM = "gen_ai.system"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P = "gen_ai.request.top_p"
GEN_AI_RESPONSE_ID = "gen_ai.response.id"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_PROMPT = "gen_ai.prompt"
"""Attribute-key prefix of prompt messages: `gen_ai.prompt.<i>.role` / `.content`."""
GEN_AI_COMPLETION = "gen_ai.completion"
"""Attribute-key prefix of completion messages: `gen_ai.completion.<i>.role` / `.content`."""
GEN_AI_USAGE_PROMPT_TOKENS = "gen_ai.usage.prompt_tokens"
GEN_AI_USAGE_COMPLETION_TOKENS = "gen_ai.usage.completion_tokens"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_TOTAL_TOKENS = "gen_ai.usage.total_tokens"
REQUESTER_CUSTOM_HEADERS = "metadata.requester_custom_headers"
"""LiteLLM attribute holding the `x-*` request headers (a stringified dict) the proxy tags requests with."""


def reward_name_key(index: int) -> str:
    """Attribute key of the name of reward dimension `index`."""
    return f"{REWARD}.{index}.name"


def reward_value_key(index: int) -> str:
    """Attribute key of the value of reward dimension `index`."""
    return f"{REWARD}.{index}.value"


# -- the same vocabulary as enums and models (Agent Lightning 0.3's `semconv` classes) ----------------------------


class LightningResourceAttributes(Enum):
    """Resource attribute keys of spans exported to a store."""

    ROLLOUT_ID = ROLLOUT_ID
    ATTEMPT_ID = ATTEMPT_ID
    SPAN_SEQUENCE_ID = SPAN_SEQUENCE_ID
    TRACER_NAME = "agentlightning.tracer.name"


class LightningSpanAttributes(Enum):
    """Span attribute keys (or key prefixes) AGL writes and reads."""

    REWARD = REWARD
    LINK = LINK
    TAG = TAG
    MESSAGE_BODY = MESSAGE_BODY
    OBJECT_TYPE = OBJECT_TYPE
    OBJECT_LITERAL = OBJECT_LITERAL
    OBJECT_JSON = OBJECT_JSON
    OPERATION_NAME = OPERATION_NAME
    OPERATION_INPUT = OPERATION_INPUT
    OPERATION_OUTPUT = OPERATION_OUTPUT


class LinkAttributes(Enum):
    """Field names of one link under `agentlightning.link.<i>`."""

    KEY_MATCH = "key_match"
    VALUE_MATCH = "value_match"


class RewardAttributes(Enum):
    """Field names of one reward dimension under `agentlightning.reward.<i>`."""

    REWARD_NAME = "name"
    REWARD_VALUE = "value"


class LinkPydanticModel(BaseModel):
    """A link from a span to the spans whose attribute `key_match` equals `value_match`."""

    key_match: str
    value_match: str


class RewardPydanticModel(BaseModel):
    """One named reward dimension."""

    name: str
    value: float
