"""The local model server on a tiny random Llama: ids, logprobs, streaming, n, batching, weight swap, bad input."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import httpx
import torch

from agl.llm.server import ModelServer, PortInUseError
from tests.llm.tiny_model import tiny_model, tiny_tokenizer

MESSAGES = [{"role": "user", "content": "What is 12 + 7?"}]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer: Any) -> Any:
    return tiny_model(len(tokenizer))


@pytest.fixture(scope="module")
def server(model: Any, tokenizer: Any) -> Iterator[ModelServer]:
    with ModelServer(model, tokenizer, model_name="tiny", batch_window=0.01) as running:
        yield running
    assert not running.is_running


@pytest.fixture(scope="module")
def client(server: ModelServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        yield http


def chat(client: httpx.Client, **body: Any) -> dict[str, Any]:
    body.setdefault("messages", MESSAGES)
    response = client.post("/chat/completions", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def stream(client: httpx.Client, path: str, **body: Any) -> list[dict[str, Any]]:
    """The decoded chunks of an SSE response; checks the `data: [DONE]` terminator."""
    chunks: list[dict[str, Any]] = []
    done = False
    with client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                continue
            assert line.startswith("data: ")
            data = line[len("data: ") :]
            if data == "[DONE]":
                done = True
                continue
            assert not done
            chunks.append(json.loads(data))
    assert done
    return chunks


def merged_chat_stream(chunks: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per choice index: text, token ids, logprobs and finish reason gathered from a chat stream."""
    merged: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            entry = merged.setdefault(
                choice["index"], {"text": "", "token_ids": [], "logprobs": [], "finish_reason": None}
            )
            entry["text"] += choice["delta"].get("content") or ""
            entry["token_ids"] += choice["token_ids"]
            if choice["logprobs"]:
                entry["logprobs"] += [c["logprob"] for c in choice["logprobs"]["content"]]
            if choice["finish_reason"]:
                entry["finish_reason"] = choice["finish_reason"]
    return merged


def direct_logprobs(model: Any, prompt: list[int], response: list[int]) -> list[float]:
    """log π(response[j] | prompt + response[:j]) from one plain forward pass (temperature 1)."""
    with torch.no_grad():
        ids = torch.tensor([prompt + response])
        logits = model(input_ids=ids).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return [float(logprobs[len(prompt) - 1 + j, token]) for j, token in enumerate(response)]


# -- ids and logprobs --------------------------------------------------------------------------------------------


def test_chat_token_ids_round_trip_through_the_tokenizer(client: httpx.Client, tokenizer: Any) -> None:
    body = chat(client, max_tokens=12, temperature=0)
    text = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert body["prompt_token_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(body["prompt_token_ids"]) == text
    (choice,) = body["choices"]
    assert len(choice["token_ids"]) == body["usage"]["completion_tokens"] <= 12
    assert choice["message"]["content"] == tokenizer.decode(choice["token_ids"], skip_special_tokens=True)
    assert body["usage"]["prompt_tokens"] == len(body["prompt_token_ids"])
    assert body["model"] == "tiny" and body["object"] == "chat.completion"
    assert body["weights_version"] == "0"


def test_completion_accepts_text_or_token_ids(client: httpx.Client, tokenizer: Any) -> None:
    ids = tokenizer("Hello, world!")["input_ids"]
    by_text = client.post("/completions", json={"prompt": "Hello, world!", "max_tokens": 6, "temperature": 0}).json()
    by_ids = client.post("/completions", json={"prompt": ids, "max_tokens": 6, "temperature": 0}).json()
    assert by_text["prompt_token_ids"] == by_ids["prompt_token_ids"] == ids
    assert by_text["choices"][0]["token_ids"] == by_ids["choices"][0]["token_ids"]
    assert by_text["choices"][0]["text"] == tokenizer.decode(
        by_ids["choices"][0]["token_ids"], skip_special_tokens=True
    )
    several = client.post("/completions", json={"prompt": [ids, ids[:3]], "max_tokens": 3, "temperature": 0}).json()
    assert [c["prompt_token_ids"] for c in several["choices"]] == [ids, ids[:3]]
    assert several["choices"][0]["token_ids"] == by_ids["choices"][0]["token_ids"][:3]


@pytest.mark.parametrize("temperature", [1.0, 0.5, 0.0])
def test_chat_logprobs_match_a_direct_forward_pass(client: httpx.Client, model: Any, temperature: float) -> None:
    body = chat(client, max_tokens=16, temperature=temperature, seed=3, logprobs=True, top_logprobs=3)
    (choice,) = body["choices"]
    content = choice["logprobs"]["content"]
    assert len(content) == len(choice["token_ids"]) > 0
    expected = direct_logprobs(model, body["prompt_token_ids"], choice["token_ids"])
    # Always the temperature-1 log-probabilities of the unmodified logits, whatever temperature sampled.
    assert [c["logprob"] for c in content] == pytest.approx(expected, abs=1e-4)
    for entry in content:
        assert isinstance(entry["token"], str) and isinstance(entry["bytes"], list)
        assert len(entry["top_logprobs"]) == 3
        assert entry["top_logprobs"][0]["logprob"] >= entry["logprob"] - 1e-6


def test_completion_logprobs_in_openai_legacy_shape(client: httpx.Client, model: Any, tokenizer: Any) -> None:
    ids = tokenizer("What is 12 + 7?")["input_ids"]
    body = client.post("/completions", json={"prompt": ids, "max_tokens": 8, "logprobs": 2, "seed": 5}).json()
    (choice,) = body["choices"]
    logprobs = choice["logprobs"]
    expected = direct_logprobs(model, ids, choice["token_ids"])
    assert logprobs["token_logprobs"] == pytest.approx(expected, abs=1e-4)
    assert [c["logprob"] for c in logprobs["content"]] == logprobs["token_logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["top_logprobs"]) == len(choice["token_ids"])
    assert all(len(top) <= 2 for top in logprobs["top_logprobs"])
    assert logprobs["text_offset"][0] == 0


def test_logprobs_only_when_asked(client: httpx.Client) -> None:
    assert chat(client, max_tokens=2)["choices"][0]["logprobs"] is None


def test_token_bytes_are_exact_for_multibyte_characters(client: httpx.Client, tokenizer: Any) -> None:
    ids = tokenizer("héllo ✓")["input_ids"]
    body = client.post("/completions", json={"prompt": ids, "max_tokens": 1, "logprobs": 0}).json()
    info = body["choices"][0]["logprobs"]["content"][0]
    assert bytes(info["bytes"]).decode("utf-8", errors="replace").replace("\ufffd", "") in info["token"] or info[
        "token"
    ].endswith("\ufffd")


# -- streaming ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 1.0, "seed": 11, "top_p": 0.9}])
def test_chat_streaming_agrees_with_non_streaming(client: httpx.Client, sampling: dict[str, Any]) -> None:
    body = {"messages": MESSAGES, "max_tokens": 20, "logprobs": True, "n": 2, **sampling}
    plain = chat(client, **body)
    chunks = stream(client, "/chat/completions", **body)
    assert chunks[0]["prompt_token_ids"] == plain["prompt_token_ids"]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    merged = merged_chat_stream(chunks)
    for choice in plain["choices"]:
        streamed = merged[choice["index"]]
        assert streamed["token_ids"] == choice["token_ids"]
        assert streamed["text"] == choice["message"]["content"]
        assert streamed["finish_reason"] == choice["finish_reason"]
        assert streamed["logprobs"] == pytest.approx([c["logprob"] for c in choice["logprobs"]["content"]], abs=1e-5)
    final = chunks[-1]
    assert final["choices"] == [] and final["usage"] == plain["usage"]


def test_completion_streaming_agrees_with_non_streaming(client: httpx.Client, tokenizer: Any) -> None:
    body = {"prompt": "The quick brown", "max_tokens": 10, "temperature": 0.8, "seed": 4, "logprobs": 1}
    plain = client.post("/completions", json=body).json()
    chunks = stream(client, "/completions", **body)
    assert chunks[0]["prompt_token_ids"] == plain["prompt_token_ids"]
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    ids = [t for c in chunks if c["choices"] for t in c["choices"][0]["token_ids"]]
    lps = [lp for c in chunks if c["choices"] for lp in c["choices"][0]["logprobs"]["token_logprobs"]]
    assert text == plain["choices"][0]["text"]
    assert ids == plain["choices"][0]["token_ids"]
    assert lps == pytest.approx(plain["choices"][0]["logprobs"]["token_logprobs"], abs=1e-5)
    assert chunks[-1]["usage"] == plain["usage"]


# -- sampling controls -------------------------------------------------------------------------------------------


def test_n_samples_with_a_seed_are_reproducible_and_distinct(client: httpx.Client) -> None:
    first = chat(client, n=4, max_tokens=12, temperature=1.0, seed=42)
    again = chat(client, n=4, max_tokens=12, temperature=1.0, seed=42)
    assert [c["index"] for c in first["choices"]] == [0, 1, 2, 3]
    samples = [tuple(c["token_ids"]) for c in first["choices"]]
    assert samples == [tuple(c["token_ids"]) for c in again["choices"]]
    assert len(set(samples)) > 1
    assert first["usage"]["completion_tokens"] == sum(len(s) for s in samples)


def test_greedy_n_samples_are_identical(client: httpx.Client) -> None:
    body = chat(client, n=3, max_tokens=8, temperature=0)
    assert len({tuple(c["token_ids"]) for c in body["choices"]}) == 1


def test_stop_string_cuts_the_text_and_stream_agrees(client: httpx.Client) -> None:
    free = chat(client, max_tokens=24, temperature=0)["choices"][0]["message"]["content"]
    assert len(free) > 6, free
    stop = free[3:6]
    cut = free.index(stop)
    body = {"messages": MESSAGES, "max_tokens": 24, "temperature": 0, "stop": [stop]}
    stopped = chat(client, **body)["choices"][0]
    assert stopped["message"]["content"] == free[:cut]
    assert stopped["finish_reason"] == "stop"
    merged = merged_chat_stream(stream(client, "/chat/completions", **body))[0]
    assert merged["text"] == free[:cut] and merged["token_ids"] == stopped["token_ids"]


def test_stop_token_ids_end_the_completion_including_the_token(client: httpx.Client) -> None:
    free = chat(client, max_tokens=10, temperature=0)["choices"][0]["token_ids"]
    target = free[4]
    stopped = chat(client, max_tokens=10, temperature=0, stop_token_ids=[target])["choices"][0]
    assert stopped["token_ids"] == free[: free.index(target) + 1]
    assert stopped["finish_reason"] == "stop"


def test_length_finish_and_max_completion_tokens(client: httpx.Client) -> None:
    body = chat(client, max_completion_tokens=3, temperature=0, ignore_eos=True)
    assert len(body["choices"][0]["token_ids"]) == 3
    assert body["choices"][0]["finish_reason"] == "length"


# -- batching ----------------------------------------------------------------------------------------------------


def test_concurrent_requests_are_batched(model: Any, tokenizer: Any) -> None:
    with ModelServer(model, tokenizer, batch_window=0.3, max_batch_size=16) as server:
        results: list[dict[str, Any]] = []
        barrier = threading.Barrier(6)

        def call(seed: int) -> None:
            with httpx.Client(base_url=server.base_url, timeout=60) as http:
                barrier.wait()
                body = {"messages": MESSAGES, "max_tokens": 6, "seed": seed, "ignore_eos": True}
                results.append(http.post("/chat/completions", json=body).json())

        threads = [threading.Thread(target=call, args=(seed,)) for seed in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        stats = server.engine.stats
        assert len(results) == 6 and all(len(r["choices"][0]["token_ids"]) == 6 for r in results)
        assert stats.requests == 6
        assert stats.batches < 6
        assert max(stats.batch_sizes) >= 2
        health = httpx.get(server.url + "/health").json()
        assert health["stats"]["batches"] == stats.batches


def test_a_batch_gives_the_same_samples_as_requests_alone(model: Any, tokenizer: Any, client: httpx.Client) -> None:
    alone = [chat(client, max_tokens=8, temperature=0.9, seed=s)["choices"][0]["token_ids"] for s in (1, 2)]
    with ModelServer(model, tokenizer, batch_window=0.3) as server:
        out: dict[int, list[int]] = {}

        def call(seed: int) -> None:
            body = {"messages": MESSAGES, "max_tokens": 8, "temperature": 0.9, "seed": seed}
            out[seed] = httpx.post(server.base_url + "/chat/completions", json=body, timeout=60).json()["choices"][0][
                "token_ids"
            ]

        threads = [threading.Thread(target=call, args=(s,)) for s in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert server.engine.stats.batches == 1
    assert [out[1], out[2]] == alone


# -- weights -----------------------------------------------------------------------------------------------------


def test_weight_swap_takes_effect_and_in_flight_requests_finish(tokenizer: Any, tmp_path: Path) -> None:
    old, new = tiny_model(len(tokenizer), seed=0), tiny_model(len(tokenizer), seed=1)
    reference = tiny_model(len(tokenizer), seed=1)
    with ModelServer(old, tokenizer, batch_window=0.0) as server, httpx.Client(timeout=60) as http:
        started = threading.Event()
        in_flight: dict[str, Any] = {}

        def long_request() -> None:
            body = {"messages": MESSAGES, "max_tokens": 150, "ignore_eos": True, "temperature": 0, "logprobs": True}
            chunks = []
            with http.stream("POST", server.base_url + "/chat/completions", json={**body, "stream": True}) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        chunks.append(json.loads(line[6:]))
                        if any(c["token_ids"] for c in chunks[-1]["choices"]):
                            started.set()
            in_flight["merged"] = merged_chat_stream(chunks)[0]
            in_flight["chunks"] = chunks

        thread = threading.Thread(target=long_request)
        thread.start()
        assert started.wait(30)
        server.update_weights(new, version="v2")  # waits for the running batch
        thread.join(60)
        merged = in_flight["merged"]
        assert len(merged["token_ids"]) == 150 and merged["finish_reason"] == "length"
        versions = [c["choices"][0].get("weights_version") for c in in_flight["chunks"] if c["choices"]]
        assert versions[-1] == "0"  # the in-flight request finished on the old weights

        assert http.get(server.base_url + "/models").json()["data"][0]["weights_version"] == "v2"
        body = {"messages": MESSAGES, "max_tokens": 8, "logprobs": True, "seed": 1}
        after = http.post(server.base_url + "/chat/completions", json=body).json()
        assert after["weights_version"] == "v2"
        choice = after["choices"][0]
        expected = direct_logprobs(reference, after["prompt_token_ids"], choice["token_ids"])
        assert [c["logprob"] for c in choice["logprobs"]["content"]] == pytest.approx(expected, abs=1e-4)

        # Publishing from another process: a saved state dict by path.
        path = tmp_path / "weights.pt"
        torch.save(tiny_model(len(tokenizer), seed=0).state_dict(), path)
        published = http.post(server.base_url + "/agl/weights", json={"path": str(path), "version": "v3"})
        assert published.status_code == 200, published.text
        assert published.json()["weights_version"] == "v3"
        again = http.post(server.base_url + "/chat/completions", json=body).json()
        assert again["weights_version"] == "v3"
        expected = direct_logprobs(old, again["prompt_token_ids"], again["choices"][0]["token_ids"])
        assert [c["logprob"] for c in again["choices"][0]["logprobs"]["content"]] == pytest.approx(expected, abs=1e-4)

        safetensors = pytest.importorskip("safetensors.torch")
        st_path = tmp_path / "w.safetensors"
        state = {k: v.contiguous() for k, v in reference.state_dict().items() if k != "lm_head.weight"}
        safetensors.save_file(state, str(st_path))
        published = http.post(server.base_url + "/agl/weights", json={"path": str(st_path), "version": "v4"})
        assert published.status_code == 200, published.text
        assert server.weights_version == "v4"


def test_bad_weights_are_refused_with_the_path_named(server: ModelServer, client: httpx.Client, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    response = client.post("/agl/weights", json={"path": str(missing), "version": "x"})
    assert response.status_code == 400 and str(missing) in response.json()["error"]["message"]
    wrong = tmp_path / "wrong.pt"
    torch.save({"model.embed_tokens.weight": torch.zeros(3, 3)}, wrong)
    response = client.post("/agl/weights", json={"path": str(wrong), "version": "x"})
    assert response.status_code == 400 and "lack" in response.json()["error"]["message"]
    response = client.post("/agl/weights", json={"path": str(wrong)})
    assert response.status_code == 400 and "version" in response.json()["error"]["message"]
    assert server.weights_version == "0"


def test_update_weights_with_the_served_model_only_sets_the_version(model: Any, tokenizer: Any) -> None:
    with ModelServer(model, tokenizer) as server:
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with server.exclusive():
            pass
        server.update_weights(server.model, "in-place")
        assert server.weights_version == "in-place"
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# -- errors and lifecycle ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/chat/completions", {"messages": []}, "messages"),
        ("/chat/completions", {"messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        ("/chat/completions", {"messages": MESSAGES, "max_tokens": -5}, "max_tokens"),
        ("/chat/completions", {"messages": MESSAGES, "max_completion_tokens": 0}, "max_completion_tokens"),
        ("/chat/completions", {"messages": MESSAGES, "n": 0}, "n"),
        ("/chat/completions", {"messages": MESSAGES, "temperature": -1}, "temperature"),
        ("/chat/completions", {"messages": MESSAGES, "top_p": 0}, "top_p"),
        ("/chat/completions", {"messages": MESSAGES, "top_logprobs": 50, "logprobs": True}, "top_logprobs"),
        ("/chat/completions", {"messages": MESSAGES, "max_tokens": 100000}, "context"),
        ("/chat/completions", {"messages": "hi"}, "messages"),
        ("/chat/completions", {"messages": [{"content": "no role"}]}, "role"),
        ("/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "text"),
        ("/chat/completions", {}, "messages"),
        ("/completions", {"prompt": []}, "prompt"),
        ("/completions", {"prompt": [1, 2, 99999]}, "vocabulary"),
        ("/completions", {"prompt": "hi", "echo": True}, "echo"),
        ("/completions", {"prompt": "hi", "logprobs": 21}, "logprobs"),
        ("/completions", {"max_tokens": 3}, "prompt"),
    ],
)
def test_bad_requests_get_400_with_a_clear_message(
    client: httpx.Client, path: str, body: dict[str, Any], needle: str
) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert needle in error["message"], error
    assert error["type"] == "invalid_request_error"


def test_malformed_json_gets_400(client: httpx.Client) -> None:
    response = client.post("/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "JSON" in response.json()["error"]["message"]
    response = client.post("/chat/completions", content=b"[1, 2]")
    assert response.status_code == 400 and "object" in response.json()["error"]["message"]


def test_models_and_health(server: ModelServer, client: httpx.Client) -> None:
    models = client.get("/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "tiny"
    assert models["data"][0]["weights_version"] == server.weights_version
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny"
    resource = server.as_resource(temperature=0.7)
    assert resource.endpoint == server.base_url and resource.model == "tiny"
    assert resource.sampling_parameters == {"temperature": 0.7}


def test_port_in_use_is_named(model: Any, tokenizer: Any) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        server = ModelServer(model, tokenizer, port=port)
        with pytest.raises(PortInUseError, match=f"port {port}"):
            server.start()
        assert not server.is_running and not server.engine.running


def test_stop_then_restart_on_a_fresh_port(model: Any, tokenizer: Any) -> None:
    server = ModelServer(model, tokenizer)
    server.start()
    url = server.url
    assert httpx.get(url + "/health").status_code == 200
    server.stop()
    assert not server.is_running
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health", timeout=2)
    server.stop()  # idempotent


def test_abandoned_stream_stops_generating(model: Any, tokenizer: Any) -> None:
    with ModelServer(model, tokenizer, batch_window=0.0) as server:
        body = {"messages": MESSAGES, "max_tokens": 200, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", server.base_url + "/chat/completions", json=body, timeout=60) as response:
            for line in response.iter_lines():
                if '"token_ids": [' in line and '"token_ids": []' not in line:
                    break
        deadline = time.monotonic() + 30
        while server.engine.stats.generate_seconds == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.engine.stats.generated_tokens < 200
