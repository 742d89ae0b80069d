"""Gzip in both directions: large responses compressed for clients that accept it; gzip request bodies."""

from __future__ import annotations

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
