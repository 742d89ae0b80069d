"""Capturing ended OpenTelemetry spans: `LightningSpanProcessor` and the `TraceSession` it feeds.

A `TraceSession` holds the spans of one trace context (one rollout attempt): it buffers them and writes them to the
store in batches (one `get_many_span_sequence_ids` plus one `add_many_spans` call per batch) on the event loop it
was opened for, or keeps them locally when there is no store. `OtelTracer.trace_context` opens one per block on the
caller's loop; `LightningSpanProcessor.with_context` (Agent Lightning's synchronous API) opens one on a private
loop thread of the processor.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

from agl.store.errors import retry_when_full
from agl.types.tracer import Span, SpanCoreFields

if TYPE_CHECKING:
    from agl.store.base import LightningStore

__all__ = [
    "DUMMY_ATTEMPT_ID",
    "DUMMY_ROLLOUT_ID",
    "STRAY_SPAN_LIMIT",
    "LightningSpanProcessor",
    "TraceSession",
    "current_session",
]

logger = logging.getLogger(__name__)

STRAY_SPAN_LIMIT = 10_000
"""Spans ending outside any session that `LightningSpanProcessor` keeps for `spans()`; later ones are dropped."""

DUMMY_ROLLOUT_ID = "rollout-dummy"
DUMMY_ATTEMPT_ID = "attempt-dummy"

# Sequence ids of spans captured without a store; process-wide, starting at 0.
_local_sequence = itertools.count()
_local_sequence_lock = threading.Lock()

# The trace session open in the current task (several rollouts may trace at once on one loop).
current_session: contextvars.ContextVar[TraceSession | None] = contextvars.ContextVar(
    "agl_otel_trace_session", default=None
)


def next_local_sequence_id() -> int:
    with _local_sequence_lock:
        return next(_local_sequence)


class TraceSession:
    """Spans of one open trace context: the unsent buffer, the captured result and the pending flushes."""

    def __init__(
        self,
        store: LightningStore | None,
        rollout_id: str,
        attempt_id: str,
        loop: asyncio.AbstractEventLoop | None,
        batch_size: int,
        flush_interval: float,
    ) -> None:
        if store is not None and loop is None:
            raise ValueError("a trace session that writes to a store needs the event loop to write on")
        self.store = store
        self.rollout_id = rollout_id
        self.attempt_id = attempt_id
        self.loop = loop
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.captured: list[Span] = []
        self._buffer: list[ReadableSpan | SpanCoreFields] = []
        self._oldest: float | None = None
        self._lock = threading.Lock()
        self._flush_lock = asyncio.Lock()
        self._pending: set[asyncio.Future[None]] = set()
        self.deferred_error: BaseException | None = None
        """Why a batch holding spans queued with `add_core` could not be stored (the context exit raises it)."""

    # Called from whichever thread ended the span.
    def add(self, span: ReadableSpan, *, submit: bool = True) -> None:
        """Buffer `span` for the store, or (no store, or `submit` false) keep it here with a local sequence id."""
        if self.store is None or not submit:
            converted = Span.from_opentelemetry(span, self.rollout_id, self.attempt_id, next_local_sequence_id())
            with self._lock:
                self.captured.append(converted)
            return
        with self._lock:
            if not self._buffer:
                self._oldest = time.monotonic()
            self._buffer.append(span)
            full = len(self._buffer) >= self.batch_size
        if full:
            self._schedule_flush()

    def add_core(self, core: SpanCoreFields) -> None:
        """Buffer a span given by its core fields; it is sent with the next batch (at the latest, the exit flush)."""
        with self._lock:
            if not self._buffer:
                self._oldest = time.monotonic()
            self._buffer.append(core)

    def _schedule_flush(self) -> None:
        if self.loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            task = self.loop.create_task(self.flush())
            self._track(task)
            return
        try:
            cfuture = asyncio.run_coroutine_threadsafe(self.flush(), self.loop)
        except RuntimeError:  # the loop is closed; the exit flush (if any) takes the spans
            return
        self.loop.call_soon_threadsafe(self._track_concurrent, cfuture)

    def _track_concurrent(self, cfuture: concurrent.futures.Future[None]) -> None:
        assert self.loop is not None
        self._track(asyncio.wrap_future(cfuture, loop=self.loop))

    def _track(self, future: asyncio.Future[None]) -> None:
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)

    async def run_timer(self) -> None:
        """Flush whenever the oldest buffered span has waited `flush_interval` seconds."""
        while True:
            oldest = self._oldest
            delay = self.flush_interval if oldest is None else oldest + self.flush_interval - time.monotonic()
            await asyncio.sleep(max(delay, 0.001))
            oldest = self._oldest
            if oldest is not None and time.monotonic() - oldest >= self.flush_interval:
                await self.flush()

    async def drain(self) -> None:
        """Wait for scheduled flushes, then send whatever is still buffered."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
        await self.flush()

    def drain_blocking(self, timeout: float | None) -> bool:
        """`drain()` on the session's loop from another thread; True when done within `timeout` seconds.

        On the loop's own thread it cannot wait: the drain is scheduled and False returned.
        """
        if self.loop is None:
            return True  # nothing is ever buffered without a loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self._track(self.loop.create_task(self.drain()))
            return False
        try:
            future = asyncio.run_coroutine_threadsafe(self.drain(), self.loop)
        except RuntimeError:  # the loop is closed: nothing can be sent any more
            return False
        try:
            future.result(timeout)
        except concurrent.futures.TimeoutError:
            logger.warning("spans of %s/%s not stored within %.3gs", self.rollout_id, self.attempt_id, timeout)
            return False
        return True

    def spans(self) -> list[Span]:
        """The spans captured so far (stored copies for spans already written)."""
        with self._lock:
            return list(self.captured)

    async def flush(self) -> None:
        """Send the buffered spans to the store in batches of at most `batch_size` (sequence ids, then spans)."""
        async with self._flush_lock:
            with self._lock:
                pending, self._buffer, self._oldest = self._buffer, [], None
            if not pending or self.store is None:
                return
            token = otel_context.attach(otel_context.set_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY, True))
            try:
                for start in range(0, len(pending), self.batch_size):
                    converted = await self._write(self.store, pending[start : start + self.batch_size])
                    with self._lock:
                        self.captured.extend(converted)
            finally:
                otel_context.detach(token)

    def _convert(self, item: ReadableSpan | SpanCoreFields, sequence_id: int) -> Span:
        if isinstance(item, SpanCoreFields):
            return Span.from_core_fields(
                item, rollout_id=self.rollout_id, attempt_id=self.attempt_id, sequence_id=sequence_id
            )
        return Span.from_opentelemetry(item, self.rollout_id, self.attempt_id, sequence_id)

    async def _write(self, store: LightningStore, batch: list[ReadableSpan | SpanCoreFields]) -> list[Span]:
        rid, aid = self.rollout_id, self.attempt_id
        try:
            # A full store (StoreFullError, HTTP 507) is retried with back-off rather than dropping the spans.
            sequence_ids = list(
                await retry_when_full(lambda: store.get_many_span_sequence_ids([(rid, aid)] * len(batch)))
            )
            if len(sequence_ids) != len(batch):
                raise RuntimeError(f"store returned {len(sequence_ids)} sequence ids for {len(batch)} spans")
        except Exception as exc:
            self._note_failure(batch, exc)
            logger.exception(
                "Could not allocate sequence ids for %d spans of %s/%s; kept locally", len(batch), rid, aid
            )
            return [self._convert(s, next_local_sequence_id()) for s in batch]
        spans = [self._convert(s, seq) for s, seq in zip(batch, sequence_ids, strict=True)]
        try:
            stored = await retry_when_full(lambda: store.add_many_spans(spans))
        except Exception as exc:
            self._note_failure(batch, exc)
            logger.exception("Could not store %d spans of %s/%s; kept locally", len(spans), rid, aid)
            return spans
        return list(stored)

    def _note_failure(self, batch: list[ReadableSpan | SpanCoreFields], exc: BaseException) -> None:
        if self.deferred_error is None and any(isinstance(item, SpanCoreFields) for item in batch):
            self.deferred_error = exc


class LightningSpanProcessor(SpanProcessor):
    """Hands every sampled span that ends to the open trace session; spans outside one are kept locally.

    `OtelTracer` attaches a session per `trace_context` block. Used on its own, as Agent Lightning's processor is,
    `with processor.with_context(store, rollout_id, attempt_id):` sends the spans ending in the block to `store`
    for that attempt, in batches of `batch_size` written on a private loop thread (at the latest when the block
    exits, which waits up to `flush_timeout` seconds for them), and `spans()` returns their stored copies.
    `with processor:` (or spans ending outside any session) keeps spans locally with placeholder ids.

    Args:
        disable_store_submission: keep every span locally (with a local sequence id) instead of storing it; may
            be changed while the processor is in use.
        batch_size: spans buffered by `with_context` before they are written.
        flush_interval: longest time, in seconds, a span waits in that buffer.
        flush_timeout: how long leaving `with_context`, `spans()` and `force_flush()` wait for buffered spans to
            be stored.
    """

    def __init__(
        self,
        disable_store_submission: bool = False,
        *,
        batch_size: int = 64,
        flush_interval: float = 1.0,
        flush_timeout: float = 30.0,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not flush_interval > 0:
            raise ValueError(f"flush_interval must be a positive number of seconds, got {flush_interval!r}")
        if not flush_timeout >= 0:
            raise ValueError(f"flush_timeout must be a non-negative number of seconds, got {flush_timeout!r}")
        self.disable_store_submission = bool(disable_store_submission)
        self.batch_size = batch_size
        self.flush_interval = float(flush_interval)
        self.flush_timeout = float(flush_timeout)
        self._lock = threading.Lock()
        self._session: TraceSession | None = None
        self._stray = self._local_session()  # spans ending outside any session, since the last one opened
        self._last: TraceSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._entered: tuple[TraceSession, contextvars.Token[TraceSession | None]] | None = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(disable_store_submission={self.disable_store_submission}, "
            f"store={self.store!r}, rollout_id={self.rollout_id!r}, attempt_id={self.attempt_id!r})"
        )

    # -- what the current session writes to ----------------------------------------------------------------------

    def _current(self) -> TraceSession | None:
        # The session of the context the span ends in (each concurrent rollout has its own); spans ended on a
        # thread that did not copy the context fall back to the most recently opened session.
        session = current_session.get()
        if session is None:
            with self._lock:
                session = self._session
        return session

    @property
    def store(self) -> LightningStore | None:
        """The store spans ending now are sent to (None outside a session with a store)."""
        session = self._current()
        return session.store if session is not None else None

    @property
    def rollout_id(self) -> str | None:
        """The rollout spans ending now belong to (None outside a session with a store)."""
        session = self._current()
        return session.rollout_id if session is not None and session.store is not None else None

    @property
    def attempt_id(self) -> str | None:
        """The attempt spans ending now belong to (None outside a session with a store)."""
        session = self._current()
        return session.attempt_id if session is not None and session.store is not None else None

    # -- sessions ------------------------------------------------------------------------------------------------

    def attach(self, session: TraceSession | None) -> None:
        """Direct ended spans to `session` (None: keep them locally); `spans()` starts over with it."""
        with self._lock:
            self._session = session
            if session is not None:
                self._stray = self._local_session()

    def detach(self, session: TraceSession) -> None:
        """Stop directing spans to `session` (if it is the one attached); `spans()` keeps returning its spans."""
        with self._lock:
            if self._session is session:
                self._session = None
            self._last = session

    def _private_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="agl-span-writer", daemon=True)
                thread.start()
                self._loop, self._loop_thread = loop, thread
            return self._loop

    def _local_session(self, rollout_id: str = "", attempt_id: str = "") -> TraceSession:
        # A session without a store never touches its loop: spans are converted where they end.
        return TraceSession(
            None,
            rollout_id or DUMMY_ROLLOUT_ID,
            attempt_id or DUMMY_ATTEMPT_ID,
            None,
            self.batch_size,
            self.flush_interval,
        )

    @contextmanager
    def with_context(self, store: LightningStore, rollout_id: str, attempt_id: str) -> Iterator[LightningSpanProcessor]:
        """Within the block, send the spans that end to `store` for `rollout_id` / `attempt_id`.

        `spans()` starts empty; leaving the block stores what is still buffered (waiting up to `flush_timeout`).
        """
        loop = self._private_loop()
        session = TraceSession(store, rollout_id, attempt_id, loop, self.batch_size, self.flush_interval)
        timer = asyncio.run_coroutine_threadsafe(session.run_timer(), loop)
        with self._open(session):
            try:
                yield self
            finally:
                timer.cancel()
                session.drain_blocking(self.flush_timeout)

    def __enter__(self) -> LightningSpanProcessor:
        """Keep the spans that end from now on locally (placeholder ids); `spans()` returns them."""
        session = self._local_session()
        token = current_session.set(session)
        self.attach(session)
        with self._lock:
            self._entered = (session, token)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            entered, self._entered = self._entered, None
        if entered is not None:
            self.detach(entered[0])
            try:
                current_session.reset(entered[1])
            except ValueError:  # left from another context than the one that entered
                current_session.set(None)

    @contextmanager
    def _open(self, session: TraceSession) -> Iterator[None]:
        token = current_session.set(session)
        self.attach(session)
        try:
            yield
        finally:
            self.detach(session)
            try:
                current_session.reset(token)
            except ValueError:
                current_session.set(None)

    # -- SpanProcessor --------------------------------------------------------------------------------------------

    def on_end(self, span: ReadableSpan) -> None:
        """Buffer the ended span for the current session's store, or keep it locally."""
        if span.context is not None and not span.context.trace_flags.sampled:
            return
        session = self._current()
        try:
            if session is not None:
                session.add(span, submit=not self.disable_store_submission)
            elif len(self._stray.captured) < STRAY_SPAN_LIMIT:
                self._stray.add(span)
        except Exception:  # never break the instrumented code
            logger.exception("Could not capture span %r", span.name)

    def spans(self) -> list[Span]:
        """The spans of the current session: stored copies once written, with their sequence ids.

        Buffered spans of a `with_context` session are written first (waiting up to `flush_timeout`). Outside any
        session: those of the last one, then those that ended outside any session since it opened (at most
        `STRAY_SPAN_LIMIT`, with placeholder ids).
        """
        session = self._current()
        if session is None:
            with self._lock:
                last, stray = self._last, self._stray
            return (last.spans() if last is not None else []) + stray.spans()
        if session.store is not None and session.loop is self._loop:
            session.drain_blocking(self.flush_timeout)
        return session.spans()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Write the buffered spans of a `with_context` session; True when they were stored in time."""
        session = self._current()
        if session is None or session.store is None or session.loop is not self._loop:
            return True  # a tracer's trace context flushes on its own loop
        return session.drain_blocking(timeout_millis / 1000)

    def shutdown(self) -> None:
        """Stop capturing and stop the private writer loop, if one was started."""
        self.attach(None)
        with self._lock:
            loop, thread = self._loop, self._loop_thread
            self._loop = self._loop_thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            if not thread.is_alive():
                loop.close()
