"""Benchmark: instructions per store call over HTTP, server and client, counted by valgrind's callgrind.

CPU time per call moves with the machine's load (other jobs, CPU steal on a shared VM); instruction counts do not.
One client runs bench/store_http.py's single cycle (enqueue → dequeue → 10 × add_span → update_attempt, 13 calls)
against an in-memory `agl store` server, twice: N1 cycles, then N2 cycles, each time with fresh processes. For the
server figure the server runs under callgrind (`LightningStoreServer.serve()`, as `agl store` runs it); for the
client figure the client does. Instructions per call = (total after N2 − total after N1) / (calls of N2 − calls of
N1): start-up and shutdown cancel out. Instructions are not time (a system call or a cache miss counts as few), so
this measures the Python work per call, which is what the code decides.

    .venv/bin/python bench/http_instructions.py                       # 100 and 300 cycles, server and client
    .venv/bin/python bench/http_instructions.py --side server --cycles 50 200
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import store_http  # noqa: E402

_SERVER = """
import sys
from agl.store.memory import InMemoryLightningStore
from agl.store.server import LightningStoreServer
LightningStoreServer(InMemoryLightningStore(thread_safe=True), host="127.0.0.1", port=int(sys.argv[1])).serve()
"""

_CLIENT = """
import asyncio, sys
sys.path.insert(0, sys.argv[3])
import http_instructions
import uvloop
print(uvloop.run(http_instructions.cycles(sys.argv[1], int(sys.argv[2]))))
"""


async def cycles(endpoint: str, n: int) -> int:
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


def _valgrind(out: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable]


def _total(out: Path) -> int:
    match = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no instruction total in {out}")
    return int(match.group(1))


def _wait_healthy(endpoint: str, process: subprocess.Popen[bytes] | None, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"{endpoint}/v1/agl/health", timeout=5):
                return
        except OSError:
            if (process is not None and process.poll() is not None) or time.monotonic() > deadline:
                raise RuntimeError("the store server did not start") from None
            time.sleep(0.3)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(300)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def server_total(n: int, workdir: Path) -> tuple[int, int]:
    """(server instructions, calls) of a server under callgrind that answered `n` cycles of one native client."""
    port = store_http._free_port()
    out = workdir / f"server-{n}.out"
    server = subprocess.Popen(
        [*_valgrind(out), "-c", _SERVER, str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env()
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(endpoint, server, 600)
        import uvloop

        calls = uvloop.run(cycles(endpoint, n))
    finally:
        _stop(server)
    return _total(out), calls


def client_total(n: int, workdir: Path) -> tuple[int, int]:
    """(client instructions, calls) of a client under callgrind that ran `n` cycles against a native server."""
    port = store_http._free_port()
    out = workdir / f"client-{n}.out"
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env()
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(endpoint, server, 120)
        done = subprocess.run(
            [*_valgrind(out), "-c", _CLIENT, endpoint, str(n), str(ROOT / "bench")],
            capture_output=True,
            env=_env(),
            check=True,
            timeout=1800,
        )
        calls = int(done.stdout.decode().strip().splitlines()[-1])
    finally:
        _stop(server)
    return _total(out), calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--side", choices=("server", "client", "both"), default="both")
    parser.add_argument("--cycles", type=int, nargs=2, default=(100, 300), metavar=("N1", "N2"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    n1, n2 = args.cycles
    if not 0 < n1 < n2:
        parser.error("--cycles needs 0 < N1 < N2")
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (apt-get install valgrind)")
    sides = ("server", "client") if args.side == "both" else (args.side,)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="agl-http-instructions-") as tmp:
        for side in sides:
            count = server_total if side == "server" else client_total
            (low, low_calls), (high, high_calls) = (count(n, Path(tmp)) for n in (n1, n2))
            per_call = (high - low) / (high_calls - low_calls)
            results[side] = {"instructions": {str(n1): low, str(n2): high}, "per_call": per_call}
            print(f"{side}: {per_call:,.0f} instructions per call ({n1} and {n2} cycles)", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = args.out / f"http_instructions-{stamp}.json"
    meta = {"python": platform.python_version(), "cycles": [n1, n2], "root": str(ROOT), "argv": sys.argv[1:]}
    path.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
