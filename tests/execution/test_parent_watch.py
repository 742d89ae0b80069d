"""Runner processes a strategy started end soon after the process that started them is killed (kill -9, OOM)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import psutil
import pytest

from tests.docs.test_troubleshooting import assert_documented

ROOT = Path(__file__).resolve().parents[2]


def _running(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def _line_starting(stream: IO[str], prefix: str, timeout: float) -> str:
    """The first line of `stream` that starts with `prefix`; fails after `timeout` seconds or at the end of it."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line)
            if line.startswith(prefix):
                return
        lines.put("")

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"no line starting with {prefix!r} within {timeout}s; got {seen}")
        if line.startswith(prefix):
            return line
        if not line:
            pytest.fail(f"the process ended its output without a line starting with {prefix!r}; got {seen}")
        seen.append(line)


@pytest.mark.parametrize("mode", ["fork", "spawn", "forkserver", "stuck", "runner-main", "runner-main-forkserver"])
def test_runners_end_soon_after_the_algorithm_process_is_killed(mode: str) -> None:
    """`fork`/`spawn`/`forkserver`: a training's runners (real agent) stop as on Ctrl+C; `stuck`: runners that
    swallow the cancellation are ended 3 s later; `runner-main`: with the runner in the main process, the algorithm
    process (serving the store) stops when the runner is killed, without waiting in its drain for the runner's last
    rollout. Through a fork server (`forkserver`, `runner-main-forkserver`), whose children keep it alive, the
    children's parent in the process tree is not the process killed."""
    parent = subprocess.Popen(
        [sys.executable, "-m", "tests.execution.orphan_script", mode],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    family: list[psutil.Process] = []
    try:
        assert parent.stdout is not None and parent.stderr is not None
        line = _line_starting(parent.stdout, "RUNNERS ", timeout=60)
        runners = [psutil.Process(int(pid)) for pid in line.split()[1:]]
        assert len(runners) == (1 if mode.startswith("runner-main") else 2)
        family = psutil.Process(parent.pid).children(recursive=True)  # killed in `finally` whatever happens
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        killed = time.monotonic()
        while _running(runners) and time.monotonic() - killed < 15:
            time.sleep(0.05)
        elapsed = time.monotonic() - killed
        assert not _running(runners), f"runner processes outlived their parent by {elapsed:.1f}s"
        assert elapsed < 8.0, f"the runners took {elapsed:.1f}s to end after their parent was killed"
        # The runners shared the parent's stderr and have ended: what they wrote is all there.
        stderr = parent.stderr.read().splitlines()
        noticed = [line for line in stderr if "has ended, killed or crashed" in line]
        assert len(noticed) == len(runners), stderr
        assert_documented(noticed[0])
        forced = [line for line in stderr if "did not stop within" in line]
        if mode == "stuck":
            assert len(forced) == 2 and elapsed >= 3.0, (elapsed, stderr)
            assert_documented(forced[0])
        else:
            assert not forced, stderr
    finally:
        if parent.poll() is None:
            family = psutil.Process(parent.pid).children(recursive=True)
            parent.kill()
        for process in family:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        parent.wait(10)
        for stream in (parent.stdout, parent.stderr):
            if stream is not None:
                stream.close()
