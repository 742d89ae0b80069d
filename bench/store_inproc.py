"""In-process throughput of InMemoryLightningStore (or SqliteLightningStore), and how it holds up as the store fills.

For each store size (rollouts already held, each with spans and a finished attempt) the benchmark times rounds of
enqueue, dequeue, add_span, add_many_spans (10 per call), update_attempt, enqueue+dequeue pairs and point queries,
alternating sizes round by round so both see the same machine noise. It prints a table of median ops/s and the
ratio of the largest size to the smallest, and writes JSON.

    python bench/store_inproc.py                 # sizes 1000 and 100000
    python bench/store_inproc.py --sizes 1000 10000 --rounds 3 --ops 2000
    python bench/store_inproc.py --backend sqlite --sizes 1000 10000   # SqliteLightningStore on a temp file
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from agl.store.base import LightningStore
from agl.store.memory import InMemoryLightningStore
from agl.types import AttemptedRollout, Span

OPS = ["enqueue", "dequeue", "add_span", "add_many_spans(10)", "update_attempt", "enqueue+dequeue", "query"]


def make_span(rollout_id: str, attempt_id: str, seq: int) -> Span:
    return Span(
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=seq,
        trace_id=os.urandom(16).hex(),
        span_id=os.urandom(8).hex(),
        name="openai.chat.completion",
        attributes={"gen_ai.request.model": "m", "gen_ai.usage.prompt_tokens": 12, "prompt": "x" * 64},
        start_time=time.time(),
        end_time=time.time(),
    )


async def preload(store: LightningStore, n: int) -> list[str]:
    ids = []
    for i in range(n):
        r = await store.enqueue_rollout({"task": i})
        a = await store.dequeue_rollout(worker_id="preload")
        assert a is not None
        await store.add_many_spans([make_span(a.rollout_id, a.attempt.attempt_id, k) for k in (1, 2)])
        await store.update_attempt(a.rollout_id, a.attempt.attempt_id, status="succeeded")
        ids.append(r.rollout_id)
    return ids


async def timed(n_ops: int, fn: Callable[[int], Awaitable[object]]) -> float:
    start = time.perf_counter()
    for i in range(n_ops):
        await fn(i)
    return n_ops / (time.perf_counter() - start)


async def one_round(store: LightningStore, known: list[str], n_ops: int) -> dict[str, float]:
    out: dict[str, float] = {}
    claimed: list[AttemptedRollout] = []
    out["enqueue"] = await timed(n_ops, lambda i: store.enqueue_rollout({"task": i}))

    async def dequeue(i: int) -> None:
        a = await store.dequeue_rollout(worker_id="bench")
        assert a is not None
        claimed.append(a)

    out["dequeue"] = await timed(n_ops, dequeue)
    spans = [make_span(a.rollout_id, a.attempt.attempt_id, 1) for a in claimed]
    out["add_span"] = await timed(n_ops, lambda i: store.add_span(spans[i]))
    batches = [[make_span(a.rollout_id, a.attempt.attempt_id, 2 + k) for k in range(10)] for a in claimed]
    out["add_many_spans(10)"] = await timed(n_ops, lambda i: store.add_many_spans(batches[i]))
    out["update_attempt"] = await timed(
        n_ops, lambda i: store.update_attempt(claimed[i].rollout_id, claimed[i].attempt.attempt_id, status="succeeded")
    )

    async def pair(i: int) -> None:
        await store.enqueue_rollout({"task": i})
        await store.dequeue_rollout(worker_id="bench")

    out["enqueue+dequeue"] = await timed(n_ops, pair)
    picks = [random.choice(known) for _ in range(n_ops)]

    async def query(i: int) -> None:
        await store.get_rollout_by_id(picks[i])
        await store.query_spans(picks[i])

    out["query"] = await timed(n_ops, query)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ops", type=int, default=5000, help="operations per op type per round")
    parser.add_argument("--backend", choices=["memory", "sqlite"], default="memory")
    parser.add_argument("--sqlite-synchronous", choices=["FULL", "NORMAL"], default="FULL")
    parser.add_argument("--out", default=None, help="default bench/results/store_inproc[_sqlite].json")
    args = parser.parse_args()
    if args.out is None:
        args.out = (
            "bench/results/store_inproc.json" if args.backend == "memory" else "bench/results/store_inproc_sqlite.json"
        )
    tmpdir = tempfile.mkdtemp(prefix="agl-bench-")

    def new_store(size: int) -> LightningStore:
        if args.backend == "memory":
            return InMemoryLightningStore()
        from agl.store.sqlite import SqliteLightningStore

        return SqliteLightningStore(f"{tmpdir}/store-{size}.db", synchronous=args.sqlite_synchronous)

    stores: dict[int, LightningStore] = {}
    known: dict[int, list[str]] = {}
    for size in args.sizes:
        t = time.perf_counter()
        stores[size] = new_store(size)
        known[size] = await preload(stores[size], size)
        print(f"preloaded {size} rollouts in {time.perf_counter() - t:.1f}s")

    samples: dict[int, dict[str, list[float]]] = {s: {op: [] for op in OPS} for s in args.sizes}
    for _ in range(args.rounds):
        for size in args.sizes:  # alternate sizes so both see the same noise
            for op, value in (await one_round(stores[size], known[size], args.ops)).items():
                samples[size][op].append(value)

    medians = {s: {op: statistics.median(v) for op, v in samples[s].items()} for s in args.sizes}
    small, large = min(args.sizes), max(args.sizes)
    header = f"{'op':<20}" + "".join(f"{f'{s:,} held':>16}" for s in args.sizes) + f"{'ratio':>9}"
    print(f"\n{type(stores[small]).__name__}, median ops/s over {args.rounds} rounds of {args.ops} ops")
    print(header)
    print("-" * len(header))
    for op in OPS:
        row = f"{op:<20}" + "".join(f"{medians[s][op]:>16,.0f}" for s in args.sizes)
        print(row + f"{medians[large][op] / medians[small][op]:>9.2f}")
    result = {
        "benchmark": "store_inproc",
        "backend": args.backend if args.backend == "memory" else f"sqlite ({args.sqlite_synchronous})",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "rounds": args.rounds,
        "ops_per_round": args.ops,
        "median_ops_per_s": {str(s): medians[s] for s in args.sizes},
        "samples": {str(s): samples[s] for s in args.sizes},
        "ratio_largest_to_smallest": {op: medians[large][op] / medians[small][op] for op in OPS},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")
    for store in stores.values():
        await store.close()
    shutil.rmtree(tmpdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
