"""What only the SQLite store promises: persistence across reopen, crash resume, schema versions, bad files."""

from __future__ import annotations

import asyncio
import pickle
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from agl.store import sqlite as sqlite_module
from agl.store.sqlite import SCHEMA_VERSION, SqliteLightningStore, SqliteStoreError
from agl.types import RolloutConfig
from tests.store.clock import FakeClock
from tests.store.helpers import make_span, sample_resources

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


def open_store(path: Path, clock: FakeClock, **kwargs: float) -> SqliteLightningStore:
    return SqliteLightningStore(path, clock=clock, scan_debounce_seconds=kwargs.pop("scan_debounce_seconds", 0))


# -- persistence --------------------------------------------------------------------------------------------------


async def test_everything_survives_close_and_reopen(db_path: Path, clock: FakeClock) -> None:
    store = open_store(db_path, clock)
    resources = await store.add_resources(sample_resources("a"))
    resources = await store.update_resources(resources.resources_id, sample_resources("b"))
    queued = [await store.enqueue_rollout({"i": i}, mode="train", metadata={"k": i}) for i in range(4)]
    claimed = await store.dequeue_rollout(worker_id="Worker-0")
    assert claimed is not None and claimed.rollout_id == queued[0].rollout_id
    await store.add_many_spans([make_span(claimed.rollout_id, claimed.attempt.attempt_id, k) for k in (1, 2, 3)])
    assert await store.get_next_span_sequence_id(claimed.rollout_id, claimed.attempt.attempt_id) == 4
    await store.update_attempt(claimed.rollout_id, "latest", status="failed", metadata={"why": "x"})
    started = await store.start_rollout({"manual": True}, worker_id="Worker-1")
    await store.update_worker("Worker-1", heartbeat_stats={"gpu": 0.5})

    before = {
        "rollouts": list(await store.query_rollouts()),
        "attempts": list(await store.query_attempts(claimed.rollout_id)),
        "spans": list(await store.query_spans(claimed.rollout_id)),
        "resources": list(await store.query_resources()),
        "latest": await store.get_latest_resources(),
        "workers": list(await store.query_workers()),
    }
    await store.close()

    store = open_store(db_path, clock)
    try:
        assert list(await store.query_rollouts()) == before["rollouts"]
        assert list(await store.query_attempts(claimed.rollout_id)) == before["attempts"]
        assert list(await store.query_spans(claimed.rollout_id)) == before["spans"]
        assert list(await store.query_resources()) == before["resources"]
        assert await store.get_latest_resources() == before["latest"] == resources
        assert list(await store.query_workers()) == before["workers"]
        # Sequence counters continue where they stopped; new rollouts default to the latest resources.
        assert await store.get_next_span_sequence_id(claimed.rollout_id, claimed.attempt.attempt_id) == 5
        assert await store.get_next_span_sequence_id(started.rollout_id, started.attempt.attempt_id) == 1
        assert (await store.enqueue_rollout({"i": 4})).resources_id == resources.resources_id
        # The queue keeps its order.
        order = [r.rollout_id for r in await store.dequeue_many_rollouts(limit=10)]
        assert order[:3] == [r.rollout_id for r in queued[1:]]
        assert len(order) == 4
        stats = await store.statistics()
        assert stats["total_rollouts"] == 6 and stats["total_spans"] == 3 and stats["total_workers"] == 2
    finally:
        await store.close()


async def test_acknowledged_writes_are_visible_to_another_connection_at_once(db_path: Path, clock: FakeClock) -> None:
    writer = open_store(db_path, clock)
    reader = open_store(db_path, clock)
    try:
        rollout = await writer.start_rollout({"x": 1})
        await writer.add_span(make_span(rollout.rollout_id, rollout.attempt.attempt_id, 1))
        seen = await reader.get_rollout_by_id(rollout.rollout_id)
        assert seen is not None and seen.status == "running"
        assert len(await reader.query_spans(rollout.rollout_id)) == 1
    finally:
        await writer.close()
        await reader.close()


def test_writes_survive_a_killed_process(db_path: Path, clock: FakeClock) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, os
        from agl.store.sqlite import SqliteLightningStore
        from tests.store.helpers import make_span

        async def main():
            store = SqliteLightningStore({str(db_path)!r}, synchronous="NORMAL")
            for i in range(3):
                await store.enqueue_rollout({{"i": i}})
            r = await store.dequeue_rollout(worker_id="w")
            await store.add_span(make_span(r.rollout_id, r.attempt.attempt_id, 1, span_id="s"))
            print(r.rollout_id, flush=True)
            os._exit(0)  # no close, no checkpoint: the WAL must carry everything

        asyncio.run(main())
        """
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    claimed_id = out.stdout.strip()

    async def check() -> None:
        store = open_store(db_path, clock)
        try:
            rollout = await store.get_rollout_by_id(claimed_id)
            assert rollout is not None and rollout.status == "running"
            assert [s.span_id for s in await store.query_spans(claimed_id)] == ["s"]
            assert len(await store.query_rollouts(status_in=["queuing"])) == 2
        finally:
            await store.close()

    asyncio.run(check())


# -- resume rules ----------------------------------------------------------------------------------------------------


async def _abandon_running_attempt(db_path: Path, clock: FakeClock, config: RolloutConfig) -> tuple[str, str]:
    """A claimed, running rollout with a worker, left behind by a store that is never closed (a dead process)."""
    store = SqliteLightningStore(db_path, clock=clock)
    await store.enqueue_rollout({"task": 1}, config=config)
    claimed = await store.dequeue_rollout(worker_id="Worker-0")
    assert claimed is not None
    await store.add_span(make_span(claimed.rollout_id, claimed.attempt.attempt_id, 1))
    return claimed.rollout_id, claimed.attempt.attempt_id


async def test_running_attempt_times_out_after_reopen_and_is_retried(db_path: Path, clock: FakeClock) -> None:
    config = RolloutConfig(timeout_seconds=30, max_attempts=2, retry_condition=["timeout"])
    rollout_id, attempt_id = await _abandon_running_attempt(db_path, clock, config)
    clock.advance(60)
    store = SqliteLightningStore(db_path, clock=clock)  # default debounce: the first call still scans
    try:
        rollout = await store.get_rollout_by_id(rollout_id)
        assert rollout is not None and rollout.status == "requeuing"
        attempt = await store.get_latest_attempt(rollout_id)
        assert attempt is not None and attempt.attempt_id == attempt_id and attempt.status == "timeout"
        assert attempt.end_time is None
        worker = await store.get_worker_by_id("Worker-0")
        assert worker is not None and worker.status == "unknown" and worker.current_rollout_id is None
        retry = await store.dequeue_rollout(worker_id="Worker-1")
        assert retry is not None and retry.rollout_id == rollout_id and retry.attempt.sequence_id == 2
    finally:
        await store.close()


async def test_running_attempt_times_out_after_reopen_and_fails_without_retries(
    db_path: Path, clock: FakeClock
) -> None:
    config = RolloutConfig(timeout_seconds=30)
    rollout_id, _ = await _abandon_running_attempt(db_path, clock, config)
    now = clock.advance(60)
    store = SqliteLightningStore(db_path, clock=clock)
    try:
        done = await store.wait_for_rollouts(rollout_ids=[rollout_id], timeout=0)
        assert [r.rollout_id for r in done] == [rollout_id]
        assert done[0].status == "failed" and done[0].end_time == now
        assert await store.dequeue_rollout() is None
    finally:
        await store.close()


async def test_silent_attempt_becomes_unresponsive_after_reopen(db_path: Path, clock: FakeClock) -> None:
    config = RolloutConfig(unresponsive_seconds=10, max_attempts=3, retry_condition=["unresponsive"])
    rollout_id, _ = await _abandon_running_attempt(db_path, clock, config)
    clock.advance(11)
    store = SqliteLightningStore(db_path, clock=clock)
    try:
        attempts = await store.query_attempts(rollout_id)
        assert [a.status for a in attempts] == ["unresponsive"]
        rollout = await store.get_rollout_by_id(rollout_id)
        assert rollout is not None and rollout.status == "requeuing"
    finally:
        await store.close()


async def test_healthy_attempt_keeps_running_after_reopen(db_path: Path, clock: FakeClock) -> None:
    config = RolloutConfig(timeout_seconds=30)
    rollout_id, _ = await _abandon_running_attempt(db_path, clock, config)
    clock.advance(5)
    store = SqliteLightningStore(db_path, clock=clock)
    try:
        rollout = await store.get_rollout_by_id(rollout_id)
        assert rollout is not None and rollout.status == "running"
    finally:
        await store.close()


async def test_claim_left_by_a_store_without_claim_timeout_is_requeued_after_reopen(
    db_path: Path, clock: FakeClock
) -> None:
    store = SqliteLightningStore(db_path, clock=clock, claim_timeout_seconds=None)
    try:
        await store.enqueue_rollout({"x": 1})
        claimed = await store.dequeue_rollout(worker_id="Worker-0")
        assert claimed is not None
    finally:
        await store.close()
    clock.advance(31)
    store = SqliteLightningStore(db_path, clock=clock)  # the default 30 s claim timeout
    try:
        rollout = await store.get_rollout_by_id(claimed.rollout_id)
        assert rollout is not None and rollout.status == "requeuing"
        again = await store.dequeue_rollout(worker_id="Worker-1")
        assert again is not None and again.rollout_id == claimed.rollout_id and again.attempt.sequence_id == 2
    finally:
        await store.close()


async def test_queued_rollouts_stay_queued_in_order_after_reopen(db_path: Path, clock: FakeClock) -> None:
    store = SqliteLightningStore(db_path, clock=clock)
    ids = [r.rollout_id for r in await store.enqueue_many_rollouts([{"input": i} for i in range(5)])]  # type: ignore[misc]
    # A stale entry (left the queue state) stays skipped after reopen; a requeued one keeps its old place.
    await store.update_rollout(ids[1], status="cancelled")
    await store.update_rollout(ids[2], status="preparing")
    await store.update_rollout(ids[2], status="requeuing")
    store = SqliteLightningStore(db_path, clock=clock)
    try:
        order = [r.rollout_id for r in await store.dequeue_many_rollouts(limit=10)]
        assert order == [ids[0], ids[2], ids[3], ids[4]]
    finally:
        await store.close()


# -- schema versions and bad files --------------------------------------------------------------------------------


def _schema_version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])


async def test_new_file_gets_current_schema_version(db_path: Path, clock: FakeClock) -> None:
    store = open_store(db_path, clock)
    await store.close()
    assert _schema_version(db_path) == SCHEMA_VERSION
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_newer_schema_version_is_refused(db_path: Path, clock: FakeClock) -> None:
    store = open_store(db_path, clock)
    await store.close()
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(SqliteStoreError, match=rf"{db_path}.*schema version {SCHEMA_VERSION + 1}.*newer"):
        open_store(db_path, clock)


async def test_pending_migrations_are_applied_in_order(
    db_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(db_path, clock)
    rollout = await store.enqueue_rollout({"kept": True})
    await store.close()
    applied: list[int] = []

    def add_notes(db: sqlite3.Connection) -> None:
        applied.append(2)
        db.execute("CREATE TABLE notes (text TEXT)")

    def fill_notes(db: sqlite3.Connection) -> None:
        applied.append(3)
        db.execute("INSERT INTO notes (text) VALUES ('migrated')")

    monkeypatch.setattr(sqlite_module, "MIGRATIONS", [*sqlite_module.MIGRATIONS, add_notes, fill_notes])
    store = open_store(db_path, clock)
    try:
        assert applied == [2, 3]
        assert _schema_version(db_path) == SCHEMA_VERSION + 2
        assert await store.get_rollout_by_id(rollout.rollout_id) == rollout
    finally:
        await store.close()
    store = open_store(db_path, clock)  # nothing left to apply
    await store.close()
    assert applied == [2, 3]


async def test_failed_migration_leaves_the_file_at_its_old_version(
    db_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    await open_store(db_path, clock).close()

    def broken(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("migration bug")

    monkeypatch.setattr(sqlite_module, "MIGRATIONS", [*sqlite_module.MIGRATIONS, broken])
    with pytest.raises(RuntimeError, match="migration bug"):
        open_store(db_path, clock)
    assert _schema_version(db_path) == SCHEMA_VERSION
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'half_done'").fetchone() is None


def test_non_sqlite_file_is_a_clear_error(db_path: Path, clock: FakeClock) -> None:
    db_path.write_bytes(b"this is not a database, just some text\n" * 200)
    with pytest.raises(SqliteStoreError, match=rf"{db_path} is not a usable SQLite store database"):
        open_store(db_path, clock)


def test_corrupt_sqlite_file_is_a_clear_error(db_path: Path, clock: FakeClock) -> None:
    asyncio.run(open_store(db_path, clock).close())
    data = bytearray(db_path.read_bytes())
    data[16:100] = b"\xff" * 84  # garble the header after the magic string
    db_path.write_bytes(bytes(data))
    with pytest.raises(SqliteStoreError, match=str(db_path)):
        open_store(db_path, clock)


def test_foreign_sqlite_database_is_refused(db_path: Path, clock: FakeClock) -> None:
    with sqlite3.connect(db_path) as db:
        db.execute("CREATE TABLE customers (name TEXT)")
    with pytest.raises(SqliteStoreError, match=rf"{db_path} is a SQLite database but not an AGL store"):
        open_store(db_path, clock)


def test_unopenable_path_is_a_clear_error(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "missing-dir" / "store.db"
    with pytest.raises(SqliteStoreError, match=str(path)):
        open_store(path, clock)


def test_bad_synchronous_setting(db_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SqliteLightningStore(db_path, synchronous="SOMETIMES")  # type: ignore[arg-type]


async def test_closed_store_raises(db_path: Path, clock: FakeClock) -> None:
    store = open_store(db_path, clock)
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await store.enqueue_rollout({"x": 1})


async def test_non_json_input_is_a_value_error(db_path: Path, clock: FakeClock) -> None:
    store = open_store(db_path, clock)
    try:
        with pytest.raises(ValueError, match="JSON"):
            await store.enqueue_rollout(object())
        assert len(await store.query_rollouts()) == 0
    finally:
        await store.close()


# -- capabilities, statistics, concurrency ------------------------------------------------------------------------


async def test_capabilities_and_statistics(db_path: Path, clock: FakeClock) -> None:
    store = open_store(db_path, clock)
    try:
        assert store.capabilities == {"thread_safe": True, "async_safe": True, "zero_copy": False, "otlp_traces": False}
        r = await store.start_rollout({"x": 1})
        await store.add_span(make_span(r.rollout_id, r.attempt.attempt_id, 1))
        await store.add_resources(sample_resources())
        clock.advance(7)
        stats = await store.statistics()
        assert stats["name"] == "SqliteLightningStore"
        assert (stats["total_rollouts"], stats["total_attempts"], stats["total_spans"]) == (1, 1, 1)
        assert (stats["total_resources"], stats["total_workers"]) == (1, 0)
        assert stats["uptime"] == 7
        assert stats["db_path"] == str(db_path)
        assert stats["db_file_bytes"] > 0 and stats["wal_file_bytes"] > 0
    finally:
        await store.close()


async def test_wait_wakes_when_another_store_on_the_file_finishes_the_rollout(db_path: Path, clock: FakeClock) -> None:
    waiter = open_store(db_path, clock)
    other = open_store(db_path, clock)
    try:
        rollout = await waiter.start_rollout({"x": 1})

        async def finish_later() -> None:
            await asyncio.sleep(0.1)
            await other.update_attempt(rollout.rollout_id, "latest", status="succeeded")

        start = time.monotonic()
        finisher = asyncio.create_task(finish_later())
        done = await waiter.wait_for_rollouts(rollout_ids=[rollout.rollout_id], timeout=5)
        await finisher
        assert [r.status for r in done] == ["succeeded"]
        assert time.monotonic() - start < 2
    finally:
        await waiter.close()
        await other.close()


async def test_threads_never_claim_a_rollout_twice(db_path: Path, clock: FakeClock) -> None:
    store = open_store(db_path, clock)
    try:
        await store.enqueue_many_rollouts([{"input": i} for i in range(200)])  # type: ignore[misc]
        claimed: list[str] = []
        lock = threading.Lock()

        def worker(n: int) -> None:
            async def run() -> None:
                while (got := await store.dequeue_rollout(worker_id=f"Worker-{n}")) is not None:
                    await store.add_span(make_span(got.rollout_id, got.attempt.attempt_id, 1))
                    with lock:
                        claimed.append(got.rollout_id)

            asyncio.run(run())

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(claimed) == len(set(claimed)) == 200
        assert len(await store.query_rollouts(status_in=["running"])) == 200
    finally:
        await store.close()


async def test_pickled_store_reopens_the_same_file(db_path: Path) -> None:
    store = SqliteLightningStore(db_path, claim_timeout_seconds=12.5)
    copy: SqliteLightningStore = pickle.loads(pickle.dumps(store))
    try:
        rollout = await store.enqueue_rollout({"x": 1})
        assert await copy.get_rollout_by_id(rollout.rollout_id) == rollout
        assert copy.path == store.path
        assert copy.__getstate__()["claim_timeout_seconds"] == 12.5
    finally:
        await store.close()
        await copy.close()
    with pytest.raises(TypeError):
        pickle.dumps(SqliteLightningStore(":memory:"))


async def test_processes_sharing_the_file_never_claim_a_rollout_twice(db_path: Path, clock: FakeClock) -> None:
    store = open_store(db_path, clock)
    try:
        await store.enqueue_many_rollouts([{"input": i} for i in range(300)])  # type: ignore[misc]
        script = textwrap.dedent(
            f"""
            import asyncio
            from agl.store.sqlite import SqliteLightningStore

            async def main():
                store = SqliteLightningStore({str(db_path)!r}, synchronous="NORMAL")
                while (got := await store.dequeue_rollout(worker_id="w")) is not None:
                    print(got.rollout_id, flush=True)
                await store.close()

            asyncio.run(main())
            """
        )
        procs = [
            subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
            for _ in range(3)
        ]
        claimed: list[str] = []
        for proc in procs:
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0
            claimed.extend(out.split())
        assert len(claimed) == len(set(claimed)) == 300
        assert len(await store.query_rollouts(status_in=["preparing"])) == 300
    finally:
        await store.close()
