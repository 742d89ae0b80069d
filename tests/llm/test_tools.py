"""Tool calling in the local model server: rendering tools for a tool-unaware template, parsing calls, the wire.

The server tests use a tiny Llama trained here, in a second, to answer its prompts with a fixed `<tool_call>`
block: the real server then turns what the model really generated into `tool_calls`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from agl.llm.tools import (
    ToolSpecError,
    check_tools,
    parse_tool_calls,
    render_tool_call,
    render_tools_for_template,
    template_knows_tools,
)

CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}},
    },
}
SEARCH = {"type": "function", "function": {"name": "search"}}
SHORT_CALCULATOR = {"type": "function", "function": {"name": "calculator"}}  # short prompts for the tiny model
CALL_TEXT = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2 + 3"}}\n</tool_call>'


# -- parsing and rendering ------------------------------------------------------------------------------------


def test_a_well_formed_block_becomes_a_tool_call() -> None:
    parsed = parse_tool_calls("Let me compute.\n" + CALL_TEXT, {"calculator"})
    assert parsed is not None and parsed.content == "Let me compute."
    (call,) = parsed.tool_calls
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "calculator"
    assert json.loads(call["function"]["arguments"]) == {"expression": "2 + 3"}


def test_several_blocks_string_arguments_and_an_unclosed_last_block() -> None:
    text = CALL_TEXT + '\n<tool_call>{"name": "calculator", "arguments": "{\\"expression\\": \\"1\\"}"}'
    parsed = parse_tool_calls(text, {"calculator"})
    assert parsed is not None and parsed.content is None
    assert [json.loads(c["function"]["arguments"]) for c in parsed.tool_calls] == [
        {"expression": "2 + 3"},
        {"expression": "1"},
    ]
    assert len({c["id"] for c in parsed.tool_calls}) == 2


@pytest.mark.parametrize(
    "text",
    [
        "The answer is 5.",  # no block
        "<tool_call>\nnot json\n</tool_call>",
        '<tool_call>\n{"name": "search", "arguments": {}}\n</tool_call>',  # a tool the request did not offer
        '<tool_call>\n["calculator"]\n</tool_call>',
        '<tool_call>\n{"name": "calculator", "arguments": [1, 2]}\n</tool_call>',
        '<tool_call>\n{"name": "calculator", "arguments": "not json"}\n</tool_call>',
        CALL_TEXT + "\n<tool_call>\n{broken\n</tool_call>",  # one bad block spoils them all
        "<tool_call></tool_call>",
    ],
)
def test_malformed_calls_are_not_parsed(text: str) -> None:
    assert parse_tool_calls(text, {"calculator"}) is None


def test_tools_go_into_the_system_message_and_calls_become_blocks() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2 + 3?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "2 + 3"}'}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "5"},
    ]  # fmt: skip
    rendered = render_tools_for_template(messages, [CALCULATOR])
    assert rendered[0]["content"].startswith("Be brief.\n\nYou can call these tools:")
    assert json.dumps(CALCULATOR) in rendered[0]["content"]
    assert rendered[2] == {"role": "assistant", "content": CALL_TEXT}
    assert rendered[3] == {"role": "tool", "content": "5"}
    assert messages[2]["content"] is None  # the caller's messages are left alone
    no_system = render_tools_for_template([{"role": "user", "content": "hi"}], [CALCULATOR])
    assert no_system[0]["role"] == "system" and no_system[1] == {"role": "user", "content": "hi"}


def test_render_tool_call_round_trips_through_the_parser() -> None:
    text = render_tool_call("calculator", '{"expression": "7 * 6"}')
    parsed = parse_tool_calls(text, {"calculator"})
    assert parsed is not None and json.loads(parsed.tool_calls[0]["function"]["arguments"]) == {"expression": "7 * 6"}


def test_bad_tool_definitions_name_the_field() -> None:
    check_tools([CALCULATOR, SEARCH])
    for bad, where in [
        ("calculator", "tools.0"),
        ({"type": "retrieval"}, "tools.0"),
        ({"type": "function", "function": {}}, "tools.0.function.name"),
        ({"type": "function", "function": {"name": "f", "parameters": []}}, "tools.0.function.parameters"),
    ]:
        with pytest.raises(ToolSpecError, match=where.replace(".", r"\.")):
            check_tools([bad])


def test_template_detection() -> None:
    assert template_knows_tools("{% if tools %}{{ tools | tojson }}{% endif %}")
    assert not template_knows_tools("{% for message in messages %}{{ message['content'] }}{% endfor %}")
    assert not template_knows_tools(None)


# -- the server, with a model that really writes a call -------------------------------------------------------

pytest.importorskip("torch")
pytest.importorskip("transformers")


def _request_prompts(tokenizer: Any) -> list[list[int]]:
    from agl.llm.protocol import ChatCompletionRequest, chat_prompt_ids

    prompts = []
    for tools in ([SHORT_CALCULATOR], [SEARCH]):
        request = ChatCompletionRequest(messages=[{"role": "user", "content": "2 + 3?"}], tools=tools)
        prompts.append(chat_prompt_ids(tokenizer, request))
    return prompts


@pytest.fixture(scope="module")
def caller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """A served tiny model trained to answer the test prompts with `CALL_TEXT`, and the tokenizer."""
    import torch

    from agl.llm.server import ModelServer
    from tests.llm.tiny_model import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    model = tiny_model(len(tokenizer))
    model.config.max_position_embeddings = 1024  # the tool instructions make the prompts longer than 256 tokens
    target = tokenizer(CALL_TEXT, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    prompts = _request_prompts(tokenizer)
    width = max(len(p) for p in prompts) + len(target)
    ids = torch.full((len(prompts), width), 0, dtype=torch.long)
    for row, prompt in enumerate(prompts):  # left-padded so every target sits in the same columns
        ids[row, width - len(prompt) - len(target) :] = torch.tensor(prompt + target)
    attention = (torch.arange(width) >= (width - torch.tensor([len(p) + len(target) for p in prompts]))[:, None]).long()
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    labels = ids[:, width - len(target) :]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(400):
        logits = model(input_ids=ids, attention_mask=attention, position_ids=positions).logits
        predicted = logits[:, width - len(target) - 1 : -1]
        if bool((predicted.argmax(-1) == labels).all()):
            break  # greedy decoding now writes the call
        loss = torch.nn.functional.cross_entropy(predicted.reshape(-1, predicted.shape[-1]), labels.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    else:
        pytest.fail("the tiny model did not learn to write the call")
    model.eval()
    with ModelServer(model, tokenizer, model_name="tiny-caller", batch_window=0.0) as server:
        yield server.base_url, tokenizer


def _post(base_url: str, body: dict[str, Any]) -> Any:
    import httpx

    with httpx.Client(base_url=base_url, timeout=60) as http:
        return http.post("/chat/completions", json=body)


def _body(tools: list[Any], **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "2 + 3?"}], "tools": tools, "temperature": 0, **extra}


def test_a_generated_call_comes_back_as_tool_calls(caller: tuple[str, Any]) -> None:
    base_url, tokenizer = caller
    body = _post(base_url, _body([SHORT_CALCULATOR])).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "calculator"
    assert json.loads(call["function"]["arguments"]) == {"expression": "2 + 3"}
    # The token ids are the model's own output, untouched by the parsing.
    assert tokenizer.decode(choice["token_ids"], skip_special_tokens=True) == CALL_TEXT


def test_a_call_to_a_tool_not_offered_stays_plain_content(caller: tuple[str, Any]) -> None:
    base_url, _ = caller
    choice = _post(base_url, _body([SEARCH])).json()["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": CALL_TEXT}
    assert choice["finish_reason"] == "stop"


def test_tool_choice_none_leaves_the_text_alone(caller: tuple[str, Any]) -> None:
    base_url, _ = caller
    choice = _post(base_url, _body([SHORT_CALCULATOR], tool_choice="none")).json()["choices"][0]
    assert "tool_calls" not in choice["message"] and choice["finish_reason"] == "stop"


def test_a_stream_with_tools_sends_the_call_as_a_tool_calls_delta(caller: tuple[str, Any]) -> None:
    import httpx

    base_url, _ = caller
    chunks = []
    with (
        httpx.Client(base_url=base_url, timeout=60) as http,
        http.stream("POST", "/chat/completions", json=_body([SHORT_CALCULATOR], stream=True)) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[len("data: ") :]))
    finals = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    (final,) = finals
    assert final["finish_reason"] == "tool_calls" and final["delta"]["content"] is None
    (call,) = final["delta"]["tool_calls"]
    assert call["index"] == 0 and call["function"]["name"] == "calculator"
    assert final["token_ids"] and final["weights_version"] == "0"


def test_the_follow_up_turn_with_the_call_and_the_tool_result_is_rendered(caller: tuple[str, Any]) -> None:
    base_url, tokenizer = caller
    messages = [
        {"role": "user", "content": "2 + 3?"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "2 + 3"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "5"},
    ]  # fmt: skip
    response = _post(base_url, {"messages": messages, "tools": [CALCULATOR], "max_tokens": 4})
    assert response.status_code == 200, response.text
    prompt = tokenizer.decode(response.json()["prompt_token_ids"])
    assert CALL_TEXT + "<|im_end|>" in prompt and "<|im_start|>tool\n5<|im_end|>" in prompt
    assert "You can call these tools:" in prompt


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_body(["calculator"]), "tools.0"),
        (_body([{"type": "function", "function": {"description": "no name"}}]), "tools.0.function.name"),
        (_body([CALCULATOR], tool_choice="always"), "tool_choice"),
        (
            {"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "x"}]}]},
            "messages.0.tool_calls.0",
        ),
    ],
)
def test_bad_tools_get_400_naming_the_field(caller: tuple[str, Any], body: dict[str, Any], field: str) -> None:
    base_url, _ = caller
    response = _post(base_url, body)
    assert response.status_code == 400
    assert field in response.json()["error"]["message"]
