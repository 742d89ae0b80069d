"""The device and dtype choice, with the real torch of this machine (CPU only), and the engine on a chosen device.

No GPU here: CUDA paths are checked only for their error when CUDA is absent. Device propagation is checked by
running under `torch.device("meta")` as the default device while the model is on the CPU: any tensor the code
makes without naming the model's device lands on "meta" and the run fails.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch

from agl.llm.device import DeviceError, compute_context, default_dtype, model_device, resolve_device, resolve_dtype
from agl.llm.engine import GenerationEngine, GenerationRequest, SequenceEvent, left_padded_batch
from agl.llm.model import load_model
from agl.llm.sampling import SamplingParams
from agl.llm.server import ModelServer
from tests.llm.tiny_model import tiny_model, tiny_tokenizer

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where CUDA is absent")


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer: Any) -> Any:
    return tiny_model(len(tokenizer))


# -- the choice --------------------------------------------------------------------------------------------------


@needs_no_cuda
def test_auto_is_the_cpu_where_torch_sees_no_gpu() -> None:
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert default_dtype(resolve_device("auto")) == torch.float32


def test_cpu_is_accepted_in_any_spelling() -> None:
    for name in ("cpu", " CPU ", torch.device("cpu")):
        assert resolve_device(name) == torch.device("cpu")


@needs_no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "CUDA:1"])
def test_cuda_without_a_gpu_names_the_option_and_the_fix(name: str) -> None:
    with pytest.raises(DeviceError) as caught:
        resolve_device(name, option="--device")
    message = str(caught.value)
    assert f"--device={name!r}" in message
    assert "--device=cpu" in message and "CUDA build of torch" in message


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "cuda:", "mps", "", "cuda:-1", "tpu:0"])
def test_unknown_device_names_are_refused_with_the_choices(name: str) -> None:
    with pytest.raises(DeviceError) as caught:
        resolve_device(name, option="GRPOConfig.device")
    assert f"GRPOConfig.device={name!r}" in str(caught.value)
    assert '"cuda:N"' in str(caught.value)


def test_a_device_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(DeviceError, match="must be a string"):
        resolve_device(0)  # type: ignore[arg-type]


def test_dtypes_default_per_device_and_use() -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype(None, cpu) == torch.float32
    assert resolve_dtype("auto", cpu, training=True) == torch.float32
    # Training keeps fp32 master weights on every device; this branch needs no GPU to decide.
    assert default_dtype(torch.device("cuda"), training=True) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype("float16", cpu) == torch.float16
    assert resolve_dtype(torch.bfloat16, cpu) == torch.bfloat16
    with pytest.raises(DeviceError, match="'int8'"):
        resolve_dtype("int8", cpu)
    with pytest.raises(DeviceError, match="not a floating dtype"):
        resolve_dtype(torch.int64, cpu)


def test_model_device_is_where_the_parameters_are(model: Any) -> None:
    assert model_device(model) == torch.device("cpu")
    assert model_device(torch.nn.Linear(2, 2, device="meta")) == torch.device("meta")
    assert model_device(torch.nn.ReLU()) == torch.device("cpu")


# -- loading and serving on a device -----------------------------------------------------------------------------


def test_load_model_puts_the_model_on_the_asked_device_and_dtype(model: Any, tokenizer: Any, tmp_path: Path) -> None:
    model.save_pretrained(str(tmp_path / "tiny"))
    tokenizer.save_pretrained(str(tmp_path / "tiny"))
    loaded, _ = load_model(tmp_path / "tiny", device="cpu")
    assert model_device(loaded) == torch.device("cpu") and loaded.dtype == torch.float32
    half, _ = load_model(tmp_path / "tiny", "bf16", device="cpu")
    assert half.dtype == torch.bfloat16
    server = ModelServer.from_path(tmp_path / "tiny", device="cpu", dtype="float32")
    assert model_device(server.model) == torch.device("cpu")


@needs_no_cuda
def test_load_model_refuses_cuda_before_reading_any_file(tmp_path: Path) -> None:
    # The path does not exist: the device error comes first, so a wrong option fails without a slow load.
    with pytest.raises(DeviceError, match="device='cuda'"):
        load_model(tmp_path / "absent", device="cuda")


@needs_no_cuda
def test_server_cli_reports_a_missing_gpu(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agl.llm.server", "--model", str(tmp_path), "--device", "cuda", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "--device='cuda'" in result.stdout and "--device=cpu" in result.stdout


def test_server_cli_refuses_an_unknown_dtype(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agl.llm.server", "--model", str(tmp_path), "--device", "cpu", "--dtype", "int4"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "--dtype='int4'" in result.stdout


# -- the engine's tensors ----------------------------------------------------------------------------------------


def test_left_padded_batch_is_built_on_the_given_device() -> None:
    ids, attention, positions = left_padded_batch([[5, 6, 7], [8]], pad_token_id=0, device="meta")
    assert {t.device.type for t in (ids, attention, positions)} == {"meta"}
    ids, attention, positions = left_padded_batch([[5, 6, 7], [8]], pad_token_id=0, device=torch.device("cpu"))
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert attention.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions.tolist() == [[0, 1, 2], [0, 0, 0]]


def test_engine_makes_every_tensor_on_the_models_device(model: Any, tokenizer: Any) -> None:
    """A batch where sequences finish at different steps (so rows are dropped from the cache) runs with "meta" as
    the default device and the model on the CPU: it only works if every tensor names the model's device."""
    engine = GenerationEngine(model, tokenizer)
    seen: set[torch.device] = set()

    def record(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        for value in (*args, *kwargs.values()):
            if isinstance(value, torch.Tensor):
                seen.add(value.device)

    events: list[SequenceEvent] = []
    requests = [
        GenerationRequest(tokenizer("Hi")["input_ids"], SamplingParams(max_tokens=2, seed=1), events.extend, n=2),
        GenerationRequest(
            tokenizer("What is 12 + 7?")["input_ids"], SamplingParams(max_tokens=5, seed=2), events.extend
        ),
    ]
    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with torch.device("meta"):
            engine._generate(requests)  # in this thread, where the default device applies
    finally:
        handle.remove()
    assert seen == {torch.device("cpu")}
    finished = [e for e in events if e.finish_reason is not None]
    assert sorted(e.finish_reason for e in finished) == ["length"] * 3, [e.error for e in finished]
    assert all(isinstance(lp, float) for e in events for lp in e.logprobs)


def test_compute_context_runs_products_in_the_compute_dtype_and_keeps_the_weights() -> None:
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with compute_context(torch.bfloat16, torch.device("cpu")):
        assert layer(x).dtype == torch.bfloat16
    for plain in (None, torch.float32):
        with compute_context(plain, torch.device("cpu")):
            assert layer(x).dtype == torch.float32
    assert layer.weight.dtype == torch.float32


def test_engine_generates_with_bf16_products_close_to_fp32(model: Any, tokenizer: Any) -> None:
    prompt = tokenizer("What is 12 + 7?")["input_ids"]
    results: dict[str, list[SequenceEvent]] = {}
    for name, compute in (("fp32", None), ("bf16", torch.bfloat16)):
        engine = GenerationEngine(model, tokenizer, compute_dtype=compute)
        autocast_on: list[bool] = []
        handle = model.register_forward_pre_hook(
            lambda *_, seen=autocast_on: seen.append(torch.is_autocast_enabled("cpu"))
        )
        events: list[SequenceEvent] = []
        try:
            engine._generate([GenerationRequest(prompt, SamplingParams(max_tokens=1, temperature=0), events.extend)])
        finally:
            handle.remove()
        assert autocast_on == [compute is not None]
        assert model.lm_head.weight.dtype == torch.float32
        results[name] = events
    assert results["bf16"][0].token_ids == results["fp32"][0].token_ids
    assert results["bf16"][0].logprobs == pytest.approx(results["fp32"][0].logprobs, abs=0.1)
