"""`agl store` as a real child process: serves, resumes a SQLite file, refuses a taken port, stops on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agl.store.client import LightningStoreClient


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agl.cli", "store", "--host", "127.0.0.1", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_healthy(port: int, proc: subprocess.Popen[str], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"agl store exited early: {proc.stdout.read() if proc.stdout else ''}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/agl/health", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("agl store did not become healthy")


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise
    assert proc.returncode == 0, out
    return out


async def _enqueue(port: int, n: int) -> list[str]:
    client = LightningStoreClient(f"http://127.0.0.1:{port}")
    try:
        return [(await client.enqueue_rollout({"i": i})).rollout_id for i in range(n)]
    finally:
        await client.close()


async def _queued(port: int) -> list[str]:
    client = LightningStoreClient(f"http://127.0.0.1:{port}")
    try:
        return [r.rollout_id for r in await client.query_rollouts(status_in=["queuing"])]
    finally:
        await client.close()


def test_sqlite_store_serves_and_resumes_after_restart(tmp_path: Path) -> None:
    db = str(tmp_path / "store.db")
    port = free_port()
    proc = start("--port", str(port), "--backend", "sqlite", "--path", db)
    try:
        wait_healthy(port, proc)
        ids = asyncio.run(_enqueue(port, 3))
    finally:
        out = stop(proc)
    assert f"http://127.0.0.1:{port}" in out
    proc = start("--port", str(port), "--backend", "sqlite", "--path", db)
    try:
        wait_healthy(port, proc)
        assert asyncio.run(_queued(port)) == ids
    finally:
        stop(proc)


def test_port_in_use_is_refused_with_the_port_named() -> None:
    port = free_port()
    first = start("--port", str(port))
    try:
        wait_healthy(port, first)
        second = start("--port", str(port))
        out, _ = second.communicate(timeout=30)
        assert second.returncode == 1
        assert f"port {port}" in out and "already in use" in out
    finally:
        stop(first)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "sqlite"], "needs --path"),
        (["--path", "x.db"], "only for --backend sqlite"),
        (["--claim-timeout", "-1"], "--claim-timeout -1.0: give the seconds"),
        (["--claim-timeout", "nan"], "--claim-timeout nan: give the seconds"),
        (["--claim-timeout", "soon"], "argument --claim-timeout: invalid float value: 'soon'"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(args: list[str], message: str) -> None:
    proc = start("--port", "0", *args)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2 and message in out


async def _claim_two_and_beat_for_one(port: int, seconds: float) -> tuple[str, str]:
    """Claim two rollouts as two workers; only `w-beating` sends heartbeats (every 0.2 s) for `seconds`."""
    client = LightningStoreClient(f"http://127.0.0.1:{port}")
    try:
        await client.enqueue_rollout("silent")
        await client.enqueue_rollout("beating")
        silent = await client.dequeue_rollout(worker_id="w-silent")
        beating = await client.dequeue_rollout(worker_id="w-beating")
        assert silent is not None and beating is not None
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await client.update_worker("w-beating")
            await asyncio.sleep(0.2)
        statuses = []
        for claimed in (silent, beating):
            rollout = await client.get_rollout_by_id(claimed.rollout_id)
            assert rollout is not None
            statuses.append(rollout.status)
        return statuses[0], statuses[1]
    finally:
        await client.close()


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_claim_timeout_requeues_a_silent_claim(tmp_path: Path, backend: str) -> None:
    port = free_port()
    extra = ["--path", str(tmp_path / "store.db")] if backend == "sqlite" else []
    proc = start("--port", str(port), "--backend", backend, *extra, "--claim-timeout", "1",
                 "--health-check-interval", "0.1")  # fmt: skip
    try:
        wait_healthy(port, proc)
        # The server's own health checks requeue the silent claim; the beating runner keeps its claim.
        assert asyncio.run(_claim_two_and_beat_for_one(port, 2.5)) == ("requeuing", "preparing")
    finally:
        stop(proc)


def test_unknown_subcommand_is_a_usage_error() -> None:
    proc = subprocess.run([sys.executable, "-m", "agl.cli", "nope"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def _scrape(port: int, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.parametrize("public", [False, True])
def test_metrics_need_the_token_unless_metrics_public(tmp_path: Path, public: bool) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    port = free_port()
    args = ["--port", str(port), "--token", "tok", "--backend", "sqlite", "--path", str(tmp_path / "s.db")]
    proc = start(*args, *(["--metrics-public"] if public else []))
    try:
        wait_healthy(port, proc)
        status, _ = _scrape(port)
        assert status == (200 if public else 401)
        status, text = _scrape(port, token="tok")
        assert status == 200
    finally:
        stop(proc)
    samples = {
        (s.name, tuple(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples
    }
    assert samples[("agl_rollouts", (("status", "queuing"),))] == 0
    assert samples[("agl_store_file_bytes", (("file", "db"),))] > 0  # the SQLite store's own figures
