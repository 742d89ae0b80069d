"""Fill a store over HTTP the way runners and an algorithm do, and remember what was written (for the assertions).

Three resources versions (prompt template and model change), rollouts claimed by four workers, each with an agent
span holding an LLM call, a tool call and a reward annotation; some fail with an exception span; some stay queued
or running. Rewards are chosen per version so the expected means are known exactly.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from agl.store.base import LightningStore
from agl.types import LLM, PromptTemplate, ProxyLLM, RolloutConfig, Span
from agl.types.tracer import SpanContext, TraceStatus

VERSIONS: list[tuple[str, dict[str, Any]]] = [
    (
        "prompt-v1",
        {
            "main_llm": ProxyLLM(endpoint="http://127.0.0.1:9/v1", model="tiny-0", weights_version="0"),
            "system_prompt": PromptTemplate(template="You are a calculator.\nAnswer: {question}", engine="f-string"),
        },
    ),
    (
        "prompt-v2",
        {
            "main_llm": ProxyLLM(endpoint="http://127.0.0.1:9/v1", model="tiny-0", weights_version="1"),
            "system_prompt": PromptTemplate(
                template="You are a careful calculator.\nThink step by step.\nAnswer: {question}", engine="f-string"
            ),
        },
    ),
    (
        "prompt-v3",
        {
            "main_llm": LLM(endpoint="http://127.0.0.1:10/v1", model="tiny-1"),
            "system_prompt": PromptTemplate(
                template="You are a careful calculator.\nThink step by step.\nGive only the number.\nAnswer: {question}",
                engine="f-string",
            ),
        },
    ),
]

# Rewards of the finished rollouts of each version, in order; None marks a rollout that fails (no reward).
REWARDS: dict[str, list[float | None]] = {
    "prompt-v1": [0.0, 0.0, 1.0, 0.0, None, 0.5, 0.0, 0.0],
    "prompt-v2": [1.0, 0.0, 1.0, 0.5, 0.0, None, 1.0, 0.5],
    "prompt-v3": [1.0, 1.0, 0.5, 1.0, 1.0, 1.0, None, 1.0],
}
WORKERS = ["Worker-0", "Worker-1", "Worker-2", "Worker-3"]
QUEUED = 3
RUNNING = 2


@dataclasses.dataclass
class Filled:
    """What `fill` wrote: ids by outcome, the reward of each rewarded rollout and one fully known rollout."""

    succeeded: list[str] = dataclasses.field(default_factory=list)
    failed: list[str] = dataclasses.field(default_factory=list)
    queued: list[str] = dataclasses.field(default_factory=list)
    running: list[str] = dataclasses.field(default_factory=list)
    rewards: dict[str, tuple[str, float]] = dataclasses.field(default_factory=dict)
    """rollout id -> (resources id, reward)"""
    modes: dict[str, str] = dataclasses.field(default_factory=dict)
    """rollout id -> mode"""
    spans: dict[str, list[Span]] = dataclasses.field(default_factory=dict)
    """rollout id -> the spans written for it (its last attempt's)"""
    by_version: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    """resources id -> the finished rollouts written for it (before the retried, running and queued ones)"""
    retried: str = ""
    """A rollout whose first attempt failed and whose second succeeded."""

    @property
    def total(self) -> int:
        """Every rollout written."""
        return len(self.succeeded) + len(self.failed) + len(self.queued) + len(self.running)

    def mean_reward_by_version(self, mode: str | None = None) -> dict[str, tuple[float, int]]:
        """resources id -> (mean reward, count) over the rewarded finished rollouts (of `mode` if given)."""
        sums: dict[str, list[float]] = {}
        for rollout_id, (resources_id, reward) in self.rewards.items():
            if mode is None or self.modes[rollout_id] == mode:
                sums.setdefault(resources_id, []).append(reward)
        return {rid: (sum(values) / len(values), len(values)) for rid, values in sums.items()}


def _span(
    rollout_id: str,
    attempt_id: str,
    sequence_id: int,
    span_id: str,
    name: str,
    start: float,
    end: float,
    attributes: dict[str, Any],
    parent_id: str | None = None,
    status: TraceStatus | None = None,
    events: list[Any] | None = None,
) -> Span:
    trace_id = f"trace-{rollout_id}"
    return Span(
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=sequence_id,
        trace_id=trace_id,
        span_id=span_id,
        parent_id=parent_id,
        name=name,
        status=status or TraceStatus(status_code="OK"),
        attributes=attributes,
        events=events or [],
        links=[],
        start_time=start,
        end_time=end,
        context=SpanContext(trace_id=trace_id, span_id=span_id, is_remote=False, trace_state={}),
        parent=None
        if parent_id is None
        else SpanContext(trace_id=trace_id, span_id=parent_id, is_remote=False, trace_state={}),
    )


def agent_spans(rollout_id: str, attempt_id: str, question: str, reward: float | None, answer: str = "4") -> list[Span]:
    """The spans one agent run writes: agent root > LLM call, tool call, then reward or exception."""
    t = time.time()
    root = f"{rollout_id}-agent"
    spans = [
        _span(rollout_id, attempt_id, 1, root, "agentlightning.operation", t, t + 0.05,
              {"agentlightning.operation.name": "solve", "agentlightning.operation.input.question": question}),
        _span(rollout_id, attempt_id, 2, f"{rollout_id}-llm", "openai.chat.completion", t + 0.001, t + 0.02,
              {
                  "gen_ai.system": "openai",
                  "gen_ai.request.model": "tiny",
                  "gen_ai.prompt.0.role": "system",
                  "gen_ai.prompt.0.content": "You are a calculator.",
                  "gen_ai.prompt.1.role": "user",
                  "gen_ai.prompt.1.content": question,
                  "gen_ai.completion.0.role": "assistant",
                  "gen_ai.completion.0.content": f"The answer to {question} is {answer}",
                  "gen_ai.usage.prompt_tokens": 17,
                  "gen_ai.usage.completion_tokens": 6,
              },
              parent_id=root),
        _span(rollout_id, attempt_id, 3, f"{rollout_id}-tool", "tool.calculator", t + 0.021, t + 0.03,
              {"tool.name": "calculator", "tool.arguments": question, "tool.output": answer}, parent_id=root),
    ]  # fmt: skip
    if reward is None:
        spans.append(
            _span(rollout_id, attempt_id, 4, f"{rollout_id}-exc", "agentlightning.exception", t + 0.031, t + 0.032,
                  {"exception.type": "ZeroDivisionError", "exception.message": "division by zero"},
                  parent_id=root, status=TraceStatus(status_code="ERROR", description="division by zero"))
        )  # fmt: skip
    else:
        spans.append(
            _span(rollout_id, attempt_id, 4, f"{rollout_id}-reward", "agentlightning.annotation", t + 0.04, t + 0.041,
                  {"agentlightning.reward.0.name": "primary", "agentlightning.reward.0.value": reward},
                  parent_id=root)
        )  # fmt: skip
    return spans


async def fill(store: LightningStore, before_version: Callable[[str], None] | None = None) -> Filled:
    """Write the resources, rollouts, spans and worker heartbeats described in this module into `store`.

    `before_version(resources_id)` is called before each version's rollouts (tests move the store's clock there).
    """
    out = Filled()
    for worker in WORKERS:
        await store.update_worker(worker, {"pid": 1})
    n = 0
    for resources_id, resources in VERSIONS:
        if before_version is not None:
            before_version(resources_id)
        await store.update_resources(resources_id, resources)
        for reward in REWARDS[resources_id]:
            question = f"{n} + 4 - {n}"
            mode = "train" if n % 4 else "val"
            rollout = await store.enqueue_rollout({"question": question}, mode=mode, resources_id=resources_id)
            out.modes[rollout.rollout_id] = mode
            out.by_version.setdefault(resources_id, []).append(rollout.rollout_id)
            claimed = await store.dequeue_rollout(worker_id=WORKERS[n % len(WORKERS)])
            assert claimed is not None and claimed.rollout_id == rollout.rollout_id
            attempt_id = claimed.attempt.attempt_id
            await store.update_attempt(rollout.rollout_id, attempt_id, status="running")
            spans = agent_spans(rollout.rollout_id, attempt_id, question, reward)
            await store.add_many_spans(spans)
            out.spans[rollout.rollout_id] = spans
            if reward is None:
                await store.update_attempt(rollout.rollout_id, attempt_id, status="failed")
                out.failed.append(rollout.rollout_id)
            else:
                await store.update_attempt(rollout.rollout_id, attempt_id, status="succeeded")
                out.succeeded.append(rollout.rollout_id)
                out.rewards[rollout.rollout_id] = (resources_id, reward)
            n += 1
    latest = VERSIONS[-1][0]
    config = RolloutConfig(max_attempts=2, retry_condition=["failed"])
    rollout = await store.enqueue_rollout({"question": "retried"}, mode="train", resources_id=latest, config=config)
    for attempt_reward, worker in ((None, WORKERS[0]), (1.0, WORKERS[1])):
        claimed = await store.dequeue_rollout(worker_id=worker)
        assert claimed is not None and claimed.rollout_id == rollout.rollout_id
        attempt_id = claimed.attempt.attempt_id
        await store.update_attempt(rollout.rollout_id, attempt_id, status="running")
        spans = agent_spans(rollout.rollout_id, attempt_id, "retried", attempt_reward)
        await store.add_many_spans(spans)
        await store.update_attempt(
            rollout.rollout_id, attempt_id, status="failed" if attempt_reward is None else "succeeded"
        )
    out.spans[rollout.rollout_id] = spans
    out.succeeded.append(rollout.rollout_id)
    out.rewards[rollout.rollout_id] = (latest, 1.0)
    out.modes[rollout.rollout_id] = "train"
    out.retried = rollout.rollout_id
    for i in range(RUNNING):
        rollout = await store.enqueue_rollout({"question": f"running {i}"}, mode="train", resources_id=latest)
        claimed = await store.dequeue_rollout(worker_id=WORKERS[i])
        assert claimed is not None
        await store.update_attempt(rollout.rollout_id, claimed.attempt.attempt_id, status="running")
        out.running.append(rollout.rollout_id)
    for i in range(QUEUED):
        rollout = await store.enqueue_rollout({"question": f"queued {i}"}, mode="test", resources_id=latest)
        out.queued.append(rollout.rollout_id)
    return out
