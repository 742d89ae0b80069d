"""Shared fixtures for tracer tests: a counting in-memory store and a clean active-tracer registry."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from agl.store.memory import InMemoryLightningStore
from agl.tracer.base import clear_active_tracer
from agl.types.tracer import Span


class CountingStore(InMemoryLightningStore):
    """The real in-memory store, counting the span-writing calls it receives."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: Counter[str] = Counter()
        self.batch_sizes: list[int] = []

    async def add_span(self, span: Span) -> Span | None:
        self.calls["add_span"] += 1
        return await super().add_span(span)

    async def add_many_spans(self, spans: Sequence[Span]) -> Sequence[Span]:
        self.calls["add_many_spans"] += 1
        self.batch_sizes.append(len(spans))
        return await super().add_many_spans(spans)

    async def add_otel_span(
        self, rollout_id: str, attempt_id: str, readable_span: Any, sequence_id: int | None = None
    ) -> Span | None:
        self.calls["add_otel_span"] += 1
        return await super().add_otel_span(rollout_id, attempt_id, readable_span, sequence_id)

    async def get_next_span_sequence_id(self, rollout_id: str, attempt_id: str) -> int:
        self.calls["get_next_span_sequence_id"] += 1
        return await super().get_next_span_sequence_id(rollout_id, attempt_id)

    async def get_many_span_sequence_ids(self, rollout_attempt_ids: Sequence[tuple[str, str]]) -> Sequence[int]:
        self.calls["get_many_span_sequence_ids"] += 1
        return await super().get_many_span_sequence_ids(rollout_attempt_ids)


@pytest.fixture(autouse=True)
def _clean_active_tracer() -> Iterator[None]:
    clear_active_tracer()
    yield
    clear_active_tracer()


@pytest.fixture
def store() -> CountingStore:
    return CountingStore()
