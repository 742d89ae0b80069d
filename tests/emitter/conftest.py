"""Emitter tests run with a DummyTracer active unless they say otherwise."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agl.tracer import DummyTracer, clear_active_tracer, set_active_tracer


@pytest.fixture(autouse=True)
def _clean_active_tracer() -> Iterator[None]:
    clear_active_tracer()
    yield
    clear_active_tracer()


@pytest.fixture
def active() -> Iterator[DummyTracer]:
    tracer = DummyTracer()
    set_active_tracer(tracer)
    yield tracer
    clear_active_tracer()
