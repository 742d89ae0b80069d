"""Benchmark: what a SQLite store write costs in process, by `synchronous` mode, without HTTP.

K asyncio tasks in one process each repeat the runner's single cycle straight on a `SqliteLightningStore`
(enqueue → dequeue → 10 × add_span_json → update_attempt(succeeded), 13 calls) for `--seconds`. Reported per run:
calls/s, the process's CPU per call (every thread: the event loop, the writer thread, and the kernel time of its
fsyncs), and the mean group size (writes per commit). Modes alternate run by run (FULL, NORMAL, FULL, ...) so both
see the same machine; the table gives every run and the medians, JSON goes to bench/results/.

    .venv/bin/python bench/sqlite_write_cost.py                          # K=4, FULL vs NORMAL, 3 runs each of 3 s
    .venv/bin/python bench/sqlite_write_cost.py --k 1 --modes FULL --runs 5

FULL minus NORMAL is what fsyncing every commit costs this machine's CPU per call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agl.store.sqlite import SqliteLightningStore
from agl.types import Span

SPANS_PER_CYCLE = 10


def _span(rollout_id: str, attempt_id: str, index: int) -> tuple[Span, bytes]:
    span = Span(
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=index,
        trace_id=os.urandom(16).hex(),
        span_id=os.urandom(8).hex(),
        name="openai.chat.completion",
        attributes={"gen_ai.request.model": "m", "prompt": "x" * 64},
        start_time=time.time(),
        end_time=time.time(),
    )
    return span, span.model_dump_json().encode()


async def run_once(k: int, seconds: float, synchronous: str, directory: str) -> dict[str, Any]:
    """One run: K concurrent cycles for `seconds` on a fresh file; calls/s, CPU µs per call, mean group size."""
    path = tempfile.mkdtemp(dir=directory)
    store = SqliteLightningStore(f"{path}/store.db", synchronous=synchronous)  # type: ignore[arg-type]
    calls = 0
    try:
        await store.enqueue_rollout({"warm": "up"})  # the first call's health scan is behind us
        await store.dequeue_rollout()
        deadline = time.perf_counter() + seconds

        async def cycle(worker: str) -> None:
            nonlocal calls
            while time.perf_counter() < deadline:
                await store.enqueue_rollout({"question": "2+2", "answer": 4}, mode="train")
                claimed = await store.dequeue_rollout(worker_id=worker)
                if claimed is None:
                    raise RuntimeError("dequeue returned nothing although this task just enqueued a rollout")
                for index in range(SPANS_PER_CYCLE):
                    span, payload = _span(claimed.rollout_id, claimed.attempt.attempt_id, index)
                    await store.add_span_json(span, payload)
                await store.update_attempt(claimed.rollout_id, claimed.attempt.attempt_id, status="succeeded")
                calls += 3 + SPANS_PER_CYCLE

        writer = store._sqlite.writer
        commits0, writes0 = writer.commits, writer.writes
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(cycle(f"worker-{i}") for i in range(k)))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        commits, writes = writer.commits - commits0, writer.writes - writes0
    finally:
        await store.close()
        shutil.rmtree(path, ignore_errors=True)
    return {
        "synchronous": synchronous,
        "k": k,
        "calls": calls,
        "calls_per_s": calls / wall,
        "cpu_us_per_call": 1e6 * cpu / max(calls, 1),
        "writes_per_commit": writes / max(commits, 1),
        "load_1min": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=4, help="concurrent cycles (default 4)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per run (default 3)")
    parser.add_argument("--runs", type=int, default=3, help="runs per mode, alternated (default 3)")
    parser.add_argument("--modes", nargs="+", default=["FULL", "NORMAL"], choices=["FULL", "NORMAL"])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    directory = tempfile.mkdtemp(prefix="agl-sqlite-write-cost-")
    runs: list[dict[str, Any]] = []
    try:
        for _ in range(args.runs):
            for mode in args.modes:
                row = asyncio.run(run_once(args.k, args.seconds, mode, directory))
                runs.append(row)
                print(
                    f"{mode:<7} K={args.k} {row['calls_per_s']:8.0f} calls/s {row['cpu_us_per_call']:6.0f} µs CPU/call "
                    f"{row['writes_per_commit']:5.2f} writes/commit  load {row['load_1min']:.2f}",
                    flush=True,
                )
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"\nmedians of {args.runs} run(s) of {args.seconds:g} s, K={args.k}")
    print(f"{'mode':<7} {'calls/s':>9} {'CPU µs/call':>12} {'writes/commit':>14}")
    for mode in args.modes:
        mine = [r for r in runs if r["synchronous"] == mode]
        print(
            f"{mode:<7} {statistics.median(r['calls_per_s'] for r in mine):>9.0f} "
            f"{statistics.median(r['cpu_us_per_call'] for r in mine):>12.0f} "
            f"{statistics.median(r['writes_per_commit'] for r in mine):>14.2f}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"sqlite_write_cost-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"argv": sys.argv[1:], "runs": runs}, indent=2))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
