"""Fixtures of the store conformance suite: a fake clock and one fresh store per backend in `BACKENDS`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agl.store.base import LightningStore
from tests.store.backends import BACKENDS
from tests.store.clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    """A clock that only moves on `clock.advance(seconds)`; every store in a test reads time from it."""
    return FakeClock()


# PostgreSQL through the HTTP server repeats the in-process PostgreSQL and the HTTP runs' coverage at the highest
# cost per test: it runs with the slow tests (CI), keeping the default run short.
_SLOW_BACKENDS = {"http-postgres"}


@pytest.fixture(
    params=[pytest.param(name, marks=pytest.mark.slow) if name in _SLOW_BACKENDS else name for name in BACKENDS],
    ids=list(BACKENDS),
)
async def store(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[LightningStore]:
    """A fresh, empty store of each backend, reading time from `clock` and scanning health on every call."""
    factory = BACKENDS[request.param]
    async with factory(clock) as instance:
        yield instance
