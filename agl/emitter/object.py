"""`emit_object`: arbitrary Python values as spans, and decoding them back."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from agl import semconv
from agl.emitter.annotation import emit_span
from agl.types.tracer import SpanCoreFields

__all__ = ["emit_object", "encode_object", "get_object_value"]

_LITERAL_TYPES: tuple[type, ...] = (str, int, float, bool)


def encode_object(object: Any) -> dict[str, Any]:
    """The span attributes `emit_object` records for `object`: its type name and its literal text (str, int,
    float, bool), base64 (bytes) or JSON (anything else).

    Raises:
        RuntimeError: `object` cannot be JSON-encoded.
    """
    obj = object
    if isinstance(obj, _LITERAL_TYPES):
        return {semconv.OBJECT_TYPE: type(obj).__name__, semconv.OBJECT_LITERAL: str(obj)}
    if isinstance(obj, (bytes, bytearray)):
        return {semconv.OBJECT_TYPE: "bytes", semconv.OBJECT_LITERAL: base64.b64encode(bytes(obj)).decode("ascii")}
    cls = type(obj)
    try:
        encoded = json.dumps(obj)
    except (TypeError, ValueError) as exc:
        raise RuntimeError(f"emit_object: object of type {cls.__qualname__} is not JSON-serialisable: {exc}") from exc
    return {semconv.OBJECT_TYPE: f"{cls.__module__}.{cls.__qualname__}", semconv.OBJECT_JSON: encoded}


def emit_object(
    object: Any,
    attributes: Mapping[str, Any] | None = None,
    propagate: bool = True,
) -> SpanCoreFields:
    """Record an `agentlightning.object` span holding `object`.

    str/int/float/bool are stored as their literal text, bytes as base64, anything else as JSON.

    Raises:
        RuntimeError: `obj` cannot be JSON-encoded, or `propagate` is true and no tracer is active.
    """
    return emit_span(semconv.AGL_OBJECT, encode_object(object), extra=attributes, propagate=propagate)


def get_object_value(span: Any) -> Any:
    """The object an `agentlightning.object` span holds, decoded to its type; None for any other span.

    Raises:
        ValueError: the span's object attributes are malformed.
    """
    if getattr(span, "name", None) != semconv.AGL_OBJECT:
        return None
    attrs = getattr(span, "attributes", None) or {}
    type_name = attrs.get(semconv.OBJECT_TYPE)
    if semconv.OBJECT_JSON in attrs:
        return json.loads(attrs[semconv.OBJECT_JSON])
    if semconv.OBJECT_LITERAL not in attrs:
        return None
    literal = attrs[semconv.OBJECT_LITERAL]
    if type_name == "str":
        return literal
    if type_name == "int":
        return int(literal)
    if type_name == "float":
        return float(literal)
    if type_name == "bool":
        if literal not in ("True", "False"):
            raise ValueError(f"object span has bool literal {literal!r}; expected 'True' or 'False'")
        return literal == "True"
    if type_name == "bytes":
        return base64.b64decode(literal)
    raise ValueError(f"object span has unknown literal type {type_name!r}")
