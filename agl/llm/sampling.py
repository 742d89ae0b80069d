"""Sampling settings and the choice of the next token for one sequence.

The log-probability reported for a token is always taken from `log_softmax(logits)` of the model's unmodified
logits — temperature 1, before temperature scaling, top-p or top-k. That is log π(token | context) of the policy
itself, which is what policy-gradient methods (GRPO, PPO) need as the "old" log-probability, whatever temperature
the rollout was sampled at. vLLM calls this mode `logprobs_mode="raw_logprobs"`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["GREEDY_TEMPERATURE", "SamplingParams", "make_generator", "sample_token"]

GREEDY_TEMPERATURE = 1e-5
"""Temperatures at or below this pick the most likely token (greedy decoding)."""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one completion.

    Attributes:
        max_tokens: the most tokens to generate (the completion stops with `finish_reason="length"` there).
        temperature: 0 for greedy decoding; otherwise logits are divided by it before sampling.
        top_p: nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`.
        top_k: keep only the `top_k` most likely tokens (0: no limit).
        seed: seed of this sequence's random generator (`None`: a fresh random seed).
        stop: strings that end the completion; the text is cut before the first one found.
        stop_token_ids: token ids that end the completion (in addition to the model's end-of-sequence ids).
        ignore_eos: keep generating after an end-of-sequence token.
        top_logprobs: how many most likely alternatives to report at each position (0: none).
    """

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    top_logprobs: int = 0

    @property
    def greedy(self) -> bool:
        """Whether this samples the most likely token at every step."""
        return self.temperature <= GREEDY_TEMPERATURE or self.top_k == 1


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU random generator seeded with `seed` (or a fresh random seed)."""
    import torch

    generator = torch.Generator(device="cpu")
    generator.manual_seed(secrets.randbits(63) if seed is None else seed % (2**63))
    return generator


def sample_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """Pick the next token from one row of fp32 logits (shape `[vocab]`) according to `params`."""
    import torch

    if params.greedy:
        return int(torch.argmax(logits).item())
    scaled = logits / params.temperature
    if 0 < params.top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, params.top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already reach top_p; the most likely token always stays.
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= params.top_p
        drop_sorted[0] = False
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        scaled = scaled.masked_fill(drop, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())
