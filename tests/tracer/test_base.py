"""The Tracer base class, the active-tracer registry and DummyTracer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from agl.store.memory import InMemoryLightningStore
from agl.tracer import DummyTracer, Tracer, clear_active_tracer, get_active_tracer, set_active_tracer


class RecordingTracer(Tracer):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Any] = []

    def init(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append("init")

    def init_worker(self, worker_id: int, store: InMemoryLightningStore | None = None) -> None:  # type: ignore[override]
        super().init_worker(worker_id, store)
        self.calls.append(("init_worker", worker_id, store))

    def teardown_worker(self, worker_id: int) -> None:
        self.calls.append(("teardown_worker", worker_id))

    def teardown(self) -> None:
        self.calls.append("teardown")

    @asynccontextmanager
    async def trace_context(self, name: str | None = None, **kwargs: Any) -> AsyncIterator[RecordingTracer]:
        self.calls.append(("trace_context", name))
        yield self


def test_lifespan_runs_the_lifecycle_in_order() -> None:
    store = InMemoryLightningStore()
    tracer = RecordingTracer()
    with tracer.lifespan(store) as inside:
        assert inside is tracer
        assert tracer.calls == ["init", ("init_worker", 0, store)]
    assert tracer.calls[2:] == [("teardown_worker", 0), "teardown"]
    assert tracer.store is store and tracer.worker_id == 0


def test_lifespan_tears_down_on_error() -> None:
    tracer = RecordingTracer()
    with pytest.raises(RuntimeError):
        with tracer.lifespan():
            raise RuntimeError("boom")
    assert tracer.calls[-2:] == [("teardown_worker", 0), "teardown"]


def test_base_methods_that_need_a_backend_raise() -> None:
    tracer = Tracer()
    with pytest.raises(NotImplementedError):
        tracer.get_last_trace()
    with pytest.raises(NotImplementedError):
        tracer.create_span("x")
    with pytest.raises(NotImplementedError):
        tracer.trace_context()


def test_langchain_handler_is_none_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    assert DummyTracer().get_langchain_handler() is None
    assert "LangChain" in caplog.text


def test_deprecated_trace_run_helpers() -> None:
    tracer = RecordingTracer()
    with pytest.warns(DeprecationWarning):
        assert tracer.trace_run(lambda a, b: a + b, 1, b=2) == 3

    async def twice(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    with pytest.warns(DeprecationWarning):
        assert asyncio.run(tracer.trace_run_async(twice, 4)) == 8
    assert tracer.calls == [("trace_context", None), ("trace_context", None)]


def test_registry_set_get_clear() -> None:
    assert get_active_tracer() is None
    first, second = DummyTracer(), DummyTracer()
    set_active_tracer(first)
    assert get_active_tracer() is first
    with pytest.raises(ValueError, match="already set"):
        set_active_tracer(second)
    with pytest.raises(ValueError, match="already set"):
        set_active_tracer(first)
    assert get_active_tracer() is first
    clear_active_tracer()
    assert get_active_tracer() is None
    clear_active_tracer()  # no-op
    set_active_tracer(second)
    assert get_active_tracer() is second


def test_registry_rejects_non_tracers() -> None:
    with pytest.raises(TypeError, match="tracer must be a Tracer"):
        set_active_tracer(object())  # type: ignore[arg-type]


async def test_dummy_trace_context_activates_and_records_nothing() -> None:
    tracer = DummyTracer()
    async with tracer.trace_context("x", rollout_id="r", attempt_id="a") as inside:
        assert inside is tracer
        assert get_active_tracer() is tracer
        tracer.create_span("event")
    assert get_active_tracer() is None
    assert tracer.get_last_trace() == []
    with pytest.raises(ValueError, match="together"):
        async with tracer.trace_context(rollout_id="r"):
            pass


def test_dummy_create_span() -> None:
    span = DummyTracer().create_span("n", {"a": 1}, timestamp=12.0)
    assert (span.name, span.attributes, span.start_time, span.end_time) == ("n", {"a": 1}, 12.0, 12.0)
    assert span.status.status_code == "UNSET"


def test_dummy_operation_context() -> None:
    tracer = DummyTracer()
    with tracer.operation_context("op", {"a": 1}, start_time=5.0, end_time=9.0) as ctx:
        ctx.record_attributes({"b": 2})
        ctx.record_status("OK", "fine")
    span = ctx.get_recorded_span()
    assert span.attributes == {"a": 1, "b": 2}
    assert (span.start_time, span.end_time) == (5.0, 9.0)
    assert span.status.status_code == "OK"

    with pytest.raises(ZeroDivisionError):
        with tracer.operation_context("failing") as failing:
            _ = 1 / 0
    failed = failing.get_recorded_span()
    assert failed.status.status_code == "ERROR"
    assert failed.attributes["exception.type"] == "ZeroDivisionError"
    assert "ZeroDivisionError" in failed.attributes["exception.stacktrace"]
    assert failed.end_time is not None

    with pytest.raises(ValueError, match="status_code"):
        ctx.record_status("BAD")  # type: ignore[arg-type]
