"""`emit_exception`: exceptions as spans."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agl import semconv
from agl.emitter.annotation import emit_span
from agl.tracer.dummy import exception_attributes

__all__ = ["emit_exception"]


def emit_exception(
    exception: BaseException, attributes: Mapping[str, Any] | None = None, propagate: bool = True
) -> None:
    """Record an `agentlightning.exception` span describing `exception` (type, message, stack trace).

    Raises:
        TypeError: `exception` is not an exception.
        RuntimeError: `propagate` is true and no tracer is active.
    """
    if not isinstance(exception, BaseException):
        raise TypeError(f"exception must be an exception instance, got {type(exception).__name__}")
    emit_span(semconv.AGL_EXCEPTION, exception_attributes(exception), extra=attributes, propagate=propagate)
