"""What keeping an idempotency key with its write costs a SQLite store, in process.

Times `enqueue_rollout` on a fresh SQLite file plain and as a keyed request whose answer the store keeps in the same
transaction (what the HTTP server does for every keyed write), alternating the two run by run so both see the same
machine noise. `synchronous=NORMAL` by default, so the fsync (the same in both) does not hide the difference. Prints
the median µs per enqueue and the spread, and writes JSON.

    python bench/idempotency_cost.py                       # 5 runs of 3 000 enqueues each way, NORMAL
    (each keyed run checks that the file then holds one kept key per enqueue)
    python bench/idempotency_cost.py --runs 3 --ops 1000 --sqlite-synchronous FULL
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agl.store import idempotency
from agl.store.sqlite import SqliteLightningStore


def _encode(result: Any) -> tuple[int, bytes, bytes, tuple[tuple[bytes, bytes], ...]]:
    return 201, result.model_dump_json().encode(), b"application/json", ()


async def one_run(keyed: bool, ops: int, synchronous: str) -> float:
    """µs per enqueue over `ops` enqueues on a fresh file."""
    directory = tempfile.mkdtemp(prefix="agl-idem-bench-")
    store = SqliteLightningStore(f"{directory}/store.db", synchronous=synchronous)  # type: ignore[arg-type]
    try:
        started = time.perf_counter()
        for i in range(ops):
            if keyed:
                with idempotency.keyed_request(f"bench-key-{i}", i) as pending:
                    pending.encode = _encode
                    await store.enqueue_rollout({"i": i})
            else:
                await store.enqueue_rollout({"i": i})
        elapsed = (time.perf_counter() - started) / ops * 1e6
        stats = await store.statistics()
        kept = sqlite3.connect(f"{directory}/store.db").execute("SELECT COUNT(*) FROM idempotency_keys").fetchone()[0]
        assert stats.get("total_rollouts") == ops and kept == (ops if keyed else 0), (stats, kept)
        return elapsed
    finally:
        await store.close()
        shutil.rmtree(directory, ignore_errors=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ops", type=int, default=3000)
    parser.add_argument("--sqlite-synchronous", choices=["FULL", "NORMAL"], default="NORMAL")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results", help="JSON directory")
    args = parser.parse_args()
    runs: dict[str, list[float]] = {"plain": [], "keyed": []}
    for _ in range(args.runs):
        for name in ("plain", "keyed"):
            runs[name].append(await one_run(name == "keyed", args.ops, args.sqlite_synchronous))
    print(f"SqliteLightningStore ({args.sqlite_synchronous}), enqueue_rollout, {args.runs} runs of {args.ops}")
    print(f"{'':8}{'median µs':>12}{'min':>10}{'max':>10}")
    for name, values in runs.items():
        print(f"{name:8}{statistics.median(values):12.1f}{min(values):10.1f}{max(values):10.1f}")
    extra = statistics.median(runs["keyed"]) - statistics.median(runs["plain"])
    print(f"keyed - plain: {extra:.1f} µs per enqueue")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "idempotency_cost.json"
    out.write_text(
        json.dumps(
            {
                "synchronous": args.sqlite_synchronous,
                "ops": args.ops,
                "runs_us_per_enqueue": runs,
                "median_us": {k: statistics.median(v) for k, v in runs.items()},
                "python": platform.python_version(),
                "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main())
