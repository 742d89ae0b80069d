"""A tiny deterministic OpenAI-compatible chat model, so the project trains offline.

It serves `POST /v1/chat/completions` on 127.0.0.1 from a background thread (standard library only) and behaves
like a weak model with a calculator: when the system prompt tells it to use the `calculator` tool and the request
offers that tool, it asks for the tool; when a tool result comes back it states it; otherwise it does arithmetic
"in its head", which is right only for small numbers (it rounds big products to the nearest ten).
"""

from __future__ import annotations

import json
import re
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL_NAME = "toy-math-1"
_EXPRESSION = re.compile(r"(\d+)\s*([+*-])\s*(\d+)")


def _mental_arithmetic(a: int, op: str, b: int) -> int:
    """What the toy model answers without a tool: exact for small operands, a rounded guess otherwise."""
    exact = a + b if op == "+" else a - b if op == "-" else a * b
    if max(a, b) < 10:
        return exact
    return int(round(exact, -1))


def reply(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> dict[str, Any]:
    """The assistant message the toy model answers to `messages` when offered `tools`."""
    last = messages[-1]
    if last.get("role") == "tool":
        return {"role": "assistant", "content": f"The answer is {last['content']}."}
    system = " ".join(str(m.get("content", "")) for m in messages if m.get("role") == "system").lower()
    question = str(last.get("content", ""))
    match = _EXPRESSION.search(question)
    if match is None:
        return {"role": "assistant", "content": "I can only answer arithmetic questions."}
    offered = {t.get("function", {}).get("name") for t in tools}
    if "calculator" in system and "calculator" in offered:
        arguments = json.dumps({"expression": match.group(0)})
        call = {"id": f"call_{zlib.crc32(question.encode()):08x}", "type": "function"}
        call["function"] = {"name": "calculator", "arguments": arguments}
        return {"role": "assistant", "content": None, "tool_calls": [call]}
    a, op, b = int(match.group(1)), match.group(2), int(match.group(3))
    return {"role": "assistant", "content": f"The answer is {_mental_arithmetic(a, op, b)}."}


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(404, {"error": {"message": f"no route {self.path}; use POST /v1/chat/completions"}})
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            messages = body["messages"]
        except (ValueError, KeyError, TypeError):
            self._send(400, {"error": {"message": "the body must be JSON with a 'messages' list"}})
            return
        message = reply(messages, body.get("tools") or [])
        prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in messages)
        completion_tokens = len(str(message.get("content") or "").split()) or 1
        self._send(
            200,
            {
                "id": f"chatcmpl-{time.time_ns()}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", MODEL_NAME),
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": "tool_calls" if message.get("tool_calls") else "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
        )

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # keep the training output readable
        pass


class ToyLLMServer:
    """The toy model on 127.0.0.1 (a free port unless `port` is given), served while the `with` block runs."""

    def __init__(self, port: int = 0) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="toy-llm", daemon=True)

    @property
    def endpoint(self) -> str:
        """The OpenAI base URL of the server."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> ToyLLMServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
