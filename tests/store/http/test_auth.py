"""Bearer-token authentication: every route but health needs the token."""

from __future__ import annotations

import httpx
import pytest

from agl.store.client import LightningStoreClient, StoreAuthError
from agl.store.memory import InMemoryLightningStore
from agl.store.server import LightningStoreServer


async def test_token_required_everywhere_but_health() -> None:
    server = LightningStoreServer(InMemoryLightningStore(thread_safe=True), port=0, token="s3cret")
    server.start()
    try:
        base = f"{server.endpoint}/v1/agl"
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{base}/health")).status_code == 200
            missing = await http.get(f"{base}/statistics")
            assert missing.status_code == 401
            assert "bearer token" in missing.json()["detail"].lower()
            assert missing.headers["www-authenticate"] == "Bearer"
            wrong = await http.post(f"{base}/rollouts", json={"input": 1}, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            otlp = await http.post(
                f"{server.endpoint}/v1/traces", content=b"", headers={"content-type": "application/x-protobuf"}
            )
            assert otlp.status_code == 401
            ok = await http.get(f"{base}/statistics", headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code == 200

        good = LightningStoreClient(server.endpoint, token="s3cret")
        bad = LightningStoreClient(server.endpoint, token="wrong", retry_delays=())
        try:
            rollout = await good.enqueue_rollout({"x": 1})
            assert (await good.get_rollout_by_id(rollout.rollout_id)) is not None
            with pytest.raises(StoreAuthError, match="bearer token") as info:
                await bad.statistics()
            assert isinstance(info.value, PermissionError)
            assert info.value.status == 401
            # dequeue never raises, but must not claim anything either
            assert await bad.dequeue_rollout() is None
        finally:
            await good.close()
            await bad.close()
    finally:
        server.stop()


async def test_token_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGL_STORE_TOKEN", "from-env")
    server = LightningStoreServer(InMemoryLightningStore(thread_safe=True), port=0)
    server.start()
    try:
        client = LightningStoreClient(server.endpoint)
        try:
            assert (await client.statistics())["name"] == "InMemoryLightningStore"
        finally:
            await client.close()
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{server.endpoint}/v1/agl/statistics")).status_code == 401
    finally:
        server.stop()
