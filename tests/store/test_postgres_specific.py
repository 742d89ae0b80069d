"""What only the PostgreSQL store promises: schema versions, persistence, several stores (and processes) on one
database claiming and numbering correctly, waking each other's waiters, durable idempotency keys, masked DSNs."""

from __future__ import annotations

import asyncio
import json
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agl.store import idempotency
from agl.store.postgres import SCHEMA, SCHEMA_VERSION, PostgresLightningStore, PostgresStoreError, mask_dsn
from agl.types import RolloutConfig
from tests.store.clock import FakeClock
from tests.store.helpers import make_span, sample_resources
from tests.store.postgres_server import fresh_database

REPO = Path(__file__).resolve().parents[2]


def open_store(dsn: str, clock: FakeClock | None = None) -> PostgresLightningStore:
    return PostgresLightningStore(dsn, clock=clock, scan_debounce_seconds=0)


def _sql(dsn: str, sql: str) -> list[tuple[object, ...]]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


# -- the DSN in messages ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "masked"),
    [
        ("postgresql://bob:s3cret@db.example:5432/agl", "postgresql://bob:***@db.example:5432/agl"),
        ("postgres://bob@db/agl?password=s3cret&sslmode=require", "postgres://bob@db/agl?password=***&sslmode=require"),
        ("postgresql://db/agl", "postgresql://db/agl"),
        ("host=db password=s3cret dbname=agl", "host=db password=*** dbname=agl"),
        ("host=db password='s3 cret' dbname=agl", "host=db password=*** dbname=agl"),
    ],
)
def test_mask_dsn_hides_the_password(dsn: str, masked: str) -> None:
    assert mask_dsn(dsn) == masked
    assert "s3" not in mask_dsn(dsn)


def test_unreachable_database_is_a_clear_error_without_the_password() -> None:
    pytest.importorskip("psycopg", reason="needs the postgres extra (psycopg) to try the connection")
    with pytest.raises(PostgresStoreError) as caught:
        PostgresLightningStore("postgresql://bob:s3cret@127.0.0.1:1/agl", connect_timeout_seconds=2)
    message = str(caught.value)
    assert "cannot connect to PostgreSQL at postgresql://bob:***@127.0.0.1:1/agl" in message
    assert "s3cret" not in message


def test_bad_arguments_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="dsn must be"):
        PostgresLightningStore("")
    with pytest.raises(ValueError, match="max_connections"):
        PostgresLightningStore("postgresql://db/agl", min_connections=4, max_connections=2)


# -- schema versions ----------------------------------------------------------------------------------------------


def test_an_empty_database_is_migrated_once_by_stores_opening_together() -> None:
    with fresh_database(migrated=False) as dsn:
        stores: list[PostgresLightningStore] = []
        errors: list[BaseException] = []

        def open_one() -> None:
            try:
                stores.append(open_store(dsn))
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=open_one) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        try:
            assert errors == []
            assert _sql(dsn, f"SELECT value FROM {SCHEMA}.meta WHERE key = 'schema_version'") == [
                (str(SCHEMA_VERSION),)
            ]
        finally:
            for store in stores:
                asyncio.run(store.close())


def test_a_database_from_a_newer_agl_is_refused_naming_both_versions(postgres_dsn: str) -> None:
    _sql(postgres_dsn, f"UPDATE {SCHEMA}.meta SET value = '{SCHEMA_VERSION + 5}' WHERE key = 'schema_version'")
    with pytest.raises(PostgresStoreError) as caught:
        open_store(postgres_dsn)
    assert f"schema version {SCHEMA_VERSION + 5}, newer than this AGL supports ({SCHEMA_VERSION})" in str(caught.value)


def test_a_foreign_agl_schema_is_refused() -> None:
    with fresh_database(migrated=False) as dsn:
        _sql(dsn, f"CREATE SCHEMA {SCHEMA}; CREATE TABLE {SCHEMA}.things (x int)")
        with pytest.raises(PostgresStoreError, match="not an AGL store"):
            open_store(dsn)


# -- durability -----------------------------------------------------------------------------------------------------


async def test_everything_survives_close_and_reopen(postgres_dsn: str, clock: FakeClock) -> None:
    store = open_store(postgres_dsn, clock)
    resources = await store.add_resources(sample_resources("a"))
    queued = await store.enqueue_rollout({"q": 1}, config=RolloutConfig(max_attempts=2))
    claimed = await store.dequeue_rollout(worker_id="w-1")
    assert claimed is not None
    await store.add_span(make_span(claimed.rollout_id, claimed.attempt.attempt_id, 1))
    second = await store.enqueue_rollout({"q": 2})
    await store.close()

    again = open_store(postgres_dsn, clock)
    try:
        assert (await again.get_latest_resources()) == resources
        got = await again.get_rollout_by_id(queued.rollout_id)
        assert got is not None and got.status == "running" and got.config.max_attempts == 2
        spans = await again.query_spans(queued.rollout_id)
        assert [s.sequence_id for s in spans] == [1]
        assert (await again.dequeue_rollout()).rollout_id == second.rollout_id  # type: ignore[union-attr]
        stats = await again.statistics()
        assert (stats["total_rollouts"], stats["total_spans"], stats["total_resources"]) == (2, 1, 1)
        assert stats["dsn"] == postgres_dsn and stats["database_bytes"] > 0
    finally:
        await again.close()


async def test_a_pickled_store_reconnects_to_the_same_database(postgres_dsn: str) -> None:
    store = open_store(postgres_dsn)
    try:
        rollout = await store.enqueue_rollout({"x": 1})
        copy = pickle.loads(pickle.dumps(store))
        try:
            assert (await copy.get_rollout_by_id(rollout.rollout_id)) is not None
        finally:
            await copy.close()
    finally:
        await store.close()


async def test_values_postgresql_cannot_hold_are_refused_with_a_clear_error(postgres_dsn: str) -> None:
    store = open_store(postgres_dsn)
    try:
        with pytest.raises(ValueError, match="worker_id must not contain a NUL"):
            await store.update_worker("w\x00bad")
        with pytest.raises(ValueError, match="sequence_id"):
            rollout = await store.start_rollout({"x": 1})
            await store.add_span(make_span(rollout.rollout_id, rollout.attempt.attempt_id, 2**63))
        assert (await store.query_workers()).total == 0
    finally:
        await store.close()


# -- several stores on one database ---------------------------------------------------------------------------------


async def test_a_rollout_finished_through_one_store_wakes_a_waiter_on_another(postgres_dsn: str) -> None:
    a, b = open_store(postgres_dsn), open_store(postgres_dsn)
    try:
        assert b.wait_listening(10)
        b._pg.poll_seconds = 60.0  # so only the notification can wake b's waiter within the test
        rollout = await a.enqueue_rollout({"x": 1})
        claimed = await a.dequeue_rollout()
        assert claimed is not None
        waiting = asyncio.create_task(b.wait_for_rollouts(rollout_ids=[rollout.rollout_id], timeout=30))
        await asyncio.sleep(0.3)  # b is waiting now
        started = time.monotonic()
        await a.update_attempt(rollout.rollout_id, claimed.attempt.attempt_id, status="succeeded")
        done = await waiting
        woke_after = time.monotonic() - started
        assert [r.rollout_id for r in done] == [rollout.rollout_id]
        assert woke_after < 10, woke_after
    finally:
        await a.close()
        await b.close()


async def test_a_keyed_write_retried_on_another_store_gets_the_first_answer(postgres_dsn: str) -> None:
    a, b = open_store(postgres_dsn), open_store(postgres_dsn)
    try:
        with idempotency.keyed_request("enqueue-1", 99) as pending:
            pending.encode = lambda result: (201, json.dumps(result.rollout_id).encode(), b"application/json", ())
            first = await a.enqueue_rollout({"x": 1})
        with idempotency.keyed_request("enqueue-1", 99) as pending:
            pending.encode = lambda result: (201, b"unused", b"application/json", ())
            with pytest.raises(idempotency.AnswerAlreadyKept) as caught:
                await b.enqueue_rollout({"x": 1})
        assert caught.value.answer.body == json.dumps(first.rollout_id).encode()
        assert (await b.query_rollouts()).total == 1
    finally:
        await a.close()
        await b.close()


def _keyed(key: str, body: bytes) -> Any:
    """A keyed request whose answer is `body` (the HTTP layer's encoder, reduced to what these tests compare)."""
    manager = idempotency.keyed_request(key, 7)
    pending = manager.__enter__()
    pending.encode = lambda result: (200, body, b"application/json", ())
    return manager


async def test_a_retried_status_update_gets_its_first_answer_not_a_stale_refusal(postgres_dsn: str) -> None:
    # The key lookup travels with the write's first read; it must be judged before the engine acts on that read
    # (here the rollout already succeeded, which would refuse a new "succeeded" as stale).
    a, b = open_store(postgres_dsn), open_store(postgres_dsn)
    try:
        claimed = await a.start_rollout({"x": 1})
        assert claimed.attempt is not None
        manager = _keyed("update-1", b'"first"')
        try:
            await a.update_attempt(claimed.rollout_id, claimed.attempt.attempt_id, status="succeeded")
        finally:
            manager.__exit__(None, None, None)
        manager = _keyed("update-1", b'"second"')
        try:
            with pytest.raises(idempotency.AnswerAlreadyKept) as caught:
                await b.update_attempt(claimed.rollout_id, claimed.attempt.attempt_id, status="succeeded")
        finally:
            manager.__exit__(None, None, None)
        assert caught.value.answer.body == b'"first"'
        # A keyed write that reads nothing after the lookup (a new resources snapshot) is judged before its commit.
        manager = _keyed("resources-1", b'"kept"')
        try:
            await a.add_resources(sample_resources())
        finally:
            manager.__exit__(None, None, None)
        manager = _keyed("resources-1", b'"unused"')
        try:
            with pytest.raises(idempotency.AnswerAlreadyKept):
                await b.add_resources(sample_resources())
        finally:
            manager.__exit__(None, None, None)
        assert (await b.query_resources()).total == 1
    finally:
        await a.close()
        await b.close()


async def test_an_expired_key_runs_its_write_anew(postgres_dsn: str) -> None:
    clock = FakeClock()
    retention = idempotency.IdempotencyRetention(max_age_seconds=60)
    store = PostgresLightningStore(postgres_dsn, clock=clock, scan_debounce_seconds=0, idempotency_retention=retention)
    try:
        manager = _keyed("enqueue-old", b'"first"')
        try:
            first = await store.enqueue_rollout({"x": 1})
        finally:
            manager.__exit__(None, None, None)
        clock.advance(61)
        manager = _keyed("enqueue-old", b'"again"')
        try:
            again = await store.enqueue_rollout({"x": 1})
        finally:
            manager.__exit__(None, None, None)
        assert again.rollout_id != first.rollout_id
        kept = _sql(postgres_dsn, f"SELECT body FROM {SCHEMA}.idempotency_keys WHERE key = 'enqueue-old'")
        assert [bytes(row[0]) for row in kept] == [b'"again"']  # the expired answer was replaced, not duplicated
    finally:
        await store.close()


_CLAIMER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from agl.store.postgres import PostgresLightningStore

    async def main() -> None:
        store = PostgresLightningStore(sys.argv[1], max_connections=2)
        claimed, sequence_ids = [], []
        try:
            await asyncio.sleep(max(0.0, float(sys.argv[4]) - time.time()))  # all three start claiming together
            while True:
                got = await store.dequeue_many_rollouts(limit=3, worker_id=sys.argv[2])
                if not got:
                    break
                claimed.extend(r.rollout_id for r in got)
            for _ in range(100):
                sequence_ids.append(await store.get_next_span_sequence_id(sys.argv[3], "any"))
        finally:
            await store.close()
        print(json.dumps({"claimed": claimed, "sequence_ids": sequence_ids}))

    asyncio.run(main())
    """
)


async def test_processes_claiming_together_take_each_rollout_once_and_number_spans_uniquely(postgres_dsn: str) -> None:
    store = open_store(postgres_dsn)
    try:
        queued = [r.rollout_id for r in await store.enqueue_many_rollouts([{"input": i} for i in range(300)])]
        target = queued[0]
    finally:
        await store.close()
    go = str(time.time() + 6.0)  # after every claimer has imported and connected, even on a busy machine
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER, postgres_dsn, f"w-{i}", target, go],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    claimed = [rid for r in results for rid in r["claimed"]]
    assert len(claimed) == len(set(claimed)) == 300
    assert set(claimed) == set(queued)
    assert all(len(r["claimed"]) > 0 for r in results)  # all three took part
    ids = sorted(i for r in results for i in r["sequence_ids"])
    assert ids == list(range(1, 301))  # one counter: no id given twice, none skipped

    check = open_store(postgres_dsn)
    try:
        attempts = [await check.query_attempts(rid) for rid in queued]
        assert all(page.total == 1 for page in attempts)  # one attempt each: no rollout claimed twice
    finally:
        await check.close()


async def test_a_write_rolled_back_to_break_a_deadlock_runs_again(postgres_dsn: str) -> None:
    store = open_store(postgres_dsn)
    try:
        await store.update_worker("w-a")
        await store.update_worker("w-b")
        runs = {"w-a": 0, "w-b": 0}
        both_hold_one = threading.Barrier(2)

        def locking(first: str, second: str) -> Callable[[Any], str]:
            def body(tx: Any) -> str:
                runs[first] += 1
                # fetchone: the statement runs now (the driver sends a statement once its answer is needed).
                tx.run(f"SELECT 1 FROM {SCHEMA}.workers WHERE worker_id = %s FOR UPDATE", (first,)).fetchone()
                if runs[first] == 1:
                    both_hold_one.wait(timeout=10)  # each holds one row and now asks for the other's
                tx.run(f"SELECT 1 FROM {SCHEMA}.workers WHERE worker_id = %s FOR UPDATE", (second,)).fetchone()
                return first

            return body

        done = await asyncio.gather(
            store._pg.run_write(locking("w-a", "w-b")), store._pg.run_write(locking("w-b", "w-a"))
        )
        assert sorted(done) == ["w-a", "w-b"]
        assert runs["w-a"] + runs["w-b"] == 3  # PostgreSQL rolled one back; it ran again and committed
    finally:
        await store.close()


# -- statements sent together (pipeline mode) ---------------------------------------------------------------------


async def test_a_queued_statement_that_fails_at_commit_rolls_the_whole_write_back(postgres_dsn: str) -> None:
    import psycopg

    store = PostgresLightningStore(postgres_dsn, max_connections=1)  # one connection: it must stay usable
    try:

        def duplicate(tx: Any) -> None:
            # Neither statement's answer is read: both travel with the COMMIT, where the second one fails.
            tx.run(f"INSERT INTO {SCHEMA}.meta (key, value) VALUES ('pipeline-test', 'first')")
            tx.run(f"INSERT INTO {SCHEMA}.meta (key, value) VALUES ('pipeline-test', 'second')")

        with pytest.raises(psycopg.errors.UniqueViolation):
            await store._pg.run_write(duplicate)
        assert _sql(postgres_dsn, f"SELECT value FROM {SCHEMA}.meta WHERE key = 'pipeline-test'") == []

        def refused_value(tx: Any) -> None:
            tx.run(f"UPDATE {SCHEMA}.span_counters SET counter = counter + 1")
            tx.run("SELECT 1 / 0")  # a data error (class 22) whose answer comes with the commit

        with pytest.raises(ValueError, match="cannot be stored in PostgreSQL"):
            await store._pg.run_write(refused_value)
        # The one connection went back to the pool clean: ordinary calls go on.
        for index in range(3):
            await store.update_worker(f"w-{index}")
        assert [w.worker_id for w in (await store.query_workers()).items] == ["w-0", "w-1", "w-2"]
    finally:
        await store.close()


async def test_two_writes_inserting_one_new_row_both_commit(postgres_dsn: str) -> None:
    # B's insert of the row waits for A's transaction; B reaches its commit first. Both report finished rollouts,
    # so both commit under the store's commit lock: B must not hold it while it waits for A, or neither commits.
    from agl.types.core import Worker

    store = open_store(postgres_dsn)
    a_inserted, b_returning = threading.Event(), threading.Event()

    def body_a(tx: Any) -> str:
        tx.put_worker(Worker(worker_id="w-new"))
        tx.run("SELECT 1").fetchone()  # A's insert has run: the row is A's until A commits
        a_inserted.set()
        assert b_returning.wait(10)
        time.sleep(0.3)  # B is committing now
        tx.finished.append("ro-a")
        return "a"

    def body_b(tx: Any) -> str:
        assert a_inserted.wait(10)
        tx.put_worker(Worker(worker_id="w-new", status="busy"))  # waits for A in the database
        tx.finished.append("ro-b")
        b_returning.set()
        return "b"

    try:
        done = await asyncio.wait_for(
            asyncio.gather(store._pg.run_write(body_a), store._pg.run_write(body_b)), timeout=20
        )
        assert sorted(done) == ["a", "b"]
        worker = await store.get_worker_by_id("w-new")
        assert worker is not None and worker.status == "busy"
    finally:
        # Unstick the connections if the writes did wait on each other, so closing the store cannot hang.
        _sql(
            postgres_dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'",
        )
        await store.close()
