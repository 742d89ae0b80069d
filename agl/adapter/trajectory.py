"""A trace tree read as a trajectory: its LLM calls, their rewards and the triplets they make.

These are the functions behind `TraceTree.to_trajectory`, `find_llm_calls`, `match_rewards` and friends (the
method names Agent Lightning users call); `TracerTraceToTriplet` applies the same rules.
"""

from __future__ import annotations

import logging

from agl.adapter.tree import TraceTree
from agl.adapter.triplet import (
    DEFAULT_LLM_CALL_MATCH,
    CallScope,
    LlmCallMatcher,
    RewardMatchPolicy,
    TracerTraceToTriplet,
    assign_rewards,
)
from agl.types.core import Triplet
from agl.types.tracer import Span

logger = logging.getLogger(__name__)

__all__ = ["find_llm_calls", "match_rewards", "span_to_triplet", "to_trajectory"]


def _policy(reward_match: RewardMatchPolicy | str) -> RewardMatchPolicy:
    try:
        return RewardMatchPolicy(reward_match)
    except ValueError:
        choices = ", ".join(repr(p.value) for p in RewardMatchPolicy)
        raise ValueError(f"reward_match must be one of {choices}, got {reward_match!r}") from None


def find_llm_calls(
    tree: TraceTree,
    *,
    llm_call_match: str,
    agent_match: str | None,
    within_matching_subtree: str | None = None,
    within_reward: bool | None = None,
    within_llm_call: bool | None = None,
    existing_llm_call_response_ids: set[str] | None = None,
) -> list[tuple[TraceTree, str]]:
    """The LLM calls under `tree` with the name of the agent each ran under.

    The `within_*` arguments say what `tree`'s ancestors imply: `within_matching_subtree` is the enclosing
    accepted agent's name (None: not inside an accepted agent, so only calls under a matching agent span count;
    "*" accepts calls outside any agent); `within_reward` None ignores reward spans, False skips calls under
    them, True means `tree` is already under one; `within_llm_call` None keeps nested calls without a response
    id, False skips them, True means `tree` is inside a call. Response ids found are added to
    `existing_llm_call_response_ids`; calls whose id is already there are skipped.
    """
    matcher = LlmCallMatcher(
        llm_call_match,
        agent_match,
        exclude_llm_call_in_reward=within_reward is not None,
        dedup_llm_call=within_llm_call is not None,
    )
    start = CallScope(
        eligible=within_matching_subtree is not None,
        agent_name=within_matching_subtree,
        in_reward=within_reward is True,
        in_llm_call=within_llm_call is True,
    )
    calls = matcher.find(tree, start=start, seen_response_ids=existing_llm_call_response_ids)
    return [(call.node, call.agent_name if call.agent_name is not None else "") for call in calls]


def match_rewards(
    tree: TraceTree, reward_match: RewardMatchPolicy | str, llm_calls: list[TraceTree]
) -> dict[str, float | None]:
    """The reward each of `llm_calls` receives (None: no reward), keyed by span id, under policy `reward_match`."""
    rewards = assign_rewards(tree, llm_calls, _policy(reward_match))
    return {call.id: rewards.get(call.id) for call in llm_calls}


def span_to_triplet(span: Span, agent_name: str | None) -> Triplet:
    """The triplet (without reward) `TracerTraceToTriplet` makes of one LLM-call span."""
    return TracerTraceToTriplet().span_to_triplet(span, agent_name)


def to_trajectory(
    tree: TraceTree,
    llm_call_match: str = DEFAULT_LLM_CALL_MATCH,
    agent_match: str | None = None,
    exclude_llm_call_in_reward: bool = True,
    dedup_llm_call: bool = True,
    reward_match: RewardMatchPolicy | str = RewardMatchPolicy.FIRST_OCCURRENCE,
    final_reward: float | None = None,
    skip_empty_token_spans: bool = False,
) -> list[Triplet]:
    """One triplet per LLM call of `tree` in call order, with matched rewards; `final_reward`, when given,
    replaces the last triplet's reward.
    """
    matcher = LlmCallMatcher(llm_call_match, agent_match, exclude_llm_call_in_reward, dedup_llm_call)
    kept: list[tuple[TraceTree, Triplet]] = []
    for call in matcher.find(tree):
        triplet = span_to_triplet(call.node.span, call.agent_name)
        if skip_empty_token_spans and not (triplet.prompt["token_ids"] and triplet.response["token_ids"]):
            logger.warning("Skipping LLM call %r: prompt or response token ids not recorded", call.node.id)
            continue
        kept.append((call.node, triplet))
    rewards = assign_rewards(tree, [node for node, _ in kept], _policy(reward_match))
    triplets = [triplet.model_copy(update={"reward": rewards.get(node.id)}) for node, triplet in kept]
    if final_reward is not None and triplets:
        triplets[-1] = triplets[-1].model_copy(update={"reward": final_reward})
    return triplets
