"""`agl store` as a real child process: serves, resumes a SQLite file, refuses a taken port, stops on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

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


# -- bind and token rules -----------------------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("AGL_STORE_TOKEN", "AGL_STORE_INSECURE")}
    env.update(extra)
    return env


def _launch(args: list[str], env: dict[str, str], module: str = "agl.cli") -> subprocess.Popen[str]:
    prefix = [sys.executable, "-m", module] + (["store"] if module == "agl.cli" else [])
    return subprocess.Popen([*prefix, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _refused(args: list[str], env: dict[str, str], module: str = "agl.cli") -> tuple[int, str, str]:
    proc = _launch(args, env, module)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


def _status(port: int, token: str | None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/agl/statistics")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _check(ok: bool) -> None:
    assert ok


def _served(args: list[str], env: dict[str, str], port: int, probe: Any) -> tuple[str, str]:
    """Start `agl store` with `args`, run `probe()` once it is healthy, stop it; its stdout and stderr."""
    proc = _launch(args, env)
    try:
        wait_healthy(port, proc)
        probe()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert proc.returncode == 0, err
    return out, err


def test_default_bind_is_loopback_only() -> None:
    import psutil

    port = free_port()
    proc = _launch(["--port", str(port)], _env())
    try:
        wait_healthy(port, proc)
        process = psutil.Process(proc.pid)
        conns = getattr(process, "net_connections", process.connections)(kind="inet")  # psutil < 6: connections
        listening = [c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    assert listening == ["127.0.0.1"]
    assert f"AGL store at http://127.0.0.1:{port}/v1/agl" in out


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_all_interfaces_without_a_token_exits_2_with_one_line(tmp_path: Path, host: str) -> None:
    db = tmp_path / "s.db"
    code, out, err = _refused(["--host", host, "--port", str(free_port()), "--backend", "sqlite", "--path", str(db)],
                              _env())  # fmt: skip
    assert code == 2 and out == "" and not db.exists()  # refused before the store was made
    assert err.count("\n") == 1 and f"refusing to serve the store on {host} without a token" in err
    assert "--token-file FILE" in err and "AGL_STORE_TOKEN" in err and "--insecure" in err


def test_python_m_server_refuses_the_same_way_at_bind() -> None:
    code, _, err = _refused(["--host", "0.0.0.0", "--port", str(free_port())], _env(), module="agl.store.server")
    assert code == 2 and "refusing to serve the store on 0.0.0.0 without a token" in err


def test_insecure_serves_all_interfaces_with_a_warning() -> None:
    port = free_port()
    _, err = _served(["--host", "0.0.0.0", "--port", str(port), "--insecure"], _env(), port,
                     lambda: _check(_status(port, None) == 200))  # fmt: skip
    assert "WITHOUT a token (insecure)" in err


def test_token_from_the_environment_allows_all_interfaces() -> None:
    port = free_port()
    _, err = _served(["--host", "0.0.0.0", "--port", str(port)], _env(AGL_STORE_TOKEN="env-tok"), port,
                     lambda: _check((_status(port, None), _status(port, "env-tok")) == (401, 200)))  # fmt: skip
    assert "WITHOUT a token" not in err and "visible" not in err


def test_token_file_wins_over_the_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-tok\n")
    token_file.chmod(0o600)
    port = free_port()
    args = ["--host", "0.0.0.0", "--port", str(port), "--token-file", str(token_file)]
    _served(args, _env(AGL_STORE_TOKEN="env-tok"), port,
            lambda: _check((_status(port, "env-tok"), _status(port, "file-tok")) == (401, 200)))  # fmt: skip


def test_token_on_the_command_line_wins_and_warns_about_ps() -> None:
    port = free_port()
    args = ["--port", str(port), "--token", "argv-tok"]
    _, err = _served(args, _env(AGL_STORE_TOKEN="env-tok"), port,
                     lambda: _check((_status(port, "env-tok"), _status(port, "argv-tok")) == (401, 200)))  # fmt: skip
    assert "--token is visible to every user of this machine" in err


@pytest.mark.parametrize(
    ("content", "mode", "message"),
    [("", 0o600, "is empty"), ("tok", 0o644, "chmod 600"), (None, 0o600, "cannot read the token file")],
)
def test_bad_token_files_exit_2_before_anything_starts(
    tmp_path: Path, content: str | None, mode: int, message: str
) -> None:
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)
        token_file.chmod(mode)
    db = tmp_path / "s.db"
    args = ["--port", str(free_port()), "--token-file", str(token_file), "--backend", "sqlite", "--path", str(db)]
    code, _, err = _refused(args, _env())
    assert code == 2 and message in err and err.count("\n") == 1
    assert not db.exists()  # refused before the store was made


def test_token_and_token_file_together_are_a_usage_error(tmp_path: Path) -> None:
    code, _, err = _refused(["--port", "0", "--token", "a", "--token-file", str(tmp_path / "t")], _env())
    assert code == 2 and "not allowed with argument" in err
