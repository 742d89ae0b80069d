"""APO: its checks on edits and arguments, its critic client, and a run whose critic cannot be reached.

The search itself, against a real critic, is in test_apo_loop.py.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

import agl
from agl.algorithm.apo import APO, PromptCandidate
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
    with pytest.raises(ValueError, match="POML"):
        APO(base_url="http://127.0.0.1:1/v1", _poml_trace=True)
    with pytest.raises(TypeError, match=r"chat\.completions\.create"):
        APO(object())
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/")
    assert APO().chat.base_url == "http://127.0.0.1:9/v1"
    assert isinstance(agl.APO(api_key="k"), APO)


def test_critic_error_names_an_unreachable_endpoint() -> None:
    chat = CriticChat(base_url=_unreachable_url(), timeout=5)
    with pytest.raises(CriticError, match="could not be reached"):
        asyncio.run(chat.complete("m", [{"role": "user", "content": "hi"}], temperature=0.0, max_tokens=4))


def test_edits_that_break_placeholders_repeat_or_are_empty_are_rejected() -> None:
    algorithm = APO(base_url="http://127.0.0.1:9/v1")
    parent = PromptCandidate("v0", PromptTemplate(template="Add {a} and {b}.", engine="f-string"), "apo-v0")
    assert algorithm._check(parent, "Sum {b} and {a}, carefully.", set()) is None
    assert "placeholders" in (algorithm._check(parent, "Sum {a}.", set()) or "")
    assert "placeholders" in (algorithm._check(parent, "Sum {a}, {b} and {c}.", set()) or "")
    assert "unmatched brace" in (algorithm._check(parent, "Sum {a} and {b", set()) or "")
    assert "repeats" in (algorithm._check(parent, "Sum {a} {b}", {"Sum {a} {b}"}) or "")
    assert "empty" in (algorithm._check(parent, "", set()) or "")


def test_run_needs_both_datasets_and_a_prompt_template() -> None:
    algorithm = APO(base_url="http://127.0.0.1:9/v1")
    algorithm.set_store(InMemoryLightningStore())
    with pytest.raises(ValueError, match="val_dataset"):
        asyncio.run(algorithm.run(train_dataset=[1], val_dataset=[]))
    with pytest.raises(ValueError, match="PromptTemplate"):
        asyncio.run(algorithm.run(train_dataset=[1], val_dataset=[2]))


@agl.prompt_rollout
def length_agent(task: dict[str, int], prompt_template: PromptTemplate) -> float:
    """Reward 1 when the filled-in prompt is longer than the task's threshold: longer prompts score higher."""
    if task["threshold"] < 0:
        raise RuntimeError("this task always fails")
    agl.emit_message(f"prompt length {len(prompt_template.format())}")
    return 1.0 if len(prompt_template.format()) > task["threshold"] else 0.0


def _unreachable_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def test_a_round_whose_critic_calls_all_fail_fails_the_run() -> None:
    algorithm = APO(base_url=_unreachable_url(), beam_width=1, branch_factor=2, beam_rounds=1, val_batch_size=2)
    trainer = Trainer(
        algorithm=algorithm,
        n_runners=1,
        tracer=DummyTracer(),
        strategy={"type": "shm", "main_thread": "algorithm"},
        runner={"type": "agl.runner.agent.LitAgentRunner", "concurrency": 4, "poll_interval": 0.2},
        initial_resources={"prompt_template": PromptTemplate(template="Add.", engine="f-string")},
    )
    with pytest.raises(CriticError, match="could not be reached"):
        trainer.fit(length_agent, [{"threshold": 1}], val_dataset=[{"threshold": 3}])
    assert [e.scope for e in algorithm.history] == ["full-val", "train-batch", "train-batch"]
