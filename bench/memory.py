"""Benchmark: span memory budget of the in-memory store over HTTP, with spilling to disk.

`agl store` (memory backend, `--memory-budget B`, a spill directory under a private temp dir) runs as its own
process on 127.0.0.1. C client processes push ~10 KiB spans (an LLM call: prompt and completion text, token ids,
usage) through `add_many_spans` batches until T bytes of span JSON (T ≥ 4 × B) have been acknowledged: each
client starts a rollout, adds S spans to it in batches, marks the attempt succeeded, and moves on.

Measured:
- server RSS (psutil, the server process and any children) every 100 ms: the baseline before ingest, the peak
  during ingest and during the queries, against B and B + 10 %;
- spans/s acknowledged before and after spilling starts (the first 100 ms poll of `statistics()` with
  `spilled_span_bytes > 0`);
- spans lost: acknowledged spans vs the store's `total_spans` (in memory + spilled), then a sample of spilled
  and of in-memory rollouts queried back and checked span id by span id (`--verify-all`: every rollout);
- query_spans latency (p50/p99) for spilled vs in-memory rollouts.

A table goes to stdout, JSON to bench/results/memory.json. The server and the spill directory are removed at the
end, on errors and on Ctrl+C.

    .venv/bin/python bench/memory.py                                   # budget 512 MiB, 4 GiB of spans
    .venv/bin/python bench/memory.py --budget 64M --total 256M         # a quick run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MIB = 1024**2
_UNITS = {"": 1, "K": 1024, "M": MIB, "G": 1024**3}


def parse_bytes(text: str) -> int:
    """'512M', '4G', '10K', '1048576' → bytes (binary units)."""
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = text[-1:] if text[-1:] in _UNITS and not text[-1:].isdigit() else ""
    number = text[: len(text) - len(unit)]
    return int(float(number) * _UNITS[unit])


# -- spans --------------------------------------------------------------------------------------------------------

_WORDS = (
    "the model reads a question about prime numbers and answers step by step checking each factor before it "
    "writes the final result into a box so the reward function can parse it reliably while the tool call "
    "returns a json object with the search results from the retriever which ranks passages by relevance"
).split()


def _text(rng: random.Random, size: int) -> str:
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:size]


def _attribute_pool(rng: random.Random, span_bytes: int, count: int) -> list[dict[str, Any]]:
    """`count` distinct attribute dicts of an LLM call whose span serializes to about `span_bytes` bytes."""
    pool = []
    for _ in range(count):
        prompt_ids = [rng.randrange(151_000) for _ in range(250)]
        response_ids = [rng.randrange(151_000) for _ in range(150)]
        fixed = {
            "gen_ai.system": "openai",
            "gen_ai.request.model": "Qwen/Qwen2.5-1.5B-Instruct",
            "gen_ai.request.temperature": 0.7,
            "gen_ai.request.max_tokens": 1024,
            "gen_ai.response.id": "chatcmpl-" + rng.randbytes(12).hex(),
            "gen_ai.prompt.0.role": "system",
            "gen_ai.prompt.0.content": "You are a helpful assistant. Think step by step.",
            "gen_ai.prompt.1.role": "user",
            "gen_ai.completion.0.role": "assistant",
            "gen_ai.completion.0.finish_reason": "stop",
            "gen_ai.usage.prompt_tokens": len(prompt_ids),
            "gen_ai.usage.completion_tokens": len(response_ids),
            "prompt_token_ids": prompt_ids,
            "response_token_ids": response_ids,
            "agentlightning.reward": round(rng.random(), 3),
        }
        # Span envelope (ids, times, status, resource) ≈ 600 bytes; the rest is prompt and completion text.
        text_bytes = max(0, span_bytes - 600 - len(json.dumps(fixed, separators=(",", ":"))))
        fixed["gen_ai.prompt.1.content"] = _text(rng, text_bytes * 3 // 5)
        fixed["gen_ai.completion.0.content"] = _text(rng, text_bytes - text_bytes * 3 // 5)
        pool.append(fixed)
    return pool


def span_id_of(client: int, rollout_n: int, seq: int) -> str:
    """Deterministic span id, so a query's answer can be checked without keeping every id."""
    return f"{client:02x}{rollout_n:08x}{seq:06x}"


def _make_span(rollout_id: str, attempt_id: str, seq: int, span_id: str, attrs: dict[str, Any]) -> Any:
    from agl.types.tracer import Span

    now = time.time()
    return Span(
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=seq,
        trace_id=rollout_id.encode().hex()[:32].ljust(32, "0"),
        span_id=span_id,
        parent_id=None,
        name="openai.chat.completion",
        status={"status_code": "OK"},
        attributes=attrs,
        start_time=now,
        end_time=now + 0.5,
        resource={"attributes": {"service.name": "agl-runner", "telemetry.sdk.name": "opentelemetry"}},
    )


# -- client processes ---------------------------------------------------------------------------------------------


def _client_main(
    index: int, endpoint: str, spans: int, spans_per_rollout: int, batch: int, span_bytes: int, queue: Any
) -> None:
    try:
        queue.put(asyncio.run(_client(index, endpoint, spans, spans_per_rollout, batch, span_bytes)))
    except BaseException as exc:  # reported to the parent, which fails the run
        queue.put({"client": index, "error": repr(exc)})


async def _client(
    index: int, endpoint: str, spans: int, spans_per_rollout: int, batch: int, span_bytes: int
) -> dict[str, Any]:
    from agl.store.client import LightningStoreClient
    from agl.store.errors import StoreFullError

    rng = random.Random(index)
    pool = _attribute_pool(rng, span_bytes, 32)
    client = LightningStoreClient(endpoint, request_timeout=120.0)
    acks: list[tuple[float, int]] = []  # (time acknowledged, spans stored) per batch
    rollouts: list[tuple[str, float, int, int]] = []  # (rollout id, start time, rollout number, spans acked)
    full_retries = 0
    sent = 0
    rollout_n = 0
    try:
        while sent < spans:
            rollout = await client.start_rollout({"task": f"c{index}-r{rollout_n}"}, mode="train")
            attempt_id = rollout.attempt.attempt_id
            n = min(spans_per_rollout, spans - sent)
            acked = 0
            for first in range(0, n, batch):
                chunk = [
                    _make_span(
                        rollout.rollout_id,
                        attempt_id,
                        seq + 1,
                        span_id_of(index, rollout_n, seq),
                        pool[(rollout_n + seq) % len(pool)],
                    )
                    for seq in range(first, min(n, first + batch))
                ]
                while True:
                    try:
                        stored = await client.add_many_spans(chunk)
                        break
                    except StoreFullError:  # HTTP 507: the spill is full too; back off and retry
                        full_retries += 1
                        await asyncio.sleep(0.5)
                acked += len(stored)
                acks.append((time.time(), len(stored)))
            await client.update_attempt(rollout.rollout_id, attempt_id, status="succeeded")
            rollouts.append((rollout.rollout_id, rollout.start_time, rollout_n, acked))
            sent += n
            rollout_n += 1
    finally:
        await client.close()
    return {"client": index, "acks": acks, "rollouts": rollouts, "full_retries": full_retries}


# -- server and sampling ------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss(proc: Any) -> int:
    import psutil

    total = 0
    for p in (proc, *proc.children(recursive=True)):
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


class Sampler(threading.Thread):
    """Samples the server's RSS and the store's spill statistics every `interval` seconds."""

    def __init__(self, pid: int, endpoint: str, interval: float) -> None:
        super().__init__(daemon=True)
        import psutil

        self.proc = psutil.Process(pid)
        self.endpoint = endpoint
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self.spill_start: float | None = None
        self.phase_peaks: dict[str, int] = {}
        self.phase = "idle"
        self._halt = threading.Event()

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        from agl.store.client import LightningStoreClient

        client = LightningStoreClient(self.endpoint, request_timeout=30.0)
        try:
            while not self._halt.is_set():
                t0 = time.time()
                rss = _rss(self.proc)
                self.samples.append((t0, rss))
                self.phase_peaks[self.phase] = max(self.phase_peaks.get(self.phase, 0), rss)
                if self.spill_start is None and self.phase == "ingest":
                    with contextlib.suppress(Exception):
                        stats = await client.statistics()
                        if stats.get("spilled_span_bytes", 0) > 0:
                            self.spill_start = t0
                await asyncio.sleep(max(0.0, self.interval - (time.time() - t0)))
        finally:
            await client.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def start_server(args: argparse.Namespace, port: int, spill_dir: str) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "agl.cli", "store", "--backend", "memory", "--host", "127.0.0.1", "--port", str(port),
        "--memory-budget", str(args.budget), "--spill-dir", spill_dir, "--log-level", "WARNING",
    ]  # fmt: skip
    if args.spill_max_bytes is not None:
        command += ["--spill-max-bytes", str(args.spill_max_bytes)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # Its own session: a Ctrl+C in the terminal reaches us, and we stop the server ourselves.
    with open(os.path.join(spill_dir, "server.log"), "wb") as log:
        return subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True, stdout=log, stderr=log)


async def wait_ready(endpoint: str, server: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    from agl.store.client import LightningStoreClient

    client = LightningStoreClient(endpoint, retry_delays=(), health_retry_delays=(), request_timeout=2.0)
    deadline = time.time() + timeout
    try:
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"agl store exited with code {server.returncode}")
            try:
                await client.statistics()
                return
            except Exception:
                if time.time() > deadline:
                    raise
                await asyncio.sleep(0.1)
    finally:
        await client.close()


def stop_server(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# -- queries ------------------------------------------------------------------------------------------------------


async def query_rollouts(
    endpoint: str, picks: list[tuple[str, int, int, int]], spans_per_rollout: int
) -> tuple[list[float], list[str]]:
    """Query each (rollout id, client, rollout number, spans acked); latencies in ms and problems found."""
    from agl.store.client import LightningStoreClient

    client = LightningStoreClient(endpoint, request_timeout=120.0)
    latencies: list[float] = []
    problems: list[str] = []
    try:
        for rollout_id, client_index, rollout_n, acked in picks:
            t0 = time.perf_counter()
            result = await client.query_spans(rollout_id)
            latencies.append((time.perf_counter() - t0) * 1000)
            got = {s.span_id for s in result.items}
            want = {span_id_of(client_index, rollout_n, seq) for seq in range(acked)}
            if got != want:
                problems.append(f"{rollout_id}: {len(want - got)} missing, {len(got - want)} unexpected")
    finally:
        await client.close()
    return latencies, problems


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _rate(acks: list[tuple[float, int]], start: float, end: float) -> float:
    spans = sum(n for t, n in acks if start < t <= end)
    return spans / (end - start) if end > start else float("nan")


# -- main ---------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    import psutil

    parent = args.spill_parent or tempfile.gettempdir()
    free = shutil.disk_usage(parent).free
    if free < args.total + 2 * 1024**3:
        raise SystemExit(f"{parent} has {free / MIB:.0f} MiB free; the spill needs about {args.total / MIB:.0f} MiB")
    workdir = tempfile.mkdtemp(prefix="agl-bench-memory-", dir=parent)
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = start_server(args, port, workdir)
    sampler: Sampler | None = None
    clients: list[mp.process.BaseProcess] = []
    try:
        asyncio.run(wait_ready(endpoint, server))
        time.sleep(1.0)
        baseline = _rss(psutil.Process(server.pid))
        sampler = Sampler(server.pid, endpoint, args.interval)
        sampler.start()

        total_spans = args.total // args.span_bytes
        per_client = [total_spans // args.clients + (i < total_spans % args.clients) for i in range(args.clients)]
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        sampler.phase = "ingest"
        started = time.time()
        for i, n in enumerate(per_client):
            proc = ctx.Process(
                target=_client_main,
                args=(i, endpoint, n, args.spans_per_rollout, args.batch, args.span_bytes, queue),
                daemon=True,
            )
            proc.start()
            clients.append(proc)
        results = []
        while len(results) < len(clients):
            try:
                results.append(queue.get(timeout=1.0))
            except Exception:
                if server.poll() is not None:
                    raise RuntimeError(f"agl store exited with code {server.returncode} during ingest") from None
                dead = [p for p in clients if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"a client process died (exit code {dead[0].exitcode})") from None
        ingest_end = time.time()
        sampler.phase = "after_ingest"
        for proc in clients:
            proc.join(timeout=10)
        errors = [r["error"] for r in results if "error" in r]
        if errors:
            raise RuntimeError(f"client failed: {errors[0]}")

        acks = [a for r in results for a in r["acks"]]
        rollouts = [(rid, start, r["client"], n, acked) for r in results for rid, start, n, acked in r["rollouts"]]
        acked_spans = sum(n for _, n in acks)

        async def stats() -> dict[str, Any]:
            from agl.store.client import LightningStoreClient

            client = LightningStoreClient(endpoint)
            try:
                return dict(await client.statistics())
            finally:
                await client.close()

        store_stats = asyncio.run(stats())
        stored = int(store_stats["total_spans"])
        spilled = int(store_stats["spilled_spans"])
        spilled_rollouts = int(store_stats["spilled_rollouts"])

        # Eviction goes by rollout start time: the oldest rollouts are the spilled ones, the newest stay in memory.
        by_start = sorted(rollouts, key=lambda r: r[1])
        margin = args.clients * 2  # rollouts being written while a spill ran may be split across memory and disk
        spilled_pool = by_start[: max(0, spilled_rollouts - margin)]
        in_memory_rollouts = max(0, (stored - spilled) // args.spans_per_rollout - margin)
        memory_pool = by_start[len(by_start) - in_memory_rollouts :] if in_memory_rollouts else []
        rng = random.Random(0)
        if args.verify_all:
            verify = [(rid, c, n, a) for rid, _, c, n, a in by_start]
            rng.shuffle(verify)
        else:
            verify = []
        spilled_pick = [
            (rid, c, n, a) for rid, _, c, n, a in rng.sample(spilled_pool, min(args.queries, len(spilled_pool)))
        ]
        memory_pick = [
            (rid, c, n, a) for rid, _, c, n, a in rng.sample(memory_pool, min(args.queries, len(memory_pool)))
        ]

        sampler.phase = "query"
        spilled_ms, spilled_problems = asyncio.run(query_rollouts(endpoint, spilled_pick, args.spans_per_rollout))
        memory_ms, memory_problems = asyncio.run(query_rollouts(endpoint, memory_pick, args.spans_per_rollout))
        all_problems: list[str] = []
        if verify:
            _, all_problems = asyncio.run(query_rollouts(endpoint, verify, args.spans_per_rollout))
        sampler.phase = "done"
        time.sleep(2 * args.interval)
        sampler.stop()

        spill_start = sampler.spill_start
        peak_ingest = sampler.phase_peaks.get("ingest", 0)
        peak_all = max(sampler.phase_peaks.values())
        budget = args.budget
        at_spill = next((r for t, r in sampler.samples if spill_start is not None and t >= spill_start), None)
        at_end = max((r for t, r in sampler.samples if t <= ingest_end), default=0) if sampler.samples else 0
        at_end = next((r for t, r in reversed(sampler.samples) if t <= ingest_end), at_end)
        return {
            "benchmark": "memory",
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join([".venv/bin/python", "bench/memory.py", *sys.argv[1:]]),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "load_average_at_start": args.load_at_start,
                "load_average_at_end": list(os.getloadavg()),
            },
            "config": {
                "budget_bytes": budget,
                "total_bytes": args.total,
                "span_bytes_target": args.span_bytes,
                "clients": args.clients,
                "batch": args.batch,
                "spans_per_rollout": args.spans_per_rollout,
                "sample_interval_s": args.interval,
                "spill_max_bytes": args.spill_max_bytes,
            },
            "rss": {
                "baseline_bytes": baseline,
                "peak_ingest_bytes": peak_ingest,
                "at_spill_start_bytes": at_spill,
                "at_end_of_ingest_bytes": at_end,
                "peak_bytes": peak_all,
                "peak_by_phase_bytes": sampler.phase_peaks,
                "peak_over_budget": peak_all / budget,
                "peak_minus_baseline_over_budget": (peak_all - baseline) / budget,
                "within_budget_plus_10pct": peak_all <= budget * 1.1,
                "within_baseline_plus_budget_plus_10pct": peak_all - baseline <= budget * 1.1,
                "samples": len(sampler.samples),
            },
            "ingest": {
                "seconds": ingest_end - started,
                "acked_spans": acked_spans,
                "acked_span_json_bytes": store_stats["total_span_bytes"] + store_stats["spilled_span_bytes"],
                "spans_per_s": acked_spans / (ingest_end - started),
                "spill_started_after_s": (spill_start - started) if spill_start else None,
                "spans_per_s_before_spill": _rate(acks, started, spill_start) if spill_start else None,
                "spans_per_s_after_spill": _rate(acks, spill_start, ingest_end) if spill_start else None,
                "store_full_retries": sum(r["full_retries"] for r in results),
                "rollouts": len(rollouts),
            },
            "store": store_stats,
            "loss": {
                "acked_spans": acked_spans,
                "stored_spans": stored,
                "in_memory_spans": stored - spilled,
                "spilled_spans": spilled,
                "spans_lost": acked_spans - stored,
                "rollouts_checked": len(spilled_pick) + len(memory_pick) + len(verify),
                "query_problems": (spilled_problems + memory_problems + all_problems)[:20],
            },
            "query_ms": {
                "spilled": {"n": len(spilled_ms), "p50": _pct(spilled_ms, 0.5), "p99": _pct(spilled_ms, 0.99)},
                "in_memory": {"n": len(memory_ms), "p50": _pct(memory_ms, 0.5), "p99": _pct(memory_ms, 0.99)},
                "spans_per_rollout": args.spans_per_rollout,
            },
            "rss_samples": [
                (round(t - started, 2), r) for t, r in sampler.samples[:: max(1, len(sampler.samples) // 2000)]
            ],
        }
    finally:
        try:
            stop_server(server)
            for proc in clients:
                if proc.is_alive():
                    proc.terminate()
                    proc.join(timeout=5)
            if sampler is not None and sampler.is_alive():
                sampler.stop()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def print_table(r: dict[str, Any]) -> None:
    b = r["config"]["budget_bytes"]
    rss, ing, loss, q = r["rss"], r["ingest"], r["loss"], r["query_ms"]

    def mib(x: float) -> str:
        return f"{x / MIB:,.0f} MiB"

    def num(x: float | None, fmt: str = ",.0f") -> str:
        return "-" if x is None else format(x, fmt)

    rows = [
        ("budget (--memory-budget)", f"{mib(b)} (+10 % = {mib(b * 1.1)})"),
        ("span JSON acknowledged", f"{mib(ing['acked_span_json_bytes'])} ({ing['acked_span_json_bytes'] / b:.1f} × budget)"),
        ("server RSS before ingest (baseline)", mib(rss["baseline_bytes"])),
        ("server RSS when spilling starts / at end of ingest",
         f"{mib(rss['at_spill_start_bytes'] or 0)} / {mib(rss['at_end_of_ingest_bytes'])}"),
        ("peak server RSS, ingest", mib(rss["peak_ingest_bytes"])),
        ("peak server RSS, whole run", f"{mib(rss['peak_bytes'])} ({rss['peak_over_budget']:.2f} × budget)"),
        ("peak RSS − baseline", f"{mib(rss['peak_bytes'] - rss['baseline_bytes'])} "
                                f"({rss['peak_minus_baseline_over_budget']:.2f} × budget)"),
        ("peak RSS ≤ budget + 10 %", "yes" if rss["within_budget_plus_10pct"] else "NO"),
        ("peak RSS − baseline ≤ budget + 10 %", "yes" if rss["within_baseline_plus_budget_plus_10pct"] else "NO"),
        ("spans/s, whole ingest", num(ing["spans_per_s"])),
        ("spill started after", f"{num(ing['spill_started_after_s'], '.1f')} s"),
        ("spans/s before spill", num(ing["spans_per_s_before_spill"])),
        ("spans/s after spill", num(ing["spans_per_s_after_spill"])),
        ("spans acknowledged", f"{loss['acked_spans']:,}"),
        ("spans stored (memory + spilled)", f"{loss['stored_spans']:,} ({loss['in_memory_spans']:,} + {loss['spilled_spans']:,})"),
        ("spans lost", f"{loss['spans_lost']:,}"),
        ("rollouts queried back / problems", f"{loss['rollouts_checked']:,} / {len(loss['query_problems'])}"),
        (f"query_spans p50 / p99, spilled ({q['spans_per_rollout']} spans)",
         f"{q['spilled']['p50']:.1f} / {q['spilled']['p99']:.1f} ms (n={q['spilled']['n']})"),
        (f"query_spans p50 / p99, in memory ({q['spans_per_rollout']} spans)",
         f"{q['in_memory']['p50']:.1f} / {q['in_memory']['p99']:.1f} ms (n={q['in_memory']['n']})"),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    print(f"| {'metric':<{width}} | value |")
    print(f"|{'-' * (width + 2)}|---|")
    for key, value in rows:
        print(f"| {key:<{width}} | {value} |")
    print(f"command: {r['command']}")
    print(
        f"load average at start / end: {r['machine']['load_average_at_start']} / {r['machine']['load_average_at_end']}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=parse_bytes, default=512 * MIB, help="--memory-budget of the store (512M)")
    parser.add_argument("--total", type=parse_bytes, default=4 * 1024**3, help="span JSON bytes to push (4G)")
    parser.add_argument("--span-bytes", type=parse_bytes, default=10 * 1024, help="serialized size of a span (10K)")
    parser.add_argument("--clients", type=int, default=2, help="client processes (2)")
    parser.add_argument("--batch", type=int, default=25, help="spans per add_many_spans call (25)")
    parser.add_argument("--spans-per-rollout", type=int, default=50, help="spans per rollout (50)")
    parser.add_argument("--queries", type=int, default=200, help="rollouts queried back of each kind (200)")
    parser.add_argument("--verify-all", action="store_true", help="also query back every rollout and check it")
    parser.add_argument("--interval", type=float, default=0.1, help="RSS sampling interval in seconds (0.1)")
    parser.add_argument("--spill-parent", default=None, help="directory for the temp dir holding the spill")
    parser.add_argument("--spill-max-bytes", type=parse_bytes, default=None, help="--spill-max-bytes of the store")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "memory.json"))
    args = parser.parse_args()
    if args.total < 4 * args.budget:
        print(f"note: --total is {args.total / args.budget:.1f} × the budget; the target run pushes ≥ 4 ×")
    args.load_at_start = list(os.getloadavg())
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a SIGTERM cleans up like Ctrl+C
    result = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"JSON: {args.out}")
    lost = result["loss"]["spans_lost"] != 0 or result["loss"]["query_problems"]
    return 1 if lost else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: server stopped, spill directory removed", file=sys.stderr)
        sys.exit(130)
