"""SQLite schema 2: a schema-1 file migrates, queries run over indexes, maintained counts stay exact."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agl.store import sqlite as sqlite_module
from agl.store import sqlite_rollout_query as rollout_sql
from agl.store.query import rollout_filter
from agl.store.sqlite import SCHEMA_VERSION, SqliteLightningStore
from agl.types import Attempt, Rollout
from tests.store.clock import FakeClock
from tests.store.helpers import ids, make_span


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


def _schema_1_file(path: Path) -> list[Rollout]:
    """A file at schema version 1, made by the first migration and filled with rows as schema-1 code wrote them."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")
    sqlite_module._migrate_to_1(db)
    rollouts = [
        Rollout(rollout_id="ro-a", input=1, start_time=100.25, mode="train", status="queuing"),
        Rollout(rollout_id="ro-b", input=2, start_time=100.25, mode=None, status="succeeded", end_time=300.5),
        Rollout(rollout_id="ro-c", input=3, start_time=0.1 + 0.2, mode="val", status="failed", end_time=200.0),
        Rollout(rollout_id="ro-d", input=4, start_time=150.0, mode="train", status="running"),
    ]
    for rollout in rollouts:
        db.execute(
            "INSERT INTO rollouts (rollout_id, status, watched, data) VALUES (?, ?, 0, ?)",
            (rollout.rollout_id, rollout.status, rollout.model_dump_json()),
        )
        db.execute("INSERT INTO span_counters (rollout_id, counter) VALUES (?, 0)", (rollout.rollout_id,))
    db.execute("INSERT INTO queue (rollout_id) VALUES ('ro-a')")
    attempt = Attempt(rollout_id="ro-d", attempt_id="at-1", sequence_id=1, start_time=150.0, status="running")
    db.execute(
        "INSERT INTO attempts (rollout_id, attempt_id, sequence_id, data) VALUES ('ro-d', 'at-1', 1, ?)",
        (attempt.model_dump_json(),),
    )
    for k in (1, 2):
        span = make_span("ro-d", "at-1", k, span_id=f"s{k}")
        db.execute(
            "INSERT INTO spans (rollout_id, attempt_id, span_id, sequence_id, data) VALUES ('ro-d', 'at-1', ?, ?, ?)",
            (span.span_id, k, span.model_dump_json()),
        )
    db.close()
    return rollouts


async def test_a_schema_1_file_migrates_and_answers_the_new_queries(db_path: Path, clock: FakeClock) -> None:
    made = _schema_1_file(db_path)
    store = SqliteLightningStore(db_path, clock=clock, scan_debounce_seconds=0)
    try:
        with sqlite3.connect(db_path) as db:
            assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(
                SCHEMA_VERSION
            )
            columns = db.execute("SELECT rollout_id, mode, start_time, end_time FROM rollouts ORDER BY seq").fetchall()
        assert columns == [(r.rollout_id, r.mode, r.start_time, r.end_time) for r in made]
        assert ids(await store.query_rollouts(mode_in=["train"])) == ["ro-a", "ro-d"]
        assert ids(await store.query_rollouts(start_time_from=100.25, start_time_to=150.0)) == ["ro-a", "ro-b"]
        assert ids(await store.query_rollouts(start_time_to=1)) == ["ro-c"]  # 0.30000000000000004 kept exactly
        by_end = await store.query_rollouts(sort_by="end_time", sort_order="desc")
        assert ids(by_end) == ["ro-a", "ro-d", "ro-b", "ro-c"]
        newest = await store.query_rollouts(sort_by="start_time", sort_order="desc", limit=2)
        assert ids(newest) == ["ro-d", "ro-a"] and newest.total == 4
        running = await store.query_rollouts(status_in=["running"])
        assert running[0].attempt.attempt_id == "at-1"  # type: ignore[attr-defined]
        stats = await store.statistics()
        assert (stats["total_rollouts"], stats["total_attempts"], stats["total_spans"]) == (4, 1, 2)
        for status in ("queuing", "succeeded", "failed", "running", "cancelled"):
            expected = sum(r.status == status for r in made)
            assert (await store.query_rollouts(status_in=[status], limit=0)).total == expected  # type: ignore[list-item]
        # The migrated file keeps working: the queue, new rows and their counts.
        claimed = await store.dequeue_rollout()
        assert claimed is not None and claimed.rollout_id == "ro-a"
        await store.update_rollout("ro-a", mode="test")
        assert ids(await store.query_rollouts(mode_in=["test"])) == ["ro-a"]
        stats = await store.statistics()
        assert (stats["total_rollouts"], stats["total_attempts"]) == (4, 2)
    finally:
        await store.close()


def _indexes(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"))


async def test_a_schema_2_file_gets_the_schema_3_indexes(db_path: Path, tmp_path: Path, clock: FakeClock) -> None:
    """Schema 2 as first released (six rollout indexes) is reshaped by migration 3 into a new file's indexes."""
    store = SqliteLightningStore(db_path, clock=clock, scan_debounce_seconds=0)
    made = [await store.enqueue_rollout(input=i, mode=m) for i, m in enumerate(["train", "val", None])]  # type: ignore[arg-type]
    await store.update_rollout(made[1].rollout_id, status="failed")
    await store.close()
    old = tmp_path / "schema2.db"
    db = sqlite3.connect(old, isolation_level=None)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '2')")
    for migration in sqlite_module.MIGRATIONS[:2]:
        migration(db)
    assert "rollouts_by_status_end" in dict(db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'"))
    db.execute("ATTACH DATABASE ? AS new", (str(db_path),))
    columns = "seq, rollout_id, status, watched, data, mode, start_time, end_time"
    db.execute(f"INSERT INTO rollouts ({columns}) SELECT {columns} FROM new.rollouts")
    db.close()
    migrated = SqliteLightningStore(old, clock=clock, scan_debounce_seconds=0)
    try:
        assert _indexes(old) == _indexes(db_path)
        assert ids(await migrated.query_rollouts(mode_in=["train", "val"], sort_by="end_time", sort_order="desc")) == [
            made[0].rollout_id,
            made[1].rollout_id,
        ]
    finally:
        await migrated.close()


async def test_maintained_counts_follow_every_write_and_rollback(db_path: Path, clock: FakeClock) -> None:
    store = SqliteLightningStore(db_path, clock=clock, scan_debounce_seconds=0)
    other = SqliteLightningStore(db_path, clock=clock, scan_debounce_seconds=0)
    try:
        await store.enqueue_many_rollouts([{"input": i} for i in range(5)])  # type: ignore[misc]
        claimed = await store.dequeue_many_rollouts(limit=2)
        rid, aid = claimed[0].rollout_id, claimed[0].attempt.attempt_id
        await store.add_many_spans([make_span(rid, aid, k, span_id=f"s{k}") for k in (1, 2, 3)])
        assert await store.add_span(make_span(rid, aid, 4, span_id="s1")) is None  # duplicate: not stored
        with pytest.raises(ValueError):  # one unknown attempt rejects the whole batch
            await store.add_many_spans([make_span(rid, aid, 5, span_id="s5"), make_span(rid, "at-nope", 6)])
        await other.start_rollout(input="from another store object")
        for each in (store, other):
            stats = await each.statistics()
            assert (stats["total_rollouts"], stats["total_attempts"], stats["total_spans"]) == (6, 3, 3)
        await store.update_attempt(rid, aid, status="failed")
        await store.update_rollout(claimed[1].rollout_id, status="cancelled")
        with sqlite3.connect(db_path) as db:
            counts = [db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("rollouts", "attempts", "spans")]
            by_status = dict(db.execute("SELECT status, COUNT(*) FROM rollouts GROUP BY status").fetchall())
            kept = dict(db.execute("SELECT substr(name, 8), value FROM counters WHERE name LIKE 'status:%'").fetchall())
        assert counts == [6, 3, 3]
        assert by_status == {"queuing": 3, "failed": 1, "cancelled": 1, "preparing": 1}
        assert {s: n for s, n in kept.items() if n} == by_status
        for status, n in by_status.items():
            assert (await other.query_rollouts(status_in=[status], limit=0)).total == n  # type: ignore[list-item]
        assert (await store.query_rollouts(status_in=["queuing", "failed", "queuing"], limit=0)).total == 4
    finally:
        await other.close()
        await store.close()


DASHBOARD_QUERIES = [
    ({"status_in": ["succeeded"]}, None, "asc"),
    ({"status_in": ["succeeded"]}, "start_time", "desc"),
    ({"status_in": ["failed"]}, "end_time", "desc"),
    ({"mode_in": ["train"], "start_time_from": 1.0, "start_time_to": 2.0}, "start_time", "desc"),
    ({}, None, "asc"),
    ({}, "start_time", "desc"),
    ({}, "end_time", "asc"),
    ({}, "status", "asc"),
]


@pytest.mark.parametrize(("filters", "sort_by", "order"), DASHBOARD_QUERIES)
async def test_dashboard_pages_read_an_index_in_order(
    db_path: Path, clock: FakeClock, filters: dict[str, object], sort_by: str | None, order: str
) -> None:
    """The page query walks an index in the requested order: its cost grows with offset + limit, not the table."""
    await SqliteLightningStore(db_path, clock=clock).close()
    arguments: dict[str, object] = {"status_in": None, "rollout_id_in": None, "rollout_id_contains": None}
    query = rollout_filter(**{**arguments, **filters}, filter_logic="and")  # type: ignore[arg-type]
    condition, params = rollout_sql.where(query, sort_by)
    sql = f"SELECT seq FROM rollouts WHERE {condition} ORDER BY {rollout_sql.order_by(sort_by, order)} LIMIT 50"
    with sqlite3.connect(db_path) as db:
        plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
    assert any("COVERING INDEX" in step for step in plan), plan
    # Only ties of the sort key may be sorted (by insertion order); never the whole result.
    assert not any("TEMP B-TREE FOR ORDER BY" in step for step in plan), plan
