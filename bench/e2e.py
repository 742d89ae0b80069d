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
    python bench/e2e.py --impl both --al-python /tmp/al-venv/bin/python --runners 4 --rollouts 500 --repeats 1

`--impl agentlightning` runs the same workload with Agent Lightning 0.3.0's own `Trainer` (cs strategy, its
`InMemoryLightningStore`, its `OtelTracer`, its `LitAgentRunner`, its `emit_annotation`) in a subprocess on the side
virtualenv's Python (`--al-python`); that subprocess re-enters this file with `--al-worker` and imports no agl.
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

try:
    import agl
    from agl.algorithm import algo
    from agl.execution.client_server import ClientServerExecutionStrategy
    from agl.store.memory import InMemoryLightningStore
except ModuleNotFoundError:  # the Agent Lightning worker runs on the side virtualenv, which has no agl
    if "--al-worker" not in sys.argv:
        raise

STUCK_MARKER = "stuck"
AL_RESULT_PREFIX = "E2E_AL_RESULT "
AL_TIMEOUT_S = 300.0

if "--al-worker" not in sys.argv:

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


def run_once_al(n_runners: int, n_spans: int, n_rollouts: int, stuck: bool) -> dict[str, float]:
    """`run_once` on Agent Lightning 0.3.0's own components; runs on the side virtualenv only."""
    import agentlightning as al

    class AlTrivialAgent(al.LitAgent[Any]):
        def __init__(self, spans: int) -> None:
            super().__init__()
            self.spans = spans

        async def rollout_async(self, task: Any, resources: Any, rollout: Any) -> float:
            if task == STUCK_MARKER:
                time.sleep(3600)
            for i in range(self.spans):
                al.emit_annotation({"step": i, "task": str(task)})
            return 1.0

    store = al.InMemoryLightningStore()
    marks: dict[str, float] = {}

    @al.algo
    async def enqueue_and_wait(store: Any) -> None:
        await store.add_resources({})  # its runner skips a rollout when the store holds no resources
        tasks: list[Any] = [STUCK_MARKER] if stuck else []
        tasks += list(range(n_rollouts))
        ids: list[str] = []
        for start in range(0, len(tasks), 500):
            chunk = [al.EnqueueRolloutRequest(input=t) for t in tasks[start : start + 500]]
            ids += [r.rollout_id for r in await store.enqueue_many_rollouts(chunk)]
        waiting = ids[1:] if stuck else ids
        while waiting:
            done = await store.wait_for_rollouts(rollout_ids=waiting, timeout=0)
            finished = {r.rollout_id for r in done}
            waiting = [i for i in waiting if i not in finished]
            if waiting:
                await asyncio.sleep(0.1)
        marks["algorithm_done"] = time.time()

    strategy = al.ClientServerExecutionStrategy(
        n_runners=n_runners,
        server_port=_free_port(),
        graceful_timeout=1.0 if stuck else 10.0,
        terminate_timeout=1.0,
    )
    # OtelTracer, as AGL's run uses (DummyTracer has no trace_context, so its runner fails every rollout). With
    # opentelemetry-exporter-otlp-proto-http 1.45.2, its exporter keeps posting emitted spans to the default
    # localhost:4318 (the endpoint is bound in the HTTP client at construction), retrying for seconds per span:
    # only the 0-span case (the reward span goes through the store client) completes.
    tracer = al.OtelTracer()
    trainer = al.Trainer(
        algorithm=enqueue_and_wait,
        store=store,
        strategy=strategy,
        tracer=tracer,
        runner=al.LitAgentRunner(tracer=tracer, poll_interval=0.5, heartbeat_interval=0),
    )
    with TreeRSS() as rss:
        started = time.time()
        trainer.fit(AlTrivialAgent(n_spans))
        ended = time.time()

    rollouts = [r for r in asyncio.run(store.query_rollouts(status_in=["succeeded"]))]
    starts: list[float] = []
    for r in rollouts:
        if isinstance(r, al.AttemptedRollout):
            starts.append(r.attempt.start_time)
        else:  # fall back to the store's attempt records
            attempts = asyncio.run(store.query_attempts(r.rollout_id))
            starts += [a.start_time for a in attempts]
    first_claim = min(starts)
    n_spans_stored = sum(len(asyncio.run(store.query_spans(r.rollout_id))) for r in rollouts[:5])
    last_end = max(r.end_time or 0.0 for r in rollouts)
    return {
        "rollouts_per_s": len(rollouts) / max(last_end - first_claim, 1e-9),
        "succeeded": float(len(rollouts)),
        "first_claim_s": first_claim - started,
        "shutdown_s": ended - marks["algorithm_done"],
        "wall_s": ended - started,
        "peak_tree_rss_mb": rss.peak / 2**20,
        "peak_tree_pss_mb": rss.peak_pss / 2**20,
        "spans_stored_first_5": float(n_spans_stored),
    }


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _al_worker(spec: dict[str, Any]) -> None:
    """Entry point on the side virtualenv: every configuration in one process, each result a JSON line on stdout."""
    for n_runners in spec["runners"]:
        for n_spans in spec["spans"]:
            samples = [run_once_al(n_runners, n_spans, spec["rollouts"], stuck=False) for _ in range(spec["repeats"])]
            print(AL_RESULT_PREFIX + json.dumps({"key": f"{n_runners},{n_spans}", "samples": samples}), flush=True)
    if spec["stuck"]:
        samples = [run_once_al(2, 0, 50, stuck=True) for _ in range(spec["repeats"])]
        print(AL_RESULT_PREFIX + json.dumps({"key": "stuck", "samples": samples}), flush=True)


def _run_agentlightning(al_python: str, args: argparse.Namespace) -> dict[str, Any]:
    import subprocess

    spec = {
        "runners": args.runners,
        "spans": args.spans,
        "rollouts": args.rollouts,
        "repeats": args.repeats,
        "stuck": not args.no_stuck,
    }
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    proc = subprocess.Popen(
        [al_python, str(Path(__file__).resolve()), "--al-worker", json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    error: str | None = None
    try:
        stdout, stderr = proc.communicate(timeout=AL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)  # the worker and its runner processes
        stdout, stderr = proc.communicate()
        error = f"timed out after {AL_TIMEOUT_S:.0f}s"
    else:
        if proc.returncode != 0:
            error = f"exited with {proc.returncode}"
    out: dict[str, Any] = {"samples": {}, "stuck": None, "error": None}
    for line in stdout.splitlines():
        if line.startswith(AL_RESULT_PREFIX):
            item = json.loads(line[len(AL_RESULT_PREFIX) :])
            if item["key"] == "stuck":
                out["stuck"] = item["samples"]
            else:
                out["samples"][item["key"]] = item["samples"]
    if error is not None:
        out["error"] = f"Agent Lightning run {error}; stderr tail:\n{stderr[-3000:]}"
    return out


def _median(samples: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(s[key] for s in samples) for key in samples[0]}


def _print_row(impl: str, row: dict[str, Any]) -> None:
    print(
        f"[{impl}] runners={row['runners']} spans={row['spans']}: {row['rollouts_per_s']:.0f} rollouts/s, first claim "
        f"{row['first_claim_s']:.3f}s, shutdown {row['shutdown_s']:.3f}s, PSS {row['peak_tree_pss_mb']:.0f} MB "
        f"(summed RSS {row['peak_tree_rss_mb']:.0f} MB)",
        flush=True,
    )


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--al-worker":
        _al_worker(json.loads(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runners", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--spans", type=int, nargs="+", default=[0, 10])
    parser.add_argument("--rollouts", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-stuck", action="store_true", help="skip the stuck-runner shutdown measurement")
    parser.add_argument("--impl", choices=("agl", "agentlightning", "both"), default="agl")
    parser.add_argument("--al-python", help="Python of a virtualenv with agentlightning==0.3.0 installed")
    parser.add_argument("--out", default="bench/results/e2e.json")
    args = parser.parse_args()
    if args.impl != "agl" and not args.al_python:
        parser.error("--impl agentlightning/both needs --al-python")

    load_start = os.getloadavg()
    print(f"load average at start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}", flush=True)
    results: list[dict[str, Any]] = []
    stuck: dict[str, Any] | None = None
    al_results: list[dict[str, Any]] = []
    al_stuck: dict[str, Any] | None = None
    al_error: str | None = None
    if args.impl in ("agl", "both"):
        for n_runners in args.runners:
            for n_spans in args.spans:
                samples = [run_once(n_runners, n_spans, args.rollouts, stuck=False) for _ in range(args.repeats)]
                row: dict[str, Any] = {"runners": n_runners, "spans": n_spans, **_median(samples)}
                row["samples"] = samples
                results.append(row)
                _print_row("agl", row)
        if not args.no_stuck:
            samples = [run_once(2, 0, 50, stuck=True) for _ in range(args.repeats)]
            stuck = {"runners": 2, "graceful_timeout": 1.0, "terminate_timeout": 1.0}
            stuck["shutdown_s"] = statistics.median(s["shutdown_s"] for s in samples)
            stuck["samples"] = samples
    if args.impl in ("agentlightning", "both"):
        al_out = _run_agentlightning(args.al_python, args)
        al_error = al_out["error"]
        if al_error is not None:
            print(f"\nAgent Lightning: {al_error}", flush=True)
        for n_runners in args.runners:
            for n_spans in args.spans:
                samples = al_out["samples"].get(f"{n_runners},{n_spans}")
                if not samples:
                    continue  # not reached before the failure
                row = {"runners": n_runners, "spans": n_spans, **_median(samples), "samples": samples}
                al_results.append(row)
                _print_row("agentlightning", row)
        if al_out["stuck"]:
            al_stuck = {"runners": 2, "graceful_timeout": 1.0, "terminate_timeout": 1.0}
            al_stuck["shutdown_s"] = statistics.median(s["shutdown_s"] for s in al_out["stuck"])
            al_stuck["samples"] = al_out["stuck"]

    load_end = os.getloadavg()
    print(
        f"\nTrainer.fit on cs, {args.rollouts} rollouts, median of {args.repeats}; load average "
        f"{load_start[0]:.2f} at start, {load_end[0]:.2f} at end"
    )
    header = (
        f"{'impl':>15}{'runners':>8}{'spans':>7}{'rollouts/s':>12}{'first claim s':>15}{'shutdown s':>12}"
        f"{'tree PSS MB':>13}{'sum RSS MB':>12}"
    )
    print(header)
    print("-" * len(header))
    for impl, rows in (("agl", results), ("agentlightning", al_results)):
        for row in rows:
            print(
                f"{impl:>15}{row['runners']:>8}{row['spans']:>7}{row['rollouts_per_s']:>12.0f}"
                f"{row['first_claim_s']:>15.3f}{row['shutdown_s']:>12.3f}{row['peak_tree_pss_mb']:>13.0f}"
                f"{row['peak_tree_rss_mb']:>12.0f}"
            )
    if results and al_results:
        print("\nAGL / Agent Lightning (rollouts/s ratio; first claim, shutdown, PSS as AL / AGL)")
        al_by_key = {(r["runners"], r["spans"]): r for r in al_results}
        for a in results:
            b = al_by_key.get((a["runners"], a["spans"]))
            if b is None:
                continue
            print(
                f"runners={a['runners']} spans={a['spans']}: rollouts/s x{a['rollouts_per_s'] / b['rollouts_per_s']:.2f}"
                f", first claim x{b['first_claim_s'] / a['first_claim_s']:.2f}"
                f", shutdown x{b['shutdown_s'] / a['shutdown_s']:.2f}"
                f", PSS x{b['peak_tree_pss_mb'] / a['peak_tree_pss_mb']:.2f}"
            )
    for impl, st in (("agl", stuck), ("agentlightning", al_stuck)):
        if st is not None:
            print(
                f"\n[{impl}] stuck runner (blocked in a sync sleep), graceful_timeout=1 s, terminate_timeout=1 s: "
                f"shutdown {st['shutdown_s']:.2f}s"
            )
    out: dict[str, Any] = {
        "benchmark": "e2e",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "rollouts": args.rollouts,
        "repeats": args.repeats,
        "impl": args.impl,
        "results": results,
        "stuck": stuck,
        "argv": sys.argv[1:],
        "load_average_start": load_start,
        "load_average_end": load_end,
    }
    if args.impl != "agl":
        out["agentlightning"] = {"results": al_results, "stuck": al_stuck, "error": al_error}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
