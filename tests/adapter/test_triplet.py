"""TracerTraceToTriplet: span tree, LLM-call matching, reward attribution and the triplet shape."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

import agl
from agl.adapter import RewardMatchPolicy, TracerTraceToTriplet, TraceTree
from agl.adapter.tree import agent_name_of

from .spans import Trace


def _rewards(triplets: list[agl.Triplet]) -> list[float | None]:
    return [t.reward for t in triplets]


def _response_ids(triplets: list[agl.Triplet]) -> list[str | None]:
    return [t.metadata["response_id"] for t in triplets]


# -- one call, full triplet shape ----------------------------------------------------------------------------


def test_single_llm_call_with_reward_gives_the_full_triplet() -> None:
    trace = Trace()
    trace.add("root", "rollout", 0.0, 10.0, **{"agent.name": "solver"})
    trace.llm(
        "call",
        1.0,
        2.0,
        parent="root",
        response_id="chatcmpl-1",
        prompt_ids=[1, 2, 3],
        response_ids=[4, 5],
        **{
            "gen_ai.request.temperature": 0.7,
            "gen_ai.prompt.0.role": "system",
            "gen_ai.prompt.0.content": "be brief",
            "gen_ai.prompt.1.role": "user",
            "gen_ai.prompt.1.content": json.dumps(
                [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "http://x/a.png"}},
                ]
            ),
            "gen_ai.completion.0.role": "assistant",
            "gen_ai.completion.0.content": "a cat",
            "gen_ai.response.model": "qwen-7b",
            "logprobs.content": json.dumps([{"token": "a", "logprob": -0.1}]),
        },
    )
    trace.reward("rew", 3.0, 1.0, parent="root")

    [triplet] = TracerTraceToTriplet().adapt(trace.spans)

    assert triplet.reward == 1.0
    assert triplet.prompt["token_ids"] == [1, 2, 3]
    assert triplet.prompt["image_urls"] == ["http://x/a.png"]
    assert [m["role"] for m in triplet.prompt["raw_content"]] == ["system", "user"]
    assert triplet.response == {
        "token_ids": [4, 5],
        "raw_content": [{"role": "assistant", "content": "a cat"}],
        "logprobs": [{"token": "a", "logprob": -0.1}],
    }
    assert triplet.metadata == {
        "request": {"model": "qwen", "temperature": 0.7},
        "response": {"id": "chatcmpl-1", "model": "qwen-7b"},
        "response_id": "chatcmpl-1",
        "agent_name": "solver",
    }


def test_calling_the_adapter_is_adapt_and_empty_trace_gives_no_triplets() -> None:
    trace = Trace()
    trace.add("root", "rollout", 0.0, 5.0)
    trace.llm("call", 1.0, 2.0, parent="root", response_id="r1")
    adapter = TracerTraceToTriplet()
    assert adapter(trace.spans) == adapter.adapt(trace.spans)
    assert len(adapter(trace.spans)) == 1
    assert adapter([]) == []


def test_agl_proxy_logprob_list_is_kept_as_response_logprobs() -> None:
    trace = Trace()
    trace.llm("call", 1.0, 2.0, parent=None, prompt_ids=[1], response_ids=[2, 3], response_logprobs=[-0.5, -0.25])
    [triplet] = TracerTraceToTriplet().adapt(trace.spans)
    assert triplet.response["logprobs"] == [-0.5, -0.25]


# -- multi-turn rewards under both policies -------------------------------------------------------------------


def _multi_turn() -> Trace:
    """An agent whose first turn (two calls) is rewarded outside the turn span, then a third call."""
    trace = Trace()
    trace.add("root", "agent.run", 0.0, 20.0, **{"agent.name": "solver"})
    trace.add("turn1", "turn", 0.5, 10.0, parent="root")
    trace.llm("c1", 1.0, 3.0, parent="turn1", response_id="r1")
    trace.llm("c2", 4.0, 6.0, parent="turn1", response_id="r2")
    trace.reward("rewA", 11.0, 0.5, parent="root")
    trace.llm("c3", 12.0, 14.0, parent="root", response_id="r3")
    trace.reward("rewB", 15.0, 1.0, parent="root")
    return trace


def test_first_occurrence_gives_each_reward_to_the_latest_call_that_ended_before_it() -> None:
    triplets = TracerTraceToTriplet(reward_match=RewardMatchPolicy.FIRST_OCCURRENCE).adapt(_multi_turn().spans)
    assert _response_ids(triplets) == ["r1", "r2", "r3"]
    assert _rewards(triplets) == [None, 0.5, 1.0]


def test_first_sibling_only_rewards_calls_that_are_siblings_of_the_reward() -> None:
    triplets = TracerTraceToTriplet(reward_match="first_sibling").adapt(_multi_turn().spans)
    assert _response_ids(triplets) == ["r1", "r2", "r3"]
    assert _rewards(triplets) == [None, None, 1.0]


def test_first_sibling_rewards_a_call_inside_the_same_turn() -> None:
    trace = _multi_turn()
    trace.reward("rewC", 3.5, 0.25, parent="turn1")
    triplets = TracerTraceToTriplet(reward_match=RewardMatchPolicy.FIRST_SIBLING).adapt(trace.spans)
    assert _rewards(triplets) == [0.25, None, 1.0]


def test_a_reward_skips_calls_still_running_and_already_rewarded_calls() -> None:
    trace = Trace()
    trace.add("root", "rollout", 0.0, 20.0)
    trace.llm("c1", 1.0, 2.0, parent="root", response_id="r1")
    trace.llm("c2", 3.0, 9.0, parent="root", response_id="r2")  # still running when the first reward starts
    trace.reward("rew1", 5.0, 0.1, parent="root")
    trace.reward("rew2", 10.0, 0.2, parent="root")
    trace.reward("rew3", 11.0, 0.3, parent="root")  # nothing left to reward
    triplets = TracerTraceToTriplet().adapt(trace.spans)
    assert _rewards(triplets) == [0.1, 0.2]


def test_first_occurrence_crosses_branches_of_the_tree() -> None:
    trace = Trace()
    trace.add("root", "rollout", 0.0, 20.0)
    trace.add("grader", "grader", 0.0, 10.0, parent="root")
    trace.reward("rew", 8.0, 0.5, parent="grader")  # visited before the call in depth-first order
    trace.add("worker", "worker", 1.0, 5.0, parent="root")
    trace.llm("c1", 2.0, 3.0, parent="worker", response_id="r1")
    triplets = TracerTraceToTriplet(repair_hierarchy=False).adapt(trace.spans)
    assert _rewards(triplets) == [0.5]


def test_reward_order_follows_time_not_list_order() -> None:
    trace = _multi_turn()
    shuffled = list(reversed(trace.spans))
    triplets = TracerTraceToTriplet().adapt(shuffled)
    assert _response_ids(triplets) == ["r1", "r2", "r3"]
    assert _rewards(triplets) == [None, 0.5, 1.0]


# -- tree building ---------------------------------------------------------------------------------------------


def test_missing_parent_becomes_a_virtual_node_spanning_its_children() -> None:
    trace = Trace()
    trace.llm("c1", 2.0, 3.0, parent="lost-session", response_id="r1")
    trace.llm("c2", 4.0, 6.0, parent="lost-session", response_id="r2")
    tree = TraceTree.from_spans(trace.spans)
    assert tree.virtual and tree.id == "lost-session"
    assert (tree.start_time, tree.end_time) == (2.0, 6.0)
    assert [child.id for child in tree.children] == ["c1", "c2"]
    assert _response_ids(TracerTraceToTriplet().adapt(trace.spans)) == ["r1", "r2"]


def test_several_roots_are_gathered_under_a_virtual_root() -> None:
    trace = Trace()
    trace.add("late", "rollout-b", 10.0, 20.0)
    trace.add("early", "rollout-a", 0.0, 5.0)
    trace.llm("c2", 11.0, 12.0, parent="late", response_id="r2")
    trace.llm("c1", 1.0, 2.0, parent="early", response_id="r1")
    trace.llm("c3", 6.0, 7.0, parent="gone", response_id="r3")
    tree = TraceTree.from_spans(trace.spans)
    assert tree.id == "virtual-root" and tree.virtual
    assert [child.id for child in tree.children] == ["early", "gone", "late"]
    assert (tree.start_time, tree.end_time) == (0.0, 20.0)
    assert _response_ids(TracerTraceToTriplet(repair_hierarchy=False).adapt(trace.spans)) == ["r1", "r3", "r2"]


def test_tree_from_no_spans_is_an_error() -> None:
    with pytest.raises(ValueError, match="spans"):
        TraceTree.from_spans([])


def test_parent_cycle_and_repeated_span_ids_do_not_lose_spans() -> None:
    trace = Trace()
    trace.add("a", "loop-a", 0.0, 5.0, parent="b")
    trace.add("b", "loop-b", 1.0, 4.0, parent="a")
    trace.llm("c", 2.0, 3.0, parent="b", response_id="r1")
    trace.llm("c", 2.0, 3.0, parent="b", response_id="r1")
    tree = TraceTree.from_spans(trace.spans)
    assert sorted(node.id for node in tree.traverse()) == ["a", "b", "c"]
    assert len(TracerTraceToTriplet().adapt(trace.spans)) == 1


def _stray_llm_call() -> Trace:
    """An agent span and an LLM call it made that lost its parent and hangs under the session root."""
    trace = Trace()
    trace.add("session", "session", 0.0, 30.0)
    trace.add("agent", "agent", 1.0, 10.0, parent="session", **{"agent.name": "coder"})
    trace.add("tool", "tool.run", 2.0, 8.0, parent="agent")
    trace.llm("call", 3.0, 4.0, parent="session", response_id="r1")
    trace.llm("other", 20.0, 21.0, parent="session", response_id="r2")
    return trace


def test_repair_hierarchy_moves_stray_spans_under_the_tightest_enclosing_span() -> None:
    trace = _stray_llm_call()
    repaired = TracerTraceToTriplet(repair_hierarchy=True).trace_tree(trace.spans)
    assert repaired.names_tuple() == (
        "session",
        [
            ("agent", [("tool.run", [("openai.chat.completion", [])])]),
            ("openai.chat.completion", []),
        ],
    )
    triplets = TracerTraceToTriplet(repair_hierarchy=True, agent_match="coder").adapt(trace.spans)
    assert _response_ids(triplets) == ["r1"]
    assert triplets[0].metadata["agent_name"] == "coder"


def test_repair_picks_the_tightest_enclosing_span_whatever_the_order() -> None:
    trace = Trace()
    trace.add("root", "session", 0.0, 30.0)
    trace.add("tight", "tight", 0.5, 4.5, parent="root")
    trace.add("loose", "loose", 1.0, 10.0, parent="root")
    trace.llm("call", 3.0, 4.0, parent="root", response_id="r1")
    tree = TracerTraceToTriplet().trace_tree(trace.spans)
    assert [child.id for child in tree.children] == ["tight", "loose"]
    assert [child.id for child in tree.children[0].children] == ["call"]


def test_without_repair_the_stray_call_is_outside_the_agent() -> None:
    trace = _stray_llm_call()
    tree = TracerTraceToTriplet(repair_hierarchy=False).trace_tree(trace.spans)
    assert [child.id for child in tree.children] == ["agent", "call", "other"]
    assert TracerTraceToTriplet(repair_hierarchy=False, agent_match="coder").adapt(trace.spans) == []
    triplets = TracerTraceToTriplet(repair_hierarchy=False).adapt(trace.spans)
    assert [t.metadata["agent_name"] for t in triplets] == [None, None]


def test_repair_descends_through_a_single_child_wrapper() -> None:
    trace = _stray_llm_call()
    trace.spans[0].parent_id = "wrapper"
    trace.add("wrapper", "run_one.session", 0.0, 31.0)
    tree = TracerTraceToTriplet().trace_tree(trace.spans)
    assert tree.id == "wrapper"
    assert tree.find_id("tool") is not None
    assert [child.id for child in tree.find_id("tool").children] == ["call"]  # type: ignore[union-attr]


# -- matching ---------------------------------------------------------------------------------------------------


def _two_agents() -> Trace:
    trace = Trace()
    trace.add("root", "rollout", 0.0, 30.0)
    trace.add("planner", "agent", 1.0, 10.0, parent="root", **{"agent.name": "planner"})
    trace.llm("p1", 2.0, 3.0, parent="planner", response_id="rp")
    trace.add("coder", "agent", 11.0, 29.0, parent="root", **{"agent.name": "coder"})
    trace.llm("k1", 12.0, 13.0, parent="coder", response_id="rk1")
    trace.add("helper", "agent", 14.0, 20.0, parent="coder", **{"agent.name": "helper"})
    trace.llm("h1", 15.0, 16.0, parent="helper", response_id="rh")
    trace.add("coder2", "agent", 17.0, 19.0, parent="helper", **{"agent.name": "coder-inner"})
    trace.llm("k2", 17.5, 18.0, parent="coder2", response_id="rk2")
    return trace


def test_agent_match_keeps_only_calls_inside_matching_agents() -> None:
    triplets = TracerTraceToTriplet(agent_match=r"^coder").adapt(_two_agents().spans)
    assert _response_ids(triplets) == ["rk1", "rk2"]
    assert [t.metadata["agent_name"] for t in triplets] == ["coder", "coder-inner"]


def test_without_agent_match_every_call_is_kept_with_its_nearest_agent() -> None:
    triplets = TracerTraceToTriplet().adapt(_two_agents().spans)
    assert _response_ids(triplets) == ["rp", "rk1", "rh", "rk2"]
    assert [t.metadata["agent_name"] for t in triplets] == ["planner", "coder", "helper", "coder-inner"]


def test_llm_call_match_is_a_regex_search_on_the_span_name() -> None:
    trace = Trace()
    trace.add("root", "rollout", 0.0, 10.0)
    trace.llm("a", 1.0, 2.0, parent="root", response_id="ra", name="openai.chat.completion")
    trace.llm("b", 3.0, 4.0, parent="root", response_id="rb", name="langchain.chat_model.llm")
    assert _response_ids(TracerTraceToTriplet().adapt(trace.spans)) == ["ra"]
    both = TracerTraceToTriplet(llm_call_match=r"openai\.chat\.completion|chat_model\.llm").adapt(trace.spans)
    assert _response_ids(both) == ["ra", "rb"]


@pytest.mark.parametrize(
    ("name", "attributes", "expected"),
    [
        ("x", {"agent.name": "a1"}, "a1"),
        ("x", {"agentops.span.kind": "agent", "operation.name": "a2"}, "a2"),
        ("x", {"agentops.span.kind": "task", "operation.name": "a2"}, None),
        ("x", {"recipient_agent_type": "a3"}, "a3"),
        ("x", {"langchain.chain.type": "a4"}, "a4"),
        ("x", {"executor.id": "a5"}, "a5"),
        ("x", {"type": "agent", "agentlightning.operation.input.name": "a6"}, "a6"),
        ("x", {"type": "tool", "agentlightning.operation.input.name": "a6"}, None),
        ("langchain.Chain.graph", {"lc_name": "a7"}, "a7"),
        ("other", {"lc_name": "a7"}, None),
        ("x", {}, None),
    ],
)
def test_agent_name_sources(name: str, attributes: dict[str, Any], expected: str | None) -> None:
    trace = Trace()
    span = trace.add("s", name, 0.0, 1.0, **attributes)
    assert agent_name_of(span) == expected


def test_calls_are_deduplicated_by_response_id() -> None:
    trace = Trace()
    trace.add("root", "rollout", 0.0, 10.0)
    trace.llm("outer", 1.0, 5.0, parent="root", response_id="same", prompt_ids=[1], response_ids=[2])
    trace.llm("inner", 2.0, 4.0, parent="outer", response_id="same")  # same call seen by a 2nd instrumentation
    trace.llm("copy", 1.0, 5.0, parent="root", response_id="same")  # and recorded again at top level
    trace.llm("nested-anon", 2.5, 3.0, parent="outer")  # nested, no response id → skipped
    trace.llm("nested-new", 3.0, 3.5, parent="outer", response_id="new")  # nested but a different response
    trace.llm("anon", 6.0, 7.0, parent="root")  # top level without response id → kept
    triplets = TracerTraceToTriplet(repair_hierarchy=False).adapt(trace.spans)
    assert _response_ids(triplets) == ["same", "new", None]
    assert triplets[0].prompt["token_ids"] == [1]


def _judged_trace() -> Trace:
    trace = Trace()
    trace.add("root", "rollout", 0.0, 20.0)
    trace.llm("policy", 1.0, 2.0, parent="root", response_id="r-policy")
    # An LLM judge computing the reward inside the reward span.
    trace.add(
        "judge", "reward_fn", 3.0, 6.0, parent="root", **{"agentops.task.output": '{"type": "reward", "value": 0.75}'}
    )
    trace.llm("judge-call", 4.0, 5.0, parent="judge", response_id="r-judge")
    return trace


def test_llm_calls_inside_reward_spans_are_excluded_by_default() -> None:
    triplets = TracerTraceToTriplet(repair_hierarchy=False).adapt(_judged_trace().spans)
    assert _response_ids(triplets) == ["r-policy"]
    assert _rewards(triplets) == [0.75]


def test_llm_calls_inside_reward_spans_can_be_included() -> None:
    triplets = TracerTraceToTriplet(repair_hierarchy=False, exclude_llm_call_in_reward=False).adapt(
        _judged_trace().spans
    )
    assert _response_ids(triplets) == ["r-policy", "r-judge"]
    assert _rewards(triplets) == [0.75, None]


def test_reward_operation_span_also_excludes_its_llm_calls() -> None:
    trace = Trace()
    trace.add("root", "rollout", 0.0, 20.0)
    trace.add(
        "op",
        "agentlightning.operation",
        3.0,
        6.0,
        parent="root",
        **{"agentlightning.operation.name": "agentlightning.reward"},
    )
    trace.llm("judge-call", 4.0, 5.0, parent="op", response_id="r-judge")
    assert TracerTraceToTriplet().adapt(trace.spans) == []


def test_skip_empty_token_spans_drops_calls_without_token_ids_before_rewarding() -> None:
    trace = Trace()
    trace.add("root", "rollout", 0.0, 20.0)
    trace.llm("good", 1.0, 2.0, parent="root", response_id="r1", prompt_ids=[1], response_ids=[2])
    trace.llm("anon", 3.0, 4.0, parent="root", response_id="r2", prompt_ids=[1])
    trace.reward("rew", 5.0, 1.0, parent="root")
    kept = TracerTraceToTriplet(_skip_empty_token_spans=True).adapt(trace.spans)
    assert _response_ids(kept) == ["r1"] and _rewards(kept) == [1.0]
    everything = TracerTraceToTriplet().adapt(trace.spans)
    assert _rewards(everything) == [None, 1.0]
    assert everything[1].response["token_ids"] == []


# -- inputs -----------------------------------------------------------------------------------------------------


def _readable(span_id: int, parent_id: int | None, name: str, start_s: float, end_s: float, **attrs: Any) -> Any:
    """An object shaped like an OpenTelemetry SDK ReadableSpan (no SDK needed)."""
    ctx = SimpleNamespace(trace_id=1, span_id=span_id, is_remote=False, trace_state=None)
    parent = SimpleNamespace(trace_id=1, span_id=parent_id, is_remote=False, trace_state=None) if parent_id else None
    return SimpleNamespace(
        name=name,
        context=ctx,
        get_span_context=lambda: ctx,
        parent=parent,
        status=SimpleNamespace(status_code=SimpleNamespace(name="OK"), description=None),
        attributes=attrs,
        events=(),
        links=(),
        start_time=int(start_s * 1e9),
        end_time=int(end_s * 1e9),
        resource=None,
    )


def test_readable_spans_are_accepted() -> None:
    spans = [
        _readable(1, None, "rollout", 0.0, 10.0, **{"agent.name": "solver"}),
        _readable(2, 1, "openai.chat.completion", 1.0, 2.0, **{"gen_ai.response.id": "r1", "prompt_token_ids": (7, 8)}),
        _readable(3, 1, "agentlightning.annotation", 3.0, 3.1, **{"agentlightning.reward.0.value": 2.0}),
    ]
    [triplet] = TracerTraceToTriplet().adapt(spans)
    assert triplet.prompt["token_ids"] == [7, 8]
    assert triplet.reward == 2.0
    assert triplet.metadata["agent_name"] == "solver"


def test_bad_inputs_name_the_argument() -> None:
    with pytest.raises(TypeError, match="source"):
        TracerTraceToTriplet().adapt("not spans")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"source\[1\]"):
        TracerTraceToTriplet().adapt([Trace().add("a", "x", 0.0, 1.0), {"name": "dict"}])
    with pytest.raises(ValueError, match="llm_call_match"):
        TracerTraceToTriplet(llm_call_match="(unclosed")
    with pytest.raises(TypeError, match="agent_match"):
        TracerTraceToTriplet(agent_match=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reward_match"):
        TracerTraceToTriplet(reward_match="last")


def test_public_names_are_exported_lazily() -> None:
    assert agl.TracerTraceToTriplet is TracerTraceToTriplet
    assert agl.RewardMatchPolicy.FIRST_SIBLING.value == "first_sibling"
    assert agl.LlmProxyTraceToTriplet.__name__ == "LlmProxyTraceToTriplet"
    assert agl.TraceToMessages.__name__ == "TraceToMessages"
    assert issubclass(agl.TracerTraceToTriplet, agl.TraceAdapter)
