"""`agl.asgi_connections`: request heads that take too long or grow too large are cut off; everything else passes.

Real uvicorn on 127.0.0.1 (through `AsgiServer`, and directly with each of uvicorn's HTTP/1.1 protocols), raw sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from agl.asgi_connections import HeadGuard
from agl.asgi_serving import AsgiServer

HEAD_TIMEOUT = 0.6
MAX_HEAD = 4096


async def _echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers every request with the length of its body (read in full) as text."""
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = str(size).encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def port() -> AsyncIterator[int]:
    server = AsgiServer(_echo, head_timeout=HEAD_TIMEOUT, max_head_bytes=MAX_HEAD, timeout_keep_alive=30)
    await server.start_async()
    try:
        yield server.port
    finally:
        await server.stop_async()


def _request(body: bytes = b"", extra: str = "") -> bytes:
    return f"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: {len(body)}\r\n{extra}\r\n".encode() + body


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One response: (status, body)."""
    status = int((await asyncio.wait_for(reader.readline(), 10)).split()[1])
    length = 0
    while (line := await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return status, await asyncio.wait_for(reader.readexactly(length), 10)


@contextlib.asynccontextmanager
async def _connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()


async def _closed(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), 10) == b""


async def test_a_connection_that_sends_nothing_is_answered_408_and_closed(port: int) -> None:
    async with _connection(port) as (reader, _writer):
        started = time.monotonic()
        status, body = await _answer(reader)
        waited = time.monotonic() - started
        assert status == 408
        assert "head_timeout_seconds" in orjson.loads(body)["detail"]
        assert await _closed(reader)
        assert HEAD_TIMEOUT - 0.05 <= waited <= HEAD_TIMEOUT + 1.0


async def test_a_trickled_head_is_cut_off_at_the_deadline(port: int) -> None:
    """A byte every 50 ms keeps bytes arriving, but the head as a whole is late: 408 at the deadline."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def trickle() -> None:
        for byte in _request()[:-2] * 10:  # never ends
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)

    trickling = asyncio.ensure_future(trickle())
    try:
        started = time.monotonic()
        status, _ = await _answer(reader)
        assert status == 408
        assert time.monotonic() - started <= HEAD_TIMEOUT + 1.0
        assert await _closed(reader)
    finally:
        trickling.cancel()
        await asyncio.gather(trickling, return_exceptions=True)
        writer.close()


async def test_idle_keep_alive_is_not_a_slow_head_but_the_next_trickled_head_is(port: int) -> None:
    async with _connection(port) as (reader, writer):
        writer.write(_request(b"abc"))
        assert await _answer(reader) == (200, b"3")
        await asyncio.sleep(HEAD_TIMEOUT * 2)  # idle between requests: uvicorn's keep-alive timer's business
        writer.write(_request(b"abcd"))
        assert await _answer(reader) == (200, b"4")
        writer.write(b"POST /x HTTP/1.1\r\nhost: t\r\n")  # the third head starts and stalls
        started = time.monotonic()
        status, _ = await _answer(reader)
        assert status == 408
        assert time.monotonic() - started <= HEAD_TIMEOUT + 1.0
        assert await _closed(reader)


async def test_a_slow_body_is_not_the_head_guards_business(port: int) -> None:
    """The head arrived at once; the body trickles for longer than the head timeout and the request succeeds."""
    async with _connection(port) as (reader, writer):
        body = b"x" * 12
        writer.write(_request(body)[: -len(body)])
        for chunk in (body[:4], body[4:8], body[8:]):
            await asyncio.sleep(HEAD_TIMEOUT / 2)
            writer.write(chunk)
        assert await _answer(reader) == (200, b"12")


async def test_a_head_growing_past_the_limit_is_answered_431_before_it_ends(port: int) -> None:
    async with _connection(port) as (reader, writer):
        writer.write(b"GET /x HTTP/1.1\r\nhost: t\r\nx-big: ")
        for _ in range(3):
            writer.write(b"y" * (MAX_HEAD // 2))  # the head never ends; no chunk holds a blank line
        status, body = await _answer(reader)
        assert status == 431
        assert str(MAX_HEAD) in orjson.loads(body)["detail"]
        assert await _closed(reader)


async def test_large_bodies_and_heads_under_the_limit_pass(port: int) -> None:
    async with _connection(port) as (reader, writer):
        body = b"z" * (MAX_HEAD * 50)  # arrives with the head, in the same writes: not counted as head
        writer.write(_request(body, extra=f"x-pad: {'p' * (MAX_HEAD // 2)}\r\n"))
        assert await _answer(reader) == (200, str(len(body)).encode())
        # the head's blank line split across two writes
        whole = _request(b"ab")
        cut = whole.index(b"\r\n\r\n") + 2
        writer.write(whole[:cut])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(whole[cut:])
        assert await _answer(reader) == (200, b"2")


async def test_pipelined_requests_and_100_continue_pass(port: int) -> None:
    async with _connection(port) as (reader, writer):
        writer.write(_request(b"a") + _request(b"bb") + _request(b"c" * 10))
        assert [await _answer(reader) for _ in range(3)] == [(200, b"1"), (200, b"2"), (200, b"10")]
        await asyncio.sleep(HEAD_TIMEOUT * 1.5)
        writer.write(_request(extra="expect: 100-continue\r\n").replace(b"content-length: 0", b"content-length: 5"))
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 100")
        assert await asyncio.wait_for(reader.readline(), 10) == b"\r\n"
        await asyncio.sleep(HEAD_TIMEOUT * 1.5)  # waiting to send the body is not a slow head
        writer.write(b"hello")
        assert await _answer(reader) == (200, b"5")


@pytest.mark.parametrize("protocol", ["httptools", "h11"])
async def test_each_of_uvicorns_protocols_under_the_guard(protocol: str) -> None:
    """The guard wraps either of uvicorn's HTTP/1.1 protocols (passed as `Config(http=...)`)."""
    import uvicorn

    if protocol == "h11":
        from uvicorn.protocols.http.h11_impl import H11Protocol as inner
    else:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as inner
    guard = HeadGuard(HEAD_TIMEOUT, MAX_HEAD)
    server = AsgiServer(
        guard.app(_echo), head_timeout=None, max_head_bytes=None, options={"http": guard.protocol(inner)}
    )
    await server.start_async()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(_request(b"abc"))
            assert await _answer(reader) == (200, b"3")
            assert guard.open_connections == 1
            writer.write(b"GET /x HTTP/1.1\r\n")
            status, _ = await _answer(reader)
            assert status == 408
            assert await _closed(reader)
        finally:
            writer.close()
        await asyncio.sleep(0.1)
        assert guard.open_connections == 0
    finally:
        await server.stop_async()
    assert uvicorn is not None


async def test_a_request_line_growing_past_the_limit_is_answered_414(port: int) -> None:
    async with _connection(port) as (reader, writer):
        writer.write(b"GET /" + b"u" * (MAX_HEAD * 2))
        status, body = await _answer(reader)
        assert status == 414
        assert "URL" in orjson.loads(body)["detail"]
        assert await _closed(reader)


async def test_asgi_servers_guard_heads_by_default() -> None:
    """Every AGL server (store, model server, LLM proxy) runs on `AsgiServer`: 1 MiB heads, 30 s, unless told."""
    server = AsgiServer(_echo)
    assert (server.head_timeout, server.max_head_bytes) == (30.0, 1024 * 1024)
    await server.start_async()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(_request(b"ok", extra=f"x-pad: {'p' * 500_000}\r\n"))  # under the limit
            assert await _answer(reader) == (200, b"2")
            writer.write(b"GET /x HTTP/1.1\r\nx-big: " + b"b" * (1024 * 1024 + 1))
            status, _ = await _answer(reader)
            assert status == 431
        finally:
            writer.close()
    finally:
        await server.stop_async()


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="timeout"):
        HeadGuard(0, 10)
    with pytest.raises(ValueError, match="max_bytes"):
        HeadGuard(1, 0)


async def test_many_slow_heads_are_all_cut_off_and_the_server_keeps_serving(port: int) -> None:
    """Slowloris: 200 connections each holding half a head; all are closed, and a normal client is served."""
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(200)]
    try:
        for _, writer in connections:
            writer.write(b"GET /x HTTP/1.1\r\nhost: t\r\n")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_request(b"ok"))
        assert await _answer(reader) == (200, b"2")
        writer.close()
        statuses = await asyncio.gather(*(_answer(r) for r, _ in connections))
        assert {status for status, _ in statuses} == {408}
        assert all(await asyncio.gather(*(_closed(r) for r, _ in connections)))
    finally:
        for _, writer in connections:
            writer.close()


async def _busy_or_fast(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """`/busy` holds the event loop for 5 ms (a server at work); anything else answers at once."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/busy":
        time.sleep(0.005)  # blocking on purpose: the loop's turns get long, as under load
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def test_a_busy_server_accepts_a_burst_of_new_connections_at_once() -> None:
    """libuv accepts one connection per loop turn; with 10 clients keeping the server busy (turns of ~50 ms), 300
    new connections would take ~15 s to be accepted one by one. Accepted eagerly, all are answered within seconds."""
    server = AsgiServer(_busy_or_fast, backlog=1024)
    server.start()  # on a loop of its own (uvloop's when installed), in a thread
    stop = asyncio.Event()

    async def keep_busy() -> None:
        async with _connection(server.port) as (reader, writer):
            while not stop.is_set():
                writer.write(b"GET /busy HTTP/1.1\r\nhost: t\r\n\r\n")
                await _answer(reader)

    async def newcomer() -> float:
        started = time.monotonic()
        async with _connection(server.port) as (reader, writer):
            writer.write(b"GET /fast HTTP/1.1\r\nhost: t\r\n\r\n")
            assert await _answer(reader) == (200, b"ok")
        return time.monotonic() - started

    busy = [asyncio.ensure_future(keep_busy()) for _ in range(10)]
    try:
        await asyncio.sleep(0.3)
        waits = await asyncio.gather(*(newcomer() for _ in range(300)))
        assert max(waits) < 5.0, sorted(waits)[-10:]
    finally:
        stop.set()
        await asyncio.gather(*busy, return_exceptions=True)
        server.stop()


class _RecordingTransport:
    """Records what reaches the socket's transport: one entry per system call uvloop would make."""

    def __init__(self) -> None:
        self.calls: list[list[bytes]] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.calls.append([data])

    def writelines(self, data: list[bytes]) -> None:
        self.calls.append(list(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: object = None) -> str:
        return f"info:{name}"


async def test_a_head_and_its_body_leave_together_and_a_lone_write_at_the_end_of_the_turn() -> None:
    from agl.asgi_connections import _CoalescingTransport

    inner = _RecordingTransport()
    transport = _CoalescingTransport(inner, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert inner.calls == []  # a head waits for its body
    transport.write(b"body")
    assert inner.calls == [[b"HTTP/1.1 200 OK\r\n\r\n", b"body"]]  # one writev, at once
    transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert len(inner.calls) == 1
    await asyncio.sleep(0)  # nothing followed in this turn: it leaves alone
    assert inner.calls[-1] == [b"HTTP/1.1 204 No Content\r\n\r\n"]
    transport.write(b"next")
    transport.close()  # what is pending goes first
    assert inner.calls[-1] == [b"next"] and inner.closed
    await asyncio.sleep(0)
    assert len(inner.calls) == 3  # nothing sent twice
    assert transport.get_extra_info("peername") == "info:peername"


async def test_many_answers_on_one_connection_arrive_whole_and_in_order(port: int) -> None:
    """Every answer goes through the coalescing transport: heads and bodies stay together and in order."""
    async with _connection(port) as (reader, writer):
        for size in range(0, 300, 7):
            writer.write(_request(b"x" * size))
            assert await _answer(reader) == (200, str(size).encode())
