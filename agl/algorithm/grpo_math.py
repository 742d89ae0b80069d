"""The maths of GRPO on token sequences: group-normalised advantages, per-token log-probs and the clipped loss.

Pure torch functions (torch is imported lazily by the caller's import of this module), tested on tiny tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "SCHEDULES",
    "LossStats",
    "group_advantages",
    "grpo_loss",
    "learning_rate_at",
    "response_token_logprobs",
    "trajectory_advantages",
]


def group_advantages(rewards: Sequence[float], groups: Sequence[Any], eps: float = 1e-6) -> torch.Tensor:
    """Each reward minus its group's mean, divided by the group's standard deviation (+eps).

    A group whose rewards are all equal gets advantages of zero: it carries no learning signal. The result is on the
    CPU (a few floats); the update moves it to the model's device.
    """
    if len(rewards) != len(groups):
        raise ValueError(f"rewards ({len(rewards)}) and groups ({len(groups)}) must have the same length")
    values = torch.tensor(list(rewards), dtype=torch.float32, device="cpu")
    out = torch.zeros_like(values)
    members: dict[Any, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    for indices in members.values():
        group_values = values[indices]
        std = group_values.std(unbiased=False) if len(indices) > 1 else torch.tensor(0.0, device="cpu")
        out[indices] = (group_values - group_values.mean()) / (std + eps)
    return out


def trajectory_advantages(
    rewards: Sequence[float], groups: Sequence[Any], trajectories: Sequence[Any], eps: float = 1e-6
) -> torch.Tensor:
    """Per-sample advantages when a trajectory (rollout) gives several samples (one per LLM call).

    Each trajectory counts once in its group's mean and standard deviation, however many calls it made, and every
    sample of the trajectory gets the trajectory's advantage. With one sample per trajectory this is
    `group_advantages`. All samples of a trajectory must carry its reward and group.
    """
    if not len(rewards) == len(groups) == len(trajectories):
        raise ValueError("rewards, groups and trajectories must have the same length")
    first: dict[Any, int] = {}
    for index, trajectory in enumerate(trajectories):
        seen = first.setdefault(trajectory, index)
        if rewards[seen] != rewards[index] or groups[seen] != groups[index]:
            raise ValueError(f"trajectory {trajectory!r} has samples with different rewards or groups")
    order = list(first)
    per_trajectory = group_advantages([rewards[first[t]] for t in order], [groups[first[t]] for t in order], eps)
    position = {t: i for i, t in enumerate(order)}
    return per_trajectory[[position[t] for t in trajectories]]


def response_token_logprobs(
    model: Any,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_id: int,
    *,
    device: torch.device | str,
    min_shared: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(token | all tokens before it) of every response token, and the mask of real ones: both
    `[rows, longest response]`, row i's response starting at column 0. Gradients flow as through one plain forward
    pass over each prompt + response.

    What this saves: the prompt prefix that every row shares (system prompt, tool list, few-shot turns) runs once,
    its keys and values copied to every row, instead of once per row; and logits (vocabulary-wide) are made only
    where a response token is predicted, so memory grows with the responses, not the prompts.
    """
    from agl.llm.engine import cache_keyword, shared_prefix_length

    if len(prompts) != len(responses) or not prompts:
        raise ValueError(f"prompts ({len(prompts)}) and responses ({len(responses)}) must be equally many, not 0")
    if any(not p for p in prompts):
        raise ValueError("every prompt needs at least one token")
    rows = [list(p) + list(r) for p, r in zip(prompts, responses, strict=True)]
    # Every row keeps at least its last prompt token out of the prefix: it predicts the first response token.
    shared = min(shared_prefix_length(rows), min(len(p) for p in prompts) - 1)
    if len(rows) < 2 or shared < min_shared:
        shared = 0
    tails = [row[shared:] for row in rows]
    width = max(len(t) for t in tails)
    longest = max(1, max(len(r) for r in responses))
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device="cpu")
    attention = torch.zeros((len(rows), shared + width), dtype=torch.long, device="cpu")
    attention[:, :shared] = 1
    keep = torch.zeros((len(rows), longest), dtype=torch.long, device="cpu")
    targets = torch.zeros((len(rows), longest), dtype=torch.long, device="cpu")
    mask = torch.zeros((len(rows), longest), dtype=torch.bool, device="cpu")
    for i, (prompt, response, tail) in enumerate(zip(prompts, responses, tails, strict=True)):
        input_ids[i, : len(tail)] = torch.tensor(tail, dtype=torch.long, device="cpu")
        attention[i, shared : shared + len(tail)] = 1
        first = len(prompt) - shared - 1  # the tail position whose logits predict the first response token
        keep[i] = first  # unused columns repeat a real position; the mask drops them
        keep[i, : len(response)] = torch.arange(first, first + len(response), device="cpu")
        targets[i, : len(response)] = torch.tensor(list(response), dtype=torch.long, device="cpu")
        mask[i, : len(response)] = True
    input_ids, attention, keep = input_ids.to(device), attention.to(device), keep.to(device)
    targets, mask = targets.to(device), mask.to(device)
    kwargs: dict[str, Any] = {}
    if shared:
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache(config=model.config)
        prefix = input_ids.new_tensor([rows[0][:shared]])
        kwargs = {"use_cache": True, cache_keyword(model): cache}
        model(input_ids=prefix, logits_to_keep=1, **kwargs)
        cache.batch_repeat_interleave(len(rows))
    logits = model(input_ids=input_ids, attention_mask=attention, logits_to_keep=keep, **kwargs).logits.float()
    taken = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return taken.masked_fill(~mask, 0.0), mask


@dataclass
class LossStats:
    """What one loss computation measured (all detached floats)."""

    loss: float
    policy_loss: float
    kl: float
    clip_fraction: float
    mean_ratio: float


def grpo_loss(
    new_logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, LossStats]:
    """The clipped policy-gradient loss of GRPO, averaged over each sequence's tokens and then over sequences.

    Per token: `-min(ratio·A, clip(ratio, 1±eps)·A)` with `ratio = exp(new − old)`, plus `kl_coef` times the k3
    estimate of KL(π‖π_ref) when reference log-probs are given. `mask` selects response tokens.
    """
    if new_logp.shape != old_logp.shape or new_logp.shape != mask.shape:
        raise ValueError(
            f"new_logp {tuple(new_logp.shape)}, old_logp {tuple(old_logp.shape)} and mask {tuple(mask.shape)} "
            "must have the same shape"
        )
    weights = mask.float()
    tokens_per_row = weights.sum(dim=1).clamp(min=1.0)
    ratio = torch.exp(new_logp - old_logp)
    adv = advantages.unsqueeze(1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv
    per_token = -torch.minimum(unclipped, clipped)
    kl = torch.zeros_like(per_token)
    if ref_logp is not None and kl_coef > 0:
        delta = ref_logp - new_logp
        kl = torch.exp(delta) - delta - 1.0
        per_token = per_token + kl_coef * kl
    per_row = (per_token * weights).sum(dim=1) / tokens_per_row
    loss = per_row.mean()
    with torch.no_grad():
        count = weights.sum().clamp(min=1.0)
        clipped_tokens = ((ratio - 1.0).abs() > clip_eps).float() * weights
        stats = LossStats(
            loss=float(loss),
            policy_loss=float(((-torch.minimum(unclipped, clipped)) * weights).sum() / count),
            kl=float((kl * weights).sum() / count),
            clip_fraction=float(clipped_tokens.sum() / count),
            mean_ratio=float((ratio * weights).sum() / count),
        )
    return loss, stats


def learning_rate_at(step: int, total_steps: int, peak: float, *, schedule: str = "constant",
                     warmup_steps: int = 0, min_ratio: float = 0.0) -> float:  # fmt: skip
    """The learning rate of optimizer step `step` (1-based) of `total_steps`.

    A linear warm-up from `peak / (warmup_steps + 1)` over the first `warmup_steps` steps, then `"constant"` (stay at
    `peak`), `"linear"` or `"cosine"` decay from `peak` at the end of warm-up to `peak * min_ratio` at `total_steps`.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if step <= warmup_steps:
        return peak * step / (warmup_steps + 1)
    if schedule == "constant" or total_steps <= warmup_steps + 1:
        return peak
    progress = min(1.0, (step - warmup_steps - 1) / (total_steps - warmup_steps - 1))
    shape = 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return peak * (min_ratio + (1.0 - min_ratio) * shape)


SCHEDULES = ("constant", "linear", "cosine")
"""The learning-rate schedules `learning_rate_at` knows."""
