"""Benchmark: what Prometheus metrics cost the store server, side by side (metrics on vs off), interleaved.

Each round runs bench/store_http.py's cycle (K client processes, `single` cycle by default: 13 calls) against a
fresh store server with metrics on (`LightningStoreServer(metrics=True)`, the default), then against one with them
off (the order alternates between rounds), so both sides see the same machine load. During the
"on" runs the benchmark scrapes `/metrics` every `--scrape-interval` seconds, as Prometheus would, so the scrape's
own cost (the store's state read on the server's loop) is part of what is measured.

Reported: server CPU µs per call of every run, and per side the median; the overhead is the ratio of the medians.

`--callgrind` adds a deterministic count, free of the host's noise: the server runs under valgrind's callgrind, one
client runs the cycle N1 and then N2 times (separate servers), and the server's instructions per call are the
difference of the totals divided by the extra calls (start-up and shutdown cancel out). No scrape in this mode.

    .venv/bin/python bench/metrics_overhead.py                  # K=4, single cycle, 5 s runs, 5 rounds
    .venv/bin/python bench/metrics_overhead.py --rounds 3 --duration 10
    .venv/bin/python bench/metrics_overhead.py --rounds 0 --callgrind
    .venv/bin/python bench/metrics_overhead.py --rounds 0 --scrape-cost 100000   # one scrape at 100 000 rollouts

`--scrape-cost N` times the rendering of `/metrics` in process (the store state read through the store's API plus
the exposition) for an in-memory store holding N rollouts: 90 % succeeded, 10 % queued, 100 workers.
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


_CALLGRIND_SERVER = """
import sys
from agl.store.memory import InMemoryLightningStore
from agl.store.server import LightningStoreServer
server = LightningStoreServer(
    InMemoryLightningStore(thread_safe=True), host="127.0.0.1", port=int(sys.argv[1]), metrics=sys.argv[2] == "on"
)
server.serve()
"""


async def _cycles(endpoint: str, n: int) -> int:
    """Run the single cycle `n` times with one client; the number of calls made."""
    from agl.store.client import LightningStoreClient

    client = LightningStoreClient(endpoint)
    spans = [store_http._span("agl", "-", "-", index) for index in range(store_http.SPANS_PER_CYCLE)]
    calls = 0
    try:
        for _ in range(n):
            await client.enqueue_rollout({"question": "2+2", "answer": 4}, mode="train")
            claimed = await client.dequeue_rollout(worker_id="worker-0")
            assert claimed is not None
            store_http._renew(spans, claimed.rollout_id, claimed.attempt.attempt_id)
            for span in spans:
                await client.add_span(span)
            await client.update_attempt(claimed.rollout_id, claimed.attempt.attempt_id, status="succeeded")
            calls += 3 + len(spans)
    finally:
        await client.close()
    return calls


def _callgrind_total(side: str, n: int, workdir: Path) -> tuple[int, int]:
    """(server instructions, calls) of one server under callgrind that answered `n` cycles."""
    import asyncio
    import re
    import signal
    import subprocess

    port = store_http._free_port()
    out = workdir / f"callgrind-{side}-{n}.out"
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-c", _CALLGRIND_SERVER,
         str(port), side],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint}/v1/agl/health", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the callgrind server did not start (exit code {server.poll()})") from None
                time.sleep(0.5)
        calls = asyncio.run(_cycles(endpoint, n))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(300)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    match = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no instruction total in {out}")
    return int(match.group(1)), calls


def _callgrind(n1: int, n2: int) -> dict[str, Any]:
    import tempfile

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="agl-metrics-callgrind-") as tmp:
        for side in ("off", "on"):
            (low, low_calls), (high, high_calls) = (_callgrind_total(side, n, Path(tmp)) for n in (n1, n2))
            results[side] = {
                "instructions": {n1: low, n2: high},
                "per_call": (high - low) / (high_calls - low_calls),
            }
            print(
                f"  callgrind metrics {side:<3}: {results[side]['per_call']:.0f} server instructions per call",
                flush=True,
            )
    results["overhead"] = results["on"]["per_call"] / results["off"]["per_call"] - 1
    return results


def _scrape_cost(n: int, repeats: int = 7) -> list[float]:
    """Seconds each of `repeats` renders of `/metrics` took for a memory store holding `n` rollouts."""
    import asyncio

    from agl.store.http.metrics import StoreMetrics
    from agl.store.memory import InMemoryLightningStore
    from agl.types.core import EnqueueRolloutRequest

    async def run() -> list[float]:
        store = InMemoryLightningStore(thread_safe=True)
        metrics = StoreMetrics(store)
        await store.enqueue_many_rollouts([EnqueueRolloutRequest(input={"i": i}) for i in range(n)])
        for index in range(n - n // 10):
            claimed = await store.dequeue_rollout(worker_id=f"worker-{index % 100}")
            assert claimed is not None
            await store.update_attempt(claimed.rollout_id, claimed.attempt.attempt_id, status="succeeded")
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            await metrics.render("")
            times.append(time.perf_counter() - started)
        return times

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--mode", choices=store_http.MODES, default="single")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per run (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per client first (default 1)")
    parser.add_argument("--rounds", type=int, default=5, help="on/off pairs (default 5; medians reported)")
    parser.add_argument("--scrape-interval", type=float, default=5.0, help="seconds between scrapes (0: none)")
    parser.add_argument("--callgrind", action="store_true", help="also count server instructions per call")
    parser.add_argument("--cycles", type=int, nargs=2, default=(100, 400), metavar=("N1", "N2"),
                        help="cycles of the two callgrind runs per side (default 100 400)")  # fmt: skip
    parser.add_argument("--scrape-cost", type=int, default=0, metavar="N", help="also time a scrape at N rollouts")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    if args.rounds < 0 or (args.rounds == 0 and not args.callgrind and not args.scrape_cost):
        parser.error("--rounds must be at least 1 (or 0 with --callgrind or --scrape-cost)")

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

    result: dict[str, Any] = {"runs": runs}
    if args.rounds:
        medians = {side: statistics.median(r["server_cpu_us_per_call"] for r in runs[side]) for side in runs}
        overhead = medians["on"] / medians["off"] - 1
        print(f"\nK={args.k} {args.mode} cycle, {args.rounds} interleaved pair(s) of {args.duration:g} s")
        print(f"{'metrics':<8} {'srv CPU us/call (each run)':<64} {'median':>7} {'calls/s med':>12}")
        for side in ("off", "on"):
            each = " ".join(f"{r['server_cpu_us_per_call']:.1f}" for r in runs[side])
            rate = statistics.median(r["calls_per_s"] for r in runs[side])
            print(f"{side:<8} {each:<64} {medians[side]:>7.1f} {rate:>12.0f}")
        ratios = sorted(
            on["server_cpu_us_per_call"] / off["server_cpu_us_per_call"]
            for on, off in zip(runs["on"], runs["off"], strict=True)
        )
        print(f"overhead of metrics on server CPU per call (ratio of medians): {100 * overhead:+.1f} %")
        print(
            f"per-pair on/off ratios: {' '.join(f'{r:.3f}' for r in ratios)} (median {statistics.median(ratios):.3f})"
        )
        if scrapes:
            print(f"scrapes: {len(scrapes)}, wall time median {1000 * statistics.median(scrapes):.1f} ms")
        result.update(medians_us_per_call=medians, overhead=overhead, pair_ratios=ratios, scrape_s=scrapes)
    if args.callgrind:
        print(f"\ncallgrind: one client, single cycle, {args.cycles[0]} and {args.cycles[1]} cycles per side")
        counted = _callgrind(*args.cycles)
        print(
            f"server instructions per call: off {counted['off']['per_call']:.0f}, on {counted['on']['per_call']:.0f} "
            f"({100 * counted['overhead']:+.1f} %)"
        )
        result["callgrind"] = counted
    if args.scrape_cost:
        times = _scrape_cost(args.scrape_cost)
        print(
            f"\nscrape at {args.scrape_cost} rollouts (10 % queued, 100 workers), in process: "
            f"{' '.join(f'{1000 * t:.1f}' for t in times)} ms (median {1000 * statistics.median(times):.1f} ms)"
        )
        result["scrape_cost_s"] = {"rollouts": args.scrape_cost, "times": times}

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
    result["meta"] = meta
    path.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
