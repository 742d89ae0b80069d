"""`span_json` writes what pydantic writes, for every kind of span (its fast path and its fallback)."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import math
from typing import Any

import orjson
import pytest

from agl.types.tracer import Event, Link, OtelResource, Span, SpanContext, TraceStatus, span_json


def _span(**fields: Any) -> Span:
    base: dict[str, Any] = {
        "rollout_id": "ro-1",
        "attempt_id": "at-1",
        "sequence_id": 3,
        "trace_id": "ab" * 16,
        "span_id": "cd" * 8,
        "name": "openai.chat.completion",
        "attributes": {"gen_ai.request.model": "m", "gen_ai.usage.prompt_tokens": 12, "reward": 0.5},
        "start_time": 1795971247.1362805,
        "end_time": 1795971247.2362805,
    }
    base.update(fields)
    return Span(**base)


class Color(enum.Enum):
    RED = "red"


class Label(str, enum.Enum):
    GOOD = "good"


@dataclasses.dataclass
class Point:
    x: int


class SubSpan(Span):
    pass


CONTEXT = SpanContext(trace_id="ab" * 16, span_id="ef" * 8, is_remote=True, trace_state={"k": "v"})

# Spans as tracers make them: the fast path must write exactly pydantic's bytes.
PLAIN = {
    "minimal": Span(rollout_id="r", attempt_id="a", sequence_id=1, trace_id="t", span_id="s", name="n"),
    "llm call": _span(),
    "status error": _span(status=TraceStatus(status_code="ERROR", description="boom")),
    "context and parent": _span(context=CONTEXT, parent=CONTEXT, parent_id="ef" * 8),
    "events": _span(events=[Event(name="e", attributes={"a": [1, 2, {"b": None}]}, timestamp=1.5)]),
    "links": _span(links=[Link(context=CONTEXT, attributes={"x": True}), Link(context=CONTEXT)]),
    "resource": _span(resource=OtelResource(attributes={"service.name": "agent"}, schema_url="https://x")),
    "nested attributes": _span(attributes={"a": {"b": [1, 2.5, "three", None, False]}, "unicode": 'é✓ \n\t"q"'}),
    "tuple attribute": _span(attributes={"t": (1, 2)}),
    "no times": _span(start_time=None, end_time=None),
    "enum attribute": _span(attributes={"c": Color.RED}),
}

# Spans the fast path must hand to pydantic (or write with the same content).
OTHER = {
    "extra field": _span(custom="kept"),
    "extra in status": _span(status=TraceStatus(status_code="OK", note="x")),
    "extra in resource": _span(resource=OtelResource(attributes={}, extra_key=1)),
    "extra in context": _span(context=SpanContext(trace_id="t", span_id="s", flag=True)),
    "datetime attribute": _span(
        attributes={"when": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)}
    ),
    "date attribute": _span(attributes={"day": datetime.date(2026, 1, 2)}),
    "bytes attribute": _span(attributes={"raw": b"\x00\x01"}),
    "set attribute": _span(attributes={"s": {1}}),
    "int keys": _span(attributes={"m": {1: "one"}}),
    "huge int": _span(attributes={"big": 2**70}),
    "str enum attribute": _span(attributes={"label": Label.GOOD}),
    "dataclass attribute": _span(attributes={"p": Point(1)}),
    "nan and inf": _span(attributes={"nan": math.nan, "inf": math.inf, "ninf": -math.inf}),
    "subclass": SubSpan(rollout_id="r", attempt_id="a", sequence_id=1, trace_id="t", span_id="s", name="n"),
}


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_plain_spans_are_written_byte_for_byte_as_pydantic_does(name: str) -> None:
    span = PLAIN[name]
    assert span_json(span) == span.__pydantic_serializer__.to_json(span)


@pytest.mark.parametrize("name", sorted(OTHER))
def test_other_spans_are_written_with_pydantic_content(name: str) -> None:
    span = OTHER[name]
    try:
        expected = span.__pydantic_serializer__.to_json(span)
    except Exception as exc:  # pydantic cannot write it: span_json must fail the same way, not invent JSON
        with pytest.raises(type(exc)):
            span_json(span)
        return
    assert orjson.loads(span_json(span)) == orjson.loads(expected)


@pytest.mark.parametrize("value", [0.1, 1e16, 1e-7, 123456789.125, -0.0, 2.5e300, 1 / 3])
def test_floats_keep_their_value(value: float) -> None:
    span = _span(start_time=value, attributes={"f": value})
    data = orjson.loads(span_json(span))
    assert data["start_time"] == value and data["attributes"]["f"] == value


def test_the_written_span_validates_back_to_an_equal_span() -> None:
    for span in PLAIN.values():
        assert Span.model_validate_json(span_json(span)) == Span.model_validate_json(span.model_dump_json())
