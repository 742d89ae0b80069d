"""The store server over a raw socket: pipelining, answers that wait, stopping mid-wait, 100-continue, 413, HEAD."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from agl.store.client import LightningStoreClient
from agl.store.http.wire import StoreUnavailableError
from agl.store.memory import InMemoryLightningStore
from agl.store.server import LightningStoreServer
from agl.types import AttemptedRollout


def _post(path: str, payload: object) -> bytes:
    body = orjson.dumps(payload)
    head = f"POST /v1/agl{path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _get(path: str) -> bytes:
    return f"GET /v1/agl{path} HTTP/1.1\r\nhost: t\r\n\r\n".encode()


async def _read_responses(reader: asyncio.StreamReader, count: int) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    for _ in range(count):
        status_line = await asyncio.wait_for(reader.readline(), 10)
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode().partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        out.append((status, await reader.readexactly(length)))
    return out


async def _claimed(client: LightningStoreClient) -> AttemptedRollout:
    """A rollout enqueued and claimed through `client`, ready for spans."""
    await client.enqueue_rollout({"q": 1})
    claimed = await client.dequeue_rollout(worker_id="w")
    assert claimed is not None
    return claimed


async def test_pipelined_requests_are_answered_in_order_around_one_that_waits(server: LightningStoreServer) -> None:
    """A request that has to wait (wait_for_rollouts) holds back the answers pipelined behind it, in order."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(_post("/queues/rollouts/enqueue", {"rollouts": [{"input": 1}]}))
        first = await _read_responses(reader, 1)
        rollout_id = orjson.loads(first[0][1])[0]["rollout_id"]
        writer.write(
            _post("/waits/rollouts", {"rollout_ids": [rollout_id], "timeout": 0.3})
            + _get("/statistics")
            + _post("/queues/rollouts/enqueue", {"rollouts": [{"input": 2}]})
        )
        await writer.drain()
        started = time.monotonic()
        answers = first + await _read_responses(reader, 3)
        elapsed = time.monotonic() - started
    finally:
        writer.close()
    assert [status for status, _ in answers] == [201, 200, 200, 201]
    assert orjson.loads(answers[0][1])[0]["input"] == 1
    assert orjson.loads(answers[1][1]) == []
    assert orjson.loads(answers[2][1])["total_rollouts"] == 1  # answered after the wait, before the 2nd enqueue
    assert orjson.loads(answers[3][1])[0]["input"] == 2
    assert elapsed >= 0.25


async def test_a_waiting_request_is_answered_when_the_rollout_finishes(
    server: LightningStoreServer, client: LightningStoreClient
) -> None:
    rollout = await client.enqueue_rollout({"q": 1})
    claimed = await client.dequeue_rollout(worker_id="w")
    assert claimed is not None
    waiting = asyncio.ensure_future(client.wait_for_rollouts(rollout_ids=[rollout.rollout_id], timeout=10))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await client.update_attempt(rollout.rollout_id, claimed.attempt.attempt_id, status="succeeded")
    finished = await asyncio.wait_for(waiting, 5)
    assert [r.rollout_id for r in finished] == [rollout.rollout_id]
    assert finished[0].status == "succeeded"


async def test_server_stops_promptly_while_a_request_waits() -> None:
    server = LightningStoreServer(InMemoryLightningStore(thread_safe=True), host="127.0.0.1", port=0)
    await server.start_async()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(_post("/waits/rollouts", {"rollout_ids": ["ro-x"], "timeout": 30}))
        await writer.drain()
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await server.stop_async()
        assert time.monotonic() - started < 5
        # The connection ends (answered or closed) instead of hanging.
        rest = await asyncio.wait_for(reader.read(), 5)
        assert rest == b"" or rest.startswith(b"HTTP/1.1")
    finally:
        writer.close()


async def test_span_json_kept_as_received_reads_back_as_validated(
    server: LightningStoreServer, client: LightningStoreClient
) -> None:
    """The in-memory store keeps a span's JSON as the server received it; reads see the validated span."""
    from agl.types import Span

    claimed = await _claimed(client)
    ids = f'"rollout_id": "{claimed.rollout_id}", "attempt_id": "{claimed.attempt.attempt_id}"'
    raw = (
        "{ " + ids + ', "sequence_id": "3",  "trace_id": "t1", "span_id": "s1", "parent_id": null,'
        ' "name": "llm", "attributes": {"k": 1}, "custom_extra": [1, 2] }'
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(
            b"POST /v1/agl/spans HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (len(raw), raw)
        )
        await writer.drain()
        [(status, body)] = await _read_responses(reader, 1)
    finally:
        writer.close()
    assert status == 201
    expected = Span.model_validate_json(raw)
    assert Span.model_validate_json(body) == expected
    [stored] = await client.query_spans(claimed.rollout_id)
    assert stored == expected
    assert stored.sequence_id == 3 and stored.model_extra == {"custom_extra": [1, 2]}


async def test_client_request_timeout_fails_a_call_the_server_never_answers() -> None:
    """A server that accepts and reads but never answers: each try fails after about `request_timeout`."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read()

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    client = LightningStoreClient(
        f"http://127.0.0.1:{port}", retry_delays=(), health_retry_delays=(), request_timeout=0.4
    )
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match=r"did not answer.*TimeoutError"):
            await asyncio.wait_for(client.statistics(), 5)
        elapsed = time.monotonic() - started
        assert 0.35 <= elapsed < 1.5
        assert accepted  # the request did reach the (silent) server
    finally:
        await client.close()
        for writer in accepted:
            writer.close()
        listener.close()
        await listener.wait_closed()


async def _exchange_raw(server: LightningStoreServer, data: bytes, count: int) -> list[tuple[int, bytes]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(data)
        await writer.drain()
        return await _read_responses(reader, count)
    finally:
        writer.close()


async def test_expect_100_continue_gets_an_interim_answer_then_the_real_one(server: LightningStoreServer) -> None:
    body = orjson.dumps({"rollouts": [{"input": 1}]})
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(
            b"POST /v1/agl/queues/rollouts/enqueue HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\n"
            b"content-length: %d\r\n\r\n" % len(body)
        )
        await writer.drain()
        assert await asyncio.wait_for(reader.readline(), 10) == b"HTTP/1.1 100 Continue\r\n"
        assert await reader.readline() == b"\r\n"
        writer.write(body)
        [(status, answer)] = await _read_responses(reader, 1)
    finally:
        writer.close()
    assert status == 201 and orjson.loads(answer)[0]["input"] == 1


async def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent() -> None:
    """413 on the headers alone: no 100 Continue, no need to send the body."""
    server = LightningStoreServer(InMemoryLightningStore(), host="127.0.0.1", port=0, max_body_bytes=1000)
    await server.start_async()
    try:
        head = (
            b"POST /v1/agl/spans HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: 1001\r\n"
            b"connection: close\r\n\r\n"
        )
        [(status, answer)] = await _exchange_raw(server, head, 1)
        assert status == 413 and b"max_body_bytes" in answer
        # One digit shorter than the limit's is never too large: it is read and answered (422: not a span).
        small = b"POST /v1/agl/spans HTTP/1.1\r\nhost: t\r\ncontent-length: 999\r\n\r\n" + b" " * 999
        [(status, _)] = await _exchange_raw(server, small, 1)
        assert status == 422
    finally:
        await server.stop_async()


async def test_head_answers_carry_no_body_and_keep_the_connection_in_step(server: LightningStoreServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"HEAD /v1/agl/statistics HTTP/1.1\r\nhost: t\r\n\r\n" + _get("/statistics"))
        await writer.drain()
        head: list[bytes] = []
        while (line := await asyncio.wait_for(reader.readline(), 10)) != b"\r\n":
            head.append(line)
        [(status, body)] = await _read_responses(reader, 1)  # right after the HEAD answer's blank line
    finally:
        writer.close()
    assert head[0].startswith(b"HTTP/1.1 200") and any(h.startswith(b"content-length: ") for h in head)
    assert status == 200 and orjson.loads(body)["total_rollouts"] == 0


@pytest.mark.parametrize("when", ["on call", "while running"])
async def test_an_app_failure_is_answered_500_and_the_connection_goes_on(
    server: LightningStoreServer, when: str
) -> None:
    """A bug in the app (not a store error, which handlers turn into answers) still gets an answer."""
    app = server._app  # the test breaks the app on purpose
    assert app is not None
    real = app.handle
    calls = 0

    async def fails_while_running() -> Any:
        raise RuntimeError("bug in the app")

    def failing_once(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            if when == "on call":
                raise RuntimeError("bug in the app")
            return fails_while_running()
        return real(*args, **kwargs)

    app.handle = failing_once  # type: ignore[method-assign]
    try:
        answers = await _exchange_raw(server, _get("/statistics") + _get("/statistics"), 2)
    finally:
        app.handle = real  # type: ignore[method-assign]
    assert [status for status, _ in answers] == [500, 200]
    assert orjson.loads(answers[0][1]) == {"detail": "Internal server error"}


async def test_client_add_many_spans_accepts_span_dicts_as_the_memory_store_does(
    server: LightningStoreServer, client: LightningStoreClient
) -> None:
    """Span objects go through `span_json`; plain dicts are still written (by pydantic) and stored."""
    from agl.types import Span

    claimed = await _claimed(client)
    ids = {"rollout_id": claimed.rollout_id, "attempt_id": claimed.attempt.attempt_id, "trace_id": "t"}
    as_dict = {**ids, "sequence_id": 1, "span_id": "s1", "name": "from-dict"}
    as_span = Span(**ids, sequence_id=2, span_id="s2", name="from-span")
    stored = await client.add_many_spans([as_dict, as_span])  # type: ignore[list-item]
    assert len(stored) == 2
    names = [span.name for span in (await client.query_spans(claimed.rollout_id)).items]
    assert names == ["from-dict", "from-span"]


async def test_a_refused_body_closes_the_connection_unread() -> None:
    """413 from the declared length alone, with `connection: close`: the body is never read."""
    server = LightningStoreServer(InMemoryLightningStore(), host="127.0.0.1", port=0, max_body_bytes=1000)
    await server.start_async()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(b"POST /v1/agl/spans HTTP/1.1\r\nhost: t\r\ncontent-length: 50000000\r\n\r\n" + b"x" * 1000)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 413") and b"connection: close" in head.lower()
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            assert b"max_body_bytes" in await reader.readexactly(length)
            assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
        finally:
            writer.close()
    finally:
        await server.stop_async()


async def test_limit_concurrency_answers_503_beyond_the_open_connections_allowed() -> None:
    server = LightningStoreServer(InMemoryLightningStore(), host="127.0.0.1", port=0, limit_concurrency=2)
    await server.start_async()
    try:
        health = b"GET /v1/agl/health HTTP/1.1\r\nhost: t\r\n\r\n"
        first_reader, first = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            first.write(health)
            [(status, _)] = await _read_responses(first_reader, 1)
            assert status == 200  # one connection open: under the limit
            [(status, _)] = await _exchange_raw(server, health, 1)  # a second one reaches it
            assert status == 503
        finally:
            first.close()
    finally:
        await server.stop_async()


async def test_a_request_without_the_token_is_answered_401_before_its_body_arrives() -> None:
    server = LightningStoreServer(InMemoryLightningStore(), host="127.0.0.1", port=0, token="secret")
    await server.start_async()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            started = time.monotonic()
            writer.write(b"POST /v1/agl/spans HTTP/1.1\r\nhost: t\r\ncontent-length: 50000000\r\n\r\n")  # no body
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 401") and time.monotonic() - started < 1.0
        finally:
            writer.close()
    finally:
        await server.stop_async()
