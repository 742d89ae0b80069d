"""Round trips to PostgreSQL and statements per store call of the runner's cycle, counted from libpq's own trace.

The cycle is the one of `store_http.py --mode single` (enqueue_rollout → dequeue_rollout → 10 × add_span →
update_attempt succeeded), called in process on a `PostgresLightningStore` with one pooled connection, whose libpq
trace records every protocol message. A round trip is a run of messages sent to the server followed by its answer;
statements are the Execute messages plus the simple queries. With `--keyed` (the default) the enqueue, dequeue and
update carry an idempotency key, as the HTTP client sends them. Also prints the process's CPU per call (one caller:
a rough figure; `store_http.py` measures the server's).

    .venv/bin/python bench/postgres_round_trips.py                 # a throwaway local PostgreSQL, fsync on
    .venv/bin/python bench/postgres_round_trips.py --dsn postgresql://agl@127.0.0.1:5432/agl_bench --cycles 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CALLS_PER_CYCLE = 13


def _span(rollout_id: str, attempt_id: str, index: int) -> Any:
    from agl.types.tracer import Span

    return Span.model_validate(
        {
            "rollout_id": rollout_id,
            "attempt_id": attempt_id,
            "sequence_id": index,
            "trace_id": f"{index:032x}",
            "span_id": f"{index:016x}",
            "parent_id": None,
            "name": "llm",
            "status": {"status_code": "OK"},
            "attributes": {"gen_ai.request.model": "qwen2.5-0.5b", "prompt": "What is 2 + 2?"},
            "events": [],
            "links": [],
            "start_time": 1.0,
            "end_time": 2.0,
            "context": None,
            "parent": None,
            "resource": {"attributes": {}, "schema_url": ""},
        }
    )


async def _keyed(keyed: bool, call: Callable[[], Awaitable[Any]]) -> Any:
    from agl.store import idempotency

    if not keyed:
        return await call()
    with idempotency.keyed_request(uuid.uuid4().hex, 1) as pending:
        pending.encode = lambda result: (200, b"{}", b"application/json", ())
        return await call()


async def _cycle(store: Any, keyed: bool) -> None:
    await _keyed(keyed, lambda: store.enqueue_rollout(input={"q": 1}))
    claimed = await _keyed(keyed, lambda: store.dequeue_rollout(worker_id="w-1"))
    attempt_id = claimed.attempt.attempt_id
    for index in range(1, 11):
        await store.add_span(_span(claimed.rollout_id, attempt_id, index))
    await _keyed(keyed, lambda: store.update_attempt(claimed.rollout_id, attempt_id, status="succeeded"))


def _count(trace: str) -> dict[str, float]:
    """Round trips and statements in a libpq trace (flags: no timestamps)."""
    round_trips = statements = 0
    previous = ""
    for line in trace.splitlines():
        fields = line.split("\t")
        if len(fields) < 3:
            continue
        direction, message = fields[0], fields[2]
        if direction == "F" and message in ("Execute", "Query"):
            statements += 1
        if previous == "F" and direction == "B":
            round_trips += 1
        previous = direction
    return {"round_trips": round_trips, "statements": statements}


async def _measure(dsn: str, cycles: int, keyed: bool) -> dict[str, Any]:
    from agl.store.postgres import PostgresLightningStore

    store = PostgresLightningStore(dsn, min_connections=1, max_connections=1)
    pool = store._pg.pool()  # the one pooled connection, traced below
    try:
        await _cycle(store, keyed)  # prepares the statements
        with tempfile.TemporaryDirectory(prefix="agl-pg-trace-") as folder:
            path = Path(folder) / "libpq.trace"
            with path.open("w") as sink:
                conn = pool.getconn()
                conn.pgconn.trace(sink.fileno())
                conn.pgconn.set_trace_flags(1)  # no timestamps
                pool.putconn(conn)
                cpu0, wall0 = time.process_time(), time.perf_counter()
                for _ in range(cycles):
                    await _cycle(store, keyed)
                cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
                conn = pool.getconn()
                conn.pgconn.untrace()  # flushes libpq's buffer
                pool.putconn(conn)
            counts = _count(path.read_text())
    finally:
        await store.close()
    calls = cycles * CALLS_PER_CYCLE
    return {
        "cycles": cycles,
        "keyed": keyed,
        "round_trips_per_call": counts["round_trips"] / calls,
        "statements_per_call": counts["statements"] / calls,
        "process_cpu_us_per_call": 1e6 * cpu / calls,
        "wall_us_per_call": 1e6 * wall / calls,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="the database (default: a throwaway local PostgreSQL server, fsync on)")
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--no-keys", dest="keyed", action="store_false", help="no idempotency keys")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    cluster = None
    dsn = args.dsn
    try:
        if not dsn:
            sys.path.insert(0, str(REPO))
            from tests.store.postgres_server import PostgresCluster

            cluster = PostgresCluster(fsync=True).start()
            dsn = cluster.create_database("agl_round_trips")
        load = os.getloadavg()[0]
        row = asyncio.run(_measure(dsn, args.cycles, args.keyed))
    finally:
        if cluster is not None:
            cluster.stop()
    row["load_average_1m"] = load
    print(f"{'cycles':>6} {'keys':>5} {'round trips/call':>17} {'statements/call':>16} {'CPU us/call':>12} {'load':>5}")
    print(
        f"{row['cycles']:>6} {row['keyed']!s:>5} {row['round_trips_per_call']:>17.2f} "
        f"{row['statements_per_call']:>16.2f} {row['process_cpu_us_per_call']:>12.0f} {load:>5.2f}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"postgres_round_trips-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"argv": sys.argv[1:], "run": row}, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
