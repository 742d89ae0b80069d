"""Benchmark: garbage-collector pauses of a store server under the runner cycle, per GC threshold setting.

Runs the store server's request handling (`StoreApp.handle` over an in-memory store, no sockets) in this process
for the cycle of bench/store_http.py (enqueue → dequeue → 10 × add_span → update_attempt) and records every
collection with `gc.callbacks`. Each pause stalls every client of a real server, so the pause lengths matter more
than the total. Settings are measured one after another in the same process, each after the same warm-up, so they
compare side by side:

    .venv/bin/python bench/server_gc.py                 # the settings below, 3 000 cycles each, medians of 3
    .venv/bin/python bench/server_gc.py --cycles 1000 --repeats 1

A table goes to stdout, JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
from store_http import SPANS_PER_CYCLE, _span  # type: ignore[import-not-found]

SETTINGS: dict[str, tuple[int, int, int] | None] = {
    "700/10/10 (CPython)": (700, 10, 10),
    "50000/50/100 (before stop 8)": (50_000, 50, 100),
    "5000/2/10000": (5_000, 2, 10_000),
    "1000/2/10000": (1_000, 2, 10_000),
    "tune_gc_for_serving()": None,  # what agl.store.server sets now
}
_HEADERS = {b"host": b"127.0.0.1", b"content-type": b"application/json", b"accept-encoding": b"gzip"}


async def _run(cycles: int, threshold: tuple[int, int, int] | None, warmup: int) -> dict[str, Any]:
    from agl.store.http.app import StoreApp
    from agl.store.memory import InMemoryLightningStore
    from agl.store.server import tune_gc_for_serving

    app = StoreApp(InMemoryLightningStore(thread_safe=True))
    counter = 0

    async def call(path: str, body: bytes, minimal: bool = False) -> Any:
        nonlocal counter
        counter += 1
        headers = dict(_HEADERS)
        headers[b"idempotency-key"] = b"key-%d" % counter
        if minimal:
            headers[b"prefer"] = b"return=minimal"
        response = await app.handle("POST", path, b"", headers, body)
        if response.status >= 300:
            raise RuntimeError(f"{path} answered {response.status}: {response.body[:200]!r}")
        return response

    enqueue = orjson.dumps({"rollouts": [{"input": {"question": "2+2", "answer": 4}, "mode": "train"}]})

    async def cycle() -> None:
        await call("/v1/agl/queues/rollouts/enqueue", enqueue)
        claimed = orjson.loads((await call("/v1/agl/queues/rollouts/dequeue", b'{"limit":1,"worker_id":"w"}')).body)
        rid, aid = claimed[0]["rollout_id"], claimed[0]["attempt"]["attempt_id"]
        for index in range(SPANS_PER_CYCLE):
            span = _span("agl", rid, aid, index)
            await call("/v1/agl/spans", span.__pydantic_serializer__.to_json(span), minimal=True)
        await call(f"/v1/agl/rollouts/{rid}/attempts/{aid}", b'{"status":"succeeded"}')

    for _ in range(warmup):
        await cycle()
    old = gc.get_threshold()
    if threshold is None:
        tune_gc_for_serving()
    else:
        gc.freeze()
        gc.set_threshold(*threshold)
    used = gc.get_threshold()
    pauses: list[tuple[int, float]] = []
    started: list[float] = [0.0]

    def record(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append((info["generation"], time.perf_counter() - started[0]))

    gc.callbacks.append(record)
    try:
        start = time.perf_counter()
        for _ in range(cycles):
            await cycle()
        elapsed = time.perf_counter() - start
    finally:
        gc.callbacks.remove(record)
        gc.set_threshold(*old)
        gc.unfreeze()
    calls = cycles * (SPANS_PER_CYCLE + 3)
    row: dict[str, Any] = {"threshold": list(used), "calls": calls, "us_per_call": 1e6 * elapsed / calls}
    for generation in range(3):
        times = sorted(t for g, t in pauses if g == generation)
        row[f"gen{generation}_count"] = len(times)
        row[f"gen{generation}_mean_ms"] = 1e3 * statistics.fmean(times) if times else 0.0
        row[f"gen{generation}_max_ms"] = 1e3 * times[-1] if times else 0.0
    row["gc_us_per_call"] = 1e6 * sum(t for _, t in pauses) / calls
    row["max_pause_ms"] = max(row[f"gen{g}_max_ms"] for g in range(3))
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=3000, help="measured cycles per setting and repeat")
    parser.add_argument("--warmup", type=int, default=2000, help="cycles run first, so the store holds data")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting; the table shows medians")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results", help="JSON directory")
    args = parser.parse_args(argv)
    if args.cycles <= 0 or args.repeats <= 0 or args.warmup < 0:
        parser.error("--cycles and --repeats must be positive and --warmup not negative")

    rows: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for name, threshold in SETTINGS.items():
            row = asyncio.run(_run(args.cycles, threshold, args.warmup))
            row.update(setting=name, repeat=repeat)
            rows.append(row)
            gc.collect()
            print(f"  {name} repeat {repeat + 1}/{args.repeats}: max pause {row['max_pause_ms']:.2f} ms", flush=True)

    columns = (
        "us_per_call",
        "gc_us_per_call",
        "gen0_count",
        "gen0_mean_ms",
        "gen1_count",
        "gen1_mean_ms",
        "gen1_max_ms",
        "gen2_count",
        "max_pause_ms",
    )
    print(f"\nmedians of {args.repeats} run(s) of {args.cycles} cycles ({args.cycles * 13} calls)")
    print(f"{'setting':30s}" + "".join(f"{c:>15s}" for c in columns))
    print("-" * (30 + 15 * len(columns)))
    table: list[dict[str, Any]] = []
    for name in SETTINGS:
        samples = [r for r in rows if r["setting"] == name]
        median = {c: statistics.median(r[c] for r in samples) for c in columns}
        table.append({"setting": name, **median})
        print(f"{name:30s}" + "".join(f"{median[c]:15.2f}" for c in columns))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"server_gc-{time.strftime('%Y%m%d-%H%M%S')}.json"
    meta = {"python": platform.python_version(), "cycles": args.cycles, "repeats": args.repeats}
    path.write_text(json.dumps({"meta": meta, "table": table, "runs": rows}, indent=2))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
