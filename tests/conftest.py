"""Test-wide options and shared fixtures: slow tests run only with --run-slow (CI passes it), the others with torch on
one thread (OMP_NUM_THREADS=1 unless set); the session's throwaway PostgreSQL server (tests/store/postgres_server.py),
if a test started one, is stopped at the end; `llm_backend` is the fake OpenAI-compatible endpoint of the LLM proxy
and docs/endpoints.md tests."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.llm.backend import Backend


@pytest.fixture
def postgres_dsn() -> Iterator[str]:
    """The DSN (libpq URL) of a database of this test's own on the session's throwaway PostgreSQL server, holding
    the store's empty tables; skips without PostgreSQL (fails with AGL_REQUIRE_POSTGRES=1). Stores and `agl store
    --backend postgres --dsn ...` processes given it share that one database."""
    from tests.store.postgres_server import fresh_database

    with fresh_database() as dsn:
        yield dsn


@pytest.fixture(scope="session", autouse=True)
def _stop_postgres_at_the_end() -> Iterator[None]:
    """Stop and delete the throwaway PostgreSQL cluster after the session, also when tests failed."""
    yield
    from tests.store.postgres_server import stop_postgres_cluster

    stop_postgres_cluster()


def pytest_configure(config: pytest.Config) -> None:
    # Tests press Ctrl+C on the processes they start (SIGINT). Started from a background job or nohup, the test run
    # itself has SIGINT ignored, which every process it starts would inherit: put back the terminal's behaviour.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # The default run's torch tests use tiny models, where torch's intra-op threads gain nothing, and on a shared
    # 2-core machine two of them spin against each other and every other job (a tiny model's training step measured
    # 0.65 s with two threads and 0.05 s with one under load). One thread, unless the caller chose; inherited by the
    # processes tests start. The slow run (real models) keeps torch's default.
    if not config.getoption("--run-slow"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def llm_backend() -> Iterator[Backend]:
    """A deterministic OpenAI-compatible backend (tests/llm/backend.py's `Backend`) serving on 127.0.0.1 with a free
    port; stopped after the test, also when it failed."""
    from tests.llm.backend import Backend

    server = Backend()
    server.start()
    try:
        yield server
    finally:
        server.stop()
