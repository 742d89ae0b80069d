"""`agl stats` against a real store server."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agl.cli import main
from agl.cli.output import fmt_bytes
from agl.store.memory import InMemoryLightningStore
from agl.store.sqlite import SqliteLightningStore
from tests.cli.conftest import Filled, serve_filled


def test_stats_is_one_screen_of_counts_queue_throughput_workers_and_memory(
    filled: Filled, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["stats", "--store", filled.url])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = {line.split()[0]: line.split(None, 1)[1] for line in out.splitlines()}
    assert lines["store"].startswith(f"{filled.url} (InMemoryLightningStore, up ")
    assert lines["rollouts"] == (
        "4: queuing 1, preparing 0, running 1, failed 1, succeeded 1, cancelled 0, requeuing 0"
    )
    assert lines["queue"].startswith("1 waiting, oldest ")
    assert lines["throughput"].startswith("2 finished in the last 15m 00s (0.1/min): 1 succeeded, 1 failed")
    assert lines["throughput"].endswith("error rate 50 %")
    assert lines["workers"] == "2: 1 busy, 1 idle, 0 silent"
    assert lines["spans"].startswith("6 stored, ")
    assert lines["memory"].startswith("spans spill to disk above ")
    assert len(out.splitlines()) <= 24  # one screen


def test_stats_json_and_window(filled: Filled, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--store", filled.url, "--json", "--window", "60"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["rollouts"]["total"] == 4
    assert data["rollouts"]["by_status"]["succeeded"] == 1 and data["rollouts"]["by_status"]["queuing"] == 1
    assert data["queue"]["depth"] == 1 and data["queue"]["oldest_age_seconds"] >= 0
    t = data["throughput"]
    assert (t["window_seconds"], t["finished"], t["succeeded"], t["failed"]) == (60, 2, 1, 1)
    assert t["per_minute"] == 2.0 and t["error_rate"] == 0.5
    assert data["store"]["total_spans"] == 6 and data["store"]["total_rollouts"] == 4


@pytest.mark.parametrize("window", ["0", "-5", "86401", "soon"])
def test_stats_rejects_a_bad_window(window: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["stats", "--window", window])
    assert exc.value.code == 2 and "--window" in capsys.readouterr().err


def test_stats_shows_the_reward_once_the_store_has_read_it(filled: Filled, capsys: pytest.CaptureFixture[str]) -> None:
    deadline = time.monotonic() + 20
    while True:  # the dashboard reads rewards from spans in the background
        assert main(["stats", "--store", filled.url, "--json"]) == 0
        reward = json.loads(capsys.readouterr().out)["reward"]
        if reward["count"] >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert reward["count"] == 1
    assert reward["latest_version"]["mean"] == 0.75
    assert reward["latest_version"]["resources_id"] == filled.resources_id
    assert main(["stats", "--store", filled.url]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split(None, 1)[1] for line in out.splitlines()}
    assert lines["reward"] == (
        f"mean 0.75 over 1 rollouts with resources {filled.resources_id} (v1); 1 rollouts rewarded in all"
    )
    assert lines["resources"] == f"latest {filled.resources_id} (1 snapshots)"


def test_stats_shows_the_spill_of_a_memory_store_over_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGL_STORE_TOKEN", raising=False)
    store = InMemoryLightningStore(
        thread_safe=True,
        scan_debounce_seconds=0,
        memory_capacity_bytes=8000,
        eviction_memory_threshold=0.5,
        safe_memory_threshold=0.1,
        spill_dir=str(tmp_path),
    )
    served = serve_filled(None, store)
    filled = next(served)
    try:
        assert main(["stats", "--store", filled.url]) == 0
        lines = {line.split()[0]: line.split(None, 1)[1] for line in capsys.readouterr().out.splitlines()}
        assert main(["stats", "--store", filled.url, "--json"]) == 0
        figures = json.loads(capsys.readouterr().out)["store"]
    finally:
        served.close()
    assert figures["spilled_spans"] > 0
    assert lines["memory"] == "spans spill to disk above 3.9 KiB, down to 800 B (capacity 7.8 KiB)"
    assert lines["spill"] == (
        f"{fmt_bytes(figures['spilled_span_bytes'])} on disk: {figures['spilled_spans']} spans of "
        f"{figures['spilled_rollouts']} rollouts"
    )


def test_stats_shows_the_database_files_of_a_sqlite_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGL_STORE_TOKEN", raising=False)
    path = str(tmp_path / "store.db")
    served = serve_filled(None, SqliteLightningStore(path))
    filled = next(served)
    try:
        assert main(["stats", "--store", filled.url]) == 0
        out = capsys.readouterr().out
    finally:
        served.close()
    lines = {line.split()[0]: line.split(None, 1)[1] for line in out.splitlines()}
    assert lines["store"].startswith(f"{filled.url} (SqliteLightningStore, up ")
    assert lines["database"].startswith(f"{path}: ") and ", WAL " in lines["database"]
    assert lines["rollouts"].startswith("4: ")
