"""GRPO checkpoints on a tiny model: Hugging Face files, the training state, atomic replacement, lookup errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from agl.algorithm.grpo_checkpoint import (  # noqa: E402
    STATE_FILE,
    CheckpointState,
    clone_state_dict,
    find_checkpoint,
    read_state,
    save_checkpoint,
)
from agl.llm.model import load_model  # noqa: E402
from tests.llm.tiny_model import tiny_model, tiny_tokenizer  # noqa: E402


def test_clone_keeps_tied_weights_shared_and_is_detached() -> None:
    model = tiny_model(len(tiny_tokenizer()))
    clone = clone_state_dict(model)
    assert clone["lm_head.weight"] is clone["model.embed_tokens.weight"]  # tied in the model, tied in the copy
    with torch.no_grad():
        model.model.embed_tokens.weight.add_(1.0)
    assert not torch.equal(clone["model.embed_tokens.weight"], model.model.embed_tokens.weight)


def test_a_snapshot_saves_as_a_hugging_face_model_that_reloads_exactly(tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer()
    model = tiny_model(len(tokenizer))
    snapshot = clone_state_dict(model)
    with torch.no_grad():  # training goes on after the snapshot: the checkpoint must hold the snapshot
        for parameter in model.parameters():
            parameter.add_(0.5)
    history = [{"step": 0, "kind": "eval", "reward_mean": 0.25, "samples": 4, "seconds": 1.0}]
    state = CheckpointState(step=3, weights_version="step-3", score=0.75, history=history, extra={"split": {"seed": 1}})
    directory = save_checkpoint(tmp_path / "out" / "best", model, tokenizer, state, weights=snapshot)
    names = {p.name for p in directory.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", STATE_FILE} <= names
    assert not [p for p in directory.parent.iterdir() if p.name.startswith(".")]  # no staging left behind

    reloaded, reloaded_tokenizer = load_model(directory)
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, snapshot[name]), name
    messages = [{"role": "user", "content": "1 + 2 ="}]
    assert reloaded_tokenizer.apply_chat_template(messages, tokenize=False) == tokenizer.apply_chat_template(
        messages, tokenize=False
    )
    assert find_checkpoint(tmp_path / "out") == directory == find_checkpoint(directory)
    assert read_state(directory) == state

    state.step = 5
    save_checkpoint(directory, model, tokenizer, state)  # replaced whole, now with the live weights
    assert read_state(directory).step == 5
    reloaded, _ = load_model(directory)
    assert torch.equal(reloaded.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert sorted(p.name for p in directory.parent.iterdir()) == ["best"]


def test_lookup_errors_name_the_path_and_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_checkpoint(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=f"{STATE_FILE} and config.json"):
        find_checkpoint(tmp_path)
    (tmp_path / STATE_FILE).write_text(json.dumps({"step": "three"}))
    with pytest.raises(ValueError, match="not a valid checkpoint state"):
        read_state(tmp_path)
