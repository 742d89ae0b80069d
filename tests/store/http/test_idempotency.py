"""Non-idempotent calls carry an Idempotency-Key; a retried call returns the first result instead of running twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from agl.store.client import LightningStoreClient
from agl.store.server import LightningStoreServer


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
