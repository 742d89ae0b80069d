"""Draining: runners on other machines (role=runner) learn of the stop from the store server's health route."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psutil
import pytest

from agl.execution import ClientServerExecutionStrategy, DrainWatcher, ThreadingEvent, request_drain
from agl.store.memory import InMemoryLightningStore
from agl.store.server import LightningStoreServer
from tests.execution import bundles
from tests.execution.conftest import free_port


class HealthStub:
    """A tiny server answering `GET /v1/agl/health` with a status the test controls."""

    def __init__(self) -> None:
        self.status = "ok"
        self.code = 200
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps({"status": stub.status}).encode()
                self.send_response(stub.code if self.path == "/v1/agl/health" else 404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def stub() -> Iterator[HealthStub]:
    server = HealthStub()
    yield server
    server.close()


def test_watcher_sets_the_event_when_the_server_drains(stub: HealthStub) -> None:
    event = ThreadingEvent()
    with DrainWatcher(stub.address, event, interval=0.05) as watcher:
        time.sleep(0.2)
        assert not event.is_set()
        stub.status = "draining"
        assert event.wait(1.0)
        assert watcher.drained


def test_watcher_accepts_a_draining_body_on_an_error_status(stub: HealthStub) -> None:
    stub.status, stub.code = "draining", 503
    assert DrainWatcher(stub.address, ThreadingEvent()).poll_once()


def test_watcher_keeps_going_while_the_server_is_unreachable() -> None:
    event = ThreadingEvent()
    with DrainWatcher("http://127.0.0.1:9", event, interval=0.05, timeout=0.2) as watcher:
        time.sleep(0.2)
        assert watcher.probe() is None
    assert not event.is_set()


def test_with_several_servers_any_one_draining_stops_and_an_unreachable_one_says_nothing(stub: HealthStub) -> None:
    event = ThreadingEvent()
    with DrainWatcher(f"http://127.0.0.1:9,{stub.address}", event, interval=0.05, timeout=0.2) as watcher:
        assert watcher.probe() == "ok"
        time.sleep(0.2)
        assert not event.is_set()
        stub.status = "draining"
        assert event.wait(2.0)
    assert watcher.urls[0].startswith("http://127.0.0.1:9/v1/agl/health?watcher=")


def test_request_drain_calls_begin_drain_when_the_store_has_it() -> None:
    class Drainable:
        drained = False

        def begin_drain(self) -> None:
            self.drained = True

    target = Drainable()
    assert request_drain(target) is True and target.drained
    assert request_drain(InMemoryLightningStore()) is False


def test_remote_runner_processes_stop_cleanly_when_the_server_drains(
    stub: HealthStub, caplog: pytest.LogCaptureFixture
) -> None:
    strategy = ClientServerExecutionStrategy(
        role="runner", server_host="127.0.0.1", server_port=stub.port, n_runners=2,
        graceful_timeout=2.0, terminate_timeout=0.5, drain_poll_interval=0.05,
    )  # fmt: skip
    timer = threading.Timer(0.5, lambda: setattr(stub, "status", "draining"))
    timer.start()
    started = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING):
            strategy.execute(bundles.algorithm_raises, bundles.runner_cooperative, InMemoryLightningStore())
    finally:
        timer.cancel()
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 2.0
    assert "stopped by" not in caplog.text


def test_in_process_remote_runner_stops_when_the_server_drains(stub: HealthStub) -> None:
    strategy = ClientServerExecutionStrategy(
        role="runner", server_host="127.0.0.1", server_port=stub.port, n_runners=1, drain_poll_interval=0.05
    )
    timer = threading.Timer(0.3, lambda: setattr(stub, "status", "draining"))
    timer.start()
    started = time.monotonic()
    try:
        strategy.execute(bundles.algorithm_raises, bundles.runner_cooperative, InMemoryLightningStore())
    finally:
        timer.cancel()
    assert time.monotonic() - started < 1.5


def test_runner_arriving_at_a_draining_server_does_nothing(stub: HealthStub) -> None:
    stub.status = "draining"
    started = time.monotonic()
    ClientServerExecutionStrategy(role="runner", server_host="127.0.0.1", server_port=stub.port).execute(
        bundles.algorithm_raises, bundles.runner_crashes, InMemoryLightningStore()
    )
    assert time.monotonic() - started < 1.0


def test_remote_runner_waits_for_a_late_server() -> None:
    """A runner started before its server polls the health route until the server answers, then claims at once."""
    port = free_port()
    backing = InMemoryLightningStore()
    asyncio.run(backing.enqueue_rollout(input={"x": 1}))
    late = LightningStoreServer(backing, host="127.0.0.1", port=port)
    timer = threading.Timer(0.4, late.start)
    timer.start()
    strategy = ClientServerExecutionStrategy(
        role="runner", server_host="127.0.0.1", server_port=port, graceful_timeout=0.5, terminate_timeout=0.5
    )
    started = time.monotonic()
    try:
        strategy.execute(bundles.algorithm_raises, bundles.runner_claims_one, InMemoryLightningStore())
        elapsed = time.monotonic() - started
    finally:
        timer.join()
        late.stop()
    assert 0.4 <= elapsed < 1.5
    assert [r.status for r in asyncio.run(backing.query_rollouts())] == ["succeeded"]


@pytest.mark.skipif(not hasattr(LightningStoreServer, "begin_drain"), reason="the store server has no begin_drain()")
def test_role_algorithm_drains_real_remote_runners() -> None:
    """End to end: role=algorithm in this process, role=runner (2 processes) in another strategy in a thread."""
    store = InMemoryLightningStore()
    server_port: list[int] = []
    runner_error: list[BaseException] = []

    async def algorithm(s: Any, event: Any) -> None:
        server_port.append(s.port)
        await bundles.algorithm_enqueue_and_wait(s, event)

    def remote() -> None:
        while not server_port:
            time.sleep(0.01)
        try:
            ClientServerExecutionStrategy(
                role="runner", server_host="127.0.0.1", server_port=server_port[0], n_runners=2,
                graceful_timeout=2.0, terminate_timeout=0.5, drain_poll_interval=0.05,
            ).execute(bundles.algorithm_raises, bundles.runner_claims, InMemoryLightningStore())  # fmt: skip
        except BaseException as exc:
            runner_error.append(exc)

    thread = threading.Thread(target=remote, daemon=True)
    thread.start()
    try:
        ClientServerExecutionStrategy(
            role="algorithm", server_host="127.0.0.1", server_port=0, graceful_timeout=2.0
        ).execute(algorithm, bundles.runner_claims, store)
        thread.join(30)  # generous: on a loaded 2-core machine process start-up alone can take seconds
        assert not thread.is_alive() and not runner_error
    finally:
        # Never leave the remote side's runner processes behind, even when the assertion fails.
        for child in psutil.Process().children(recursive=True):
            child.kill()
