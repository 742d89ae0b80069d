"""`AgentOpsTracer`: Agent Lightning's tracer built on the AgentOps SDK, which AGL does not ship.

The name exists so imports keep working; constructing it raises and names the replacement (`OtelTracer`, which
captures the same OpenTelemetry spans without AgentOps). See docs/compatibility.md.
"""

from __future__ import annotations

from typing import Any

from agl.tracer.base import Tracer

__all__ = ["AgentOpsTracer"]


class AgentOpsTracer(Tracer):
    """Not provided by AGL: raises `NotImplementedError` naming `agl.OtelTracer` as the replacement."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "AGL does not ship AgentOpsTracer (it depends on the AgentOps SDK). Use agl.OtelTracer: it records the "
            "same OpenTelemetry spans (LLM calls instrumented by OpenTelemetry instrumentors, emit_* spans, "
            "operations) into the store. See docs/compatibility.md."
        )
