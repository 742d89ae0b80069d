"""docs/endpoints.md: the proxy in front of an endpoint records every call; token ids only when the endpoint gives
them, and what works without them. The endpoint is a real HTTP server on 127.0.0.1 that returns token ids only when
a request asks with `return_token_ids` (tests/llm/backend.py, the `llm_backend` fixture)."""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest

import agl
from tests.llm.backend import Backend, prompt_ids, reply_ids, reply_text

openai = pytest.importorskip("openai")


@agl.rollout
async def agent(task: dict[str, Any], llm: agl.LLM) -> float:
    client = openai.AsyncOpenAI(base_url=llm.get_base_url(), api_key="agent", max_retries=0)
    async with client:
        answer = await client.chat.completions.create(
            model=llm.model, messages=[{"role": "user", "content": task["question"]}], max_tokens=8
        )
    return 1.0 if answer.choices[0].message.content else 0.0


def run(endpoint: Backend, callbacks: list[str] | None) -> list[list[agl.Span]]:
    """Train with the proxy set up as docs/endpoints.md shows; returns each rollout's spans."""
    os.environ["ENDPOINT_API_KEY"] = "secret"
    proxy = agl.LLMProxy(
        host="127.0.0.1",
        model_list=[
            {
                "model_name": "policy",
                "litellm_params": {
                    "model": "hosted_vllm/tiny-backend",
                    "api_base": endpoint.api_base,
                    "api_key": "os.environ/ENDPOINT_API_KEY",
                },
            }
        ],
        callbacks=callbacks,
    )
    collected: list[list[agl.Span]] = []

    @agl.algo
    async def algorithm(
        store: agl.LightningStore, llm_proxy: agl.LLMProxy, initial_resources: agl.NamedResources, train_dataset: Any
    ) -> None:
        await llm_proxy.start()
        try:
            await store.add_resources(initial_resources)
            rollouts = [await store.enqueue_rollout(task) for task in train_dataset]
            await store.wait_for_rollouts(rollout_ids=[r.rollout_id for r in rollouts], timeout=60)
            for rollout in rollouts:
                assert (await store.get_rollout_by_id(rollout.rollout_id)).status == "succeeded"
                collected.append(list(await store.query_spans(rollout.rollout_id)))
        finally:
            await llm_proxy.stop()

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    trainer = agl.Trainer(
        algorithm=algorithm,
        llm_proxy=proxy,
        initial_resources={"llm": proxy.as_resource(model="policy")},
        strategy={"type": "shm", "n_runners": 1},
        tracer=agl.DummyTracer() if hasattr(agl, "DummyTracer") else None,
        port=port,
    )
    trainer.fit(agent, [{"question": "hello there"}, {"question": "what now"}])
    return collected


def test_an_endpoint_that_returns_token_ids_gives_training_triplets(llm_backend: Backend) -> None:
    spans = run(llm_backend, callbacks=None)
    assert len(spans) == 2
    sent = llm_backend.requests
    assert len(sent) == 2
    assert all(r["return_token_ids"] is True and r["logprobs"] is True for r in sent), "the proxy asked for both"
    assert all(r["model"] == "tiny-backend" for r in sent), "the provider prefix is stripped"
    assert {h["authorization"] for h in llm_backend.headers} == {"Bearer secret"}, "api_key read from the environment"
    for rollout_spans, question in zip(spans, ["hello there", "what now"], strict=True):
        (triplet,) = agl.LlmProxyTraceToTriplet().adapt(rollout_spans)
        body = {"messages": [{"role": "user", "content": question}]}
        assert triplet.prompt["token_ids"] == prompt_ids(body)
        assert triplet.response["token_ids"] == reply_ids(reply_text(body, 0))
        assert triplet.reward == 1.0


def test_without_token_ids_calls_are_still_recorded_as_conversations_but_give_no_triplets(llm_backend: Backend) -> None:
    spans = run(llm_backend, callbacks=["opentelemetry"])
    sent = llm_backend.requests
    assert len(sent) == 2 and all("return_token_ids" not in r and "logprobs" not in r for r in sent), (
        "forwarded as written"
    )
    for rollout_spans in spans:
        assert agl.LlmProxyTraceToTriplet().adapt(rollout_spans) == []
        (conversation,) = agl.TraceToMessages().adapt(rollout_spans)
        roles = [m["role"] for m in conversation["messages"]]
        assert roles == ["user", "assistant"]
        assert agl.find_final_reward(rollout_spans) == 1.0
