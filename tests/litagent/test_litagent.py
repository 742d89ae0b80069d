"""LitAgent and the function decorators: signature checks, argument injection, sync/async."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from agl.litagent import FunctionalLitAgent, LitAgent, llm_rollout, prompt_rollout, rollout
from agl.types import LLM, Attempt, AttemptedRollout, PromptTemplate, ProxyLLM, Rollout

ATTEMPTED = AttemptedRollout(
    rollout_id="ro-1",
    start_time=1.0,
    attempt=Attempt(rollout_id="ro-1", attempt_id="at-1", sequence_id=1, start_time=1),
)
RESOURCES: dict[str, Any] = {
    "prompt": PromptTemplate(template="Q: {q}", engine="f-string"),
    "llm": ProxyLLM(endpoint="http://proxy:4000/v1", model="m"),
    "other": LLM(endpoint="http://other/v1", model="n"),
}


def test_llm_rollout_injects_first_llm_stripped_of_the_proxy_and_the_rollout() -> None:
    seen: dict[str, Any] = {}

    @llm_rollout
    def agent(task: str, llm: LLM, rollout: Rollout) -> float:
        seen.update(task=task, llm=llm, rollout=rollout)
        return 1.0

    assert isinstance(agent, FunctionalLitAgent) and not agent.is_async()
    assert agent.rollout("t", RESOURCES, ATTEMPTED) == 1.0
    assert seen["task"] == "t" and seen["rollout"] is ATTEMPTED
    assert type(seen["llm"]) is LLM
    assert seen["llm"].get_base_url() == "http://proxy:4000/rollout/ro-1/attempt/at-1/v1"


def test_llm_rollout_keeps_the_proxy_when_asked() -> None:
    @llm_rollout(strip_proxy=False)
    def agent(task: str, llm: LLM) -> Any:
        return llm

    assert isinstance(agent.rollout("t", RESOURCES, ATTEMPTED), ProxyLLM)


def test_proxy_needs_an_attempted_rollout() -> None:
    @llm_rollout
    def agent(task: str, llm: LLM) -> None:
        return None

    with pytest.raises(ValueError, match="attempted rollout"):
        agent.rollout("t", RESOURCES, Rollout(rollout_id="r", start_time=1))


def test_missing_resources_are_clear_errors() -> None:
    @rollout
    def needs_llm(task: str, llm: LLM) -> None:
        return None

    @rollout
    def needs_prompt(task: str, prompt_template: PromptTemplate) -> None:
        return None

    with pytest.raises(ValueError, match="No LLM resource found"):
        needs_llm.rollout("t", {}, ATTEMPTED)
    with pytest.raises(ValueError, match="No PromptTemplate resource found"):
        needs_prompt.rollout("t", {"llm": LLM(endpoint="e", model="m")}, ATTEMPTED)


def test_prompt_rollout_injects_the_first_template() -> None:
    @prompt_rollout()
    def agent(task: dict[str, str], prompt_template: PromptTemplate) -> str:
        return prompt_template.format(**task)

    assert agent.rollout({"q": "2+2"}, RESOURCES, ATTEMPTED) == "Q: 2+2"


async def test_async_functions_make_async_agents() -> None:
    @rollout
    async def agent(task: int, llm: LLM) -> float:
        return float(task)

    assert agent.is_async()
    assert await agent.rollout_async(3, RESOURCES, ATTEMPTED) == 3.0
    with pytest.raises(RuntimeError, match="is async"):
        agent.rollout(3, RESOURCES, ATTEMPTED)


def test_decorated_agent_is_still_callable_as_the_function() -> None:
    @rollout
    def agent(task: int, llm: Any) -> int:
        return task * 2

    assert agent(4, llm=None) == 8 and agent.__name__ == "agent"


@pytest.mark.parametrize(
    ("decorator", "message"),
    [(llm_rollout, "first parameter must be named 'task'"), (prompt_rollout, "first parameter must be named 'task'")],
)
def test_first_parameter_must_be_task(decorator: Any, message: str) -> None:
    def agent(question: str, llm: Any, prompt_template: Any) -> None:
        return None

    with pytest.raises(ValueError, match=message):
        decorator(agent)


def test_rollout_rejects_unknown_signatures() -> None:
    def agent(task: str, model: Any) -> None:
        return None

    with pytest.raises(NotImplementedError, match="does not match any known agent patterns"):
        rollout(agent)
    with pytest.raises(ValueError, match="needs a parameter named 'llm'"):
        llm_rollout(agent)


class _Sync(LitAgent[int]):
    def rollout(self, task: int, resources: Any, rollout: Rollout) -> float:
        return 1.0


class _Async(LitAgent[int]):
    async def validation_rollout_async(self, task: int, resources: Any, rollout: Rollout) -> float:
        return 2.0


def test_is_async_follows_the_overridden_methods() -> None:
    assert not _Sync().is_async()
    assert _Async().is_async()


def test_owner_references_are_weak_and_checked() -> None:
    agent = _Sync()
    with pytest.raises(ValueError, match="no trainer"):
        agent.get_trainer()
    with pytest.raises(ValueError, match="no runner"):
        agent.get_runner()

    class Owner:
        tracer = "the-tracer"

    owner = Owner()
    agent.set_trainer(owner)
    assert agent.trainer is owner and agent.tracer == "the-tracer"
    del owner
    gc.collect()
    with pytest.raises(ValueError, match="no trainer"):
        agent.get_trainer()


def test_base_rollout_must_be_overridden() -> None:
    with pytest.raises(NotImplementedError, match="must override"):
        LitAgent[int]().rollout(1, {}, ATTEMPTED)


class _Owner:
    """Stands in for a trainer / runner: something an agent refers to weakly."""

    def __init__(self, name: str) -> None:
        self.name = name


def test_an_agent_pickles_with_its_owners_and_refers_to_them_weakly_again() -> None:
    # A Ray actor or a spawned runner process receives the agent inside the trainer's runner bundle.
    import pickle
    import weakref

    class_agent = _PicklableAgent()
    trainer, runner = _Owner("trainer"), _Owner("runner")
    class_agent.set_trainer(trainer)
    class_agent.set_runner(runner)  # type: ignore[arg-type]
    copy_agent, copy_trainer = pickle.loads(pickle.dumps((class_agent, trainer)))
    assert copy_agent.get_trainer() is copy_trainer and copy_trainer.name == "trainer"
    assert isinstance(copy_agent._trainer_ref, weakref.ReferenceType)
    # The runner travelled only with the agent: nothing keeps the copy alive, so the agent has no runner there.
    with pytest.raises(ValueError, match="no runner"):
        copy_agent.get_runner()
    assert class_agent.get_trainer() is trainer  # the original is untouched
    fresh = pickle.loads(pickle.dumps(_PicklableAgent()))
    with pytest.raises(ValueError, match="no trainer"):
        fresh.get_trainer()


class _PicklableAgent(LitAgent[int]):
    def rollout(self, task: int, resources: Any, rollout: Any) -> float:
        return float(task)
