"""The span tree of a trace: built from parent ids, with virtual stand-ins for spans that are missing."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from agl.types.reward import get_reward_value
from agl.types.tracer import Span

if TYPE_CHECKING:
    from agl.adapter.triplet import RewardMatchPolicy
    from agl.types.core import Triplet

logger = logging.getLogger(__name__)

__all__ = ["VIRTUAL_ROOT_ID", "VIRTUAL_SPAN_NAME", "TraceTree", "agent_name_of"]

VIRTUAL_ROOT_ID = "virtual-root"
"""Span id (and name) of the root added above several top-level spans."""
VIRTUAL_SPAN_NAME = "virtual-span"
"""Name of a stand-in span for a parent id that no span in the trace carries."""


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def agent_name_of(span: Span) -> str | None:
    """The agent name a span declares, or None when the span does not represent an agent.

    Recognised, in order: `agent.name` (OpenAI Agents SDK), `operation.name` when `agentops.span.kind` is
    `agent` (AgentOps), `recipient_agent_type` (AutoGen), `langchain.chain.type` (LangGraph), `executor.id`
    (Agent Framework), `agentlightning.operation.input.name` when `type` is `agent` (Weave), and `lc_name` on
    `langchain.Chain.*` spans (Weave with LangChain).
    """
    attrs = span.attributes
    name = _text(attrs.get("agent.name"))
    if name is not None:
        return name
    if attrs.get("agentops.span.kind") == "agent":
        name = _text(attrs.get("operation.name"))
        if name is not None:
            return name
    for key in ("recipient_agent_type", "langchain.chain.type", "executor.id"):
        name = _text(attrs.get(key))
        if name is not None:
            return name
    if attrs.get("type") == "agent":
        name = _text(attrs.get("agentlightning.operation.input.name"))
        if name is not None:
            return name
    if span.name.startswith("langchain.Chain."):
        return _text(attrs.get("lc_name"))
    return None


class TraceTree:
    """A span with its child spans, recursively; `virtual` nodes stand in for spans absent from the trace."""

    def __init__(self, id: str, span: Span, children: list[TraceTree] | None = None, *, virtual: bool = False):
        self.id = id
        self.span = span
        self.children: list[TraceTree] = children if children is not None else []
        self.virtual = virtual

    def __repr__(self) -> str:
        return f"TraceTree(id={self.id!r}, name={self.span.name!r}, children={len(self.children)})"

    @property
    def start_time(self) -> float | None:
        """Start time of the node's span (seconds since the epoch)."""
        return self.span.start_time

    @property
    def end_time(self) -> float | None:
        """End time of the node's span (seconds since the epoch)."""
        return self.span.end_time

    def agent_name(self) -> str | None:
        """The agent name this node's span declares (see `agent_name_of`)."""
        return agent_name_of(self.span)

    def traverse(self) -> list[TraceTree]:
        """All nodes of the subtree, depth first, parents before children, children in order."""
        result: list[TraceTree] = []
        stack: list[TraceTree] = [self]
        while stack:
            node = stack.pop()
            result.append(node)
            stack.extend(reversed(node.children))
        return result

    def find_id(self, id: str) -> TraceTree | None:
        """The node with span id `id` in this subtree, if any."""
        return next((node for node in self.traverse() if node.id == id), None)

    def names_tuple(self) -> tuple[str, list[Any]]:
        """`(span name, [children's names_tuple, ...])`: the shape of the tree, for debugging and tests."""
        return self.span.name, [child.names_tuple() for child in self.children]

    def add_child(self, child: TraceTree) -> None:
        """Attach `child`, keeping children ordered by start time."""
        self.children.append(child)
        self.children.sort(key=_time_order)

    def to_json(self) -> dict[str, Any]:
        """The subtree as plain data: `{"id", "span" (the span's fields), "children": [...]}`."""
        return {"id": self.id, "span": self.span.model_dump(), "children": [c.to_json() for c in self.children]}

    def maybe_reward_dict(self) -> dict[str, Any]:
        """`{"type": "reward", "value": v}` when this node's span carries a reward, else `{}`."""
        value = get_reward_value(self.span)
        return {"type": "reward", "value": value} if value is not None else {}

    # -- reading the tree as a trajectory (implemented in agl.adapter.trajectory / agl.adapter.triplet, which
    # build on this module: imported on call) ------------------------------------------------------------------

    def is_reward_span(self) -> bool:
        """Whether this node's span records a reward (a reward annotation or a `@reward` operation)."""
        from agl.adapter.triplet import is_reward_node

        return is_reward_node(self)

    def find_llm_calls(
        self,
        *,
        llm_call_match: str,
        agent_match: str | None,
        within_matching_subtree: str | None = None,
        within_reward: bool | None = None,
        within_llm_call: bool | None = None,
        existing_llm_call_response_ids: set[str] | None = None,
    ) -> list[tuple[TraceTree, str]]:
        """The LLM calls in this subtree with their agent names (see `agl.adapter.trajectory.find_llm_calls`)."""
        from agl.adapter.trajectory import find_llm_calls

        return find_llm_calls(
            self,
            llm_call_match=llm_call_match,
            agent_match=agent_match,
            within_matching_subtree=within_matching_subtree,
            within_reward=within_reward,
            within_llm_call=within_llm_call,
            existing_llm_call_response_ids=existing_llm_call_response_ids,
        )

    def match_rewards(self, reward_match: str, llm_calls: list[TraceTree]) -> dict[str, float | None]:
        """The reward each of `llm_calls` receives under policy `reward_match`, keyed by span id."""
        from agl.adapter.trajectory import match_rewards

        return match_rewards(self, reward_match, llm_calls)

    def extract_prompt_image_urls(self, prompt_raw_content: Any) -> list[str]:
        """The image URLs referenced by prompt messages (`image_url` content parts), in order."""
        from agl.adapter.triplet import image_urls

        return image_urls(prompt_raw_content)

    def span_to_triplet(self, span: Span, agent_name: str | None) -> Triplet:
        """The triplet (without reward) of one LLM-call span."""
        from agl.adapter.trajectory import span_to_triplet

        return span_to_triplet(span, agent_name)

    def to_trajectory(
        self,
        llm_call_match: str = r"openai\.chat\.completion",
        agent_match: str | None = None,
        exclude_llm_call_in_reward: bool = True,
        dedup_llm_call: bool = True,
        reward_match: RewardMatchPolicy | str = "first_occurrence",
        final_reward: float | None = None,
        _skip_empty_token_spans: bool = False,
    ) -> list[Triplet]:
        """One triplet per LLM call in this subtree, with rewards (see `agl.adapter.trajectory.to_trajectory`)."""
        from agl.adapter.trajectory import to_trajectory

        return to_trajectory(
            self,
            llm_call_match,
            agent_match,
            exclude_llm_call_in_reward,
            dedup_llm_call,
            reward_match,
            final_reward,
            _skip_empty_token_spans,
        )

    # -- building -------------------------------------------------------------------------------------------

    @classmethod
    def from_spans(cls, spans: Sequence[Span]) -> TraceTree:
        """Build the tree of `spans` from their parent ids.

        A parent id no span carries becomes a virtual node spanning its children's times; several top-level
        spans are gathered under a virtual root (`virtual-root`). Children are ordered by start time, then by
        their position in `spans`. A repeated span id keeps its first span; spans caught in a parent cycle are
        treated as top-level.

        Raises:
            ValueError: `spans` is empty.
        """
        if not spans:
            raise ValueError("spans must not be empty: a trace tree needs at least one span")
        nodes: dict[str, TraceTree] = {}
        order: dict[str, int] = {}
        for index, span in enumerate(spans):
            if span.span_id in nodes:
                logger.warning("Span id %r appears more than once in the trace; keeping the first", span.span_id)
                continue
            nodes[span.span_id] = cls(span.span_id, span)
            order[span.span_id] = index

        roots: list[str] = []
        orphans: dict[str, list[str]] = {}
        for span_id, node in nodes.items():
            parent_id = node.span.parent_id
            if parent_id is None or parent_id == span_id:
                roots.append(span_id)
            elif parent_id in nodes:
                nodes[parent_id].children.append(node)
            else:
                orphans.setdefault(parent_id, []).append(span_id)

        for parent_id, child_ids in orphans.items():
            children = [nodes[child_id] for child_id in child_ids]
            nodes[parent_id] = _virtual_node(parent_id, VIRTUAL_SPAN_NAME, children)
            order[parent_id] = min(order[child_id] for child_id in child_ids)
            roots.append(parent_id)

        _break_cycles(nodes, roots, order)
        for node in nodes.values():
            node.children.sort(key=lambda child: (_time_order(child), order[child.id]))

        top = sorted((nodes[root_id] for root_id in roots), key=lambda node: (_time_order(node), order[node.id]))
        if len(top) == 1:
            return top[0]
        root_id = VIRTUAL_ROOT_ID
        while root_id in nodes:
            root_id += "_"
        return _virtual_node(root_id, VIRTUAL_ROOT_ID, top)

    # -- repair ---------------------------------------------------------------------------------------------

    def repair_hierarchy(self) -> None:
        """Re-parent top-level spans under the tightest span that encloses them in time.

        Spans recorded by different instrumentations often lose their parent and hang directly under the root.
        Starting from the root (descending through single-child chains, such as a session span wrapping the
        whole trace), each child is moved under the node of the tree, other than that root, whose time range
        strictly contains the child's with the least slack. A lone remaining child is left in place.
        """
        top = self
        while len(top.children) == 1:
            top = top.children[0]
        for candidate in list(top.children):
            if len(top.children) <= 1:
                break
            parent = _tightest_enclosing(top, candidate)
            if parent is not None:
                top.children.remove(candidate)
                parent.add_child(candidate)


def _time_order(node: TraceTree) -> float:
    start = node.start_time
    return start if start is not None else math.inf


def _virtual_node(node_id: str, name: str, children: list[TraceTree]) -> TraceTree:
    first = children[0].span
    starts = [child.start_time for child in children if child.start_time is not None]
    ends = [child.end_time for child in children if child.end_time is not None]
    span = Span(
        rollout_id=first.rollout_id,
        attempt_id=first.attempt_id,
        sequence_id=first.sequence_id,
        trace_id=first.trace_id,
        span_id=node_id,
        parent_id=None,
        name=name,
        start_time=min(starts) if starts else None,
        end_time=max(ends) if ends else None,
    )
    return TraceTree(node_id, span, list(children), virtual=True)


def _reachable(nodes: dict[str, TraceTree], roots: list[str]) -> set[str]:
    seen: set[str] = set()
    for root_id in roots:
        seen.update(node.id for node in nodes[root_id].traverse())
    return seen


def _break_cycles(nodes: dict[str, TraceTree], roots: list[str], order: dict[str, int]) -> None:
    reached = _reachable(nodes, roots)
    for span_id in sorted(nodes, key=order.__getitem__):
        if span_id in reached:
            continue
        node = nodes[span_id]
        logger.warning("Span %r is part of a parent-id cycle; treating it as top-level", span_id)
        parent_id = node.span.parent_id
        if parent_id is not None and parent_id in nodes:
            nodes[parent_id].children.remove(node)
        roots.append(span_id)
        reached.update(n.id for n in node.traverse())


def _tightest_enclosing(top: TraceTree, candidate: TraceTree) -> TraceTree | None:
    start, end = candidate.start_time, candidate.end_time
    if start is None or end is None:
        return None
    excluded = {node.id for node in candidate.traverse()}
    best: TraceTree | None = None
    best_slack = math.inf
    for node in top.traverse():
        if node is top or node.id in excluded or node.start_time is None or node.end_time is None:
            continue
        if node.start_time <= start and node.end_time >= end:
            slack = (start - node.start_time) + (node.end_time - end)
            if 0 < slack < best_slack:
                best, best_slack = node, slack
    return best
