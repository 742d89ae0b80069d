"""Benchmark: a burst of new connections to a busy server, with and without eager accept.

`AsgiServer` serves a small ASGI app on its own (uvloop) loop in a thread. `--busy` clients keep it at work, each
asking `/busy` again as soon as it is answered (the handler holds the loop for `--hold-ms`, as a loaded server's
requests do, so each turn of the loop takes about busy × hold). Then `--new` clients connect at once and each asks
`/fast` once: the table gives the time until all were answered and the p50/max per newcomer, for the server as it
runs (eager accept: each accepted connection also takes the others waiting, agl/asgi_connections.py) and with eager
accept switched off (libuv's own accept: one connection per loop turn). Runs alternate; JSON to `--out`.

    .venv/bin/python bench/accept_burst.py                         # 10 busy, 300 new, 3 repeats each way
    .venv/bin/python bench/accept_burst.py --busy 50 --new 1000 --give-up 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agl import asgi_connections
from agl.asgi_serving import AsgiServer


def _app(hold: float) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/busy":
            time.sleep(hold)  # holds the loop on purpose: a turn of a loaded server
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


async def _ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> None:
    writer.write(f"GET {path} HTTP/1.1\r\nhost: b\r\n\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(2)


async def _burst(port: int, busy: int, new: int, give_up: float) -> dict[str, Any]:
    stop = asyncio.Event()

    async def keep_busy() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not stop.is_set():
                await _ask(reader, writer, "/busy")
        finally:
            writer.close()

    async def newcomer() -> float:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await _ask(reader, writer, "/fast")
        finally:
            writer.close()
        return time.monotonic() - started

    workers = [asyncio.ensure_future(keep_busy()) for _ in range(busy)]
    try:
        await asyncio.sleep(0.5)
        started = time.monotonic()
        try:
            waits = sorted(await asyncio.wait_for(asyncio.gather(*(newcomer() for _ in range(new))), give_up))
        except asyncio.TimeoutError:
            return {"all_answered_s": None, "p50_s": None, "max_s": None}
        return {
            "all_answered_s": time.monotonic() - started,
            "p50_s": statistics.median(waits),
            "max_s": waits[-1],
        }
    finally:
        stop.set()
        await asyncio.gather(*workers, return_exceptions=True)


def _run(eager: bool, args: argparse.Namespace) -> dict[str, Any]:
    saved = asgi_connections.HeadGuard._accept_waiting
    if not eager:
        asgi_connections.HeadGuard._accept_waiting = lambda self, make, loop: None  # type: ignore[method-assign]
    server = AsgiServer(_app(args.hold_ms / 1000), backlog=4096)
    server.start()
    try:
        result = asyncio.run(_burst(server.port, args.busy, args.new, args.give_up))
    finally:
        server.stop()
        asgi_connections.HeadGuard._accept_waiting = saved  # type: ignore[method-assign]
    return {"eager_accept": eager, "load_1min": os.getloadavg()[0], **result}


def _seconds(value: float | None) -> str:
    return "gave up" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--busy", type=int, default=10, help="clients keeping the server busy")
    parser.add_argument("--hold-ms", type=float, default=5.0, help="loop time each busy request holds")
    parser.add_argument("--new", type=int, default=300, help="connections in the burst")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--give-up", type=float, default=60.0, help="seconds after which a burst counts as failed")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    runs = [_run(eager, args) for _ in range(args.repeats) for eager in (True, False)]
    print(f"{'accept':>8} {'load':>5} {'all answered s':>15} {'p50 s':>8} {'max s':>8}")
    for run in runs:
        print(
            f"{'eager' if run['eager_accept'] else 'libuv':>8} {run['load_1min']:5.2f} "
            f"{_seconds(run['all_answered_s']):>15} {_seconds(run['p50_s']):>8} {_seconds(run['max_s']):>8}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "accept_burst.json"
    meta = {"python": platform.python_version(), "cpus": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    out.write_text(json.dumps({"meta": meta, "args": settings, "runs": runs}, indent=2))
    print(f"JSON: {out}")


if __name__ == "__main__":
    main()
