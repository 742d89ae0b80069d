"""Fixtures for the inspection CLI: a real store server on 127.0.0.1 (free port) filled over HTTP with rollouts,
attempts, workers and spans of every kind the CLI explains (LLM call, tool call, reward, exception)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from agl.store.base import LightningStore
from agl.store.client import LightningStoreClient
from agl.store.memory import InMemoryLightningStore
from agl.store.server import LightningStoreServer
from agl.types import PromptTemplate, RolloutConfig, Span, SpanContext, TraceStatus
from agl.types.tracer import Event

TOKEN = "s3cret-cli-token"


@dataclass
class Filled:
    """A running server and the ids of what it holds."""

    server: LightningStoreServer
    url: str
    token: str | None
    succeeded: str = ""
    """Rollout (train) with one attempt by Worker-0: agent span > LLM call + tool call + reward 0.75."""
    failed: str = ""
    """Rollout (val) with two failed attempts (Worker-0, then Worker-1), each with an exception."""
    queued: str = ""
    """Rollout (test) still in the queue."""
    running: str = ""
    """Rollout (train) being run by Worker-1."""
    resources_id: str = ""
    """The one resources snapshot, used by the succeeded rollout."""
    spans: dict[str, list[Span]] = field(default_factory=dict)
    """The spans written, per rollout id."""


def _span(
    rollout_id: str,
    attempt_id: str,
    seq: int,
    span_id: str,
    name: str,
    start: float,
    end: float,
    parent: str | None = None,
    trace: str = "0af7651916cd43dd8448eb211c80319c",
    **extra: object,
) -> Span:
    return Span(
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=seq,
        trace_id=trace,
        span_id=span_id,
        parent_id=parent,
        name=name,
        start_time=start,
        end_time=end,
        context=SpanContext(trace_id=trace, span_id=span_id, trace_state={"vendor": "x1"}),
        parent=SpanContext(trace_id=trace, span_id=parent) if parent else None,
        **extra,  # type: ignore[arg-type]
    )


async def _fill(filled: Filled) -> None:
    client = LightningStoreClient(filled.url, token=filled.token, retry_delays=(0.05,), health_retry_delays=())
    try:
        t0 = time.time() - 60.0
        await client.update_worker("Worker-0", {"cpu": 0.5})
        await client.update_worker("Worker-1", {"cpu": 0.1})

        # 1. a successful rollout with a full agent trace, run with a resources snapshot
        snapshot = await client.add_resources({"prompt": PromptTemplate(template="Solve {q}", engine="f-string")})
        filled.resources_id = snapshot.resources_id
        first = await client.enqueue_rollout(
            {"question": "What is 6 * 7?"}, mode="train", resources_id=snapshot.resources_id
        )
        claimed = await client.dequeue_rollout(worker_id="Worker-0")
        assert claimed is not None and claimed.rollout_id == first.rollout_id
        rid, aid = claimed.rollout_id, claimed.attempt.attempt_id
        spans = [
            _span(rid, aid, 1, "a000000000000001", "agent.run", t0, t0 + 2.0,
                  attributes={"agent.name": "calc-agent"}),
            _span(rid, aid, 2, "a000000000000002", "openai.chat.completion", t0 + 0.1, t0 + 0.9,
                  parent="a000000000000001",
                  attributes={
                      "gen_ai.system": "openai",
                      "gen_ai.request.model": "tiny-llm",
                      "gen_ai.prompt.0.role": "system",
                      "gen_ai.prompt.0.content": "You are a calculator.",
                      "gen_ai.prompt.1.role": "user",
                      "gen_ai.prompt.1.content": "What is 6 * 7?",
                      "gen_ai.completion.0.role": "assistant",
                      "gen_ai.completion.0.content": "Let me compute 6 * 7.",
                      "gen_ai.completion.0.tool_calls.0.name": "multiply",
                      "gen_ai.completion.0.tool_calls.0.arguments": '{"a": 6, "b": 7}',
                      "gen_ai.usage.prompt_tokens": 21,
                      "gen_ai.usage.completion_tokens": 9,
                      "prompt_token_ids": [1, 2, 3],
                      "response_logprobs": [-0.5, -1.25],
                      "temperature": 0.7,
                      "flag": True,
                      "nested": {"k": "v", "n": 3},
                  }),
            _span(rid, aid, 3, "a000000000000003", "tool.multiply", t0 + 1.0, t0 + 1.1,
                  parent="a000000000000001",
                  attributes={"tool.name": "multiply", "tool.parameters": '{"a": 6, "b": 7}', "tool.output": "42"}),
            _span(rid, aid, 4, "a000000000000004", "agentlightning.annotation", t0 + 1.9, t0 + 1.9,
                  parent="a000000000000001",
                  attributes={"agentlightning.reward.0.name": "primary", "agentlightning.reward.0.value": 0.75}),
        ]  # fmt: skip
        await client.add_many_spans(spans)
        filled.spans[rid] = spans
        await client.update_attempt(rid, aid, status="succeeded")
        filled.succeeded = rid

        # 2. a rollout whose two attempts both fail with an exception
        config = RolloutConfig(max_attempts=2, retry_condition=["failed"])
        second = await client.enqueue_rollout({"question": "divide by zero"}, mode="val", config=config)
        filled.spans[second.rollout_id] = []
        for n, worker in enumerate(("Worker-0", "Worker-1"), start=1):
            claimed = await client.dequeue_rollout(worker_id=worker)
            assert claimed is not None and claimed.rollout_id == second.rollout_id
            aid = claimed.attempt.attempt_id
            boom = _span(
                second.rollout_id, aid, 1, f"b00000000000000{n}", "agent.run", t0 + 10 * n, t0 + 10 * n + 0.5,
                trace=f"{n}" * 32,
                status=TraceStatus(status_code="ERROR", description="ZeroDivisionError: division by zero"),
                events=[Event(name="exception", timestamp=t0 + 10 * n + 0.4, attributes={
                    "exception.type": "ZeroDivisionError", "exception.message": "division by zero"})],
            )  # fmt: skip
            await client.add_span(boom)
            filled.spans[second.rollout_id].append(boom)
            await client.update_attempt(second.rollout_id, aid, status="failed")
        filled.failed = second.rollout_id

        # 3. running (claimed by Worker-1), 4. still queued
        running = await client.enqueue_rollout({"question": "running"}, mode="train")
        filled.queued = (await client.enqueue_rollout({"question": "queued"}, mode="test")).rollout_id
        claimed = await client.dequeue_rollout(worker_id="Worker-1")
        assert claimed is not None and claimed.rollout_id == running.rollout_id
        filled.running = running.rollout_id
        await client.update_attempt(claimed.rollout_id, claimed.attempt.attempt_id, status="running")
        await client.update_worker("Worker-1", {"cpu": 0.9})
    finally:
        await client.close()


def serve_filled(token: str | None, store: LightningStore | None = None) -> Iterator[Filled]:
    """Serve `store` (default: a fresh thread-safe memory store), fill it, and stop the server afterwards."""
    if store is None:
        store = InMemoryLightningStore(thread_safe=True, scan_debounce_seconds=0)
    server = LightningStoreServer(store, host="127.0.0.1", port=0, token=token, health_check_interval=0)
    server.start()
    try:
        filled = Filled(server=server, url=server.endpoint, token=token)
        asyncio.run(_fill(filled))
        yield filled
    finally:
        server.stop()


@pytest.fixture
def filled(monkeypatch: pytest.MonkeyPatch) -> Iterator[Filled]:
    """A filled store without a token; AGL_STORE_URL / AGL_STORE_TOKEN are cleared for the test."""
    monkeypatch.delenv("AGL_STORE_URL", raising=False)
    monkeypatch.delenv("AGL_STORE_TOKEN", raising=False)
    yield from serve_filled(None)


@pytest.fixture
def filled_with_token(monkeypatch: pytest.MonkeyPatch) -> Iterator[Filled]:
    """A filled store that requires the bearer token `TOKEN`; the environment holds no token."""
    monkeypatch.delenv("AGL_STORE_URL", raising=False)
    monkeypatch.delenv("AGL_STORE_TOKEN", raising=False)
    yield from serve_filled(TOKEN)
