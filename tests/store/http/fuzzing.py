"""A seeded store server with a token for the fuzz tests, and the checks every fuzzed answer must pass."""

from __future__ import annotations

import asyncio
import http.client
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from agl.store.client import LightningStoreClient
from agl.store.memory import InMemoryLightningStore
from agl.store.server import LightningStoreServer
from tests.store.helpers import make_span, sample_resources

TOKEN = "fuzz-token"
AUTH: Mapping[str, str] = MappingProxyType({"Authorization": f"Bearer {TOKEN}"})
"""Read-only: a client library that adds its own headers to a passed dict cannot leak them into other tests."""


@dataclass(frozen=True)
class Seeded:
    """A running server and ids that exist in its store (so fuzzed requests reach past the unknown-id answers)."""

    server: LightningStoreServer
    base_url: str
    rollout_id: str
    attempt_id: str
    resources_id: str
    worker_id: str

    @property
    def path_ids(self) -> dict[str, str]:
        """Known values for the path parameters of the document."""
        return {
            "rollout_id": self.rollout_id,
            "attempt_id": self.attempt_id,
            "resources_id": self.resources_id,
            "worker_id": self.worker_id,
        }


async def _seed(endpoint: str) -> tuple[str, str, str, str]:
    client = LightningStoreClient(endpoint, token=TOKEN)
    try:
        rollout = await client.start_rollout({"question": "1+1"})
        await client.add_span(make_span(rollout.rollout_id, rollout.attempt.attempt_id))
        resources = await client.add_resources(sample_resources())
        await client.update_worker("fuzz-worker")
        await client.enqueue_rollout({"question": "2+2"})
        return rollout.rollout_id, rollout.attempt.attempt_id, resources.resources_id, "fuzz-worker"
    finally:
        await client.close()


@contextmanager
def seeded_server(**options: Any) -> Iterator[Seeded]:
    """A server on 127.0.0.1 (free port, token `TOKEN`, `options`) over a seeded in-memory store; stopped on exit."""
    store = InMemoryLightningStore(thread_safe=True)
    server = LightningStoreServer(store, host="127.0.0.1", port=0, token=TOKEN, **options)
    server.start()
    try:
        ids = asyncio.run(_seed(server.endpoint))
        yield Seeded(server, f"http://127.0.0.1:{server.port}", *ids)
    finally:
        server.stop()


def assert_healthy(port: int) -> None:
    """The server answers its health route at once on a fresh connection (it did not crash or wedge)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/v1/agl/health")
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, f"health answered {response.status}: {body[:200]!r}"
    finally:
        conn.close()


def ask(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: (status, lower-cased headers, body). Raises if the connection drops."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={**AUTH, **(headers or {})})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()
