"""Status codes of the HTTP layer: 404, 400, 405, 409, 413, 422, and their client-side exceptions."""

from __future__ import annotations

import httpx
import pytest

from agl.store.client import LightningStoreClient, StoreRequestError
from agl.store.memory import InMemoryLightningStore
from agl.store.server import LightningStoreServer


async def test_unknown_ids_are_404(server: LightningStoreServer, client: LightningStoreClient) -> None:
    base = f"{server.endpoint}/v1/agl"
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{base}/rollouts/ro-nope")
        assert response.status_code == 404
        assert "ro-nope" in response.json()["detail"]
        update = await http.post(f"{base}/rollouts/ro-nope", json={"status": "failed"})
        assert update.status_code == 404
        attempt = await http.post(f"{base}/rollouts/ro-nope/attempts")
        assert attempt.status_code == 404
        # Getters that answer null upstream still answer null.
        assert (await http.get(f"{base}/rollouts/ro-nope/attempts/latest")).json() is None
        assert (await http.get(f"{base}/workers/w-nope")).json() is None
    assert await client.get_rollout_by_id("ro-nope") is None
    with pytest.raises(ValueError, match="ro-nope") as info:
        await client.update_rollout("ro-nope", status="failed")
    assert isinstance(info.value, StoreRequestError) and info.value.status == 404
    with pytest.raises(ValueError, match="not found"):
        await client.start_attempt("ro-nope")


async def test_schema_violations_are_422_naming_the_field(server: LightningStoreServer) -> None:
    base = f"{server.endpoint}/v1/agl"
    async with httpx.AsyncClient() as http:
        missing = await http.post(f"{base}/queues/rollouts/enqueue", json={"rollouts": [{"mode": "train"}]})
        assert missing.status_code == 422
        detail = missing.json()["detail"]
        assert detail[0]["loc"] == ["body", "rollouts", 0, "input"]
        bad_mode = await http.post(f"{base}/rollouts", json={"input": 1, "mode": "sideways"})
        assert bad_mode.status_code == 422
        assert bad_mode.json()["detail"][0]["loc"] == ["body", "mode"]
        malformed = await http.post(
            f"{base}/rollouts", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert malformed.status_code == 422
        bad_limit = await http.get(f"{base}/rollouts", params={"limit": "many"})
        assert bad_limit.status_code == 422
        assert bad_limit.json()["detail"][0]["loc"] == ["query", "limit"]


async def test_client_reports_422_as_value_error(client: LightningStoreClient) -> None:
    with pytest.raises(ValueError, match=r"body\.sort_order.*'sideways'"):
        await client.query_rollouts(sort_by="rollout_id", sort_order="sideways")  # type: ignore[arg-type]


async def test_bad_values_are_400(server: LightningStoreServer, client: LightningStoreClient) -> None:
    rollout = await client.enqueue_rollout({"q": 1})
    base = f"{server.endpoint}/v1/agl"
    async with httpx.AsyncClient() as http:
        null_status = await http.post(f"{base}/rollouts/{rollout.rollout_id}", json={"status": None})
        assert null_status.status_code == 400
        assert "status" in null_status.json()["detail"]
        bad_sort = await http.post(f"{base}/rollouts/search", json={"sort_by": "nope"})
        assert bad_sort.status_code == 400
        assert "Invalid sort_by: nope" in bad_sort.json()["detail"]
        bad_offset = await http.post(f"{base}/workers/search", json={"offset": -1})
        assert bad_offset.status_code == 400


async def test_unknown_routes(server: LightningStoreServer) -> None:
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{server.endpoint}/v1/agl/nothing/here")).status_code == 404
        assert (await http.delete(f"{server.endpoint}/v1/agl/rollouts")).status_code == 405
        assert (await http.post(f"{server.endpoint}/v1/metrics", content=b"")).status_code == 501


async def test_idempotency_key_reused_for_another_request_is_409(server: LightningStoreServer) -> None:
    url = f"{server.endpoint}/v1/agl/queues/rollouts/enqueue"
    headers = {"Idempotency-Key": "k-409"}
    async with httpx.AsyncClient() as http:
        first = await http.post(url, json={"rollouts": [{"input": 1}]}, headers=headers)
        assert first.status_code == 201
        other = await http.post(url, json={"rollouts": [{"input": 2}]}, headers=headers)
        assert other.status_code == 409
        assert "k-409" in other.json()["detail"]


async def test_body_limit_is_413() -> None:
    server = LightningStoreServer(InMemoryLightningStore(thread_safe=True), port=0, max_body_bytes=1024)
    server.start()
    client = LightningStoreClient(server.endpoint, retry_delays=())
    try:
        async with httpx.AsyncClient() as http:
            url = f"{server.endpoint}/v1/agl/rollouts"
            too_big = await http.post(url, json={"input": "x" * 2000})
            assert too_big.status_code == 413
            assert "1024" in too_big.json()["detail"]
            small = await http.post(url, json={"input": "x" * 100})
            assert small.status_code == 201
        with pytest.raises(ValueError, match="max_body_bytes") as info:
            await client.enqueue_rollout("y" * 5000)
        assert isinstance(info.value, StoreRequestError) and info.value.status == 413
    finally:
        await client.close()
        server.stop()


async def test_rollout_mode_and_time_filters_over_get_and_post(
    server: LightningStoreServer, client: LightningStoreClient
) -> None:
    train = await client.enqueue_rollout({"q": 1}, mode="train")
    val = await client.enqueue_rollout({"q": 2}, mode="val")
    await client.enqueue_rollout({"q": 3})
    base = f"{server.endpoint}/v1/agl"
    async with httpx.AsyncClient() as http:
        both = await http.get(f"{base}/rollouts", params=[("mode_in", "train"), ("mode_in", "val")])
        assert both.status_code == 200
        assert [r["rollout_id"] for r in both.json()["items"]] == [train.rollout_id, val.rollout_id]
        window = await http.get(f"{base}/rollouts", params={"start_time_from": val.start_time, "mode_in": "val"})
        assert [r["rollout_id"] for r in window.json()["items"]] == [val.rollout_id]
        bad_mode = await http.get(f"{base}/rollouts", params={"mode_in": "training"})
        assert bad_mode.status_code == 422
        assert bad_mode.json()["detail"][0]["loc"][:2] == ["query", "mode_in"]
        for where, value in (("start_time_from", "nan"), ("start_time_to", "inf")):
            by_get = await http.get(f"{base}/rollouts", params={where: value})
            by_post = await http.post(f"{base}/rollouts/search", content=f'{{"{where}": "{value}"}}')
            for answer in (by_get, by_post):
                assert answer.status_code == 400, answer.text
                assert f"{where} must be a finite number" in answer.json()["detail"]
    with pytest.raises(ValueError, match="mode_in"):
        await client.query_rollouts(mode_in=["training"])  # type: ignore[list-item]
