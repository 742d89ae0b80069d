"""Execution metrics with real processes: the cs strategy's runner lifecycle on its store server's /metrics, and
each runner's own exporter on 127.0.0.1:metrics_port + i."""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from agl.execution import ClientServerExecutionStrategy, ExecutionEvent
from agl.execution.runner_metrics import RunnerMetricsServer
from agl.store.base import LightningStore
from agl.store.memory import InMemoryLightningStore
from agl.types import Span
from tests.execution import bundles


def cs(**kwargs: object) -> ClientServerExecutionStrategy:
    options: dict[str, object] = {
        "server_host": "127.0.0.1",
        "server_port": 0,
        "graceful_timeout": 2.0,
        "terminate_timeout": 0.5,
    }
    options.update(kwargs)
    return ClientServerExecutionStrategy(**options)  # type: ignore[arg-type]


def sample_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def get(values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


async def _wait_finished(store: LightningStore, ids: list[str], deadline: float) -> None:
    while time.monotonic() < deadline:
        if len(await store.wait_for_rollouts(rollout_ids=ids, timeout=0.05)) == len(ids):
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("rollouts not finished")


async def runner_dies_once(marker_dir: str, store: LightningStore, worker_id: int, event: ExecutionEvent) -> None:
    """Exit with code 3 the first time this worker starts; claim rollouts once restarted."""
    marker = Path(marker_dir) / f"runner-{worker_id}"
    if not marker.exists():
        marker.touch()
        os._exit(3)
    await bundles.runner_claims(store, worker_id, event)


async def algorithm_scrapes_lifecycle(scrapes: list[str], store: LightningStore, event: ExecutionEvent) -> None:
    """Enqueue work, wait until both runners were restarted and did it, keep the server's last scrape."""
    deadline = time.monotonic() + 20
    ids = [(await store.enqueue_rollout(input={"i": i})).rollout_id for i in range(3)]
    await _wait_finished(store, ids, deadline)
    url = f"{store.endpoint}/metrics"  # type: ignore[attr-defined]
    while time.monotonic() < deadline:
        text = (await asyncio.to_thread(httpx.get, url)).text
        scrapes.append(text)
        if get(sample_values(text), "agl_runner_restarts_total") >= 2:
            return
        await asyncio.sleep(0.05)


def test_runner_lifecycle_on_the_store_servers_metrics(tmp_path: Path) -> None:
    strategy = cs(n_runners=2, restart_failed_runners=1)
    scrapes: list[str] = []
    strategy.execute(
        functools.partial(algorithm_scrapes_lifecycle, scrapes),
        functools.partial(runner_dies_once, str(tmp_path)),
        InMemoryLightningStore(),
    )
    during = sample_values(scrapes[-1])
    assert get(during, "agl_runner_restarts_total") == 2
    assert get(during, "agl_runner_exits_total", code="3") == 2
    assert get(during, "agl_runner_spawn_duration_seconds_count") == 4
    assert 0 < get(during, "agl_runner_spawn_duration_seconds_sum") < 10
    assert get(during, "agl_rollouts", status="succeeded") == 3  # the store's metrics on the same endpoint

    # After the run: the two replacements stopped at the cooperative step and exited with 0.
    assert strategy.launcher_metrics is not None
    registry = CollectorRegistry()
    registry.register(strategy.launcher_metrics)
    assert registry.get_sample_value("agl_runner_exits_total", {"code": "0"}) == 2
    assert registry.get_sample_value("agl_runner_stop_step_duration_seconds_count", {"step": "event"}) == 1
    assert registry.get_sample_value("agl_runner_stop_step_duration_seconds_count", {"step": "SIGINT"}) is None


async def runner_with_spans(store: LightningStore, worker_id: int, event: ExecutionEvent) -> None:
    """Claim rollouts; send two spans for each and report it succeeded."""
    while not event.is_set():
        claimed = await store.dequeue_rollout(worker_id=f"w{worker_id}")
        if claimed is None:
            await asyncio.sleep(0.01)
            continue
        rid, aid = claimed.rollout_id, claimed.attempt.attempt_id
        spans = [
            Span(rollout_id=rid, attempt_id=aid, sequence_id=n, trace_id="t", span_id=f"{rid}-{n}", name="step")
            for n in (1, 2)
        ]
        await store.add_many_spans(spans)
        await store.update_attempt(rid, aid, status="succeeded")


async def algorithm_scrapes_runners(
    port: int, scrapes: dict[int, str], store: LightningStore, event: ExecutionEvent
) -> None:
    """Enqueue 4 rollouts, wait for them, then scrape both runners until their counters add up."""
    deadline = time.monotonic() + 20
    ids = [(await store.enqueue_rollout(input={"i": i})).rollout_id for i in range(4)]
    await _wait_finished(store, ids, deadline)
    while time.monotonic() < deadline:
        for worker in (0, 1):
            answer = await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{port + worker}/metrics")
            scrapes[worker] = answer.text
        values = [sample_values(text) for text in scrapes.values()]
        if sum(get(v, "agl_runner_rollouts_total", result="succeeded") for v in values) == 4:
            return
        await asyncio.sleep(0.05)


def two_free_ports() -> int:
    """A port P such that P and P + 1 are both free right now."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("no two consecutive free ports")


def test_each_runner_serves_its_own_metrics() -> None:
    port = two_free_ports()
    scrapes: dict[int, str] = {}
    cs(n_runners=2, metrics_port=port).execute(
        functools.partial(algorithm_scrapes_runners, port, scrapes), runner_with_spans, InMemoryLightningStore()
    )
    assert set(scrapes) == {0, 1}
    values = [sample_values(scrapes[worker]) for worker in (0, 1)]
    assert sum(get(v, "agl_runner_rollouts_total", result="succeeded") for v in values) == 4
    assert sum(get(v, "agl_runner_rollouts_claimed_total") for v in values) == 4
    assert sum(get(v, "agl_runner_spans_sent_total") for v in values) == 8
    assert all(get(v, "agl_runner_rollouts_total", result="failed") == 0 for v in values)
    assert not any(name == "agl_runner_store_errors_total" for v in values for name, _ in v)
    with pytest.raises(httpx.ConnectError):  # the exporters stopped with their runners
        httpx.get(f"http://127.0.0.1:{port}/metrics")


def test_metrics_port_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGL_METRICS_PORT", "9300")
    assert cs().metrics_port == 9300
    assert cs(metrics_port=9400).metrics_port == 9400
    monkeypatch.setenv("AGL_METRICS_PORT", "0")
    with pytest.raises(ValueError, match=r"AGL_METRICS_PORT must be an integer in 1\.\.65535"):
        cs()
    monkeypatch.delenv("AGL_METRICS_PORT")
    assert cs().metrics_port is None
    with pytest.raises(ValueError, match="metrics_port must be an integer"):
        cs(metrics_port=70000)


async def test_metered_store_counts_errors_by_call() -> None:
    exporter = RunnerMetricsServer(0).start()
    try:
        store = exporter.wrap(InMemoryLightningStore())
        with pytest.raises(ValueError):
            await store.update_attempt("missing", "missing", status="failed")
        with pytest.raises(ValueError):
            await store.get_next_span_sequence_id("missing", "missing")
        await store.enqueue_rollout({"x": 1})
        assert (await store.dequeue_many_rollouts(limit=5)) and store.capabilities["async_safe"]
        async with httpx.AsyncClient() as http:
            values = sample_values((await http.get(f"http://127.0.0.1:{exporter.port}/metrics")).text)
    finally:
        exporter.stop()
    assert get(values, "agl_runner_store_errors_total", call="update_attempt") == 1
    assert get(values, "agl_runner_store_errors_total", call="get_next_span_sequence_id") == 1
    assert get(values, "agl_runner_rollouts_claimed_total") == 1
    assert get(values, "agl_runner_rollouts_total", result="failed") == 0  # the failed update did not count


def test_metrics_off_records_and_serves_nothing() -> None:
    strategy = cs(n_runners=1, metrics=False)
    seen: dict[str, int] = {}

    async def algorithm(store: LightningStore, event: ExecutionEvent) -> None:
        answer = await asyncio.to_thread(httpx.get, f"{store.endpoint}/metrics")  # type: ignore[attr-defined]
        seen["status"] = answer.status_code

    strategy.execute(algorithm, bundles.runner_cooperative, InMemoryLightningStore())
    assert seen == {"status": 404}
    assert strategy.launcher_metrics is None


def test_a_taken_metrics_port_leaves_the_runner_without_metrics(caplog: pytest.LogCaptureFixture) -> None:
    from agl.execution.client_server import _start_runner_metrics

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        assert _start_runner_metrics(port, 0) is None
    assert f"could not serve its metrics on 127.0.0.1:{port}" in caplog.text
    assert _start_runner_metrics(None, 0) is None
