"""The dashboard over a big SQLite store: each page's first paint and each API call behind it.

    python bench/dashboard.py [--rollouts 100000] [--spans-per-rollout 10] [--db /tmp/agl-dash-bench.db]
                              [--runs 5] [--calls 20] [--out bench/results/dashboard.json]

1. Builds (or reuses, when its counts match) a SQLite store through the store's public API: rollouts over 20
   resources versions and the last two hours (the store's clock is simulated), claimed by 16 workers, each with an
   agent span, LLM calls, tool calls and a reward annotation (`--spans-per-rollout` spans in all); 8 % fail.
2. Serves it with `agl store --backend sqlite` on a free loopback port and waits until the store has read every
   reward (the overview's `reward.pending` reaches 0; the time it took is reported).
3. API: every call each page makes, `--calls` times over one keep-alive connection (medians, p90, max).
4. Pages: `--runs` cold loads of each page in Debian's Chromium (a fresh browser context each time): the
   first-contentful-paint entry and the time until the page shows its data, both from navigation start.

Targets (issue 16): first paint <= 1 s, each API call <= 50 ms. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import platform
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agl.store.sqlite import SqliteLightningStore  # noqa: E402
from agl.types import EnqueueRolloutRequest, PromptTemplate, ProxyLLM, Span  # noqa: E402
from agl.types.tracer import SpanContext, TraceStatus  # noqa: E402

VERSIONS = 20
WORKERS = 16
BATCH = 500
HISTORY_SECONDS = 2 * 3600.0
PAGE_TARGET_S = 1.0
API_TARGET_MS = 50.0


# -- building the store -------------------------------------------------------------------------------------------


class _Clock:
    """The store's clock while building: it walks through the last `HISTORY_SECONDS` as rollouts are written."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def _spans(rollout_id: str, attempt_id: str, t: float, n: int, reward: float | None) -> list[Span]:
    trace = f"tr-{rollout_id}"

    def span(i: int, name: str, attrs: dict[str, Any], parent: str | None, status: str = "OK") -> Span:
        sid = f"{rollout_id}-{i}"
        return Span(
            rollout_id=rollout_id, attempt_id=attempt_id, sequence_id=i + 1, trace_id=trace, span_id=sid,
            parent_id=parent, name=name, status=TraceStatus(status_code=status), attributes=attrs,
            start_time=t + i * 0.01, end_time=t + i * 0.01 + 0.008,
            context=SpanContext(trace_id=trace, span_id=sid, is_remote=False, trace_state={}),
        )  # fmt: skip

    root = f"{rollout_id}-0"
    out = [span(0, "agentlightning.operation", {"agentlightning.operation.name": "solve"}, None)]
    for i in range(1, n - 1):
        if i % 2:
            attrs = {"gen_ai.system": "openai", "gen_ai.request.model": "m", "gen_ai.prompt.0.role": "user",
                     "gen_ai.prompt.0.content": f"question {i} of {rollout_id}", "gen_ai.completion.0.role": "assistant",
                     "gen_ai.completion.0.content": "42", "gen_ai.usage.prompt_tokens": 31,
                     "gen_ai.usage.completion_tokens": 3}  # fmt: skip
            out.append(span(i, "openai.chat.completion", attrs, root))
        else:
            out.append(span(i, "tool.calculator", {"tool.name": "calculator", "tool.arguments": "6*7"}, root))
    if reward is None:
        out.append(span(n - 1, "agentlightning.exception", {"exception.type": "ValueError",
                                                            "exception.message": "bad answer"}, root, "ERROR"))  # fmt: skip
    else:
        out.append(span(n - 1, "agentlightning.annotation", {"agentlightning.reward.0.name": "primary",
                                                             "agentlightning.reward.0.value": reward}, root))  # fmt: skip
    return out


async def build(path: Path, rollouts: int, spans_per_rollout: int) -> float:
    """Write the store at `path`; returns the seconds it took."""
    started = time.monotonic()
    clock = _Clock(time.time() - HISTORY_SECONDS)
    step = HISTORY_SECONDS / rollouts
    store = SqliteLightningStore(path, clock=clock, synchronous="OFF", scan_debounce_seconds=1e9)
    rng = random.Random(1)
    try:
        per_version = rollouts // VERSIONS
        for v in range(VERSIONS):
            template = "You are a calculator.\n" + "Be careful.\n" * (v % 5) + "Question: {question}"
            await store.update_resources(f"step-{v}", {
                "llm": ProxyLLM(endpoint="http://127.0.0.1:4748/v1", model="m", weights_version=str(v)),
                "prompt": PromptTemplate(template=template, engine="f-string"),
            })  # fmt: skip
            done = 0
            while done < per_version:
                n = min(BATCH, per_version - done)
                requests = [
                    EnqueueRolloutRequest(
                        input={"question": f"{v}-{done + i}"},
                        mode="val" if i % 10 == 0 else "train",
                        resources_id=f"step-{v}",
                    )
                    for i in range(n)
                ]
                await store.enqueue_many_rollouts(requests)
                claimed = []
                for w in range(WORKERS):
                    claimed += await store.dequeue_many_rollouts(limit=-(-n // WORKERS), worker_id=f"Worker-{w}")
                spans: list[Span] = []
                outcomes = []
                for r in claimed:
                    reward = None if rng.random() < 0.08 else float(rng.random() < 0.2 + 0.6 * v / VERSIONS)
                    outcomes.append((r, reward))
                    spans += _spans(r.rollout_id, r.attempt.attempt_id, clock.now, spans_per_rollout, reward)
                    clock.now += step
                await store.add_many_spans(spans)
                for r, reward in outcomes:
                    await store.update_attempt(r.rollout_id, r.attempt.attempt_id,
                                               status="failed" if reward is None else "succeeded")  # fmt: skip
                done += n
            print(f"  built version {v + 1}/{VERSIONS} ({(v + 1) * per_version} rollouts, "
                  f"{time.monotonic() - started:.0f} s)", flush=True)  # fmt: skip
    finally:
        await store.close()
    return time.monotonic() - started


def counts(path: Path) -> tuple[int, int]:
    """(rollouts, spans) held by the SQLite file at `path`, read with plain SQL."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        rollouts = db.execute("SELECT COUNT(*) FROM rollouts").fetchone()[0]
        spans = db.execute("SELECT COUNT(*) FROM spans").fetchone()[0]
    return rollouts, spans


# -- serving and measuring ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Api:
    """GETs on one keep-alive connection to the store."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def get(self, path: str) -> tuple[float, Any]:
        """(seconds, decoded JSON) of GET /v1/agl/<path>."""
        t = time.perf_counter()
        self.conn.request("GET", "/v1/agl/" + path)
        response = self.conn.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - t
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:300]!r}")
        return elapsed, json.loads(body)


def api_calls(api: Api) -> dict[str, str]:
    """Every call the pages make, by page, with realistic arguments taken from the store."""
    _, page = api.get("dashboard/rollouts?limit=1&status=failed")
    failed_id = page["items"][0]["rollout_id"]
    since = time.time() - 900
    return {
        "all pages: token probe": "resources?limit=1",
        "overview": "dashboard/overview?window=900",
        "rollouts: first page": "dashboard/rollouts?sort=start_time&order=desc&limit=50&offset=0",
        "rollouts: status=failed": "dashboard/rollouts?status=failed&sort=start_time&order=desc&limit=50&offset=0",
        "rollouts: mode=val, last 15 min": f"dashboard/rollouts?mode=val&since={since:.3f}&sort=start_time&order=desc&limit=50&offset=0",
        "rollouts: search id": f"dashboard/rollouts?q={failed_id[3:9]}&sort=start_time&order=desc&limit=50&offset=0",
        "rollouts: sort by id, page 1000": "dashboard/rollouts?sort=rollout_id&order=asc&limit=50&offset=49950",
        "rollout detail": f"dashboard/rollouts/{failed_id}",
        "resources": "resources?sort_by=create_time&sort_order=desc&limit=21&offset=0",
        "workers": "dashboard/workers",
    }


def measure_api(api: Api, calls: dict[str, str], repeats: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, path in calls.items():
        try:
            api.get(path)  # once before timing: connection and caches as a page in use sees them
        except RuntimeError as exc:  # reported, not fatal: the other calls still get measured
            api.conn.close()
            out[name] = {"path": path, "error": str(exc)}
            continue
        runs = [api.get(path)[0] * 1000 for _ in range(repeats)]
        out[name] = {"path": path, "runs_ms": [round(r, 2) for r in runs], "median_ms": statistics.median(runs),
                     "p90_ms": sorted(runs)[int(0.9 * (len(runs) - 1))], "max_ms": max(runs)}  # fmt: skip
    return out


READY_SCRIPT = """
(() => {
  const mark = () => {
    if (window.__aglReady === undefined && document.querySelector(window.__aglReadySelector || '#never')) {
      window.__aglReady = performance.now();
    }
  };
  new MutationObserver(mark).observe(document, { childList: true, subtree: true, attributes: true });
})();
"""


def measure_pages(port: int, detail_id: str, runs: int) -> dict[str, dict[str, Any]]:
    from playwright.sync_api import sync_playwright

    from tests.dashboard.conftest import launch_chromium

    base = f"http://127.0.0.1:{port}/"
    pages = {
        "overview": ("#/", "[data-testid=status-counts]"),
        "rollouts": ("#/rollouts", "[data-testid=rollouts-table] tbody tr"),
        "rollout detail": (f"#/rollouts/{detail_id}", "[data-testid=span-tree]"),
        "resources": ("#/resources", ".resources-version"),
        "workers": ("#/workers", "[data-testid=workers-table] tbody tr"),
    }
    out: dict[str, dict[str, Any]] = {}
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            for name, (route, selector) in pages.items():
                fcp, ready = [], []
                for _ in range(runs):
                    context = browser.new_context(viewport={"width": 1280, "height": 800})  # cold: empty cache
                    try:
                        page = context.new_page()
                        page.add_init_script(f"window.__aglReadySelector = {json.dumps(selector)};" + READY_SCRIPT)
                        page.goto(base + route)
                        page.wait_for_selector(selector, timeout=30_000)
                        page.wait_for_function("window.__aglReady !== undefined")
                        paint = page.evaluate(
                            "performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? null"
                        )
                        fcp.append(paint)
                        ready.append(page.evaluate("window.__aglReady"))
                    finally:
                        context.close()
                out[name] = {"route": route, "fcp_ms": fcp, "data_ms": [round(r, 1) for r in ready],
                             "fcp_median_ms": statistics.median(fcp), "data_median_ms": statistics.median(ready)}  # fmt: skip
        finally:
            browser.close()
    return out


def main() -> int:
    """Build or reuse the store, serve it, measure, print and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=100_000)
    parser.add_argument("--spans-per-rollout", type=int, default=10)
    parser.add_argument("--db", type=Path, default=Path("/tmp/agl-dash-bench.db"))
    parser.add_argument("--runs", type=int, default=5, help="cold loads of each page")
    parser.add_argument("--calls", type=int, default=20, help="timed repeats of each API call")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dashboard.json")
    args = parser.parse_args()
    if args.rollouts % (VERSIONS * 1) or args.spans_per_rollout < 3:
        parser.error(f"--rollouts must be a multiple of {VERSIONS} and --spans-per-rollout at least 3")

    wanted = (args.rollouts, args.rollouts * args.spans_per_rollout)
    build_seconds = None
    if not args.db.exists() or counts(args.db) != wanted:
        for suffix in ("", "-wal", "-shm"):
            Path(str(args.db) + suffix).unlink(missing_ok=True)
        print(f"building {args.db}: {wanted[0]} rollouts, {wanted[1]} spans", flush=True)
        build_seconds = asyncio.run(build(args.db, args.rollouts, args.spans_per_rollout))
    held = counts(args.db)
    print(f"store: {held[0]} rollouts, {held[1]} spans, {args.db.stat().st_size / 1e6:.0f} MB", flush=True)

    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    server = subprocess.Popen(
        [sys.executable, "-m", "agl.cli", "store", "--backend", "sqlite", "--path", str(args.db),
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"],
        env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("agl store did not start") from None
                time.sleep(0.2)
        api = Api(port)
        first_overview, overview = api.get("dashboard/overview?window=900")
        started = time.monotonic()
        while overview["reward"].get("pending", 0) > 0 and time.monotonic() - started < 1800:
            time.sleep(1)
            _, overview = api.get("dashboard/overview?window=900")
        catch_up = time.monotonic() - started
        print(f"first overview call {first_overview * 1000:.0f} ms; rewards read after {catch_up:.1f} s "
              f"({overview['reward']['count']} rewarded rollouts)", flush=True)  # fmt: skip
        calls = api_calls(api)
        api_results = measure_api(api, calls, args.calls)
        detail_id = calls["rollout detail"].rsplit("/", 1)[1]
        page_results = measure_pages(port, detail_id, args.runs)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    print(f"\n{'API call':<36} {'median ms':>10} {'p90 ms':>8} {'max ms':>8}  target {API_TARGET_MS:.0f} ms")
    for name, r in api_results.items():
        if "error" in r:
            print(f"{name:<36} {'failed: ' + r['error'][:120]}")
            continue
        ok = "ok" if r["median_ms"] <= API_TARGET_MS else "OVER"
        print(f"{name:<36} {r['median_ms']:>10.1f} {r['p90_ms']:>8.1f} {r['max_ms']:>8.1f}  {ok}")
    print(
        f"\n{'page (cold loads)':<20} {'FCP median ms':>14} {'data median ms':>15}  runs (data ms)  target {PAGE_TARGET_S:.0f} s"
    )
    for name, r in page_results.items():
        ok = "ok" if r["data_median_ms"] <= PAGE_TARGET_S * 1000 else "OVER"
        print(f"{name:<20} {r['fcp_median_ms']:>14.0f} {r['data_median_ms']:>15.0f}  {r['data_ms']}  {ok}")

    result = {
        "rollouts": held[0], "spans": held[1], "db_bytes": args.db.stat().st_size, "build_seconds": build_seconds,
        "first_overview_ms": first_overview * 1000, "reward_catch_up_seconds": catch_up,
        "api": api_results, "pages": page_results, "load_avg": os.getloadavg(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.out}")
    failed = [name for name, r in api_results.items() if "error" in r]
    if failed:
        print(f"failed API calls: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
