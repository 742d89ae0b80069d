"""GRPO on a chosen device: the update step makes every tensor on the model's device; a wrong device fails early.

Run on the CPU only (no GPU here). Device propagation is checked by running the update under `torch.device("meta")`
as the default device with the model on the CPU: a tensor made without naming the model's device lands on "meta"
and the step fails.
"""

from __future__ import annotations

import asyncio
import copy
import re
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from agl.algorithm.grpo import GRPO, GRPOConfig, _Sample  # noqa: E402
from agl.algorithm.grpo_checkpoint import clone_state_dict  # noqa: E402
from agl.algorithm.grpo_math import group_advantages, response_token_logprobs  # noqa: E402
from agl.llm.device import DeviceError, model_device  # noqa: E402
from agl.llm.server import ModelServer  # noqa: E402
from tests.llm.tiny_model import tiny_model, tiny_tokenizer  # noqa: E402


def make_samples(model: Any, tokenizer: Any) -> list[_Sample]:
    """Two groups of two samples with the model's own log-probs as the old ones (as the model server reports)."""
    prompts = ["What is 12 + 7?", "Hello, world!"]
    responses = [" 19", " 20", " How are you", " today"]
    samples = []
    for i, response in enumerate(responses):
        prompt_ids = tokenizer(prompts[i // 2])["input_ids"]
        response_ids = tokenizer(response)["input_ids"]
        with torch.no_grad():
            logp = response_token_logprobs(model, [prompt_ids], [response_ids], 0, device="cpu")[0][0].tolist()
        samples.append(_Sample(prompt_ids, response_ids, logp, float(i % 2), i // 2, f"r{i}"))
    return samples


def test_update_step_on_cpu_makes_every_tensor_on_the_models_device() -> None:
    tokenizer = tiny_tokenizer()
    model = tiny_model(len(tokenizer))
    config = GRPOConfig(device="cpu", micro_batch_size=3, kl_coef=0.1, learning_rate=1e-2)
    algorithm = GRPO(config, server=ModelServer(model, tokenizer))
    samples = make_samples(model, tokenizer)
    advantages = group_advantages([s.reward for s in samples], [s.group for s in samples])
    reference = copy.deepcopy(model).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, foreach=True)
    before = clone_state_dict(model)
    # The first step creates the optimizer's state (AdamW makes its step counters on the default device).
    first = algorithm._update(samples, advantages, model, optimizer, reference)
    assert all(isinstance(v, float) for v in first.values())
    assert first["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy still equals the reference
    after_first = clone_state_dict(model)
    assert any(not torch.equal(before[k], after_first[k]) for k in before)

    seen: set[Any] = set()

    def record(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.update(v.device for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor))

    handles = [m.register_forward_pre_hook(record, with_kwargs=True) for m in (model, reference)]
    try:
        with torch.device("meta"):
            second = algorithm._update(samples, advantages, model, optimizer, reference)
    finally:
        for handle in handles:
            handle.remove()
    assert seen == {torch.device("cpu")}
    assert all(isinstance(v, float) for v in second.values()) and second["kl"] > 0.0
    after_second = clone_state_dict(model)
    assert any(not torch.equal(after_first[k], after_second[k]) for k in before)
    assert not model.training  # handed back to the server in eval mode


def test_grpo_loads_its_server_on_the_configured_device_dtype_and_batch_size(tmp_path: Path) -> None:
    assert (GRPOConfig().device, GRPOConfig().dtype, GRPOConfig().max_batch_size) == ("auto", "auto", 64)
    tokenizer = tiny_tokenizer()
    tiny_model(len(tokenizer)).save_pretrained(str(tmp_path))
    tokenizer.save_pretrained(str(tmp_path))
    server = GRPO(GRPOConfig(device="cpu", max_batch_size=7), model=str(tmp_path)).load_server()
    assert not server.is_running  # run() starts it
    assert model_device(server.model) == torch.device("cpu") and server.model.dtype == torch.float32
    assert server.engine.max_batch_size == 7
    half = GRPO(GRPOConfig(device="cpu", dtype="bfloat16"), model=str(tmp_path)).load_server()
    assert half.model.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="max_batch_size must be at least 1"):
        GRPOConfig(max_batch_size=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where CUDA is absent")
def test_grpo_asked_for_cuda_without_a_gpu_fails_before_loading() -> None:
    algorithm = GRPO(GRPOConfig(device="cuda:0"), model="/no/such/model")
    with pytest.raises(DeviceError) as caught:
        asyncio.run(algorithm.run([{"a": 1, "b": 2}]))
    assert "GRPOConfig.device='cuda:0'" in str(caught.value) and "GRPOConfig.device=cpu" in str(caught.value)
    assert algorithm.server is None


def test_grpo_refuses_an_unknown_dtype_before_loading() -> None:
    algorithm = GRPO(GRPOConfig(device="cpu", dtype="int8"), model="/no/such/model")
    with pytest.raises(DeviceError, match=re.escape("GRPOConfig.dtype='int8'")):
        asyncio.run(algorithm.run([{"a": 1, "b": 2}]))


def test_micro_batch_size_changes_memory_not_the_update() -> None:
    """The same samples give the same step with micro-batches of 1 and of 4 (docs/gpu.md relies on this)."""
    tokenizer = tiny_tokenizer()
    results = []
    for micro in (1, 4):
        model = tiny_model(len(tokenizer))
        # Plain SGD without clipping: the weight change is the gradient itself (Adam would hide its scale).
        config = GRPOConfig(device="cpu", micro_batch_size=micro, kl_coef=0.1, max_grad_norm=1e9)
        algorithm = GRPO(config, server=ModelServer(model, tokenizer))
        samples = make_samples(model, tokenizer)
        advantages = group_advantages([s.reward for s in samples], [s.group for s in samples])
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        stats = algorithm._update(samples, advantages, model, optimizer, copy.deepcopy(model).eval())
        results.append((stats, clone_state_dict(model)))
    (stats_1, weights_1), (stats_4, weights_4) = results
    start = clone_state_dict(tiny_model(len(tokenizer)))
    assert stats_1["loss"] == pytest.approx(stats_4["loss"], abs=1e-6)
    assert any(not torch.equal(start[name], weights_1[name]) for name in start)
    for name, tensor in weights_1.items():
        torch.testing.assert_close(tensor - start[name], weights_4[name] - start[name], atol=1e-6, rtol=1e-4)


def test_bf16_compute_runs_the_update_under_autocast_and_keeps_fp32_weights() -> None:
    tokenizer = tiny_tokenizer()
    model = tiny_model(len(tokenizer))
    config = GRPOConfig(device="cpu", compute_dtype="bfloat16", kl_coef=0.1, learning_rate=1e-2)
    algorithm = GRPO(config, server=ModelServer(model, tokenizer))
    samples = make_samples(model, tokenizer)
    advantages = group_advantages([s.reward for s in samples], [s.group for s in samples])
    reference = copy.deepcopy(model).eval()
    autocast_on: list[bool] = []
    handles = [
        m.register_forward_pre_hook(lambda *_: autocast_on.append(torch.is_autocast_enabled("cpu")))
        for m in (model, reference)
    ]
    before = clone_state_dict(model)
    try:
        stats = algorithm._update(samples, advantages, model, torch.optim.AdamW(model.parameters(), lr=1e-2), reference)
    finally:
        for handle in handles:
            handle.remove()
    assert autocast_on and all(autocast_on)  # the policy's and the reference's passes
    assert stats["kl"] == pytest.approx(0.0, abs=1e-3)
    after = clone_state_dict(model)
    assert all(t.dtype == torch.float32 for t in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_grpo_refuses_an_unknown_compute_dtype_before_loading() -> None:
    algorithm = GRPO(GRPOConfig(device="cpu", compute_dtype="int4"), model="/no/such/model")
    with pytest.raises(DeviceError, match=re.escape("GRPOConfig.compute_dtype='int4'")):
        asyncio.run(algorithm.run([{"a": 1, "b": 2}]))


def test_the_order_of_samples_does_not_change_the_update() -> None:
    """Samples are regrouped by prompt for the update; each keeps its own advantage."""
    tokenizer = tiny_tokenizer()
    results = []
    for order in ([0, 1, 2, 3], [3, 0, 2, 1]):
        model = tiny_model(len(tokenizer))
        algorithm = GRPO(
            GRPOConfig(device="cpu", micro_batch_size=2, max_grad_norm=1e9), server=ModelServer(model, tokenizer)
        )
        samples = make_samples(model, tokenizer)
        advantages = torch.tensor([0.5, -1.0, 2.0, -0.25])  # all different: a mix-up would show
        shuffled = [samples[i] for i in order]
        algorithm._update(shuffled, advantages[order], model, torch.optim.SGD(model.parameters(), lr=1.0), None)
        results.append(clone_state_dict(model))
    for name, tensor in results[0].items():
        torch.testing.assert_close(tensor, results[1][name], atol=1e-6, rtol=1e-4)
