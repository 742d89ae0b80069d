"""Spans: OpenTelemetry-shaped trace records stored per rollout attempt."""

from __future__ import annotations

import os
import time
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import orjson
from pydantic import BaseModel, ConfigDict, FailFast, Field

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan


__all__ = [
    "AttributeValue",
    "Attributes",
    "Event",
    "Link",
    "OtelResource",
    "Span",
    "SpanAttributeNames",
    "SpanContext",
    "SpanCoreFields",
    "SpanLike",
    "SpanNames",
    "StatusCode",
    "TraceState",
    "TraceStatus",
    "span_json",
]

Attributes = dict[str, Any]
"""A flat map of attribute name → JSON value."""

StatusCode = Literal["UNSET", "OK", "ERROR"]
"""The status code of a span, as OpenTelemetry names it."""

AttributeValue = str | bool | int | float | list[str] | list[bool] | list[int] | list[float]
"""A value OpenTelemetry accepts as a span attribute."""

TraceState = dict[str, str]
"""The vendor key/value pairs carried with a span context."""

SpanLike = Union["ReadableSpan", "Span"]
"""An OpenTelemetry SDK `ReadableSpan` or a stored `Span`: what adapters and readers accept."""


class SpanNames(str, Enum):
    """Span names and resource keys Agent Lightning writes (kept for 0.2 code; `agl.semconv` is the reference)."""

    REWARD = "agentlightning.reward"
    MESSAGE = "agentlightning.message"
    OBJECT = "agentlightning.object"
    EXCEPTION = "agentlightning.exception"
    VIRTUAL = "agentlightning.virtual"
    ROLLOUT_ID = "agentlightning.rollout_id"
    ATTEMPT_ID = "agentlightning.attempt_id"
    SPAN_SEQUENCE_ID = "agentlightning.span_sequence_id"


class SpanAttributeNames(str, Enum):
    """Attribute names of 0.2 message and object spans (kept for 0.2 code; `agl.semconv` is the reference)."""

    MESSAGE = "message"
    OBJECT = "object"


def __getattr__(name: str) -> Any:
    # `SpanRecordingContext` lives with the tracers (a higher layer); it is reachable here for upstream's path, but
    # left out of `__all__` so star-imports of this module never import the tracers.
    if name == "SpanRecordingContext":
        from agl.tracer.base import SpanRecordingContext

        return SpanRecordingContext
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class TraceStatus(BaseModel):
    """Status of a span."""

    model_config = ConfigDict(extra="allow")

    status_code: StatusCode = "UNSET"
    description: str | None = None

    @classmethod
    def from_opentelemetry(cls, src: Any) -> TraceStatus:
        """The status of an OpenTelemetry `Status`."""
        code = getattr(getattr(src, "status_code", None), "name", "UNSET")
        return cls(status_code=code, description=getattr(src, "description", None) or None)


class SpanContext(BaseModel):
    """Identity of a span within its trace."""

    model_config = ConfigDict(extra="allow")

    trace_id: str
    span_id: str
    is_remote: bool = False
    trace_state: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def from_opentelemetry(cls, src: Any) -> SpanContext:
        """The context of an OpenTelemetry `SpanContext` (ids as lowercase hex)."""
        context = _context(src)
        if context is None:
            raise ValueError("from_opentelemetry needs a span context, got None")
        return context


class Event(BaseModel):
    """A timestamped event inside a span."""

    model_config = ConfigDict(extra="allow")

    name: str
    attributes: Attributes = Field(default_factory=dict)
    timestamp: float | None = None

    @classmethod
    def from_opentelemetry(cls, src: Any) -> Event:
        """An event of an OpenTelemetry span (timestamp in seconds)."""
        return cls(name=src.name, attributes=_json_attributes(src.attributes), timestamp=_ns_to_seconds(src.timestamp))


class Link(BaseModel):
    """A link from a span to another span's context."""

    model_config = ConfigDict(extra="allow")

    context: SpanContext
    attributes: Attributes | None = None

    @classmethod
    def from_opentelemetry(cls, src: Any) -> Link:
        """A link of an OpenTelemetry span."""
        return cls(
            context=SpanContext.from_opentelemetry(src.context),
            attributes=_json_attributes(src.attributes) if src.attributes else None,
        )


class OtelResource(BaseModel):
    """The OpenTelemetry resource (service description) a span came from."""

    model_config = ConfigDict(extra="allow")

    attributes: Attributes = Field(default_factory=dict)
    schema_url: str = ""

    @classmethod
    def from_opentelemetry(cls, src: Any) -> OtelResource:
        """The resource of an OpenTelemetry span."""
        return cls(attributes=_json_attributes(src.attributes), schema_url=getattr(src, "schema_url", "") or "")


class SpanCoreFields(BaseModel):
    """The fields an emitter or tracer sets on a span before the store assigns its ids."""

    model_config = ConfigDict(extra="allow")

    name: str
    attributes: Attributes = Field(default_factory=dict)
    start_time: float | None = None
    end_time: float | None = None
    status: TraceStatus = Field(default_factory=TraceStatus)


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def _ns_to_seconds(value: int | None) -> float | None:
    if not value:
        return None
    return value / 1e9


def _context(ctx: Any) -> SpanContext | None:
    if ctx is None:
        return None
    trace_state = getattr(ctx, "trace_state", None)
    return SpanContext(
        trace_id=_hex(ctx.trace_id, 32),
        span_id=_hex(ctx.span_id, 16),
        is_remote=bool(getattr(ctx, "is_remote", False)),
        trace_state=dict(trace_state.items()) if trace_state is not None else {},
    )


def _json_value(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_json_value(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


def _json_attributes(attributes: Any) -> Attributes:
    return {k: _json_value(v) for k, v in (attributes or {}).items()}


class Span(BaseModel):
    """One span of a rollout attempt's trace; unknown keys are kept and round-trip."""

    model_config = ConfigDict(extra="allow")

    rollout_id: str
    attempt_id: str
    sequence_id: int
    trace_id: str
    span_id: str
    parent_id: str | None = None
    name: str
    status: TraceStatus = Field(default_factory=TraceStatus)
    attributes: Attributes = Field(default_factory=dict)
    # FailFast: a list with many bad items reports the first one, not one error per item (bounded error answers).
    events: Annotated[list[Event], FailFast()] = Field(default_factory=list)
    links: Annotated[list[Link], FailFast()] = Field(default_factory=list)
    start_time: float | None = None
    end_time: float | None = None
    context: SpanContext | None = None
    parent: SpanContext | None = None
    resource: OtelResource = Field(default_factory=OtelResource)

    @classmethod
    def from_opentelemetry(cls, src: Any, rollout_id: str, attempt_id: str, sequence_id: int) -> Span:
        """Convert an OpenTelemetry SDK `ReadableSpan` into a stored span of the given attempt."""
        context = _context(src.get_span_context() if hasattr(src, "get_span_context") else src.context)
        parent = _context(src.parent)
        status = src.status
        status_code = getattr(getattr(status, "status_code", None), "name", "UNSET")
        resource = getattr(src, "resource", None)
        return cls(
            rollout_id=rollout_id,
            attempt_id=attempt_id,
            sequence_id=sequence_id,
            trace_id=context.trace_id if context else "0" * 32,
            span_id=context.span_id if context else "0" * 16,
            parent_id=parent.span_id if parent else None,
            name=src.name,
            status=TraceStatus(status_code=status_code, description=getattr(status, "description", None) or None),
            attributes={k: _json_value(v) for k, v in (src.attributes or {}).items()},
            events=[
                Event(
                    name=e.name,
                    attributes={k: _json_value(v) for k, v in (e.attributes or {}).items()},
                    timestamp=_ns_to_seconds(e.timestamp),
                )
                for e in (src.events or ())
            ],
            links=[
                Link(
                    context=_context(link.context),
                    attributes={k: _json_value(v) for k, v in link.attributes.items()} if link.attributes else None,
                )
                for link in (src.links or ())
            ],
            start_time=_ns_to_seconds(src.start_time),
            end_time=_ns_to_seconds(src.end_time),
            context=context,
            parent=parent,
            resource=OtelResource(
                attributes={k: _json_value(v) for k, v in (resource.attributes or {}).items()} if resource else {},
                schema_url=(getattr(resource, "schema_url", "") or "") if resource else "",
            ),
        )

    @classmethod
    def from_attributes(
        cls,
        *,
        attributes: Attributes,
        rollout_id: str | None = None,
        attempt_id: str | None = None,
        sequence_id: int | None = None,
        name: str | None = None,
        trace_id: str | None = None,
        span_id: str | None = None,
        parent_id: str | None = None,
        start_time: float | None = None,
        end_time: float | None = None,
        resource: OtelResource | None = None,
        status: TraceStatus | None = None,
    ) -> Span:
        """A span made up from `attributes`; ids left out are random, the name defaults to `agentlightning.virtual`,
        the status to OK, rollout/attempt ids to "" and the sequence id to 0.
        """
        trace_id = trace_id or os.urandom(16).hex()
        span_id = span_id or os.urandom(8).hex()
        return cls(
            rollout_id=rollout_id or "",
            attempt_id=attempt_id or "",
            sequence_id=sequence_id or 0,
            trace_id=trace_id,
            span_id=span_id,
            parent_id=parent_id,
            name=name or SpanNames.VIRTUAL.value,
            status=status or TraceStatus(status_code="OK"),
            attributes=attributes,
            start_time=start_time,
            end_time=end_time,
            context=SpanContext(trace_id=trace_id, span_id=span_id),
            parent=SpanContext(trace_id=trace_id, span_id=parent_id) if parent_id else None,
            resource=resource or OtelResource(),
        )

    @classmethod
    def from_core_fields(
        cls,
        core: SpanCoreFields,
        *,
        rollout_id: str | None = None,
        attempt_id: str | None = None,
        sequence_id: int | None = None,
        trace_id: str | None = None,
        span_id: str | None = None,
        parent_id: str | None = None,
    ) -> Span:
        """A stored span from core fields, with fresh random trace/span ids unless given; a missing start time is
        now, missing rollout/attempt ids are "" and a missing sequence id is 0.
        """
        trace_id = trace_id or os.urandom(16).hex()
        span_id = span_id or os.urandom(8).hex()
        return cls(
            rollout_id=rollout_id or "",
            attempt_id=attempt_id or "",
            sequence_id=sequence_id or 0,
            trace_id=trace_id,
            span_id=span_id,
            parent_id=parent_id,
            name=core.name,
            status=core.status,
            attributes=dict(core.attributes),
            start_time=core.start_time if core.start_time is not None else time.time(),
            end_time=core.end_time,
            context=SpanContext(trace_id=trace_id, span_id=span_id),
        )


_PLAIN_PARTS = frozenset({TraceStatus, SpanContext, Event, Link, OtelResource})
# Values orjson would write differently from pydantic (datetimes, str/int subclasses, dataclasses) go to `_part`
# instead, which refuses them: such spans take pydantic's path.
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATACLASS


def _part(value: Any) -> dict[str, Any]:
    if type(value) in _PLAIN_PARTS and not value.__pydantic_extra__:
        fields: dict[str, Any] = value.__dict__
        return fields
    raise TypeError("not a plain span part")


def span_json(span: Span) -> bytes:
    """The JSON of `span`, equal in content to `span.model_dump_json()`.

    Spans whose parts are all plain (no extra keys, no subclasses, JSON-native attribute values, as tracers make
    them) are written by orjson from their field dictionaries, about 2x faster than pydantic's serializer; any
    other span is written by pydantic. orjson's bytes may hold a buffer several times their length (at least
    4 KiB): copy them (`bytes(memoryview(...))`) before keeping them.
    """
    if type(span) is Span and not span.__pydantic_extra__:
        try:
            return orjson.dumps(span.__dict__, default=_part, option=_OPTIONS)
        except TypeError:
            pass
    return span.__pydantic_serializer__.to_json(span)
