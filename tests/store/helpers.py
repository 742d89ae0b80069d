"""Small builders shared by the store conformance tests."""

from __future__ import annotations

import itertools
from typing import Any

from agl.store.base import LightningStore
from agl.types import LLM, AttemptedRollout, PromptTemplate, RolloutConfig, Span

_span_counter = itertools.count(1)


def make_span(
    rollout_id: str,
    attempt_id: str,
    sequence_id: int = 1,
    *,
    span_id: str | None = None,
    trace_id: str = "trace-0",
    parent_id: str | None = None,
    name: str = "step",
    start_time: float | None = None,
    **extra: Any,
) -> Span:
    """A minimal valid span for (`rollout_id`, `attempt_id`); `span_id` defaults to a fresh unique id."""
    if span_id is None:
        span_id = f"span-{next(_span_counter)}"
    return Span(
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=sequence_id,
        trace_id=trace_id,
        span_id=span_id,
        parent_id=parent_id,
        name=name,
        start_time=start_time,
        **extra,
    )


def sample_resources(tag: str = "a") -> dict[str, Any]:
    """A named-resources dict with one LLM and one prompt template, distinguishable by `tag`."""
    return {
        "main_llm": LLM(endpoint=f"http://llm-{tag}.local/v1", model=f"model-{tag}", sampling_parameters={"t": 0.5}),
        "prompt": PromptTemplate(template=f"Hello {{name}} from {tag}", engine="f-string"),
    }


async def started_with_status(
    store: LightningStore, status: str, config: RolloutConfig | None = None
) -> AttemptedRollout:
    """A rollout created by `start_rollout` (attempt #1 preparing) whose rollout status was then set to `status`."""
    rollout = await store.start_rollout(input={"task": status}, config=config)
    if status != "preparing":
        await store.update_rollout(rollout.rollout_id, status=status)  # type: ignore[arg-type]
    return rollout


async def attempt_with_status(
    store: LightningStore, status: str, config: RolloutConfig | None = None
) -> AttemptedRollout:
    """A started rollout whose first attempt was then written to `status` with `update_attempt`."""
    rollout = await store.start_rollout(input={"task": status}, config=config)
    if status != "preparing":
        await store.update_attempt(rollout.rollout_id, rollout.attempt.attempt_id, status=status)  # type: ignore[arg-type]
    return rollout


def ids(items: Any) -> list[str]:
    """The rollout ids of a sequence of rollouts, in order."""
    return [item.rollout_id for item in items]


def make_otel_span(
    name: str = "otel-step",
    *,
    attributes: dict[str, Any] | None = None,
    parent: Any = None,
    end: bool = True,
) -> Any:
    """A real OpenTelemetry SDK `ReadableSpan`, optionally the child of `parent` (another SDK span)."""
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider(resource=Resource.create({"service.name": "agl-store-tests"}))
    tracer = provider.get_tracer("agl.tests.store")
    context = trace.set_span_in_context(parent) if parent is not None else None
    span = tracer.start_span(name, context=context, attributes=attributes)
    if end:
        span.end()
    return span
