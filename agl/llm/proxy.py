"""The LLM proxy: an OpenAI-compatible reverse proxy that records every LLM call of a rollout as spans.

Agents reach the proxy through the `ProxyLLM` resource, whose base URL names the rollout and attempt:
`http://<host>:<port>/rollout/<rollout_id>/attempt/<attempt_id>[/v1]`. For each request on such a path the
proxy allocates a span sequence id from the store, forwards the call to the backend serving the requested
model (asking it for token ids and logprobs), relays the answer to the agent unchanged (streamed chunk by
chunk when the agent streams) and writes the call's spans into the store before the agent sees the end of the
answer. Requests on other paths are forwarded the same way but not recorded. See `agl.llm.proxy_trace` for the
span shape.

Backends are configured with LiteLLM-style model entries, but no LiteLLM is involved:
`{"model_name": "m", "litellm_params": {"model": "hosted_vllm/<name>", "api_base": "http://h:8000/v1",
"api_key": "..."}}`. Several entries with one `model_name` are used in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from agl.asgi_serving import AsgiServer, AsgiServerProcess
from agl.llm.proxy_trace import (
    BACKEND as _BACKEND_ATTR,
)
from agl.llm.proxy_trace import (
    BACKEND_MODEL as _BACKEND_MODEL_ATTR,
)
from agl.llm.proxy_trace import (
    CHAT,
    TEXT_COMPLETION,
    CallFailure,
    CallKind,
    ResponseRecord,
    SSEParser,
    build_spans,
    request_attributes,
)
from agl.llm.proxy_trace import (
    ENDPOINT as _ENDPOINT_ATTR,
)
from agl.llm.proxy_trace import (
    STREAM as _STREAM_ATTR,
)
from agl.sockets import bind_listening_socket
from agl.store.base import LightningStore
from agl.types.resources import LLM, ProxyLLM

if TYPE_CHECKING:
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

logger = logging.getLogger(__name__)

__all__ = ["Deployment", "LLMProxy", "get_active_llm_proxy", "parse_model_list"]

LaunchMode = Literal["thread", "asyncio", "mp"]

MIDDLEWARES = ("rollout_attempt", "stream_conversion", "message_inspection")
"""Request-handling features: tag `/rollout/<rid>/attempt/<aid>/…` paths; send streamed calls upstream
unstreamed and replay the answer as a stream; log request and response bodies."""
DEFAULT_MIDDLEWARES = ("rollout_attempt",)
CALLBACKS = ("return_token_ids", "logprobs", "opentelemetry")
"""Per-call features: ask the backend for token ids; ask it for logprobs; record spans in the store."""
DEFAULT_CALLBACKS = ("return_token_ids", "logprobs", "opentelemetry")

# Provider prefixes of `litellm_params.model` that name an OpenAI-compatible backend.
_PROVIDERS = ("hosted_vllm", "openai", "vllm", "custom_openai", "openai_like", "text-completion-openai")
_DEFAULT_OPENAI_BASE = "https://api.openai.com/v1"
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_LLM_OPS: dict[str, CallKind] = {"/chat/completions": CHAT, "/completions": TEXT_COMPLETION}
_LAUNCHER_RESERVED = frozenset({"port", "host", "launch_mode", "num_workers", "workers", "app", "fd", "uds"})
_REQUIRED_CAPABILITY = {"thread": "thread_safe", "asyncio": "async_safe", "mp": "zero_copy"}

_active_proxy: LLMProxy | None = None


def get_active_llm_proxy() -> LLMProxy | None:
    """The proxy started most recently in this process (None if none was)."""
    return _active_proxy


# -- configuration --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    """One backend serving a model name: where to send calls and what to call the model there."""

    model_name: str
    provider: str
    backend_model: str
    api_base: str
    api_key: str | None = None

    def url(self, operation: str) -> str:
        """The backend URL of an OpenAI operation path such as `/chat/completions`."""
        return self.api_base + operation


def _api_base(value: Any, provider: str, model_name: str) -> str:
    if value is None:
        if provider == "openai":
            return _DEFAULT_OPENAI_BASE
        raise ValueError(f"model_list entry {model_name!r}: litellm_params.api_base is required for {provider!r}")
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ValueError(f"model_list entry {model_name!r}: api_base must be an http(s) URL, got {value!r}")
    base = value.rstrip("/")
    scheme_end = base.index("//") + 2
    if "/" not in base[scheme_end:]:  # a bare host: OpenAI-compatible servers answer under /v1
        base += "/v1"
    return base


def _api_key(value: Any, model_name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"model_list entry {model_name!r}: api_key must be a string")
    if value.startswith("os.environ/"):
        return os.environ.get(value[len("os.environ/") :])
    return value


def parse_model_list(model_list: Sequence[Mapping[str, Any]] | None) -> dict[str, list[Deployment]]:
    """Deployments by model name, from LiteLLM-style entries.

    Raises:
        ValueError: an entry lacks `model_name` or `litellm_params.model`, or has an unusable `api_base`.
    """
    routes: dict[str, list[Deployment]] = {}
    if model_list is None:
        return routes
    if isinstance(model_list, (str, bytes)) or not isinstance(model_list, Sequence):
        raise ValueError(f"model_list must be a list of entries, got {type(model_list).__name__}")
    for position, entry in enumerate(model_list):
        if not isinstance(entry, Mapping):
            raise ValueError(f"model_list[{position}] must be a mapping, got {entry!r}")
        name = entry.get("model_name")
        params = entry.get("litellm_params")
        if not isinstance(name, str) or not name:
            raise ValueError(f"model_list[{position}] needs a non-empty string 'model_name'")
        if not isinstance(params, Mapping) or not isinstance(params.get("model"), str) or not params["model"]:
            raise ValueError(f"model_list entry {name!r} needs litellm_params.model (e.g. 'hosted_vllm/<model>')")
        target: str = params["model"]
        provider, _, rest = target.partition("/")
        if provider in _PROVIDERS and rest:
            backend_model = rest
        else:
            provider, backend_model = "openai", target
        routes.setdefault(name, []).append(
            Deployment(
                model_name=name,
                provider=provider,
                backend_model=backend_model,
                api_base=_api_base(params.get("api_base"), provider, name),
                api_key=_api_key(params.get("api_key"), name),
            )
        )
    return routes


def _aliases(values: Sequence[Any] | None, known: tuple[str, ...], default: tuple[str, ...], what: str) -> set[str]:
    if values is None:
        return set(default)
    if isinstance(values, str):
        values = [values]
    chosen: set[str] = set()
    for value in values:
        if not isinstance(value, str):
            raise ValueError(
                f"{what} must be aliases among {', '.join(known)}; custom {what} classes are LiteLLM hooks and "
                f"are not supported by AGL's proxy (got {value!r})"
            )
        if value not in known:
            raise ValueError(f"unknown {what[:-1]} {value!r}; choose among {', '.join(known)}")
        chosen.add(value)
    return chosen


def _outbound_ipv4() -> str:
    """The IPv4 address this machine uses to reach other hosts (no packet is sent); loopback if none."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))
            return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def _free_port(host: str) -> int:
    with contextlib.closing(bind_listening_socket(host, 0, what="LLM proxy")) as sock:
        return int(sock.getsockname()[1])


def _error_body(message: str, kind: str, code: int | str) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "code": code}}).encode()


def _json_response(status: int, message: str, kind: str, code: int | str | None = None) -> Response:
    from starlette.responses import Response

    return Response(
        _error_body(message, kind, code if code is not None else status), status, media_type="application/json"
    )


# -- request handling -----------------------------------------------------------------------------------------


@dataclass
class _Call:
    """One LLM call in flight: where it came from, where it goes, and what will be recorded."""

    kind: CallKind
    operation: str
    rollout_id: str | None
    attempt_id: str | None
    sequence_id: int | None
    request_attrs: dict[str, Any]
    start_time: float
    stream: bool


class _ProxyHandler:
    """The proxy's request handling, bound to one running server (one event loop, one HTTP client pool)."""

    def __init__(self, proxy: LLMProxy) -> None:
        self.proxy = proxy
        self.client: httpx.AsyncClient | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._turns: dict[str, Iterator[int]] = {}

    # -- lifecycle ----------------------------------------------------------------------------------------------

    async def open(self) -> None:
        import httpx

        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.proxy.request_timeout, connect=self.proxy.connect_timeout),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256, keepalive_expiry=60.0),
            follow_redirects=False,
            trust_env=False,
        )

    async def close(self) -> None:
        if self._background:
            await asyncio.wait(set(self._background), timeout=10.0)
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def app(self) -> Starlette:
        from starlette.applications import Starlette
        from starlette.routing import Route

        methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]

        @contextlib.asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            await self.open()
            try:
                yield
            finally:
                await self.close()

        routes = [Route("/health", self.health, methods=["GET"])]
        if "rollout_attempt" in self.proxy.middlewares:
            routes.append(Route("/rollout/{rollout_id}/attempt/{attempt_id}/{rest:path}", self.tagged, methods=methods))
            routes.append(Route("/rollout/{rollout_id}/attempt/{attempt_id}", self.tagged, methods=methods))
        routes.append(Route("/{rest:path}", self.untagged, methods=methods))
        return Starlette(routes=routes, lifespan=lifespan)

    # -- routes -------------------------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        routes = self.proxy._routes
        if request.query_params.get("probe") not in ("1", "true"):
            return JSONResponse({"status": "healthy", "models": sorted(routes)})
        results: dict[str, Any] = {}
        assert self.client is not None
        for name, deployments in routes.items():
            for deployment in deployments:
                try:
                    answer = await self.client.get(deployment.url("/models"), headers=self._auth(deployment), timeout=5)
                    results[f"{name} @ {deployment.api_base}"] = answer.status_code
                except Exception as exc:
                    results[f"{name} @ {deployment.api_base}"] = repr(exc)
        healthy = all(value == 200 for value in results.values())
        return JSONResponse(
            {"status": "healthy" if healthy else "unhealthy", "backends": results}, 200 if healthy else 503
        )

    async def tagged(self, request: Request) -> Response:
        rollout_id = request.path_params["rollout_id"]
        attempt_id = request.path_params["attempt_id"]
        store = self.proxy._store
        if store is None:
            return _json_response(503, "the LLM proxy has no store to record this rollout's calls", "proxy_error")
        try:
            sequence_id = await store.get_next_span_sequence_id(rollout_id, attempt_id)
        except ValueError as exc:
            return _json_response(
                404, f"rollout {rollout_id!r} (attempt {attempt_id!r}) is not known to the store: {exc}", "not_found"
            )
        except Exception as exc:
            logger.exception("LLM proxy could not allocate a sequence id for rollout %s", rollout_id)
            return _json_response(503, f"the store could not allocate a span sequence id: {exc!r}", "proxy_error")
        return await self.dispatch(request, request.path_params.get("rest", ""), rollout_id, attempt_id, sequence_id)

    async def untagged(self, request: Request) -> Response:
        return await self.dispatch(request, request.path_params.get("rest", ""), None, None, None)

    async def dispatch(
        self,
        request: Request,
        rest: str,
        rollout_id: str | None,
        attempt_id: str | None,
        sequence_id: int | None,
    ) -> Response:
        path = "/" + rest.strip("/")
        operation = path[3:] if path == "/v1" or path.startswith("/v1/") else path
        operation = operation or "/"
        if request.method == "GET" and operation == "/models":
            return self.models()
        if request.method == "POST" and operation in _LLM_OPS:
            return await self.llm_call(request, _LLM_OPS[operation], operation, rollout_id, attempt_id, sequence_id)
        if request.method == "POST":
            return await self.passthrough(request, operation)
        return _json_response(404, f"the LLM proxy has no route {request.method} {request.url.path}", "not_found")

    def models(self) -> Response:
        from starlette.responses import JSONResponse

        created = int(self.proxy._created)
        data = [{"id": name, "object": "model", "created": created, "owned_by": "agl"} for name in self.proxy._routes]
        return JSONResponse({"object": "list", "data": data})

    # -- forwarding ---------------------------------------------------------------------------------------------

    def _next_deployment(self, deployments: list[Deployment]) -> Iterator[Deployment]:
        """Deployments of a model name in turn, starting after the one used last."""
        name = deployments[0].model_name
        counter = self._turns.setdefault(name, itertools.count())
        first = next(counter)
        for offset in itertools.count():
            yield deployments[(first + offset) % len(deployments)]

    @staticmethod
    def _auth(deployment: Deployment) -> dict[str, str]:
        return {"authorization": f"Bearer {deployment.api_key}"} if deployment.api_key else {}

    async def _send(
        self, deployments: list[Deployment], operation: str, body: dict[str, Any], headers: dict[str, str]
    ) -> tuple[httpx.Response, Deployment]:
        """Send `body` to a backend (streamed response), retrying transport errors and 429/5xx answers."""
        import httpx

        assert self.client is not None
        attempts = self.proxy.num_retries + 1
        turn = self._next_deployment(deployments)
        payload = json.dumps(body).encode()
        for attempt in range(attempts):
            deployment = next(turn)
            request = self.client.build_request(
                "POST",
                deployment.url(operation),
                content=payload,
                headers={**headers, **self._auth(deployment)},
            )
            try:
                response = await self.client.send(request, stream=True)
            except httpx.TransportError:
                if attempt + 1 >= attempts:
                    raise _BackendUnreachable(deployment) from None
            else:
                if response.status_code not in _RETRY_STATUSES or attempt + 1 >= attempts:
                    return response, deployment
                await response.aclose()
            await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
        raise AssertionError("unreachable")  # pragma: no cover

    def _upstream_body(
        self, body: dict[str, Any], kind: CallKind, deployment_model: str, stream: bool
    ) -> dict[str, Any]:
        upstream = dict(body)
        upstream["model"] = deployment_model
        callbacks = self.proxy.callbacks
        if "return_token_ids" in callbacks and upstream.get("return_token_ids") is None:
            upstream["return_token_ids"] = True
        if "logprobs" in callbacks and upstream.get("logprobs") is None:
            upstream["logprobs"] = True if kind == CHAT else 1
        if stream and "stream_conversion" in self.proxy.middlewares:
            upstream["stream"] = False
            upstream.pop("stream_options", None)
        return upstream

    async def passthrough(self, request: Request, operation: str) -> Response:
        """Forward another POST (embeddings, …) to the backend of its `model`, unrecorded."""
        from starlette.responses import Response

        body = await self._json_body(request)
        if isinstance(body, Response):
            return body
        routed = self._route(body)
        if isinstance(routed, Response):
            return routed
        upstream = dict(body)
        upstream["model"] = routed[0].backend_model
        try:
            response, _ = await self._send(routed, operation, upstream, {"content-type": "application/json"})
        except _BackendUnreachable as exc:
            return _json_response(502, exc.message, "backend_unreachable")
        try:
            content = await response.aread()
        finally:
            await response.aclose()
        return Response(content, response.status_code, media_type=response.headers.get("content-type"))

    async def _json_body(self, request: Request) -> dict[str, Any] | Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            return _json_response(400, "the request body is not valid JSON", "invalid_request_error")
        if not isinstance(body, dict):
            return _json_response(400, "the request body must be a JSON object", "invalid_request_error")
        return body

    def _route(self, body: dict[str, Any]) -> list[Deployment] | Response:
        model = body.get("model")
        routes = self.proxy._routes
        if not isinstance(model, str) or not model:
            return _json_response(400, "the request names no 'model'", "invalid_request_error")
        deployments = routes.get(model)
        if not deployments:
            known = ", ".join(sorted(routes)) or "(none configured)"
            return _json_response(
                404,
                f"model {model!r} is not served by this LLM proxy; known models: {known}",
                "invalid_request_error",
                "model_not_found",
            )
        return deployments

    async def llm_call(
        self,
        request: Request,
        kind: CallKind,
        operation: str,
        rollout_id: str | None,
        attempt_id: str | None,
        sequence_id: int | None,
    ) -> Response:
        from starlette.responses import Response, StreamingResponse

        start = time.time()
        if "opentelemetry" not in self.proxy.callbacks:
            sequence_id = None
        body = await self._json_body(request)
        if isinstance(body, Response):
            if sequence_id is not None:
                call = _Call(kind, operation, rollout_id, attempt_id, sequence_id, {}, start, False)
                await self._record(call, None, CallFailure(400, "invalid request body", "invalid_request"))
            return body
        requested = body.get("model")
        stream = bool(body.get("stream"))
        routed = self._route(body)
        system = routed[0].provider if isinstance(routed, list) else "openai"
        attrs = request_attributes(kind, body, requested if isinstance(requested, str) else "", system)
        attrs[_STREAM_ATTR] = stream
        attrs[_ENDPOINT_ATTR] = operation
        call = _Call(kind, operation, rollout_id, attempt_id, sequence_id, attrs, start, stream)
        if "message_inspection" in self.proxy.middlewares:
            logger.info("LLM proxy request %s %s: %s", operation, rollout_id or "(untagged)", body)
        if isinstance(routed, Response):
            failure = CallFailure(
                routed.status_code, "unknown or missing model", "model_not_found", bytes(routed.body).decode()
            )
            await self._record(call, None, failure)
            return routed
        attrs[_BACKEND_MODEL_ATTR] = routed[0].backend_model
        upstream = self._upstream_body(body, kind, routed[0].backend_model, stream)
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream" if upstream.get("stream") else "application/json",
        }
        if rollout_id is not None and attempt_id is not None and sequence_id is not None:
            headers.update({"x-rollout-id": rollout_id, "x-attempt-id": attempt_id, "x-sequence-id": str(sequence_id)})
        try:
            response, deployment = await self._send(routed, operation, upstream, headers)
        except _BackendUnreachable as exc:
            attrs[_BACKEND_ATTR] = exc.deployment.api_base
            await self._record(call, None, CallFailure(502, exc.message, "backend_unreachable", exc.message))
            return _json_response(502, exc.message, "backend_unreachable")
        attrs[_BACKEND_ATTR] = deployment.api_base
        content_type = response.headers.get("content-type", "")
        if response.status_code < 400 and upstream.get("stream") and "text/event-stream" in content_type:
            return StreamingResponse(
                self._relay_stream(call, response),
                status_code=response.status_code,
                media_type="text/event-stream",
                headers={"cache-control": "no-cache"},
            )
        try:
            content = await response.aread()
        except Exception as exc:
            await response.aclose()
            message = f"the backend {deployment.api_base} broke off its answer: {exc!r}"
            await self._record(call, None, CallFailure(502, message, type(exc).__name__))
            return _json_response(502, message, "backend_error")
        await response.aclose()
        if response.status_code >= 400:
            text = content.decode("utf-8", errors="replace")
            failure = CallFailure(
                response.status_code,
                f"backend {deployment.api_base} answered HTTP {response.status_code}",
                str(response.status_code),
                text,
            )
            await self._record(call, None, failure)
            return Response(content, response.status_code, media_type=content_type or "application/json")
        try:
            data = json.loads(content)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except ValueError:
            failure = CallFailure(
                response.status_code,
                "the backend's answer is not a JSON object",
                "invalid_response",
                content.decode(errors="replace"),
            )
            await self._record(call, None, failure)
            return Response(content, response.status_code, media_type=content_type or None)
        if "message_inspection" in self.proxy.middlewares:
            logger.info("LLM proxy response %s %s: %s", operation, rollout_id or "(untagged)", data)
        await self._record(call, ResponseRecord.from_json(kind, data), None)
        if stream:  # the agent asked for a stream; the backend answered in one piece: replay it as events
            return StreamingResponse(
                iter(_as_events(kind, data)), status_code=response.status_code, media_type="text/event-stream"
            )
        return Response(content, response.status_code, media_type=content_type or "application/json")

    async def _relay_stream(self, call: _Call, response: httpx.Response) -> AsyncIterator[bytes]:
        """Forward the backend's events as they arrive, folding them into a record written before `[DONE]`."""
        record = ResponseRecord(kind=call.kind)
        parser = SSEParser()
        failure: CallFailure | None = None
        done = False

        def fold(data: str) -> None:
            nonlocal failure
            try:
                chunk = json.loads(data)
            except ValueError:
                logger.warning("LLM proxy: skipping a stream event that is not JSON: %.200s", data)
                return
            if not isinstance(chunk, dict):
                return
            if "error" in chunk and failure is None:
                error = chunk["error"]
                code = error.get("code") if isinstance(error, dict) else None
                failure = CallFailure(
                    code if isinstance(code, int) else 500,
                    "the backend reported an error mid-stream",
                    "stream_error",
                    data,
                )
            record.add_chunk(chunk)

        try:
            async for piece in response.aiter_bytes():
                for raw, data in parser.feed(piece):
                    if data is not None and data.strip() == "[DONE]":
                        await self._record(call, record, failure)
                        done = True
                    elif data is not None:
                        fold(data)
                    yield raw
            for raw, data in parser.close():
                if data is not None and data.strip() != "[DONE]":
                    fold(data)
                yield raw
            if not done:
                done = True
                await self._record(call, record, failure)
        except Exception as exc:
            if done:
                raise
            done = True
            message = f"the backend stream broke off: {exc!r}"
            await self._record(call, record, CallFailure(502, message, type(exc).__name__))
            yield b"data: " + _error_body(message, "backend_error", 502) + b"\n\n"
        finally:
            if not done:  # the agent went away mid-stream; record off this (cancelled) task
                self._spawn(
                    self._record(call, record, CallFailure(499, "the client closed the stream early", "client_closed"))
                )
            self._spawn(response.aclose())

    async def _record(self, call: _Call, record: ResponseRecord | None, failure: CallFailure | None) -> None:
        if call.sequence_id is None or call.rollout_id is None or call.attempt_id is None:
            return
        store = self.proxy._store
        if store is None:
            return
        spans = build_spans(
            kind=call.kind,
            rollout_id=call.rollout_id,
            attempt_id=call.attempt_id,
            sequence_id=call.sequence_id,
            request_attrs=call.request_attrs,
            record=record,
            failure=failure,
            start_time=call.start_time,
            end_time=time.time(),
        )
        try:
            if len(spans) == 1:
                await store.add_span(spans[0])
            else:
                await store.add_many_spans(spans)
        except Exception:
            logger.exception(
                "LLM proxy could not store the spans of a call (rollout %s, attempt %s, sequence %s)",
                call.rollout_id,
                call.attempt_id,
                call.sequence_id,
            )


class _BackendUnreachable(Exception):
    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.message = (
            f"LLM proxy could not reach the backend {deployment.api_base} serving model "
            f"{deployment.model_name!r} (connection failed or timed out)"
        )
        super().__init__(self.message)


def _as_events(kind: CallKind, data: dict[str, Any]) -> list[bytes]:
    """A complete response replayed as stream chunks: one chunk with every choice, usage, then `[DONE]`."""
    chunk = {key: value for key, value in data.items() if key not in ("choices", "usage", "object")}
    chunk["object"] = "chat.completion.chunk" if kind == CHAT else "text_completion"
    choices: list[dict[str, Any]] = []
    raw_choices = data.get("choices")
    for raw in raw_choices if isinstance(raw_choices, list) else []:
        if not isinstance(raw, dict):
            continue
        choice = dict(raw)
        if kind == CHAT:
            message = choice.pop("message", None)
            delta = {k: v for k, v in message.items() if v is not None} if isinstance(message, dict) else {}
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                delta["tool_calls"] = [{"index": j, **c} for j, c in enumerate(calls) if isinstance(c, dict)]
            choice["delta"] = delta
        choices.append(choice)
    chunk["choices"] = choices
    events = [chunk]
    if isinstance(data.get("usage"), dict):
        events.append({**{k: v for k, v in chunk.items() if k != "choices"}, "choices": [], "usage": data["usage"]})
    return [b"data: " + json.dumps(event).encode() + b"\n\n" for event in events] + [b"data: [DONE]\n\n"]


# -- the proxy ------------------------------------------------------------------------------------------------


class LLMProxy:
    """An OpenAI-compatible reverse proxy that records the LLM calls of each rollout attempt as spans.

    Args:
        port: the port to listen on; None picks a free one (kept across restarts).
        model_list: LiteLLM-style entries `{"model_name", "litellm_params": {"model", "api_base", "api_key"}}`.
        store: where spans are written and sequence ids allocated (required by `start`).
        host: the address to bind; None binds `0.0.0.0` and advertises this machine's outbound IPv4.
        litellm_config: LiteLLM-style settings; `model_list` and `litellm_settings.num_retries` /
            `litellm_settings.request_timeout` are honoured, the rest is ignored.
        num_retries: retries of a call whose backend is unreachable or answers 429/5xx.
        num_workers: must be 1 (one event loop serves every request).
        launch_mode: `"thread"` (default; uvicorn on its own loop in a daemon thread; the store must be
            `thread_safe`), `"asyncio"` (a task on the loop that calls `start`; `async_safe`), or `"mp"` (a child
            process; the store must be `zero_copy`, i.e. a store client/server).
        launcher_args: extra `uvicorn.Config` keyword arguments (not port/host/launch_mode/num_workers).
        middlewares: aliases among `rollout_attempt`, `stream_conversion`, `message_inspection`.
        callbacks: aliases among `return_token_ids`, `logprobs`, `opentelemetry` (span recording).
        request_timeout: seconds a backend call may take; connect_timeout: seconds to connect to a backend.
        startup_timeout: seconds `start` waits for the server to accept connections.
    """

    def __init__(
        self,
        port: int | None = None,
        model_list: Sequence[Mapping[str, Any]] | None = None,
        store: LightningStore | None = None,
        host: str | None = None,
        litellm_config: Mapping[str, Any] | None = None,
        num_retries: int = 0,
        num_workers: int = 1,
        launch_mode: LaunchMode = "thread",
        launcher_args: Mapping[str, Any] | None = None,
        middlewares: Sequence[str] | None = None,
        callbacks: Sequence[str] | None = None,
        *,
        request_timeout: float = 600.0,
        connect_timeout: float = 10.0,
        startup_timeout: float = 60.0,
    ) -> None:
        if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535):
            raise ValueError(f"port must be an integer in 0..65535 or None, got {port!r}")
        if launch_mode not in _REQUIRED_CAPABILITY:
            raise ValueError(f"launch_mode must be 'thread', 'asyncio' or 'mp', got {launch_mode!r}")
        if num_workers != 1:
            raise ValueError(
                f"num_workers must be 1: AGL's proxy serves every request on one event loop (got {num_workers})"
            )
        args = dict(launcher_args or {})
        reserved = sorted(_LAUNCHER_RESERVED & set(args))
        if reserved:
            raise ValueError(f"launcher_args cannot set {', '.join(reserved)}; pass them to LLMProxy itself")
        config = dict(litellm_config or {})
        raw_settings = config.get("litellm_settings")
        settings: Mapping[str, Any] = raw_settings if isinstance(raw_settings, Mapping) else {}
        if model_list is None and "model_list" in config:
            model_list = config["model_list"]
        self.port: int | None = port or None
        self.host = host
        self.model_list: list[dict[str, Any]] = [dict(entry) for entry in (model_list or [])]
        self.litellm_config = config
        self.num_retries = int(settings.get("num_retries", num_retries))
        if self.num_retries < 0:
            raise ValueError(f"num_retries must be >= 0, got {self.num_retries}")
        self.num_workers = num_workers
        self.launch_mode: LaunchMode = launch_mode
        self.launcher_args = args
        self.middlewares = _aliases(middlewares, MIDDLEWARES, DEFAULT_MIDDLEWARES, "middlewares")
        self.callbacks = _aliases(callbacks, CALLBACKS, DEFAULT_CALLBACKS, "callbacks")
        self.request_timeout = float(settings.get("request_timeout", request_timeout))
        self.connect_timeout = connect_timeout
        self.startup_timeout = startup_timeout
        self._routes = parse_model_list(self.model_list)
        self._store = store
        self._created = time.time()
        self._server: AsgiServer | None = None
        self._process: AsgiServerProcess | None = None

    # -- configuration ----------------------------------------------------------------------------------------

    def set_store(self, store: LightningStore) -> None:
        """Use `store` for sequence ids and spans (takes effect for the next request)."""
        self._store = store

    def get_store(self) -> LightningStore | None:
        """The store spans are written to (None if unset)."""
        return self._store

    def update_model_list(self, model_list: Sequence[Mapping[str, Any]]) -> None:
        """Replace the model entries; a running proxy routes by the new list from its next request on."""
        routes = parse_model_list(model_list)
        self.model_list = [dict(entry) for entry in model_list]
        self._routes = routes
        if self._process is not None:
            logger.warning("update_model_list: the proxy runs in a child process; restart() it to apply the new list")

    @property
    def model_names(self) -> list[str]:
        """The configured model names, in configuration order."""
        return list(self._routes)

    def _bind_host(self) -> str:
        return self.host if self.host else "0.0.0.0"

    def _ensure_port(self) -> int:
        if self.port is None:
            self.port = _free_port(self._bind_host())
        return self.port

    @property
    def access_host(self) -> str:
        """The host name clients use: the bound host, or the outbound IPv4 when bound to all interfaces."""
        host = self._bind_host()
        if host in ("0.0.0.0", ""):
            return _outbound_ipv4()
        if host == "::":
            return "::1"
        return host

    @property
    def endpoint(self) -> str:
        """`http://<access host>:<port>` (picks the port now when it was left to the proxy)."""
        host = self.access_host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._ensure_port()}"

    # -- resources --------------------------------------------------------------------------------------------

    def as_resource(
        self,
        rollout_id: str | None = None,
        attempt_id: str | None = None,
        model: str | None = None,
        sampling_parameters: dict[str, Any] | None = None,
    ) -> LLM:
        """The proxy as an LLM resource: a `ProxyLLM` without ids, a plain `LLM` for one rollout attempt.

        Raises:
            ValueError: only one of the ids is given, or `model` is None and the configured models do not
                share one name.
        """
        if (rollout_id is None) != (attempt_id is None):
            raise ValueError("as_resource needs both rollout_id and attempt_id, or neither")
        if model is None:
            names = self.model_names
            if len(names) != 1:
                raise ValueError(
                    f"as_resource cannot infer the model: {len(names)} model names are configured "
                    f"({', '.join(names) or 'none'}); pass model="
                )
            model = names[0]
        params = dict(sampling_parameters or {})
        if rollout_id is None or attempt_id is None:
            return ProxyLLM(endpoint=self.endpoint, model=model, sampling_parameters=params)
        return LLM(
            endpoint=f"{self.endpoint}/rollout/{rollout_id}/attempt/{attempt_id}",
            model=model,
            sampling_parameters=params,
        )

    # -- lifecycle --------------------------------------------------------------------------------------------

    def is_running(self) -> bool:
        """Whether the proxy accepts requests."""
        if self._process is not None:
            return self._process.is_running
        return self._server is not None and self._server.is_running

    def _check_store(self) -> LightningStore:
        store = self._store
        if store is None:
            raise ValueError("LLMProxy.start() needs a store: pass store= or call set_store() first")
        needed = _REQUIRED_CAPABILITY[self.launch_mode]
        if not store.capabilities.get(needed, False):
            hint = {
                "thread": "wrap it in LightningStoreThreaded or use launch_mode='asyncio'",
                "asyncio": "use an async-safe store",
                "mp": "use launch_mode='thread' for an in-process store, or a store server/client",
            }[self.launch_mode]
            raise RuntimeError(
                f"LLMProxy(launch_mode={self.launch_mode!r}) needs a store with the {needed!r} capability; "
                f"{type(store).__name__} lacks it ({hint})"
            )
        return store

    def _serving_settings(self) -> dict[str, Any]:
        """`AsgiServer` settings of this proxy (launcher_args are passed on to uvicorn.Config)."""
        return {
            "host": self._bind_host(),
            "name": "LLM proxy",
            "lifespan": "on",  # opens and closes the handler's HTTP client pool on the serving loop
            "timeout_keep_alive": 75,
            "timeout_graceful_shutdown": 5,
            "startup_timeout": self.startup_timeout,
            "options": dict(self.launcher_args),
        }

    async def start(self) -> None:
        """Start serving (restarting if already running); returns once the proxy accepts connections.

        Raises:
            ValueError: no store is set.
            RuntimeError: the store lacks the capability the launch mode needs, or the server did not start.
        """
        global _active_proxy
        self._check_store()
        if self._server is not None or self._process is not None:
            await self.stop()
        port = self._ensure_port()
        if self.launch_mode == "mp":
            options = {
                "model_list": self.model_list,
                "host": self.host,
                "litellm_config": self.litellm_config,
                "num_retries": self.num_retries,
                "middlewares": sorted(self.middlewares),
                "callbacks": sorted(self.callbacks),
                "request_timeout": self.request_timeout,
                "connect_timeout": self.connect_timeout,
            }
            process = AsgiServerProcess(_app_in_child, (options, self._store), port=port, **self._serving_settings())
            await asyncio.to_thread(process.start)
            self._process = process
        else:
            sock = bind_listening_socket(self._bind_host(), port, what="LLM proxy", backlog=1024)
            server = AsgiServer(_ProxyHandler(self).app(), sock=sock, **self._serving_settings())
            self._server = server
            try:
                if self.launch_mode == "thread":
                    await asyncio.to_thread(server.start)
                else:
                    await server.start_async()
            except BaseException:
                self._server = None
                raise
        _active_proxy = self
        logger.info("LLM proxy listening on %s (models: %s)", self.endpoint, ", ".join(self.model_names) or "none")

    async def stop(self) -> None:
        """Stop serving and wait for in-flight requests (up to a few seconds); a warning if not running."""
        global _active_proxy
        server, process = self._server, self._process
        if server is None and process is None:
            logger.warning("LLMProxy.stop(): the proxy is not running")
            return
        if process is not None:
            await asyncio.to_thread(process.stop, 15)
        if server is not None:
            await server.stop_async(15)
        self._server = self._process = None
        if _active_proxy is self:
            _active_proxy = None

    async def restart(self, *, _port: int | None = None) -> None:
        """Stop (if running) and start again, on `_port` if given, else on the same port."""
        if self._server is not None or self._process is not None:
            await self.stop()
        if _port is not None:
            self.port = _port
        await self.start()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in ("_server", "_process"):
            state[key] = None
        return state


def _app_in_child(options: dict[str, Any], store: LightningStore) -> Starlette:
    """The app of an `mp` proxy, built in its child process (served there by `AsgiServerProcess`)."""
    global _active_proxy
    proxy = LLMProxy(store=store, launch_mode="asyncio", **options)
    _active_proxy = proxy
    return _ProxyHandler(proxy).app()
