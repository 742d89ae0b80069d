"""Each request is an asyncio Task of its own on a real server: timeouts work, ContextVars stay per request, and a
client that disconnects cancels its request (wait_for_rollouts); a stopping server answers waiting requests."""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from agl.store.base import LightningStoreStatistics
from agl.store.client import LightningStoreClient
from agl.store.memory import InMemoryLightningStore
from agl.store.server import LightningStoreServer
from agl.types import Rollout

# The store below uses asyncio.timeout (Python 3.11+) the way user code in a handler would.
pytestmark = pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is Python 3.11+")

_SEEN: contextvars.ContextVar[str] = contextvars.ContextVar("_SEEN", default="unset")


class _ProbingStore(InMemoryLightningStore):
    """An in-memory store whose calls use what a task gives: asyncio.timeout, ContextVars, cancellation."""

    def __init__(self) -> None:
        super().__init__(thread_safe=True, scan_debounce_seconds=0)
        self.seen: list[str] = []
        self.timed_out = 0
        self.waiting = threading.Event()
        self.wait_cancelled = threading.Event()

    async def statistics(self) -> LightningStoreStatistics:
        # asyncio.timeout needs the current task; one that expires cancels that task and is turned into TimeoutError.
        async with asyncio.timeout(5):
            await asyncio.sleep(0)
        try:
            async with asyncio.timeout(0.01):
                await asyncio.sleep(1)
        except TimeoutError:
            self.timed_out += 1
        self.seen.append(_SEEN.get())
        _SEEN.set("set by an earlier request")
        return await super().statistics()

    async def wait_for_rollouts(self, *, rollout_ids: list[str], timeout: float | None = None) -> list[Rollout]:
        if timeout != 0:
            self.waiting.set()
        try:
            return await super().wait_for_rollouts(rollout_ids=rollout_ids, timeout=timeout)
        except asyncio.CancelledError:
            self.wait_cancelled.set()
            raise


@pytest.fixture
def probing() -> _ProbingStore:
    return _ProbingStore()


@pytest.fixture
def probed_server(probing: _ProbingStore) -> Iterator[LightningStoreServer]:
    server = LightningStoreServer(probing, host="127.0.0.1", port=0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def _request(port: int, raw: bytes, *, close: bool = True) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return int(status_line.split()[1]), await reader.readexactly(length)
    finally:
        if close:
            writer.close()


def _post(path: str, payload: Any) -> bytes:
    body = orjson.dumps(payload)
    return b"POST /v1/agl%s HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n%s" % (path.encode(), len(body), body)


async def test_asyncio_timeout_inside_a_handler_works(
    probed_server: LightningStoreServer, probing: _ProbingStore
) -> None:
    status, body = await _request(probed_server.port, b"GET /v1/agl/statistics HTTP/1.1\r\nhost: t\r\n\r\n")
    assert status == 200, body
    assert probing.timed_out == 1


async def test_a_contextvar_set_in_one_request_is_not_seen_by_the_next(
    probed_server: LightningStoreServer, probing: _ProbingStore
) -> None:
    # On one keep-alive connection (the client's pool) and on fresh connections alike.
    client = LightningStoreClient(probed_server.endpoint, retry_delays=(), health_retry_delays=())
    try:
        for _ in range(3):
            await client.statistics()
    finally:
        await client.close()
    for _ in range(2):
        status, _ = await _request(probed_server.port, b"GET /v1/agl/statistics HTTP/1.1\r\nhost: t\r\n\r\n")
        assert status == 200
    assert probing.seen == ["unset"] * 5


async def test_a_client_disconnect_cancels_its_wait(
    probed_server: LightningStoreServer, probing: _ProbingStore
) -> None:
    rollout = await probing.enqueue_rollout({"q": 1})
    _reader, writer = await asyncio.open_connection("127.0.0.1", probed_server.port)
    writer.write(_post("/waits/rollouts", {"rollout_ids": [rollout.rollout_id], "timeout": 30}))
    await writer.drain()
    assert await asyncio.to_thread(probing.waiting.wait, 5)
    writer.close()
    await writer.wait_closed()
    assert await asyncio.to_thread(probing.wait_cancelled.wait, 5), "the store's wait was not cancelled"
    # The server goes on serving.
    status, _ = await _request(probed_server.port, b"GET /v1/agl/health HTTP/1.1\r\nhost: t\r\n\r\n")
    assert status == 200


async def test_a_stopping_server_answers_a_waiting_request_at_once(probing: _ProbingStore) -> None:
    server = LightningStoreServer(probing, host="127.0.0.1", port=0)
    server.start()
    try:
        rollout = await probing.enqueue_rollout({"q": 1})
        answer = asyncio.ensure_future(
            _request(server.port, _post("/waits/rollouts", {"rollout_ids": [rollout.rollout_id], "timeout": 30}))
        )
        assert await asyncio.to_thread(probing.waiting.wait, 5)
        started = time.monotonic()
        await asyncio.to_thread(server.stop)
        stopped_in = time.monotonic() - started
        status, body = await asyncio.wait_for(answer, 5)
    finally:
        server.stop()
    assert status == 200 and orjson.loads(body) == []  # nothing finished: as if its timeout had passed
    assert stopped_in < 2.0
