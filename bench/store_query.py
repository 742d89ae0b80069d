"""Latency of the dashboard's store calls over a large store: query_rollouts pages and counts, point reads, statistics.

`build_store(path, rollouts, spans)` fills a store (SQLite at `path`, or in memory when `path` is None) with
rollouts of mixed statuses, modes and start times, and spans on the claimed ones. The SQLite file is cached under
the temp dir, keyed by the parameters and the schema version (`--rebuild` makes it again). Then every call below is
timed in process, `--repeats` times each, on both backends; the table shows medians (ms), the JSON every sample.

    python bench/store_query.py                                   # 100 000 rollouts, 1 000 000 spans (SQLite)
    python bench/store_query.py --rollouts 10000 --spans 100000 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agl.store.base import LightningStore
from agl.types import EnqueueRolloutRequest, Span

__all__ = ["build_store", "cached_sqlite_path", "measure"]

STATUSES = ("queuing", "preparing", "running", "succeeded", "failed")
_BATCH = 1000
_START = 1_700_000_000.0


class _Clock:
    """The build's clock: start times spread over about a day, several rollouts sharing each one (batches)."""

    def __init__(self) -> None:
        self.now = _START

    def __call__(self) -> float:
        return self.now


def _span(rollout_id: str, attempt_id: str, seq: int, now: float) -> Span:
    return Span(
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=seq,
        trace_id=os.urandom(16).hex(),
        span_id=os.urandom(8).hex(),
        parent_id=None,
        name="openai.chat.completion",
        attributes={"gen_ai.request.model": "m", "gen_ai.usage.prompt_tokens": 12, "prompt": "x" * 64},
        start_time=now,
        end_time=now + 0.5,
    )


async def _fill(store: LightningStore, clock: _Clock, rollouts: int, spans: int, seed: int) -> None:
    rng = random.Random(seed)
    modes = ["train"] * 14 + ["val"] * 4 + ["test", None]
    for start in range(0, rollouts, 100):
        clock.now += rng.uniform(0.0, 1.7)  # ~100 000 rollouts over about a day
        await store.enqueue_many_rollouts(
            [
                EnqueueRolloutRequest(input={"task": i}, mode=rng.choice(modes))  # type: ignore[arg-type]
                for i in range(start, min(start + 100, rollouts))
            ]
        )
    # Claim 80 % (the oldest: the queue is FIFO); the rest stay queued.
    claimed = []
    while len(claimed) < rollouts * 8 // 10:
        batch = await store.dequeue_many_rollouts(limit=min(_BATCH, rollouts * 8 // 10 - len(claimed)), worker_id="w")
        if not batch:
            break
        claimed.extend((a.rollout_id, a.attempt.attempt_id) for a in batch)
    # Spans spread evenly over the claimed rollouts (a span makes its attempt running).
    with_spans = claimed[: max(1, len(claimed) * 3 // 4)] if spans else []
    per = spans // len(with_spans) if with_spans else 0
    extra = spans - per * len(with_spans) if with_spans else 0
    pending: list[Span] = []
    for k, (rollout_id, attempt_id) in enumerate(with_spans):
        for seq in range(1, per + (1 if k < extra else 0) + 1):
            pending.append(_span(rollout_id, attempt_id, seq, clock.now))
        if len(pending) >= 2000:
            await store.add_many_spans(pending)
            pending = []
    if pending:
        await store.add_many_spans(pending)
    # Finish most claimed rollouts: succeeded 70 %, failed 15 %, the rest stay preparing/running.
    for rollout_id, attempt_id in claimed:
        roll = rng.random()
        if roll < 0.85:
            clock.now += 0.001
            status = "succeeded" if roll < 0.70 else "failed"
            await store.update_attempt(rollout_id, attempt_id, status=status)  # type: ignore[arg-type]


def cached_sqlite_path(
    rollouts: int, spans: int, seed: int = 0, directory: str | os.PathLike[str] | None = None
) -> Path:
    """Where a SQLite store of these parameters is cached (the schema version is part of the name).

    `directory` defaults to `agl-bench-store-query` under the temp dir.
    """
    from agl.store.sqlite import SCHEMA_VERSION

    where = Path(directory) if directory is not None else Path(tempfile.gettempdir()) / "agl-bench-store-query"
    return where / f"store-{rollouts}r-{spans}s-seed{seed}-schema{SCHEMA_VERSION}.db"


async def build_store(
    path: str | os.PathLike[str] | None, rollouts: int, spans: int, *, seed: int = 0, rebuild: bool = False
) -> LightningStore:
    """A store with `rollouts` rollouts (mixed statuses, modes, start times) and `spans` spans, opened for use.

    `path` None builds an `InMemoryLightningStore`; otherwise a `SqliteLightningStore` at `path`, reused as it is
    when the file exists (unless `rebuild`). Statuses: 20 % queuing, 80 % claimed, of which 70 % succeeded and
    15 % failed, the rest preparing or running; modes 70 % train, 20 % val, 5 % test, 5 % none.
    """
    clock = _Clock()
    if path is None:
        from agl.store.memory import InMemoryLightningStore

        memory = InMemoryLightningStore(clock=clock, scan_debounce_seconds=3600)
        await _fill(memory, clock, rollouts, spans, seed)
        return memory
    from agl.store.sqlite import SqliteLightningStore

    target = Path(path)
    if rebuild or not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        for leftover in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
            leftover.unlink(missing_ok=True)
        store = SqliteLightningStore(partial, clock=clock, synchronous="OFF", scan_debounce_seconds=3600)
        await _fill(store, clock, rollouts, spans, seed)
        await store.close()
        os.replace(partial, target)
    return SqliteLightningStore(target, scan_debounce_seconds=3600)


async def _timed(call: Callable[[], Awaitable[Any]], repeats: int) -> list[float]:
    await call()  # warm the caches, as a dashboard polling the same page does
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def measure(store: LightningStore, repeats: int) -> dict[str, list[float]]:
    """Every timed call on `store`, in ms per call."""
    has_window = "mode_in" in inspect.signature(store.query_rollouts).parameters
    everything = await store.query_rollouts(limit=1)
    total = everything.total
    first = await store.query_rollouts(status_in=["succeeded"], limit=1)
    probe = first[0].rollout_id if len(first) else everything[0].rollout_id
    newest = (await store.query_rollouts(sort_by="start_time", sort_order="desc", limit=1))[0].start_time
    oldest = (await store.query_rollouts(sort_by="start_time", limit=1))[0].start_time
    spans_of = await store.query_rollouts(status_in=["succeeded"], limit=1, offset=1)
    with_spans = spans_of[0].rollout_id if len(spans_of) else probe
    out: dict[str, list[float]] = {}
    for status in STATUSES:
        out[f"count {status}"] = await _timed(lambda s=status: store.query_rollouts(status_in=[s], limit=0), repeats)
    for status in STATUSES:
        # The call: a status's first 50 in insertion order (the queue's order for queued rollouts).
        out[f"page {status}"] = await _timed(lambda s=status: store.query_rollouts(status_in=[s], limit=50), repeats)
    for status in STATUSES:
        out[f"page {status}, start desc"] = await _timed(
            lambda s=status: store.query_rollouts(status_in=[s], sort_by="start_time", sort_order="desc", limit=50),
            repeats,
        )
    for status in ("succeeded", "failed"):
        out[f"page {status}, end desc"] = await _timed(
            lambda s=status: store.query_rollouts(status_in=[s], sort_by="end_time", sort_order="desc", limit=50),
            repeats,
        )
    out["page all, start desc"] = await _timed(
        lambda: store.query_rollouts(sort_by="start_time", sort_order="desc", limit=50), repeats
    )
    if has_window:
        span = newest - oldest
        low, high = oldest + 0.45 * span, oldest + 0.55 * span
        out["page train + 10 % window"] = await _timed(
            lambda: store.query_rollouts(
                mode_in=["train"],  # type: ignore[call-arg]
                start_time_from=low,
                start_time_to=high,
                sort_by="start_time",
                sort_order="desc",
                limit=50,
            ),
            repeats,
        )
    deep = min(50_000, max(0, total - 50))
    out[f"page offset {deep:,}"] = await _timed(lambda: store.query_rollouts(limit=50, offset=deep), repeats)
    out["id substring"] = await _timed(lambda: store.query_rollouts(rollout_id_contains=probe[3:9], limit=50), repeats)
    out["get_rollout_by_id"] = await _timed(lambda: store.get_rollout_by_id(probe), repeats)
    out["query_spans(rollout)"] = await _timed(lambda: store.query_spans(with_spans), repeats)
    out["statistics"] = await _timed(store.statistics, repeats)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", type=int, default=100_000)
    parser.add_argument("--spans", type=int, default=1_000_000, help="spans in the SQLite store")
    parser.add_argument("--memory-spans", type=int, default=100_000, help="spans in the in-memory store")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", choices=["memory", "sqlite", "both"], default="both")
    parser.add_argument("--rebuild", action="store_true", help="build the SQLite file again even if cached")
    parser.add_argument("--cache-dir", default=None, help="where the SQLite file is cached (default: temp dir)")
    parser.add_argument("--out", default="bench/results", help="directory for store_query.json")
    args = parser.parse_args()

    results: dict[str, dict[str, list[float]]] = {}
    builds: dict[str, float] = {}
    backends = ["memory", "sqlite"] if args.backend == "both" else [args.backend]
    for backend in backends:
        started = time.perf_counter()
        if backend == "memory":
            store = await build_store(None, args.rollouts, args.memory_spans, seed=args.seed)
        else:
            path = cached_sqlite_path(args.rollouts, args.spans, args.seed, args.cache_dir)
            cached = path.exists() and not args.rebuild
            store = await build_store(path, args.rollouts, args.spans, seed=args.seed, rebuild=args.rebuild)
            print(f"sqlite file {path} ({'cached' if cached else 'built'}, {path.stat().st_size / 2**20:,.0f} MiB)")
        builds[backend] = time.perf_counter() - started
        print(f"{backend}: ready in {builds[backend]:.1f} s")
        try:
            results[backend] = await measure(store, args.repeats)
        finally:
            await store.close()

    names = list(dict.fromkeys(name for r in results.values() for name in r))
    header = f"{'call':<32}" + "".join(f"{b + ' ms':>16}" for b in backends)
    print(f"\nmedian ms per call over {args.repeats} repeats ({args.rollouts:,} rollouts)")
    print(header)
    print("-" * len(header))
    for name in names:
        cells = [
            f"{statistics.median(results[b][name]):>16.2f}" if name in results[b] else f"{'n/a':>16}" for b in backends
        ]
        print(f"{name:<32}" + "".join(cells))
    document = {
        "benchmark": "store_query",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "load_average": os.getloadavg(),
        "rollouts": args.rollouts,
        "spans": {"sqlite": args.spans, "memory": args.memory_spans},
        "repeats": args.repeats,
        "build_seconds": builds,
        "median_ms": {b: {n: statistics.median(v) for n, v in r.items()} for b, r in results.items()},
        "samples_ms": results,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "store_query.json").write_text(json.dumps(document, indent=2))
    print(f"\nwrote {out / 'store_query.json'}")


if __name__ == "__main__":
    asyncio.run(main())
