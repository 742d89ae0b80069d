"""Several `agl store --backend postgres` processes on one database serve the same data: work enqueued through one
is claimed through another, a waiter on one wakes when a runner on another finishes, and a keyed write retried on
another server gets the first answer. An unreachable database stops `agl store` with a one-line error."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from agl.store.client import LightningStoreClient
from agl.store.http.wire import REPLAYED_HEADER
from tests.cli.test_store_cli import free_port, start, wait_healthy


@contextmanager
def _servers(dsn: str, n: int) -> Iterator[list[int]]:
    """`n` `agl store --backend postgres` processes on `dsn`; their ports. All are killed after."""
    procs: list[subprocess.Popen[str]] = []
    ports = [free_port() for _ in range(n)]
    try:
        for port in ports:
            procs.append(start("--port", str(port), "--backend", "postgres", "--dsn", dsn, "--log-level", "WARNING"))
        for port, proc in zip(ports, procs, strict=True):
            wait_healthy(port, proc, timeout=60)
        yield ports
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=15)


async def test_two_servers_on_one_database_serve_the_same_store(postgres_dsn: str) -> None:
    with _servers(postgres_dsn, 2) as (port_a, port_b):
        a = LightningStoreClient(f"http://127.0.0.1:{port_a}")
        b = LightningStoreClient(f"http://127.0.0.1:{port_b}")
        try:
            rollout = await a.enqueue_rollout({"task": 1})
            claimed = await b.dequeue_rollout(worker_id="w-b")
            assert claimed is not None and claimed.rollout_id == rollout.rollout_id
            assert await a.dequeue_rollout(worker_id="w-a") is None  # claimed once, through either server
            waiting = asyncio.create_task(b.wait_for_rollouts(rollout_ids=[rollout.rollout_id], timeout=30))
            await asyncio.sleep(0.5)
            started = time.monotonic()
            await a.update_attempt(rollout.rollout_id, claimed.attempt.attempt_id, status="succeeded")
            done = await waiting
            assert [r.status for r in done] == ["succeeded"]
            assert time.monotonic() - started < 10
            worker = await a.get_worker_by_id("w-b")  # written through b, read through a
            assert worker is not None and worker.status == "idle"
        finally:
            await a.close()
            await b.close()


def test_a_keyed_enqueue_retried_on_the_other_server_creates_one_rollout(postgres_dsn: str) -> None:
    with _servers(postgres_dsn, 2) as (port_a, port_b):
        body = {"rollouts": [{"input": {"task": 1}}]}
        key = {"Idempotency-Key": "enqueue-3c9d"}
        with (
            httpx.Client(base_url=f"http://127.0.0.1:{port_a}", timeout=10) as a,
            httpx.Client(base_url=f"http://127.0.0.1:{port_b}", timeout=10) as b,
        ):
            first = a.post("/v1/agl/queues/rollouts/enqueue", json=body, headers=key)
            assert first.status_code == 201
            # Say the answer was lost and the client failed over to the other server with the same key.
            again = b.post("/v1/agl/queues/rollouts/enqueue", json=body, headers=key)
            assert again.status_code == 201
            assert again.content == first.content
            assert again.headers.get(REPLAYED_HEADER) == "true"
            assert b.get("/v1/agl/rollouts").json()["total"] == 1


def test_an_unreachable_database_stops_agl_store_with_one_line_naming_it_without_the_password() -> None:
    pytest.importorskip("psycopg", reason="needs the postgres extra (psycopg) to try the connection")
    port = free_port()
    proc = start("--port", str(port), "--backend", "postgres", "--dsn", "postgresql://bob:s3cret@127.0.0.1:1/agl")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    errors = [line for line in out.splitlines() if "could not start" in line]
    assert len(errors) == 1, out
    assert "cannot connect to PostgreSQL at postgresql://bob:***@127.0.0.1:1/agl" in errors[0]
    assert "s3cret" not in out
