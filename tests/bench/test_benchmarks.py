"""The benchmark scripts run end to end on tiny settings and write the JSON they promise (they are not timed here)."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _run(script: str, *args: str, out: Path, timeout: float = 300) -> dict:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (written,) = out.glob("*.json")
    return json.loads(written.read_text())


def test_server_gc_measures_every_setting(tmp_path: Path) -> None:
    data = _run("server_gc.py", "--cycles", "30", "--warmup", "10", "--repeats", "1", out=tmp_path)
    settings = {row["setting"] for row in data["table"]}
    assert "tune_gc_for_serving()" in settings and "700/10/10 (CPython)" in settings
    for run in data["runs"]:
        assert run["calls"] == 30 * 13
        assert run["us_per_call"] > 0
    serving = next(run for run in data["runs"] if run["setting"] == "tune_gc_for_serving()")
    assert serving["threshold"] == list(_serving_threshold())


def _serving_threshold() -> tuple[int, ...]:
    from agl.store.server import tune_gc_for_serving

    before = gc.get_threshold()
    try:
        tune_gc_for_serving()
        return gc.get_threshold()
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


@pytest.mark.slow
def test_store_http_runs_a_client_against_a_real_server(tmp_path: Path) -> None:
    data = _run(
        "store_http.py",
        "--k",
        "2",
        "--mode",
        "both",
        "--duration",
        "0.5",
        "--warmup",
        "0.2",
        "--repeats",
        "1",
        out=tmp_path,
    )
    rows = {(run["mode"], run["k"]): run for run in data["runs"]}
    assert set(rows) == {("single", 2), ("batched", 2)}
    single = rows[("single", 2)]
    assert single["cycles"] > 0 and single["calls"] == 13 * single["cycles"]
    assert 0 < single["p50_ms"] <= single["p99_ms"]
    assert set(single["per_call"]) == {"enqueue_rollout", "dequeue_rollout", "add_span", "update_attempt"}
    assert rows[("batched", 2)]["per_call"].keys() >= {"add_many_spans"}


def test_store_query_times_every_call_on_both_backends(tmp_path: Path) -> None:
    args = ["--rollouts", "300", "--spans", "900", "--memory-spans", "300", "--repeats", "1"]
    data = _run("store_query.py", *args, "--cache-dir", str(tmp_path / "cache"), out=tmp_path / "out")
    assert set(data["median_ms"]) == {"memory", "sqlite"}
    for backend in ("memory", "sqlite"):
        calls = data["median_ms"][backend]
        assert {"count succeeded", "page train + 10 % window", "id substring", "statistics"} <= set(calls)
        assert all(value > 0 for value in calls.values())
    (cached,) = (tmp_path / "cache").glob("*.db")
    assert "300r-900s" in cached.name


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_store_stall_measures_every_phase(tmp_path: Path, backend: str) -> None:
    args = ["--backend", backend, "--rollouts", "300", "--duration", "0.5", "--repeats", "1", "--k", "1"]
    data = _run("store_stall.py", *args, out=tmp_path)
    (sample,) = data["samples"]
    assert set(sample) == {"reads", "reads + hog", "cycle", "cycle + hog"}
    assert sample["reads"]["reads_per_s"] > 0 and sample["cycle"]["calls_per_s"] > 0
    assert sample["reads + hog"]["hog_rows"] == 300


def test_idempotency_cost_times_plain_and_keyed_enqueues(tmp_path: Path) -> None:
    data = _run("idempotency_cost.py", "--runs", "1", "--ops", "50", out=tmp_path)
    assert set(data["median_us"]) == {"plain", "keyed"}
    assert all(value > 0 for value in data["median_us"].values())


@pytest.mark.slow
def test_metrics_overhead_runs_both_sides_and_times_a_scrape(tmp_path: Path) -> None:
    data = _run(
        "metrics_overhead.py",
        *("--rounds", "1", "--duration", "0.5", "--warmup", "0.2", "--scrape-interval", "0.2", "--scrape-cost", "500"),
        out=tmp_path,
    )
    assert len(data["runs"]["on"]) == len(data["runs"]["off"]) == 1
    assert all(run["server_cpu_us_per_call"] > 0 for side in data["runs"].values() for run in side)
    assert data["runs"]["on"][0]["scrapes"] >= 1 and data["runs"]["off"][0]["scrapes"] == 0
    assert len(data["scrape_cost_s"]["times"]) == 7


@pytest.mark.slow
def test_dashboard_bench_measures_every_page_and_call(tmp_path: Path) -> None:
    import os

    if not os.path.exists("/usr/bin/chromium") and os.environ.get("AGL_REQUIRE_BROWSER") != "1":
        pytest.skip("/usr/bin/chromium is missing: apt-get install -y chromium")
    out = tmp_path / "dashboard.json"
    done = subprocess.run(
        [sys.executable, str(BENCH / "dashboard.py"), "--rollouts", "200", "--spans-per-rollout", "4", "--runs", "1",
         "--calls", "2", "--db", str(tmp_path / "store.db"), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(out.read_text())
    assert (data["rollouts"], data["spans"]) == (200, 800)
    assert set(data["pages"]) == {"overview", "rollouts", "rollout detail", "resources", "workers"}
    for page in data["pages"].values():
        assert len(page["data_ms"]) == 1 and page["data_ms"][0] > 0
    for call in data["api"].values():
        assert "error" not in call and len(call["runs_ms"]) == 2


def test_spill_disk_fills_each_spill_within_its_budget(tmp_path: Path) -> None:
    out = tmp_path / "spill_disk.json"
    done = subprocess.run(
        [sys.executable, str(BENCH / "spill_disk.py"), "--budget", "256K", "--sizes", "1000", "10240",
         "--spans-per-rollout", "5", "--repeats", "2", "--dir", str(tmp_path), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(out.read_text())
    assert [row["span_bytes"] for row in data["summary"]] == [1000, 10240]
    assert len(data["runs"]) == 4
    for run in data["runs"]:
        assert run["spans"] > 0 and run["budget"] == 256 * 1024
        assert 0.5 < run["disk_over_budget"] <= 1.0


@pytest.mark.slow
def test_hostile_inputs_measures_every_case(tmp_path: Path) -> None:
    data = _run("hostile_inputs.py", "--quick", "--repeats", "1", out=tmp_path)
    runs = {name: cases[0] for name, cases in data["runs"].items()}
    assert runs["invalid spans body 1 MB"]["status"] == 422
    assert runs["invalid spans body 1 MB"]["answer_bytes"] <= 64 * 1024
    assert runs["2000 idempotency keys, no token"]["statuses"] == [401]
    assert runs["50 MB declared body, no token"]["status"] == 401


def test_store_asgi_app_runs_the_cycle_through_asgi(tmp_path: Path) -> None:
    data = _run("store_asgi_app.py", "--cycles", "20", "--warmup", "5", "--repeats", "2", out=tmp_path)
    assert data["cycles"] == 20 and len(data["us_per_call_runs"]) == 2
    assert data["us_per_call_median"] > 0 and data["workers"] == 1


def test_store_asgi_app_spreads_dequeues_over_many_workers(tmp_path: Path) -> None:
    data = _run(
        "store_asgi_app.py", "--cycles", "30", "--warmup", "5", "--repeats", "1", "--workers", "7", out=tmp_path
    )
    assert data["workers"] == 7 and data["us_per_call_median"] > 0
    assert data["workers_in_store"] == [7]  # 35 dequeues took turns over the 7 worker ids


@pytest.mark.slow
def test_many_runners_heartbeats_first_and_audits_every_rollout(tmp_path: Path) -> None:
    out = tmp_path / "many_runners.json"
    args = ["--runners", "12", "--rollouts", "60", "--procs", "2", "--backend", "memory", "--timeout", "120"]
    done = subprocess.run(
        [sys.executable, str(BENCH / "many_runners.py"), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["errors"] == 0 and row["audit"] == {"succeeded": 60}
    # Every runner made its first heartbeat (which opened its connection) before the clock started.
    assert row["first_heartbeat_ms"]["count"] == 12
    assert 0 < row["first_heartbeat_ms"]["p50"] <= row["first_heartbeat_ms"]["max"]
    assert row["calls"] >= 5 * 60  # dequeue, 3 spans, status per rollout, plus polls of an empty queue
    assert row["runners_cpu_per_call_us"] > 0 and row["server_cpu_per_call_us"] > 0


def test_accept_burst_runs_both_ways(tmp_path: Path) -> None:
    data = _run("accept_burst.py", "--busy", "2", "--new", "20", "--repeats", "1", "--give-up", "30", out=tmp_path)
    assert [run["eager_accept"] for run in data["runs"]] == [True, False]
    assert all(run["all_answered_s"] is not None and run["max_s"] > 0 for run in data["runs"])
