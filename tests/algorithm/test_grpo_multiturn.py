"""GRPO over multi-turn trajectories: an agent that calls the model twice per rollout (a tool round trip), run
through runner processes, the LLM proxy and the model server, gives GRPO one sample per call."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from agl.adapter.triplet import LlmProxyTraceToTriplet  # noqa: E402
from agl.algorithm.grpo import GRPO, GRPOConfig  # noqa: E402
from agl.algorithm.grpo_math import group_advantages, trajectory_advantages  # noqa: E402
from agl.litagent import llm_rollout  # noqa: E402
from agl.llm.server import ModelServer  # noqa: E402
from agl.store.memory import InMemoryLightningStore  # noqa: E402
from agl.tracer.dummy import DummyTracer  # noqa: E402
from agl.trainer import Trainer  # noqa: E402
from agl.types import LLM  # noqa: E402
from tests.llm.tiny_model import tiny_model, tiny_tokenizer  # noqa: E402

TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


def test_each_trajectory_counts_once_in_its_group() -> None:
    # Group "a": rollout r1 (reward 1) made three calls, r2 (reward 0) one. Per rollout: +1 and -1.
    rewards, groups = [1.0, 1.0, 1.0, 0.0, 2.0, 2.0], ["a", "a", "a", "a", "b", "b"]
    adv = trajectory_advantages(rewards, groups, ["r1", "r1", "r1", "r2", "r3", "r4"])
    assert torch.allclose(adv, torch.tensor([1.0, 1.0, 1.0, -1.0, 0.0, 0.0]), atol=1e-4)
    # Per sample, r1's three calls would pull the mean up: its advantage would shrink to 0.577.
    assert float(group_advantages(rewards, groups)[0]) < 0.6
    single = trajectory_advantages([1.0, 0.0, 0.5], ["g", "g", "g"], ["x", "y", "z"])
    assert torch.allclose(single, group_advantages([1.0, 0.0, 0.5], ["g", "g", "g"]))
    with pytest.raises(ValueError, match="different rewards"):
        trajectory_advantages([1.0, 0.0], ["g", "g"], ["x", "x"])


@llm_rollout
async def two_turn_agent(task: dict[str, Any], llm: LLM) -> float:
    """Ask with a tool offered, send a tool result back, ask again; reward: parity of the final reply's length."""
    import httpx

    params = llm.sampling_parameters
    messages: list[dict[str, Any]] = [{"role": "user", "content": task["prompt"]}]
    async with httpx.AsyncClient(base_url=llm.get_base_url(), timeout=60) as client:
        for turn in range(2):
            body = {"model": llm.model, "messages": messages, "tools": [TOOL], **params}
            response = await client.post("/chat/completions", json=body)
            response.raise_for_status()
            reply = response.json()["choices"][0]["message"]
            if turn == 0:
                call = {"id": "c0", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
                messages += [{"role": "assistant", "content": reply["content"], "tool_calls": [call]},
                             {"role": "tool", "tool_call_id": "c0", "content": json.dumps({"value": 7})}]  # fmt: skip
    return 1.0 if len(reply["content"] or "") % 2 == 0 else 0.0


def test_grpo_trains_on_every_call_of_multi_turn_rollouts() -> None:
    tokenizer = tiny_tokenizer()
    model = tiny_model(len(tokenizer))
    model.config.max_position_embeddings = 1024  # the tool instructions make the prompts longer than 256 tokens
    server = ModelServer(model, tokenizer, model_name="tiny", max_batch_size=16)
    config = GRPOConfig(
        steps=2, tasks_per_step=2, group_size=4, max_new_tokens=6, temperature=1.0, eval_every=0, eval_size=0,
        micro_batch_size=8, learning_rate=1e-3, seed=5, rollout_timeout=120,
    )  # fmt: skip
    algorithm = GRPO(config, server=server)
    store = InMemoryLightningStore()
    trainer = Trainer(
        algorithm=algorithm,
        store=store,
        n_runners=2,
        strategy={"type": "cs", "server_port": 0, "graceful_timeout": 5.0},
        tracer=DummyTracer(),
        runner={"type": "agl.runner.agent.LitAgentRunner", "concurrency": 4, "poll_interval": 0.2},
    )
    try:
        trainer.fit(two_turn_agent, [{"prompt": f"Look up {i}."} for i in range(6)])
    finally:
        server.stop()

    train_logs = [h for h in algorithm.history if h.kind == "train"]
    assert [h.samples for h in train_logs] == [16, 16]  # 8 rollouts a step, two calls each
    assert any(h.updated for h in train_logs), "no step had reward variance to learn from"

    async def triplets_per_rollout() -> list[list[Any]]:
        return [
            LlmProxyTraceToTriplet().adapt(list(await store.query_spans(r.rollout_id, "latest")))
            for r in await store.query_rollouts()
        ]

    for first, second in asyncio.run(triplets_per_rollout()):
        # The second call's prompt is the first call's prompt, its answer and the tool result (conditioning only).
        before, after = (tokenizer.decode(t.prompt["token_ids"]) for t in (first, second))
        assert after.startswith(before) and '<|im_start|>tool\n{"value": 7}<|im_end|>' in after[len(before) :]
        assert first.response["token_ids"] and second.response["token_ids"]
        assert len(second.response["logprobs"]) == len(second.response["token_ids"])
        assert first.reward is None and second.reward is not None  # the reward span follows the last call
