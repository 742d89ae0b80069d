"""TraceTree read as a trajectory (Agent Lightning's method names) agrees with TracerTraceToTriplet."""

from __future__ import annotations

from agl.adapter import TracerTraceToTriplet, TraceTree
from agl.adapter.messages import TraceToMessages, group_genai_dict
from agl.adapter.triplet import Transition

from .spans import Trace


def _multi_turn() -> Trace:
    trace = Trace()
    trace.add("root", "agent.run", 0.0, 20.0, **{"agent.name": "solver"})
    trace.add("turn1", "turn", 0.5, 10.0, parent="root")
    trace.llm("c1", 1.0, 3.0, parent="turn1", response_id="r1")
    trace.llm("c2", 4.0, 6.0, parent="turn1", response_id="r2")
    trace.reward("rewA", 11.0, 0.5, parent="root")
    trace.llm("c3", 12.0, 14.0, parent="root", response_id="r3")
    trace.reward("rewB", 15.0, 1.0, parent="root")
    return trace


def test_to_trajectory_matches_the_adapter_and_final_reward_replaces_the_last() -> None:
    spans = _multi_turn().spans
    tree = TraceTree.from_spans(spans)
    expected = TracerTraceToTriplet(repair_hierarchy=False).adapt(spans)
    got = tree.to_trajectory()
    assert [t.model_dump() for t in got] == [t.model_dump() for t in expected]
    assert [t.reward for t in got] == [None, 0.5, 1.0]
    assert [t.reward for t in tree.to_trajectory(final_reward=9.0)] == [None, 0.5, 9.0]
    assert [t.reward for t in tree.to_trajectory(reward_match="first_sibling")] == [None, None, 1.0]


def test_find_llm_calls_and_match_rewards() -> None:
    tree = TraceTree.from_spans(_multi_turn().spans)
    calls = tree.find_llm_calls(
        llm_call_match=r"openai\.chat\.completion", agent_match=None, within_matching_subtree="*", within_reward=False
    )
    assert [(node.id, agent) for node, agent in calls] == [("c1", "solver"), ("c2", "solver"), ("c3", "solver")]
    # Without an enclosing accepted agent (within_matching_subtree=None), only calls under a matching agent count.
    assert len(tree.find_llm_calls(llm_call_match="openai", agent_match="nobody")) == 0
    seen: set[str] = {"r2"}
    calls = tree.find_llm_calls(
        llm_call_match="openai", agent_match="sol", within_matching_subtree=None, existing_llm_call_response_ids=seen
    )
    assert [node.id for node, _ in calls] == ["c1", "c3"] and seen == {"r1", "r2", "r3"}
    rewards = tree.match_rewards("first_occurrence", [node for node, _ in calls])
    assert rewards == {"c1": 0.5, "c3": 1.0}


def test_reward_nodes_json_and_image_urls() -> None:
    tree = TraceTree.from_spans(_multi_turn().spans)
    reward = tree.find_id("rewA")
    assert (
        reward is not None
        and reward.is_reward_span()
        and reward.maybe_reward_dict() == {"type": "reward", "value": 0.5}
    )
    call = tree.find_id("c1")
    assert call is not None and not call.is_reward_span() and call.maybe_reward_dict() == {}
    data = tree.to_json()
    assert data["id"] == "root" and data["span"]["name"] == "agent.run" and len(data["children"]) == 4
    prompt = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}]
    assert tree.extract_prompt_image_urls(prompt) == ["http://x/a.png"]
    triplet = tree.span_to_triplet(call.span, "solver")
    assert triplet.metadata["agent_name"] == "solver" and triplet.reward is None


def test_message_helpers() -> None:
    flat = {"gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": "hi", "other": 1}
    assert group_genai_dict(flat, "gen_ai.prompt") == [{"role": "user", "content": "hi"}]
    assert group_genai_dict(flat, "missing") == {}
    trace = Trace()
    completion = trace.add("c", "openai.chat.completion", 0.0, 2.0)
    trace.add("t", "tool", 0.5, 1.0, parent="c", **{"tool.name": "calc", "tool.parameters": "{}"})
    trace.add("u", "other", 1.0, 1.5, parent="c")
    calls = list(TraceToMessages().get_tool_calls(completion, trace.spans))
    assert calls == [{"name": "calc", "parameters": "{}"}]
    step = Transition(state=[1], action=[2], response_id=None, agent_name="a", reward=None)
    assert step.action == [2]
