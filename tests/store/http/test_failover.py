"""A client of several store servers on one database: addresses, calls spread over the servers, failover when one
stops, the stopped one used again once back, answers (4xx) never failed over, and errors naming every server."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agl.store.client import LightningStoreClient
from agl.store.errors import NotFoundError
from agl.store.http.servers import ServerSet, split_server_addresses
from agl.store.http.wire import REPLAYED_HEADER, StoreUnavailableError
from agl.store.server import LightningStoreServer
from agl.store.sqlite import SqliteLightningStore
from tests.cli.test_store_cli import free_port
from tests.store.helpers import make_span

ENQUEUE_ROUTE = "/v1/agl/queues/rollouts/enqueue"


def _served(db: Path, port: int = 0) -> LightningStoreServer:
    server = LightningStoreServer(SqliteLightningStore(db, scan_debounce_seconds=0), host="127.0.0.1", port=port)
    server.start()
    return server


def _count(server_url: str, route: str, token: str | None = None) -> int:
    """How many requests to `route` the server answered (from its /metrics)."""
    request = urllib.request.Request(f"{server_url}/metrics")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    prefix = "agl_http_request_duration_seconds_count{"
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(prefix) and f'route="{route}"' in line))  # fmt: skip


@pytest.fixture
def two_servers(tmp_path: Path) -> Iterator[list[LightningStoreServer]]:
    """Two store servers (each its own SQLite store object) on one database file; stopped after the test."""
    servers: list[LightningStoreServer] = []
    try:
        servers.append(_served(tmp_path / "one.db"))
        servers.append(_served(tmp_path / "one.db"))
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
async def client(two_servers: list[LightningStoreServer]) -> AsyncIterator[LightningStoreClient]:
    """A client of both servers, with retry sleeps long enough that a test sees whether one happened."""
    c = LightningStoreClient(
        [s.endpoint for s in two_servers], retry_delays=(5.0,), health_retry_delays=(), failover_probe_seconds=0.2
    )
    try:
        yield c
    finally:
        await c.close()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://a:1", ("http://a:1",)),
        ("http://a:1/, http://b:2", ("http://a:1", "http://b:2")),
        (["http://a:1", "http://b:2,http://c:3"], ("http://a:1", "http://b:2", "http://c:3")),
    ],
)
def test_addresses_are_one_url_a_comma_list_or_a_list(value: str | list[str], expected: tuple[str, ...]) -> None:
    assert split_server_addresses(value) == expected
    assert LightningStoreClient(value).server_addresses == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "empty entry"),
        ("http://a:1,,http://b:2", "empty entry"),
        ("http://a:1,ftp://b:2", "http:// or https://"),
        ("http://a:1,http://a:1/", "lists http://a:1 twice"),
        ("http://a:x", "invalid port"),
        (42, "a URL, comma-separated URLs or a list"),
    ],
)
def test_bad_addresses_are_refused_naming_the_entry(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LightningStoreClient(value)  # type: ignore[arg-type]


def test_a_single_address_keeps_the_upstream_attributes() -> None:
    client = LightningStoreClient("http://127.0.0.1:4747/")
    assert client.server_address_root == "http://127.0.0.1:4747"
    assert client.server_address == "http://127.0.0.1:4747/v1/agl"
    assert client.__getstate__()["server_address"] == "http://127.0.0.1:4747"
    several = LightningStoreClient("http://a:1,http://b:2")
    assert several.server_address_root == "http://a:1"
    assert several.__getstate__()["server_address"] == ["http://a:1", "http://b:2"]


async def test_calls_are_spread_over_the_servers_of_one_database(
    two_servers: list[LightningStoreServer], client: LightningStoreClient
) -> None:
    ids = [(await client.enqueue_rollout({"i": i})).rollout_id for i in range(20)]
    counts = [_count(s.endpoint, ENQUEUE_ROUTE) for s in two_servers]
    assert sum(counts) == 20 and min(counts) >= 5, counts
    for server in two_servers:  # each server sees every rollout, whichever server wrote it
        single = LightningStoreClient(server.endpoint)
        try:
            assert sorted(r.rollout_id for r in await single.query_rollouts()) == sorted(ids)
        finally:
            await single.close()


async def test_a_stopped_server_is_left_out_and_calls_fail_over_without_sleeping(
    two_servers: list[LightningStoreServer], client: LightningStoreClient
) -> None:
    await client.enqueue_rollout({"warm": True})
    gone, alive = two_servers
    gone.stop()
    before = _count(alive.endpoint, ENQUEUE_ROUTE)
    started = time.monotonic()
    for i in range(20):
        await client.enqueue_rollout({"i": i})
    assert time.monotonic() - started < 4.0  # no retry sleep (5 s) was needed
    assert _count(alive.endpoint, ENQUEUE_ROUTE) - before == 20
    assert (await client.query_rollouts()).total == 21


async def test_a_server_that_comes_back_takes_calls_again(tmp_path: Path) -> None:
    port = free_port()
    first = _served(tmp_path / "one.db", port)
    second = _served(tmp_path / "one.db")
    client = LightningStoreClient([first.endpoint, second.endpoint], retry_delays=(), failover_probe_seconds=0.2)
    try:
        first.stop()
        for i in range(6):
            await client.enqueue_rollout({"i": i})
        first = _served(tmp_path / "one.db", port)
        time.sleep(0.3)  # past the pause: the next call in turn for it tries it again
        for i in range(10):
            await client.enqueue_rollout({"i": i})
        assert _count(first.endpoint, ENQUEUE_ROUTE) >= 3
    finally:
        await client.close()
        first.stop()
        second.stop()


async def test_an_error_answer_is_not_failed_over(
    two_servers: list[LightningStoreServer], client: LightningStoreClient
) -> None:
    route = "/v1/agl/rollouts/{rollout_id}/attempts/{attempt_id}"
    with pytest.raises(NotFoundError):
        await client.update_attempt("no-such-rollout", "no-such-attempt", status="succeeded")
    assert sum(_count(s.endpoint, route) for s in two_servers) == 1  # one server asked, once


async def test_a_wrong_token_is_not_failed_over(tmp_path: Path) -> None:
    servers = []
    try:
        for _ in range(2):
            store = SqliteLightningStore(tmp_path / "one.db")
            server = LightningStoreServer(store, host="127.0.0.1", port=0, token="right-token")
            server.start()
            servers.append(server)
        client = LightningStoreClient([s.endpoint for s in servers], token="wrong-token", retry_delays=(5.0,))
        started = time.monotonic()
        try:
            with pytest.raises(PermissionError):
                await client.enqueue_rollout({"x": 1})
        finally:
            await client.close()
        assert time.monotonic() - started < 4.0
    finally:
        for server in servers:
            server.stop()


async def test_when_no_server_answers_the_error_names_each() -> None:
    urls = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    client = LightningStoreClient(urls, retry_delays=(0.01,), health_retry_delays=())
    try:
        with pytest.raises(StoreUnavailableError) as caught:
            await client.enqueue_rollout({"x": 1})
    finally:
        await client.close()
    message = str(caught.value)
    assert "4 tries over 2 servers" in message
    assert all(url in message for url in urls), message


async def test_a_write_retried_on_the_other_server_gets_the_first_answer(
    two_servers: list[LightningStoreServer],
) -> None:
    """What failing over a write relies on: its idempotency key is kept in the shared database, so the other server
    replays the first answer instead of writing again."""
    body = {"rollouts": [{"input": {"task": 1}}]}
    headers = {"Idempotency-Key": "failover-key-1"}
    async with httpx.AsyncClient(timeout=10) as http:
        first = await http.post(two_servers[0].endpoint + ENQUEUE_ROUTE, json=body, headers=headers)
        again = await http.post(two_servers[1].endpoint + ENQUEUE_ROUTE, json=body, headers=headers)
        listed = (await http.get(two_servers[1].endpoint + "/v1/agl/rollouts")).json()
    assert first.status_code == again.status_code == 201
    assert again.content == first.content and again.headers.get(REPLAYED_HEADER) == "true"
    assert listed["total"] == 1


class _AnswerLosingProxy:
    """A TCP proxy to a real server that forwards each request, waits for the whole answer, then closes the
    connection without relaying it: a server that committed a write and died before answering."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.forwarded = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _read_message(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return head + await reader.readexactly(length)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await self._read_message(reader)
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            up_writer.write(request)
            await self._read_message(up_reader)  # the server has answered: the write is committed
            self.forwarded += 1
            up_writer.close()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.transport.abort()  # the answer never reaches the client

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_writes_whose_answer_was_lost_are_not_repeated_on_the_other_server(
    two_servers: list[LightningStoreServer],
) -> None:
    """Each kind of write is sent through a proxy that loses its answer at least once, and retried on the other
    server: nothing is written twice, and every call returns what its first try did."""
    proxy = _AnswerLosingProxy(two_servers[0].port)
    lossy = await proxy.start()
    direct = LightningStoreClient(two_servers[1].endpoint)

    async def three_calls(call: Callable[[LightningStoreClient, int], Awaitable[Any]]) -> list[Any]:
        # A fresh client alternates between the servers (the lossy one is back after 0.01-0.04 s): one of three
        # spaced calls at least goes through the proxy.
        client = LightningStoreClient([lossy, two_servers[1].endpoint], failover_probe_seconds=0.01)
        before = proxy.forwarded
        try:
            results = []
            for n in range(3):
                results.append(await call(client, n))
                await asyncio.sleep(0.05)
        finally:
            await client.close()
        assert proxy.forwarded > before, "no call went through the lossy proxy"
        return results

    try:
        rollouts = await three_calls(lambda c, n: c.enqueue_rollout({"i": n}))
        assert sorted(r.rollout_id for r in await direct.query_rollouts()) == sorted(r.rollout_id for r in rollouts)
        claims = await three_calls(lambda c, n: c.dequeue_rollout(worker_id=f"w{n}"))
        assert sorted(c.rollout_id for c in claims) == sorted(r.rollout_id for r in rollouts)  # each claimed once
        rid, aid = claims[0].rollout_id, claims[0].attempt.attempt_id
        spans = [make_span(rid, aid, n) for n in range(6)]
        batches = await three_calls(lambda c, n: c.add_many_spans(spans[2 * n : 2 * n + 2]))
        assert batches == [spans[0:2], spans[2:4], spans[4:6]]  # every span of each batch reported as stored
        assert len(await direct.query_spans(rid)) == 6
        statuses = ["running", "running", "succeeded"]
        updated = await three_calls(lambda c, n: c.update_attempt(rid, aid, status=statuses[n]))  # type: ignore[arg-type]
        assert [a.status for a in updated] == statuses
        assert [a.status for a in await direct.query_attempts(rid)] == ["succeeded"]
        assert (await direct.query_rollouts()).total == 3
    finally:
        await direct.close()
        await proxy.stop()


async def test_a_server_that_never_answers_is_failed_over_after_the_request_timeout(
    two_servers: list[LightningStoreServer],
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):  # take requests, never answer, until the client hangs up
            pass
        writer.close()

    hung = await asyncio.start_server(silent, "127.0.0.1", 0)
    hung_url = f"http://127.0.0.1:{hung.sockets[0].getsockname()[1]}"
    client = LightningStoreClient([hung_url, two_servers[1].endpoint], request_timeout=0.3, retry_delays=(5.0,))
    try:
        started = time.monotonic()
        for i in range(4):  # one of the first two goes to the silent server, times out, and is sent to the other
            await client.enqueue_rollout({"i": i})
        assert time.monotonic() - started < 3.0  # one request timeout, no retry sleep; then the silent one is left out
        assert (await client.query_rollouts()).total == 4
    finally:
        await client.close()
        hung.close()
        await hung.wait_closed()


async def test_a_server_error_answer_is_retried_on_the_other_server_at_once(
    two_servers: list[LightningStoreServer],
) -> None:
    answered = 0

    async def failing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        while await reader.read(65536):  # every request (one per read here: small, one at a time) gets a 503
            answered += 1
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
        writer.close()

    broken = await asyncio.start_server(failing, "127.0.0.1", 0)
    broken_url = f"http://127.0.0.1:{broken.sockets[0].getsockname()[1]}"
    client = LightningStoreClient([broken_url, two_servers[1].endpoint], retry_delays=(5.0,), health_retry_delays=())
    try:
        started = time.monotonic()
        for i in range(4):
            await client.enqueue_rollout({"i": i})
        assert time.monotonic() - started < 3.0  # no retry sleep
        assert answered >= 1 and (await client.query_rollouts()).total == 4
    finally:
        await client.close()
        broken.close()
        await broken.wait_closed()


def test_a_failed_server_is_left_out_for_a_pause_that_doubles_and_one_call_probes_it() -> None:
    now = [100.0]
    servers = ServerSet(["http://a:1", "http://b:2", "http://c:3"], b"", probe_seconds=2.0, clock=lambda: now[0])
    a, b, c = servers.endpoints
    assert {servers.pick() for _ in range(3)} == {a, b, c}  # in turn
    servers.failed(a, ConnectionRefusedError())
    assert a not in {servers.pick() for _ in range(6)}
    now[0] += 2.0  # the pause is over: the next pick in turn probes it; the others keep skipping it meanwhile
    picks = [servers.pick() for _ in range(6)]
    assert picks.count(a) == 1
    servers.failed(a, ConnectionRefusedError())  # the probe failed: 4 s now, then 8, 16, at most 30
    assert a.down_until == now[0] + 4.0
    for expected in (8.0, 16.0, 30.0, 30.0):
        servers.failed(a, ConnectionRefusedError())
        assert a.down_until == now[0] + expected
    servers.answered(a)
    assert a.down_until == 0.0 and a.failures == 0
    assert servers.next_untried([a]) in (b, c) and servers.next_untried([a, b, c]) is None
    servers.failed(b, ConnectionRefusedError())
    servers.failed(c, ConnectionRefusedError())
    servers.failed(c, ConnectionRefusedError())
    assert servers.next_untried([a]) is b  # every other server down: the one due first
