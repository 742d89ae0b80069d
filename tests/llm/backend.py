"""A deterministic OpenAI-compatible backend on 127.0.0.1 (a small Starlette app on a real server), used through
the `llm_backend` fixture of tests/conftest.py by the LLM proxy tests and the docs/endpoints.md tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agl.asgi_serving import AsgiServer


def _prompt_text(body: dict[str, Any]) -> str:
    if "messages" in body:
        return "|".join(str(m.get("content")) for m in body["messages"])
    return str(body.get("prompt"))


def prompt_ids(body: dict[str, Any]) -> list[int]:
    """The backend's 'tokenization' of a prompt: one id per character (first 24)."""
    return [ord(c) for c in _prompt_text(body)[:24]]


def reply_text(body: dict[str, Any], index: int) -> str:
    last = body["messages"][-1]["content"] if "messages" in body else str(body.get("prompt"))
    return f"re:{last[:6]}" + (f"#{index}" if index else "")


def reply_ids(text: str) -> list[int]:
    return [1000 + ord(c) for c in text]


def reply_logprobs(text: str) -> list[float]:
    return [-round(0.05 * (k + 1), 4) for k in range(len(text))]


class Backend:
    """A tiny vLLM-like server: token ids only with `return_token_ids`, logprobs only when asked.

    Backend model names select behaviours: `fail-400` / `fail-503` answer that status; `cut` streams two
    chunks and then drops the connection.
    """

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.port = 0
        self._server: AsgiServer | None = None

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self.completions, methods=["POST"]),
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
            ]
        )

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "tiny", "object": "model"}]})

    async def embeddings(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        return JSONResponse(
            {"object": "list", "data": [{"embedding": [0.5, 0.25], "index": 0}], "model": body["model"]}
        )

    async def completions(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        chat = request.url.path.endswith("/chat/completions")
        model = body["model"]
        if model.startswith("fail-"):
            status = int(model.split("-")[1])
            return JSONResponse({"error": {"message": f"backend failure {status}", "code": status}}, status)
        n = int(body.get("n") or 1)
        if body.get("stream"):
            return StreamingResponse(self._stream(body, chat, n), media_type="text/event-stream")
        choices = []
        for i in range(n):
            text = reply_text(body, i)
            choice: dict[str, Any] = {"index": i, "finish_reason": "stop"}
            if chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            if body.get("return_token_ids"):
                choice["token_ids"] = reply_ids(text)
            if body.get("logprobs"):
                choice["logprobs"] = self._logprobs(text, chat)
            choices.append(choice)
        answer: dict[str, Any] = {
            "id": f"cmpl-{len(self.requests)}",
            "object": "chat.completion" if chat else "text_completion",
            "created": 1,
            "model": model,
            "choices": choices,
            "weights_version": 3,
            "usage": {
                "prompt_tokens": len(prompt_ids(body)),
                "completion_tokens": sum(len(reply_text(body, i)) for i in range(n)),
                "total_tokens": 0,
            },
        }
        if body.get("return_token_ids"):
            answer["prompt_token_ids"] = prompt_ids(body)
        return JSONResponse(answer)

    @staticmethod
    def _logprobs(text: str, chat: bool) -> dict[str, Any]:
        values = reply_logprobs(text)
        if chat:
            return {
                "content": [
                    {"token": c, "logprob": v, "bytes": [ord(c)], "top_logprobs": []}
                    for c, v in zip(text, values, strict=True)
                ]
            }
        return {"tokens": list(text), "token_logprobs": values, "top_logprobs": None, "text_offset": []}

    async def _stream(self, body: dict[str, Any], chat: bool, n: int) -> AsyncIterator[bytes]:
        ident = f"cmpl-{len(self.requests)}"
        kind = "chat.completion.chunk" if chat else "text_completion"

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            payload = {"id": ident, "object": kind, "created": 1, "model": body["model"], "choices": choices, **extra}
            return b"data: " + json.dumps(payload).encode() + b"\r\n\r\n"  # CRLF, as some servers send

        head: dict[str, Any] = {}
        if body.get("return_token_ids"):
            head["prompt_token_ids"] = prompt_ids(body)
        if chat:
            yield event([{"index": i, "delta": {"role": "assistant", "content": ""}} for i in range(n)], **head)
        texts = [reply_text(body, i) for i in range(n)]
        for k in range(max(len(t) for t in texts)):
            if body["model"] == "cut" and k == 2:
                raise RuntimeError("backend dies mid-stream")
            for i, text in enumerate(texts):
                if k >= len(text):
                    continue
                piece: dict[str, Any] = {"index": i, "finish_reason": None}
                if chat:
                    piece["delta"] = {"content": text[k]}
                else:
                    piece["text"] = text[k]
                if body.get("return_token_ids"):
                    piece["token_ids"] = [reply_ids(text)[k]]
                if body.get("logprobs"):
                    lp = reply_logprobs(text)[k]
                    piece["logprobs"] = (
                        {"content": [{"token": text[k], "logprob": lp, "bytes": [], "top_logprobs": []}]}
                        if chat
                        else {"tokens": [text[k]], "token_logprobs": [lp]}
                    )
                extra = head if (not chat and k == 0) else {}
                yield event([piece], **extra)
                await asyncio.sleep(0.05 if body["model"] == "slow" else 0)
        finals = [
            {"index": i, "finish_reason": "stop", "weights_version": 3, **({"delta": {}} if chat else {"text": ""})}
            for i in range(n)
        ]
        yield event(finals)
        yield b"data: [DONE]\r\n\r\n"

    def start(self) -> None:
        server = AsgiServer(self.app(), port=0, name="fake LLM backend", log_level="error", timeout_graceful_shutdown=1)
        server.start()
        self.port = server.port
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            assert not self._server.is_running

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"
