"""The `Tracer` interface, span-recording contexts and the process-wide active-tracer registry."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager, asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from agl.types.tracer import SpanCoreFields, StatusCode, TraceStatus

if TYPE_CHECKING:
    from agl.store.base import LightningStore
    from agl.types.tracer import Span

__all__ = [
    "SpanRecordingContext",
    "Tracer",
    "clear_active_tracer",
    "get_active_tracer",
    "set_active_tracer",
    "with_active_tracer_context",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_VALID_STATUS_CODES: tuple[StatusCode, ...] = ("UNSET", "OK", "ERROR")


def check_status_code(status_code: str) -> StatusCode:
    """Validate a span status code name ("UNSET", "OK" or "ERROR")."""
    for code in _VALID_STATUS_CODES:
        if status_code == code:
            return code
    raise ValueError(f"status_code must be one of {list(_VALID_STATUS_CODES)}, got {status_code!r}")


class SpanRecordingContext:
    """Handle to a span being recorded by `Tracer.operation_context`."""

    def record_exception(self, exception: BaseException) -> None:
        """Record an exception on the span."""
        raise NotImplementedError

    def record_attributes(self, attributes: Mapping[str, Any]) -> None:
        """Add attributes to the span."""
        raise NotImplementedError

    def record_status(self, status_code: StatusCode, description: str | None = None) -> None:
        """Set the span's status."""
        raise NotImplementedError

    def get_recorded_span(self) -> SpanCoreFields:
        """The span's fields as recorded so far (complete once the context has exited)."""
        raise NotImplementedError


# -- active tracer registry --------------------------------------------------------------------------------------
# The active tracer is context-local (a ContextVar): each asyncio task and each thread started with a copied context
# has its own, so concurrent rollouts in one process (runner threads, a runner's concurrent rollouts) do not collide.
_active_tracer: contextvars.ContextVar[Tracer | None] = contextvars.ContextVar("agl_active_tracer", default=None)


def get_active_tracer() -> Tracer | None:
    """The tracer whose trace context is open in the current context (task or thread), if any."""
    return _active_tracer.get()


def set_active_tracer(tracer: Tracer) -> None:
    """Make `tracer` the active tracer of the current context.

    Raises:
        ValueError: a tracer (this one or another) is already active here; clear it first.
        TypeError: `tracer` is not a `Tracer`.
    """
    if not isinstance(tracer, Tracer):
        raise TypeError(f"tracer must be a Tracer, got {type(tracer).__name__}")
    current = _active_tracer.get()
    if current is not None:
        raise ValueError(
            f"An active tracer is already set ({type(current).__name__}); only one trace context may be open at a "
            "time in one task or thread. Clear it with clear_active_tracer() first."
        )
    _active_tracer.set(tracer)


def clear_active_tracer() -> None:
    """Forget the active tracer of the current context (no-op when none is set)."""
    _active_tracer.set(None)


def with_active_tracer_context(
    func: Callable[..., AbstractAsyncContextManager[T]],
) -> Callable[..., AbstractAsyncContextManager[T]]:
    """Decorate a tracer method returning an async context manager so the tracer is the active tracer for the
    whole `async with` block (set on entry, cleared on exit).
    """

    @functools.wraps(func)
    def wrapper(self: Tracer, *args: Any, **kwargs: Any) -> AbstractAsyncContextManager[T]:
        @asynccontextmanager
        async def active() -> AsyncIterator[T]:
            with _activated(self):
                async with func(self, *args, **kwargs) as value:
                    yield value

        return active()

    return wrapper


@contextmanager
def _activated(tracer: Tracer) -> Iterator[None]:
    set_active_tracer(tracer)
    try:
        yield
    finally:
        if _active_tracer.get() is tracer:
            _active_tracer.set(None)


# -- the interface -----------------------------------------------------------------------------------------------
class Tracer:
    """Captures the spans an agent produces while it runs a rollout, and sends them to the store.

    Lifecycle: `init()` once, `init_worker(worker_id, store)` in each worker, then any number of
    `trace_context(...)` blocks, then `teardown_worker(worker_id)` and `teardown()`.
    """

    def __init__(self) -> None:
        self.worker_id: int | None = None
        self.store: LightningStore | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def init(self, *args: Any, **kwargs: Any) -> None:
        """Process-level set-up, before any worker starts."""

    def init_worker(self, worker_id: int, store: LightningStore | None = None) -> None:
        """Worker-level set-up; `store` receives the spans of every later trace context."""
        self.worker_id = worker_id
        if store is not None:
            self.store = store

    def teardown_worker(self, worker_id: int) -> None:
        """Release what `init_worker` acquired."""

    def teardown(self) -> None:
        """Release what `init` acquired."""

    @contextmanager
    def lifespan(self, store: LightningStore | None = None) -> Iterator[Tracer]:
        """`init()` + `init_worker(0, store)` for the duration of the block, then tear both down."""
        self.init()
        self.init_worker(0, store)
        try:
            yield self
        finally:
            try:
                self.teardown_worker(0)
            finally:
                self.teardown()

    # -- tracing ------------------------------------------------------------------------------------------------
    def trace_context(
        self,
        name: str | None = None,
        *,
        store: LightningStore | None = None,
        rollout_id: str | None = None,
        attempt_id: str | None = None,
    ) -> AbstractAsyncContextManager[Any]:
        """Async context manager capturing the spans of one rollout attempt; the tracer is active inside it."""
        raise NotImplementedError(f"{type(self).__name__} does not implement trace_context")

    def store_with_trace(self, span: SpanCoreFields) -> bool:
        """Have `span` stored with the open trace context's last batch of spans; False if this tracer cannot.

        Called inside `trace_context` (with a store). A tracer that can sends the span when the context exits,
        in the same sequence-id allocation and `add_many_spans` call as the spans it traced, and includes the
        stored copy, last, in `get_last_trace()`. One that cannot returns False and the caller stores it itself.
        """
        return False

    def get_last_trace(self) -> list[Span]:
        """The spans captured by the most recent trace context."""
        raise NotImplementedError(f"{type(self).__name__} does not implement get_last_trace")

    def create_span(
        self,
        name: str,
        attributes: Mapping[str, Any] | None = None,
        timestamp: float | None = None,
        status: TraceStatus | None = None,
    ) -> SpanCoreFields:
        """Record an instantaneous span (start = end = `timestamp`, default now) and return its fields."""
        raise NotImplementedError(f"{type(self).__name__} does not implement create_span")

    def operation_context(
        self,
        name: str,
        attributes: Mapping[str, Any] | None = None,
        start_time: float | None = None,
        end_time: float | None = None,
    ) -> AbstractContextManager[SpanRecordingContext]:
        """Context manager recording a span that lasts for the block; an exception escaping it is recorded."""
        raise NotImplementedError(f"{type(self).__name__} does not implement operation_context")

    def get_langchain_handler(self) -> Any:
        """A LangChain callback handler feeding this tracer; None when the tracer has none."""
        logger.warning("%s has no LangChain callback handler", type(self).__name__)
        return None

    # -- deprecated helpers -------------------------------------------------------------------------------------
    def trace_run(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Deprecated: run `func` synchronously inside a fresh trace context (no running event loop allowed)."""
        warnings.warn(
            "Tracer.trace_run is deprecated; use `async with tracer.trace_context(...)`",
            DeprecationWarning,
            stacklevel=2,
        )

        async def run() -> T:
            async with self.trace_context():
                return func(*args, **kwargs)

        return asyncio.run(run())

    async def trace_run_async(self, func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Deprecated: await `func` inside a fresh trace context."""
        warnings.warn(
            "Tracer.trace_run_async is deprecated; use `async with tracer.trace_context(...)`",
            DeprecationWarning,
            stacklevel=2,
        )
        async with self.trace_context():
            return await func(*args, **kwargs)


def resolve_context_ids(
    tracer_store: LightningStore | None,
    store: LightningStore | None,
    rollout_id: str | None,
    attempt_id: str | None,
) -> LightningStore | None:
    """Validate a `trace_context` call and return the store its spans go to (None: capture locally).

    Raises:
        ValueError: only one of `rollout_id` / `attempt_id` given, or both given but no store known.
    """
    if store is not None:
        warnings.warn(
            "Passing store= to trace_context is deprecated; pass it to init_worker(worker_id, store) instead",
            DeprecationWarning,
            stacklevel=4,
        )
    if (rollout_id is None) != (attempt_id is None):
        raise ValueError("rollout_id and attempt_id must be given together (or both omitted)")
    if rollout_id is None:
        return None
    effective = store if store is not None else tracer_store
    if effective is None:
        raise ValueError(
            "trace_context(rollout_id=..., attempt_id=...) needs a store: call init_worker(worker_id, store) first"
        )
    return effective
