"""Prometheus metrics of the store server: real server on 127.0.0.1, real scrapes parsed with prometheus_client."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from agl.store.client import LightningStoreClient
from agl.store.errors import StaleAttemptError
from agl.store.memory import InMemoryLightningStore
from agl.store.server import LightningStoreServer
from tests.store.helpers import make_span

GRAFANA_JSON = Path(__file__).resolve().parents[3] / "docs" / "grafana" / "agl.json"
REQUESTS = "agl_http_request_duration_seconds"


def scrape(server: LightningStoreServer, path: str = "/metrics", token: str | None = None) -> list[Sample]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = httpx.get(server.endpoint + path, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return [sample for family in text_string_to_metric_families(answer.text) for sample in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, f"{name} {labels}: {len(found)} samples"
    return found[0]


@pytest.fixture
def started() -> Iterator[list[LightningStoreServer]]:
    """Servers a test starts; each is stopped after the test, even when it fails."""
    servers: list[LightningStoreServer] = []
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def start(servers: list[LightningStoreServer], store: InMemoryLightningStore | None = None, **kwargs: object) -> (
    LightningStoreServer
):  # fmt: skip
    server = LightningStoreServer(store or InMemoryLightningStore(thread_safe=True), port=0, **kwargs)  # type: ignore[arg-type]
    server.start()
    servers.append(server)
    return server


def test_token_guards_metrics_unless_public(started: list[LightningStoreServer]) -> None:
    guarded = start(started, token="s3cret")
    for path in ("/metrics", "/v1/prometheus/"):
        missing = httpx.get(guarded.endpoint + path)
        assert missing.status_code == 401
        assert "bearer token" in missing.json()["detail"].lower()
        assert httpx.get(guarded.endpoint + path, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert value(scrape(guarded, path, token="s3cret"), "agl_store_up") == 1

    public = start(started, token="s3cret", metrics_public=True)
    assert value(scrape(public), "agl_store_up") == 1
    assert httpx.get(public.endpoint + "/v1/agl/statistics").status_code == 401  # only the metrics are public


def test_head_and_wrong_methods(started: list[LightningStoreServer]) -> None:
    server = start(started)
    head = httpx.head(server.endpoint + "/metrics")
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) > 0
    post = httpx.post(server.endpoint + "/metrics", content=b"")
    assert post.status_code == 405
    assert "GET" in post.json()["detail"]


def test_openmetrics_on_request(started: list[LightningStoreServer]) -> None:
    server = start(started)
    answer = httpx.get(server.endpoint + "/metrics", headers={"Accept": "application/openmetrics-text"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/openmetrics-text")
    assert answer.text.rstrip().endswith("# EOF")


def test_gzipped_for_scrapers_that_accept_it(started: list[LightningStoreServer]) -> None:
    server = start(started)
    answer = httpx.get(server.endpoint + "/metrics", headers={"Accept-Encoding": "gzip"})
    assert answer.headers["content-encoding"] == "gzip"
    assert "agl_store_up 1.0" in answer.text


def test_without_prometheus_client_the_app_serves_no_metrics(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import sys

    from agl.store.http.app import StoreApp

    monkeypatch.delitem(sys.modules, "agl.store.http.metrics", raising=False)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # makes `import prometheus_client` fail
    app = StoreApp(InMemoryLightningStore())
    assert app.metrics is None
    assert "prometheus_client is not installed" in caplog.text


def test_metrics_off(started: list[LightningStoreServer]) -> None:
    server = start(started, metrics=False)
    answer = httpx.get(server.endpoint + "/metrics")
    assert answer.status_code == 404
    assert "metrics are off" in answer.json()["detail"].lower()
    assert httpx.get(server.endpoint + "/v1/agl/health").status_code == 200


async def test_values_follow_the_store(started: list[LightningStoreServer]) -> None:
    server = start(started, InMemoryLightningStore(thread_safe=True, spill_max_bytes=10_000_000))
    before = scrape(server)
    assert value(before, "agl_rollouts", status="queuing") == 0
    assert value(before, "agl_queue_depth") == 0
    assert value(before, "agl_queue_oldest_age_seconds") == 0
    assert value(before, "agl_spill_room_bytes") == 10_000_000

    client = LightningStoreClient(server.endpoint)
    try:
        ids = [(await client.enqueue_rollout({"i": i})).rollout_id for i in range(3)]
        claimed = await client.dequeue_rollout(worker_id="worker-a")
        assert claimed is not None
        await client.add_many_spans([make_span(claimed.rollout_id, claimed.attempt.attempt_id, n) for n in (1, 2)])
        mid = scrape(server)
        assert value(mid, "agl_rollouts", status="queuing") == 2
        assert value(mid, "agl_rollouts", status="running") == 1  # its first span marked it running
        assert value(mid, "agl_queue_depth") == 2
        assert value(mid, "agl_queue_oldest_age_seconds") > 0
        assert value(mid, "agl_workers", status="busy") == 1
        assert value(mid, "agl_worker_heartbeat_age_seconds_bucket", le="5") == 1
        assert value(mid, "agl_spans_ingested_total") == 2
        assert value(mid, "agl_span_bytes") > 0

        await client.update_attempt(claimed.rollout_id, claimed.attempt.attempt_id, status="succeeded")
        await client.get_rollout_by_id(ids[1])
        await client.get_rollout_by_id(ids[2])
        after = scrape(server)
    finally:
        await client.close()
    assert value(after, "agl_rollouts", status="succeeded") == 1
    assert value(after, "agl_rollouts", status="running") == 0
    assert value(after, "agl_rollouts_created_total") == 3
    assert value(after, "agl_attempts_created_total") == 1
    assert value(after, "agl_workers", status="idle") == 1

    def count(route: str, method: str, status: str) -> float:
        return value(after, f"{REQUESTS}_count", route=route, method=method, status=status)

    assert count("/v1/agl/queues/rollouts/enqueue", "POST", "201") == 3
    assert count("/v1/agl/queues/rollouts/dequeue", "POST", "200") == 1
    assert count("/v1/agl/spans/batch", "POST", "201") == 1
    assert count("/v1/agl/rollouts/{rollout_id}/attempts/{attempt_id}", "POST", "200") == 1
    assert count("/v1/agl/rollouts/{rollout_id}", "GET", "200") == 2
    assert count("/metrics", "GET", "200") == 2  # the two earlier scrapes (this one is recorded once answered)
    labels = json.dumps([s.labels for s in after])
    assert not any(rollout_id in labels for rollout_id in ids)
    assert claimed.attempt.attempt_id not in labels


async def test_cardinality_is_bounded(started: list[LightningStoreServer]) -> None:
    server = start(started)
    client = LightningStoreClient(server.endpoint, retry_delays=())
    try:
        ids = [(await client.enqueue_rollout({"i": i})).rollout_id for i in range(1000)]
        for rollout_id in ids:
            await client.get_rollout_by_id(rollout_id)
            await client.get_latest_attempt(rollout_id)
    finally:
        await client.close()
    async with httpx.AsyncClient(base_url=server.endpoint) as http:
        for n in range(200):  # unknown paths and ids: one "other" label, 404 answers
            assert (await http.get(f"/nowhere/{n}")).status_code == 404
            assert (await http.get(f"/v1/agl/rollouts/missing-{n}")).status_code == 404
    samples = scrape(server)
    label_sets = {tuple(sorted(s.labels.items())) for s in samples if s.name == f"{REQUESTS}_count"}
    assert len(label_sets) <= 8, label_sets
    assert ("other", "GET", "404") in {(dict(ls)["route"], dict(ls)["method"], dict(ls)["status"]) for ls in label_sets}
    assert (
        value(samples, f"{REQUESTS}_count", route="/v1/agl/rollouts/{rollout_id}", method="GET", status="200") == 1000
    )
    assert len(samples) < 400
    text = "\n".join(str(s.labels) for s in samples)
    assert not re.search(r"ro-[0-9a-f]{8}", text)


def test_servers_in_one_process_do_not_share_metrics(started: list[LightningStoreServer]) -> None:
    first, second = start(started), start(started)
    for _ in range(3):
        assert httpx.get(first.endpoint + "/v1/agl/statistics").status_code == 200
    count = f"{REQUESTS}_count"
    route = {"route": "/v1/agl/statistics", "method": "GET", "status": "200"}
    assert value(scrape(first), count, **route) == 3
    assert not [s for s in scrape(second) if s.name == count and s.labels == route]


def grafana_metric_names() -> set[str]:
    """Every metric name the Grafana dashboard's PromQL queries use."""
    dashboard = json.loads(GRAFANA_JSON.read_text())
    exprs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(dashboard)
    assert len(exprs) >= 10
    names = {name for expr in exprs for name in re.findall(r"\b((?:agl|process)_[a-z0-9_]+)\b", expr)}
    assert names
    return names


async def test_every_grafana_metric_is_exposed(started: list[LightningStoreServer]) -> None:
    """The store server (with the cs strategy's launcher metrics) and a runner's own exporter, after real traffic,
    expose every metric the dashboard queries."""
    from agl.execution.metrics import LauncherMetrics
    from agl.execution.runner_metrics import RunnerMetricsServer

    launcher = LauncherMetrics()  # as the cs strategy hands it to the store server it starts
    launcher.spawned(0.01)
    launcher.exited(0)
    launcher.restarted()
    launcher.stop_step("event", 0.02)
    server = start(
        started, InMemoryLightningStore(thread_safe=True, spill_max_bytes=1_000_000), metrics_collectors=[launcher]
    )
    exporter = RunnerMetricsServer(0).start()
    client = LightningStoreClient(server.endpoint, retry_delays=())
    try:
        store = exporter.wrap(client)
        await store.enqueue_rollout({"x": 1})
        await store.enqueue_rollout({"x": 2})
        claimed = await store.dequeue_rollout(worker_id="w")
        assert claimed is not None
        await store.add_span(make_span(claimed.rollout_id, claimed.attempt.attempt_id))
        await store.update_attempt(claimed.rollout_id, claimed.attempt.attempt_id, status="failed")
        with pytest.raises(ValueError):
            await store.update_attempt("no-such-rollout", "no-such-attempt", status="failed")
        async with httpx.AsyncClient() as http:
            runner_text = (await http.get(f"http://127.0.0.1:{exporter.port}/metrics")).text
    finally:
        await client.close()
        exporter.stop()
    exposed = {s.name for s in scrape(server)}
    exposed |= {s.name for family in text_string_to_metric_families(runner_text) for s in family.samples}
    missing = {name for name in grafana_metric_names() if name not in exposed}
    assert not missing, f"the Grafana dashboard queries metrics nothing exposes: {sorted(missing)}"


async def test_transitions_and_attempts_from_store_events(started: list[LightningStoreServer]) -> None:
    from agl.types import RolloutConfig

    store = InMemoryLightningStore(thread_safe=True, scan_debounce_seconds=0)
    server = start(started, store, health_check_interval=0.05)
    client = LightningStoreClient(server.endpoint)
    try:
        retried = RolloutConfig(max_attempts=2, retry_condition=["failed"])
        first = await client.enqueue_rollout({"i": 1}, config=retried)
        claimed = await client.dequeue_rollout(worker_id="w")
        assert claimed is not None and claimed.rollout_id == first.rollout_id
        await client.update_attempt(first.rollout_id, claimed.attempt.attempt_id, status="failed")  # → requeuing
        again = await client.dequeue_rollout(worker_id="w")
        assert again is not None
        await client.update_attempt(first.rollout_id, again.attempt.attempt_id, status="succeeded")
        for late in ("succeeded", "failed"):  # the first attempt lost its rollout: both writes are refused
            with pytest.raises(StaleAttemptError):
                await client.update_attempt(first.rollout_id, claimed.attempt.attempt_id, status=late)  # type: ignore[arg-type]
        slow = await client.enqueue_rollout({"i": 2}, config=RolloutConfig(timeout_seconds=0.05))
        assert (await client.dequeue_rollout(worker_id="w")) is not None
        # The server's own health check turns the attempt into "timeout" (nobody calls the store meanwhile).
        for _ in range(100):
            if (await client.get_rollout_by_id(slow.rollout_id)).status == "failed":  # type: ignore[union-attr]
                break
            await asyncio.sleep(0.05)
    finally:
        await client.close()
    samples = scrape(server)

    def moved(old: str, new: str) -> float:
        return value(samples, "agl_rollout_transitions_total", **{"from": old, "to": new})

    assert moved("none", "queuing") == 2
    assert moved("queuing", "preparing") == 2
    assert moved("preparing", "requeuing") == 1
    assert moved("requeuing", "preparing") == 1
    assert moved("preparing", "succeeded") == 1
    assert moved("preparing", "failed") == 1  # the timed-out one
    assert value(samples, "agl_attempts_total", status="preparing") == 3  # attempts started
    assert value(samples, "agl_attempts_total", status="failed") == 1
    assert value(samples, "agl_attempts_total", status="succeeded") == 1
    assert value(samples, "agl_attempts_total", status="timeout") == 1
    assert value(samples, "agl_attempt_stale_writes_refused_total") == 2


async def test_a_stopped_server_stops_listening(started: list[LightningStoreServer]) -> None:
    store = InMemoryLightningStore(thread_safe=True)
    server = start(started, store)
    assert store.events.active
    server.stop()
    assert not store.events.active  # the metrics (and the dashboard's insight) unsubscribed
    await store.enqueue_rollout({"x": 1})  # nobody counts it; nothing breaks
