"""APO: its checks on edits, its critic client, and a short search through the whole loop.

The search runs against AGL's model server (a tiny random model built locally, real HTTP on 127.0.0.1) as the
critic, with runner threads executing a prompt-sensitive agent, so the scores differ between prompts and the
selection can be checked against every score the run measured.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest

import agl
from agl.algorithm.apo import APO, BEST_RESOURCES_ID
from agl.algorithm.apo_chat import CriticChat, CriticError
from agl.algorithm.apo_prompts import RolloutOutcome, critique_messages, edit_messages, extract_template, placeholders
from agl.store.memory import InMemoryLightningStore
from agl.tracer.dummy import DummyTracer
from agl.trainer import Trainer
from agl.types.resources import PromptTemplate


def test_extract_template_reads_tags_fences_and_quotes() -> None:
    assert extract_template("Sure!\n<prompt>\nAdd {a} and {b}.\n</prompt>\nDone.") == "Add {a} and {b}."
    assert extract_template("<PROMPT>unterminated {a}") == "unterminated {a}"
    assert extract_template("```\nReply with a number.\n```") == "Reply with a number."
    assert extract_template('"Be brief."') == "Be brief."
    assert extract_template("   ") == ""


def test_placeholders_as_written_and_malformed_templates() -> None:
    assert placeholders("Add {a} and {b}, then {a} again", "f-string") == {"{a}", "{b}"}
    assert placeholders("no fields", "f-string") == frozenset()
    assert placeholders("broken {a", "f-string") is None
    assert placeholders("positional {}", "f-string") is None
    assert placeholders("Hi {{ name }} and {{user}}", "jinja") == {"{{ name }}", "{{ user }}"}


def test_critic_prompts_carry_the_template_outcomes_and_placeholders() -> None:
    outcome = RolloutOutcome(
        "ro-1",
        {"a": 2},
        "succeeded",
        0.0,
        [[{"role": "user", "content": "2+2"}, {"role": "assistant", "content": "5"}]],
    )
    text = critique_messages("Add {a}.", [outcome])[1]["content"]
    assert "Add {a}." in text and '{"a": 2}' in text and "reward: 0" in text and "assistant: 5" in text
    edit = edit_messages("Add {a}.", "Say 'only the number'.", ["{a}"])[1]["content"]
    assert "{a}" in edit and "only the number" in edit and "<prompt>" in edit


def test_constructor_checks_arguments_and_the_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        APO()
    with pytest.raises(ValueError, match="beam_width"):
        APO(base_url="http://127.0.0.1:1/v1", beam_width=0)
    with pytest.raises(ValueError, match="http://"):
        APO(base_url="127.0.0.1:1/v1")
    with pytest.raises(TypeError, match=r"chat\.completions\.create"):
        APO(object())
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/")
    assert APO().chat.base_url == "http://127.0.0.1:9/v1"
    assert isinstance(agl.APO(api_key="k"), APO)


def test_critic_error_names_an_unreachable_endpoint() -> None:
    with socket.socket() as sock:  # a port nothing listens on once the socket closes
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    chat = CriticChat(base_url=f"http://127.0.0.1:{port}/v1", timeout=5)
    with pytest.raises(CriticError, match="could not be reached"):
        asyncio.run(chat.complete("m", [{"role": "user", "content": "hi"}], temperature=0.0, max_tokens=4))


def test_run_needs_both_datasets_and_a_prompt_template() -> None:
    algorithm = APO(base_url="http://127.0.0.1:9/v1")
    algorithm.set_store(InMemoryLightningStore())
    with pytest.raises(ValueError, match="val_dataset"):
        asyncio.run(algorithm.run(train_dataset=[1], val_dataset=[]))
    with pytest.raises(ValueError, match="PromptTemplate"):
        asyncio.run(algorithm.run(train_dataset=[1], val_dataset=[2]))


# -- the search through the loop ---------------------------------------------------------------------------------

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


@agl.prompt_rollout
def length_agent(task: dict[str, int], prompt_template: PromptTemplate) -> float:
    """Reward 1 when the filled-in prompt is longer than the task's threshold: longer prompts score higher."""
    agl.emit_message(f"prompt length {len(prompt_template.format())}")
    return 1.0 if len(prompt_template.format()) > task["threshold"] else 0.0


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
    tasks = [{"threshold": t} for t in (2, 6, 10, 14, 18, 22, 26, 30)]
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
        assert evaluation.rewards == [1.0 if len(text) > t["threshold"] else 0.0 for t in tasks]
    if len(algorithm.candidates) > 1:  # the random critic's replies are long, so some edit beats the 4-char seed
        assert algorithm.best.version != "v0" and best_score > 1 / 8
    assert algorithm.get_best_prompt() == algorithm.best.prompt_template

    async def snapshots() -> tuple[list[Any], Any, int]:
        resources = list(await store.query_resources(resources_id_contains="apo-"))
        latest = await store.get_latest_resources()
        val_rollouts = [r for r in await store.query_rollouts() if r.mode == "val"]
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
