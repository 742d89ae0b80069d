"""Benchmark: what Prometheus metrics cost the store server, side by side (metrics on vs off), interleaved.

Each round runs bench/store_http.py's cycle (K client processes, `single` cycle by default: 13 calls) against a
fresh store server with metrics on (`LightningStoreServer(metrics=True)`, the default), then against one with them
off (the order alternates between rounds), so both sides see the same machine load. During the
"on" runs the benchmark scrapes `/metrics` every `--scrape-interval` seconds, as Prometheus would, so the scrape's
own cost (the store's state read on the server's loop) is part of what is measured.

Reported: server CPU µs per call of every run, and per side the median; the overhead is the ratio of the medians.

    .venv/bin/python bench/metrics_overhead.py                  # K=4, single cycle, 5 s runs, 5 rounds
    .venv/bin/python bench/metrics_overhead.py --rounds 3 --duration 10
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import store_http


def _start_server(metrics: bool) -> tuple[Any, str]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(
        target=store_http._serve,
        args=(child, "memory", "", "FULL", metrics),
        name=f"agl-bench-store-metrics-{'on' if metrics else 'off'}",
    )
    process.start()
    if not parent.poll(60):
        process.kill()
        raise RuntimeError("the benchmark server did not start within 60 s")
    return process, f"http://127.0.0.1:{parent.recv()}"


def _stop(process: Any) -> None:
    process.terminate()
    process.join(15)
    if process.is_alive():
        process.kill()
        process.join()


class _Scraper:
    """Scrapes `url` every `interval` seconds in a thread until stopped; records each scrape's wall time."""

    def __init__(self, url: str, interval: float) -> None:
        self.url = url
        self.interval = interval
        self.durations: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            started = time.perf_counter()
            with urllib.request.urlopen(self.url, timeout=30) as answer:
                answer.read()
            self.durations.append(time.perf_counter() - started)

    def __enter__(self) -> _Scraper:
        if self.interval > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--mode", choices=store_http.MODES, default="single")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per run (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per client first (default 1)")
    parser.add_argument("--rounds", type=int, default=5, help="on/off pairs (default 5; medians reported)")
    parser.add_argument("--scrape-interval", type=float, default=5.0, help="seconds between scrapes (0: none)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    scrapes: list[float] = []
    for index in range(args.rounds):
        order = ("on", "off") if index % 2 == 0 else ("off", "on")
        for side in order:
            # A fresh server per run: no drift from a store that grows, nor from one process's placement or layout.
            process, endpoint = _start_server(side == "on")
            try:
                interval = args.scrape_interval if side == "on" else 0.0
                with _Scraper(f"{endpoint}/metrics", interval) as scraper:
                    sample = store_http.run_one(endpoint, process.pid, args.k, args.mode, args.duration, args.warmup)
            finally:
                _stop(process)
            scrapes.extend(scraper.durations)
            sample["scrapes"] = len(scraper.durations)
            runs[side].append(sample)
            print(
                f"  round {index + 1}/{args.rounds} metrics {side:<3}: "
                f"{sample['server_cpu_us_per_call']:.1f} us server CPU/call, {sample['calls_per_s']:.0f} calls/s, "
                f"p50 {sample['p50_ms']:.2f} ms, {sample['scrapes']} scrape(s)",
                flush=True,
            )

    medians = {side: statistics.median(r["server_cpu_us_per_call"] for r in runs[side]) for side in runs}
    overhead = medians["on"] / medians["off"] - 1
    print(f"\nK={args.k} {args.mode} cycle, {args.rounds} interleaved pair(s) of {args.duration:g} s")
    print(f"{'metrics':<8} {'srv CPU us/call (each run)':<44} {'median':>7} {'calls/s med':>12}")
    for side in ("off", "on"):
        each = " ".join(f"{r['server_cpu_us_per_call']:.1f}" for r in runs[side])
        rate = statistics.median(r["calls_per_s"] for r in runs[side])
        print(f"{side:<8} {each:<44} {medians[side]:>7.1f} {rate:>12.0f}")
    print(f"overhead of metrics on server CPU per call (ratio of medians): {100 * overhead:+.1f} %")
    if scrapes:
        print(f"scrapes: {len(scrapes)}, wall time median {1000 * statistics.median(scrapes):.1f} ms")

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"metrics_overhead-{time.strftime('%Y%m%d-%H%M%S')}.json"
    meta = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_start": load,
        "load_average_end": os.getloadavg(),
        "argv": sys.argv[1:],
    }
    result = {"meta": meta, "medians_us_per_call": medians, "overhead": overhead, "scrape_s": scrapes, "runs": runs}
    path.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
