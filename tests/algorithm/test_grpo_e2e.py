"""A short GRPO run through the whole loop: cs strategy with runner processes, LLM proxy, model server, store.

A tiny random model (built locally) keeps it fast; the reward depends on what the model sampled, so groups
disagree and GRPO has a signal to follow.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from agl.algorithm.grpo import GRPO, GRPOConfig  # noqa: E402
from agl.litagent import llm_rollout  # noqa: E402
from agl.llm.server import ModelServer  # noqa: E402
from agl.store.memory import InMemoryLightningStore  # noqa: E402
from agl.tracer.dummy import DummyTracer  # noqa: E402
from agl.trainer import Trainer  # noqa: E402
from agl.types import LLM  # noqa: E402
from tests.llm.tiny_model import tiny_model, tiny_tokenizer  # noqa: E402


@llm_rollout
async def parity_agent(task: dict[str, Any], llm: LLM) -> float:
    """Reward 1 when the reply has an even number of characters (random for a random model: groups disagree)."""
    import httpx

    params = llm.sampling_parameters
    body = {
        "model": llm.model,
        "messages": [{"role": "user", "content": task["prompt"]}],
        "temperature": params["temperature"],
        "max_tokens": params["max_tokens"],
        "stream": task["stream"],
    }
    async with httpx.AsyncClient(base_url=llm.get_base_url(), timeout=60) as client:
        if task["stream"]:  # half the tasks stream: the proxy must record token ids for those too
            reply = ""
            async with client.stream("POST", "/chat/completions", json=body) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        for choice in json.loads(line[len("data: ") :]).get("choices", []):
                            reply += (choice.get("delta") or {}).get("content") or ""
        else:
            response = await client.post("/chat/completions", json=body)
            response.raise_for_status()
            reply = response.json()["choices"][0]["message"]["content"] or ""
    return 1.0 if len(reply) % 2 == 0 else 0.0


def test_grpo_trains_through_runner_processes_and_the_proxy() -> None:
    tokenizer = tiny_tokenizer()
    model = tiny_model(len(tokenizer))
    before = copy.deepcopy(model.state_dict())
    server = ModelServer(model, tokenizer, model_name="tiny", max_batch_size=16)
    config = GRPOConfig(
        steps=3, tasks_per_step=2, group_size=4, max_new_tokens=6, temperature=1.0, eval_every=1, eval_size=4,
        micro_batch_size=4, learning_rate=1e-3, seed=3, rollout_timeout=120,
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
    tasks = [{"prompt": f"What is {i} + {i}?", "stream": i % 2 == 1} for i in range(12)]
    try:
        trainer.fit(parity_agent, tasks[:8], val_dataset=tasks[8:])
    finally:
        server.stop()

    train_logs = [h for h in algorithm.history if h.kind == "train"]
    eval_logs = [h for h in algorithm.history if h.kind == "eval"]
    assert [h.step for h in train_logs] == [1, 2, 3]
    assert all(h.samples == 8 for h in train_logs)  # every rollout gave one (prompt, response, logprobs) sample
    assert [h.step for h in eval_logs] == [0, 1, 2, 3] and all(h.samples == 4 for h in eval_logs)
    updated = [h for h in train_logs if h.updated]
    assert updated, "no step had reward variance to learn from"
    assert server.weights_version == updated[-1].weights_version == f"step-{updated[-1].step}"
    assert all(h.loss is not None and h.loss == h.loss for h in updated)  # finite, not NaN
    changed = any(not torch.equal(before[k], v) for k, v in server.model.state_dict().items())
    assert changed, "the optimizer step did not change the served model"

    import asyncio

    async def proxy_spans() -> list[Any]:
        rollouts = await store.query_rollouts()
        spans = []
        for rollout in rollouts:
            spans += [s for s in await store.query_spans(rollout.rollout_id) if s.name == "openai.chat.completion"]
        return spans

    spans = asyncio.run(proxy_spans())
    assert len(spans) == 3 * 8 + 4 * 4
    assert all(s.attributes.get("prompt_token_ids") and s.attributes.get("response_token_ids") for s in spans)
    assert all(len(s.attributes["response_logprobs"]) == len(s.attributes["response_token_ids"]) for s in spans)
    streamed = [s for s in spans if s.attributes.get("agentlightning.llm_proxy.stream")]
    assert streamed and len(streamed) < len(spans)  # both kinds of call were made, and all carry token ids


def test_grpo_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="group_size"):
        GRPOConfig(group_size=1)
    with pytest.raises(ValueError, match="learning_rate"):
        GRPOConfig(learning_rate=0)


def _fit(algorithm: GRPO, tasks: list[dict[str, Any]]) -> None:
    trainer = Trainer(
        algorithm=algorithm,
        n_runners=1,
        strategy={"type": "cs", "server_port": 0, "graceful_timeout": 5.0},
        tracer=DummyTracer(),
        runner={"type": "agl.runner.agent.LitAgentRunner", "concurrency": 8, "poll_interval": 0.2},
    )
    trainer.fit(parity_agent, tasks[:8], val_dataset=tasks[8:])


@pytest.mark.slow  # two runs with runner processes: ~1 min on a quiet machine, several under load
def test_grpo_ends_on_its_best_checkpoint_and_resumes_from_it(tmp_path: Any) -> None:
    from agl.algorithm.grpo_checkpoint import find_checkpoint, read_state
    from agl.llm.server import load_state_dict_file

    tokenizer = tiny_tokenizer()
    server = ModelServer(tiny_model(len(tokenizer)), tokenizer, model_name="tiny", max_batch_size=16)
    config = GRPOConfig(
        steps=4, tasks_per_step=2, group_size=4, max_new_tokens=6, temperature=1.0, eval_every=1, eval_size=6,
        micro_batch_size=8, learning_rate=3e-3, seed=5, rollout_timeout=120, keep_best=True, early_stop_patience=2,
        lr_schedule="cosine", checkpoint_dir=str(tmp_path),
    )  # fmt: skip
    algorithm = GRPO(config, server=server, checkpoint_extra={"note": "e2e"})
    tasks = [{"prompt": f"Say {i} words.", "stream": False} for i in range(14)]
    try:
        _fit(algorithm, tasks)
        served = {k: v.clone() for k, v in server.model.state_dict().items()}
    finally:
        server.stop()

    evals = [h for h in algorithm.history if h.kind == "eval"]
    scored = [h for h in evals if not h.extra.get("final")]
    best = max(scored, key=lambda h: h.reward_mean)  # the first of equal scores is the one kept
    assert algorithm.best == (best.reward_mean, best.step, best.weights_version)
    assert algorithm.stop_reason in ("steps", "early stop")
    if algorithm.stop_reason == "early stop":
        assert [h.reward_mean for h in scored[-2:]] <= [best.reward_mean] * 2 and len(scored) < 5
    final = evals[-1]
    assert final.weights_version == best.weights_version and final.reward_mean == best.reward_mean
    restored = bool(final.extra.get("final"))
    assert restored == (best is not scored[-1]) == (tmp_path / "last").is_dir()

    checkpoint = find_checkpoint(tmp_path)
    state = read_state(checkpoint)
    assert (state.step, state.score, state.weights_version) == (best.step, best.reward_mean, best.weights_version)
    assert state.extra == {"note": "e2e"} and state.config["keep_best"] is True
    saved = load_state_dict_file(checkpoint)
    assert all(torch.equal(served[name], tensor) for name, tensor in saved.items())  # it ended on best/

    resumed = GRPO(
        GRPOConfig(**{**state.config, "steps": state.step + 2, "early_stop_patience": 0}),
        model=str(checkpoint),
        resume=state,
    )
    try:
        _fit(resumed, tasks)
    finally:
        resumed.server.stop()
    new = resumed.history[len(state.history) :]
    assert new[0].kind == "eval" and new[0].step == state.step and new[0].weights_version == state.weights_version
    assert new[0].reward_mean == state.score  # the reloaded checkpoint scores what it scored when saved
    assert [h.step for h in new if h.kind == "train"] == [state.step + 1, state.step + 2]
