"""OTLP/HTTP trace ingest: decode an `ExportTraceServiceRequest` (protobuf or JSON) into store spans."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson

from agl.types.tracer import Event, Link, OtelResource, Span, SpanContext, StatusCode, TraceStatus

if TYPE_CHECKING:
    from agl.store.http.app import Receive, Response, StoreApp

__all__ = ["convert_request", "decode_request", "handle_otlp_traces"]

logger = logging.getLogger(__name__)

ROLLOUT_ID_KEY = "agentlightning.rollout_id"
ATTEMPT_ID_KEY = "agentlightning.attempt_id"
SEQUENCE_ID_KEY = "agentlightning.span_sequence_id"

_PROTOBUF = b"application/x-protobuf"
_STATUS_CODES: dict[int, StatusCode] = {0: "UNSET", 1: "OK", 2: "ERROR"}
_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_status(message: str, code: int = 3) -> bytes:
    """A serialized `google.rpc.Status` (code, message) as OTLP/HTTP error bodies carry."""
    text = message.encode()
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text


def _hex_ids_to_base64(node: Any) -> Any:
    """OTLP/JSON writes ids as hex; protobuf's JSON mapping wants base64. Rewrite them in place."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                try:
                    node[key] = base64.b64encode(bytes.fromhex(value)).decode()
                except ValueError:
                    raise ValueError(f"OTLP JSON field {key!r} is not a hex id: {value!r}") from None
            else:
                _hex_ids_to_base64(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids_to_base64(item)
    return node


def decode_request(body: bytes, is_json: bool) -> Any:
    """Parse an OTLP `ExportTraceServiceRequest` from protobuf bytes or OTLP/JSON; ValueError if malformed."""
    from google.protobuf import json_format  # type: ignore[import-untyped]
    from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    message = ExportTraceServiceRequest()
    if not body:
        return message
    if is_json:
        try:
            data = orjson.loads(body)
            json_format.ParseDict(_hex_ids_to_base64(data), message, ignore_unknown_fields=True)
        except (orjson.JSONDecodeError, json_format.ParseError, ValueError, TypeError) as exc:
            raise ValueError(f"Unable to parse OTLP JSON traces payload: {exc}") from None
        return message
    try:
        message.ParseFromString(body)
    except (DecodeError, ValueError) as exc:
        raise ValueError(f"Unable to parse OTLP traces payload: {exc}") from None
    return message


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(any_value.kvlist_value.values)
    if kind == "bytes_value":
        return bytes(any_value.bytes_value).hex()
    return getattr(any_value, kind)


def _attributes(pairs: Iterable[Any]) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


def _hex(raw: bytes, width: int) -> str:
    return raw.hex().rjust(width, "0") if raw else "0" * width


def _seconds(nanos: int) -> float | None:
    if not nanos:
        return None
    return nanos / 1e9 if nanos > 1e12 else float(nanos)


def _sequence(value: Any) -> int | None:
    if value is None:
        return None
    try:
        number = int(value) if not isinstance(value, float) or value.is_integer() else None
    except (TypeError, ValueError):
        number = None
    if number is None or isinstance(value, bool):
        logger.warning("OTLP span has a non-integer %s %r; allocating a new one", SEQUENCE_ID_KEY, value)
        return None
    if number < 0:
        logger.error("OTLP span has a negative %s %r; allocating a new one", SEQUENCE_ID_KEY, value)
        return None
    return number


def convert_request(message: Any) -> list[tuple[dict[str, Any], int | None]]:
    """Span fields (without a sequence id) and the requested sequence id (or None) for each usable span."""
    out: list[tuple[dict[str, Any], int | None]] = []
    for resource_spans in message.resource_spans:
        resource_attrs = _attributes(resource_spans.resource.attributes)
        resource = OtelResource(attributes=resource_attrs, schema_url=resource_spans.schema_url)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                attrs = _attributes(span.attributes)
                rollout_id = attrs.get(ROLLOUT_ID_KEY, resource_attrs.get(ROLLOUT_ID_KEY))
                attempt_id = attrs.get(ATTEMPT_ID_KEY, resource_attrs.get(ATTEMPT_ID_KEY))
                if rollout_id is None or attempt_id is None:
                    logger.warning(
                        "dropping OTLP span %r: no %s / %s in span or resource attributes",
                        span.name,
                        ROLLOUT_ID_KEY,
                        ATTEMPT_ID_KEY,
                    )
                    continue
                sequence = _sequence(attrs.get(SEQUENCE_ID_KEY, resource_attrs.get(SEQUENCE_ID_KEY)))
                trace_id = _hex(span.trace_id, 32)
                span_id = _hex(span.span_id, 16)
                fields: dict[str, Any] = {
                    "rollout_id": str(rollout_id),
                    "attempt_id": str(attempt_id),
                    "trace_id": trace_id,
                    "span_id": span_id,
                    "parent_id": span.parent_span_id.hex() if span.parent_span_id else None,
                    "name": span.name,
                    "status": TraceStatus(
                        status_code=_STATUS_CODES.get(span.status.code, "UNSET"),
                        description=span.status.message or None,
                    ),
                    "attributes": attrs,
                    "events": [
                        Event(name=e.name, attributes=_attributes(e.attributes), timestamp=_seconds(e.time_unix_nano))
                        for e in span.events
                    ],
                    "links": [
                        Link(
                            context=SpanContext(trace_id=_hex(link.trace_id, 32), span_id=_hex(link.span_id, 16)),
                            attributes=_attributes(link.attributes) or None,
                        )
                        for link in span.links
                    ],
                    "start_time": _seconds(span.start_time_unix_nano),
                    "end_time": _seconds(span.end_time_unix_nano),
                    "context": SpanContext(trace_id=trace_id, span_id=span_id),
                    "parent": None,
                    "resource": resource,
                }
                out.append((fields, sequence))
    return out


async def handle_otlp_traces(app: StoreApp, headers: dict[bytes, bytes], receive: Receive) -> Response:
    """Serve `POST /v1/traces`: decode, resolve ids, allocate missing sequence ids, and `add_many_spans`."""
    from agl.store.http.app import Response, error_response

    content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    is_json = content_type == b"application/json"
    if content_type != _PROTOBUF and not is_json:
        shown = content_type.decode("latin-1")
        message = f"Unsupported Content-Type '{shown}', expected 'application/x-protobuf' or 'application/json'"
        return Response(400, encode_status(message), _PROTOBUF)

    def failure(status: int, message: str) -> Response:
        if is_json:
            return Response(status, orjson.dumps({"code": 3, "message": message}))
        return Response(status, encode_status(message), _PROTOBUF)

    from agl.store.http.app import HTTPError

    try:
        body = await app.read_body(headers, receive)
    except HTTPError as exc:
        return failure(exc.status, str(exc.detail))
    try:
        request = decode_request(body, is_json)
    except ValueError as exc:
        return failure(400, str(exc))
    converted = convert_request(request)
    if converted:
        try:
            missing = [(f["rollout_id"], f["attempt_id"]) for f, seq in converted if seq is None]
            allocated = iter(await app.store.get_many_span_sequence_ids(missing) if missing else ())
            spans = [
                Span(sequence_id=seq if seq is not None else next(allocated), **fields) for fields, seq in converted
            ]
            await app.store.add_many_spans(spans)
        except Exception as exc:
            answer = error_response(exc)
            detail = orjson.loads(answer.body).get("detail", "")
            return failure(answer.status, detail if isinstance(detail, str) else str(detail))
    return Response(200, b"{}" if is_json else b"", JSON_CT if is_json else _PROTOBUF)


JSON_CT = b"application/json"
