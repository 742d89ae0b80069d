"""Hostile inputs against a real `agl store` process: what each costs the server and how it is answered.

Cases (issue 14, Numbers): 4 MB and 8 MB invalid bodies (status, answer size, time, server RSS growth); 20 000
distinct drain-watcher ids and 20 000 idempotency keys sent without the token (RSS growth); an unauthenticated
request declaring a 50 MB body (time to its 401), once sending the body and once never sending it (status None:
no answer within 5 s). The request head: a 1 MiB and a 16 MiB header (431), 200 header lines (431), a 1 MiB and a
16 MiB URL and a 128 MiB header (refused while still arriving: 431, or 414 for a request line), a body stalled
after its head (408 after `--body-timeout`, 2 s here), a head that never ends (slowloris, one byte every 0.2 s: 408
after `--head-timeout`, 2 s here), and 1 000 such heads at once (200 with `--quick`; a normal request's answer time
meanwhile). Each case runs on a fresh server; `--repeats` runs each several
times and the table shows the median and the range. A table goes to stdout, JSON to bench/results/hostile_inputs.json (`--out DIR`).

    python bench/hostile_inputs.py [--repeats 3] [--quick] [--only 'header']
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hostile-bench-token"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


@contextmanager
def _server(token: bool, *extra: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("AGL_STORE_TOKEN", None)
    if token:
        env["AGL_STORE_TOKEN"] = TOKEN
    cmd = [sys.executable, "-m", "agl.cli", "store", "--port", str(port), "--log-level", "ERROR", *extra]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, _ = _exchange(port, [b"GET /v1/agl/health HTTP/1.1\r\nhost: x\r\n\r\n"])
                if status == [200]:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("agl store did not start")
            time.sleep(0.1)
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _exchange(port: int, requests: list[bytes], timeout: float = 60) -> tuple[list[int], int]:
    """Send `requests` pipelined on one connection; their statuses and the total answer bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"".join(requests))
        data = b""
        statuses: list[int] = []
        while len(statuses) < len(requests):
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
            statuses, data_ok = _parse(data)
            if not data_ok:
                continue
        return statuses, len(data)


def _parse(data: bytes) -> tuple[list[int], bool]:
    statuses: list[int] = []
    at = 0
    while at < len(data):
        head_end = data.find(b"\r\n\r\n", at)
        if head_end < 0:
            return statuses, False
        head = data[at:head_end].split(b"\r\n")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if head_end + 4 + length > len(data):
            return statuses, False
        statuses.append(int(head[0].split()[1]))
        at = head_end + 4 + length
    return statuses, True


def _post(path: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"{extra}\r\n"
    ).encode() + body


def _invalid_spans(size: int) -> bytes:
    item = b'{"rollout_id": 1, "attempt_id": ["bad"], "name": 7},'
    return b'{"spans": [' + item * (size // len(item)) + b"{}]}"


def _invalid_enqueue(size: int) -> bytes:
    item = b'{"input": 1, "mode": "sideways", "config": 5},'
    return b'{"rollouts": [' + item * (size // len(item)) + b"{}]}"


def case_invalid_body(size: int, shape: str) -> dict[str, Any]:
    body = _invalid_spans(size) if shape == "spans" else _invalid_enqueue(size)
    path = "/v1/agl/spans/batch" if shape == "spans" else "/v1/agl/queues/rollouts/enqueue"
    with _server(token=False) as (proc, port):
        rss, hwm = _status_kib(proc.pid, "VmRSS"), _status_kib(proc.pid, "VmHWM")
        start = time.perf_counter()
        statuses, answer = _exchange(port, [_post(path, body)])
        seconds = time.perf_counter() - start
        return {
            "status": statuses[0] if statuses else None,
            "answer_bytes": answer,
            "seconds": seconds,
            "rss_growth_mib": (_status_kib(proc.pid, "VmRSS") - rss) / 1024,
            "peak_rss_growth_mib": (_status_kib(proc.pid, "VmHWM") - hwm) / 1024,
            "body_bytes": len(body),
        }


def _many(port: int, make: Callable[[int], bytes], count: int, chunk: int = 500) -> list[int]:
    statuses: list[int] = []
    for first in range(0, count, chunk):
        got, _ = _exchange(port, [make(i) for i in range(first, min(count, first + chunk))])
        statuses.extend(got)
    return statuses


def case_many(kind: str, count: int) -> dict[str, Any]:
    def watcher(i: int) -> bytes:
        return f"GET /v1/agl/health?watcher=w-{os.getpid()}-{i:08d}-{'x' * 200} HTTP/1.1\r\nhost: x\r\n\r\n".encode()

    def keyed(i: int) -> bytes:
        return _post(
            "/v1/agl/queues/rollouts/enqueue", b'{"rollouts":[{"input":1}]}', f"idempotency-key: {i:0255d}\r\n"
        )

    with _server(token=True) as (proc, port):
        rss = _status_kib(proc.pid, "VmRSS")
        start = time.perf_counter()
        statuses = _many(port, watcher if kind == "watchers" else keyed, count)
        seconds = time.perf_counter() - start
        return {
            "requests": count,
            "statuses": sorted(set(statuses)),
            "answered": len(statuses),
            "seconds": seconds,
            "rss_growth_mib": (_status_kib(proc.pid, "VmRSS") - rss) / 1024,
        }


def case_declared_body(size: int, send_body: bool = True, give_up: float = 30.0) -> dict[str, Any]:
    with _server(token=True) as (_proc, port), socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        head = (
            f"POST /v1/agl/queues/rollouts/enqueue HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"content-length: {size}\r\n\r\n"
        ).encode()
        start = time.perf_counter()
        sock.sendall(head)
        sock.setblocking(False)
        chunk = b" " * 65536
        sent = 0
        data = b""
        while True:  # send the body as fast as the server takes it, until an answer arrives
            try:
                data += sock.recv(65536)
                if b"\r\n" in data:
                    break
            except BlockingIOError:
                pass
            if send_body and sent < size:
                try:
                    sent += sock.send(chunk[: size - sent])
                except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                    time.sleep(0.0005)
            else:
                time.sleep(0.0005)
            if time.perf_counter() - start > give_up:
                break
        seconds = time.perf_counter() - start
        status = int(data.split()[1]) if data.startswith(b"HTTP/") else None
        return {"status": status, "seconds_to_answer": seconds, "body_bytes_sent_before": sent}


def _send_and_time(port: int, raw: bytes, give_up: float) -> tuple[int | None, float, bool]:
    """Send `raw` (as fast as the server takes it) and wait for an answer: (status, seconds, closed after it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=give_up) as sock:
        start = time.perf_counter()
        try:
            sock.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered (and closed) before the whole head was taken
        data = b""
        closed = False
        try:
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    closed = True
                    break
                data += chunk
        except (TimeoutError, ConnectionResetError):
            closed = not data
        seconds = time.perf_counter() - start
        status = int(data.split()[1]) if data.startswith(b"HTTP/") else None
        if status is not None and not closed:
            sock.settimeout(2)
            try:
                while sock.recv(65536):
                    pass
                closed = True
            except TimeoutError:
                closed = False
            except ConnectionResetError:
                closed = True
        return status, seconds, closed


def case_head(kind: str, size: int) -> dict[str, Any]:
    """A request whose head is hostile: one huge header, many header lines or a huge URL."""
    if kind == "header":
        raw = b"GET /v1/agl/statistics HTTP/1.1\r\nhost: x\r\nx-big: " + b"v" * size + b"\r\n\r\n"
    elif kind == "lines":
        raw = b"GET /v1/agl/statistics HTTP/1.1\r\nhost: x\r\n" + b"".join(b"x-h%d: 1\r\n" % i for i in range(size))
        raw += b"\r\n"
    else:
        raw = b"GET /v1/agl/rollouts?rollout_id_contains=" + b"x" * size + b" HTTP/1.1\r\nhost: x\r\n\r\n"
    with _server(token=False) as (proc, port):
        rss, hwm = _status_kib(proc.pid, "VmRSS"), _status_kib(proc.pid, "VmHWM")
        status, seconds, closed = _send_and_time(port, raw, give_up=120)
        healthy = _exchange(port, [b"GET /v1/agl/health HTTP/1.1\r\nhost: x\r\n\r\n"])[0] == [200]
        return {
            "status": status,
            "seconds": seconds,
            "closed": closed,
            "healthy_after": healthy,
            "rss_growth_mib": (_status_kib(proc.pid, "VmRSS") - rss) / 1024,
            "peak_rss_growth_mib": (_status_kib(proc.pid, "VmHWM") - hwm) / 1024,
        }


def case_stalled_body(body_timeout: float) -> dict[str, Any]:
    """Head sent, then 10 of 100 declared body bytes, then nothing: the answer and when it comes."""
    head = b"POST /v1/agl/rollouts HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n"
    with _server(False, "--body-timeout", str(body_timeout)) as (_proc, port):
        status, seconds, closed = _send_and_time(port, head + b'{"input": ', give_up=body_timeout + 30)
        return {"status": status, "seconds": seconds, "closed": closed, "body_timeout": body_timeout}


def case_slowloris(head_timeout: float) -> dict[str, Any]:
    """A head that never ends (one header byte every 0.2 s) under `--head-timeout`: the answer, and when it comes."""
    with (
        _server(False, "--head-timeout", str(head_timeout)) as (_proc, port),
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
    ):
        sock.sendall(b"GET /v1/agl/health HTTP/1.1\r\nhost: x\r\nx-slow: ")
        start = time.perf_counter()
        sock.settimeout(0.2)
        data = b""
        while time.perf_counter() - start < head_timeout + 30:
            try:
                sock.sendall(b"a")
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        status = int(data.split()[1]) if data.startswith(b"HTTP/") else None
        return {"status": status, "seconds": time.perf_counter() - start, "head_timeout": head_timeout}


def case_many_slow_heads(count: int, head_timeout: float) -> dict[str, Any]:
    """`count` connections each holding half a head: seconds until all are closed, a normal request's answer time
    meanwhile, and the server's RSS growth."""
    with _server(False, "--head-timeout", str(head_timeout)) as (proc, port):
        rss, hwm = _status_kib(proc.pid, "VmRSS"), _status_kib(proc.pid, "VmHWM")
        start = time.perf_counter()
        socks = [socket.create_connection(("127.0.0.1", port), timeout=head_timeout + 30) for _ in range(count)]
        try:
            for sock in socks:
                sock.sendall(b"GET /v1/agl/health HTTP/1.1\r\nhost: x\r\n")
            asked = time.perf_counter()
            served = _exchange(port, [b"GET /v1/agl/health HTTP/1.1\r\nhost: x\r\n\r\n"])[0] == [200]
            normal_seconds = time.perf_counter() - asked
            statuses: set[int | None] = set()
            for sock in socks:
                data = b""
                try:
                    while chunk := sock.recv(65536):
                        data += chunk
                except OSError:
                    pass
                statuses.add(int(data.split()[1]) if data.startswith(b"HTTP/") else None)
            return {
                "status": "/".join(str(s) for s in sorted(statuses, key=str)),
                "seconds": time.perf_counter() - start,
                "normal_request_seconds": normal_seconds,
                "normal_request_served": served,
                "rss_growth_mib": (_status_kib(proc.pid, "VmRSS") - rss) / 1024,
                "peak_rss_growth_mib": (_status_kib(proc.pid, "VmHWM") - hwm) / 1024,
            }
        finally:
            for sock in socks:
                sock.close()


def _summary(runs: list[dict[str, Any]], key: str) -> str:
    values = [r[key] for r in runs]
    med = statistics.median(values)
    return f"{med:.3g} ({min(values):.3g}–{max(values):.3g})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 MB bodies and 2 000 requests (a smoke run)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="JSON directory")
    parser.add_argument("--only", default="", help="run only the cases whose name contains this text")
    args = parser.parse_args()
    mb = 1_000_000
    count = 2_000 if args.quick else 20_000
    cases: dict[str, Callable[[], dict[str, Any]]] = {}
    for size in (1 * mb,) if args.quick else (4 * mb, 8 * mb):
        for shape in ("spans", "enqueue"):
            cases[f"invalid {shape} body {size // mb} MB"] = lambda s=size, sh=shape: case_invalid_body(s, sh)
    cases[f"{count} watcher ids, no token"] = lambda: case_many("watchers", count)
    cases[f"{count} idempotency keys, no token"] = lambda: case_many("keys", count)
    cases["50 MB declared body, no token"] = lambda: case_declared_body(50 * mb)
    cases["50 MB declared, body never sent"] = lambda: case_declared_body(50 * mb, send_body=False, give_up=5.0)
    mib = 1 << 20
    cases["1 MiB header"] = lambda: case_head("header", mib)
    cases["200 header lines"] = lambda: case_head("lines", 200)
    cases["1 MiB URL"] = lambda: case_head("url", mib)
    if not args.quick:
        cases["16 MiB header"] = lambda: case_head("header", 16 * mib)
        cases["16 MiB URL"] = lambda: case_head("url", 16 * mib)
        cases["128 MiB header"] = lambda: case_head("header", 128 * mib)
    cases["body stalled after the head"] = lambda: case_stalled_body(2.0)
    cases["head never ends (slowloris)"] = lambda: case_slowloris(2.0)
    slow = 200 if args.quick else 1000
    cases[f"{slow} heads that never end"] = lambda: case_many_slow_heads(slow, 2.0)
    results: dict[str, list[dict[str, Any]]] = {}
    for name, run in cases.items():
        if args.only not in name:
            continue
        results[name] = [run() for _ in range(args.repeats)]
        print(f"done: {name}", file=sys.stderr)
    print(f"{'case':40} {'status':>8} {'answer bytes':>16} {'seconds':>22} {'RSS growth MiB':>22} {'peak MiB':>20}")
    for name, runs in results.items():
        first = runs[0]
        status = first.get("status", first.get("statuses"))
        answer = _summary(runs, "answer_bytes") if "answer_bytes" in first else "-"
        seconds = _summary(runs, "seconds" if "seconds" in first else "seconds_to_answer")
        rss = _summary(runs, "rss_growth_mib") if "rss_growth_mib" in first else "-"
        peak = _summary(runs, "peak_rss_growth_mib") if "peak_rss_growth_mib" in first else "-"
        print(f"{name:40} {status!s:>8} {answer:>16} {seconds:>22} {rss:>22} {peak:>20}")
    meta = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_1min": os.getloadavg()[0],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "hostile_inputs.json"
    out.write_text(json.dumps({"meta": meta, "args": {**vars(args), "out": str(args.out)}, "runs": results}, indent=2))
    print(f"load {meta['load_1min']:.2f}; JSON: {out}")


if __name__ == "__main__":
    main()
