"""Gzip in both directions: large responses compressed for clients that accept it; gzip request bodies."""

from __future__ import annotations

import asyncio
import gzip

import httpx
import orjson

from agl.store.client import LightningStoreClient
from agl.store.server import LightningStoreServer


async def test_large_responses_are_gzipped_small_ones_are_not(
    server: LightningStoreServer, client: LightningStoreClient
) -> None:
    for i in range(20):
        await client.enqueue_rollout({"text": "lorem ipsum " * 10, "i": i})
    url = f"{server.endpoint}/v1/agl/rollouts"
    async with httpx.AsyncClient() as http:
        big = await http.get(url, headers={"Accept-Encoding": "gzip"})
        assert big.status_code == 200
        assert big.headers["content-encoding"] == "gzip"
        assert int(big.headers["content-length"]) < len(big.content) / 3  # httpx decoded it
        assert big.json()["total"] == 20
        plain = await http.get(url, headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in plain.headers
        assert plain.json() == big.json()
        small = await http.get(f"{server.endpoint}/v1/agl/health", headers={"Accept-Encoding": "gzip"})
        assert "content-encoding" not in small.headers
    # The client asks for gzip and decodes it.
    assert len(await client.query_rollouts()) == 20


async def test_gzip_request_bodies(server: LightningStoreServer) -> None:
    body = gzip.compress(orjson.dumps({"rollouts": [{"input": "x" * 5000}]}))
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{server.endpoint}/v1/agl/queues/rollouts/enqueue",
            content=body,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )
        assert response.status_code == 201
        assert response.json()[0]["input"] == "x" * 5000
        corrupt = await http.post(
            f"{server.endpoint}/v1/agl/rollouts",
            content=b"\x1f\x8b definitely not gzip",
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )
        assert corrupt.status_code == 400
        assert "gzip" in corrupt.json()["detail"]


async def test_client_gzips_large_request_bodies(server: LightningStoreServer) -> None:
    client = LightningStoreClient(server.endpoint, gzip_request_min_bytes=256)
    try:
        rollout = await client.enqueue_rollout({"blob": "y" * 10_000})
        assert rollout.input == {"blob": "y" * 10_000}
    finally:
        await client.close()
    assert client._gzip_requests  # the AGL server listed gzip among its features


class _PlainOnlyServer:
    """A loopback HTTP server that, like an Agent Lightning 0.3 server, lists no features and refuses gzip bodies."""

    def __init__(self) -> None:
        self.encodings: list[str | None] = []
        self.paths: list[str] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.paths.append(path)
                if path.endswith("/health"):
                    status, answer = 200, b'{"status":"ok"}'
                else:
                    self.encodings.append(headers.get("content-encoding"))
                    if "content-encoding" in headers:
                        status, answer = 400, b'{"detail":"There was an error parsing the body"}'
                    else:
                        count = len(orjson.loads(body)["rollouts"])
                        answer = orjson.dumps([_rollout_dict(f"ro-{i}") for i in range(count)])
                        status = 200
                reason = b"OK" if status == 200 else b"Bad Request"
                writer.write(
                    b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                    % (status, reason, len(answer), answer)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _rollout_dict(rollout_id: str) -> dict[str, object]:
    return {"rollout_id": rollout_id, "input": None, "start_time": 1.0, "status": "queuing", "mode": None}


async def test_client_sends_plain_bodies_to_a_server_without_gzip() -> None:
    server = _PlainOnlyServer()
    async with server as url:
        client = LightningStoreClient(url, gzip_request_min_bytes=256, retry_delays=())
        try:
            small = await client.enqueue_many_rollouts([{"input": 1}])
            assert len(small) == 1
            assert server.paths[-1].endswith("/queues/rollouts/enqueue")  # small body: no health probe first
            many = await client.enqueue_many_rollouts([{"input": {"text": "z" * 100, "i": i}} for i in range(800)])
            assert len(many) == 800
        finally:
            await client.close()
    assert server.encodings == [None, None]
    assert sum(p.endswith("/health") for p in server.paths) == 1
