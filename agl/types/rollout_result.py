"""`RolloutRawResult`: what an agent's rollout may return."""

from __future__ import annotations

from typing import Any

from agl.types.tracer import Span, SpanCoreFields

__all__ = ["RolloutRawResult"]

RolloutRawResult = float | int | bool | list[Any] | list[Span] | list[SpanCoreFields] | None
"""Nothing (spans come from the tracer), a reward, or a list of spans (stored `Span`s, core fields or
OpenTelemetry `ReadableSpan`s)."""
