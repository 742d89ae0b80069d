"""Tracers: capture the spans of a rollout and send them to the store.

`OtelTracer` (and with it the OpenTelemetry SDK) is imported only when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agl.optional import import_module
from agl.tracer.base import SpanRecordingContext, Tracer, clear_active_tracer, get_active_tracer, set_active_tracer
from agl.tracer.dummy import DummyTracer

__all__ = [
    "AgentOpsTracer",
    "DummyTracer",
    "LightningSpanProcessor",
    "OtelTracer",
    "SpanRecordingContext",
    "Tracer",
    "clear_active_tracer",
    "get_active_tracer",
    "set_active_tracer",
]

_LAZY = {
    "OtelTracer": "agl.tracer.otel",
    "LightningSpanProcessor": "agl.tracer.otel",
    "AgentOpsTracer": "agl.tracer.agentops",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'agl.tracer' has no attribute {name!r}")
    value = getattr(import_module(module, f"agl.tracer.{name}"), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from agl.tracer.agentops import AgentOpsTracer
    from agl.tracer.otel import LightningSpanProcessor, OtelTracer
