"""Benchmark: does a large query stall the store's other clients?

A store server (memory, SQLite with `synchronous=FULL`, or PostgreSQL: a throwaway local server, fsync on) runs in its own process holding `--rollouts` rollouts
(45 000 by default). Each repeat measures, each phase for `--duration` seconds, with every client its own process:

    reads            one client's point reads (`get_rollout_by_id`), alone
    reads + hog      the same while another client reads every rollout unpaged (`query_rollouts()`) in a loop
    cycle            K clients running the runner's single-call cycle (bench/store_http.py), alone
    cycle + hog      the same beside the unpaged-query client

Reported per phase: point-read or cycle p50/p99 and calls/s, and the hog's queries per second and seconds each.
Medians over `--repeats` go to the table; every repeat to JSON under bench/results/.

    .venv/bin/python bench/store_stall.py --backend sqlite
    .venv/bin/python bench/store_stall.py --backend memory --rollouts 45000 --duration 5 --repeats 3
    .venv/bin/python bench/store_stall.py --backend postgres --repeats 1 --duration 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import store_http  # the server process and the cycle clients are store_http's


async def _fill(endpoint: str, rollouts: int) -> list[str]:
    from agl.store.client import LightningStoreClient
    from agl.types import EnqueueRolloutRequest

    client = LightningStoreClient(endpoint)
    ids: list[str] = []
    try:
        for start in range(0, rollouts, 1000):
            batch = [
                EnqueueRolloutRequest(input={"question": f"q{start + i}", "answer": i}, mode="train")
                for i in range(min(1000, rollouts - start))
            ]
            ids.extend(r.rollout_id for r in await client.enqueue_many_rollouts(batch))
    finally:
        await client.close()
    return ids


async def _reader_loop(endpoint: str, ids: list[str], duration: float, go: Any) -> dict[str, Any]:
    from agl.store.client import LightningStoreClient

    client = LightningStoreClient(endpoint)
    latencies: list[float] = []
    try:
        await client.get_rollout_by_id(ids[0])  # connected before the clock starts
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        perf = time.perf_counter
        start = perf()
        while perf() - start < duration:
            rid = random.choice(ids)
            t0 = perf()
            found = await client.get_rollout_by_id(rid)
            latencies.append(perf() - t0)
            if found is None:
                raise RuntimeError(f"rollout {rid} not found")
        elapsed = perf() - start
    finally:
        await client.close()
    return {"latencies": latencies, "elapsed": elapsed}


async def _hog_loop(endpoint: str, duration: float, go: Any) -> dict[str, Any]:
    from agl.store.client import LightningStoreClient

    client = LightningStoreClient(endpoint, request_timeout=120)
    took: list[float] = []
    rows = 0
    try:
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        perf = time.perf_counter
        start = perf()
        while perf() - start < duration:
            t0 = perf()
            page = await client.query_rollouts()
            took.append(perf() - t0)
            rows = len(page)
    finally:
        await client.close()
    return {"query_seconds": took, "rows": rows}


def _run_in_process(kind: str, endpoint: str, ids: list[str], duration: float, go: Any, results: Any) -> None:
    if kind == "reader":
        results.put(("reader", asyncio.run(_reader_loop(endpoint, ids, duration, go))))
    else:
        results.put(("hog", asyncio.run(_hog_loop(endpoint, duration, go))))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))] if ordered else float("nan")


def _reads(endpoint: str, ids: list[str], duration: float, hog: bool) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    results = ctx.Queue()
    kinds = ["reader", "hog"] if hog else ["reader"]
    procs = [ctx.Process(target=_run_in_process, args=(k, endpoint, ids, duration, go, results)) for k in kinds]
    for proc in procs:
        proc.start()
    time.sleep(1.0)  # clients import and connect
    go.set()
    outs = dict(results.get(timeout=duration + 300) for _ in procs)
    for proc in procs:
        proc.join(60)
    reader = outs["reader"]
    row: dict[str, Any] = {
        "reads_per_s": len(reader["latencies"]) / reader["elapsed"],
        "p50_ms": 1000 * _pct(reader["latencies"], 0.5),
        "p99_ms": 1000 * _pct(reader["latencies"], 0.99),
        "max_ms": 1000 * max(reader["latencies"]),
    }
    if hog:
        row["hog_queries"] = len(outs["hog"]["query_seconds"])
        row["hog_query_s_median"] = statistics.median(outs["hog"]["query_seconds"]) if row["hog_queries"] else None
        row["hog_rows"] = outs["hog"]["rows"]
    return row


def _cycle(endpoint: str, pid: int, k: int, duration: float, hog: bool) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    results = ctx.Queue()
    proc = None
    if hog:
        proc = ctx.Process(target=_run_in_process, args=("hog", endpoint, [], duration + 2, go, results))
        proc.start()
        go.set()
    row = store_http.run_one(endpoint, pid, k, "single", duration, 1.0)
    out = {key: row[key] for key in ("calls_per_s", "p50_ms", "p99_ms")}
    if proc is not None:
        _, hogged = results.get(timeout=duration + 300)
        proc.join(60)
        out["hog_queries"] = len(hogged["query_seconds"])
        out["hog_query_s_median"] = statistics.median(hogged["query_seconds"]) if hogged["query_seconds"] else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["memory", "sqlite", "postgres"], default="sqlite")
    parser.add_argument("--rollouts", type=int, default=45_000)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--k", type=int, default=4, help="cycle clients")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    directory = tempfile.mkdtemp(prefix="agl-stall-")
    where, cluster = f"{directory}/store.db", None
    if args.backend == "postgres":
        from tests.store.postgres_server import PostgresCluster

        cluster = PostgresCluster(fsync=True).start()
        where = cluster.create_database("agl_stall")
    server = ctx.Process(target=store_http._serve, args=(child, args.backend, where, "FULL"))
    server.start()
    samples: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    try:
        port = parent.recv()
        endpoint = f"http://127.0.0.1:{port}"
        started = time.perf_counter()
        ids = asyncio.run(_fill(endpoint, args.rollouts))
        print(f"{args.backend}: {len(ids):,} rollouts in {time.perf_counter() - started:.1f} s", flush=True)
        for repeat in range(args.repeats):
            sample = {
                "reads": _reads(endpoint, ids, args.duration, hog=False),
                "reads + hog": _reads(endpoint, ids, args.duration, hog=True),
                "cycle": _cycle(endpoint, server.pid or 0, args.k, args.duration, hog=False),
                "cycle + hog": _cycle(endpoint, server.pid or 0, args.k, args.duration, hog=True),
            }
            print(
                f"  repeat {repeat + 1}/{args.repeats}: "
                + "; ".join(f"{name} p99 {row['p99_ms']:.1f} ms" for name, row in sample.items()),
                flush=True,
            )
            samples.append(sample)
    finally:
        if server.pid is not None:
            os.kill(server.pid, 15)
        server.join(30)
        if server.is_alive():
            server.kill()
            server.join(5)
        for name in os.listdir(directory):
            os.remove(os.path.join(directory, name))
        os.rmdir(directory)
        if cluster is not None:
            cluster.stop()

    print(f"\n{args.backend}, {args.rollouts:,} rollouts, medians of {args.repeats} x {args.duration:.0f} s")
    header = f"{'phase':<14}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'hog q/s':>9}{'hog s/query':>13}"
    print(header)
    print("-" * len(header))
    medians: dict[str, dict[str, float]] = {}
    for phase in samples[0]:
        rows = [s[phase] for s in samples]
        rate_key = "reads_per_s" if "reads_per_s" in rows[0] else "calls_per_s"
        med = {
            key: statistics.median(r[key] for r in rows)
            for key in rows[0]
            if isinstance(rows[0][key], (int, float)) and all(r.get(key) is not None for r in rows)
        }
        medians[phase] = med
        hog_rate = med["hog_queries"] / args.duration if "hog_queries" in med else None
        print(
            f"{phase:<14}{med[rate_key]:>10.0f}{med['p50_ms']:>9.2f}{med['p99_ms']:>9.2f}"
            + (f"{hog_rate:>9.2f}{med.get('hog_query_s_median', float('nan')):>13.3f}" if hog_rate else "")
        )
    document = {
        "benchmark": "store_stall",
        "backend": args.backend,
        "rollouts": args.rollouts,
        "duration_s": args.duration,
        "k": args.k,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "median": medians,
        "samples": samples,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"store_stall_{args.backend}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(document, indent=1))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
