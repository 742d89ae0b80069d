"""Benchmark: the store app's own CPU per call, through its ASGI interface, with no server and no sockets.

One process calls `StoreApp.__call__` directly (scope, receive and send made here, as an ASGI server makes them) for
the runner cycle of bench/store_http.py: enqueue → dequeue → 10 × add_span (`Prefer: return=minimal`, as the
client sends it) → update_attempt(succeeded), 13 calls, each with an idempotency key where the client sends one.
This is the part of a call that AGL's code decides; bench/store_http.py measures the whole call over HTTP.
`--workers N` spreads the dequeues over N worker ids in turn (as N runners would), to see what more workers cost.

    .venv/bin/python bench/store_asgi_app.py                 # 4 000 cycles after 1 000 warm-up, medians of 5
    .venv/bin/python bench/store_asgi_app.py --workers 1000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SPANS_PER_CYCLE = 10


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "server": ("127.0.0.1", 4747),
        "client": ("127.0.0.1", 50000),
        "state": {},
    }


class _Cycle:
    """Drives the app through the runner cycle; collects the answers' statuses."""

    def __init__(self, app: Any, workers: int = 1) -> None:
        self.app = app
        self.workers = [f"w-{index}" for index in range(workers)] if workers > 1 else ["w"]
        self._turn = 0
        self.statuses: list[int] = []
        self.body = b""
        self._key = 0

    async def call(self, method: str, path: str, payload: Any, *, keyed: bool, minimal: bool = False) -> bytes:
        body = orjson.dumps(payload) if payload is not None else b""
        headers = [(b"host", b"127.0.0.1:4747"), (b"content-type", b"application/json")]
        headers.append((b"content-length", b"%d" % len(body)))
        if keyed:
            self._key += 1
            headers.append((b"idempotency-key", b"bench-%d" % self._key))
        if minimal:
            headers.append((b"prefer", b"return=minimal"))
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.statuses.append(message["status"])
            else:
                self.body = message.get("body", b"")

        await self.app(_scope(method, path, headers), receive, send)
        return self.body

    async def run(self) -> None:
        [rollout] = orjson.loads(
            await self.call("POST", "/v1/agl/queues/rollouts/enqueue", {"rollouts": [{"input": {"q": 1}}]}, keyed=True)
        )
        worker_id = self.workers[self._turn % len(self.workers)]
        self._turn += 1
        [claimed] = orjson.loads(
            await self.call("POST", "/v1/agl/queues/rollouts/dequeue", {"limit": 1, "worker_id": worker_id}, keyed=True)
        )
        rollout_id, attempt_id = rollout["rollout_id"], claimed["attempt"]["attempt_id"]
        for index in range(SPANS_PER_CYCLE):
            span = {
                "rollout_id": rollout_id,
                "attempt_id": attempt_id,
                "sequence_id": index + 1,
                "trace_id": f"{index:032x}",
                "span_id": f"{index:016x}",
                "parent_id": None,
                "name": "openai.chat.completion",
                "start_time": 1.0,
                "end_time": 2.0,
                "attributes": {"gen_ai.request.model": "qwen2.5-0.5b", "gen_ai.usage.prompt_tokens": 120},
            }
            await self.call("POST", "/v1/agl/spans", span, keyed=False, minimal=True)
        await self.call(
            "POST", f"/v1/agl/rollouts/{rollout_id}/attempts/{attempt_id}", {"status": "succeeded"}, keyed=True
        )


async def _measure(cycles: int, warmup: int, workers: int = 1) -> tuple[float, int]:
    """CPU µs per call over `cycles` cycles, and how many workers the store then holds."""
    from agl.store.http.app import StoreApp
    from agl.store.memory import InMemoryLightningStore

    app = StoreApp(InMemoryLightningStore(thread_safe=True))
    driver = _Cycle(app, workers)
    for _ in range(warmup):
        await driver.run()
    driver.statuses.clear()
    started = time.process_time()
    for _ in range(cycles):
        await driver.run()
    spent = time.process_time() - started
    calls = cycles * (3 + SPANS_PER_CYCLE)
    bad = [status for status in driver.statuses if status >= 300]
    if bad or len(driver.statuses) != calls:
        raise RuntimeError(f"unexpected answers: {len(driver.statuses)} of {calls}, not 2xx: {bad[:5]}")
    seen = (await app.store.query_workers(limit=1)).total
    app.insight.close()
    return spent / calls * 1e6, seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=4000, help="measured cycles per repeat")
    parser.add_argument("--warmup", type=int, default=1000, help="cycles run first (unmeasured)")
    parser.add_argument("--repeats", type=int, default=5, help="runs; the median is reported")
    parser.add_argument("--workers", type=int, default=1, help="worker ids the dequeues take turns with")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    measured = [asyncio.run(_measure(args.cycles, args.warmup, args.workers)) for _ in range(args.repeats)]
    runs = [us for us, _ in measured]
    median = statistics.median(runs)
    print(
        f"store app over ASGI, runner cycle, {args.workers} worker(s): {median:.1f} µs CPU per call "
        f"(median of {args.repeats})"
    )
    print("runs: " + ", ".join(f"{run:.1f}" for run in runs))
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = args.out / f"store_asgi_app-{stamp}.json"
    path.write_text(
        json.dumps(
            {
                "benchmark": "store_asgi_app",
                "when": stamp,
                "python": platform.python_version(),
                "cycles": args.cycles,
                "warmup": args.warmup,
                "workers": args.workers,
                "workers_in_store": [seen for _, seen in measured],
                "us_per_call_runs": runs,
                "us_per_call_median": median,
            },
            indent=2,
        )
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
