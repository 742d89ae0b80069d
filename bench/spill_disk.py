"""Benchmark: the span spill's real disk use against its disk budget and against the span bytes moved to it.

For each span size, a fresh `SpanSpill` with a disk budget is filled with rollouts of `--spans-per-rollout` spans
(random ASCII JSON-sized payloads, 16-character span ids as runners send) until it refuses a write with
StoreFullError. Reported per size (medians of `--repeats` runs, each run listed in the JSON):

- disk / budget: the spill directory's files (sum of sizes) when full, over the budget (≤ 1.00 means it kept it);
- disk / span bytes: those files over the span JSON bytes they hold (the layout's overhead);
- spans/s written until full.

    .venv/bin/python bench/spill_disk.py                         # 300 B .. 50 KB spans, 16 MiB budget, 3 repeats
    .venv/bin/python bench/spill_disk.py --budget 64M --sizes 1000 10240

It uses only `SpanSpill(directory, max_bytes)`, `write()`, `bytes` and `close()`, so the same script measures an
older layout when run against an older checkout. A table goes to stdout, JSON to bench/results/spill_disk.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import string
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agl.store.errors import StoreFullError  # noqa: E402
from agl.store.spill import SpanSpill  # noqa: E402


def _files_bytes(directory: str) -> int:
    return sum(os.path.getsize(os.path.join(directory, name)) for name in os.listdir(directory))


def fill(parent: str, budget: int, span_size: int, per_rollout: int, seed: int) -> dict[str, Any]:
    """Fill one fresh spill until it refuses a write; its figures when full."""
    rng = random.Random(seed)
    pool = ["".join(rng.choices(string.ascii_letters, k=span_size)).encode() for _ in range(8)]
    spill = SpanSpill(parent, budget)
    rollouts = 0
    start = time.perf_counter()
    try:
        while True:
            spans = [
                (("at-00000001", f"{rollouts:08x}{i:08x}"), pool[(rollouts + i) % len(pool)])
                for i in range(per_rollout)
            ]
            try:
                spill.write(f"ro-{rollouts:012x}", spans, span_size * per_rollout)
            except StoreFullError:
                break
            rollouts += 1
        seconds = time.perf_counter() - start
        disk = _files_bytes(spill.directory)
        return {
            "span_bytes": span_size,
            "budget": budget,
            "rollouts": rollouts,
            "spans": spill.spans,
            "span_json_bytes": spill.bytes,
            "disk_bytes": disk,
            "disk_over_budget": disk / budget,
            "disk_over_span_bytes": disk / spill.bytes if spill.bytes else None,
            "spans_per_s": spill.spans / seconds if seconds > 0 else None,
        }
    finally:
        spill.close()


def parse_bytes(text: str) -> int:
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=parse_bytes, default=16 * 1024**2, help="disk budget of the spill (16M)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 1000, 2000, 5000, 10240, 50000])
    parser.add_argument("--spans-per-rollout", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="parent directory of the spills (default: a temp dir)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "spill_disk.json"))
    args = parser.parse_args()

    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=args.dir) as parent:
        for size in args.sizes:
            for repeat in range(args.repeats):
                runs.append(fill(parent, args.budget, size, args.spans_per_rollout, seed=repeat))

    print(f"budget {args.budget} bytes, {args.spans_per_rollout} spans per write, medians of {args.repeats}")
    print(f"{'span B':>8} {'disk/budget':>12} {'(min..max)':>14} {'disk/span bytes':>16} {'spans/s':>10}")
    summary = []
    for size in args.sizes:
        mine = [r for r in runs if r["span_bytes"] == size]
        over = [r["disk_over_budget"] for r in mine]
        ratio = statistics.median(r["disk_over_span_bytes"] or 0.0 for r in mine)
        rate = statistics.median(r["spans_per_s"] or 0.0 for r in mine)
        row = {"span_bytes": size, "disk_over_budget": statistics.median(over), "min": min(over), "max": max(over),
               "disk_over_span_bytes": ratio, "spans_per_s": rate}  # fmt: skip
        summary.append(row)
        print(f"{size:>8} {row['disk_over_budget']:>12.3f} {f'{min(over):.3f}..{max(over):.3f}':>14} "
              f"{ratio:>16.3f} {rate:>10.0f}")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": sys.version.split()[0], "platform": platform.platform(), "load": os.getloadavg()[0]}
    out.write_text(json.dumps({"meta": meta, "args": vars(args), "summary": summary, "runs": runs}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
