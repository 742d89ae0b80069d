"""Adapters: turn what a rollout produced (its trace) into what an algorithm consumes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from agl.types.tracer import Span

__all__ = ["Adapter", "OtelTraceAdapter", "TraceAdapter", "normalize_spans"]

S = TypeVar("S")
T = TypeVar("T")

_DUMMY_ID = "dummy"


class Adapter(ABC, Generic[S, T]):
    """Converts a source of type `S` into a target of type `T`; calling the adapter is `adapt`."""

    def __call__(self, source: S, /) -> T:
        """Same as `adapt(source)`."""
        return self.adapt(source)

    @abstractmethod
    def adapt(self, source: S, /) -> T:
        """Convert `source` into the adapter's target type."""


class TraceAdapter(Adapter[Sequence[Span], T], Generic[T]):
    """An adapter whose source is the list of spans of one rollout attempt."""


class OtelTraceAdapter(Adapter[Sequence[Any], T], Generic[T]):
    """An adapter whose source is a list of OpenTelemetry SDK `ReadableSpan`s."""


def _looks_like_readable_span(obj: Any) -> bool:
    return (
        isinstance(getattr(obj, "name", None), str)
        and hasattr(obj, "attributes")
        and hasattr(obj, "start_time")
        and hasattr(obj, "parent")
        and (callable(getattr(obj, "get_span_context", None)) or hasattr(obj, "context"))
    )


def normalize_spans(source: Any, *, argument: str = "source") -> list[Span]:
    """`source` as a list of `Span`s, converting OpenTelemetry `ReadableSpan`s on the way.

    A converted span has rollout and attempt id `"dummy"` and, since OpenTelemetry spans carry no sequence id,
    its position in `source` as sequence id.

    Raises:
        TypeError: `source` is not a sequence, or one of its items is neither a `Span` nor span-like.
    """
    if isinstance(source, (str, bytes, bytearray)) or not isinstance(source, Sequence):
        raise TypeError(f"{argument} must be a sequence of spans, got {type(source).__name__}")
    spans: list[Span] = []
    for index, item in enumerate(source):
        if isinstance(item, Span):
            spans.append(item)
        elif _looks_like_readable_span(item):
            spans.append(Span.from_opentelemetry(item, _DUMMY_ID, _DUMMY_ID, index))
        else:
            raise TypeError(
                f"{argument}[{index}] must be an agl Span or an OpenTelemetry ReadableSpan, got {type(item).__name__}"
            )
    return spans
