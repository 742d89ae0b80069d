"""A SQLite-backed server keeps each write's Idempotency-Key with its answer in the write's own transaction, so a
retry after the server died (even by SIGKILL between commit and answer) gets the first answer, not a second write."""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from agl.store.http.wire import REPLAYED_HEADER
from agl.store.idempotency import IdempotencyRetention
from agl.store.server import LightningStoreServer
from agl.store.sqlite import SqliteLightningStore
from tests.cli.test_store_cli import free_port, start, wait_healthy
from tests.store.clock import FakeClock

ENQUEUE = "/v1/agl/queues/rollouts/enqueue"
DEQUEUE = "/v1/agl/queues/rollouts/dequeue"


def _enqueue_body(value: Any) -> dict[str, Any]:
    return {"rollouts": [{"input": value}]}


@contextmanager
def _agl_store(db: Path, port: int) -> Iterator[httpx.Client]:
    """`agl store --backend sqlite` as a child process, and an HTTP client of it; the process is ended after."""
    proc = start("--port", str(port), "--backend", "sqlite", "--path", str(db), "--log-level", "WARNING")
    try:
        wait_healthy(port, proc)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            yield http
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=15)


def test_enqueue_retried_after_sigkill_and_restart_gets_the_first_rollout(tmp_path: Path) -> None:
    db, port = tmp_path / "store.db", free_port()
    key = {"Idempotency-Key": "enqueue-7f3a"}
    with _agl_store(db, port) as http:
        first = http.post(ENQUEUE, json=_enqueue_body({"task": 1}), headers=key)
        assert first.status_code == 201
        claim = http.post(DEQUEUE, json={"worker_id": "w-1"}, headers={"Idempotency-Key": "dequeue-1"})
        assert claim.status_code == 200
        http.post(ENQUEUE, json=_enqueue_body({"task": 2}), headers={"Idempotency-Key": "enqueue-8b1c"})
    # Leaving the block killed the server with SIGKILL (no shutdown). Say the answers were lost on the way: the
    # client retries them with the same keys, against the restarted server.
    with _agl_store(db, free_port()) as http:
        again = http.post(ENQUEUE, json=_enqueue_body({"task": 1}), headers=key)
        assert again.status_code == 201
        assert again.json()[0]["rollout_id"] == first.json()[0]["rollout_id"]
        assert again.content == first.content
        assert again.headers.get(REPLAYED_HEADER) == "true"
        claim_again = http.post(DEQUEUE, json={"worker_id": "w-1"}, headers={"Idempotency-Key": "dequeue-1"})
        assert claim_again.json() == claim.json()  # the same claim, not a second rollout claimed
        rollouts = http.get("/v1/agl/rollouts").json()
        assert rollouts["total"] == 2
        assert {r["status"] for r in rollouts["items"]} == {"preparing", "queuing"}
        conflict = http.post(ENQUEUE, json=_enqueue_body({"task": "other"}), headers=key)
        assert conflict.status_code == 409 and "already used for a different request" in conflict.json()["detail"]
        assert http.get("/v1/agl/rollouts").json()["total"] == 2


@asynccontextmanager
async def _served(db: Path, clock: FakeClock, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A SQLite store on `db` behind a real server (free port) and an HTTP client; all closed after."""
    store = SqliteLightningStore(db, clock=clock, scan_debounce_seconds=0, **options)
    server = LightningStoreServer(store, host="127.0.0.1", port=0)
    server.start()
    try:
        async with httpx.AsyncClient(base_url=server.endpoint, timeout=10) as http:
            yield http
    finally:
        await server.stop_async()
        await store.close()


def _kept_rows(db: Path) -> tuple[int, int]:
    with sqlite3.connect(db) as conn:
        count, total = conn.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM idempotency_keys").fetchone()
    return int(count), int(total)


async def _enqueue(http: httpx.AsyncClient, key: str, value: Any = "x") -> httpx.Response:
    response = await http.post(ENQUEUE, json=_enqueue_body(value), headers={"Idempotency-Key": key})
    assert response.status_code in (201, 409), response.text
    return response


async def test_every_keyed_write_replays_after_a_restart(tmp_path: Path, clock: FakeClock) -> None:
    db = tmp_path / "store.db"
    async with _served(db, clock) as http:
        enqueued = (await _enqueue(http, "e")).json()[0]
        started = (await http.post("/v1/agl/rollouts", json={"input": 1}, headers={"Idempotency-Key": "s"})).json()
        attempt_path = f"/v1/agl/rollouts/{started['rollout_id']}/attempts/{started['attempt']['attempt_id']}"
        done = await http.post(attempt_path, json={"status": "succeeded"}, headers={"Idempotency-Key": "u"})
        resources = await http.post("/v1/agl/resources", json={}, headers={"Idempotency-Key": "r"})
        assert done.status_code == 200 and resources.status_code == 201
    async with _served(db, clock) as http:
        assert (await _enqueue(http, "e")).json()[0] == enqueued
        # A late "succeeded" would be refused as stale now; its retry gets the first answer instead.
        retried = await http.post(attempt_path, json={"status": "succeeded"}, headers={"Idempotency-Key": "u"})
        assert retried.status_code == 200 and retried.json() == done.json()
        again = await http.post("/v1/agl/resources", json={}, headers={"Idempotency-Key": "r"})
        assert again.json() == resources.json()
        assert (await http.get("/v1/agl/resources")).json()["total"] == 1
        assert (await http.get("/v1/agl/rollouts")).json()["total"] == 2


async def test_conflict_after_restart_keeps_the_first_answer(tmp_path: Path, clock: FakeClock) -> None:
    db = tmp_path / "store.db"
    async with _served(db, clock) as http:
        first = await _enqueue(http, "k", "original")
    async with _served(db, clock) as http:
        conflict = await _enqueue(http, "k", "different")
        assert conflict.status_code == 409
        again = await _enqueue(http, "k", "original")
        assert again.status_code == 201 and again.content == first.content
        assert (await http.get("/v1/agl/rollouts")).json()["total"] == 1


async def test_keys_expire_after_max_age(tmp_path: Path, clock: FakeClock) -> None:
    db = tmp_path / "store.db"
    retention = IdempotencyRetention(max_age_seconds=60)
    async with _served(db, clock, idempotency_retention=retention) as http:
        first = (await _enqueue(http, "k")).json()[0]["rollout_id"]
    clock.advance(59)
    async with _served(db, clock, idempotency_retention=retention) as http:
        assert (await _enqueue(http, "k")).json()[0]["rollout_id"] == first
    clock.advance(2)
    async with _served(db, clock, idempotency_retention=retention) as http:
        fresh = await _enqueue(http, "k")  # the key was forgotten: the request runs anew
        assert fresh.json()[0]["rollout_id"] != first and REPLAYED_HEADER not in fresh.headers
        for i in range(3):
            clock.advance(70)
            await _enqueue(http, f"later-{i}")  # expired keys are pruned as new ones come
    assert _kept_rows(db)[0] <= 2


async def test_retention_bounds_the_number_and_bytes_of_keys(tmp_path: Path, clock: FakeClock) -> None:
    db = tmp_path / "store.db"
    async with _served(db, clock, idempotency_retention=IdempotencyRetention(max_entries=10)) as http:
        first = [(await _enqueue(http, f"k{i}")).json()[0]["rollout_id"] for i in range(40)]
        assert _kept_rows(db)[0] <= 10
    async with _served(db, clock, idempotency_retention=IdempotencyRetention(max_entries=10)) as http:
        assert (await _enqueue(http, "k39")).json()[0]["rollout_id"] == first[39]  # recent: kept
        assert (await _enqueue(http, "k0")).json()[0]["rollout_id"] != first[0]  # oldest: dropped, runs anew
    size = len(_first_answer(db, "k39"))
    budget = size * 5
    async with _served(db, clock, idempotency_retention=IdempotencyRetention(max_bytes=budget)) as http:
        for i in range(30):
            await _enqueue(http, f"b{i}")
        count, total = _kept_rows(db)
        assert total <= budget and count <= 5


def _first_answer(db: Path, key: str) -> bytes:
    with sqlite3.connect(db) as conn:
        (body,) = conn.execute("SELECT body FROM idempotency_keys WHERE key = ?", (key,)).fetchone()
    return bytes(body)


async def test_an_overlong_key_is_refused_and_nothing_is_written(tmp_path: Path, clock: FakeClock) -> None:
    async with _served(tmp_path / "store.db", clock) as http:
        response = await http.post(ENQUEUE, json=_enqueue_body("x"), headers={"Idempotency-Key": "k" * 256})
        assert response.status_code == 400
        assert "Idempotency-Key header is 256 bytes; at most 255" in response.json()["detail"]
        assert (await http.get("/v1/agl/rollouts")).json()["total"] == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_age_seconds", 0), ("max_age_seconds", float("inf")), ("max_entries", 0), ("max_bytes", -1)],
)
def test_retention_refuses_bad_bounds(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        IdempotencyRetention(**{field: value})
