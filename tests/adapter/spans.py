"""Hand-built spans for the adapter tests: realistic names, parents, times and attributes."""

from __future__ import annotations

from typing import Any

from agl.types.tracer import Span


class Trace:
    """Collects the spans of one rollout; each `add` gets the next sequence id unless one is given."""

    def __init__(self, rollout_id: str = "ro-1", attempt_id: str = "at-1") -> None:
        self.rollout_id = rollout_id
        self.attempt_id = attempt_id
        self.spans: list[Span] = []

    def add(
        self,
        span_id: str,
        name: str,
        start: float | None,
        end: float | None,
        *,
        parent: str | None = None,
        sequence_id: int | None = None,
        **attributes: Any,
    ) -> Span:
        span = Span(
            rollout_id=self.rollout_id,
            attempt_id=self.attempt_id,
            sequence_id=sequence_id if sequence_id is not None else len(self.spans) + 1,
            trace_id="t" * 32,
            span_id=span_id,
            parent_id=parent,
            name=name,
            start_time=start,
            end_time=end,
            attributes=dict(attributes),
        )
        self.spans.append(span)
        return span

    def llm(
        self,
        span_id: str,
        start: float,
        end: float,
        *,
        parent: str | None,
        response_id: str | None = None,
        prompt_ids: list[int] | None = None,
        response_ids: list[int] | None = None,
        name: str = "openai.chat.completion",
        **attributes: Any,
    ) -> Span:
        attrs: dict[str, Any] = {"gen_ai.request.model": "qwen", **attributes}
        if response_id is not None:
            attrs["gen_ai.response.id"] = response_id
        if prompt_ids is not None:
            attrs["prompt_token_ids"] = prompt_ids
        if response_ids is not None:
            attrs["response_token_ids"] = response_ids
        return self.add(span_id, name, start, end, parent=parent, **attrs)

    def reward(self, span_id: str, at: float, value: float, *, parent: str | None, **attributes: Any) -> Span:
        attrs = {"agentlightning.reward.0.name": "primary", "agentlightning.reward.0.value": value, **attributes}
        return self.add(span_id, "agentlightning.annotation", at, at + 0.01, parent=parent, **attrs)
