"""Non-idempotent calls carry an Idempotency-Key; a retried call returns the first result instead of running twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from agl.store.client import LightningStoreClient
from agl.store.server import LightningStoreServer
from agl.types import Span


async def _read_message(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + (await reader.readexactly(length) if length else b"")


@asynccontextmanager
async def _lossy_proxy(upstream_port: int, drop_paths: tuple[bytes, ...]) -> AsyncIterator[int]:
    """A real TCP proxy that forwards each request but, the first time a path in `drop_paths` is seen, drops the
    connection after the server answered (the answer is lost on the way back, as in a network failure)."""
    dropped: set[bytes] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        try:
            while True:
                request = await _read_message(reader)
                up_writer.write(request)
                await up_writer.drain()
                response = await _read_message(up_reader)
                path = request.split(b" ", 2)[1]
                if path in drop_paths and path not in dropped:
                    dropped.add(path)
                    return
                writer.write(response)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()
            up_writer.close()

    proxy = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield proxy.sockets[0].getsockname()[1]
    finally:
        proxy.close()
        await proxy.wait_closed()


async def test_lost_answer_is_retried_without_duplicating(server: LightningStoreServer) -> None:
    drop = (b"/v1/agl/queues/rollouts/enqueue", b"/v1/agl/spans/next", b"/v1/agl/rollouts")
    async with _lossy_proxy(server.port, drop) as port:
        client = LightningStoreClient(f"http://127.0.0.1:{port}", retry_delays=(0.05, 0.1), health_retry_delays=(0.05,))
        try:
            rollout = await client.enqueue_rollout({"once": True})
            started = await client.start_rollout({"also": "once"})
            first = await client.get_next_span_sequence_id(started.rollout_id, started.attempt.attempt_id)
            second = await client.get_next_span_sequence_id(started.rollout_id, started.attempt.attempt_id)
        finally:
            await client.close()
    assert (first, second) == (1, 2)
    direct = LightningStoreClient(server.endpoint)
    try:
        page = await direct.query_rollouts()
        assert [r.rollout_id for r in page] == [rollout.rollout_id, started.rollout_id]
    finally:
        await direct.close()


async def test_add_span_whose_answer_was_lost_is_stored_once_and_returned(server: LightningStoreServer) -> None:
    direct = LightningStoreClient(server.endpoint)
    try:
        started = await direct.start_rollout({"task": 1})
        rid, aid = started.rollout_id, started.attempt.attempt_id
        async with _lossy_proxy(server.port, (b"/v1/agl/spans",)) as port:
            client = LightningStoreClient(
                f"http://127.0.0.1:{port}", retry_delays=(0.05, 0.1), health_retry_delays=(0.05,)
            )
            try:
                span = Span(rollout_id=rid, attempt_id=aid, sequence_id=1, trace_id="t" * 32, span_id="s1", name="x")
                stored = await client.add_span(span)  # stored by the first try, whose answer is dropped
                again = await client.add_span(span)  # a real duplicate: no retry involved
            finally:
                await client.close()
        assert stored == span
        assert again is None
        assert [s.span_id for s in await direct.query_spans(rid)] == ["s1"]
    finally:
        await direct.close()


async def test_same_key_replays_the_first_answer(server: LightningStoreServer) -> None:
    url = f"{server.endpoint}/v1/agl/queues/rollouts/enqueue"
    async with httpx.AsyncClient() as http:
        headers = {"Idempotency-Key": "abc"}
        first = await http.post(url, json={"rollouts": [{"input": 1}]}, headers=headers)
        again = await http.post(url, json={"rollouts": [{"input": 1}]}, headers=headers)
        assert first.status_code == again.status_code == 201
        assert first.json() == again.json()
        assert again.headers["idempotent-replayed"] == "true"
        # Without a key the same body is a new rollout.
        third = await http.post(url, json={"rollouts": [{"input": 1}]})
        assert third.json()[0]["rollout_id"] != first.json()[0]["rollout_id"]
        stats = (await http.get(f"{server.endpoint}/v1/agl/statistics")).json()
        assert stats["total_rollouts"] == 2


async def test_cache_keeps_at_most_max_entries_evicting_the_oldest() -> None:
    from agl.store.http.app import Request, Response, _IdempotencyCache

    cache = _IdempotencyCache(ttl_seconds=600, max_entries=3, max_bytes=1 << 20)
    calls: list[str] = []

    async def handler(request: Request) -> Response:
        calls.append(request.body.decode())
        return Response(201, request.body)

    def request(body: str) -> Request:
        return Request("POST", {}, b"", {}, body.encode())

    for index in range(5):
        await cache.run(f"k{index}", index, handler, request(f"body{index}"))
    assert list(cache.entries) == ["k2", "k3", "k4"]
    assert cache.bytes == sum(len(f"body{i}") + len(f"k{i}") for i in (2, 3, 4))  # keys count too
    replay = await cache.run("k4", 4, handler, request("body4"))
    assert replay.body == b"body4" and calls.count("body4") == 1  # replayed, not run again
    await cache.run("k0", 0, handler, request("body0"))  # evicted long ago: runs again
    assert calls.count("body0") == 2
    assert list(cache.entries) == ["k3", "k4", "k0"]


async def test_cache_forgets_expired_answers_and_server_errors() -> None:
    from agl.store.http.app import Request, Response, _IdempotencyCache

    cache = _IdempotencyCache(ttl_seconds=0.05, max_entries=100, max_bytes=1 << 20)
    statuses = iter([503, 201, 201])

    async def handler(request: Request) -> Response:
        return Response(next(statuses), b"x")

    req = Request("POST", {}, b"", {}, b"")
    assert (await cache.run("k", 1, handler, req)).status == 503
    assert "k" not in cache.entries  # a 5xx is not kept: the retry runs the call
    assert (await cache.run("k", 1, handler, req)).status == 201
    await asyncio.sleep(0.1)
    assert (await cache.run("k", 1, handler, req)).status == 201  # expired: runs again
    assert cache.bytes == len(b"x") + len("k")
