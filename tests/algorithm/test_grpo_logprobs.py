"""`response_token_logprobs` (shared prefix run once, logits only at response tokens) against a plain forward pass."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from agl.algorithm.grpo_math import response_token_logprobs  # noqa: E402
from tests.llm.tiny_model import tiny_model  # noqa: E402

PREFIX = list(range(5, 25))  # 20 tokens every prompt starts with


@pytest.fixture
def model() -> Any:
    torch.manual_seed(0)
    return tiny_model(400)


def plain(model: Any, prompts: list[list[int]], responses: list[list[int]]) -> list[torch.Tensor]:
    """Each row's response log-probs from one ordinary forward pass over its whole prompt + response."""
    out = []
    for prompt, response in zip(prompts, responses, strict=True):
        logits = model(input_ids=torch.tensor([prompt + response])).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        out.append(torch.stack([logp[len(prompt) - 1 + j, t] for j, t in enumerate(response)]))
    return out


def grads(model: Any) -> list[torch.Tensor]:
    out = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize(
    "prompts",
    [
        [[*PREFIX, 30, 31], [*PREFIX, 40], [*PREFIX, 50, 51, 52, 53]],  # a shared 20-token prefix
        [[7, 8], [9, 10, 11, 12], [13]],  # nothing shared: the plain path
        [[*PREFIX, 30], [*PREFIX, 30]],  # identical prompts (a GRPO group): all but the last token shared
    ],
)
def test_values_and_gradients_equal_a_plain_forward_pass(model: Any, prompts: list[list[int]]) -> None:
    responses = [[60, 61, 62], [63], [64, 65, 66, 67, 68]][: len(prompts)]
    expected = plain(model, prompts, responses)
    sum(row.sum() * (i + 1) for i, row in enumerate(expected)).backward()
    expected_grads = grads(model)

    logp, mask = response_token_logprobs(model, prompts, responses, 0, device="cpu")
    assert logp.shape == mask.shape == (len(prompts), max(len(r) for r in responses))
    for i, response in enumerate(responses):
        assert mask[i].tolist() == [True] * len(response) + [False] * (mask.shape[1] - len(response))
        assert torch.allclose(logp[i][mask[i]], expected[i], atol=1e-5)
        assert torch.all(logp[i][~mask[i]] == 0)
    sum(logp[i].sum() * (i + 1) for i in range(len(prompts))).backward()
    for got, want in zip(grads(model), expected_grads, strict=True):
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)


def test_bad_batches_are_refused(model: Any) -> None:
    with pytest.raises(ValueError, match="equally many"):
        response_token_logprobs(model, [[1]], [], 0, device="cpu")
    with pytest.raises(ValueError, match="at least one token"):
        response_token_logprobs(model, [[], [1]], [[2], [3]], 0, device="cpu")
