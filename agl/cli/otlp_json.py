"""Stored spans as OTLP/JSON: the JSON mapping of an OpenTelemetry `ExportTraceServiceRequest`.

Follows the OTLP/JSON rules: trace and span ids as hex strings, times as nanosecond integers in strings,
enums as integers, attributes as `AnyValue` objects. Spans are grouped by (resource, attempt) into
`resourceSpans`; each resource carries `agentlightning.rollout_id` / `agentlightning.attempt_id` and each span
its `agentlightning.span_sequence_id`, so a store's `POST /v1/traces` files them under the same rollout again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import orjson

from agl import semconv
from agl.types.tracer import Span

__all__ = ["any_value", "spans_to_otlp"]

_STATUS_CODES = {"UNSET": 0, "OK": 1, "ERROR": 2}


def any_value(value: Any) -> dict[str, Any]:
    """The OTLP `AnyValue` JSON of a stored attribute value (None gives the empty value)."""
    if value is None:
        return {}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        if math.isnan(value):
            return {"doubleValue": "NaN"}
        if math.isinf(value):
            return {"doubleValue": "Infinity" if value > 0 else "-Infinity"}
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [any_value(v) for v in value]}}
    if isinstance(value, dict):
        return {"kvlistValue": {"values": _attributes(value)}}
    return {"stringValue": str(value)}


def _attributes(attrs: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [{"key": str(k), "value": any_value(v)} for k, v in (attrs or {}).items()]


def _nanos(seconds: float | None) -> str:
    # Via whole microseconds: seconds * 1e9 exceeds a double's exact integers, seconds * 1e6 does not.
    return str(round(seconds * 1e6) * 1000) if seconds is not None else "0"


def _trace_state(state: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in state.items())


def _span(span: Span) -> dict[str, Any]:
    attrs = dict(span.attributes)
    attrs.setdefault(semconv.SPAN_SEQUENCE_ID, span.sequence_id)
    out: dict[str, Any] = {
        "traceId": span.trace_id,
        "spanId": span.span_id,
        "name": span.name,
        "startTimeUnixNano": _nanos(span.start_time),
        "endTimeUnixNano": _nanos(span.end_time),
        "attributes": _attributes(attrs),
        "status": {"code": _STATUS_CODES.get(span.status.status_code, 0)},
    }
    if span.status.description:
        out["status"]["message"] = span.status.description
    if span.parent_id:
        out["parentSpanId"] = span.parent_id
    if span.context is not None and span.context.trace_state:
        out["traceState"] = _trace_state(span.context.trace_state)
    if span.events:
        out["events"] = [
            {"timeUnixNano": _nanos(e.timestamp), "name": e.name, "attributes": _attributes(e.attributes)}
            for e in span.events
        ]
    if span.links:
        out["links"] = [
            {
                "traceId": link.context.trace_id,
                "spanId": link.context.span_id,
                **({"traceState": _trace_state(link.context.trace_state)} if link.context.trace_state else {}),
                "attributes": _attributes(link.attributes),
            }
            for link in span.links
        ]
    return out


def spans_to_otlp(spans: Iterable[Span]) -> dict[str, Any]:
    """The `ExportTraceServiceRequest` JSON of `spans`, one `resourceSpans` entry per (resource, attempt)."""
    groups: dict[bytes, tuple[Span, list[dict[str, Any]]]] = {}
    for span in spans:
        key = orjson.dumps(
            [span.rollout_id, span.attempt_id, span.resource.attributes, span.resource.schema_url],
            option=orjson.OPT_SORT_KEYS,
            default=str,
        )
        groups.setdefault(key, (span, []))[1].append(_span(span))
    resource_spans = []
    for first, encoded in groups.values():
        resource_attrs = dict(first.resource.attributes)
        resource_attrs.setdefault(semconv.ROLLOUT_ID, first.rollout_id)
        resource_attrs.setdefault(semconv.ATTEMPT_ID, first.attempt_id)
        entry: dict[str, Any] = {
            "resource": {"attributes": _attributes(resource_attrs)},
            "scopeSpans": [{"spans": encoded}],
        }
        if first.resource.schema_url:
            entry["schemaUrl"] = first.resource.schema_url
        resource_spans.append(entry)
    return {"resourceSpans": resource_spans}
