"""LLMProxy against a real OpenAI-compatible backend (tests/llm/backend.py, the `llm_backend` fixture), a real
InMemoryLightningStore and the real `openai` client (httpx where the client cannot express the request)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from agl import semconv
from agl.adapter.messages import TraceToMessages
from agl.adapter.triplet import LlmProxyTraceToTriplet, TracerTraceToTriplet
from agl.llm.proxy import LLMProxy, get_active_llm_proxy, parse_model_list
from agl.llm.proxy_trace import CHOICE_COUNT, CHOICE_INDEX, WEIGHTS_VERSION, SSEParser
from agl.store.base import LightningStore, LightningStoreCapabilities
from agl.store.memory import InMemoryLightningStore
from agl.types.resources import LLM, ProxyLLM
from agl.types.tracer import Span
from tests.llm.backend import Backend, prompt_ids, reply_ids, reply_logprobs, reply_text

openai = pytest.importorskip("openai")


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def model_list(backend: Backend) -> list[dict[str, Any]]:
    def entry(name: str, target: str, base: str | None = None) -> dict[str, Any]:
        return {
            "model_name": name,
            "litellm_params": {"model": f"hosted_vllm/{target}", "api_base": base or backend.api_base, "api_key": "k"},
        }

    return [
        entry("tiny", "tiny-backend"),
        entry("broken400", "fail-400"),
        entry("broken503", "fail-503"),
        entry("cut", "cut"),
        entry("slow", "slow"),
        entry("down", "tiny", f"http://127.0.0.1:{_free_port()}/v1"),
    ]


@pytest.fixture
async def store() -> InMemoryLightningStore:
    return InMemoryLightningStore()


@pytest.fixture
async def proxy(llm_backend: Backend, store: InMemoryLightningStore) -> AsyncIterator[LLMProxy]:
    llm_proxy = LLMProxy(host="127.0.0.1", model_list=model_list(llm_backend), store=store)
    await llm_proxy.start()
    try:
        yield llm_proxy
    finally:
        await llm_proxy.stop()
    assert not llm_proxy.is_running()


async def new_attempt(store: LightningStore) -> tuple[str, str]:
    attempted = await store.start_rollout(input={"task": 1})
    return attempted.rollout_id, attempted.attempt.attempt_id


def client_for(proxy: LLMProxy, rollout_id: str, attempt_id: str) -> Any:
    resource = proxy.as_resource(model="tiny")
    assert isinstance(resource, ProxyLLM)
    return openai.AsyncOpenAI(
        base_url=resource.get_base_url(rollout_id, attempt_id), api_key="agent-key", max_retries=0
    )


async def spans_of(store: LightningStore, rollout_id: str) -> list[Span]:
    return list((await store.query_spans(rollout_id)).items)


MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello world"}]
CHAT_PROMPT = {"messages": MESSAGES}


# -- recording ------------------------------------------------------------------------------------------------------


async def test_non_streaming_chat_is_recorded_with_token_ids_and_genai_attributes(
    proxy: LLMProxy, store: InMemoryLightningStore, llm_backend: Backend
) -> None:
    rid, aid = await new_attempt(store)
    async with client_for(proxy, rid, aid) as client:
        answer = await client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0.5, max_tokens=7)
    assert answer.choices[0].message.content == "re:hello "
    # The backend was asked for token ids and logprobs, under its own model name, with the tagging headers.
    sent = llm_backend.requests[-1]
    assert sent["model"] == "tiny-backend" and sent["return_token_ids"] is True and sent["logprobs"] is True
    assert llm_backend.headers[-1]["authorization"] == "Bearer k"
    assert llm_backend.headers[-1]["x-rollout-id"] == rid and llm_backend.headers[-1]["x-sequence-id"] == "1"

    (span,) = await spans_of(store, rid)
    attrs = span.attributes
    text = reply_text(CHAT_PROMPT, 0)
    assert span.name == "openai.chat.completion" and span.status.status_code == "OK"
    assert (span.rollout_id, span.attempt_id, span.sequence_id) == (rid, aid, 1)
    assert attrs["prompt_token_ids"] == prompt_ids(CHAT_PROMPT)
    assert attrs["response_token_ids"] == reply_ids(text)
    assert attrs["response_logprobs"] == reply_logprobs(text)
    assert attrs[semconv.GEN_AI_SYSTEM] == "hosted_vllm"
    assert attrs[semconv.GEN_AI_REQUEST_MODEL] == "tiny"
    assert attrs[semconv.GEN_AI_REQUEST_TEMPERATURE] == 0.5
    assert attrs[semconv.GEN_AI_REQUEST_MAX_TOKENS] == 7
    assert attrs[semconv.GEN_AI_RESPONSE_ID] == answer.id
    assert attrs[semconv.GEN_AI_RESPONSE_MODEL] == "tiny-backend"
    assert attrs[semconv.GEN_AI_USAGE_INPUT_TOKENS] == len(prompt_ids(CHAT_PROMPT))
    assert attrs[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == len(text)
    assert attrs["gen_ai.prompt.0.role"] == "system" and attrs["gen_ai.prompt.1.content"] == "hello world"
    assert attrs["gen_ai.completion.0.role"] == "assistant"
    assert attrs["gen_ai.completion.0.content"] == text
    assert attrs["gen_ai.completion.0.finish_reason"] == "stop"
    assert span.start_time is not None and span.end_time is not None and span.start_time <= span.end_time
    # The conversation can be rebuilt from the span.
    (conversation,) = TraceToMessages().adapt([span])
    assert conversation["messages"] == [*MESSAGES, {"role": "assistant", "content": text}]


async def test_streaming_chat_relays_chunks_and_records_the_same_span(
    proxy: LLMProxy, store: InMemoryLightningStore
) -> None:
    rid, aid = await new_attempt(store)
    async with client_for(proxy, rid, aid) as client:
        stream = await client.chat.completions.create(model="tiny", messages=MESSAGES, stream=True)
        pieces = [chunk.choices[0].delta.content async for chunk in stream if chunk.choices]
    text = reply_text(CHAT_PROMPT, 0)
    assert "".join(p for p in pieces if p) == text
    assert len(pieces) >= len(text)  # chunk by chunk, not one block
    (span,) = await spans_of(store, rid)
    attrs = span.attributes
    assert span.status.status_code == "OK" and attrs["agentlightning.llm_proxy.stream"] is True
    assert attrs["prompt_token_ids"] == prompt_ids(CHAT_PROMPT)
    assert attrs["response_token_ids"] == reply_ids(text)
    assert attrs["response_logprobs"] == reply_logprobs(text)
    assert attrs["gen_ai.completion.0.content"] == text
    assert attrs[semconv.GEN_AI_RESPONSE_ID].startswith("cmpl-")
    assert attrs[semconv.GEN_AI_RESPONSE_FINISH_REASONS] == ["stop"]


async def test_stream_span_is_stored_before_the_agent_sees_the_end(
    proxy: LLMProxy, store: InMemoryLightningStore
) -> None:
    rid, aid = await new_attempt(store)
    url = proxy.as_resource(model="tiny").get_base_url(rid, aid) + "/chat/completions"
    seen_before_done: list[int] = []
    async with (
        httpx.AsyncClient() as http,
        http.stream("POST", url, json={"model": "tiny", "messages": MESSAGES, "stream": True}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.strip() == "data: [DONE]":
                seen_before_done.append(len(await spans_of(store, rid)))
    assert seen_before_done == [1]


async def test_text_completions_streaming_and_not(proxy: LLMProxy, store: InMemoryLightningStore) -> None:
    rid, aid = await new_attempt(store)
    body = {"prompt": "2+2="}
    async with client_for(proxy, rid, aid) as client:
        whole = await client.completions.create(model="tiny", prompt="2+2=", max_tokens=4)
        stream = await client.completions.create(model="tiny", prompt="2+2=", stream=True)
        streamed = "".join([chunk.choices[0].text async for chunk in stream if chunk.choices])
    assert whole.choices[0].text == streamed == reply_text(body, 0)
    spans = await spans_of(store, rid)
    assert [s.sequence_id for s in spans] == [1, 2]
    for span in spans:
        assert span.name == "openai.completion"
        assert span.attributes["prompt_token_ids"] == prompt_ids(body)
        assert span.attributes["response_token_ids"] == reply_ids(reply_text(body, 0))
        assert span.attributes["response_logprobs"] == reply_logprobs(reply_text(body, 0))
        assert span.attributes["gen_ai.prompt.0.content"] == "2+2="


async def test_every_call_carries_token_ids_and_sequence_ids_increase(
    proxy: LLMProxy, store: InMemoryLightningStore
) -> None:
    rid, aid = await new_attempt(store)
    async with client_for(proxy, rid, aid) as client:
        for turn in range(6):
            messages = [{"role": "user", "content": f"turn {turn}"}]
            if turn % 2:
                stream = await client.chat.completions.create(model="tiny", messages=messages, stream=True)
                async for _ in stream:
                    pass
            else:
                await client.chat.completions.create(model="tiny", messages=messages)
    spans = await spans_of(store, rid)
    assert [s.sequence_id for s in spans] == [1, 2, 3, 4, 5, 6]
    assert all(s.attributes["prompt_token_ids"] and s.attributes["response_token_ids"] for s in spans)
    assert [s.attributes["gen_ai.prompt.0.content"] for s in spans] == [f"turn {t}" for t in range(6)]


async def test_concurrent_calls_get_distinct_sequence_ids(proxy: LLMProxy, store: InMemoryLightningStore) -> None:
    rid, aid = await new_attempt(store)
    async with client_for(proxy, rid, aid) as client:

        async def one(k: int) -> None:
            messages = [{"role": "user", "content": f"q{k}"}]
            if k % 2:
                async for _ in await client.chat.completions.create(model="tiny", messages=messages, stream=True):
                    pass
            else:
                await client.chat.completions.create(model="tiny", messages=messages)

        await asyncio.gather(*(one(k) for k in range(10)))
    spans = await spans_of(store, rid)
    assert sorted(s.sequence_id for s in spans) == list(range(1, 11))
    assert all(s.attributes["response_token_ids"] for s in spans)


@pytest.mark.parametrize("stream", [False, True])
async def test_n_choices_give_one_span_per_choice(proxy: LLMProxy, store: InMemoryLightningStore, stream: bool) -> None:
    rid, aid = await new_attempt(store)
    async with client_for(proxy, rid, aid) as client:
        if stream:
            texts = ["", "", ""]
            async for chunk in await client.chat.completions.create(model="tiny", messages=MESSAGES, n=3, stream=True):
                for choice in chunk.choices:
                    texts[choice.index] += choice.delta.content or ""
        else:
            answer = await client.chat.completions.create(model="tiny", messages=MESSAGES, n=3)
            texts = [c.message.content or "" for c in answer.choices]
    assert texts == [reply_text(CHAT_PROMPT, i) for i in range(3)]
    spans = await spans_of(store, rid)
    assert len(spans) == 3
    assert {s.sequence_id for s in spans} == {1} and len({s.trace_id for s in spans}) == 1
    by_index = {s.attributes[CHOICE_INDEX]: s for s in spans}
    assert sorted(by_index) == [0, 1, 2]
    for i, span in by_index.items():
        text = reply_text(CHAT_PROMPT, i)
        assert span.attributes[CHOICE_COUNT] == 3
        assert span.attributes["prompt_token_ids"] == prompt_ids(CHAT_PROMPT)
        assert span.attributes["response_token_ids"] == reply_ids(text)
        assert span.attributes["response_logprobs"] == reply_logprobs(text)
        assert span.attributes["gen_ai.completion.0.content"] == text
        assert span.attributes[semconv.GEN_AI_USAGE_OUTPUT_TOKENS] == len(text)
        assert span.attributes[WEIGHTS_VERSION] == 3


# -- errors ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "status"), [("broken400", 400), ("broken503", 503)])
@pytest.mark.parametrize("stream", [False, True])
async def test_backend_error_status_and_body_reach_the_agent_and_are_recorded(
    proxy: LLMProxy, store: InMemoryLightningStore, model: str, status: int, stream: bool
) -> None:
    rid, aid = await new_attempt(store)
    async with client_for(proxy, rid, aid) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model=model, messages=MESSAGES, stream=stream)
    assert caught.value.status_code == status
    assert caught.value.body == {"message": f"backend failure {status}", "code": status}
    (span,) = await spans_of(store, rid)
    assert span.status.status_code == "ERROR" and str(status) in (span.status.description or "")
    assert span.attributes["http.response.status_code"] == status
    assert f"backend failure {status}" in span.attributes["agentlightning.llm_proxy.error_body"]
    assert "response_token_ids" not in span.attributes
    assert span.attributes[semconv.GEN_AI_REQUEST_MODEL] == model


async def test_unreachable_backend_gives_502_naming_it(proxy: LLMProxy, store: InMemoryLightningStore) -> None:
    rid, aid = await new_attempt(store)
    down = parse_model_list(proxy.model_list)["down"][0].api_base
    async with client_for(proxy, rid, aid) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model="down", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert down in caught.value.message and "'down'" in caught.value.message
    (span,) = await spans_of(store, rid)
    assert span.status.status_code == "ERROR" and down in (span.status.description or "")
    assert span.attributes["http.response.status_code"] == 502


async def test_retries_move_to_the_next_deployment(llm_backend: Backend, store: InMemoryLightningStore) -> None:
    dead = f"http://127.0.0.1:{_free_port()}/v1"
    entries = [
        {"model_name": "tiny", "litellm_params": {"model": "hosted_vllm/tiny-backend", "api_base": base}}
        for base in (dead, llm_backend.api_base)
    ]
    proxy = LLMProxy(host="127.0.0.1", model_list=entries, store=store, num_retries=1)
    await proxy.start()
    try:
        rid, aid = await new_attempt(store)
        async with client_for(proxy, rid, aid) as client:
            for _ in range(2):  # whichever deployment comes first, the call succeeds
                await client.chat.completions.create(model="tiny", messages=MESSAGES)
    finally:
        await proxy.stop()
    spans = await spans_of(store, rid)
    assert [s.status.status_code for s in spans] == ["OK", "OK"]
    assert {s.attributes["agentlightning.llm_proxy.backend"] for s in spans} == {llm_backend.api_base}


async def test_stream_breaking_off_is_recorded_as_error(proxy: LLMProxy, store: InMemoryLightningStore) -> None:
    rid, aid = await new_attempt(store)
    async with client_for(proxy, rid, aid) as client:
        received = ""
        with contextlib.suppress(openai.APIError, httpx.HTTPError):
            async for chunk in await client.chat.completions.create(model="cut", messages=MESSAGES, stream=True):
                received += "".join(c.delta.content or "" for c in chunk.choices)
    assert received == reply_text(CHAT_PROMPT, 0)[:2]
    for _ in range(100):
        spans = await spans_of(store, rid)
        if spans:
            break
        await asyncio.sleep(0.02)
    (span,) = spans
    assert span.status.status_code == "ERROR"
    assert "response_token_ids" not in span.attributes


async def test_agent_leaving_mid_stream_is_recorded(proxy: LLMProxy, store: InMemoryLightningStore) -> None:
    rid, aid = await new_attempt(store)
    url = proxy.as_resource(model="tiny").get_base_url(rid, aid) + "/chat/completions"
    async with httpx.AsyncClient() as http:
        async with http.stream("POST", url, json={"model": "slow", "messages": MESSAGES, "stream": True}) as response:
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    break  # leave after the first event
    for _ in range(200):
        spans = await spans_of(store, rid)
        if spans:
            break
        await asyncio.sleep(0.02)
    (span,) = spans
    assert span.status.status_code == "ERROR" and "closed the stream" in (span.status.description or "")


async def test_unknown_model_is_404_listing_known_models(proxy: LLMProxy, store: InMemoryLightningStore) -> None:
    rid, aid = await new_attempt(store)
    async with client_for(proxy, rid, aid) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(model="gpt-nope", messages=MESSAGES)
    message = caught.value.message
    assert "gpt-nope" in message and "tiny" in message and "broken400" in message
    (span,) = await spans_of(store, rid)
    assert span.status.status_code == "ERROR" and span.attributes["http.response.status_code"] == 404


async def test_unknown_rollout_is_404(proxy: LLMProxy) -> None:
    async with client_for(proxy, "ro-missing", "at-missing") as client:
        with pytest.raises(openai.NotFoundError, match="ro-missing"):
            await client.chat.completions.create(model="tiny", messages=MESSAGES)


async def test_bad_json_is_400(proxy: LLMProxy, store: InMemoryLightningStore) -> None:
    rid, aid = await new_attempt(store)
    url = proxy.as_resource(model="tiny").get_base_url(rid, aid) + "/v1/chat/completions"
    async with httpx.AsyncClient() as http:
        response = await http.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "JSON" in response.json()["error"]["message"]


# -- untagged paths, models, health ---------------------------------------------------------------------------------


async def test_untagged_path_is_proxied_without_spans(
    proxy: LLMProxy, store: InMemoryLightningStore, llm_backend: Backend
) -> None:
    rid, _ = await new_attempt(store)
    resource = proxy.as_resource(model="tiny")
    assert isinstance(resource, ProxyLLM)
    async with openai.AsyncOpenAI(base_url=resource.get_base_url() + "/v1", api_key="x", max_retries=0) as client:
        answer = await client.chat.completions.create(model="tiny", messages=MESSAGES)
        async for _ in await client.chat.completions.create(model="tiny", messages=MESSAGES, stream=True):
            pass
        models = await client.models.list()
        embedding = await client.embeddings.create(model="tiny", input="hi")
    assert answer.choices[0].message.content == reply_text(CHAT_PROMPT, 0)
    assert [m.id for m in models.data] == ["tiny", "broken400", "broken503", "cut", "slow", "down"]
    assert embedding.data[0].embedding == [0.5, 0.25] and llm_backend.requests[-1]["model"] == "tiny-backend"
    assert await spans_of(store, rid) == []
    assert (await store.statistics()).get("total_spans", 0) == 0


async def test_health(proxy: LLMProxy) -> None:
    async with httpx.AsyncClient() as http:
        plain = await http.get(proxy.endpoint + "/health")
        probed = await http.get(proxy.endpoint + "/health", params={"probe": "1"})
    assert plain.status_code == 200 and plain.json()["status"] == "healthy"
    assert probed.status_code == 503  # the 'down' backend is unreachable
    backends = probed.json()["backends"]
    assert backends[f"tiny @ {proxy.model_list[0]['litellm_params']['api_base']}"] == 200


# -- adapter --------------------------------------------------------------------------------------------------------


def reward_span(rid: str, aid: str, sequence_id: int, value: float) -> Span:
    return Span(
        rollout_id=rid,
        attempt_id=aid,
        sequence_id=sequence_id,
        trace_id="ab" * 16,
        span_id=f"{sequence_id:016x}",
        name=semconv.AGL_ANNOTATION,
        attributes={semconv.reward_name_key(0): "primary", semconv.reward_value_key(0): value},
        start_time=time.time(),
        end_time=time.time(),
    )


async def test_llm_proxy_trace_to_triplet_over_stored_spans(proxy: LLMProxy, store: InMemoryLightningStore) -> None:
    rid, aid = await new_attempt(store)
    prompts = [[{"role": "user", "content": f"step {k}"}] for k in range(3)]
    async with client_for(proxy, rid, aid) as client:
        await client.chat.completions.create(model="tiny", messages=prompts[0])
        async for _ in await client.chat.completions.create(model="tiny", messages=prompts[1], stream=True):
            pass
        with pytest.raises(openai.APIStatusError):  # a failed call yields no triplet
            await client.chat.completions.create(model="broken503", messages=prompts[2])
        await client.chat.completions.create(model="tiny", messages=prompts[2])
    await store.add_span(reward_span(rid, aid, await store.get_next_span_sequence_id(rid, aid), 0.75))

    triplets = LlmProxyTraceToTriplet().adapt(await spans_of(store, rid))
    assert len(triplets) == 3
    for k, triplet in enumerate(triplets):
        body = {"messages": prompts[k]}
        text = reply_text(body, 0)
        assert triplet.prompt["token_ids"] == prompt_ids(body)
        assert triplet.response["token_ids"] == reply_ids(text)
        assert triplet.response["logprobs"] == reply_logprobs(text)
    assert [t.reward for t in triplets] == [None, None, 0.75]
    assert [t.metadata["sequence_id"] for t in triplets] == [1, 2, 4]
    # The tracer-side adapter reads the same spans too (the failed call has no token ids).
    tracer_side = TracerTraceToTriplet(_skip_empty_token_spans=True).adapt(await spans_of(store, rid))
    assert [t.response["token_ids"] for t in tracer_side] == [t.response["token_ids"] for t in triplets]


async def test_llm_proxy_trace_to_triplet_n_choices(proxy: LLMProxy, store: InMemoryLightningStore) -> None:
    rid, aid = await new_attempt(store)
    async with client_for(proxy, rid, aid) as client:
        await client.chat.completions.create(model="tiny", messages=MESSAGES, n=3)
    triplets = LlmProxyTraceToTriplet().adapt(await spans_of(store, rid))
    assert [t.response["token_ids"] for t in triplets] == [reply_ids(reply_text(CHAT_PROMPT, i)) for i in range(3)]


# -- configuration and lifecycle ------------------------------------------------------------------------------------


async def test_as_resource_shapes(llm_backend: Backend) -> None:
    one = LLMProxy(host="127.0.0.1", port=4321, model_list=model_list(llm_backend)[:1])
    resource = one.as_resource(sampling_parameters={"temperature": 0.7})
    assert isinstance(resource, ProxyLLM) and resource.model == "tiny"
    assert resource.get_base_url() == "http://127.0.0.1:4321"
    assert resource.get_base_url("r", "a") == "http://127.0.0.1:4321/rollout/r/attempt/a"
    assert resource.sampling_parameters == {"temperature": 0.7}
    tagged = one.as_resource("r", "a")
    assert type(tagged) is LLM and tagged.endpoint == "http://127.0.0.1:4321/rollout/r/attempt/a"
    with pytest.raises(ValueError, match="both"):
        one.as_resource("r")
    many = LLMProxy(host="127.0.0.1", model_list=model_list(llm_backend))
    with pytest.raises(ValueError, match="cannot infer the model"):
        many.as_resource()
    assert many.as_resource(model="cut").model == "cut"


async def test_start_needs_a_store_with_fitting_capabilities(llm_backend: Backend) -> None:
    proxy = LLMProxy(host="127.0.0.1", model_list=model_list(llm_backend))
    with pytest.raises(ValueError, match="needs a store"):
        await proxy.start()

    class Unsafe(InMemoryLightningStore):
        @property
        def capabilities(self) -> LightningStoreCapabilities:
            return LightningStoreCapabilities(thread_safe=False, async_safe=True, zero_copy=False)

    proxy.set_store(Unsafe())
    with pytest.raises(RuntimeError, match="thread_safe"):
        await proxy.start()
    proxy = LLMProxy(
        host="127.0.0.1", model_list=model_list(llm_backend), store=InMemoryLightningStore(), launch_mode="mp"
    )
    with pytest.raises(RuntimeError, match="zero_copy"):
        await proxy.start()
    assert not proxy.is_running()


def test_constructor_validation(llm_backend: Backend) -> None:
    with pytest.raises(ValueError, match="launcher_args cannot set port"):
        LLMProxy(launcher_args={"port": 1})
    with pytest.raises(ValueError, match="unknown callback"):
        LLMProxy(callbacks=["nope"])
    with pytest.raises(ValueError, match="launch_mode"):
        LLMProxy(launch_mode="fork")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"litellm_params\.model"):
        LLMProxy(model_list=[{"model_name": "x", "litellm_params": {}}])
    with pytest.raises(ValueError, match="api_base is required"):
        LLMProxy(model_list=[{"model_name": "x", "litellm_params": {"model": "hosted_vllm/x"}}])
    routes = parse_model_list(
        [
            {"model_name": "a", "litellm_params": {"model": "hosted_vllm/org/m", "api_base": "http://h:1"}},
            {"model_name": "b", "litellm_params": {"model": "gpt-4o-mini"}},
        ]
    )
    assert routes["a"][0].backend_model == "org/m" and routes["a"][0].api_base == "http://h:1/v1"
    assert routes["b"][0].provider == "openai" and routes["b"][0].api_base == "https://api.openai.com/v1"


async def test_lifecycle_restart_keeps_port_and_asyncio_mode(
    llm_backend: Backend, store: InMemoryLightningStore
) -> None:
    proxy = LLMProxy(host="127.0.0.1", model_list=model_list(llm_backend), store=store, launch_mode="asyncio")
    assert not proxy.is_running()
    await proxy.start()
    try:
        assert proxy.is_running() and get_active_llm_proxy() is proxy
        port = proxy.port
        await proxy.restart()
        assert proxy.is_running() and proxy.port == port
        rid, aid = await new_attempt(store)
        async with client_for(proxy, rid, aid) as client:
            await client.chat.completions.create(model="tiny", messages=MESSAGES)
        assert len(await spans_of(store, rid)) == 1
        proxy.update_model_list(model_list(llm_backend)[:1])  # takes effect on the running proxy
        async with client_for(proxy, rid, aid) as client:
            with pytest.raises(openai.NotFoundError):
                await client.chat.completions.create(model="cut", messages=MESSAGES)
    finally:
        await proxy.stop()
    assert not proxy.is_running() and get_active_llm_proxy() is None
    await proxy.stop()  # a warning, no error


async def test_stream_conversion_replays_a_whole_answer(llm_backend: Backend, store: InMemoryLightningStore) -> None:
    proxy = LLMProxy(
        host="127.0.0.1",
        model_list=model_list(llm_backend),
        store=store,
        middlewares=["rollout_attempt", "stream_conversion"],
    )
    await proxy.start()
    try:
        rid, aid = await new_attempt(store)
        async with client_for(proxy, rid, aid) as client:
            texts = ["", ""]
            async for chunk in await client.chat.completions.create(model="tiny", messages=MESSAGES, n=2, stream=True):
                for choice in chunk.choices:
                    texts[choice.index] += choice.delta.content or ""
    finally:
        await proxy.stop()
    assert llm_backend.requests[-1]["stream"] is False
    assert texts == [reply_text(CHAT_PROMPT, i) for i in range(2)]
    spans = await spans_of(store, rid)
    assert sorted(s.attributes["response_token_ids"] for s in spans) == sorted(
        reply_ids(reply_text(CHAT_PROMPT, i)) for i in range(2)
    )


async def test_callbacks_can_turn_off_token_ids_and_recording(
    llm_backend: Backend, store: InMemoryLightningStore
) -> None:
    proxy = LLMProxy(host="127.0.0.1", model_list=model_list(llm_backend), store=store, callbacks=[])
    await proxy.start()
    try:
        rid, aid = await new_attempt(store)
        async with client_for(proxy, rid, aid) as client:
            await client.chat.completions.create(model="tiny", messages=MESSAGES)
    finally:
        await proxy.stop()
    assert "return_token_ids" not in llm_backend.requests[-1] and "logprobs" not in llm_backend.requests[-1]
    assert await spans_of(store, rid) == []


# -- SSE parsing ----------------------------------------------------------------------------------------------------


def test_sse_parser_splits_across_chunk_boundaries() -> None:
    stream = b'data: {"a": 1}\r\n\r\n: comment\n\ndata: line1\ndata: line2\n\ndata: [DONE]'
    parser = SSEParser()
    events: list[tuple[bytes, str | None]] = []
    for k in range(len(stream)):
        events.extend(parser.feed(stream[k : k + 1]))
    events.extend(parser.close())
    assert [data for _, data in events] == ['{"a": 1}', None, "line1\nline2", "[DONE]"]
    assert b"".join(raw for raw, _ in events) == stream


async def test_mp_mode_records_through_a_store_server(llm_backend: Backend) -> None:
    from agl.store.server import LightningStoreServer

    server = LightningStoreServer(InMemoryLightningStore(), host="127.0.0.1", port=0)
    await server.start_async()
    try:
        proxy = LLMProxy(host="127.0.0.1", model_list=model_list(llm_backend), store=server, launch_mode="mp")
        await proxy.start()
        try:
            assert proxy.is_running()
            rid, aid = await new_attempt(server)
            async with client_for(proxy, rid, aid) as client:
                await client.chat.completions.create(model="tiny", messages=MESSAGES)
                async for _ in await client.chat.completions.create(model="tiny", messages=MESSAGES, stream=True):
                    pass
        finally:
            await proxy.stop()
        assert not proxy.is_running()
        spans = await spans_of(server, rid)
        assert [s.sequence_id for s in spans] == [1, 2]
        assert all(s.attributes["response_token_ids"] == reply_ids(reply_text(CHAT_PROMPT, 0)) for s in spans)
    finally:
        await server.stop_async()
