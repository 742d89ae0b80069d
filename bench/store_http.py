"""Benchmark: the store over HTTP with K concurrent client processes.

The server (an in-memory store behind `LightningStoreServer`) runs in its own process. Each of K client processes
repeats a runner's cycle as fast as it can:

    single:  enqueue_rollout → dequeue_rollout → 10 × add_span → update_attempt(succeeded)   (13 calls)
    batched: enqueue_rollout → dequeue_rollout → add_many_spans(10 spans) → update_attempt  (4 calls)

Reported per run: calls/s, cycles/s, p50/p99 latency per call (all calls pooled), server RSS and CPU. Each
configuration runs `--repeats` times (default 3) and the table shows the median of each column. A table goes to
stdout, JSON (with every repeat) to bench/results/.

    .venv/bin/python bench/store_http.py                # K = 1, 4, 16; both cycles; 5 s each; medians of 3
    .venv/bin/python bench/store_http.py --k 4 --duration 10 --mode single --repeats 1
    .venv/bin/python bench/store_http.py --backend postgres --k 4 --mode single   # a throwaway PostgreSQL server

Agent Lightning 0.3.0 side by side (its own server and its own client, run by the Python of a side virtualenv that
has `agentlightning==0.3.0`; see bench/README.md):

    .venv/bin/python bench/store_http.py --server agentlightning --al-python /tmp/al-venv/bin/python --mode single
    .venv/bin/python bench/store_http.py --server both --al-python /tmp/al-venv/bin/python --mode single

Its client's `add_many_spans` sends one request per span, so only the single cycle compares like with like.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import random
import statistics
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SPANS_PER_CYCLE = 10
MODES = ("single", "batched")

_AL_SERVER = """
import asyncio, logging, os, sys
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
logging.disable(logging.WARNING)
from agentlightning.store.memory import InMemoryLightningStore
from agentlightning.store.client_server import LightningStoreServer
server = LightningStoreServer(InMemoryLightningStore(), host="127.0.0.1", port=int(sys.argv[1]))
asyncio.run(server.run_forever())
"""


def _serve(
    conn: Connection, backend: str = "memory", db_path: str = "", synchronous: str = "FULL", metrics: bool = True
) -> None:
    # Its own session, as a store server started on its own (`agl store` in a terminal or a service) has: Linux
    # schedules each session as one group (autogroup), so the K clients, which share the benchmark's session, do
    # not get K shares of the CPU against the server's one. Agent Lightning's server is started the same way.
    os.setsid()
    from agl.execution.parent_watch import watch_parent

    # A harness killed by a signal (a `timeout`) runs no `finally`: the server then ends by itself instead of
    # staying behind.
    watch_parent("benchmark store server")
    from agl.store.base import LightningStore
    from agl.store.memory import InMemoryLightningStore
    from agl.store.server import LightningStoreServer

    store: LightningStore
    if backend == "sqlite":
        from agl.store.sqlite import SqliteLightningStore

        store = SqliteLightningStore(db_path, synchronous=synchronous)  # type: ignore[arg-type]
    elif backend == "postgres":  # db_path is the database's DSN
        from agl.store.postgres import PostgresLightningStore

        store = PostgresLightningStore(db_path)
    else:
        store = InMemoryLightningStore(thread_safe=True)
    server = LightningStoreServer(store, host="127.0.0.1", port=0, metrics=metrics)

    async def announce() -> None:
        await server.start_async()
        conn.send(server.port)
        conn.close()

    import signal

    from agl.event_loops import new_event_loop
    from agl.store.server import tune_gc_for_serving

    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(announce())
    tune_gc_for_serving()  # as LightningStoreServer.serve() does in a dedicated server process
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.run_until_complete(stop.wait())
    loop.run_until_complete(server.stop_async())
    loop.close()


_ATTRIBUTES = {
    "gen_ai.request.model": "qwen2.5-0.5b",
    "gen_ai.usage.prompt_tokens": 120,
    "gen_ai.usage.completion_tokens": 32,
    "agentlightning.reward": 0.5,
    "prompt": "What is 2 + 2? Answer with a number only.",
}
_UPDATED = frozenset({"rollout_id", "attempt_id", "sequence_id", "trace_id", "span_id", "start_time", "end_time"})
_TEMPLATES: dict[str, tuple[Any, set[str]]] = {}
_TRACE_IDS = tuple(f"{index:032x}" for index in range(SPANS_PER_CYCLE))


def _template(impl: str) -> tuple[Any, set[str]]:
    """A realistic LLM-call span (~600 bytes of JSON) as `impl`'s own `Span` type, and its fields set once copied."""
    entry = _TEMPLATES.get(impl)
    if entry is None:
        fields: dict[str, Any] = {
            "rollout_id": "-",
            "attempt_id": "-",
            "sequence_id": 0,
            "trace_id": "0" * 32,
            "span_id": "0" * 16,
            "parent_id": None,
            "name": "openai.chat.completion",
            "attributes": dict(_ATTRIBUTES),
        }
        span_type: Any
        if impl == "agentlightning":
            from agentlightning.types import Span as span_type

            fields.update(  # Agent Lightning's Span requires these
                status={"status_code": "OK"},
                events=[],
                links=[],
                start_time=None,
                end_time=None,
                context=None,
                parent=None,
                resource={"attributes": {}, "schema_url": ""},
            )
        else:
            from agl.types import Span as span_type
        template = span_type(**fields)
        entry = _TEMPLATES[impl] = (template, set(template.__pydantic_fields_set__) | _UPDATED)
    return entry


def _span(impl: str, rollout_id: str, attempt_id: str, index: int) -> Any:
    """The template span with this span's ids and times, as a tracer's output is a given.

    Built without `model_copy` (2.5x the cost) and without a system call (`os.urandom` for the span id doubled it):
    the clients share the machine's 2 cores with the server, so the harness's own CPU per call is kept small next to
    the store calls it measures. Same fields, same JSON.
    """
    template, fields_set = _TEMPLATES.get(impl) or _template(impl)
    fields = template.__dict__.copy()
    fields["sequence_id"] = index + 1
    fields["trace_id"] = _TRACE_IDS[index] if index < SPANS_PER_CYCLE else f"{index:032x}"
    span = object.__new__(type(template))
    setattr_ = object.__setattr__
    setattr_(span, "__dict__", fields)
    setattr_(span, "__pydantic_fields_set__", fields_set)
    setattr_(span, "__pydantic_extra__", template.__pydantic_extra__)
    setattr_(span, "__pydantic_private__", template.__pydantic_private__)
    _renew([span], rollout_id, attempt_id)  # the ids and times
    return span


def _renew(spans: list[Any], rollout_id: str, attempt_id: str) -> None:
    """Turn one cycle's spans into the next cycle's, in place: new rollout, attempt, span ids and times.

    A client sends each span before the next cycle renews it (the store keeps JSON, not these objects), so the
    harness need not build 10 new objects per cycle: the CPU it spends competes with the store calls it measures.
    """
    now = time.time()
    getrandbits = random.getrandbits
    for span in spans:
        fields = span.__dict__
        fields["rollout_id"] = rollout_id
        fields["attempt_id"] = attempt_id
        fields["span_id"] = f"{getrandbits(64):016x}"
        fields["start_time"] = now
        fields["end_time"] = now + 0.01


async def _client_loop(
    endpoint: str, mode: str, duration: float, warmup: float, barrier: Any, impl: str = "agl"
) -> dict[str, Any]:
    client: Any
    if impl == "agentlightning":
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        from agentlightning.store.client_server import LightningStoreClient as AlClient

        client = AlClient(endpoint)
    else:
        from agl.store.client import LightningStoreClient

        client = LightningStoreClient(endpoint)
    perf = time.perf_counter
    names = ("enqueue_rollout", "dequeue_rollout", "add_span", "add_many_spans", "update_attempt")
    latencies: dict[str, list[float]] = {name: [] for name in names}
    enq, deq, add, add_many, upd = (latencies[name] for name in names)
    worker_id = f"worker-{os.getpid()}"
    spans = [_span(impl, "-", "-", index) for index in range(SPANS_PER_CYCLE)]

    async def cycle() -> None:
        # Timed inline (no wrapper coroutine per call): the harness's own CPU competes with what it measures.
        t0 = perf()
        await client.enqueue_rollout({"question": "2+2", "answer": 4}, mode="train")
        t1 = perf()
        claimed = await client.dequeue_rollout(worker_id=worker_id)
        enq.append(t1 - t0)
        deq.append(perf() - t1)
        if claimed is None:
            raise RuntimeError("dequeue returned nothing although this client just enqueued a rollout")
        rid, aid = claimed.rollout_id, claimed.attempt.attempt_id
        _renew(spans, rid, aid)
        if mode == "single":
            for span in spans:
                t0 = perf()
                await client.add_span(span)
                add.append(perf() - t0)
        else:
            t0 = perf()
            await client.add_many_spans(spans)
            add_many.append(perf() - t0)
        t0 = perf()
        await client.update_attempt(rid, aid, status="succeeded")
        upd.append(perf() - t0)

    end_warmup = perf() + warmup
    while perf() < end_warmup:
        await cycle()
    for values in latencies.values():
        values.clear()
    await asyncio.get_running_loop().run_in_executor(None, barrier.wait)
    cycles = 0
    cpu0 = time.process_time()
    start = perf()
    deadline = start + duration
    while perf() < deadline:
        await cycle()
        cycles += 1
    elapsed = perf() - start
    cpu = time.process_time() - cpu0
    await client.close()
    return {
        "cycles": cycles,
        "elapsed": elapsed,
        "cpu": cpu,
        "latencies": {name: values for name, values in latencies.items() if values},
    }


def _client(
    endpoint: str,
    mode: str,
    duration: float,
    warmup: float,
    barrier: Any,
    results: Any,
    impl: str = "agl",
    own_path: list[str] | None = None,
) -> None:
    if own_path is not None:
        # spawn hands the child its parent's sys.path (AGL's venv); use the side virtualenv's own instead.
        sys.path[:] = [*own_path, str(Path(__file__).resolve().parent)]
    if impl == "agentlightning":
        import logging

        logging.disable(logging.WARNING)
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    results.put(run(_client_loop(endpoint, mode, duration, warmup, barrier, impl)))


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def run_one(
    endpoint: str,
    server_pid: int,
    k: int,
    mode: str,
    duration: float,
    warmup: float,
    impl: str = "agl",
    own_path: list[str] | None = None,
    db_pid: int | None = None,
) -> dict[str, Any]:
    """Run K client processes for `duration` seconds in one mode and summarise (`db_pid`: a PostgreSQL server's
    postmaster, whose processes' CPU per call is reported too)."""
    import psutil

    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(k + 1)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_client, args=(endpoint, mode, duration, warmup, barrier, results, impl, own_path))
        for _ in range(k)
    ]
    for proc in procs:
        proc.start()
    server_proc = psutil.Process(server_pid)
    barrier.wait()
    server_cpu0 = sum(server_proc.cpu_times()[:2])
    db_cpu0 = tree_cpu(db_pid) if db_pid else {}
    wall_start = time.perf_counter()
    outs = [results.get(timeout=duration + warmup + 120) for _ in procs]
    wall = time.perf_counter() - wall_start
    server_cpu = sum(server_proc.cpu_times()[:2]) - server_cpu0
    db_cpu = sum(cpu - db_cpu0.get(pid, 0.0) for pid, cpu in tree_cpu(db_pid).items()) if db_pid else None
    for proc in procs:
        proc.join(30)
    rss = psutil.Process(server_pid).memory_info().rss
    per_call: dict[str, list[float]] = {}
    for out in outs:
        for name, values in out["latencies"].items():
            per_call.setdefault(name, []).extend(values)
    everything = sorted(v for values in per_call.values() for v in values)
    cycles = sum(out["cycles"] for out in outs)
    elapsed = max(out["elapsed"] for out in outs)
    calls = len(everything)
    return {
        "server": impl,
        "k": k,
        "mode": mode,
        "duration_s": elapsed,
        "wall_s": wall,
        "calls": calls,
        "cycles": cycles,
        "calls_per_s": calls / elapsed,
        "cycles_per_s": cycles / elapsed,
        "p50_ms": 1000 * _percentile(everything, 0.50),
        "p99_ms": 1000 * _percentile(everything, 0.99),
        "mean_ms": 1000 * statistics.fmean(everything) if everything else float("nan"),
        "per_call": {
            name: {
                "count": len(values),
                "p50_ms": 1000 * _percentile(sorted(values), 0.50),
                "p99_ms": 1000 * _percentile(sorted(values), 0.99),
            }
            for name, values in sorted(per_call.items())
        },
        "server_rss_mib": rss / 2**20,
        "server_cpu_us_per_call": 1e6 * server_cpu / max(calls, 1),
        "client_cpu_us_per_call": 1e6 * sum(out["cpu"] for out in outs) / max(calls, 1),
        **({} if db_cpu is None else {"db_cpu_us_per_call": 1e6 * db_cpu / max(calls, 1)}),
    }


def tree_cpu(pid: int) -> dict[int, float]:
    """User + system CPU seconds of a process and its children (a PostgreSQL server: postmaster and backends)."""
    import psutil

    out: dict[int, float] = {}
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                out[proc.pid] = sum(proc.cpu_times()[:2])
            except psutil.NoSuchProcess:
                continue
    except psutil.NoSuchProcess:
        pass
    return out


def _median_row(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """One row whose numeric columns are the medians over the repeats (all repeats kept under "samples")."""
    row = dict(samples[0])
    for key, value in samples[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "k":
            row[key] = statistics.median(sample[key] for sample in samples)
    row["samples"] = samples
    return row


def _repeat(
    endpoint: str,
    pid: int,
    ks: list[int],
    modes: tuple[str, ...],
    args: argparse.Namespace,
    impl: str,
    own_path: list[str] | None = None,
) -> list[dict[str, Any]]:
    rows = []
    for mode in modes:
        for k in ks:
            samples = []
            for index in range(args.repeats):
                sample = run_one(
                    endpoint, pid, k, mode, args.duration, args.warmup, impl, own_path, getattr(args, "db_pid", None)
                )
                print(
                    f"  {impl} {mode} K={k} repeat {index + 1}/{args.repeats}: {sample['calls_per_s']:.0f} calls/s, "
                    f"p99 {sample['p99_ms']:.2f} ms",
                    flush=True,
                )
                samples.append(sample)
            rows.append(_median_row(samples))
    return rows


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run_agentlightning(
    al_python: str, ks: list[int], modes: tuple[str, ...], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Agent Lightning 0.3.0's server and client (both from the side virtualenv), same cycle, same measurements."""
    import subprocess
    import urllib.request
    from multiprocessing import spawn

    port = _free_port()
    server = subprocess.Popen(
        [al_python, "-c", _AL_SERVER, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # as AGL's server (see _serve)
    )
    endpoint = f"http://127.0.0.1:{port}"
    previous = spawn.get_executable()
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint}/v1/agl/health", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Agent Lightning server did not start (exit code {server.poll()})")
            time.sleep(0.2)
        own_path = json.loads(
            subprocess.check_output([al_python, "-c", "import json, sys; print(json.dumps(sys.path[1:]))"])
        )
        spawn.set_executable(al_python)  # client processes run on the side virtualenv's Python
        return _repeat(endpoint, server.pid, ks, modes, args, "agentlightning", own_path)
    finally:
        spawn.set_executable(previous)
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _run_agl(ks: list[int], modes: tuple[str, ...], args: argparse.Namespace) -> list[dict[str, Any]]:
    import tempfile

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    db_dir = tempfile.mkdtemp(prefix="agl-bench-sqlite-")
    cluster = None
    where = os.path.join(db_dir, "store.db")
    if args.backend == "postgres":
        where = args.dsn
        if not where:
            # A throwaway server with fsync on: commits are as durable as a real deployment's.
            from tests.store.postgres_server import PostgresCluster

            cluster = PostgresCluster(fsync=True).start()
            where = cluster.create_database("agl_bench")
            args.db_pid = int((cluster.data / "postmaster.pid").read_text().split()[0])
    server = ctx.Process(
        target=_serve, args=(child, args.backend, where, args.sqlite_synchronous), name="agl-bench-store-server"
    )
    try:
        server.start()
        if not parent.poll(60):
            raise RuntimeError("the benchmark server did not start within 60 s")
        port = parent.recv()
        endpoint = f"http://127.0.0.1:{port}"
        assert server.pid is not None
        return _repeat(endpoint, server.pid, ks, modes, args, "agl")
    finally:
        server.terminate()
        server.join(15)
        if server.is_alive():
            server.kill()
            server.join()
        import shutil

        shutil.rmtree(db_dir, ignore_errors=True)
        if cluster is not None:
            cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, action="append", help="client processes (repeatable; default 1, 4, 16)")
    parser.add_argument("--mode", choices=(*MODES, "both"), default="both")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per run (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per client first (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration; medians reported (default 3)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--port", type=int, help="use a server already listening on 127.0.0.1:PORT (for profiling)")
    parser.add_argument(
        "--backend", choices=("memory", "sqlite", "postgres"), default="memory", help="AGL server's store"
    )
    parser.add_argument(
        "--dsn", help="with --backend postgres: the database (default: a throwaway local server, fsync on)"
    )
    parser.add_argument("--sqlite-synchronous", choices=("FULL", "NORMAL"), default="FULL")
    parser.add_argument(
        "--db-pid", type=int, help="with --dsn: the PostgreSQL postmaster's pid, to report its CPU per call too"
    )
    parser.add_argument(
        "--server",
        choices=("agl", "agentlightning", "both"),
        default="agl",
        help="whose server and client to measure (agentlightning needs --al-python)",
    )
    parser.add_argument("--al-python", help="Python of a virtualenv with agentlightning==0.3.0 installed")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.server != "agl" and not args.al_python:
        parser.error("--server agentlightning/both needs --al-python")
    ks = args.k or [1, 4, 16]
    modes = MODES if args.mode == "both" else (args.mode,)

    if args.port:
        import psutil

        holders = [c.pid for c in psutil.net_connections("tcp") if c.laddr.port == args.port and c.status == "LISTEN"]
        endpoint = f"http://127.0.0.1:{args.port}"
        _report(_repeat(endpoint, holders[0], ks, modes, args, "agl"), args)
        return 0
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    rows: list[dict[str, Any]] = []
    if args.server in ("agl", "both"):
        rows += _run_agl(ks, modes, args)
    if args.server in ("agentlightning", "both"):
        rows += _run_agentlightning(args.al_python, ks, modes, args)
    _report(rows, args)
    return 0


def _report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\nmedians of {args.repeats} run(s) of {args.duration:g} s")
    header = (
        f"{'server':<15} {'cycle':<8} {'K':>3} {'calls/s':>9} {'cycles/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'server RSS MiB':>15} {'srv CPU us/call':>16} {'cli CPU us/call':>16}"
    )
    with_db = any("db_cpu_us_per_call" in row for row in rows)
    if with_db:
        header += f" {'db CPU us/call':>15}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['server']:<15} {row['mode']:<8} {row['k']:>3} {row['calls_per_s']:>9.0f} {row['cycles_per_s']:>9.0f} "
            f"{row['p50_ms']:>7.2f} {row['p99_ms']:>7.2f} {row['server_rss_mib']:>15.1f} "
            f"{row['server_cpu_us_per_call']:>16.0f} {row['client_cpu_us_per_call']:>16.0f}"
            + (f" {row.get('db_cpu_us_per_call', float('nan')):>15.0f}" if with_db else "")
        )
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = args.out / f"store_http-{stamp}.json"
    meta = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "spans_per_cycle": SPANS_PER_CYCLE,
        "repeats": args.repeats,
        "load_average_end": os.getloadavg(),
        "argv": sys.argv[1:],
    }
    path.write_text(json.dumps({"meta": meta, "runs": rows}, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
