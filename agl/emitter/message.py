"""`emit_message`: free-text messages as spans."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agl import semconv
from agl.emitter.annotation import emit_span

__all__ = ["emit_message", "get_message_value"]


def emit_message(message: str, attributes: Mapping[str, Any] | None = None, propagate: bool = True) -> None:
    """Record an `agentlightning.message` span whose body is `message`.

    Raises:
        TypeError: `message` is not a str.
        RuntimeError: `propagate` is true and no tracer is active.
    """
    if not isinstance(message, str):
        raise TypeError(f"message must be a str, got {type(message).__name__}")
    emit_span(semconv.AGL_MESSAGE, {semconv.MESSAGE_BODY: message}, extra=attributes, propagate=propagate)


def get_message_value(span: Any) -> str | None:
    """The body of a message span, or None for any other span."""
    if getattr(span, "name", None) != semconv.AGL_MESSAGE:
        return None
    body = (getattr(span, "attributes", None) or {}).get(semconv.MESSAGE_BODY)
    return body if isinstance(body, str) else None
