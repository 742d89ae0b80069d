"""OtelTracer on the real OpenTelemetry SDK, writing into a real InMemoryLightningStore."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator

import pytest
from opentelemetry import trace as otel_trace

from agl.emitter import emit_message, emit_reward, find_final_reward
from agl.store.memory import InMemoryLightningStore
from agl.tracer.base import get_active_tracer
from agl.tracer.otel import OtelTracer
from agl.types.core import AttemptedRollout
from agl.types.tracer import Span, TraceStatus
from tests.tracer.conftest import CountingStore


@pytest.fixture
async def rollout(store: CountingStore) -> AttemptedRollout:
    return await store.start_rollout(input={"question": "2+2"})


@pytest.fixture
async def tracer(store: CountingStore) -> AsyncIterator[OtelTracer]:
    tracer = OtelTracer()
    tracer.init()
    tracer.init_worker(0, store)
    yield tracer
    tracer.teardown_worker(0)
    tracer.teardown()


def ids(rollout: AttemptedRollout) -> dict[str, str]:
    return {"rollout_id": rollout.rollout_id, "attempt_id": rollout.attempt.attempt_id}


async def stored_spans(store: InMemoryLightningStore, rollout: AttemptedRollout) -> list[Span]:
    return list((await store.query_spans(rollout.rollout_id)).items)


async def test_spans_are_written_in_one_batch_at_exit(
    tracer: OtelTracer, store: CountingStore, rollout: AttemptedRollout
) -> None:
    async with tracer.trace_context("r", **ids(rollout)):
        otel = tracer.get_otel_tracer()
        for i in range(5):
            with otel.start_as_current_span(f"step-{i}"):
                pass
        assert await stored_spans(store, rollout) == []  # still buffered

    assert store.calls["get_many_span_sequence_ids"] == 1
    assert store.calls["add_many_spans"] == 1
    assert store.calls["add_otel_span"] == 0
    assert store.calls["add_span"] == 0
    assert store.calls["get_next_span_sequence_id"] == 0

    spans = await stored_spans(store, rollout)
    assert [s.name for s in spans] == [f"step-{i}" for i in range(5)]
    assert [s.sequence_id for s in spans] == [1, 2, 3, 4, 5]
    assert all(s.rollout_id == rollout.rollout_id and s.attempt_id == rollout.attempt.attempt_id for s in spans)


async def test_get_last_trace_returns_the_stored_spans(
    tracer: OtelTracer, store: CountingStore, rollout: AttemptedRollout
) -> None:
    async with tracer.trace_context(**ids(rollout)):
        with tracer.get_otel_tracer().start_as_current_span("a"):
            pass
    last = tracer.get_last_trace()
    assert last == await stored_spans(store, rollout)
    assert all(isinstance(s, Span) for s in last)
    last.clear()
    assert len(tracer.get_last_trace()) == 1  # a copy is returned


async def test_buffer_is_flushed_when_it_reaches_batch_size(store: CountingStore, rollout: AttemptedRollout) -> None:
    tracer = OtelTracer(batch_size=3, flush_interval=60)
    tracer.init_worker(0, store)
    async with tracer.trace_context(**ids(rollout)):
        otel = tracer.get_otel_tracer()
        for i in range(7):
            with otel.start_as_current_span(f"s{i}"):
                pass
            await asyncio.sleep(0)  # let a scheduled flush run
        await asyncio.sleep(0.01)
        assert len(await stored_spans(store, rollout)) == 6
    assert store.batch_sizes == [3, 3, 1]
    assert store.calls["get_many_span_sequence_ids"] == 3
    assert [s.sequence_id for s in tracer.get_last_trace()] == list(range(1, 8))
    tracer.teardown_worker(0)


async def test_buffer_is_flushed_after_flush_interval(store: CountingStore, rollout: AttemptedRollout) -> None:
    tracer = OtelTracer(batch_size=1000, flush_interval=0.05)
    tracer.init_worker(0, store)
    async with tracer.trace_context(**ids(rollout)):
        with tracer.get_otel_tracer().start_as_current_span("lonely"):
            pass
        for _ in range(100):
            if await stored_spans(store, rollout):
                break
            await asyncio.sleep(0.02)
        assert [s.name for s in await stored_spans(store, rollout)] == ["lonely"]
    assert store.calls["add_many_spans"] == 1  # nothing left for the exit flush
    tracer.teardown_worker(0)


async def test_nested_spans_keep_parent_ids(tracer: OtelTracer, rollout: AttemptedRollout) -> None:
    async with tracer.trace_context(**ids(rollout)):
        with tracer.operation_context("outer") as outer:
            with tracer.get_otel_tracer().start_as_current_span("inner"):
                tracer.create_span("leaf")
        assert outer.get_recorded_span().end_time is not None
    spans = {s.name: s for s in tracer.get_last_trace()}
    assert [s.name for s in tracer.get_last_trace()] == ["leaf", "inner", "outer"]
    assert spans["outer"].parent_id is None
    assert spans["inner"].parent_id == spans["outer"].span_id
    assert spans["leaf"].parent_id == spans["inner"].span_id
    assert len({s.trace_id for s in spans.values()}) == 1


async def test_sequence_ids_keep_increasing_across_contexts(
    tracer: OtelTracer, store: CountingStore, rollout: AttemptedRollout
) -> None:
    for _ in range(3):
        async with tracer.trace_context(**ids(rollout)):
            with tracer.get_otel_tracer().start_as_current_span("x"):
                pass
            with tracer.get_otel_tracer().start_as_current_span("y"):
                pass
    assert [s.sequence_id for s in await stored_spans(store, rollout)] == [1, 2, 3, 4, 5, 6]
    assert [s.sequence_id for s in tracer.get_last_trace()] == [5, 6]


async def test_emitters_inside_the_context_are_stored(
    tracer: OtelTracer, store: CountingStore, rollout: AttemptedRollout
) -> None:
    async with tracer.trace_context(**ids(rollout)):
        assert get_active_tracer() is tracer
        emit_message("thinking")
        emit_reward(0.75)
    assert get_active_tracer() is None
    spans = await stored_spans(store, rollout)
    assert [s.name for s in spans] == ["agentlightning.message", "agentlightning.annotation"]
    assert spans[1].status.status_code == "OK"
    assert find_final_reward(spans) == 0.75


async def test_spans_ended_in_other_threads_are_captured(store: CountingStore, rollout: AttemptedRollout) -> None:
    tracer = OtelTracer(batch_size=2)
    tracer.init_worker(0, store)

    def work(n: int) -> None:
        for i in range(n):
            with tracer.get_otel_tracer().start_as_current_span(f"thread-{threading.get_ident()}-{i}"):
                pass

    async with tracer.trace_context(**ids(rollout)):
        await asyncio.gather(asyncio.to_thread(work, 5), asyncio.to_thread(work, 4))
    spans = await stored_spans(store, rollout)
    assert len(spans) == 9
    assert sorted(s.sequence_id for s in spans) == list(range(1, 10))
    assert len(tracer.get_last_trace()) == 9
    assert store.batch_sizes and max(store.batch_sizes) <= 2
    tracer.teardown_worker(0)


async def test_without_ids_spans_are_captured_locally(store: CountingStore) -> None:
    tracer = OtelTracer()
    tracer.init_worker(0)
    async with tracer.trace_context("local"):
        for name in ("a", "b", "c"):
            with tracer.get_otel_tracer().start_as_current_span(name):
                pass
    spans = tracer.get_last_trace()
    assert [s.name for s in spans] == ["a", "b", "c"]
    assert {s.rollout_id for s in spans} == {"rollout-dummy"}
    assert {s.attempt_id for s in spans} == {"attempt-dummy"}
    seqs = [s.sequence_id for s in spans]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3 and seqs[0] >= 0
    assert sum(store.calls.values()) == 0
    tracer.teardown_worker(0)


async def test_store_of_init_worker_is_not_used_without_ids(
    tracer: OtelTracer, store: CountingStore, rollout: AttemptedRollout
) -> None:
    async with tracer.trace_context():
        with tracer.get_otel_tracer().start_as_current_span("a"):
            pass
    assert sum(store.calls.values()) == 0
    assert [s.rollout_id for s in tracer.get_last_trace()] == ["rollout-dummy"]


async def test_only_one_id_is_rejected(tracer: OtelTracer, rollout: AttemptedRollout) -> None:
    with pytest.raises(ValueError, match="rollout_id and attempt_id"):
        async with tracer.trace_context(rollout_id=rollout.rollout_id):
            pass
    with pytest.raises(ValueError, match="rollout_id and attempt_id"):
        async with tracer.trace_context(attempt_id=rollout.attempt.attempt_id):
            pass
    assert get_active_tracer() is None


async def test_ids_without_a_store_are_rejected(rollout: AttemptedRollout) -> None:
    tracer = OtelTracer()
    tracer.init_worker(0)
    with pytest.raises(ValueError, match="needs a store"):
        async with tracer.trace_context(**ids(rollout)):
            pass
    tracer.teardown_worker(0)


async def test_store_argument_is_deprecated_but_works(store: CountingStore, rollout: AttemptedRollout) -> None:
    tracer = OtelTracer()
    tracer.init_worker(0)
    with pytest.warns(DeprecationWarning, match="init_worker"):
        async with tracer.trace_context(store=store, **ids(rollout)):
            with tracer.get_otel_tracer().start_as_current_span("a"):
                pass
    assert len(await stored_spans(store, rollout)) == 1
    tracer.teardown_worker(0)


class FailingStore(CountingStore):
    async def add_many_spans(self, spans: object) -> list[Span]:  # type: ignore[override]
        raise ConnectionError("store is down")


async def test_store_failures_keep_spans_locally(caplog: pytest.LogCaptureFixture) -> None:
    store = FailingStore()
    rollout = await store.start_rollout(input=1)
    tracer = OtelTracer()
    tracer.init_worker(0, store)
    with caplog.at_level(logging.ERROR, logger="agl.tracer.otel"):
        async with tracer.trace_context(**ids(rollout)):
            with tracer.get_otel_tracer().start_as_current_span("a"):
                pass
    assert [s.name for s in tracer.get_last_trace()] == ["a"]
    assert "kept locally" in caplog.text
    tracer.teardown_worker(0)


async def test_spans_outside_a_context_are_ignored(
    tracer: OtelTracer, store: CountingStore, rollout: AttemptedRollout
) -> None:
    with tracer.get_otel_tracer().start_as_current_span("before"):
        pass
    async with tracer.trace_context(**ids(rollout)):
        with tracer.get_otel_tracer().start_as_current_span("during"):
            pass
    with tracer.get_otel_tracer().start_as_current_span("after"):
        pass
    assert [s.name for s in await stored_spans(store, rollout)] == ["during"]


async def test_active_tracer_is_cleared_when_the_body_raises(tracer: OtelTracer, rollout: AttemptedRollout) -> None:
    with pytest.raises(RuntimeError, match="agent failed"):
        async with tracer.trace_context(**ids(rollout)):
            with tracer.get_otel_tracer().start_as_current_span("a"):
                pass
            raise RuntimeError("agent failed")
    assert get_active_tracer() is None
    assert [s.name for s in tracer.get_last_trace()] == ["a"]


async def test_a_second_active_tracer_is_rejected(tracer: OtelTracer, rollout: AttemptedRollout) -> None:
    other = OtelTracer()
    other.init_worker(1)
    async with tracer.trace_context(**ids(rollout)):
        with pytest.raises(ValueError, match="already"):
            async with other.trace_context():
                pass
        with pytest.raises(ValueError, match="already"):
            async with tracer.trace_context():
                pass
        assert get_active_tracer() is tracer
    assert get_active_tracer() is None
    other.teardown_worker(1)


def test_create_span_returns_its_fields() -> None:
    tracer = OtelTracer()
    fields = tracer.create_span(
        "event", {"k": [1, 2], "s": "v"}, timestamp=1000.5, status=TraceStatus(status_code="OK")
    )
    assert fields.name == "event"
    assert fields.attributes == {"k": [1, 2], "s": "v"}
    assert fields.start_time == fields.end_time == 1000.5
    assert fields.status.status_code == "OK"
    error = tracer.create_span("bad", status=TraceStatus(status_code="ERROR", description="why"))
    assert error.status == TraceStatus(status_code="ERROR", description="why")
    assert tracer.create_span("plain").status.status_code == "UNSET"
    tracer.teardown_worker(0)


async def test_operation_context_records_exceptions(tracer: OtelTracer, rollout: AttemptedRollout) -> None:
    async with tracer.trace_context(**ids(rollout)):
        with pytest.raises(KeyError):
            with tracer.operation_context("op", {"a": 1}) as ctx:
                ctx.record_attributes({"b": 2})
                raise KeyError("missing")
    recorded = ctx.get_recorded_span()
    assert recorded.status.status_code == "ERROR"
    assert recorded.attributes == {"a": 1, "b": 2}
    (span,) = tracer.get_last_trace()
    assert span.status.status_code == "ERROR"
    assert [e.name for e in span.events] == ["exception"]
    assert span.events[0].attributes["exception.type"] == "KeyError"


async def test_operation_context_status_and_start_time(tracer: OtelTracer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="agl.tracer.otel"):
        with tracer.operation_context("op", start_time=50.0, end_time=60.0) as ctx:
            ctx.record_status("OK")
    span = ctx.get_recorded_span()
    assert span.start_time == 50.0
    assert span.end_time is not None and span.end_time > 60.0
    assert span.status.status_code == "OK"
    assert "end_time" in caplog.text
    with pytest.raises(ValueError, match="status_code"):
        with tracer.operation_context("op") as ctx:
            ctx.record_status("FINE")  # type: ignore[arg-type]


def test_global_provider_is_set_once_and_not_replaced() -> None:
    first = OtelTracer()
    first.init_worker(0)
    installed = otel_trace.get_tracer_provider()
    assert not isinstance(installed, otel_trace.ProxyTracerProvider)
    second = OtelTracer()
    second.init_worker(0)
    assert otel_trace.get_tracer_provider() is installed
    assert second.provider is not first.provider
    first.teardown_worker(0)
    second.teardown_worker(0)


def test_constructor_validates_arguments() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        OtelTracer(batch_size=0)
    with pytest.raises(ValueError, match="flush_interval"):
        OtelTracer(flush_interval=0)


async def test_lifespan_initialises_and_tears_down(store: CountingStore) -> None:
    rollout = await store.start_rollout(input=1)
    tracer = OtelTracer()
    with tracer.lifespan(store) as same:
        assert same is tracer
        assert tracer.store is store and tracer.worker_id == 0
        async with tracer.trace_context(**ids(rollout)):
            with tracer.get_otel_tracer().start_as_current_span("a"):
                pass
    assert len(await stored_spans(store, rollout)) == 1


async def test_store_with_trace_joins_the_exit_batch_last(
    tracer: OtelTracer, store: CountingStore, rollout: AttemptedRollout
) -> None:
    async with tracer.trace_context("r", **ids(rollout)):
        with tracer.get_otel_tracer().start_as_current_span("step"):
            pass
        assert tracer.store_with_trace(emit_reward(0.5, propagate=False))

    assert store.calls == {"get_many_span_sequence_ids": 1, "add_many_spans": 1}
    spans = await stored_spans(store, rollout)
    assert [s.name for s in spans] == ["step", "agentlightning.annotation"]
    assert [s.sequence_id for s in spans] == [1, 2]
    assert [s.name for s in tracer.get_last_trace()] == ["step", "agentlightning.annotation"]
    assert find_final_reward(spans) == 0.5


async def test_store_with_trace_outside_a_context_or_without_a_store_declines(store: CountingStore) -> None:
    tracer = OtelTracer()
    tracer.init()
    tracer.init_worker(0)
    try:
        assert not tracer.store_with_trace(emit_reward(1.0, propagate=False))
        async with tracer.trace_context("no store"):
            assert not tracer.store_with_trace(emit_reward(1.0, propagate=False))
    finally:
        tracer.teardown_worker(0)
        tracer.teardown()


async def test_a_queued_span_that_cannot_be_stored_fails_the_context_exit(
    tracer: OtelTracer, store: CountingStore, rollout: AttemptedRollout, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(spans: object) -> None:
        raise ConnectionError("store down")

    monkeypatch.setattr(store, "add_many_spans", broken)
    with pytest.raises(RuntimeError, match=r"store_with_trace.*store down"):
        async with tracer.trace_context("r", **ids(rollout)):
            assert tracer.store_with_trace(emit_reward(0.5, propagate=False))


async def test_runner_stores_traced_spans_and_reward_with_one_allocation_and_one_write(store: CountingStore) -> None:
    from agl.litagent import LitAgent
    from agl.runner import LitAgentRunner

    class Traced(LitAgent[int]):
        async def rollout_async(self, task: int, resources: object, rollout: object) -> float:
            for i in range(task):
                emit_message(f"step {i}")
            return 0.25

    tracer = OtelTracer()
    runner = LitAgentRunner[int](tracer, max_rollouts=1, heartbeat_interval=0)
    runner.init(Traced())
    runner.init_worker(0, store)
    try:
        queued = await store.enqueue_rollout(3)
        await asyncio.wait_for(runner.iter(), 10)
    finally:
        runner.teardown_worker(0)
        runner.teardown()
    done = await store.get_rollout_by_id(queued.rollout_id)
    assert done is not None and done.status == "succeeded"
    assert store.calls == {"get_many_span_sequence_ids": 1, "add_many_spans": 1}
    spans = list((await store.query_spans(queued.rollout_id)).items)
    assert [s.sequence_id for s in spans] == [1, 2, 3, 4]
    assert find_final_reward(spans) == 0.25 and spans[-1].name == "agentlightning.annotation"
