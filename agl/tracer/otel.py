"""`OtelTracer`: captures OpenTelemetry SDK spans and writes them to the store in batches.

Spans that end inside a `trace_context` are buffered and sent with one `get_many_span_sequence_ids` plus one
`add_many_spans` call per batch: when the buffer reaches `batch_size` spans, when its oldest span has waited
`flush_interval` seconds, and when the context exits. Every store call runs on the event loop that opened the
trace context (never on a private loop, never blocking the thread that ended the span), so the store is only
used from the loop its owner uses.

Stores with the `otlp_traces` capability are written through the same batched path rather than through OTLP:
one `add_many_spans` request per batch already costs one round trip, avoids protobuf encoding, and lets
`get_last_trace()` return the stored copies.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import trace as otel_trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.trace import Status
from opentelemetry.trace import StatusCode as OtelStatusCode

from agl.tracer.base import SpanRecordingContext, Tracer, _activated, check_status_code, resolve_context_ids
from agl.tracer.otel_capture import (
    DUMMY_ATTEMPT_ID,
    DUMMY_ROLLOUT_ID,
    LightningSpanProcessor,
    TraceSession,
    current_session,
)
from agl.types.tracer import Span, SpanCoreFields, StatusCode, TraceStatus

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import Span as SdkSpan

    from agl.store.base import LightningStore

__all__ = ["LightningSpanProcessor", "OtelSpanRecordingContext", "OtelTracer", "to_otel_status_code"]

logger = logging.getLogger(__name__)

_global_provider_lock = threading.Lock()

_last_trace_here: contextvars.ContextVar[tuple[int, list[Span]] | None] = contextvars.ContextVar(
    "agl_last_trace", default=None
)
"""(id of the tracer, its last trace) in this task or thread: `get_last_trace` of concurrent rollouts."""


def _to_ns(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1e9)


def _from_ns(nanos: int | None) -> float | None:
    return None if nanos is None else nanos / 1e9


def to_otel_status_code(status_code: StatusCode) -> OtelStatusCode:
    """The OpenTelemetry `StatusCode` of an AGL status code ("UNSET", "OK", "ERROR").

    Raises:
        ValueError: `status_code` is not one of the three.
    """
    return OtelStatusCode[check_status_code(status_code)]


def _otel_status(status_code: StatusCode, description: str | None) -> Status:
    code = to_otel_status_code(status_code)
    # OpenTelemetry keeps a description only for ERROR statuses.
    return Status(code, description if code is OtelStatusCode.ERROR else None)


def _plain_attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """OpenTelemetry attributes with its tuples turned back into lists."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in (attributes or {}).items()}


def _status_of(span: ReadableSpan) -> TraceStatus:
    status = span.status
    return TraceStatus(status_code=status.status_code.name, description=status.description or None)


class OtelSpanRecordingContext(SpanRecordingContext):
    """Records onto a live OpenTelemetry SDK span."""

    def __init__(self, span: SdkSpan) -> None:
        self._span = span

    def get_otel_span(self) -> SdkSpan:
        """The OpenTelemetry span being recorded onto."""
        return self._span

    def record_exception(self, exception: BaseException) -> None:
        """Add an `exception` event to the span."""
        self._span.record_exception(exception, escaped=True)

    def record_attributes(self, attributes: Mapping[str, Any]) -> None:
        """Add attributes to the span."""
        self._span.set_attributes(dict(attributes))

    def record_status(self, status_code: StatusCode, description: str | None = None) -> None:
        """Set the span's status."""
        self._span.set_status(_otel_status(status_code, description))

    def get_recorded_span(self) -> SpanCoreFields:
        """The span's fields as recorded so far."""
        span = self._span
        return SpanCoreFields(
            name=span.name,
            attributes=_plain_attributes(span.attributes),
            start_time=_from_ns(span.start_time),
            end_time=_from_ns(span.end_time),
            status=_status_of(span),
        )


class OtelTracer(Tracer):
    """Tracer on the OpenTelemetry SDK, with a private `TracerProvider` per tracer.

    The provider is also made the global OpenTelemetry provider when none has been set, so instrumented
    libraries' spans are captured too; an existing global provider is left alone (with a log line).

    Args:
        batch_size: spans buffered before they are sent to the store.
        flush_interval: longest time, in seconds, a span stays buffered while the context's event loop runs.
    """

    def __init__(self, *, batch_size: int = 64, flush_interval: float = 1.0) -> None:
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(flush_interval, bool) or not isinstance(flush_interval, (int, float)) or not flush_interval > 0:
            raise ValueError(f"flush_interval must be a positive number of seconds, got {flush_interval!r}")
        self.batch_size = batch_size
        self.flush_interval = float(flush_interval)
        self._provider: TracerProvider | None = None
        self._processor: LightningSpanProcessor | None = None
        self._otel_tracer: otel_trace.Tracer | None = None
        self._last_trace: list[Span] = []

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def init_worker(self, worker_id: int, store: LightningStore | None = None) -> None:
        """Create this worker's tracer provider and span processor; `store` receives the spans."""
        super().init_worker(worker_id, store)
        self._ensure_provider()

    def teardown_worker(self, worker_id: int) -> None:
        """Shut the tracer provider down."""
        super().teardown_worker(worker_id)
        provider, self._provider, self._processor, self._otel_tracer = self._provider, None, None, None
        if provider is not None:
            provider.shutdown()

    def _ensure_provider(self) -> otel_trace.Tracer:
        if self._otel_tracer is not None:
            return self._otel_tracer
        provider = TracerProvider(resource=Resource.create({"service.name": "agl"}))
        processor = LightningSpanProcessor()
        provider.add_span_processor(processor)
        with _global_provider_lock:
            if isinstance(otel_trace.get_tracer_provider(), otel_trace.ProxyTracerProvider):
                otel_trace.set_tracer_provider(provider)
                logger.info("OtelTracer: installed its tracer provider as the global OpenTelemetry provider")
            else:
                logger.info(
                    "OtelTracer: a global OpenTelemetry provider is already set; leaving it in place "
                    "(spans sent to it are not captured, only this tracer's own spans are)"
                )
        self._provider, self._processor = provider, processor
        self._otel_tracer = provider.get_tracer("agl")
        return self._otel_tracer

    @property
    def provider(self) -> TracerProvider:
        """This tracer's OpenTelemetry tracer provider (created on first use)."""
        self._ensure_provider()
        assert self._provider is not None
        return self._provider

    def get_otel_tracer(self) -> otel_trace.Tracer:
        """An OpenTelemetry tracer whose spans this tracer captures."""
        return self._ensure_provider()

    # -- tracing ------------------------------------------------------------------------------------------------
    @asynccontextmanager
    async def trace_context(
        self,
        name: str | None = None,
        *,
        store: LightningStore | None = None,
        rollout_id: str | None = None,
        attempt_id: str | None = None,
    ) -> AsyncIterator[OtelTracer]:
        """Capture the spans ending inside the block, write them to the store and make this tracer active.

        With `rollout_id` and `attempt_id` the spans go to the store given to `init_worker` (or, deprecated,
        to `store`); with neither they are only kept for `get_last_trace()`.

        Raises:
            ValueError: only one of the ids given, ids given without a store, or another tracer already active.
        """
        target = resolve_context_ids(self.store, store, rollout_id, attempt_id)
        self._ensure_provider()
        processor = self._processor
        assert processor is not None
        session = TraceSession(
            target,
            rollout_id if rollout_id is not None else DUMMY_ROLLOUT_ID,
            attempt_id if attempt_id is not None else DUMMY_ATTEMPT_ID,
            asyncio.get_running_loop(),
            self.batch_size,
            self.flush_interval,
        )
        with _activated(self):
            processor.attach(session)
            timer = asyncio.get_running_loop().create_task(session.run_timer()) if target is not None else None
            token = current_session.set(session)
            try:
                yield self
            finally:
                try:
                    current_session.reset(token)
                except ValueError:  # exited from another context than the one that entered
                    current_session.set(None)
                processor.detach(session)
                if timer is not None:
                    timer.cancel()
                    await asyncio.gather(timer, return_exceptions=True)
                await session.drain()
                self._last_trace = list(session.captured)
                _last_trace_here.set((id(self), self._last_trace))
            if session.deferred_error is not None:
                raise RuntimeError(
                    f"could not store the spans queued with store_with_trace: {session.deferred_error!r}"
                ) from session.deferred_error

    def store_with_trace(self, span: SpanCoreFields) -> bool:
        """Queue `span` for the open trace context's exit flush (one sequence-id call + one `add_many_spans`)."""
        session = current_session.get()
        if session is None or session.store is None:
            return False
        session.add_core(span)
        return True

    def get_last_trace(self) -> list[Span]:
        """The spans captured by the most recent trace context of this task or thread (else of the process).

        Stored copies when written to a store. Context-local, so concurrent rollouts each get their own trace.
        """
        here = _last_trace_here.get()
        return list(here[1] if here is not None and here[0] == id(self) else self._last_trace)

    def create_span(
        self,
        name: str,
        attributes: Mapping[str, Any] | None = None,
        timestamp: float | None = None,
        status: TraceStatus | None = None,
    ) -> SpanCoreFields:
        """Start and immediately end an OpenTelemetry span (child of the current span) and return its fields."""
        when = time.time() if timestamp is None else timestamp
        when_ns = _to_ns(when)
        span = self._ensure_provider().start_span(name, attributes=dict(attributes or {}), start_time=when_ns)
        if status is not None:
            span.set_status(_otel_status(status.status_code, status.description))
        span.end(end_time=when_ns)
        recorded: Any = span
        return SpanCoreFields(
            name=name,
            attributes=_plain_attributes(recorded.attributes),
            start_time=when,
            end_time=when,
            status=_status_of(recorded) if status is not None else TraceStatus(),
        )

    @contextmanager
    def operation_context(
        self,
        name: str,
        attributes: Mapping[str, Any] | None = None,
        start_time: float | None = None,
        end_time: float | None = None,
    ) -> Iterator[SpanRecordingContext]:
        """Record a span that is the current span for the block; an escaping exception sets status ERROR.

        A custom `end_time` is ignored (with a warning): the span ends when the block does.
        """
        if end_time is not None:
            logger.warning("OtelTracer.operation_context ignores end_time; the span ends when the block exits")
        with self._ensure_provider().start_as_current_span(
            name,
            attributes=dict(attributes or {}),
            start_time=_to_ns(start_time),
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            ctx = OtelSpanRecordingContext(span)  # type: ignore[arg-type]
            try:
                yield ctx
            except BaseException as exc:
                ctx.record_exception(exc)
                ctx.record_status("ERROR", f"{type(exc).__name__}: {exc}")
                raise
