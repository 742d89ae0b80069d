"""`APO`: automatic prompt optimisation by beam search over prompt templates with textual gradients.

One round, top to bottom (`APO.run`):
1. pick `beam_width` parents from the beam (all of it, repeated, while it is smaller);
2. for each parent, `branch_factor` times: run the agent with the parent on `gradient_batch_size` training tasks,
   ask the critic model (`gradient_model`) what in the prompt explains the rewards (the textual gradient), then
   ask `apply_edit_model` for an edited prompt that acts on the critique. An edit that drops or adds a
   placeholder, or repeats a known prompt, is rejected;
3. run every candidate (the beam and the new children) on one batch of `val_batch_size` validation tasks and keep
   the `beam_width` best;
4. score the beam's leader on the whole validation set; the best prompt is the one with the highest such score
   seen (the seed's included, when `run_initial_validation`).
Every prompt is published to the store as its own resources snapshot (`apo-v0` for the seed, `apo-v1`, ... for
the edits, the other initial resources kept), and rollouts name the snapshot they run with, so the agent receives
the candidate as its `PromptTemplate` through the normal runner loop and its reward comes back as a span. At the
end the best prompt is published again as `apo-best` (the latest resources) and reported (`report()`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from agl.adapter.messages import TraceToMessages
from agl.algorithm.apo_chat import CriticChat, CriticError
from agl.algorithm.apo_prompts import (
    RolloutOutcome,
    critique_messages,
    edit_messages,
    extract_template,
    placeholders,
)
from agl.algorithm.base import Algorithm
from agl.algorithm.utils import batch_iter_over_dataset
from agl.emitter.message import get_message_value
from agl.types.core import EnqueueRolloutRequest, RolloutMode
from agl.types.resources import NamedResources, PromptTemplate
from agl.types.reward import find_final_reward

__all__ = ["APO", "APOEvaluation", "PromptCandidate"]

logger = logging.getLogger(__name__)

BEST_RESOURCES_ID = "apo-best"
"""The resources id under which the best prompt is published when the run ends."""


@dataclass
class PromptCandidate:
    """A prompt template APO has tried: where it came from and how it scored."""

    version: str
    """`v0` for the seed, then `v1`, `v2`, ... in order of creation."""
    prompt_template: PromptTemplate
    resources_id: str
    round: int = 0
    parent: str | None = None
    critique: str | None = None
    batch_score: float | None = None
    """The score on the latest validation batch it ran on."""
    full_score: float | None = None
    """The score on the whole validation set, once measured."""


@dataclass
class APOEvaluation:
    """One scoring of a prompt: on a validation batch, the whole validation set, or a gradient batch."""

    version: str
    round: int
    scope: Literal["full-val", "val-batch", "train-batch"]
    score: float
    rewards: list[float | None]
    seconds: float


@dataclass
class _Child:
    parent: PromptCandidate
    outcomes: list[RolloutOutcome] = field(default_factory=list)


class APO(Algorithm):
    """Optimise the agent's `PromptTemplate` resource by beam search with textual gradients from a critic model.

    The seed prompt is the first `PromptTemplate` of the trainer's `initial_resources`; `run(train_dataset,
    val_dataset)` needs both datasets (gradients come from training tasks, selection from validation tasks).

    Args:
        async_openai_client: an `openai.AsyncOpenAI` (or alike) client for the critic calls. None: call
            `base_url`/`api_key`, else `OPENAI_BASE_URL`/`OPENAI_API_KEY`, with httpx.
        gradient_model: the model that critiques a prompt from its rollouts.
        apply_edit_model: the model that rewrites a prompt from a critique.
        diversity_temperature: the sampling temperature of both critic calls.
        gradient_batch_size: training tasks run per critique.
        val_batch_size: validation tasks each candidate runs on per round.
        beam_width: prompts kept per round (and parents expanded per round).
        branch_factor: children made from each parent per round.
        beam_rounds: rounds of search.
        rollout_batch_timeout: seconds to wait for a batch of rollouts; unfinished ones score 0.
        run_initial_validation: score the seed on the whole validation set first (else it competes only on batches).
        base_url: the critic endpoint (instead of `OPENAI_BASE_URL`).
        api_key: the critic key (instead of `OPENAI_API_KEY`).
        critic_max_tokens: completion limit of each critic call (None: the endpoint's default).
        seed: seeds the choice of parents and the order of tasks.
        on_log: called with each `APOEvaluation` as it is made.
    """

    def __init__(
        self,
        async_openai_client: Any = None,
        *,
        gradient_model: str = "gpt-5-mini",
        apply_edit_model: str = "gpt-4.1-mini",
        diversity_temperature: float = 1.0,
        gradient_batch_size: int = 4,
        val_batch_size: int = 16,
        beam_width: int = 4,
        branch_factor: int = 4,
        beam_rounds: int = 3,
        rollout_batch_timeout: float = 3600.0,
        run_initial_validation: bool = True,
        _poml_trace: bool = False,
        base_url: str | None = None,
        api_key: str | None = None,
        critic_max_tokens: int | None = None,
        seed: int | None = None,
        on_log: Callable[[APOEvaluation], None] | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("gradient_batch_size", gradient_batch_size),
            ("val_batch_size", val_batch_size),
            ("beam_width", beam_width),
            ("branch_factor", branch_factor),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"APO({name}=...) must be an integer of at least 1, got {value!r}")
        if isinstance(beam_rounds, bool) or not isinstance(beam_rounds, int) or beam_rounds < 0:
            raise ValueError(f"APO(beam_rounds=...) must be an integer of at least 0, got {beam_rounds!r}")
        if not rollout_batch_timeout > 0:
            raise ValueError(f"APO(rollout_batch_timeout=...) must be positive, got {rollout_batch_timeout!r}")
        if not 0 <= diversity_temperature <= 2:
            raise ValueError(f"APO(diversity_temperature=...) must be in [0, 2], got {diversity_temperature!r}")
        if critic_max_tokens is not None and critic_max_tokens < 1:
            raise ValueError(f"APO(critic_max_tokens=...) must be at least 1 or None, got {critic_max_tokens!r}")
        if _poml_trace:
            raise ValueError("APO(_poml_trace=True) is not supported: AGL's APO does not render its prompts with POML")
        self.chat = CriticChat(async_openai_client, base_url=base_url, api_key=api_key)
        self.async_openai_client = async_openai_client
        self.gradient_model = gradient_model
        self.apply_edit_model = apply_edit_model
        self.diversity_temperature = diversity_temperature
        self.gradient_batch_size = gradient_batch_size
        self.val_batch_size = val_batch_size
        self.beam_width = beam_width
        self.branch_factor = branch_factor
        self.beam_rounds = beam_rounds
        self.rollout_batch_timeout = rollout_batch_timeout
        self.run_initial_validation = run_initial_validation
        self.critic_max_tokens = critic_max_tokens
        self.on_log = on_log
        self._rng = random.Random(seed)
        self._seed = seed
        self.candidates: list[PromptCandidate] = []
        """Every prompt tried, in order of creation (the seed first)."""
        self.history: list[APOEvaluation] = []
        """Every scoring, in order."""
        self.rejected: list[dict[str, Any]] = []
        """Edits that were not kept, each with its parent, round, text and reason."""
        self.best: PromptCandidate | None = None
        self._messages = TraceToMessages()
        self._resource_name = ""
        self._val: list[Any] = []

    # -- public helpers ---------------------------------------------------------------------------------------
    def get_seed_prompt_template(self) -> tuple[str, PromptTemplate]:
        """The name and value of the first `PromptTemplate` in the initial resources (ValueError if none)."""
        resources = self.get_initial_resources()
        if resources is None:
            raise ValueError(
                "APO needs initial resources holding a PromptTemplate: pass initial_resources={'prompt_template': "
                "agl.PromptTemplate(template=..., engine='f-string')} to the Trainer"
            )
        for name, resource in resources.items():
            if isinstance(resource, PromptTemplate):
                return name, resource
        raise ValueError(
            f"APO found no PromptTemplate in the initial resources (got {sorted(resources) or 'none'}): add one, "
            "e.g. 'prompt_template': agl.PromptTemplate(template=..., engine='f-string')"
        )

    def get_best_prompt(self) -> PromptTemplate:
        """The prompt with the highest whole-validation score so far (ValueError before `run`)."""
        if self.best is None:
            raise ValueError("APO has no best prompt yet: run it first (Trainer.fit)")
        return self.best.prompt_template

    @property
    def best_score(self) -> float | None:
        """The best prompt's whole-validation score (None when it was never scored on the whole set)."""
        return self.best.full_score if self.best is not None else None

    def report(self) -> dict[str, Any]:
        """The run as JSON-ready data: the seed, the best prompt, every candidate, scoring and rejected edit."""
        seed = self.candidates[0] if self.candidates else None
        return {
            "seed": _describe(seed),
            "best": _describe(self.best),
            "candidates": [_describe(c) for c in self.candidates],
            "evaluations": [asdict(e) for e in self.history],
            "rejected": list(self.rejected),
            "settings": {
                "gradient_model": self.gradient_model,
                "apply_edit_model": self.apply_edit_model,
                "diversity_temperature": self.diversity_temperature,
                "gradient_batch_size": self.gradient_batch_size,
                "val_batch_size": self.val_batch_size,
                "beam_width": self.beam_width,
                "branch_factor": self.branch_factor,
                "beam_rounds": self.beam_rounds,
                "seed": self._seed,
            },
        }

    # -- the run ----------------------------------------------------------------------------------------------
    async def run(self, train_dataset: Any = None, val_dataset: Any = None) -> None:
        """Search `beam_rounds` rounds; gradients from `train_dataset`, selection on `val_dataset`."""
        for name, dataset in (("train_dataset", train_dataset), ("val_dataset", val_dataset)):
            if dataset is None or len(dataset) == 0:
                raise ValueError(
                    f"APO.run() needs a non-empty {name} (training tasks give the critiques, validation tasks "
                    "choose the prompts)"
                )
        proxy = self.get_llm_proxy()
        started_proxy = proxy is not None and not proxy.is_running()
        if started_proxy:
            await proxy.start()
        try:
            await self._search(list(train_dataset), list(val_dataset))
        finally:
            if started_proxy:
                await proxy.stop()

    async def _search(self, train: list[Any], val: list[Any]) -> None:
        resource_name, seed_template = self.get_seed_prompt_template()
        self._resource_name, self._val = resource_name, val
        self.candidates, self.history, self.rejected = [], [], []
        seed = await self._new_candidate(seed_template, round_=0)
        self.best = seed
        if self.run_initial_validation:
            await self._score_full(seed, round_=0)
        grad_batches = batch_iter_over_dataset(train, self.gradient_batch_size, seed=self._rng.randrange(2**31))
        val_batches = batch_iter_over_dataset(val, self.val_batch_size, seed=self._rng.randrange(2**31))
        beam = [seed]
        for round_ in range(1, self.beam_rounds + 1):
            children = await self._expand(beam, grad_batches, round_)
            beam = await self._select([*beam, *children], next(val_batches), round_)
            leader = beam[0]
            if leader.full_score is None:
                await self._score_full(leader, round_)
            assert leader.full_score is not None
            if self.best.full_score is None or leader.full_score > self.best.full_score:
                logger.info("APO round %d: new best %s (%.3f)", round_, leader.version, leader.full_score)
                self.best = leader
        await self.get_store().update_resources(BEST_RESOURCES_ID, self._resources(self.best.prompt_template))
        logger.info(
            "APO done: best prompt %s, validation score %s, of %d candidates",
            self.best.version,
            self.best.full_score,
            len(self.candidates),
        )

    # -- one round --------------------------------------------------------------------------------------------
    def _parents(self, beam: Sequence[PromptCandidate]) -> list[PromptCandidate]:
        if len(beam) < self.beam_width:
            return [beam[i % len(beam)] for i in range(self.beam_width)]
        return self._rng.sample(list(beam), self.beam_width)

    async def _expand(
        self, beam: Sequence[PromptCandidate], grad_batches: Iterator[list[Any]], round_: int
    ) -> list[PromptCandidate]:
        """Run each parent on gradient batches and turn critiques into edited children."""
        children = [_Child(parent) for parent in self._parents(beam) for _ in range(self.branch_factor)]
        batches = [next(grad_batches) for _ in children]
        started = time.monotonic()
        outcomes = await self._rollouts(
            [(task, child.parent) for child, batch in zip(children, batches, strict=True) for task in batch], "train"
        )
        seconds = time.monotonic() - started
        offset = 0
        for child, batch in zip(children, batches, strict=True):
            child.outcomes = outcomes[offset : offset + len(batch)]
            offset += len(batch)
            self._record(child.parent.version, round_, "train-batch", child.outcomes, seconds)
        results = await asyncio.gather(*(self._edit(child, round_) for child in children), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        for error in errors:
            if not isinstance(error, CriticError):
                raise error
        if errors and len(errors) == len(results):
            raise errors[0]  # not one critic call worked: the endpoint or model is wrong, not one bad reply
        new: list[PromptCandidate] = []
        known = {c.prompt_template.template for c in self.candidates}
        for child, result in zip(children, results, strict=True):
            if isinstance(result, BaseException):
                self._reject(child.parent, round_, None, f"critic call failed: {result}")
                continue
            text, critique = result
            reason = self._check(child.parent, text, known)
            if reason is not None:
                self._reject(child.parent, round_, text, reason, critique)
                continue
            known.add(text)
            template = PromptTemplate(template=text, engine=child.parent.prompt_template.engine)
            new.append(await self._new_candidate(template, round_, parent=child.parent, critique=critique))
        logger.info("APO round %d: %d new prompts of %d edits", round_, len(new), len(children))
        return new

    async def _edit(self, child: _Child, round_: int) -> tuple[str, str]:
        """The textual gradient of the parent on the child's outcomes, then the edit it suggests."""
        parent = child.parent.prompt_template
        critique = await self.chat.complete(
            self.gradient_model,
            critique_messages(parent.template, child.outcomes),
            temperature=self.diversity_temperature,
            max_tokens=self.critic_max_tokens,
        )
        required = sorted(placeholders(parent.template, parent.engine) or ())
        reply = await self.chat.complete(
            self.apply_edit_model,
            edit_messages(parent.template, critique, required),
            temperature=self.diversity_temperature,
            max_tokens=self.critic_max_tokens,
        )
        return extract_template(reply), critique

    def _check(self, parent: PromptCandidate, text: str, known: set[str]) -> str | None:
        """Why the edited `text` cannot be a candidate, or None when it can."""
        if not text:
            return "the edit was empty"
        if text in known:
            return "the edit repeats a prompt already tried"
        engine = parent.prompt_template.engine
        want, got = placeholders(parent.prompt_template.template, engine), placeholders(text, engine)
        if got is None:
            return "the edit is not a valid template (unmatched brace)"
        if want is not None and got != want:
            return f"the edit's placeholders {sorted(got)} differ from the parent's {sorted(want)}"
        return None

    async def _select(
        self, candidates: Sequence[PromptCandidate], batch: list[Any], round_: int
    ) -> list[PromptCandidate]:
        """Score every candidate on one validation batch; the best `beam_width` (ties: older first) survive."""
        started = time.monotonic()
        outcomes = await self._rollouts([(task, c) for c in candidates for task in batch], "val")
        seconds = time.monotonic() - started
        for i, candidate in enumerate(candidates):
            mine = outcomes[i * len(batch) : (i + 1) * len(batch)]
            candidate.batch_score = self._record(candidate.version, round_, "val-batch", mine, seconds)
        ranked = sorted(candidates, key=lambda c: -(c.batch_score or 0.0))
        beam = ranked[: self.beam_width]
        logger.info("APO round %d: beam %s", round_, ", ".join(f"{c.version}={c.batch_score:.3f}" for c in beam))
        return beam

    async def _score_full(self, candidate: PromptCandidate, round_: int) -> None:
        started = time.monotonic()
        outcomes = await self._rollouts([(task, candidate) for task in self._val], "val")
        candidate.full_score = self._record(candidate.version, round_, "full-val", outcomes, time.monotonic() - started)

    # -- plumbing ---------------------------------------------------------------------------------------------
    def _resources(self, template: PromptTemplate) -> NamedResources:
        """The initial resources with the prompt template replaced (the agent keeps its LLM and the rest)."""
        resources: NamedResources = dict(self.get_initial_resources() or {})
        resources[self._resource_name] = template
        return resources

    async def _new_candidate(
        self,
        template: PromptTemplate,
        round_: int,
        *,
        parent: PromptCandidate | None = None,
        critique: str | None = None,
    ) -> PromptCandidate:
        version = f"v{len(self.candidates)}"
        update = await self.get_store().update_resources(f"apo-{version}", self._resources(template))
        candidate = PromptCandidate(
            version=version,
            prompt_template=template,
            resources_id=update.resources_id,
            round=round_,
            parent=parent.version if parent is not None else None,
            critique=critique,
        )
        self.candidates.append(candidate)
        return candidate

    async def _rollouts(self, items: Sequence[tuple[Any, PromptCandidate]], mode: RolloutMode) -> list[RolloutOutcome]:
        """Run one rollout per (task, prompt) through the store and return their outcomes in the same order."""
        store = self.get_store()
        requests = [
            EnqueueRolloutRequest(
                input=task, mode=mode, resources_id=candidate.resources_id, metadata={"apo_version": candidate.version}
            )
            for task, candidate in items
        ]
        rollouts = await store.enqueue_many_rollouts(requests)
        ids = [r.rollout_id for r in rollouts]
        pending = set(ids)
        finished: dict[str, Any] = {}
        deadline = time.monotonic() + self.rollout_batch_timeout
        while pending and time.monotonic() < deadline:
            wait = min(5.0, max(0.0, deadline - time.monotonic()))
            for rollout in await store.wait_for_rollouts(rollout_ids=sorted(pending), timeout=wait):
                finished[rollout.rollout_id] = rollout
                pending.discard(rollout.rollout_id)
        if pending:
            logger.warning(
                "APO: %d of %d rollouts did not finish within %.0f s; they score 0",
                len(pending),
                len(ids),
                self.rollout_batch_timeout,
            )
        outcomes: list[RolloutOutcome] = []
        for rollout_id, (task, _) in zip(ids, items, strict=True):
            done = finished.get(rollout_id)
            if done is None:
                outcomes.append(RolloutOutcome(rollout_id, task, "unfinished", None))
                continue
            spans = list(await store.query_spans(rollout_id, "latest"))
            reward = find_final_reward(spans) if done.status == "succeeded" else None
            if reward is not None and math.isnan(reward):
                reward = None
            try:
                conversations = [c["messages"] for c in self._messages.adapt(spans)]
            except (TypeError, ValueError):  # spans the adapter cannot read still leave the reward usable
                conversations = []
            notes = [m for m in (get_message_value(s) for s in spans) if m is not None]
            outcomes.append(RolloutOutcome(rollout_id, task, str(done.status), reward, conversations, notes))
        return outcomes

    def _record(
        self,
        version: str,
        round_: int,
        scope: Literal["full-val", "val-batch", "train-batch"],
        outcomes: Sequence[RolloutOutcome],
        seconds: float,
    ) -> float:
        """Log a scoring; the score is the mean reward over every task (failed or unfinished rollouts count 0)."""
        rewards = [o.reward for o in outcomes]
        score = sum(r or 0.0 for r in rewards) / len(rewards) if rewards else 0.0
        evaluation = APOEvaluation(version, round_, scope, score, rewards, round(seconds, 3))
        self.history.append(evaluation)
        logger.info("APO %s", json.dumps(asdict(evaluation)))
        if self.on_log is not None:
            self.on_log(evaluation)
        return score

    def _reject(
        self, parent: PromptCandidate, round_: int, text: str | None, reason: str, critique: str | None = None
    ) -> None:
        self.rejected.append(
            {"parent": parent.version, "round": round_, "template": text, "critique": critique, "reason": reason}
        )
        logger.info("APO round %d: edit of %s rejected: %s", round_, parent.version, reason)


def _describe(candidate: PromptCandidate | None) -> dict[str, Any] | None:
    if candidate is None:
        return None
    return {
        "version": candidate.version,
        "resources_id": candidate.resources_id,
        "round": candidate.round,
        "parent": candidate.parent,
        "template": candidate.prompt_template.template,
        "engine": candidate.prompt_template.engine,
        "critique": candidate.critique,
        "batch_score": candidate.batch_score,
        "full_score": candidate.full_score,
    }
