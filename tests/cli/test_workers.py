"""`agl workers` against a real store server."""

from __future__ import annotations

import json
import re

import pytest

from agl.cli import main
from tests.cli.conftest import Filled


def test_workers_shows_status_current_rollout_heartbeat_and_last_error(
    filled: Filled, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["workers", "--store", filled.url])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["WORKER", "STATUS", "CURRENT", "ROLLOUT", "HEARTBEAT", "LAST", "ERROR"]
    by_worker = {line.split()[0]: line for line in lines[1:] if line.startswith("Worker-")}
    assert set(by_worker) == {"Worker-0", "Worker-1"}
    busy = by_worker["Worker-1"].split()
    assert busy[1] == "busy" and busy[2] == filled.running
    assert re.search(r"  (\d+ ms|\d+\.\d\d s) ago  ", by_worker["Worker-1"])  # a fresh heartbeat
    # each worker ran one of the failed rollout's two failed attempts
    assert f"failed {filled.failed}" in by_worker["Worker-1"] and f"failed {filled.failed}" in by_worker["Worker-0"]
    assert by_worker["Worker-0"].split()[1:3] == ["idle", "-"]
    assert lines[-1] == "2 workers, 0 silent (no heartbeat for 30.00 s)"


def test_workers_json(filled: Filled, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workers", "--store", filled.url, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    items = {w["worker_id"]: w for w in data["items"]}
    assert set(items) == {"Worker-0", "Worker-1"}
    assert items["Worker-1"]["status"] == "busy" and items["Worker-1"]["current_rollout_id"] == filled.running
    assert 0 <= items["Worker-1"]["heartbeat_age_seconds"] < 30 and items["Worker-1"]["silent"] is False
    assert items["Worker-1"]["last_error"]["rollout_id"] == filled.failed
    assert items["Worker-0"]["last_error"]["rollout_id"] == filled.failed
    assert items["Worker-0"]["last_error"]["attempt_id"] != items["Worker-1"]["last_error"]["attempt_id"]
    assert items["Worker-0"]["current_rollout_id"] is None
