"""Two `agl store` processes on one database, 8 runners (`agl runner --store A,B`), one server killed with SIGKILL in
the middle of the run: every rollout still completes, exactly once (one run of the agent, one attempt), none lost.

Each database backend that can be shared by two server processes is a parameter: SQLite (one file), and PostgreSQL
where its throwaway test server is available.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from agl.store.client import LightningStoreClient
from tests.cli.test_store_cli import free_port, start, wait_healthy

ROLLOUTS = 160
RUNNERS = 8

AGENT = """
import asyncio
import os
from typing import Any

import agl


class Recorder(agl.LitAgent[Any]):
    async def rollout_async(self, task: Any, resources: Any, rollout: agl.Rollout) -> float:
        with open(os.environ["FAILOVER_RUNS"], "a") as runs:  # one short O_APPEND write per run of the agent
            runs.write(rollout.rollout_id + "\\n")
        await asyncio.sleep(0.1)
        return float(task["i"])


agent = Recorder()
"""


@contextmanager
def _database(backend: str, tmp_path: Path) -> Iterator[list[str]]:
    """`agl store` arguments naming one database both servers open."""
    if backend == "sqlite":
        yield ["--backend", "sqlite", "--path", str(tmp_path / "shared.db")]
        return
    postgres = pytest.importorskip(
        "tests.store.postgres_server", reason="the throwaway PostgreSQL fixture (tests/store/postgres_server.py) "
        "is not in this tree"
    )  # fmt: skip
    with postgres.fresh_database() as dsn:
        yield ["--backend", "postgres", "--dsn", dsn]


def _end(proc: subprocess.Popen[Any], group: bool = False) -> None:
    """Kill `proc` (and its process group) if still running, and reap it."""
    if proc.poll() is None:
        try:
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        except ProcessLookupError:
            pass
    try:
        proc.communicate(timeout=15)
    except (subprocess.TimeoutExpired, ValueError):
        pass


def _served_dequeues(url: str) -> int:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("agl_http_request_duration_seconds_count{")
                   and 'route="/v1/agl/queues/rollouts/dequeue"' in line))  # fmt: skip


async def _succeeded(client: LightningStoreClient) -> int:
    return (await client.query_rollouts(status_in=["succeeded"], limit=1)).total


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_server_killed_mid_run_loses_and_repeats_nothing(backend: str, tmp_path: Path) -> None:
    (tmp_path / "failover_agent.py").write_text(AGENT)
    runs_log = tmp_path / "runs.log"
    processes: list[tuple[subprocess.Popen[Any], bool]] = []
    with _database(backend, tmp_path) as database:
        try:
            ports = [free_port(), free_port()]
            servers: list[subprocess.Popen[str]] = []
            for port in ports:
                servers.append(start("--port", str(port), *database, "--log-level", "WARNING"))
                processes.append((servers[-1], False))
            for port, server in zip(ports, servers, strict=True):
                wait_healthy(port, server)
            urls = [f"http://127.0.0.1:{p}" for p in ports]
            env = {**os.environ, "FAILOVER_RUNS": str(runs_log), "PYTHONPATH": os.pathsep.join(sys.path)}
            runner = subprocess.Popen(
                [sys.executable, "-m", "agl.cli", "runner", "--store", ",".join(urls), "--agent",
                 "failover_agent:agent", "--n-runners", str(RUNNERS), "--log-level", "WARNING"],
                cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True,
            )  # fmt: skip
            processes.append((runner, True))
            asyncio.run(_run(urls, servers, runner))
        finally:
            for proc, group in processes:
                _end(proc, group)
    runs = Counter(runs_log.read_text().split())
    assert len(runs) == ROLLOUTS, f"{ROLLOUTS - len(runs)} rollouts never ran"
    repeated = {rid: n for rid, n in runs.items() if n > 1}
    assert not repeated, f"rollouts run more than once: {repeated}"


async def _run(urls: list[str], servers: list[subprocess.Popen[str]], runner: subprocess.Popen[str]) -> None:
    both = LightningStoreClient(urls, request_timeout=20)
    survivor = LightningStoreClient(urls[1], request_timeout=20)
    try:
        ids = [r.rollout_id for r in await both.enqueue_many_rollouts([{"input": {"i": i}} for i in range(ROLLOUTS)])]
        deadline = time.monotonic() + 120
        while await _succeeded(survivor) < ROLLOUTS // 4:
            assert runner.poll() is None, runner.communicate()[0]
            assert time.monotonic() < deadline, "the runners made no progress"
            await asyncio.sleep(0.05)
        assert _served_dequeues(urls[0]) > 0  # the server about to die was serving the runners
        servers[0].send_signal(signal.SIGKILL)
        servers[0].wait(10)
        assert await _succeeded(survivor) < ROLLOUTS, "the kill came after the run"
        while await _succeeded(survivor) < ROLLOUTS:
            assert runner.poll() is None, runner.communicate()[0]
            assert time.monotonic() < deadline, f"{ROLLOUTS - await _succeeded(survivor)} rollouts never finished"
            await asyncio.sleep(0.1)
        for rollout_id in ids:
            attempts = await survivor.query_attempts(rollout_id)
            assert [a.status for a in attempts] == ["succeeded"], (rollout_id, attempts.items)
        assert (await survivor.query_rollouts(status_in=["succeeded"])).total == ROLLOUTS
    finally:
        await both.close()
        await survivor.close()
    # The surviving server drains: the runners, which cannot reach the dead one, hear it and exit cleanly.
    servers[1].send_signal(signal.SIGTERM)
    out, _ = runner.communicate(timeout=60)
    assert runner.returncode == 0, out
    assert servers[1].wait(30) == 0
