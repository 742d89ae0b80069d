"""`emit_annotation` and the span-emitting plumbing shared by all emitters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from agl import semconv
from agl.emitter.attributes import flatten_attributes
from agl.tracer.base import Tracer, get_active_tracer
from agl.tracer.dummy import DummyTracer
from agl.types.tracer import SpanCoreFields, TraceStatus

if TYPE_CHECKING:
    from agl.emitter.operation import OperationContext, operation

__all__ = ["OperationContext", "emit_annotation", "emit_span", "operation", "resolve_tracer"]


def __getattr__(name: str) -> Any:
    # Agent Lightning exposes `operation` here too; it is defined in `agl.emitter.operation`, which imports this module.
    if name in ("operation", "OperationContext"):
        import importlib

        return getattr(importlib.import_module("agl.emitter.operation"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve_tracer(propagate: bool) -> Tracer:
    """The tracer emitters record on: the active tracer, or a `DummyTracer` when `propagate` is false.

    Raises:
        RuntimeError: `propagate` is true and no tracer is active.
    """
    if not propagate:
        return DummyTracer()
    tracer = get_active_tracer()
    if tracer is None:
        raise RuntimeError(
            "No active tracer found. Emit inside a tracer's `trace_context(...)` block, or pass propagate=False "
            "to only build the span."
        )
    return tracer


def emit_span(
    name: str,
    attributes: Mapping[str, Any],
    *,
    extra: Mapping[str, Any] | None = None,
    propagate: bool = True,
) -> SpanCoreFields:
    """Record a span with status OK whose attributes are `extra` (flattened) overlaid with `attributes`."""
    tracer = resolve_tracer(propagate)
    merged: dict[str, Any] = {}
    if extra is not None:
        if not isinstance(extra, Mapping):
            raise TypeError(f"attributes must be a dict, got {type(extra).__name__}")
        merged.update(flatten_attributes(extra))
    merged.update(attributes)
    return tracer.create_span(name, attributes=merged, status=TraceStatus(status_code="OK"))


def emit_annotation(annotation: Mapping[str, Any], propagate: bool = True) -> SpanCoreFields:
    """Record an `agentlightning.annotation` span carrying `annotation` as flattened attributes.

    Raises:
        TypeError: `annotation` is not a dict.
        ValueError: it holds a list of mixed or non-primitive values.
        RuntimeError: `propagate` is true and no tracer is active.
    """
    if not isinstance(annotation, Mapping):
        raise TypeError(f"annotation must be a dict, got {type(annotation).__name__}")
    attributes = flatten_attributes(annotation, strict=True)
    return emit_span(semconv.AGL_ANNOTATION, attributes, propagate=propagate)
