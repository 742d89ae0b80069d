"""Crash safety with real processes: `agl store --backend sqlite` is killed with SIGKILL at 21 points spread over
enqueues, span writes and completions, restarted on the same file each time, and the run is finished.

Checked after every restart: every acknowledged enqueue, span and status is there. Checked at the end: every
rollout succeeded, and none was claimed again after it finished (it ended exactly once).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agl.store.client import LightningStoreClient
from agl.store.errors import StaleAttemptError
from agl.types import AttemptedRollout, RolloutConfig, Span
from tests.cli.test_store_cli import free_port

pytestmark = pytest.mark.slow

TOTAL_ROLLOUTS = 60
SPANS_PER_ROLLOUT = 3
PHASES = ("enqueue", "span", "complete")
KILL_PLAN = [PHASES[i % 3] for i in range(21)]
CONFIG = RolloutConfig(unresponsive_seconds=1.0, max_attempts=100, retry_condition=["unresponsive"])


@dataclass
class Ledger:
    """What the store acknowledged to the driver."""

    enqueued: list[str] = field(default_factory=list)
    spans: set[tuple[str, str, str]] = field(default_factory=set)
    succeeded: dict[str, str] = field(default_factory=dict)  # rollout -> attempt acknowledged as succeeded
    in_flight: AttemptedRollout | None = None


class Killer:
    """Kills the server with SIGKILL a random instant after a chosen phase starts."""

    def __init__(self, proc: subprocess.Popen[bytes], phase: str | None, rng: random.Random) -> None:
        self.proc, self.phase, self.rng = proc, phase, rng
        self.fired = False
        self.countdown = rng.randint(0, 2)  # skip a few calls of that phase first

    def before(self, phase: str) -> None:
        if self.fired or phase != self.phase:
            return
        if self.countdown > 0:
            self.countdown -= 1
            return
        self.fired = True
        delay = self.rng.uniform(0.0, 0.003)
        threading.Timer(delay, lambda: os.kill(self.proc.pid, signal.SIGKILL)).start()


def start_server(db: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agl.cli", "store", "--host", "127.0.0.1", "--port", str(port), "--backend", "sqlite",
         "--path", str(db), "--health-check-interval", "0.2", "--log-level", "WARNING"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "agl store exited during start-up"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/agl/health", timeout=1):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("agl store did not start")


def span(rollout: AttemptedRollout, k: int) -> Span:
    return Span(
        rollout_id=rollout.rollout_id,
        attempt_id=rollout.attempt.attempt_id,
        sequence_id=k + 1,
        trace_id="a" * 32,
        span_id=f"{rollout.attempt.attempt_id[3:]}{k:08x}",
        name=f"step-{k}",
    )


async def drive(port: int, ledger: Ledger, killer: Killer) -> bool:
    """Work like a runner until the run is complete (True) or the server dies (False)."""
    client = LightningStoreClient(f"http://127.0.0.1:{port}", retry_delays=(), health_retry_delays=())
    try:
        while True:
            if len(ledger.enqueued) < TOTAL_ROLLOUTS:
                killer.before("enqueue")
                ledger.enqueued.append(
                    (await client.enqueue_rollout({"n": len(ledger.enqueued)}, config=CONFIG)).rollout_id
                )
            claimed = ledger.in_flight or await client.dequeue_rollout(worker_id="crash-runner")
            if claimed is not None:
                ledger.in_flight = claimed
                for k in range(SPANS_PER_ROLLOUT):
                    killer.before("span")
                    await client.add_span(span(claimed, k))  # None for a duplicate: it is stored either way
                    ledger.spans.add((claimed.rollout_id, claimed.attempt.attempt_id, span(claimed, k).span_id))
                killer.before("complete")
                try:
                    await client.update_attempt(claimed.rollout_id, claimed.attempt.attempt_id, status="succeeded")
                    ledger.succeeded[claimed.rollout_id] = claimed.attempt.attempt_id
                except StaleAttemptError:
                    pass  # found unresponsive while the server was down and requeued (fencing): a retry completes it
                ledger.in_flight = None
                continue
            # An enqueue that committed just before a kill was never acknowledged and was sent again, so the store
            # may hold a few more rollouts than were acknowledged: the run is done when all of them succeeded.
            finished = await client.query_rollouts(status_in=["succeeded"], limit=1)
            every = await client.query_rollouts(limit=1)
            if len(ledger.enqueued) == TOTAL_ROLLOUTS and finished.total == every.total:
                return True
            await asyncio.sleep(0.1)  # lost claims come back to the queue once found unresponsive
    except Exception:
        if killer.proc.poll() is None and not killer.fired:
            raise  # the server is alive: a real failure
        return False
    finally:
        await client.close()


async def verify(port: int, ledger: Ledger) -> None:
    client = LightningStoreClient(f"http://127.0.0.1:{port}")
    try:
        for rollout_id in ledger.enqueued:
            assert await client.get_rollout_by_id(rollout_id) is not None, f"acknowledged enqueue {rollout_id} lost"
        by_rollout: dict[str, set[tuple[str, str, str]]] = {}
        for key in ledger.spans:
            by_rollout.setdefault(key[0], set()).add(key)
        for rollout_id, keys in by_rollout.items():
            stored = {(s.rollout_id, s.attempt_id, s.span_id) for s in await client.query_spans(rollout_id)}
            assert keys <= stored, f"acknowledged spans of {rollout_id} lost: {sorted(keys - stored)}"
        for rollout_id, attempt_id in ledger.succeeded.items():
            attempts = {a.attempt_id: a for a in await client.query_attempts(rollout_id)}
            assert attempts[attempt_id].status == "succeeded", f"acknowledged success of {rollout_id} lost"
    finally:
        await client.close()


def test_sqlite_store_survives_kill_9_at_21_points(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    port = free_port()
    rng = random.Random(20261129)
    ledger = Ledger()
    kills = 0
    plan = list(KILL_PLAN)
    complete = False
    for _ in range(200):
        proc = start_server(db, port)
        try:
            asyncio.run(verify(port, ledger))
            killer = Killer(proc, plan[0] if plan else None, rng)
            complete = asyncio.run(asyncio.wait_for(drive(port, ledger, killer), 120))
            if killer.fired:
                proc.wait(timeout=10)
                assert proc.returncode == -signal.SIGKILL
                kills += 1
                plan.pop(0)
            if complete:
                break
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=15)
    assert complete and kills == len(KILL_PLAN), f"the run ended after {kills} of {len(KILL_PLAN)} kills"

    proc = start_server(db, port)
    try:
        asyncio.run(verify(port, ledger))
        asyncio.run(_check_each_rollout_ended_once(port))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


async def _check_each_rollout_ended_once(port: int) -> None:
    client = LightningStoreClient(f"http://127.0.0.1:{port}")
    try:
        rollouts = await client.query_rollouts()
        assert len(rollouts) >= TOTAL_ROLLOUTS  # every acknowledged one (checked by verify), maybe a few re-sent
        for rollout in rollouts:
            assert rollout.status == "succeeded" and rollout.end_time is not None
            attempts = await client.query_attempts(rollout.rollout_id)
            assert attempts[-1].status == "succeeded"
            # Nothing claimed it again after it finished.
            assert all(a.start_time <= rollout.end_time for a in attempts)
    finally:
        await client.close()
