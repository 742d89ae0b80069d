"""Ctrl+C: SIGINT to a process running a strategy stops everything cleanly and execute() returns."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kind", ["cs", "cs-sync", "cs-runner", "shm"])
def test_ctrl_c_stops_cleanly_and_execute_returns(kind: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.execution.ctrl_c_script", kind],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, so cleanup can end every process it started
    )
    out: str | None = None
    err = ""
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 20
        line = ""
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if "ALGORITHM-STARTED" in line or not line:
                break
        assert "ALGORITHM-STARTED" in line, process.stderr.read() if process.stderr else ""
        time.sleep(0.2)  # let the runners start polling
        started = time.monotonic()
        os.kill(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=15)
        elapsed = time.monotonic() - started
    finally:
        if process.poll() is None or out is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # a child left behind would hold the pipes open
            process.communicate()
    assert process.returncode == 0, err
    assert "EXECUTE-RETURNED children=0" in out, err
    assert "Traceback" not in err, err
    assert elapsed < 5.0
