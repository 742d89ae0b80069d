"""A short APO search through the whole loop against AGL's model server as the critic.

The critic is a tiny random model built locally, served over real HTTP on 127.0.0.1; runner threads execute a
prompt-sensitive agent (longer prompts score higher), so scores differ between prompts and the selection can be
checked against every score the run measured. The run with SmolLM2-135M is tests/examples/test_apo_example.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from agl.algorithm.apo import APO, BEST_RESOURCES_ID
from agl.store.memory import InMemoryLightningStore
from agl.tracer.dummy import DummyTracer
from agl.trainer import Trainer
from agl.types.resources import PromptTemplate
from tests.algorithm.test_apo import length_agent

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def critic() -> Iterator[Any]:
    from agl.llm.server import ModelServer
    from tests.llm.tiny_model import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    server = ModelServer(
        tiny_model(len(tokenizer), max_positions=4096), tokenizer, model_name="tiny-critic", max_batch_size=16
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_apo_searches_publishes_versions_and_keeps_the_best(critic: Any) -> None:
    store = InMemoryLightningStore()
    algorithm = APO(
        base_url=critic.base_url,
        gradient_model="tiny-critic",
        apply_edit_model="tiny-critic",
        beam_width=2,
        branch_factor=2,
        beam_rounds=2,
        gradient_batch_size=2,
        val_batch_size=4,
        critic_max_tokens=24,
        rollout_batch_timeout=120,
        seed=1,
    )
    seed = PromptTemplate(template="Add.", engine="f-string")
    trainer = Trainer(
        algorithm=algorithm,
        store=store,
        n_runners=2,
        tracer=DummyTracer(),
        strategy={"type": "shm", "main_thread": "algorithm"},
        runner={"type": "agl.runner.agent.LitAgentRunner", "concurrency": 4, "poll_interval": 0.2},
        initial_resources={"prompt_template": seed, "other": PromptTemplate(template="kept", engine="f-string")},
    )
    tasks = [{"threshold": t} for t in (2, 6, 10, 14, 18, 22, 26, -1)]
    trainer.fit(length_agent, tasks, val_dataset=tasks)

    report = algorithm.report()
    assert report["seed"]["template"] == "Add." and report["seed"]["full_score"] == 1 / 8
    # Every edit the critic produced is either a candidate or a rejection with its reason.
    assert len(algorithm.candidates) - 1 + len(algorithm.rejected) == 2 * 2 * 2
    full = [e for e in algorithm.history if e.scope == "full-val"]
    assert full[0].version == "v0"
    # The kept prompt is the one with the highest whole-validation score among those measured (ties: earliest).
    best_score = max(e.score for e in full)
    assert algorithm.best_score == best_score
    assert (
        algorithm.best is not None and algorithm.best.version == next(e for e in full if e.score == best_score).version
    )
    # Scores are the agent's real rewards: recompute each one from the prompt's length.
    by_version = {c.version: c for c in algorithm.candidates}
    for evaluation in full:
        text = by_version[evaluation.version].prompt_template.template
        expected = [None if t["threshold"] < 0 else float(len(text) > t["threshold"]) for t in tasks]
        assert evaluation.rewards == expected  # the failed rollout has no reward
        assert evaluation.score == sum(r or 0.0 for r in expected) / len(tasks)  # and counts 0
    assert len({e.version for e in full}) == len(full)  # a prompt is scored on the whole set once
    if len(algorithm.candidates) > 1:  # the random critic's replies are long, so some edit beats the 4-char seed
        assert algorithm.best.version != "v0" and best_score > 1 / 8
    assert algorithm.get_best_prompt() == algorithm.best.prompt_template

    async def snapshots() -> tuple[list[Any], Any, int]:
        resources = list(await store.query_resources(resources_id_contains="apo-"))
        latest = await store.get_latest_resources()
        val_rollouts = [r for r in await store.query_rollouts() if r.mode == "val"]
        versions = {c.resources_id: c.version for c in algorithm.candidates}
        assert all(r.metadata["apo_version"] == versions[r.resources_id] for r in val_rollouts)
        return resources, latest, len(val_rollouts)

    resources, latest, n_val = asyncio.run(snapshots())
    ids = {r.resources_id: r for r in resources}
    for candidate in algorithm.candidates:  # each prompt is its own snapshot, the other resources kept
        snapshot = ids[f"apo-{candidate.version}"]
        assert snapshot.resources["prompt_template"] == candidate.prompt_template
        assert snapshot.resources["other"].template == "kept"
    assert latest.resources_id == BEST_RESOURCES_ID
    assert latest.resources["prompt_template"] == algorithm.best.prompt_template
    val_batches = [e for e in algorithm.history if e.scope == "val-batch"]
    assert n_val == 8 * len(full) + 4 * len(val_batches)


def test_critic_chat_through_httpx_and_an_openai_client(critic: Any) -> None:
    from agl.algorithm.apo_chat import CriticChat, CriticError

    messages = [{"role": "user", "content": "Improve this prompt: Add."}]
    via_httpx = CriticChat(base_url=critic.base_url)
    text = asyncio.run(via_httpx.complete("tiny-critic", messages, temperature=0.0, max_tokens=6))
    assert isinstance(text, str) and text
    openai = pytest.importorskip("openai")

    async def with_client() -> str:
        async with openai.AsyncOpenAI(base_url=critic.base_url, api_key="local", max_retries=0) as client:
            return await CriticChat(client).complete("tiny-critic", messages, temperature=0.0, max_tokens=6)

    assert asyncio.run(with_client()) == text  # greedy: the same reply either way
    with pytest.raises(CriticError, match="answered 400"):
        asyncio.run(via_httpx.complete("tiny-critic", messages, temperature=0.0, max_tokens=10**6))
