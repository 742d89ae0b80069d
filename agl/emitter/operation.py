"""`operation`: record a function call or a block of code as an `agentlightning.operation` span."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, TypeVar, overload

from agl import semconv
from agl.emitter.annotation import resolve_tracer
from agl.emitter.attributes import AttributeValue, flatten_attributes
from agl.tracer.base import SpanRecordingContext, Tracer
from agl.types.tracer import SpanCoreFields

__all__ = ["OperationContext", "operation"]

F = TypeVar("F", bound=Callable[..., Any])


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def _call_input_attributes(
    sig: inspect.Signature | None, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> dict[str, AttributeValue]:
    """Inputs of a call as `agentlightning.operation.input.<param>[...]` attributes."""
    data: dict[str, Any] = {}
    bound: inspect.BoundArguments | None = None
    if sig is not None:
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError:
            bound = None
    if bound is None or sig is None:
        return _free_input_attributes(args, kwargs)
    for name, value in bound.arguments.items():
        key = f"{semconv.OPERATION_INPUT}.{name}"
        kind = sig.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            for index, item in enumerate(value):
                data[f"{key}.{index}"] = item
        else:
            data[key] = value
    return flatten_attributes(data)


def _free_input_attributes(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, AttributeValue]:
    data: dict[str, Any] = {f"{semconv.OPERATION_INPUT}.args.{i}": v for i, v in enumerate(args)}
    data.update({f"{semconv.OPERATION_INPUT}.{k}": v for k, v in kwargs.items()})
    return flatten_attributes(data)


def _output_attributes(result: Any) -> dict[str, AttributeValue]:
    return flatten_attributes({semconv.OPERATION_OUTPUT: result})


class OperationContext:
    """An operation span around a `with` / `async with` block; also usable as a decorator.

    Inside the block, `set_input(...)` and `set_output(...)` record the operation's inputs and output;
    after it, `span()` returns the recorded span.
    """

    def __init__(self, tracer: Tracer, attributes: Mapping[str, Any]) -> None:
        self._tracer = tracer
        self._attributes = dict(attributes)
        self._manager: AbstractContextManager[SpanRecordingContext] | None = None
        self._recording: SpanRecordingContext | None = None
        self._span: SpanCoreFields | None = None

    def __call__(self, fn: F) -> F:
        """Decorate `fn`: each call is recorded as its own operation span."""
        return _decorate(fn, self._tracer, self._attributes)

    def _require_recording(self, method: str) -> SpanRecordingContext:
        if self._recording is None:
            raise RuntimeError(f"OperationContext.{method}() can only be called inside the `with` block")
        return self._recording

    def set_input(self, *args: Any, **kwargs: Any) -> None:
        """Record inputs: positional ones as `...input.args.<i>`, keyword ones as `...input.<name>`."""
        self._require_recording("set_input").record_attributes(_free_input_attributes(args, kwargs))

    def set_output(self, output: Any) -> None:
        """Record the operation's output as `agentlightning.operation.output[...]`."""
        self._require_recording("set_output").record_attributes(_output_attributes(output))

    def span(self) -> SpanCoreFields:
        """The recorded span: complete after the block, partial inside it."""
        if self._span is not None:
            return self._span
        return self._require_recording("span").get_recorded_span()

    def __enter__(self) -> OperationContext:
        if self._manager is not None:
            raise RuntimeError("This OperationContext is already in use; create a new one with operation(...)")
        self._span = None
        manager = self._tracer.operation_context(semconv.AGL_OPERATION, self._attributes)
        self._recording = manager.__enter__()
        self._manager = manager
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        manager, recording = self._manager, self._recording
        assert manager is not None and recording is not None
        try:
            return manager.__exit__(exc_type, exc, tb)
        finally:
            self._span = recording.get_recorded_span()
            self._manager = None
            self._recording = None

    async def __aenter__(self) -> OperationContext:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        return self.__exit__(exc_type, exc, tb)


def _decorate(fn: F, tracer: Tracer, attributes: Mapping[str, Any]) -> F:
    if not callable(fn):
        raise TypeError(f"operation can only decorate a callable, got {type(fn).__name__}")
    sig = _signature(fn)
    span_attributes = dict(attributes)
    if semconv.OPERATION_NAME not in span_attributes:
        span_attributes[semconv.OPERATION_NAME] = getattr(fn, "__name__", type(fn).__name__)

    if inspect.iscoroutinefunction(fn):
        async_fn: Callable[..., Awaitable[Any]] = fn

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            with tracer.operation_context(semconv.AGL_OPERATION, span_attributes) as recording:
                recording.record_attributes(_call_input_attributes(sig, args, kwargs))
                result = await async_fn(*args, **kwargs)
                recording.record_attributes(_output_attributes(result))
                return result

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with tracer.operation_context(semconv.AGL_OPERATION, span_attributes) as recording:
            recording.record_attributes(_call_input_attributes(sig, args, kwargs))
            result = fn(*args, **kwargs)
            recording.record_attributes(_output_attributes(result))
            return result

    return wrapper  # type: ignore[return-value]


@overload
def operation(fn: F, *, propagate: bool = True, name: str | None = None, **attributes: Any) -> F: ...


@overload
def operation(
    fn: None = None, *, propagate: bool = True, name: str | None = None, **attributes: Any
) -> OperationContext: ...


def operation(
    fn: F | None = None, *, propagate: bool = True, name: str | None = None, **attributes: Any
) -> F | OperationContext:
    """Record an `agentlightning.operation` span, as a decorator (`@operation`, `@operation(name=...)`) or a
    context manager (`with operation(**attrs) as op:`).

    A decorated call records `agentlightning.operation.name` (the function name, or `name`), its bound inputs
    under `agentlightning.operation.input.<param>`, its result under `agentlightning.operation.output`, and an
    exception it raises (status ERROR, then re-raised). The tracer is looked up when `operation` is called.

    Raises:
        RuntimeError: `propagate` is true and no tracer is active.
        ValueError: `name` given together with an `agentlightning.operation.name` attribute.
    """
    if name is not None and semconv.OPERATION_NAME in attributes:
        raise ValueError(f"pass either name= or the {semconv.OPERATION_NAME!r} attribute, not both")
    tracer = resolve_tracer(propagate)
    span_attributes: dict[str, Any] = dict(flatten_attributes(attributes))
    if name is not None:
        span_attributes[semconv.OPERATION_NAME] = name
    if fn is not None:
        return _decorate(fn, tracer, span_attributes)
    return OperationContext(tracer, span_attributes)
