"""`ModelServer`: an OpenAI-compatible HTTP server for a local Hugging Face causal LM, on CPU or a CUDA GPU.

Routes:

- `POST /v1/chat/completions`, `POST /v1/completions` — streaming (SSE) or not; every choice has `token_ids`, the
  response has `prompt_token_ids`, and `logprobs` follow OpenAI's shape (see `agl.llm.protocol`);
- `GET /v1/models` — the served model, with the current `weights_version`;
- `GET /health` — liveness plus engine counters (batches, sequences, tokens);
- `POST /v1/agl/weights` — `{"path": ..., "version": ...}`: load a saved state dict (a `.safetensors` file, a
  `torch.save` file, or a directory holding `model.safetensors`) and serve it as `version`, so an algorithm in
  another process can publish weights.

Concurrent requests are batched by `agl.llm.engine.GenerationEngine`; weight updates happen between batches
(requests already generating finish on the old weights, queued ones use the new ones; none is dropped).

Run standalone: `python -m agl.llm.server --model PATH --port N [--device auto|cpu|cuda|cuda:N] [--dtype ...]` (no
`--model`: SmolLM2-135M-Instruct).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agl.asgi_serving import AsgiServer
from agl.llm.detokenize import TokenInfo
from agl.llm.device import DEVICE_HELP, DeviceError, resolve_device, resolve_dtype
from agl.llm.engine import GenerationEngine, GenerationRequest, SequenceEvent
from agl.llm.protocol import (
    ChatCompletionRequest,
    ChoiceState,
    CompletionRequest,
    RequestError,
    chat_chunk,
    chat_final_chunk,
    chat_prompt_ids,
    chat_response,
    completion_chunk,
    completion_prompt_ids,
    completion_response,
    error_body,
    new_id,
    parse_request,
    usage,
)
from agl.sockets import PortInUseError, bind_listening_socket

if TYPE_CHECKING:
    import torch
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from agl.types.resources import LLM

__all__ = ["ModelServer", "PortInUseError", "load_state_dict_file", "main"]

logger = logging.getLogger(__name__)


class ModelServer:
    """Serve `model` with `tokenizer` over an OpenAI-compatible API, from a background thread.

    Args:
        model: a Hugging Face causal LM (e.g. from `agl.llm.model.load_model`), on the device it should run on.
        tokenizer: its tokenizer.
        host: the interface to listen on.
        port: the port (0 picks a free one; read it back from `.port` after `start()`).
        model_name: the id `/v1/models` reports and responses carry (default: the model's `name_or_path` stem).
        max_batch_size: the most sequences generated together.
        batch_window: seconds to gather concurrent requests into one batch.
        default_max_tokens: the completion limit of a chat request that sets none (completions default to 16, as
            OpenAI's do).
        weights_version: the version reported until `update_weights()` is called.
        log_level: uvicorn's log level.
        compute_dtype: the dtype of the matrix products (torch autocast; the weights keep theirs): bfloat16 is
            several times faster on CPUs with AVX512-BF16 or AMX. `None`: the model's dtype.

    `start()` returns once the server accepts connections; `stop()` shuts it down. Use it as a context manager to
    do both.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        model_name: str | None = None,
        max_batch_size: int = 32,
        batch_window: float = 0.02,
        default_max_tokens: int = 512,
        weights_version: str = "0",
        log_level: str = "warning",
        startup_timeout: float = 30.0,
        compute_dtype: torch.dtype | None = None,
    ) -> None:
        if default_max_tokens < 1:
            raise ValueError(f"default_max_tokens must be at least 1, got {default_max_tokens}")
        self.host = host
        self._requested_port = port
        self._port = port
        self.model_name = model_name or _default_name(model)
        self.default_max_tokens = default_max_tokens
        self.log_level = log_level
        self.startup_timeout = startup_timeout
        self.engine = GenerationEngine(
            model,
            tokenizer,
            max_batch_size=max_batch_size,
            batch_window=batch_window,
            weights_version=weights_version,
            compute_dtype=compute_dtype,
        )
        self.tokenizer = tokenizer
        self.token_info = TokenInfo(tokenizer)
        self.vocab_size = int(getattr(model.config, "vocab_size", 0) or len(tokenizer))
        self.created = int(time.time())
        self._serving: AsgiServer | None = None

    @classmethod
    def from_path(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = None,
        **kwargs: Any,
    ) -> ModelServer:
        """Load a model with `agl.llm.model.load_model` (default: SmolLM2) on `device` in `dtype` and serve it.

        `device` and `dtype` are `load_model`'s (`"auto"`: CUDA when available; dtype default per device).
        """
        from agl.llm.model import load_model

        model, tokenizer = load_model(path, dtype, device=device)
        return cls(model, tokenizer, **kwargs)

    # -- addresses -------------------------------------------------------------------------------------------------

    @property
    def model(self) -> PreTrainedModel:
        """The served model."""
        return self.engine.model

    @property
    def port(self) -> int:
        """The bound port (the chosen one when constructed with port 0 and started)."""
        return self._port

    @property
    def url(self) -> str:
        """`http://host:port` of the running server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL: `url + "/v1"`."""
        return self.url + "/v1"

    @property
    def weights_version(self) -> str:
        """The version of the weights now served."""
        return self.engine.weights_version

    def as_resource(self, **sampling_parameters: Any) -> LLM:
        """An `LLM` resource pointing at this server."""
        from agl.types.resources import LLM

        return LLM(endpoint=self.base_url, model=self.model_name, sampling_parameters=dict(sampling_parameters))

    # -- weights ---------------------------------------------------------------------------------------------------

    def update_weights(self, source: Mapping[str, torch.Tensor] | torch.nn.Module, version: str) -> None:
        """Serve new weights (a state dict or a model) as `version`, between batches; see `GenerationEngine`."""
        self.engine.update_weights(source, version)

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """A block during which no batch runs (to change the served model in place)."""
        return self.engine.exclusive()

    # -- lifecycle -------------------------------------------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        """Whether the HTTP server is up."""
        return self._serving is not None and self._serving.is_running

    def start(self) -> ModelServer:
        """Start the engine and the HTTP server in background threads; return once it accepts connections.

        Raises `PortInUseError` when the port is taken and `RuntimeError` when start-up fails or times out.
        """
        if self._serving is not None:
            raise RuntimeError(f"the model server on port {self._port} is already running")
        sock = bind_listening_socket(self.host, self._requested_port, what="model server", backlog=512)
        self._port = int(sock.getsockname()[1])
        serving = AsgiServer(
            self.app(),
            sock=sock,
            host=self.host,
            name="model server",
            log_level=self.log_level,
            timeout_keep_alive=75,
            startup_timeout=self.startup_timeout,
        )
        self.engine.start()
        self._serving = serving
        try:
            serving.start()
        except BaseException:
            self.stop()
            raise
        logger.info("model server for %s listening on %s", self.model_name, self.url)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the HTTP server and the engine (no-op when not running)."""
        serving, self._serving = self._serving, None
        if serving is not None:
            serving.stop(timeout)
        self.engine.stop()

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- HTTP ------------------------------------------------------------------------------------------------------

    def app(self) -> Starlette:
        """The Starlette application (usable on its own, e.g. with an ASGI test client; start the engine first)."""
        from starlette.applications import Starlette
        from starlette.routing import Route

        return Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/completions", self._completions, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/health", self._health, methods=["GET"]),
                Route("/v1/agl/weights", self._weights, methods=["POST"]),
            ]
        )

    async def _models(self, request: Request) -> Response:
        entry = {
            "id": self.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "agl",
            "weights_version": self.weights_version,
            "max_model_len": self.engine.max_context,
        }
        return _json({"object": "list", "data": [entry]})

    async def _health(self, request: Request) -> Response:
        status = "ok" if self.engine.running else "engine stopped"
        body: dict[str, Any] = {"status": status, "model": self.model_name, "weights_version": self.weights_version}
        body["stats"] = self.engine.stats.as_dict()
        return _json(body, 200 if self.engine.running else 503)

    async def _weights(self, request: Request) -> Response:
        try:
            body = await _read_json(request)
            if not isinstance(body, dict) or not isinstance(body.get("path"), str) or not body["path"]:
                raise RequestError("the body must be {'path': <saved state dict>, 'version': <string>}", "path")
            version = body.get("version")
            if not isinstance(version, (str, int)) or isinstance(version, bool) or str(version) == "":
                raise RequestError("'version' must be a non-empty string", "version")
            path = body["path"]

            def publish() -> None:
                self.update_weights(load_state_dict_file(path), str(version))

            try:
                await asyncio.to_thread(publish)
            except FileNotFoundError as exc:
                raise RequestError(str(exc), "path") from None
            except ValueError as exc:
                raise RequestError(f"cannot load the weights from {path!r}: {exc}", "path") from None
        except RequestError as exc:
            return _json(error_body(exc.message, param=exc.param), 400)
        return _json({"weights_version": self.weights_version, "model": self.model_name})

    async def _chat(self, request: Request) -> Response:
        try:
            req: ChatCompletionRequest = parse_request(ChatCompletionRequest, await _read_json(request))
            prompt = chat_prompt_ids(self.tokenizer, req)
            top = (req.top_logprobs or 0) if req.logprobs else 0
            params = req.sampling_params(self._max_tokens(req.requested_max_tokens(), len(prompt), chat=True), top)
        except RequestError as exc:
            return _json(error_body(exc.message, param=exc.param), 400)
        response_id, created = new_id("chatcmpl"), int(time.time())
        tools = req.callable_tools()
        if req.stream:
            return _sse(self._chat_stream(response_id, created, prompt, params, req.n, req.logprobs, tools))
        choices = await self._collect([prompt], params, req.n)
        failed = next((c.error for c in choices if c.finish_reason == "error"), None)
        if failed:
            return _json(error_body(failed, kind="server_error"), 500)
        info = self.token_info
        body = chat_response(response_id, self.model_name, prompt, choices, info, req.logprobs, created, tools)
        return _json(body)

    async def _completions(self, request: Request) -> Response:
        try:
            req: CompletionRequest = parse_request(CompletionRequest, await _read_json(request))
            prompts = completion_prompt_ids(self.tokenizer, req, self.vocab_size)
            longest = max(len(p) for p in prompts)
            max_tokens = self._max_tokens(req.max_tokens, longest, chat=False)
            params = req.sampling_params(max_tokens, req.logprobs or 0)
        except RequestError as exc:
            return _json(error_body(exc.message, param=exc.param), 400)
        response_id, created = new_id("cmpl"), int(time.time())
        with_logprobs = req.logprobs is not None
        if req.stream:
            return _sse(self._completion_stream(response_id, created, prompts, params, req.n, with_logprobs))
        choices = await self._collect(prompts, params, req.n)
        failed = next((c.error for c in choices if c.finish_reason == "error"), None)
        if failed:
            return _json(error_body(failed, kind="server_error"), 500)
        body = completion_response(
            response_id, self.model_name, prompts, choices, self.token_info, with_logprobs, created
        )
        return _json(body)

    def _max_tokens(self, requested: int | None, prompt_len: int, *, chat: bool) -> int:
        room = self.engine.max_context - prompt_len
        if room < 1:
            raise RequestError(
                f"the prompt has {prompt_len} tokens; the model's context is {self.engine.max_context} tokens",
                "messages" if chat else "prompt",
            )
        if requested is None:
            return min(room, self.default_max_tokens if chat else 16)
        if requested > room:
            raise RequestError(
                f"max_tokens={requested} plus the prompt's {prompt_len} tokens exceeds the model's context of "
                f"{self.engine.max_context} tokens",
                "max_tokens",
            )
        return requested

    def _submit(
        self, prompts: list[list[int]], params: Any, n: int
    ) -> tuple[asyncio.Queue[Any], list[GenerationRequest]]:
        """Queue one engine request per prompt; events arrive on the returned queue as `(prompt_index, events)`."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()
        submitted = []
        for p, prompt in enumerate(prompts):

            def sink(batch: list[SequenceEvent], p: int = p) -> None:
                loop.call_soon_threadsafe(events.put_nowait, (p, batch))

            engine_request = GenerationRequest(prompt_ids=prompt, params=params, sink=sink, n=n)
            self.engine.submit(engine_request)
            submitted.append(engine_request)
        return events, submitted

    async def _events(
        self, prompts: list[list[int]], params: Any, n: int
    ) -> AsyncIterator[tuple[int, list[SequenceEvent]]]:
        """`(prompt_index, events)` until every sequence of every prompt finished; cancels them if abandoned."""
        queue, submitted = self._submit(prompts, params, n)
        remaining = len(prompts) * n
        try:
            while remaining:
                p, batch = await queue.get()
                remaining -= sum(1 for e in batch if e.finish_reason is not None)
                yield p, batch
        finally:
            if remaining:
                for engine_request in submitted:
                    engine_request.cancelled = True

    async def _collect(self, prompts: list[list[int]], params: Any, n: int) -> list[ChoiceState]:
        choices = [ChoiceState(index=p * n + i, prompt_index=p) for p in range(len(prompts)) for i in range(n)]
        async for p, batch in self._events(prompts, params, n):
            for event in batch:
                choices[p * n + event.index].add(event)
        return choices

    async def _chat_stream(
        self,
        response_id: str,
        created: int,
        prompt: list[int],
        params: Any,
        n: int,
        with_logprobs: bool,
        tools: set[str] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        name, info = self.model_name, self.token_info
        for i in range(n):
            opening = chat_chunk(response_id, name, created, i, None, info, with_logprobs, role=True)
            if i == 0:
                opening["prompt_token_ids"] = prompt
            yield opening
        generated = 0
        held = [ChoiceState(index=i) for i in range(n)]  # with tools, each choice is sent whole when it ends
        async for _, batch in self._events([prompt], params, n):
            for event in batch:
                if event.finish_reason == "error":
                    yield error_body(event.error or "generation failed", kind="server_error")
                    return
                generated += len(event.token_ids)
                if tools is None:
                    yield chat_chunk(response_id, name, created, event.index, event, info, with_logprobs)
                    continue
                held[event.index].add(event)
                if event.finish_reason is not None:
                    yield chat_final_chunk(response_id, name, created, held[event.index], info, with_logprobs, tools)
        yield {
            "id": response_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": name,
            "choices": [],
            "usage": usage(len(prompt), generated),
        }

    async def _completion_stream(
        self, response_id: str, created: int, prompts: list[list[int]], params: Any, n: int, with_logprobs: bool
    ) -> AsyncIterator[dict[str, Any]]:
        name, info = self.model_name, self.token_info
        offsets = [0] * (len(prompts) * n)
        generated = 0
        first = True
        async for p, batch in self._events(prompts, params, n):
            for event in batch:
                if event.finish_reason == "error":
                    yield error_body(event.error or "generation failed", kind="server_error")
                    return
                index = p * n + event.index
                chunk = completion_chunk(response_id, name, created, index, event, info, with_logprobs, offsets[index])
                offsets[index] += sum(len(info.get(t)[0]) for t in event.token_ids)
                generated += len(event.token_ids)
                if first:
                    chunk["prompt_token_ids"] = prompts[0] if len(prompts) == 1 else prompts
                    first = False
                yield chunk
        yield {
            "id": response_id,
            "object": "text_completion",
            "created": created,
            "model": name,
            "choices": [],
            "usage": usage(sum(len(p) for p in prompts), generated),
        }


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read saved weights: a `.safetensors` file, a `torch.save`d state dict, or a directory with either."""
    import torch

    source = Path(path).expanduser()
    if source.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin", "state_dict.pt"):
            if (source / name).is_file():
                source = source / name
                break
        else:
            raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in the directory {str(path)!r}")
    if not source.is_file():
        raise FileNotFoundError(f"the weights file {str(path)!r} does not exist")
    if source.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(source), device="cpu"))
    try:
        state = torch.load(str(source), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"not a readable state dict ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("the file does not hold a dict of tensors")
    return state


# -- helpers -----------------------------------------------------------------------------------------------------


def _default_name(model: Any) -> str:
    name = str(getattr(getattr(model, "config", None), "name_or_path", "") or "")
    stem = Path(name).name if name else ""
    return stem or "local-model"


def _json(body: Any, status: int = 200) -> Response:
    from starlette.responses import Response

    return Response(json.dumps(body, ensure_ascii=False), status_code=status, media_type="application/json")


async def _read_json(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        raise RequestError("the request body is empty; send a JSON object")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise RequestError(f"the request body is not valid JSON: {exc}") from None


def _sse(chunks: AsyncIterator[dict[str, Any]]) -> Response:
    from starlette.responses import StreamingResponse

    async def body() -> AsyncIterator[bytes]:
        async for chunk in chunks:
            yield b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@contextlib.contextmanager
def _signals_stop(stop: threading.Event) -> Iterator[None]:
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: stop.set())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m agl.llm.server --model PATH --port N`: serve a model until Ctrl+C / SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m agl.llm.server", description=main.__doc__)
    parser.add_argument("--model", default=None, help="a .gguf file or a Hugging Face directory (default: SmolLM2)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--name", default=None, help="the model id to report (default: from the model)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-window", type=float, default=0.02, help="seconds to gather a batch")
    parser.add_argument("--device", default="auto", help=f"where the model runs: {DEVICE_HELP} (default auto)")
    parser.add_argument(
        "--dtype", default="auto", help="auto (fp32 on CPU, bf16 or fp16 on CUDA), float32, bfloat16 or float16"
    )
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from agl.llm.model import ModelNotFoundError

    try:
        # Options are checked before the model loads, so a wrong --device fails at once.
        device = resolve_device(args.device, option="--device")
        dtype = resolve_dtype(args.dtype, device, option="--dtype")
        server = ModelServer.from_path(
            args.model,
            device=device,
            dtype=dtype,
            host=args.host,
            port=args.port,
            model_name=args.name,
            max_batch_size=args.max_batch_size,
            batch_window=args.batch_window,
            log_level=args.log_level,
        )
    except (ModelNotFoundError, ModuleNotFoundError, DeviceError) as exc:
        print(f"error: {exc}", flush=True)
        return 2
    stop = threading.Event()
    try:
        server.start()
    except PortInUseError as exc:
        print(f"error: {exc}", flush=True)
        return 2
    print(
        f"serving {server.model_name} at {server.base_url} on {device} ({str(dtype).removeprefix('torch.')})",
        flush=True,
    )
    with _signals_stop(stop):
        try:
            while not stop.wait(0.5):
                pass
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
