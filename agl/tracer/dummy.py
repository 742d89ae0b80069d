"""A tracer that builds span fields without recording them anywhere."""

from __future__ import annotations

import time
import traceback
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

from agl import semconv
from agl.tracer.base import SpanRecordingContext, Tracer, _activated, check_status_code
from agl.types.tracer import SpanCoreFields, StatusCode, TraceStatus

if TYPE_CHECKING:
    from agl.store.base import LightningStore
    from agl.types.tracer import Span

__all__ = ["DummySpanRecordingContext", "DummyTracer", "exception_attributes"]


def exception_attributes(exception: BaseException, *, escaped: bool = True) -> dict[str, Any]:
    """OpenTelemetry `exception.*` attributes describing `exception`."""
    return {
        semconv.EXCEPTION_TYPE: type(exception).__qualname__,
        semconv.EXCEPTION_MESSAGE: str(exception),
        semconv.EXCEPTION_ESCAPED: escaped,
        semconv.EXCEPTION_STACKTRACE: "".join(
            traceback.format_exception(type(exception), exception, exception.__traceback__)
        ),
    }


class DummySpanRecordingContext(SpanRecordingContext):
    """Accumulates a span's fields in memory."""

    def __init__(self, name: str, attributes: Mapping[str, Any] | None = None, start_time: float | None = None) -> None:
        started = start_time if start_time is not None else time.time()
        self._span = SpanCoreFields(name=name, attributes=dict(attributes or {}), start_time=started)

    def record_exception(self, exception: BaseException) -> None:
        """Add the exception's `exception.*` attributes to the span."""
        self._span.attributes.update(exception_attributes(exception))

    def record_attributes(self, attributes: Mapping[str, Any]) -> None:
        """Add attributes to the span."""
        self._span.attributes.update(attributes)

    def record_status(self, status_code: StatusCode, description: str | None = None) -> None:
        """Set the span's status."""
        self._span.status = TraceStatus(status_code=check_status_code(status_code), description=description)

    def finish(self, end_time: float) -> None:
        """Set the end time."""
        self._span.end_time = end_time

    def finalize(self, end_time: float | None = None) -> None:
        """Set the end time (now when not given)."""
        self._span.end_time = end_time if end_time is not None else time.time()

    def get_recorded_span(self) -> SpanCoreFields:
        """The span's fields as recorded so far."""
        return self._span


class DummyTracer(Tracer):
    """Builds `SpanCoreFields` for emitters and operations without any backend or store.

    Its `trace_context` makes it the active tracer (so emitters work) but records nothing:
    `get_last_trace()` is always empty.
    """

    def create_span(
        self,
        name: str,
        attributes: Mapping[str, Any] | None = None,
        timestamp: float | None = None,
        status: TraceStatus | None = None,
    ) -> SpanCoreFields:
        """Span fields with start = end = `timestamp` (default now)."""
        when = time.time() if timestamp is None else timestamp
        return SpanCoreFields(
            name=name,
            attributes=dict(attributes or {}),
            start_time=when,
            end_time=when,
            status=status if status is not None else TraceStatus(),
        )

    @contextmanager
    def operation_context(
        self,
        name: str,
        attributes: Mapping[str, Any] | None = None,
        start_time: float | None = None,
        end_time: float | None = None,
    ) -> Iterator[SpanRecordingContext]:
        """Record a span's fields for the duration of the block; an escaping exception sets status ERROR."""
        ctx = DummySpanRecordingContext(name, attributes, time.time() if start_time is None else start_time)
        try:
            yield ctx
        except BaseException as exc:
            ctx.record_exception(exc)
            ctx.record_status("ERROR", str(exc))
            raise
        finally:
            ctx.finish(time.time() if end_time is None else end_time)

    @asynccontextmanager
    async def trace_context(
        self,
        name: str | None = None,
        *,
        store: LightningStore | None = None,
        rollout_id: str | None = None,
        attempt_id: str | None = None,
    ) -> AsyncIterator[DummyTracer]:
        """Make this tracer active for the block; nothing is recorded."""
        if (rollout_id is None) != (attempt_id is None):
            raise ValueError("rollout_id and attempt_id must be given together (or both omitted)")
        with _activated(self):
            yield self

    def get_last_trace(self) -> list[Span]:
        """Always empty: a dummy tracer records nothing."""
        return []
