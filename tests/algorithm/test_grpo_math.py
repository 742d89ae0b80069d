"""GRPO maths on tiny tensors: advantages, padding, log-probs, the clipped loss and its gradient."""

from __future__ import annotations

import itertools
import math

import pytest

torch = pytest.importorskip("torch")

from agl.algorithm.grpo_math import group_advantages, grpo_loss, response_token_logprobs  # noqa: E402


def test_group_advantages_normalise_within_each_group() -> None:
    adv = group_advantages([1.0, 0.0, 1.0, 0.0, 5.0, 5.0], ["a", "a", "a", "a", "b", "b"])
    assert torch.allclose(adv[:4], torch.tensor([1.0, -1.0, 1.0, -1.0]), atol=1e-4)
    assert torch.equal(adv[4:], torch.zeros(2))  # equal rewards carry no signal
    assert torch.equal(group_advantages([3.0], ["solo"]), torch.zeros(1))
    with pytest.raises(ValueError, match="same length"):
        group_advantages([1.0], [])


def test_loss_equals_minus_advantage_when_policies_agree() -> None:
    logp = torch.tensor([[0.0, -1.0, -2.0]])
    mask = torch.tensor([[False, True, True]])
    loss, stats = grpo_loss(logp, logp.clone(), torch.tensor([0.5]), mask)
    assert math.isclose(float(loss), -0.5, abs_tol=1e-6)
    assert stats.clip_fraction == 0.0 and math.isclose(stats.mean_ratio, 1.0)


def test_clipping_stops_the_gradient_beyond_the_trust_region() -> None:
    old = torch.tensor([[0.0, -1.0]])
    mask = torch.tensor([[False, True]])
    # ratio = e^0.5 ≈ 1.65 > 1.2 with a positive advantage: the clipped term wins, gradient is zero.
    new = torch.tensor([[0.0, -0.5]], requires_grad=True)
    loss, stats = grpo_loss(new, old, torch.tensor([1.0]), mask, clip_eps=0.2)
    loss.backward()
    assert new.grad is not None and float(new.grad.abs().sum()) == 0.0
    assert stats.clip_fraction == 1.0
    # With a negative advantage the unclipped (more pessimistic) term is kept and the gradient flows.
    new2 = torch.tensor([[0.0, -0.5]], requires_grad=True)
    loss2, _ = grpo_loss(new2, old, torch.tensor([-1.0]), mask, clip_eps=0.2)
    loss2.backward()
    assert new2.grad is not None and float(new2.grad[0, 1]) > 0


def test_positive_advantage_pushes_the_token_probability_up() -> None:
    pytest.importorskip("transformers")
    from tests.llm.tiny_model import tiny_model

    torch.manual_seed(0)
    model = tiny_model(50)
    prompt, response = [[1, 2]], [[3]]
    before = float(response_token_logprobs(model, prompt, response, 0, device="cpu")[0][0, 0])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(5):
        new, mask = response_token_logprobs(model, prompt, response, 0, device="cpu")
        loss, _ = grpo_loss(new, new.detach(), torch.tensor([1.0]), mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(response_token_logprobs(model, prompt, response, 0, device="cpu")[0][0, 0]) > before


def test_kl_term_is_zero_at_the_reference_and_positive_away_from_it() -> None:
    mask = torch.tensor([[True, True]])
    ref = torch.tensor([[-1.0, -1.0]])
    _, same = grpo_loss(ref, ref, torch.tensor([0.0]), mask, ref_logp=ref, kl_coef=0.1)
    _, away = grpo_loss(ref + 0.5, ref + 0.5, torch.tensor([0.0]), mask, ref_logp=ref, kl_coef=0.1)
    assert same.kl == 0.0 and away.kl > 0.0


def test_loss_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="same shape"):
        grpo_loss(torch.zeros(1, 2), torch.zeros(1, 3), torch.zeros(1), torch.ones(1, 2, dtype=torch.bool))


def test_learning_rate_schedules() -> None:
    from agl.algorithm.grpo_math import learning_rate_at

    assert [learning_rate_at(s, 5, 1.0) for s in range(1, 6)] == [1.0] * 5
    assert [learning_rate_at(s, 5, 1.0, schedule="linear") for s in range(1, 6)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    cosine = [learning_rate_at(s, 5, 2.0, schedule="cosine", min_ratio=0.1) for s in range(1, 6)]
    assert cosine[0] == pytest.approx(2.0) and cosine[2] == pytest.approx(1.1) and cosine[-1] == pytest.approx(0.2)
    assert all(a > b for a, b in itertools.pairwise(cosine))
    warm = [learning_rate_at(s, 6, 1.0, schedule="linear", warmup_steps=2) for s in range(1, 7)]
    assert warm == pytest.approx([1 / 3, 2 / 3, 1.0, 2 / 3, 1 / 3, 0.0])
    assert learning_rate_at(1, 1, 1.0, schedule="cosine") == 1.0  # one step: no room to decay
    with pytest.raises(ValueError, match="schedule"):
        learning_rate_at(1, 5, 1.0, schedule="step")
