"""End-to-end throughput of the training loop: trivial rollouts through `Trainer.fit` on the `cs` strategy.

For each runner count and span count, an algorithm enqueues N rollouts and waits for them; runner processes run an
agent that emits S spans (through the OpenTelemetry tracer) and returns a reward. Measured per run:

- rollouts/s: N / (last rollout end - first claim), read from the store's own timestamps;
- first claim: time from calling `fit()` to the first attempt starting (process start-up included);
- shutdown: time from the algorithm returning to `fit()` returning (cooperative stop of every runner);
- stuck shutdown: the same when one runner is stuck in a blocking agent (escalation SIGINT → SIGTERM);
- peak RSS and PSS of the whole process tree (sampled every 0.1 s; the process list refreshed every 0.5 s).

    python bench/e2e.py                       # runners 1 2 4 8, spans 0 and 10, 3 repeats, 2000 rollouts
    python bench/e2e.py --runners 4 --rollouts 500 --repeats 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

import agl
from agl.algorithm import algo
from agl.execution.client_server import ClientServerExecutionStrategy
from agl.store.memory import InMemoryLightningStore

STUCK_MARKER = "stuck"


class TrivialAgent(agl.LitAgent[Any]):
    """Emits `spans` annotation spans and returns a reward; a task marked stuck blocks in a sleep."""

    def __init__(self, spans: int) -> None:
        super().__init__()
        self.spans = spans

    async def rollout_async(self, task: Any, resources: Any, rollout: Any) -> float:
        if task == STUCK_MARKER:
            time.sleep(3600)  # a synchronous agent that never returns: it blocks the runner's loop
        for i in range(self.spans):
            agl.emit_annotation({"step": i, "task": str(task)})
        return 1.0


class TreeRSS:
    """Samples the memory of this process and all its children: summed RSS, and summed PSS.

    Forked runners share the parent's pages, which summed RSS counts once per process; PSS splits each shared page
    between the processes sharing it, so it is the tree's real footprint.
    """

    def __init__(self) -> None:
        self.peak = 0
        self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        # The sampler shares the GIL with the store server in this process, so it stays cheap: the process list
        # (psutil scans all of /proc for it) is refreshed every 0.5 s, the tree's memory is read every 0.1 s.
        me = psutil.Process()
        tree: list[psutil.Process] = [me]
        listed = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now - listed >= 0.5:
                try:
                    tree = [me, *me.children(recursive=True)]
                except psutil.Error:
                    pass
                listed = now
            rss = pss = 0
            for proc in tree:
                try:
                    info = proc.memory_full_info()
                except psutil.Error:
                    continue
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
            self.peak = max(self.peak, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self._stop.wait(0.1)

    def __enter__(self) -> TreeRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_once(n_runners: int, n_spans: int, n_rollouts: int, stuck: bool) -> dict[str, float]:
    store = InMemoryLightningStore()
    marks: dict[str, float] = {}

    @algo
    async def enqueue_and_wait(store: agl.LightningStore) -> None:
        tasks = [STUCK_MARKER] if stuck else []
        tasks += list(range(n_rollouts))
        ids: list[str] = []
        for start in range(0, len(tasks), 500):
            chunk = [agl.EnqueueRolloutRequest(input=t) for t in tasks[start : start + 500]]
            ids += [r.rollout_id for r in await store.enqueue_many_rollouts(chunk)]
        waiting = ids[1:] if stuck else ids
        while waiting:
            done = await store.wait_for_rollouts(rollout_ids=waiting, timeout=0.1)
            finished = {r.rollout_id for r in done}
            waiting = [i for i in waiting if i not in finished]
        marks["algorithm_done"] = time.time()

    strategy = ClientServerExecutionStrategy(
        n_runners=n_runners,
        server_port=0,
        graceful_timeout=1.0 if stuck else 10.0,
        terminate_timeout=1.0,
    )
    trainer = agl.Trainer(
        algorithm=enqueue_and_wait,
        store=store,
        strategy=strategy,
        runner={"type": "agl.runner.agent.LitAgentRunner", "poll_interval": 0.5, "heartbeat_interval": 0},
    )
    with TreeRSS() as rss:
        started = time.time()
        trainer.fit(TrivialAgent(n_spans))
        ended = time.time()

    rollouts = [r for r in asyncio.run(store.query_rollouts(status_in=["succeeded"]))]
    attempts = [r.attempt.start_time for r in rollouts if isinstance(r, agl.AttemptedRollout)]
    first_claim = min(attempts)
    last_end = max(r.end_time or 0.0 for r in rollouts)
    return {
        "rollouts_per_s": len(rollouts) / max(last_end - first_claim, 1e-9),
        "succeeded": float(len(rollouts)),
        "first_claim_s": first_claim - started,
        "shutdown_s": ended - marks["algorithm_done"],
        "wall_s": ended - started,
        "peak_tree_rss_mb": rss.peak / 2**20,
        "peak_tree_pss_mb": rss.peak_pss / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runners", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--spans", type=int, nargs="+", default=[0, 10])
    parser.add_argument("--rollouts", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-stuck", action="store_true", help="skip the stuck-runner shutdown measurement")
    parser.add_argument("--out", default="bench/results/e2e.json")
    args = parser.parse_args()

    load_start = os.getloadavg()
    print(f"load average at start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}", flush=True)
    results: list[dict[str, Any]] = []
    for n_runners in args.runners:
        for n_spans in args.spans:
            samples = [run_once(n_runners, n_spans, args.rollouts, stuck=False) for _ in range(args.repeats)]
            row: dict[str, Any] = {"runners": n_runners, "spans": n_spans}
            for key in samples[0]:
                row[key] = statistics.median(s[key] for s in samples)
            row["samples"] = samples
            results.append(row)
            print(
                f"runners={n_runners} spans={n_spans}: {row['rollouts_per_s']:.0f} rollouts/s, first claim "
                f"{row['first_claim_s']:.3f}s, shutdown {row['shutdown_s']:.3f}s, PSS {row['peak_tree_pss_mb']:.0f} MB "
                f"(summed RSS {row['peak_tree_rss_mb']:.0f} MB)",
                flush=True,
            )
    stuck: dict[str, Any] | None = None
    if not args.no_stuck:
        samples = [run_once(2, 0, 50, stuck=True) for _ in range(args.repeats)]
        stuck = {"runners": 2, "graceful_timeout": 1.0, "terminate_timeout": 1.0}
        stuck["shutdown_s"] = statistics.median(s["shutdown_s"] for s in samples)
        stuck["samples"] = samples

    load_end = os.getloadavg()
    print(
        f"\nTrainer.fit on cs, {args.rollouts} rollouts, median of {args.repeats}; load average "
        f"{load_start[0]:.2f} at start, {load_end[0]:.2f} at end"
    )
    header = (
        f"{'runners':>8}{'spans':>7}{'rollouts/s':>12}{'first claim s':>15}{'shutdown s':>12}"
        f"{'tree PSS MB':>13}{'sum RSS MB':>12}"
    )
    print(header)
    print("-" * len(header))
    for row in results:
        print(
            f"{row['runners']:>8}{row['spans']:>7}{row['rollouts_per_s']:>12.0f}{row['first_claim_s']:>15.3f}"
            f"{row['shutdown_s']:>12.3f}{row['peak_tree_pss_mb']:>13.0f}{row['peak_tree_rss_mb']:>12.0f}"
        )
    if stuck is not None:
        print(
            f"\nstuck runner (blocked in a sync sleep), graceful_timeout=1 s, terminate_timeout=1 s: "
            f"shutdown {stuck['shutdown_s']:.2f}s"
        )
    out = {
        "benchmark": "e2e",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "rollouts": args.rollouts,
        "repeats": args.repeats,
        "results": results,
        "stuck": stuck,
        "argv": sys.argv[1:],
        "load_average_start": load_start,
        "load_average_end": load_end,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
