"""`agl runner`: argument checks, and a real run against a real `agl store` on loopback that drains."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agl.cli.runner import load_agent, main
from agl.store.client import LightningStoreClient
from tests.cli.test_store_cli import free_port, start, wait_healthy

AGENT = """
from typing import Any
import agl

class Doubler(agl.LitAgent[Any]):
    async def rollout_async(self, task: Any, resources: Any, rollout: agl.Rollout) -> float:
        return float(task["x"]) * 2

agent = Doubler()
not_an_agent = 42
"""


@pytest.fixture
def agent_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "cli_runner_agent.py").write_text(AGENT)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cli_runner_agent", "MODULE:NAME"),
        ("no_such_module_xyz:agent", "no module 'no_such_module_xyz'"),
        ("cli_runner_agent:missing", "has no attribute 'missing'"),
        ("cli_runner_agent:not_an_agent", "is a int, not a LitAgent"),
    ],
)
def test_a_bad_agent_is_named_with_the_fix(agent_dir: Path, spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_agent(spec)


def test_agents_load_as_instances_or_classes(agent_dir: Path) -> None:
    assert type(load_agent("cli_runner_agent:agent")).__name__ == "Doubler"
    assert type(load_agent("cli_runner_agent:Doubler")).__name__ == "Doubler"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--store", "127.0.0.1:4747", "--agent", "a:b"], "--store must be http://HOST:PORT"),
        (["--store", "http://127.0.0.1:4747/v1/agl", "--agent", "a:b"], "--store must be http://HOST:PORT"),
        (["--store", "http://127.0.0.1:4747", "--agent", "a:b", "--n-runners", "0"], "--n-runners must be"),
        (["--store", "http://127.0.0.1:4747,127.0.0.1:4748", "--agent", "a:b"], "got '127.0.0.1:4748'"),
        (["--store", "http://127.0.0.1:4747", "--store", "http://127.0.0.1:4747/", "--agent", "a:b"], "twice"),
        (["--store", "http://127.0.0.1:4747,", "--agent", "a:b"], "got ''"),
    ],
)
def test_bad_arguments_exit_2_naming_the_flag(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_runners_take_work_from_a_store_and_exit_when_it_drains(agent_dir: Path) -> None:
    port = free_port()
    store = start("--port", str(port), "--drain-timeout", "10")
    runner: subprocess.Popen[str] | None = None
    try:
        wait_healthy(port, store)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(agent_dir), *sys.path])}
        runner = subprocess.Popen(
            [sys.executable, "-m", "agl.cli", "runner", "--store", f"http://127.0.0.1:{port}",
             "--agent", "cli_runner_agent:agent", "--n-runners", "2"],
            cwd=agent_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

        async def drive() -> list[str]:
            client = LightningStoreClient(f"http://127.0.0.1:{port}")
            try:
                ids = [(await client.enqueue_rollout({"x": i})).rollout_id for i in range(6)]
                done = await client.wait_for_rollouts(rollout_ids=ids, timeout=60)
                workers = [w.worker_id for w in await client.query_workers()]
                assert all(w.endswith(("Worker-0", "Worker-1")) and w != "Worker-0" for w in workers), workers
                return [r.status for r in done]
            finally:
                await client.close()

        assert asyncio.run(drive()) == ["succeeded"] * 6
        started = time.monotonic()
        store.send_signal(signal.SIGTERM)
        assert runner.wait(30) == 0
        assert time.monotonic() - started < 10
        assert store.wait(30) == 0
    finally:
        for proc in (runner, store):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
