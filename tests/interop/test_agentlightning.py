"""AGL against the real Agent Lightning 0.3.0, both ways round, every route, large bodies included.

Agent Lightning lives in a side virtualenv (its dependencies are not AGL's): `make interop-venv` creates
`.venv-agentlightning`, and `AGL_AL_PYTHON` names its interpreter. Without it these tests skip; CI sets it and
`AGL_REQUIRE_AGENTLIGHTNING=1`, so there they cannot skip.

- AGL's client (and an AGL runner) against Agent Lightning's own server (`agl store` of the side environment).
- Agent Lightning's unmodified client against AGL's server (`bench/al_compat.py`, run by the side interpreter).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agl.litagent import LitAgent
from agl.runner import LitAgentRunner
from agl.store.client import LightningStoreClient
from agl.store.http.wire import StoreRequestError
from agl.tracer.otel import OtelTracer
from agl.types import Rollout, Span

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# Agent Lightning imports litellm, which otherwise tries to download a price table at import.
SIDE_ENV = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONPATH": ""}


def _al_python() -> str:
    path = os.environ.get("AGL_AL_PYTHON", "")
    if not path or not os.path.exists(path):
        message = (
            "Agent Lightning 0.3.0 side environment not found: set AGL_AL_PYTHON to its interpreter "
            "(`make interop-venv` creates .venv-agentlightning)"
        )
        if os.environ.get("AGL_REQUIRE_AGENTLIGHTNING") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"server exited early ({proc.returncode}): {output[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/v1/agl/health", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise AssertionError(f"no healthy server at {url} after {timeout} s")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def al_server() -> Iterator[str]:
    """Agent Lightning 0.3.0's own store server (in-memory backend, empty) on a free loopback port."""
    python = _al_python()
    port = _free_port()
    code = "import sys; from agentlightning.cli import main; sys.argv[0] = 'agl'; sys.exit(main())"
    proc = subprocess.Popen(
        [python, "-c", code, "store", "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=SIDE_ENV,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, timeout=90)  # importing litellm takes ~12 s on these machines
        yield url
    finally:
        _stop(proc)


def _span(rollout_id: str, attempt_id: str, sequence_id: int, name: str, **attributes: Any) -> Span:
    now = time.time()
    return Span(
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=sequence_id,
        trace_id="a1" * 16,
        span_id=f"{sequence_id:016x}",
        parent_id=None,
        name=name,
        status={"status_code": "OK"},  # type: ignore[arg-type]
        attributes=attributes,
        events=[],
        links=[],
        start_time=now,
        end_time=now + 0.01,
        context=None,
        parent=None,
        resource={"attributes": {"service.name": "interop"}, "schema_url": ""},  # type: ignore[arg-type]
    )


async def test_agl_client_on_every_route_of_agent_lightnings_server(al_server: str) -> None:
    client = LightningStoreClient(al_server, retry_delays=(0.2,), health_retry_delays=(0.1,))
    try:
        # Enqueue 800 rollouts in one call (a body of ~130 KiB, sent plain: this server takes no gzip).
        tag = f"interop-{time.time_ns()}"
        many = await client.enqueue_many_rollouts(
            [{"input": {"tag": tag, "i": i, "text": "q" * 120}, "mode": "train"} for i in range(800)]
        )
        assert len(many) == 800 and [r.input["i"] for r in many] == list(range(800))  # type: ignore[index]
        assert client.gzip_request_min_bytes > 0 and not client._gzip_requests
        one = await client.enqueue_rollout({"tag": tag, "single": True}, mode="val", metadata={"k": "v"})
        assert one.status == "queuing" and one.metadata == {"k": "v"}

        started = await client.start_rollout({"tag": tag, "started": True}, mode="test")
        assert started.status in ("preparing", "running") and started.attempt.sequence_id == 1
        rid, aid = started.rollout_id, started.attempt.attempt_id

        assert (await client.get_rollout_by_id(rid)).rollout_id == rid  # type: ignore[union-attr]
        assert await client.get_rollout_by_id("ro-no-such-rollout") is None
        updated = await client.update_rollout(rid, metadata={"edited": True})
        assert updated.metadata == {"edited": True}

        # Sequence ids, one and several.
        first = await client.get_next_span_sequence_id(rid, aid)
        several = await client.get_many_span_sequence_ids([(rid, aid), (rid, aid)])
        assert len(several) == 2 and first < several[0] < several[1]

        # A large span (~300 KiB of attributes) and a batch (one request per span on this server).
        big = await client.add_span(_span(rid, aid, first, "big", blob="b" * 300_000))
        assert big is not None and big.attributes["blob"] == "b" * 300_000
        batch = [_span(rid, aid, 100 + i, f"step-{i}", step=i, text="t" * 40_000) for i in range(3)]
        stored = await client.add_many_spans(batch)
        assert [s.name for s in stored] == ["step-0", "step-1", "step-2"]
        spans = await client.query_spans(rid)
        assert {s.name for s in spans} == {"big", "step-0", "step-1", "step-2"}
        assert [s.name for s in await client.query_spans(rid, "latest", name_contains="step")] == [
            "step-0",
            "step-1",
            "step-2",
        ]

        # Attempts.
        assert (await client.get_latest_attempt(rid)).attempt_id == aid  # type: ignore[union-attr]
        running = await client.update_attempt(rid, aid, status="running", worker_id="w-interop")
        assert running.status == "running"
        done = await client.update_attempt(rid, aid, status="succeeded")
        assert done.status == "succeeded" and done.end_time is not None
        waited = await client.wait_for_rollouts(rollout_ids=[rid], timeout=1)
        assert [r.status for r in waited] == ["succeeded"]
        second = await client.start_attempt(rid)
        assert second.attempt.sequence_id == 2
        assert [a.sequence_id for a in await client.query_attempts(rid)] == [1, 2]

        # Queries with filters, sorting and paging.
        page = await client.query_rollouts(status_in=["queuing"], sort_by="rollout_id", limit=50, offset=10)
        assert len(page) == 50 and page.offset == 10 and page.total >= 801
        assert [r.rollout_id for r in page] == sorted(r.rollout_id for r in page)
        assert rid in [r.rollout_id for r in await client.query_rollouts(rollout_id_in=[rid])]

        # Dequeue, one and several.
        claimed = await client.dequeue_rollout(worker_id="w-interop")
        assert claimed is not None and claimed.attempt.status == "preparing"
        claimed_many = await client.dequeue_many_rollouts(limit=5, worker_id="w-interop")
        assert len(claimed_many) == 5

        # Resources.
        llm = {"resource_type": "llm", "endpoint": "http://127.0.0.1:9/v1", "model": "m"}
        added = await client.add_resources({"llm": llm})  # type: ignore[dict-item]
        assert (await client.get_latest_resources()).resources_id == added.resources_id  # type: ignore[union-attr]
        prompt = {"resource_type": "prompt_template", "template": "Q: {q}" + " pad" * 30_000, "engine": "f-string"}
        changed = await client.update_resources(added.resources_id, {"prompt": prompt})  # type: ignore[dict-item]
        assert "prompt" in changed.resources
        fetched = await client.get_resources_by_id(added.resources_id)
        assert fetched is not None and fetched.resources["prompt"].template.startswith("Q: {q}")  # type: ignore[union-attr]
        assert await client.get_resources_by_id("rs-no-such-resources") is None
        assert added.resources_id in [r.resources_id for r in await client.query_resources()]

        # Workers and statistics.
        worker = await client.update_worker("w-interop", {"cpu": 0.5})
        assert worker.worker_id == "w-interop"
        assert (await client.get_worker_by_id("w-interop")).worker_id == "w-interop"  # type: ignore[union-attr]
        assert "w-interop" in [w.worker_id for w in await client.query_workers()]
        stats = await client.statistics()
        assert isinstance(stats, dict) and stats

        # A request the server refuses comes back as an error naming it, not as a hang or a crash.
        with pytest.raises(StoreRequestError):
            await client.update_attempt("ro-no-such-rollout", "at-none", status="running")
    finally:
        await client.close()


class _TracedAgent(LitAgent[Any]):
    """Emits a few traced steps (OpenTelemetry spans) and returns a reward."""

    async def rollout_async(self, task: Any, resources: Any, rollout: Rollout) -> float:
        from agl.emitter import emit_annotation

        for step in range(3):
            emit_annotation({"task": str(task), "step": step})
        return 0.5 + 0.1 * float(task)


async def test_agl_runner_trains_against_agent_lightnings_server(al_server: str) -> None:
    client = LightningStoreClient(al_server, retry_delays=(0.2,), health_retry_delays=(0.1,))
    try:
        ids = [(await client.enqueue_rollout(i, mode="train")).rollout_id for i in range(4)]
        runner = LitAgentRunner[Any](OtelTracer(), concurrency=2, max_rollouts=4, heartbeat_interval=0)
        runner.init(_TracedAgent())
        runner.init_worker(0, client)  # type: ignore[arg-type]
        await asyncio.wait_for(runner.iter(), 60)
        finished = await client.wait_for_rollouts(rollout_ids=ids, timeout=10)
        assert sorted(r.status for r in finished) == ["succeeded"] * 4
        for i, rollout_id in enumerate(ids):
            spans = await client.query_spans(rollout_id)
            assert sorted(s.attributes["step"] for s in spans if "step" in s.attributes) == [0, 1, 2]
            rewards = [s.attributes.get("agentlightning.reward.0.value") for s in spans if "step" not in s.attributes]
            assert rewards == [pytest.approx(0.5 + 0.1 * i)]
    finally:
        await client.close()


def test_agent_lightnings_client_on_every_route_of_agl_server(tmp_path: Path) -> None:
    python = _al_python()
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "agl.cli", "store", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, server, timeout=30)
        check = subprocess.run(
            [python, str(REPO / "bench" / "al_compat.py"), "--url", url],
            capture_output=True,
            text=True,
            env=SIDE_ENV,
            timeout=240,
        )
        report = check.stdout + check.stderr[-3000:]
        assert check.returncode == 0, report
        assert "FAIL" not in check.stdout, report
        passed = [line for line in check.stdout.splitlines() if line.strip().startswith("OK")]
        assert len(passed) >= 30, report
    finally:
        _stop(server)
