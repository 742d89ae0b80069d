"""A full store refuses spans with a retryable StoreFullError (HTTP 507), and writers back off and retry."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from agl.store.client import LightningStoreClient
from agl.store.errors import StoreFullError, retry_when_full
from agl.store.memory import InMemoryLightningStore
from agl.store.server import LightningStoreServer
from agl.types import Span
from tests.store.helpers import make_span


def _full_store() -> InMemoryLightningStore:
    # 100 B of span memory and no disk spill at all: the third 40 B span cannot be placed anywhere.
    return InMemoryLightningStore(
        memory_capacity_bytes=1000,
        eviction_memory_threshold=100,
        safe_memory_threshold=50,
        span_size_estimator=lambda span: 40,
        spill_max_bytes=0,
    )


async def test_http_client_raises_store_full_on_507() -> None:
    store = _full_store()
    server = LightningStoreServer(store, port=0)
    server.start()
    client = LightningStoreClient(server.endpoint, retry_delays=(0.05,), health_retry_delays=())
    try:
        rollout = await client.start_rollout({"q": 1})
        aid = rollout.attempt.attempt_id
        await client.add_many_spans([make_span(rollout.rollout_id, aid, i) for i in (1, 2)])
        with pytest.raises(StoreFullError, match="retry later"):
            await client.add_span(make_span(rollout.rollout_id, aid, 3))
        assert len(await client.query_spans(rollout.rollout_id)) == 2  # nothing stored was lost
    finally:
        await client.close()
        server.stop()


class _FullTwice(InMemoryLightningStore):
    """A real store that answers 'full' to the first two span batches."""

    def __init__(self) -> None:
        super().__init__()
        self.refusals = 0

    async def add_many_spans(self, spans: Sequence[Span]) -> Sequence[Span]:
        if self.refusals < 2:
            self.refusals += 1
            raise StoreFullError("no room right now; retry later")
        return await super().add_many_spans(spans)


async def test_tracer_backs_off_and_stores_its_spans_when_the_store_frees_up() -> None:
    from agl.emitter import emit_annotation
    from agl.tracer.otel import OtelTracer

    store = _FullTwice()
    rollout = await store.start_rollout({"q": 1})
    tracer = OtelTracer()
    tracer.init_worker(0, store)
    async with tracer.trace_context(rollout_id=rollout.rollout_id, attempt_id=rollout.attempt.attempt_id):
        emit_annotation({"step": 1})
    assert store.refusals == 2
    assert [s.attributes.get("step") for s in await store.query_spans(rollout.rollout_id)] == [1]
    tracer.teardown_worker(0)


async def test_retry_when_full_gives_up_with_the_last_error() -> None:
    calls = 0

    async def always_full() -> None:
        nonlocal calls
        calls += 1
        raise StoreFullError("full")

    with pytest.raises(StoreFullError):
        await retry_when_full(always_full, delays=(0.01, 0.01))
    assert calls == 3
