"""The dashboard's JSON routes on a real server (127.0.0.1, free port), over the memory and SQLite stores."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agl.store.base import LightningStore
from agl.store.memory import InMemoryLightningStore
from agl.store.server import LightningStoreServer
from agl.store.sqlite import SqliteLightningStore
from agl.types.resources import PromptTemplate
from tests.store.helpers import make_span

TOKEN = "dash-secret"


def _reward_span(rollout_id: str, attempt_id: str, sequence_id: int, value: float) -> Any:
    span = make_span(rollout_id, attempt_id, sequence_id, span_id=f"r{sequence_id:015d}")
    span.name = "agentlightning.annotation"
    span.attributes = {"agentlightning.reward.0.name": "primary", "agentlightning.reward.0.value": value}
    return span


async def _run(store: LightningStore, worker: str, *, reward: float | None, status: str = "succeeded") -> str:
    claimed = await store.dequeue_rollout(worker_id=worker)
    assert claimed is not None
    rid, aid = claimed.rollout_id, claimed.attempt.attempt_id
    await store.add_span(make_span(rid, aid, 1))
    if reward is not None:
        await store.add_span(_reward_span(rid, aid, 2, reward))
    await store.update_attempt(rid, aid, status=status)  # type: ignore[arg-type]
    return rid


@pytest.fixture(params=["memory", "sqlite"])
async def inner(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LightningStore]:
    store: LightningStore
    if request.param == "memory":
        store = InMemoryLightningStore(thread_safe=True)
    else:
        store = SqliteLightningStore(tmp_path / "store.db")
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def served(inner: LightningStore) -> AsyncIterator[tuple[LightningStoreServer, httpx.AsyncClient]]:
    server = LightningStoreServer(inner, host="127.0.0.1", port=0, token=TOKEN)
    await server.start_async()
    http = httpx.AsyncClient(base_url=server.endpoint, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    try:
        yield server, http
    finally:
        await http.aclose()
        await server.stop_async()


async def _get(http: httpx.AsyncClient, path: str, **params: Any) -> Any:
    answer = await http.get(f"/v1/agl/dashboard/{path}", params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


async def _overview_when_rewards_read(http: httpx.AsyncClient, expected: int) -> Any:
    deadline = time.monotonic() + 10
    while True:
        overview = await _get(http, "overview")
        if overview["reward"]["count"] == expected and overview["reward"]["pending"] == 0:
            return overview
        assert time.monotonic() < deadline, overview["reward"]
        await asyncio.sleep(0.1)


async def test_overview_counts_rewards_and_throughput(
    inner: LightningStore, served: tuple[LightningStoreServer, httpx.AsyncClient]
) -> None:
    _, http = served
    # Two rollouts finish before anyone looks (read by the catch-up), the rest while the dashboard is open.
    v1 = await inner.add_resources({"prompt": PromptTemplate(template="Solve: {q}", engine="f-string")})
    for _ in range(4):
        await inner.enqueue_rollout({"q": 1}, mode="train")
    await _run(inner, "w-1", reward=1.0)
    await _run(inner, "w-1", reward=0.0)
    await _get(http, "overview")
    await _run(inner, "w-2", reward=None, status="failed")
    v2 = await inner.add_resources({"prompt": PromptTemplate(template="Solve carefully: {q}", engine="f-string")})
    await inner.enqueue_rollout({"q": 2}, mode="val")
    await _run(inner, "w-2", reward=0.5)  # the oldest queued (v1) goes first
    await _run(inner, "w-2", reward=1.0)  # v2

    overview = await _overview_when_rewards_read(http, expected=4)
    assert overview["rollouts"]["by_status"]["succeeded"] == 4
    assert overview["rollouts"]["by_status"]["failed"] == 1
    assert overview["rollouts"]["by_status"]["queuing"] == 0
    assert overview["rollouts"]["total"] == 5
    assert overview["queue"] == {"depth": 0, "oldest_age_seconds": None}
    assert overview["resources"] == {"latest_id": v2.resources_id, "count": 2}
    by_version = {row["resources_id"]: row for row in overview["reward"]["by_version"]}
    assert by_version[v1.resources_id]["version"] == 1 and by_version[v2.resources_id]["version"] == 2
    assert by_version[v1.resources_id]["count"] == 3
    assert by_version[v1.resources_id]["mean"] == pytest.approx(0.5)
    assert by_version[v2.resources_id]["mean"] == pytest.approx(1.0)
    assert by_version[v2.resources_id]["modes"] == {"val": {"mean": 1.0, "count": 1}}
    assert by_version[v1.resources_id]["modes"]["train"]["count"] == 3
    assert sum(p["count"] for p in overview["reward"]["over_time"]) == 4
    # The series counts what finished while the server listened: all five.
    buckets = overview["series"]["buckets"]
    assert sum(b["finished"] for b in buckets) == 5 and sum(b["failed"] for b in buckets) == 1
    assert len(buckets) == 900 // overview["series"]["bucket_seconds"]
    assert overview["workers"]["total"] == 2 and overview["workers"]["silent"] == 0
    assert overview["store"]["total_rollouts"] == 5


async def test_rollout_list_filters_sorts_and_pages(
    inner: LightningStore, served: tuple[LightningStoreServer, httpx.AsyncClient]
) -> None:
    _, http = served
    ids = [(await inner.enqueue_rollout({"i": i})).rollout_id for i in range(7)]
    done = [await _run(inner, "w", reward=float(i)) for i in range(3)]
    page = await _get(http, "rollouts", status="succeeded", sort="start_time", order="asc", limit=2)
    assert page["total"] == 3 and [r["rollout_id"] for r in page["items"]] == done[:2]
    assert [r["reward"] for r in page["items"]] == [0.0, 1.0]
    assert page["items"][0]["attempts"] == 1 and page["items"][0]["worker_id"] == "w"
    second = await _get(http, "rollouts", status="succeeded", sort="start_time", order="asc", limit=2, offset=2)
    assert [r["rollout_id"] for r in second["items"]] == done[2:]
    queued = await _get(http, "rollouts", status="queuing", limit=500)
    assert queued["total"] == 4 and {r["rollout_id"] for r in queued["items"]} == set(ids[3:])
    assert all(r["reward"] is None for r in queued["items"])
    both = await http.get("/v1/agl/dashboard/rollouts", params=[("status", "queuing"), ("status", "succeeded")])
    assert both.json()["total"] == 7
    found = await _get(http, "rollouts", q=ids[5][-6:])
    assert [r["rollout_id"] for r in found["items"]] == [ids[5]]
    newest_first = await _get(http, "rollouts", limit=500)
    assert [r["rollout_id"] for r in newest_first["items"]] == ids[::-1]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"status": "done"}, "status"),
        ({"sort": "input"}, "sort"),
        ({"since": "nan"}, "since"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_bad_list_parameters_are_named(
    served: tuple[LightningStoreServer, httpx.AsyncClient], params: dict[str, str], field: str
) -> None:
    _, http = served
    answer = await http.get("/v1/agl/dashboard/rollouts", params=params)
    assert answer.status_code == 422, answer.text
    assert field in answer.text


async def test_rollout_detail_and_unknown_rollout(
    inner: LightningStore, served: tuple[LightningStoreServer, httpx.AsyncClient]
) -> None:
    _, http = served
    await inner.enqueue_rollout({"question": "2+2"}, config={"max_attempts": 2, "retry_condition": ["failed"]})
    first = await inner.dequeue_rollout(worker_id="w-a")
    assert first is not None
    await inner.add_span(make_span(first.rollout_id, first.attempt.attempt_id, 1))
    await inner.update_attempt(first.rollout_id, first.attempt.attempt_id, status="failed")
    rid = await _run(inner, "w-b", reward=0.75)
    assert rid == first.rollout_id
    detail = await _get(http, f"rollouts/{rid}")
    assert detail["input"] == {"question": "2+2"}
    assert detail["rollout"]["status"] == "succeeded"
    assert [a["status"] for a in detail["attempts"]] == ["failed", "succeeded"]
    assert [a["worker_id"] for a in detail["attempts"]] == ["w-a", "w-b"]
    assert detail["spans_total"] == 3 and len(detail["spans"]) == 3
    assert detail["reward"] == 0.75
    missing = await http.get("/v1/agl/dashboard/rollouts/ro-nope")
    assert missing.status_code == 404 and "ro-nope" in missing.json()["detail"]


async def test_workers_show_heartbeat_age_silence_and_last_error(
    inner: LightningStore, served: tuple[LightningStoreServer, httpx.AsyncClient]
) -> None:
    server, http = served
    await inner.enqueue_rollout({"q": 1})
    await inner.enqueue_rollout({"q": 2})
    failed = await _run(inner, "w-bad", reward=None, status="failed")
    await _run(inner, "w-good", reward=1.0)
    await inner.update_worker("w-good", {"cpu": 0.5})
    workers = await _get(http, "workers")
    rows = {w["worker_id"]: w for w in workers["items"]}
    assert rows["w-bad"]["last_error"]["rollout_id"] == failed
    assert rows["w-bad"]["last_error"]["status"] == "failed"
    assert rows["w-good"]["last_error"] is None
    assert 0 <= rows["w-good"]["heartbeat_age_seconds"] < 5
    assert rows["w-bad"]["heartbeat_age_seconds"] is None
    assert not rows["w-good"]["silent"] and not rows["w-bad"]["silent"]
    server._app.insight.silent_after_seconds = 0.0  # type: ignore[union-attr]
    await asyncio.sleep(0.01)
    workers = await _get(http, "workers")
    assert all(w["silent"] for w in workers["items"])
    assert (await _get(http, "overview"))["workers"]["silent"] == 2


async def test_dashboard_routes_need_the_token(served: tuple[LightningStoreServer, httpx.AsyncClient]) -> None:
    server, _ = served
    async with httpx.AsyncClient(base_url=server.endpoint) as anonymous:
        for path in ("overview", "rollouts", "rollouts/ro-x", "workers"):
            answer = await anonymous.get(f"/v1/agl/dashboard/{path}")
            assert answer.status_code == 401, path
