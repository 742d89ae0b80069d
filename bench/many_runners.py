"""Many runners against one store server: rollouts/s, per-call latency, errors, duplicates, server RSS and CPU.

Each simulated runner is an asyncio task with its own `LightningStoreClient` (its own connections), doing what a
real runner does per rollout: dequeue (polling an empty queue with LitAgentRunner's back-off) → 3 spans → attempt
succeeded. The runners live in a few worker processes (`--procs`) on the event loop a real runner process gets (uvloop
when installed); the server is a real `agl store` process (or Agent Lightning 0.3.0's, `--server agentlightning
--al-python PY`). All rollouts are enqueued before the clock starts; the run ends when every one has succeeded.
Then every rollout is checked: exactly one attempt succeeded (duplicates and losses are errors).

Several servers of one database: `--servers N` starts N `agl store` processes on one SQLite file or PostgreSQL
database (`--backend postgres`: a throwaway local server with fsync on, or `--dsn`) and gives every
runner all their URLs (the client spreads its calls over them); `--store-url URL,URL,...` runs against servers
started elsewhere (e.g. two on one PostgreSQL; their CPU and memory are then not measured), on an empty store.

    .venv/bin/python bench/many_runners.py --runners 1000 --rollouts 20000 --backend memory sqlite
    .venv/bin/python bench/many_runners.py --runners 1000 --rollouts 20000 --backend sqlite --servers 2
    .venv/bin/python bench/many_runners.py --runners 1000 --rollouts 20000 --backend postgres --servers 2
    .venv/bin/python bench/many_runners.py --runners 1000 --rollouts 20000 --store-url http://h:4747,http://h:4748
    .venv/bin/python bench/many_runners.py --runners 1000 --rollouts 2000 --server agentlightning \\
        --al-python .venv-agentlightning/bin/python

Prints a table and writes JSON (`--out`). `--profile` samples the server with py-spy (if installed) and prints its
hottest frames.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
from store_http import tree_cpu  # bench/ is on sys.path when this script runs

REPO = Path(__file__).resolve().parents[1]
CALLS = ("dequeue", "add_span", "update_attempt")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _raise_fd_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _span(rollout_id: str, attempt_id: str, seq: int) -> Any:
    from agl.types import Span

    now = time.time()
    return Span(
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=seq,
        trace_id=os.urandom(16).hex(),
        span_id=os.urandom(8).hex(),
        parent_id=None,
        name=f"step-{seq}",
        status={"status_code": "OK"},  # type: ignore[arg-type]
        attributes={"gen_ai.request.model": "m", "step": seq, "text": "x" * 200},
        events=[],
        links=[],
        start_time=now,
        end_time=now + 0.001,
        context=None,
        parent=None,
        resource={"attributes": {"service.name": "bench"}, "schema_url": ""},  # type: ignore[arg-type]
    )


async def _runner(url: str, name: str, go: asyncio.Event, stats: dict[str, Any]) -> None:
    from agl.store.client import LightningStoreClient

    client = LightningStoreClient(url, retry_delays=(0.2, 0.5, 1.0), request_timeout=60)
    latencies: dict[str, list[float]] = stats["latencies"]
    try:
        # A runner's first call is its heartbeat (LitAgentRunner starts one before it polls); made before the clock
        # starts, it also opens the runner's connection, so the run measures 1 000 runners at work, not connecting.
        started = time.perf_counter()
        try:
            await client.update_worker(name)
            stats["first_heartbeat"].append(time.perf_counter() - started)
        except Exception as exc:
            stats["errors"].append(f"heartbeat: {exc!r:.200}")
        await go.wait()
        poll = 0.02
        while not stats["stop"]:
            started = time.perf_counter()
            try:
                claimed = await client.dequeue_rollout(worker_id=name)
            except Exception as exc:
                stats["errors"].append(f"dequeue: {exc!r:.200}")
                await asyncio.sleep(0.1)
                continue
            latencies["dequeue"].append(time.perf_counter() - started)
            if claimed is None:
                # As LitAgentRunner polls an empty queue: from 20 ms, doubling up to 5 s, with jitter.
                await asyncio.sleep(poll * random.uniform(0.5, 1.5))
                poll = min(poll * 2, 5.0)
                continue
            poll = 0.02
            rid, aid = claimed.rollout_id, claimed.attempt.attempt_id
            try:
                for seq in (1, 2, 3):
                    started = time.perf_counter()
                    await client.add_span(_span(rid, aid, seq))
                    latencies["add_span"].append(time.perf_counter() - started)
                started = time.perf_counter()
                await client.update_attempt(rid, aid, status="succeeded")
                latencies["update_attempt"].append(time.perf_counter() - started)
                stats["done"] += 1
            except Exception as exc:
                stats["errors"].append(f"{rid}: {exc!r:.200}")
    finally:
        await client.close()


def _worker_process(url: str, names: list[str], start_at: float, stop_at_count: Any, out: Any) -> None:
    _raise_fd_limit()

    async def main() -> dict[str, Any]:
        stats: dict[str, Any] = {
            "latencies": {c: [] for c in CALLS},
            "first_heartbeat": [],
            "errors": [],
            "done": 0,
            "stop": False,
        }
        go = asyncio.Event()
        tasks = [asyncio.ensure_future(_runner(url, n, go, stats)) for n in names]
        await asyncio.sleep(max(0.0, start_at - time.time()))
        go.set()
        while stop_at_count.value == 0:
            await asyncio.sleep(0.1)
        stats["stop"] = True
        await asyncio.wait(tasks, timeout=30)
        return stats

    from agl.event_loops import new_event_loop

    # The loop a real runner process gets (the client-server strategy's: uvloop when installed).
    loop = new_event_loop(fast=True)
    try:
        stats = loop.run_until_complete(main())
    finally:
        loop.close()
    out.put({key: stats[key] for key in ("latencies", "first_heartbeat", "errors", "done")})


def _start_server(
    kind: str, backend: str, port: int, workdir: Path, al_python: str | None, dsn: str | None = None
) -> subprocess.Popen[bytes]:
    log = (workdir / f"server-{port}.log").open("wb")
    if kind == "agentlightning":
        assert al_python, "--server agentlightning needs --al-python"
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONPATH": ""}
        code = "import sys; from agentlightning.cli import main; sys.argv[0] = 'agl'; sys.exit(main())"
        args = [al_python, "-c", code, "store", "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"]
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    args = [sys.executable, "-m", "agl.cli", "store", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--log-level", "WARNING", "--backend", backend]
    if backend == "sqlite":
        args += ["--path", str(workdir / "store.db")]
    elif backend == "postgres":
        assert dsn, "--backend postgres needs a database"
        args += ["--dsn", dsn]
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_raise_fd_limit)


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/v1/agl/health", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("server never became healthy")


async def _enqueue(url: str, total: int) -> list[str]:
    from agl.store.client import LightningStoreClient

    client = LightningStoreClient(url, request_timeout=120)
    ids: list[str] = []
    try:
        for first in range(0, total, 500):
            batch = [{"input": {"i": i}} for i in range(first, min(total, first + 500))]
            ids += [r.rollout_id for r in await client.enqueue_many_rollouts(batch)]  # type: ignore[arg-type]
    finally:
        await client.close()
    return ids


async def _audit(url: str, ids: list[str]) -> dict[str, int]:
    """Count rollouts by outcome: exactly one succeeded attempt is right; anything else is an error."""
    from agl.store.client import LightningStoreClient

    client = LightningStoreClient(url, request_timeout=120)
    outcome: Counter[str] = Counter()
    try:
        for first in range(0, len(ids), 200):
            chunk = ids[first : first + 200]
            rollouts = {r.rollout_id: r for r in await client.query_rollouts(rollout_id_in=chunk)}
            for rid in chunk:
                rollout = rollouts.get(rid)
                if rollout is None:
                    outcome["missing"] += 1
                elif rollout.status != "succeeded":
                    outcome[f"status {rollout.status}"] += 1
                else:
                    outcome["succeeded"] += 1
        # Attempts of a sample (one query per rollout is too slow for 20 000 on the upstream server).
        for rid in ids[:: max(1, len(ids) // 200)]:
            attempts = await client.query_attempts(rid)
            if sum(a.status == "succeeded" for a in attempts) != 1 or len(attempts) != 1:
                outcome["sampled rollouts with more than one attempt"] += 1
    finally:
        await client.close()
    return dict(outcome)


def _profile(pid: int, seconds: float, workdir: Path) -> list[tuple[str, float]]:
    """The server's hottest leaf frames over `seconds` (py-spy), as (frame, share of samples)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        return []
    out = workdir / "profile.txt"
    done = subprocess.run(
        [py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--format", "raw", "-o", str(out),
         "--rate", "200", "--nonblocking"],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0 or not out.exists():
        return []
    frames: Counter[str] = Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        for frame in set(stack.split(";")):
            frames[frame] += n  # inclusive: the share of time under each frame
    return [(f, n / total) for f, n in frames.most_common(25)] if total else []


def run_one(args: argparse.Namespace, kind: str, backend: str) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="agl-many-runners-"))
    servers: list[subprocess.Popen[bytes]] = []
    cluster = None
    try:
        dsn = args.dsn
        if kind == "agl" and backend == "postgres" and not dsn:
            # A throwaway PostgreSQL server with fsync on (commits as durable as a real deployment's).
            sys.path.insert(0, str(REPO))
            from tests.store.postgres_server import PostgresCluster

            cluster = PostgresCluster(fsync=True).start()
            dsn = cluster.create_database("agl_many_runners")
            args.db_pid = int((cluster.data / "postmaster.pid").read_text().split()[0])
        if kind == "external":
            url = args.store_url
        else:
            urls = []
            for _ in range(args.servers if kind == "agl" else 1):  # one database (file or DSN) for every server
                port = _free_port()
                urls.append(f"http://127.0.0.1:{port}")
                servers.append(_start_server(kind, backend, port, workdir, args.al_python, dsn))
            for one_url, server in zip(urls, servers, strict=True):
                _wait_healthy(one_url, server)
            url = ",".join(urls)  # the client takes several servers as one comma-separated string
        ids = asyncio.run(_enqueue(url, args.rollouts))
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        stop_flag = ctx.Value("i", 0)
        names = [f"sim-{i}" for i in range(args.runners)]
        start_at = time.time() + 3.0 + args.runners / 500  # every process has its runners ready by then
        procs = [
            ctx.Process(target=_worker_process, args=(url, names[p :: args.procs], start_at, stop_flag, out))
            for p in range(args.procs)
        ]
        for proc in procs:
            proc.start()
        try:
            return _measure(args, kind, backend, url, servers, ids, procs, out, stop_flag, start_at, workdir)
        finally:
            stop_flag.value = 1
            for proc in procs:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
    finally:
        for server in servers:
            if server.poll() is None:
                server.send_signal(signal.SIGINT)
        for server in servers:
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)
        if cluster is not None:
            cluster.stop()


def _measure(
    args: argparse.Namespace,
    kind: str,
    backend: str,
    url: str,
    servers: list[subprocess.Popen[bytes]],
    ids: list[str],
    procs: list[Any],
    out: Any,
    stop_flag: Any,
    start_at: float,
    workdir: Path,
) -> dict[str, Any]:
    """Watch the run until every rollout succeeded (or the timeout), then collect the workers' figures and audit."""
    if True:
        server_ps = [psutil.Process(server.pid) for server in servers]

        def cpu_seconds() -> float:
            return sum(t.user + t.system for t in (p.cpu_times() for p in server_ps))

        def rss() -> int:
            return sum(p.memory_info().rss for p in server_ps)

        db_pid = getattr(args, "db_pid", None)  # a PostgreSQL server this run started: its processes' CPU too

        time.sleep(max(0.0, start_at - time.time()))
        cpu_start = cpu_seconds()
        runners_start = sum(sum(tree_cpu(proc.pid).values()) for proc in procs)
        db_start = tree_cpu(db_pid) if db_pid else {}
        started = time.monotonic()
        rss_peak = rss()
        profile: list[tuple[str, float]] = []
        from agl.store.client import LightningStoreClient

        async def succeeded() -> int | None:
            client = LightningStoreClient(url, request_timeout=10, retry_delays=())
            try:
                return (await client.query_rollouts(status_in=["succeeded"], limit=1)).total
            except Exception as exc:  # a saturated server: say so and keep measuring
                print(f"  progress query failed: {exc!r:.200}", file=sys.stderr, flush=True)
                return None
            finally:
                await client.close()

        while True:
            if args.profile and servers and not profile and time.monotonic() - started > 2:
                profile = _profile(servers[0].pid, 8, workdir)
            rss_peak = max(rss_peak, rss())
            count = asyncio.run(succeeded())
            if args.verbose:
                print(f"  {time.monotonic() - started:6.1f}s {count} succeeded", file=sys.stderr, flush=True)
            if (count is not None and count >= len(ids)) or time.monotonic() - started > args.timeout:
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        cpu_end = cpu_seconds()
        runners_cpu = sum(sum(tree_cpu(proc.pid).values()) for proc in procs) - runners_start
        db_cpu = sum(c - db_start.get(pid, 0.0) for pid, c in tree_cpu(db_pid).items()) if db_pid else None
        stop_flag.value = 1
        results = [out.get(timeout=120) for _ in procs]
        for proc in procs:
            proc.join(30)
        audit = asyncio.run(_audit(url, ids))
    latencies = {c: sorted(x for r in results for x in r["latencies"][c]) for c in CALLS}
    errors = [e for r in results for e in r["errors"]]
    heartbeats = sorted(x for r in results for x in r["first_heartbeat"])
    done = sum(r["done"] for r in results)
    cpu = cpu_end - cpu_start if servers else None
    calls = sum(len(v) for v in latencies.values())

    def pct(values: list[float], q: float) -> float | None:
        return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else None

    return {
        "server": kind,
        "backend": backend if kind == "agl" else "memory" if kind == "agentlightning" else "?",
        "servers": len(servers) if servers else len(url.split(",")),
        "runners": args.runners,
        "rollouts": len(ids),
        "completed_by_runners": done,
        "seconds": elapsed,
        "rollouts_per_s": audit.get("succeeded", 0) / elapsed,
        "calls": calls,
        "latency_ms": {c: {"p50": pct(v, 0.5), "p99": pct(v, 0.99)} for c, v in latencies.items()},
        "first_heartbeat_ms": {"p50": pct(heartbeats, 0.5), "max": pct(heartbeats, 1.0), "count": len(heartbeats)},
        "errors": len(errors),
        "error_samples": errors[:5],
        "audit": audit,
        "server_cpu_s": cpu,
        "server_cpu_per_call_us": cpu / calls * 1e6 if calls and cpu is not None else None,
        "server_cpu_share": cpu / elapsed if cpu is not None else None,
        "runners_cpu_share": runners_cpu / elapsed,
        "runners_cpu_per_call_us": runners_cpu / calls * 1e6 if calls else None,
        "server_rss_peak_mib": rss_peak / 2**20 if servers else None,
        "db_cpu_share": db_cpu / elapsed if db_cpu is not None else None,
        "db_cpu_per_call_us": db_cpu / calls * 1e6 if calls and db_cpu is not None else None,
        "profile_top": profile,
    }


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runners", type=int, default=1000)
    parser.add_argument("--rollouts", type=int, default=20000)
    parser.add_argument("--procs", type=int, default=4, help="worker processes the runners are spread over")
    parser.add_argument("--backend", nargs="+", default=["memory", "sqlite"], choices=["memory", "sqlite", "postgres"])
    parser.add_argument("--dsn", help="with --backend postgres: the database (default: a throwaway local server)")
    parser.add_argument("--server", choices=["agl", "agentlightning", "both"], default="agl")
    parser.add_argument("--al-python", help="Python of a virtualenv with agentlightning==0.3.0")
    parser.add_argument("--al-rollouts", type=int, default=2000, help="rollouts for the (slower) upstream server")
    parser.add_argument("--servers", type=int, default=1,
                        help="agl store processes on one database (several need --backend sqlite)")  # fmt: skip
    parser.add_argument("--store-url", help="run against these servers (URLs separated by commas) instead")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--verbose", action="store_true", help="print progress every half second")
    parser.add_argument("--profile", action="store_true", help="sample the server with py-spy for 8 s")
    parser.add_argument("--out", default="bench/results/many_runners.json")
    args = parser.parse_args()
    if args.servers < 1:
        parser.error(f"--servers must be at least 1, got {args.servers}")
    if args.servers > 1 and (args.server != "agl" or "memory" in args.backend):
        parser.error(
            "--servers N > 1 shares one database: give --server agl --backend sqlite or postgres (memory is per process)"
        )
    _raise_fd_limit()
    plan: list[tuple[str, str]] = []
    if args.store_url:
        plan.append(("external", "?"))
    elif args.server in ("agl", "both"):
        plan += [("agl", b) for b in args.backend]
    if args.server in ("agentlightning", "both") and not args.store_url:
        plan.append(("agentlightning", "memory"))
    rows: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for kind, backend in plan:
            one = argparse.Namespace(**vars(args))
            if kind == "agentlightning":
                one.rollouts = args.al_rollouts
            row = run_one(one, kind, backend)
            row["repeat"] = repeat + 1
            rows.append(row)
            print(
                f"{kind:>14} {row['backend']:>6} run {repeat + 1}: {row['rollouts_per_s']:8.1f} rollouts/s  "
                f"errors {row['errors']}  audit {row['audit']}  first heartbeat p50/max "
                f"{_num(row['first_heartbeat_ms']['p50'], 0)}/{_num(row['first_heartbeat_ms']['max'], 0)} ms",
                flush=True,
            )
    print()
    header = (
        f"{'server':>14} {'backend':>7} {'srvs':>4} {'runners':>7} {'rollouts/s':>10} {'dequeue p50/p99':>16} "
        f"{'add_span p50/p99':>17} {'update p50/p99':>15} {'errors':>6} {'srv CPU':>7} {'µs/call':>7} {'RSS MiB':>7}"
        f" {'run CPU':>7} {'µs/call':>7} {'calls/ro':>8}"
        f" {'db CPU':>6} {'db µs/call':>10}"
    )
    print(header)

    def cell(row: dict[str, Any], call: str) -> str:
        p50, p99 = row["latency_ms"][call]["p50"], row["latency_ms"][call]["p99"]
        return "-" if p50 is None else f"{p50:.1f}/{p99:.1f}"

    for row in rows:
        print(
            f"{row['server']:>14} {row['backend']:>7} {row['servers']:>4} {row['runners']:>7} {row['rollouts_per_s']:>10.1f} "
            f"{cell(row, 'dequeue'):>16} {cell(row, 'add_span'):>17} {cell(row, 'update_attempt'):>15} {row['errors']:>6} "
            f"{_num(row['server_cpu_share'], 2):>7} {_num(row['server_cpu_per_call_us'], 0):>7} "
            f"{_num(row['server_rss_peak_mib'], 0):>7} {_num(row['runners_cpu_share'], 2):>7} "
            f"{_num(row['runners_cpu_per_call_us'], 0):>7} {row['calls'] / max(1, row['rollouts']):>8.2f} "
            f"{_num(row.get('db_cpu_share'), 2):>6} "
            f"{_num(row.get('db_cpu_per_call_us'), 0):>10}"
        )
    by_config: dict[tuple[str, str, int], list[float]] = {}
    for row in rows:
        by_config.setdefault((row["server"], row["backend"], row["servers"]), []).append(row["rollouts_per_s"])
    for (kind, backend, n_servers), values in by_config.items():
        print(
            f"median {kind} {backend} x{n_servers} server(s): {statistics.median(values):.1f} rollouts/s over "
            f"{len(values)} run(s) (all: {', '.join(f'{v:.1f}' for v in values)})"
        )
    for row in rows:
        if row["profile_top"]:
            print(f"\nserver profile ({row['server']} {row['backend']}), share of samples under each frame:")
            for frame, share in row["profile_top"]:
                print(f"  {share * 100:5.1f}%  {frame[:150]}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"argv": sys.argv, "rows": rows}, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
