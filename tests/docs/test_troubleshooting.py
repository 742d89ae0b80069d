"""Each message quoted in docs/troubleshooting.md is what AGL prints: every case is caused here for real."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import agl
from agl.store.errors import StoreFullError
from agl.store.memory import InMemoryLightningStore
from tests.cli.test_store_cli import free_port, start, wait_healthy

DOC = (Path(__file__).resolve().parents[2] / "docs" / "troubleshooting.md").read_text()


def _normal(text: str) -> str:
    """Numbers, ids and process names vary between runs: compare what is left."""
    text = re.sub(r"\b(ro|at)-[0-9a-f]+", r"\1-ID", text)
    text = re.sub(r"by pid \d+ \([^)]*\)", "by pid N (NAME)", text)
    return re.sub(r"\d+", "N", text)


def assert_documented(message: str) -> None:
    message = message.strip()
    assert message, "no message was printed"
    assert _normal(message) in _normal(DOC), f"docs/troubleshooting.md does not quote what AGL printed:\n{message}"


def _agl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agl.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_port_in_use() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = _agl("store", "--port", str(port))
    assert done.returncode == 1
    line = next(line for line in done.stderr.splitlines() if "could not start" in line)
    assert_documented(line.split("agl.cli.store: ", 1)[1])


def test_runners_cannot_reach_the_store(tmp_path: Path) -> None:
    (tmp_path / "ts_agent.py").write_text("import agl\n\n@agl.rollout\ndef agent(task, llm):\n    return 1.0\n")
    done = subprocess.run(
        [sys.executable, "-m", "agl.cli", "runner", "--store", f"http://127.0.0.1:{free_port()}",
         "--agent", "ts_agent:agent", "--wait", "1"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1
    assert_documented(done.stderr.strip().splitlines()[-1])


def test_network_address_without_token() -> None:
    done = _agl("store", "--host", "0.0.0.0")
    assert done.returncode == 2
    assert_documented(done.stderr.strip())


def test_missing_and_wrong_token(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("sekrit\n")
    token.chmod(0o600)
    port = free_port()
    store = start("--port", str(port), "--token-file", str(token))
    try:
        wait_healthy(port, store)
        done = _agl("stats", "--store", f"http://127.0.0.1:{port}")
        assert done.returncode != 0
        assert_documented(done.stderr.strip())

        async def wrong() -> None:
            client = agl.LightningStoreClient(f"http://127.0.0.1:{port}", token="wrong")
            try:
                await client.enqueue_rollout(1)
            finally:
                await client.close()

        with pytest.raises(Exception) as info:
            asyncio.run(wrong())
        assert type(info.value).__name__ == "StoreAuthError"
        assert_documented(str(info.value))
    finally:
        store.kill()
        store.wait(10)


@pytest.mark.parametrize(("name", "value"), [("AGL_SERVER_PORT", "abc"), ("AGL_CURRENT_ROLE", "runnr")])
def test_wrong_agl_variable(name: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from agl.execution.client_server import ClientServerExecutionStrategy

    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError) as info:
        ClientServerExecutionStrategy()
    assert_documented(f"ValueError: {info.value}")


async def test_memory_full() -> None:
    store = InMemoryLightningStore(eviction_memory_threshold=20_000, safe_memory_threshold=10_000, spill_max_bytes=0)
    rollout = await store.start_rollout({"x": 1})
    with pytest.raises(StoreFullError) as info:
        for i in range(1, 200):
            await store.add_span(
                agl.Span(rollout_id=rollout.rollout_id, attempt_id=rollout.attempt.attempt_id, sequence_id=i,
                         trace_id="0" * 32, span_id=f"{i:016x}", name="s", attributes={"t": "x" * 500})
            )  # fmt: skip
    assert_documented(f"StoreFullError: {info.value}")


async def test_calls_time_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; returns when the client gives up and closes
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = agl.LightningStoreClient(
        f"http://127.0.0.1:{port}", request_timeout=0.3, retry_delays=(), health_retry_delays=()
    )
    try:
        with pytest.raises(Exception) as info:
            await client.enqueue_rollout(1)
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
    assert_documented(str(info.value).replace(str(port), "4747"))


async def test_a_stale_attempt_is_abandoned(caplog: pytest.LogCaptureFixture) -> None:
    class Slow(agl.LitAgent[Any]):
        async def rollout_async(self, task: Any, resources: Any, rollout: agl.Rollout) -> float:
            await asyncio.sleep(0.3)
            return 1.0

    store = InMemoryLightningStore()
    first = await store.enqueue_rollout(1)
    runner = agl.LitAgentRunner[Any](agl.DummyTracer(), max_rollouts=1, heartbeat_interval=0)
    runner.init(Slow())
    runner.init_worker(0, store)
    running = asyncio.ensure_future(runner.iter())
    while (await store.get_rollout_by_id(first.rollout_id)).status == "queuing":  # type: ignore[union-attr]
        await asyncio.sleep(0.01)
    await store.update_rollout(first.rollout_id, status="cancelled")
    with caplog.at_level(logging.WARNING):
        await asyncio.wait_for(running, 5)
    line = next(r.getMessage() for r in caplog.records if "moved on" in r.getMessage())
    assert_documented(line)
