"""`LightningSpanProcessor` used on its own, as Agent Lightning's processor is, on the real SDK and a real store."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer as SdkTracer

from agl.tracer.otel import LightningSpanProcessor, OtelTracer
from agl.types.core import AttemptedRollout
from tests.tracer.conftest import CountingStore


@pytest.fixture
def processor() -> Iterator[LightningSpanProcessor]:
    processor = LightningSpanProcessor(batch_size=2)
    try:
        yield processor
    finally:
        processor.shutdown()


@pytest.fixture
def otel(processor: LightningSpanProcessor) -> Iterator[SdkTracer]:
    provider = TracerProvider()
    provider.add_span_processor(processor)
    try:
        yield provider.get_tracer("test")
    finally:
        provider.shutdown()


@pytest.fixture
def rollout(store: CountingStore) -> AttemptedRollout:
    return asyncio.run(store.start_rollout(input=1))


def _end(otel: SdkTracer, *names: str) -> None:
    for name in names:
        with otel.start_as_current_span(name):
            pass


def test_with_context_stores_spans_in_batches_and_returns_the_stored_copies(
    processor: LightningSpanProcessor, otel: SdkTracer, store: CountingStore, rollout: AttemptedRollout
) -> None:
    rid, aid = rollout.rollout_id, rollout.attempt.attempt_id
    assert (processor.store, processor.rollout_id, processor.attempt_id) == (None, None, None)
    with processor.with_context(store, rid, aid) as entered:
        assert entered is processor
        assert (processor.store, processor.rollout_id, processor.attempt_id) == (store, rid, aid)
        assert "rollout_id=" + repr(rid) in repr(processor)
        _end(otel, "s0", "s1", "s2", "s3", "s4")
    assert (processor.store, processor.rollout_id, processor.attempt_id) == (None, None, None)
    assert [(s.name, s.rollout_id, s.attempt_id) for s in processor.spans()] == [(f"s{i}", rid, aid) for i in range(5)]
    stored = asyncio.run(store.query_spans(rid))
    assert [s.name for s in stored] == [f"s{i}" for i in range(5)]
    assert [s.sequence_id for s in processor.spans()] == [s.sequence_id for s in stored]
    # Batched: two spans per write (the last write takes the remaining one), never one call per span.
    assert store.calls["add_many_spans"] == 3 and sorted(store.batch_sizes) == [1, 2, 2]
    assert store.calls["add_otel_span"] == store.calls["add_span"] == 0


def test_spans_inside_the_block_are_stored_when_asked_for(
    processor: LightningSpanProcessor, otel: SdkTracer, store: CountingStore, rollout: AttemptedRollout
) -> None:
    with processor.with_context(store, rollout.rollout_id, rollout.attempt.attempt_id):
        _end(otel, "only")
        assert store.calls["add_many_spans"] == 0  # buffered: the batch is not full
        assert [s.name for s in processor.spans()] == ["only"]  # spans() writes the buffer first
        assert store.calls["add_many_spans"] == 1
        _end(otel, "next")
        assert processor.force_flush(5000) is True
        assert store.calls["add_many_spans"] == 2
    assert len(asyncio.run(store.query_spans(rollout.rollout_id))) == 2


def test_spans_outside_any_context_are_kept_locally_with_placeholder_ids(
    processor: LightningSpanProcessor, otel: SdkTracer, store: CountingStore, rollout: AttemptedRollout
) -> None:
    _end(otel, "stray")
    assert [(s.name, s.rollout_id, s.attempt_id) for s in processor.spans()] == [
        ("stray", "rollout-dummy", "attempt-dummy")
    ]
    with processor.with_context(store, rollout.rollout_id, rollout.attempt.attempt_id):
        assert processor.spans() == []  # a new context starts over
        _end(otel, "inside")
    _end(otel, "after")
    # After the block: its spans, then those that ended outside any context since.
    assert [(s.name, s.rollout_id) for s in processor.spans()] == [
        ("inside", rollout.rollout_id),
        ("after", "rollout-dummy"),
    ]
    assert [s.name for s in asyncio.run(store.query_spans(rollout.rollout_id))] == ["inside"]
    with processor:
        _end(otel, "local")
        assert [(s.name, s.rollout_id) for s in processor.spans()] == [("local", "rollout-dummy")]


def test_disabled_submission_keeps_spans_locally_under_the_context_ids(
    processor: LightningSpanProcessor, otel: SdkTracer, store: CountingStore, rollout: AttemptedRollout
) -> None:
    processor.disable_store_submission = True
    with processor.with_context(store, rollout.rollout_id, rollout.attempt.attempt_id):
        _end(otel, "kept")
    assert [(s.name, s.rollout_id) for s in processor.spans()] == [("kept", rollout.rollout_id)]
    assert asyncio.run(store.query_spans(rollout.rollout_id)) == []
    assert LightningSpanProcessor(True).disable_store_submission is True


async def test_with_context_works_inside_a_running_event_loop(
    processor: LightningSpanProcessor, otel: SdkTracer, store: CountingStore, rollout: AttemptedRollout
) -> None:
    with processor.with_context(store, rollout.rollout_id, rollout.attempt.attempt_id):
        _end(otel, "a", "b", "c")
    assert [s.name for s in processor.spans()] == ["a", "b", "c"]
    assert [s.name for s in await store.query_spans(rollout.rollout_id)] == ["a", "b", "c"]


def test_shutdown_stops_the_writer_thread(
    processor: LightningSpanProcessor, store: CountingStore, rollout: AttemptedRollout
) -> None:
    before = set(threading.enumerate())
    with processor.with_context(store, rollout.rollout_id, rollout.attempt.attempt_id):
        pass
    (writer,) = [t for t in set(threading.enumerate()) - before if t.name == "agl-span-writer"]
    processor.shutdown()
    assert not writer.is_alive()


async def test_the_tracer_s_processor_reports_the_open_trace_context(
    store: CountingStore, rollout: AttemptedRollout
) -> None:
    tracer = OtelTracer()
    tracer.init_worker(0, store)
    try:
        processor = tracer._processor
        assert isinstance(processor, LightningSpanProcessor)
        async with tracer.trace_context("r", rollout_id=rollout.rollout_id, attempt_id=rollout.attempt.attempt_id):
            assert (processor.rollout_id, processor.attempt_id) == (rollout.rollout_id, rollout.attempt.attempt_id)
            with tracer.get_otel_tracer().start_as_current_span("traced"):
                pass
        assert processor.rollout_id is None
        assert [s.name for s in processor.spans()] == ["traced"] == [s.name for s in tracer.get_last_trace()]
    finally:
        tracer.teardown_worker(0)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        LightningSpanProcessor(batch_size=0)
    with pytest.raises(ValueError, match="flush_interval"):
        LightningSpanProcessor(flush_interval=0)
    with pytest.raises(ValueError, match="flush_timeout"):
        LightningSpanProcessor(flush_timeout=-1)


def test_spans_outside_any_context_are_bounded(
    processor: LightningSpanProcessor, otel: SdkTracer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import agl.tracer.otel_capture as capture

    assert capture.STRAY_SPAN_LIMIT == 10_000
    monkeypatch.setattr(capture, "STRAY_SPAN_LIMIT", 3)
    _end(otel, "a", "b", "c", "d", "e")
    assert [s.name for s in processor.spans()] == ["a", "b", "c"]
