"""`agl.asgi_serving`: a real uvicorn serving a small ASGI app in a thread, on the running loop and in a process."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from agl.asgi_serving import AsgiServer, AsgiServerProcess
from agl.sockets import PortInUseError, bind_listening_socket


class _App:
    """Answers `GET /` with its name; `GET /slow` after 0.3 s; records lifespan events."""

    def __init__(self, name: str = "app", fail_startup: bool = False) -> None:
        self.name = name
        self.fail_startup = fail_startup
        self.events: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                self.events.append(message["type"])
                if message["type"] == "lifespan.startup":
                    if self.fail_startup:
                        await send({"type": "lifespan.startup.failed", "message": "refused on purpose"})
                        return
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"] == "/slow":
            await asyncio.sleep(0.3)
        body = self.name.encode()
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def make_app(name: str) -> _App:
    """Module level, so a spawned child can build it."""
    return _App(name)


def _get(port: int, path: str = "/") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
        return str(answer.read().decode())


def _port_is_free(port: int) -> bool:
    try:
        with contextlib.closing(bind_listening_socket("127.0.0.1", port, what="probe")):
            return True
    except OSError:
        return False


@pytest.fixture
def threaded() -> Iterator[AsgiServer]:
    server = AsgiServer(_App("threaded"), port=0, name="test server", lifespan="on")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_in_a_thread_on_a_free_port(threaded: AsgiServer) -> None:
    assert threaded.port > 0 and threaded.is_running
    assert _get(threaded.port) == "threaded"
    port = threaded.port
    threaded.stop()
    assert not threaded.is_running
    assert _port_is_free(port)


def test_lifespan_events_bracket_the_serving(threaded: AsgiServer) -> None:
    app = threaded.app
    assert app.events == ["lifespan.startup"]
    threaded.stop()
    assert app.events == ["lifespan.startup", "lifespan.shutdown"]


def test_a_restart_comes_back_on_the_same_port(threaded: AsgiServer) -> None:
    port = threaded.port
    threaded.stop()
    threaded.start()
    assert threaded.port == port and _get(port) == "threaded"


def test_a_stop_lets_a_request_in_flight_finish(threaded: AsgiServer) -> None:
    answers: list[str] = []
    reader = threading.Thread(target=lambda: answers.append(_get(threaded.port, "/slow")))
    reader.start()
    time.sleep(0.1)
    threaded.stop()
    reader.join(5)
    assert answers == ["threaded"]


def test_a_taken_port_is_refused_with_its_number(threaded: AsgiServer) -> None:
    other = AsgiServer(_App(), port=threaded.port, name="test server")
    with pytest.raises(PortInUseError, match=str(threaded.port)):
        other.start()


def test_a_failed_startup_raises_and_frees_the_port() -> None:
    sock = bind_listening_socket("127.0.0.1", 0, what="test server")
    port = int(sock.getsockname()[1])
    server = AsgiServer(_App(fail_startup=True), sock=sock, name="test server", lifespan="on", startup_timeout=10)
    with pytest.raises(RuntimeError, match="did not start"):
        server.start()
    assert not server.is_running and _port_is_free(port)


async def test_on_the_running_loop_and_signals_stay_with_the_program() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    stops: list[bool] = []
    server = AsgiServer(_App("on loop"), port=0, name="test server", on_stop=lambda: stops.append(True))
    await server.start_async()
    try:
        assert server.loop is asyncio.get_running_loop()
        assert await asyncio.to_thread(_get, server.port) == "on loop"
        # uvicorn takes SIGINT/SIGTERM over when serving in the main thread; the program keeps them here.
        assert {sig: signal.getsignal(sig) for sig in before} == before
    finally:
        await server.stop_async()
    assert stops == [True] and not server.is_running
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_in_a_child_process() -> None:
    served = AsgiServerProcess(make_app, ("child",), port=0, name="test server")
    served.start()
    try:
        assert served.is_running and served.port > 0
        assert _get(served.port) == "child"
    finally:
        served.stop()
    assert not served.is_running
    with contextlib.closing(socket.socket()) as probe:
        assert probe.connect_ex(("127.0.0.1", served.port)) != 0
