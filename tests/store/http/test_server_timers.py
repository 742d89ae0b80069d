"""What the server does on its own: periodic health checks of the store, and the draining signal for runners."""

from __future__ import annotations

import asyncio
import json
import urllib.request

from agl.store.client import LightningStoreClient
from agl.store.memory import InMemoryLightningStore
from agl.store.server import LightningStoreServer
from agl.types import RolloutConfig


async def test_server_notices_a_silent_attempt_without_any_call() -> None:
    # The store's own lazy scan is switched off (debounced for an hour): only the server's timer can fire the rule.
    store = InMemoryLightningStore(scan_debounce_seconds=3600)
    await store.get_rollout_by_id("warm-up")  # the first call scans once; the next hour is debounced
    rollout = await store.start_rollout({"q": 1}, config=RolloutConfig(unresponsive_seconds=0.2))
    server = LightningStoreServer(store, port=0, health_check_interval=0.1)
    server.start()
    try:
        await asyncio.sleep(0.8)
        fetched = await store.get_rollout_by_id(rollout.rollout_id)
        assert fetched is not None and fetched.status == "failed"
        attempt = await store.get_latest_attempt(rollout.rollout_id)
        assert attempt is not None and attempt.status == "unresponsive"
    finally:
        server.stop()


async def test_without_the_timer_the_attempt_stays_unnoticed() -> None:
    store = InMemoryLightningStore(scan_debounce_seconds=3600)
    await store.get_rollout_by_id("warm-up")
    rollout = await store.start_rollout({"q": 1}, config=RolloutConfig(unresponsive_seconds=0.2))
    server = LightningStoreServer(store, port=0, health_check_interval=0)
    server.start()
    try:
        await asyncio.sleep(0.5)
        fetched = await store.get_rollout_by_id(rollout.rollout_id)
        assert fetched is not None and fetched.status == "preparing"
    finally:
        server.stop()


def _health(port: int, query: str = "") -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/agl/health{query}", timeout=5) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


async def test_begin_drain_flips_the_health_status_and_keeps_serving() -> None:
    server = LightningStoreServer(InMemoryLightningStore(), port=0)
    server.start()
    client = LightningStoreClient(f"http://127.0.0.1:{server.port}")
    try:
        assert _health(server.port)["status"] == "ok" and "drain" in _health(server.port)["features"]  # type: ignore[operator]
        server.begin_drain()
        server.begin_drain()  # idempotent
        assert server.draining and _health(server.port)["status"] == "draining"
        rollout = await client.enqueue_rollout({"still": "served"})
        assert (await client.get_rollout_by_id(rollout.rollout_id)) is not None
    finally:
        await client.close()
        server.stop()


async def test_server_knows_which_drain_watchers_have_heard_it_drains() -> None:
    server = LightningStoreServer(InMemoryLightningStore(), port=0)
    server.start()
    try:
        assert server.untold_drain_watchers() == []
        _health(server.port, "?watcher=a")
        _health(server.port, "?watcher=b")
        _health(server.port)  # a probe without an id is not tracked
        assert sorted(server.untold_drain_watchers()) == ["a", "b"]
        server.begin_drain()
        assert _health(server.port, "?watcher=a")["status"] == "draining"
        assert server.untold_drain_watchers() == ["b"]
        _health(server.port, "?watcher=b")
        assert server.untold_drain_watchers() == []
    finally:
        server.stop()
