"""The operation decorator and context manager, with DummyTracer and with a real OtelTracer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from agl.emitter import OperationContext, emit_message, operation
from agl.store.memory import InMemoryLightningStore
from agl.tracer import DummyTracer
from agl.tracer.otel import OtelTracer
from agl.types.core import AttemptedRollout
from agl.types.tracer import Span


@pytest.fixture
async def traced() -> AsyncIterator[tuple[OtelTracer, InMemoryLightningStore, AttemptedRollout]]:
    store = InMemoryLightningStore()
    rollout = await store.start_rollout(input="task")
    tracer = OtelTracer()
    tracer.init_worker(0, store)
    yield tracer, store, rollout
    tracer.teardown_worker(0)


def ops(spans: list[Span]) -> list[Span]:
    return [s for s in spans if s.name == "agentlightning.operation"]


async def test_sync_decorator_records_inputs_and_output(
    traced: tuple[OtelTracer, InMemoryLightningStore, AttemptedRollout],
) -> None:
    tracer, store, rollout = traced
    async with tracer.trace_context(rollout_id=rollout.rollout_id, attempt_id=rollout.attempt.attempt_id):

        @operation(kind="tool")
        def search(query: str, *pages: int, limit: int = 10, **options: Any) -> dict[str, Any]:
            emit_message("searching")
            return {"hits": [{"title": "a"}], "total": 1}

        assert search("lightning", 1, 2, limit=5, lang="en") == {"hits": [{"title": "a"}], "total": 1}
        assert search.__name__ == "search"

    (span,) = ops(tracer.get_last_trace())
    assert span.attributes == {
        "kind": "tool",
        "agentlightning.operation.name": "search",
        "agentlightning.operation.input.query": "lightning",
        "agentlightning.operation.input.pages.0": 1,
        "agentlightning.operation.input.pages.1": 2,
        "agentlightning.operation.input.limit": 5,
        "agentlightning.operation.input.options.lang": "en",
        "agentlightning.operation.output.hits.0.title": "a",
        "agentlightning.operation.output.total": 1,
    }
    message = next(s for s in tracer.get_last_trace() if s.name == "agentlightning.message")
    assert message.parent_id == span.span_id
    assert len((await store.query_spans(rollout.rollout_id)).items) == 2


async def test_async_decorator(traced: tuple[OtelTracer, InMemoryLightningStore, AttemptedRollout]) -> None:
    tracer, _, rollout = traced
    async with tracer.trace_context(rollout_id=rollout.rollout_id, attempt_id=rollout.attempt.attempt_id):

        @operation(name="double-it")
        async def double(x: int) -> int:
            return 2 * x

        assert await double(21) == 42

    (span,) = ops(tracer.get_last_trace())
    assert span.attributes["agentlightning.operation.name"] == "double-it"
    assert span.attributes["agentlightning.operation.input.x"] == 21
    assert span.attributes["agentlightning.operation.output"] == 42


async def test_bare_decorator_and_exceptions(
    traced: tuple[OtelTracer, InMemoryLightningStore, AttemptedRollout],
) -> None:
    tracer, _, rollout = traced
    async with tracer.trace_context(rollout_id=rollout.rollout_id, attempt_id=rollout.attempt.attempt_id):

        @operation
        def explode(x: int) -> int:
            raise ValueError(f"bad {x}")

        @operation
        async def explode_async() -> None:
            raise KeyError("k")

        with pytest.raises(ValueError, match="bad 3"):
            explode(3)
        with pytest.raises(KeyError):
            await explode_async()

    sync_span, async_span = ops(tracer.get_last_trace())
    for span, exc_type in ((sync_span, "ValueError"), (async_span, "KeyError")):
        assert span.status.status_code == "ERROR"
        assert [e.name for e in span.events] == ["exception"]
        assert span.events[0].attributes["exception.type"] == exc_type
    assert "agentlightning.operation.output" not in sync_span.attributes
    assert sync_span.attributes["agentlightning.operation.input.x"] == 3


async def test_context_manager(traced: tuple[OtelTracer, InMemoryLightningStore, AttemptedRollout]) -> None:
    tracer, _, rollout = traced
    async with tracer.trace_context(rollout_id=rollout.rollout_id, attempt_id=rollout.attempt.attempt_id):
        with operation(step="plan") as op:
            assert isinstance(op, OperationContext)
            op.set_input("first", {"k": 1}, temperature=0.2)
            op.set_output(["a", "b"])
        async with operation(name="async-block") as aop:
            aop.set_output(None)

    sync_span, async_span = ops(tracer.get_last_trace())
    assert sync_span.attributes == {
        "step": "plan",
        "agentlightning.operation.input.args.0": "first",
        "agentlightning.operation.input.args.1.k": 1,
        "agentlightning.operation.input.temperature": 0.2,
        "agentlightning.operation.output": ["a", "b"],
    }
    assert async_span.attributes["agentlightning.operation.name"] == "async-block"
    recorded = op.span()
    assert recorded.name == "agentlightning.operation"
    assert recorded.attributes == sync_span.attributes
    assert recorded.end_time is not None


def test_context_manager_records_exception_and_reraises(active: DummyTracer) -> None:
    with pytest.raises(RuntimeError, match="inner"):
        with operation() as op:
            raise RuntimeError("inner")
    span = op.span()
    assert span.status.status_code == "ERROR"
    assert span.attributes["exception.type"] == "RuntimeError"


def test_context_manager_misuse(active: DummyTracer) -> None:
    op = operation()
    with pytest.raises(RuntimeError, match="inside the `with` block"):
        op.set_input(1)
    with pytest.raises(RuntimeError, match="inside the `with` block"):
        op.span()
    with op:
        with pytest.raises(RuntimeError, match="already in use"):
            op.__enter__()
        assert op.span().end_time is None


def test_tracer_is_looked_up_when_the_operation_is_created() -> None:
    with pytest.raises(RuntimeError, match="No active tracer found"):

        @operation
        def f() -> None:
            pass

    with pytest.raises(RuntimeError, match="No active tracer found"):
        operation(name="x")

    @operation(propagate=False)
    def g(a: int) -> int:
        return a + 1

    assert g(1) == 2
    with operation(propagate=False, custom=1) as op:
        op.set_output(3)
    assert op.span().attributes == {"custom": 1, "agentlightning.operation.output": 3}


def test_name_conflicts_with_explicit_name_attribute() -> None:
    with pytest.raises(ValueError, match="either name= or"):
        operation(name="a", propagate=False, **{"agentlightning.operation.name": "b"})
    with operation(propagate=False, **{"agentlightning.operation.name": "b"}) as op:
        pass
    assert op.span().attributes["agentlightning.operation.name"] == "b"


def test_decorating_a_non_callable_fails(active: DummyTracer) -> None:
    with pytest.raises(TypeError, match="callable"):
        operation()(42)  # type: ignore[arg-type]


def test_unserialisable_inputs_are_stringified(active: DummyTracer) -> None:
    class Thing:
        def __str__(self) -> str:
            return "thing!"

    with operation() as op:
        op.set_input(Thing(), values=[1, "mixed"])
    attrs = op.span().attributes
    assert attrs["agentlightning.operation.input.args.0"] == '"thing!"'
    assert attrs["agentlightning.operation.input.values"] == '[1, "mixed"]'
