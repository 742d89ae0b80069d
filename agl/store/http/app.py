"""The ASGI application that exposes a `LightningStore` under `/v1/agl` (plus OTLP ingest at `/v1/traces`).

A plain ASGI callable with its own small router: no framework sits on the hot path. Bodies are validated with the
pydantic models of `agl.types` and encoded with pydantic-core's JSON serializer. Served by stock uvicorn
(`agl.asgi_serving`); any ASGI 3 server can serve it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import logging
import sys
import time
import traceback
import zlib
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, unquote

import orjson
import pydantic_core
from pydantic import BaseModel, RootModel, ValidationError

from agl.store import idempotency
from agl.store.base import LightningStore
from agl.store.errors import NotFoundError
from agl.store.http.cors import CorsPolicy
from agl.store.http.deadlines import BodyDeadlines, DeadlinePassed
from agl.store.http.limits import RequestLimits, bounded_errors, check_json, excerpt
from agl.store.http.operations import STORE_ROUTES, StoreRoute, list_fields, optional_parameters, request_model
from agl.store.http.wire import API_PREFIX, FEATURES, REPLAYED_HEADER, kind_of_exception
from agl.store.insight import StoreInsight
from agl.store.query import check_sort_field
from agl.types.core import (
    Attempt,
    EnqueueRolloutRequest,
    Rollout,
    Worker,
)
from agl.types.resources import NamedResources, ResourcesUpdate
from agl.types.tracer import Span

if TYPE_CHECKING:
    from agl.store.http.metrics import StoreMetrics


__all__ = ["StoreApp"]

OTHER_ROUTE = "other"
"""The metrics' route label of a request that matched no route (unknown paths must not grow the label set)."""

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON = b"application/json"
_API_SLASH = API_PREFIX + "/"
_API_LEN = len(API_PREFIX)
_DASHBOARD_PREFIX = "/dashboard/"


_STATUS_CODES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    408: "RequestTimeout",
    409: "Conflict",
    413: "ContentTooLarge",
    414: "URITooLong",
    415: "UnsupportedMediaType",
    422: "RequestValidationError",
    431: "RequestHeaderFieldsTooLarge",
}
"""The `error_type` of an answer the app itself gives (not a store error): a name for its status."""


class HTTPError(Exception):
    """An error answer with a status code and a JSON `detail` (and `error_type`, by default named for the status)."""

    def __init__(
        self, status: int, detail: Any, headers: Sequence[tuple[bytes, bytes]] = (), code: str | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = list(headers)
        self.code = code or _STATUS_CODES.get(status, "HTTPError")

    def response(self) -> Response:
        """This error as an answer."""
        return Response(self.status, _encode_detail(self.detail, error_type=self.code), JSON, self.headers or None)


class Response:
    """A complete answer: status, body bytes, content type and extra headers."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes,
        content_type: bytes = JSON,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers


class Request:
    """What a handler sees: method, path parameters, query string, selected headers and the (decoded) body.

    `receive` is the ASGI receive channel once the body is read (None outside ASGI): a handler that may wait long
    watches it to learn that the client went away.
    """

    __slots__ = ("body", "headers", "method", "params", "query_string", "receive")

    def __init__(
        self,
        method: str,
        params: dict[str, str],
        query_string: bytes,
        headers: dict[bytes, bytes],
        body: bytes,
        receive: Receive | None = None,
    ) -> None:
        self.method = method
        self.params = params
        self.query_string = query_string
        self.headers = headers
        self.body = body
        self.receive = receive

    def query(self) -> dict[str, list[str]]:
        """Query parameters, each name mapped to all its values in order."""
        return parse_qs(self.query_string.decode("latin-1"), keep_blank_values=True)


Handler = Callable[[Request], Awaitable[Response]]
T = TypeVar("T")


# -- request bodies --------------------------------------------------------------------------------------------
#
# The models of the store routes' bodies and query strings are generated from `LightningStore`'s signatures by
# `agl.store.http.operations`; lists stop at their first invalid item there (a million bad items cost one error).


class _RawResources(RootModel[dict[str, Any]]):
    pass


_RESOURCES_ADAPTER: Any = None


def _resources_adapter() -> Any:
    global _RESOURCES_ADAPTER
    if _RESOURCES_ADAPTER is None:
        from pydantic import TypeAdapter

        _RESOURCES_ADAPTER = TypeAdapter(NamedResources)
    return _RESOURCES_ADAPTER


_DEFAULT_LIMITS = RequestLimits()


def _validation_detail(exc: ValidationError, where: str, limits: RequestLimits = _DEFAULT_LIMITS) -> list[Any]:
    """FastAPI-shaped errors under `where` ("body", "query", "store"), bounded by `limits`."""
    errors = exc.errors(include_url=False, include_context=False)
    detail = [{**err, "loc": [where, *err.get("loc", ())]} for err in errors[: limits.max_validation_errors]]
    return bounded_errors(detail, limits, total=len(errors))


def _json_default(value: Any) -> Any:
    return repr(value)


def _encode_detail(detail: Any, **extra: Any) -> bytes:
    return orjson.dumps({"detail": detail, **extra}, default=_json_default)


def _parse_body(model: type[Any], body: bytes, limits: RequestLimits, *, optional: bool = False) -> Any:
    if optional and not body.strip():
        return model()
    refused = check_json(body, limits)
    if refused is not None:
        raise HTTPError(422, [refused])
    validator = model.__pydantic_validator__
    maybe_boolean = b"true" in body or b"false" in body  # rare on the hot path: only such bodies get a second look
    try:
        parsed = validator.validate_json(body)  # model_validate_json minus its Python wrapper
    except ValidationError as exc:
        errors = _booleans_as_numbers(validator, body) if maybe_boolean else []
        errors += exc.errors(include_url=False, include_context=False)
        raise HTTPError(422, _body_errors(errors, limits)) from None
    if maybe_boolean:
        errors = _booleans_as_numbers(validator, body)
        if errors:
            raise HTTPError(422, _body_errors(errors, limits))
    return parsed


_NUMBER_TYPES = frozenset({"int_type", "float_type"})


def _booleans_as_numbers(validator: Any, body: bytes) -> list[Any]:
    """Errors for each JSON boolean in an integer or number field (lax mode reads false as 0 and true as 1).

    Only that conversion is refused: the other lax ones (a whole float or a numeric string for an integer, which
    JSON Schema and Agent Lightning's clients allow) still pass, so the strict run's other errors are ignored.
    """
    try:
        validator.validate_json(body, strict=True)
    except ValidationError as exc:
        return [
            {**e, "msg": f"{e['msg']}: a boolean is not a number"}
            for e in exc.errors(include_url=False, include_context=False)
            if e["type"] in _NUMBER_TYPES and isinstance(e.get("input"), bool)
        ]
    return []


def _body_errors(errors: list[Any], limits: RequestLimits) -> list[Any]:
    detail = [{**err, "loc": ["body", *err.get("loc", ())]} for err in errors[: limits.max_validation_errors]]
    return bounded_errors(detail, limits, total=len(errors))


def _check_items(field: str, count: int, limits: RequestLimits, where: str = "body") -> None:
    """422 when a request's list `field` holds more than `max_batch_items` items."""
    if count > limits.max_batch_items:
        raise HTTPError(
            422,
            [
                {
                    "type": "too_long",
                    "loc": [where, *field.split(".")],
                    "msg": f"{field} has {count} items; at most {limits.max_batch_items} are accepted in one request "
                    "(max_batch_items): split it into several requests",
                }
            ],
        )


MAX_SEQUENCE_ID = 2**53 - 1
"""The largest span sequence id accepted over HTTP: exact in every JSON reader (doubles), and far enough from the
64-bit limit that the stores' counters, raised to a span's id, can always count on."""


def _check_sequence_ids(spans: Sequence[Span], field: str) -> None:
    for index, span in enumerate(spans):
        if not 0 <= span.sequence_id <= MAX_SEQUENCE_ID:
            loc = ["body", *field.split("."), index, "sequence_id"] if field else ["body", "sequence_id"]
            raise HTTPError(
                422,
                [
                    {
                        "type": "sequence_id_out_of_range",
                        "loc": loc,
                        "msg": f"sequence_id must be between 0 and {MAX_SEQUENCE_ID} (2**53 - 1); allocate one with "
                        "POST /v1/agl/spans/next",
                        "input": excerpt(span.sequence_id),
                    }
                ],
            )


def _parse_query(model: type[BaseModel], request: Request, limits: RequestLimits = _DEFAULT_LIMITS) -> Any:
    raw: dict[str, Any] = {}
    lists = list_fields(model)
    for key, values in request.query().items():
        raw[key] = values if key in lists else values[-1]  # a repeated parameter is a list only where one is taken
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise HTTPError(422, _validation_detail(exc, "query", limits)) from None


def _check_page(args: dict[str, Any], item_model: type[BaseModel]) -> None:
    """400 for a sort field `item_model` lacks, a limit below -1 or a negative offset (paging arguments in `args`)."""
    sort_by, limit, offset = args["sort_by"], args["limit"], args["offset"]
    if sort_by is not None:
        try:
            check_sort_field(item_model, sort_by)
        except ValueError as exc:
            raise HTTPError(400, str(exc)) from None
    if limit < -1:
        raise HTTPError(400, f"limit must be greater than or equal to 0, or -1 for no limit; got {limit}")
    if offset < 0:
        raise HTTPError(400, f"offset must be greater than or equal to 0; got {offset}")


_LARGE_PAGE_ITEMS = 2000
"""Pages with more rollouts than this are encoded on a worker thread instead of the event loop."""

_PAGE_CHUNK = 250
"""Rollouts per encoder call of a large page: one call holds the interpreter lock until it returns (250 rollouts
about 0.4 ms)."""

_PAGE_PAUSE_SECONDS = 0.0001
"""The encoder's pause after each chunk: it hands the interpreter lock to a thread waiting for it (the event loop
with another client's request) at once, rather than after the 5 ms switch interval."""


def _large_page_json(result: Any) -> bytes:
    """`_page_json` of a large page, encoded a chunk of items at a time (the same JSON), pausing between chunks.

    When nothing else holds the page's list, each chunk's rollouts are released once encoded: freeing 45 000 at once
    holds the interpreter lock for about 60 ms (bench/store_stall.py). The pauses add ~30 ms to 45 000 rollouts.
    """
    items = result.items
    # Referenced by the page, `items` and getrefcount's argument only: nobody sees it emptied.
    owned = sys.getrefcount(items) <= 3
    parts = []
    for start in range(0, len(items), _PAGE_CHUNK):
        chunk = items[start : start + _PAGE_CHUNK]
        parts.append(pydantic_core.to_json(chunk)[1:-1])
        if owned:
            items[start : start + _PAGE_CHUNK] = [None] * len(chunk)
            del chunk
        time.sleep(_PAGE_PAUSE_SECONDS)
    if owned:
        items.clear()
    tail = pydantic_core.to_json({"limit": result.limit, "offset": result.offset, "total": result.total})
    return b'{"items":[' + b",".join(parts) + b"]," + tail[1:]


def _page_json(result: Any) -> bytes:
    items = getattr(result, "items", None)
    if items is None or callable(items):
        items = list(result)
        limit, offset, total = -1, 0, len(items)
    else:
        limit, offset, total = result.limit, result.offset, result.total
    return pydantic_core.to_json({"items": items, "limit": limit, "offset": offset, "total": total})


def _ok(value: Any, status: int = 200) -> Response:
    return Response(status, pydantic_core.to_json(value))


def _created(value: Any) -> Response:
    return Response(201, pydantic_core.to_json(value))


def _created_list(value: Any) -> Response:
    return Response(201, pydantic_core.to_json([value]))


def _ok_list(value: Any) -> Response:
    return Response(200, pydantic_core.to_json([value]))


def _answer_parts(response: Response) -> tuple[int, bytes, bytes, Sequence[tuple[bytes, bytes]]]:
    return response.status, response.body, response.content_type, response.headers or ()


async def _write(call: Awaitable[T], answer: Callable[[T], Response]) -> Response:
    """Await a store write and answer with `answer(result)`.

    Under an idempotency key, a durable store keeps that answer with the write itself (`agl.store.idempotency`);
    the answer sent is then the very bytes it kept.
    """
    pending = idempotency.current_write()
    if pending is None:
        return answer(await call)
    pending.encode = lambda result: _answer_parts(answer(result))
    result = await call
    kept = pending.kept
    if kept is not None:
        return Response(kept.status, kept.body, kept.content_type, list(kept.headers) or None)
    return answer(result)


_CLOSE = ((b"connection", b"close"),)
"""Ends the connection after the answer: the rest of a refused body is never read."""

_MINIMAL_HEADERS = [(b"preference-applied", b"return=minimal")]  # never mutated: shared by every minimal answer


def _wants_minimal(request: Request) -> bool:
    """Whether the client asked (RFC 7240 `Prefer: return=minimal`) not to get back what it just sent."""
    return b"return=minimal" in request.headers.get(b"prefer", b"")


def _arguments(params: dict[str, str], parsed: BaseModel, optional: dict[str, bool]) -> dict[str, Any]:
    """The store method's keyword arguments: the path's `params` and the parsed fields.

    A field of an `optional` parameter (one defaulting to UNSET: "leave it as it is") is passed only when the request
    sets it, and null only where `optional[name]` allows it.
    """
    args: dict[str, Any] = {**params, **parsed.__dict__}
    if optional:
        fields_set = parsed.model_fields_set
        for name, nullable in optional.items():
            if name not in fields_set:
                del args[name]
            elif args[name] is None and not nullable:
                raise HTTPError(400, f"{name} is invalid; it cannot be a null value.")
    return args


StoreHandler = Callable[[Request, dict[str, Any]], Awaitable[Response]]
"""The handler of a store route: the request and the store method's arguments read from its path, body or query."""


# -- routing ---------------------------------------------------------------------------------------------------


class _Route:
    __slots__ = ("handler", "idempotent", "latencies", "method", "names", "public", "segments", "template")

    def __init__(self, method: str, pattern: str, handler: Handler, idempotent: bool, public: bool = False) -> None:
        self.method = method
        self.public = public
        self.template = API_PREFIX + pattern  # the metrics' route label: ids stay placeholders
        self.latencies: dict[int, list[float]] | None = None  # this route's latency series by status (metrics on)
        self.segments = tuple(pattern.strip("/").split("/")) if pattern.strip("/") else ()
        self.names = tuple(s[1:-1] if s.startswith("{") else None for s in self.segments)
        self.handler = handler
        self.idempotent = idempotent

    def match(self, parts: Sequence[str]) -> dict[str, str] | None:
        if len(parts) != len(self.segments):
            return None
        params: dict[str, str] = {}
        for part, segment, name in zip(parts, self.segments, self.names, strict=True):
            if name is None:
                if part != segment:
                    return None
            else:
                params[name] = unquote(part) if "%" in part else part
        return params


class _Running:
    """A request whose answer is not known yet; retries carrying its key wait for it."""

    __slots__ = ("deadline", "fingerprint", "waiters")

    def __init__(self, fingerprint: int, deadline: float) -> None:
        self.fingerprint = fingerprint
        self.deadline = deadline
        self.waiters: list[asyncio.Future[Response]] | None = None


_Kept = tuple[float, int, int, bytes, bytes, tuple[tuple[bytes, bytes], ...]]
"""A kept answer: (deadline, fingerprint, status, body, content type, headers). Only atomic values, so the garbage
collector stops tracking it: a busy server keeps ~100 000 of these, and as objects they were most of what its
collections walked."""


class _IdempotencyCache:
    """Recent answers by idempotency key, so a retried POST gets the first answer instead of running twice.

    Only answers below 500 are kept; a request that is still running when its retry arrives is waited for.
    """

    def __init__(self, ttl_seconds: float, max_entries: int, max_bytes: int) -> None:
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        # Ordered by arrival; eviction takes from the front. An OrderedDict, not a dict: a dict's iterator walks
        # over the slots its deletions left at the front, so `next(iter(...))` went O(entries) once the cache was full.
        self.entries: collections.OrderedDict[str, _Running | _Kept] = collections.OrderedDict()
        self._next_expiry_check = 0.0

    def _evict(self, now: float) -> None:
        self._next_expiry_check = now + 1.0
        entries = self.entries
        while entries:
            key = next(iter(entries))
            entry = entries[key]
            if not isinstance(entry, tuple):
                return  # still running; it will be evicted once it is older than its successors
            if entry[0] > now and len(entries) <= self.max_entries and self.bytes <= self.max_bytes:
                return
            del entries[key]
            self.bytes -= len(entry[3]) + len(key)

    def _forget(self, key: str, entry: _Running | _Kept) -> None:
        if self.entries.get(key) is entry:
            del self.entries[key]
            if isinstance(entry, tuple):
                self.bytes -= len(entry[3]) + len(key)

    @staticmethod
    def _replay(status: int, body: bytes, content_type: bytes, headers: Sequence[tuple[bytes, bytes]]) -> Response:
        return Response(status, body, content_type, [*headers, (REPLAYED_HEADER.encode(), b"true")])

    async def run(self, key: str, fingerprint: int, handler: Handler, request: Request) -> Response:
        """Answer `request` with `handler`, or with the kept answer of an earlier request carrying `key`."""
        now = time.monotonic()
        entry = self.entries.get(key)
        if entry is not None:
            deadline, first_fingerprint = entry[:2] if isinstance(entry, tuple) else (entry.deadline, entry.fingerprint)
            if deadline > now:
                if first_fingerprint != fingerprint:
                    raise HTTPError(409, idempotency.conflict_message(key))
                if isinstance(entry, tuple):
                    return self._replay(entry[2], entry[3], entry[4], entry[5])
                waiter: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
                if entry.waiters is None:
                    entry.waiters = []
                entry.waiters.append(waiter)
                answered = await waiter
                return self._replay(answered.status, answered.body, answered.content_type, answered.headers or ())
            self._forget(key, entry)
        running = _Running(fingerprint, now + self.ttl)
        self.entries[key] = running
        first: idempotency.KeptAnswer | None = None  # the answer a durable store kept for this key before
        refused = False
        try:
            try:
                with idempotency.keyed_request(key, fingerprint):
                    response = await handler(request)
            except idempotency.AnswerAlreadyKept as exc:  # a retry of a write the store committed before a restart
                first = exc.answer
                if idempotency.replays(first, fingerprint):
                    response = self._replay(first.status, first.body, first.content_type, first.headers)
                else:
                    response = Response(409, _encode_detail(idempotency.conflict_message(key)))
            except HTTPError as exc:  # refused before the store was called: nothing to replay, nothing to keep
                response = exc.response()
                refused = True
            except Exception as exc:
                response = error_response(exc)
        except BaseException as exc:  # cancelled: a retry must run the call again
            self._forget(key, running)
            for waiter in running.waiters or ():
                if not waiter.done():
                    waiter.set_exception(exc)
            raise
        if first is not None and self.entries.get(key) is running:
            # From now on this key answers as the store does: with the first answer, whatever this request was.
            self.entries[key] = (running.deadline, *first)
            self.bytes += len(first.body) + len(key)
        elif response.status >= 500 or refused:
            self._forget(key, running)
        elif self.entries.get(key) is running:
            self.entries[key] = (
                running.deadline,
                fingerprint,
                response.status,
                response.body,
                response.content_type,
                tuple(response.headers) if response.headers else (),
            )
            self.bytes += len(response.body) + len(key)  # keys count too: they come from the caller
        if running.waiters:
            for waiter in running.waiters:
                if not waiter.done():
                    waiter.set_result(response)
        if len(self.entries) > self.max_entries or self.bytes > self.max_bytes or now >= self._next_expiry_check:
            self._evict(now)  # expired answers are dropped within a second (a lookup never replays them)
        return response


class StoreApp:
    """ASGI application serving `store` under `/v1/agl`, `/v1/traces` (OTLP) and the AGL batch extensions.

    `token` (if set) is required as `Authorization: Bearer <token>` on every route but health, and on the
    Prometheus metrics (`/metrics`, `/v1/prometheus/`) unless `metrics_public`; it is checked before the body is
    read. Bodies larger than `max_body_bytes` (after gzip decoding too) are refused with 413; `limits` bounds the
    rest of a request (JSON depth, items per list, URL length, error answers, drain watchers). Responses larger than `gzip_min_bytes` are
    gzipped for clients that accept it. `metrics=False` turns the metrics off (no per-request cost; `/metrics`
    answers 404); `metrics_collectors` are exposed from the app's metrics registry too. With ASGI lifespan events,
    the app runs the store's health checks every `health_check_interval` seconds while served (0: never).
    """

    def __init__(
        self,
        store: LightningStore,
        *,
        token: str | None = None,
        max_body_bytes: int = 64 * 1024 * 1024,
        gzip_min_bytes: int = 1024,
        gzip_level: int = 5,
        idempotency_ttl_seconds: float = 600.0,
        idempotency_max_entries: int = 100_000,
        idempotency_max_bytes: int = 256 * 1024 * 1024,
        call_store: Callable[..., Awaitable[Any]] | None = None,
        metrics: bool = True,
        metrics_public: bool = False,
        metrics_collectors: Sequence[Any] = (),
        cors_allow_origins: str | Sequence[str] | None = None,
        limits: RequestLimits | None = None,
        health_check_interval: float = 0.0,
    ) -> None:
        if max_body_bytes <= 0:
            raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes!r}")
        if limits is not None and not isinstance(limits, RequestLimits):
            raise TypeError(f"limits must be a RequestLimits, got {type(limits).__name__}")
        self.limits = limits or _DEFAULT_LIMITS
        """What one request may ask (see `RequestLimits`)."""
        self.store = store
        self._auth = b"Bearer " + token.encode() if token else None
        self.max_body_bytes = max_body_bytes
        self.gzip_min_bytes = gzip_min_bytes
        self.gzip_level = gzip_level
        self.health_check_interval = health_check_interval
        self._health_task: asyncio.Task[None] | None = None
        self.stopping = False
        """Set by `begin_stop()`: requests that wait (wait_for_rollouts) are answered at once from then on."""
        self._stopped: asyncio.Event | None = None
        self.draining = False
        """Set by the server's `begin_drain()`: the health route then tells runners the run is ending."""
        self.drain_watchers: collections.OrderedDict[str, tuple[float, bool]] = collections.OrderedDict()
        """Runner-side drain watchers (`GET /health?watcher=<id>`): when each last asked, and whether it was told."""
        self._body_deadlines = BodyDeadlines(self.limits.body_timeout_seconds)
        self._idempotency = _IdempotencyCache(idempotency_ttl_seconds, idempotency_max_entries, idempotency_max_bytes)
        self._static: dict[tuple[str, str], _Route] = {}
        self._openapi_json: bytes | None = None
        self._dynamic: dict[tuple[str, int], list[_Route]] = {}
        self.insight = StoreInsight(store)
        """Live aggregates for the dashboard routes; listens to the store's events from the start."""
        self._register_routes()
        self.metrics_public = metrics_public
        self.metrics: StoreMetrics | None = _store_metrics(store, metrics_collectors) if metrics else None
        """Prometheus metrics (None when off or prometheus_client is missing)."""
        if self.metrics is not None:
            for route in [*self._static.values(), *(r for routes in self._dynamic.values() for r in routes)]:
                route.latencies = self.metrics.requests.route_series(route.template, route.method)
        self.cors = CorsPolicy.from_setting(cors_allow_origins)
        """Browser origins allowed to call the store (None: no CORS headers at all)."""
        if self.cors is not None:
            # Only a server with CORS pays for it: `handle` becomes the CORS-aware one for this app.
            self.handle = self._handle_with_cors  # type: ignore[method-assign]

    # -- ASGI entry point --------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send)
            return
        method: str = scope["method"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        raw_headers: list[tuple[bytes, bytes]] = scope["headers"]
        headers: dict[bytes, bytes] = dict(raw_headers)
        limits = self.limits
        try:
            # The head is checked before anything else (the HTTP server has parsed it but imposes no limit).
            if len(raw_headers) > limits.max_header_count or _head_bytes(raw_headers) > limits.max_header_bytes:
                response = self._head_too_large(method, raw_headers)
            else:
                response = await self.handle(
                    method, raw_path.decode("latin-1"), scope.get("query_string", b""), headers, None, receive
                )
        except Exception:  # a bug in the app: the client still gets an answer (store errors never get here)
            logger.exception("store server: unhandled error answering %s %s", method, raw_path)
            response = Response(500, b'{"detail":"Internal server error"}')
        body = response.body
        if response.headers is None and len(body) <= self.gzip_min_bytes:  # the usual answer: two headers
            head = [(b"content-type", response.content_type), (b"content-length", b"%d" % len(body))]
        else:
            body, extra = self.encode(response, headers)
            head = [(b"content-type", response.content_type), (b"content-length", b"%d" % len(body)), *extra]
        await send({"type": "http.response.start", "status": response.status, "headers": head})
        await send({"type": "http.response.body", "body": body if method != "HEAD" else b""})

    def _head_too_large(self, method: str, raw_headers: list[tuple[bytes, bytes]]) -> Response:
        """The 431 answer to a request whose header lines are too many or too large (its body is never read)."""
        limits = self.limits
        if len(raw_headers) > limits.max_header_count:
            detail = (
                f"Request has {len(raw_headers)} header lines; at most {limits.max_header_count} are accepted "
                "(max_header_count): send fewer headers"
            )
        else:
            detail = (
                f"Request headers are {_head_bytes(raw_headers)} bytes; at most {limits.max_header_bytes} are "
                "accepted (max_header_bytes): send large values in the body"
            )
        if self.metrics is not None:
            self.metrics.observe(OTHER_ROUTE, method, 431, 0.0)
        return HTTPError(431, detail, _CLOSE).response()

    def begin_stop(self) -> None:
        """The server is stopping: answer requests that wait (wait_for_rollouts) now with what has finished.

        Call it on the loop serving the app.
        """
        self.stopping = True
        if self._stopped is not None:
            self._stopped.set()

    async def _until_answered(self, call: Awaitable[T], receive: Receive | None) -> tuple[T | None, str]:
        """Await `call` unless the client disconnects or the server stops first (then it is cancelled).

        Returns (result, "done"), (None, "disconnected") or (None, "stopping").
        """
        if self.stopping:
            if asyncio.iscoroutine(call):
                call.close()
            return None, "stopping"
        if self._stopped is None:
            self._stopped = asyncio.Event()
        waiting = asyncio.ensure_future(call)
        watchers: set[asyncio.Future[Any]] = {asyncio.ensure_future(self._stopped.wait())}
        gone = asyncio.ensure_future(_disconnected(receive)) if receive is not None else None
        if gone is not None:
            watchers.add(gone)
        try:
            await asyncio.wait({waiting, *watchers}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for watcher in watchers:
                watcher.cancel()
            if not waiting.done():
                waiting.cancel()  # this request is cancelled (or the client left): so is the store call
                with contextlib.suppress(BaseException):
                    await waiting
        if not waiting.cancelled() and waiting.done():
            return waiting.result(), "done"
        return None, "disconnected" if gone is not None and gone.done() and not gone.cancelled() else "stopping"

    def encode(
        self, response: Response, request_headers: dict[bytes, bytes]
    ) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        """The body to send (gzipped when large and accepted) and the headers beyond content type and length."""
        body = response.body
        extra: list[tuple[bytes, bytes]] = []
        if len(body) > self.gzip_min_bytes and b"gzip" in request_headers.get(b"accept-encoding", b""):
            compressor = zlib.compressobj(self.gzip_level, zlib.DEFLATED, 31)
            body = compressor.compress(body) + compressor.flush()
            extra.append((b"content-encoding", b"gzip"))
            extra.append((b"vary", b"accept-encoding"))
        if response.headers:
            extra.extend(response.headers)
        return body, extra

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._stopped = asyncio.Event()
                if self.health_check_interval > 0:
                    self._health_task = asyncio.ensure_future(self._check_health_forever())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                task, self._health_task = self._health_task, None
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                await self.insight.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _check_health_forever(self) -> None:
        """Apply the store's timeout / unresponsive rules on a timer, so a silent runner is noticed unasked."""
        while True:
            await asyncio.sleep(self.health_check_interval)
            try:
                await self.store.run_health_checks()
            except Exception:
                logger.exception("the store's periodic health check failed")

    async def read_body(self, headers: dict[bytes, bytes], receive: Receive) -> bytes:
        """The request body, decompressed if gzipped; HTTPError 413 beyond `max_body_bytes`."""
        limit = self.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise HTTPError(400, f"Content-Length header is not an integer: {declared!r}") from None
            if size > limit:
                # Answered before the body is read; the connection then closes (the body is not read at all).
                raise HTTPError(
                    413, f"Request body is {size} bytes; the limit is {limit} bytes (max_body_bytes)", _CLOSE
                )
        seconds = self.limits.body_timeout_seconds
        try:
            body = await self._body_deadlines.run(_receive_body(receive, limit))
        except DeadlinePassed:
            raise HTTPError(
                408,
                f"Request body did not arrive within {seconds:g} s of its head (body_timeout_seconds): send the body "
                "right after the head",
                _CLOSE,
            ) from None
        encoding = headers.get(b"content-encoding")
        if encoding:
            body = self._decode_content(encoding, body)
        return body

    def _decode_content(self, encoding: bytes, body: bytes) -> bytes:
        name = encoding.strip().lower()
        if name == b"identity":
            return body
        if name not in (b"gzip", b"x-gzip", b"deflate"):
            raise HTTPError(415, f"Unsupported Content-Encoding {encoding.decode('latin-1')!r}; use gzip or identity")
        decompressor = zlib.decompressobj(47 if name != b"deflate" else 15)
        try:
            out = decompressor.decompress(body, self.max_body_bytes + 1)
        except zlib.error as exc:
            raise HTTPError(400, f"Request body is not valid {name.decode()} data: {exc}") from None
        if len(out) > self.max_body_bytes or decompressor.unconsumed_tail:
            raise HTTPError(
                413, f"Decompressed request body exceeds the limit of {self.max_body_bytes} bytes (max_body_bytes)"
            )
        return out

    def _check_auth(self, headers: dict[bytes, bytes]) -> None:
        if self._auth is None:
            return
        given = headers.get(b"authorization", b"")
        if not hmac.compare_digest(given, self._auth):
            reason = "Missing bearer token" if not given else "Invalid bearer token"
            raise HTTPError(
                401,
                f"{reason}: send 'Authorization: Bearer <token>' (the server's token= or AGL_STORE_TOKEN)",
                [(b"www-authenticate", b"Bearer")],
            )

    async def handle(
        self,
        method: str,
        path: str,
        query_string: bytes,
        headers: dict[bytes, bytes],
        body: bytes | None,
        receive: Receive | None = None,
    ) -> Response:
        """Answer one request; errors become error answers (only a bug in a handler raises).

        `headers` maps lower-case names to values; `path` is the raw (still percent-encoded) path; `body` is the
        whole raw body, or None to read it with `receive` (ASGI). The server's own protocol calls this directly.
        """
        metrics = self.metrics
        start = perf_counter() if metrics is not None else 0.0
        latencies: dict[int, list[float]] | None = None
        try:
            if len(path) + len(query_string) > self.limits.max_url_bytes:
                raise HTTPError(
                    414,
                    f"Request target is {len(path) + len(query_string) + 1} bytes; at most "
                    f"{self.limits.max_url_bytes} are accepted (max_url_bytes): send long filters in a POST body",
                )
            route = self._static.get((method, path))  # keyed by the full path: no prefix check or slicing
            params: dict[str, str] | None = None
            if route is None:
                if not path.startswith(_API_SLASH):
                    response = await self._dispatch_other(method, path, headers, body, receive)
                    if metrics is not None:
                        label = _OTHER_PATHS.get(path, OTHER_ROUTE)
                        metrics.observe(label, method, response.status, perf_counter() - start)
                    return response
                sub = path[_API_LEN:]
                parts = sub.strip("/").split("/")
                for candidate in self._dynamic.get((method, len(parts)), ()):
                    params = candidate.match(parts)
                    if params is not None:
                        route = candidate
                        break
                if route is None:
                    raise self._no_route(sub)
            latencies = route.latencies
            # Auth is decided from the head alone: an unauthenticated body is never read.
            if not route.public and self._auth is not None:
                self._check_auth(headers)
            if method != "POST":
                body = b""
            elif body is None:
                assert receive is not None
                body = await self.read_body(headers, receive)
            else:
                encoding = headers.get(b"content-encoding")
                if encoding:
                    body = self._decode_content(encoding, body)
            request = Request(method, params or {}, query_string, headers, body, receive)
            handler = route.handler
            key = None if route.idempotent else headers.get(b"idempotency-key")
            if key:
                text = idempotency.check_key(key)
                if text is None:
                    raise HTTPError(
                        400,
                        f"Idempotency-Key header is {len(key)} bytes; at most {idempotency.MAX_KEY_BYTES} are accepted "
                        "(send a short unique key, e.g. a UUID)",
                    )
                response = await self._idempotency.run(
                    text, zlib.crc32(body, zlib.crc32(path.encode())), handler, request
                )
            else:
                try:
                    response = await handler(request)
                except HTTPError:
                    raise
                except Exception as exc:
                    response = error_response(exc)
        except HTTPError as exc:
            response = exc.response()
        if metrics is not None:
            # Inline, this is the cost of metrics per request: a lookup in the route's series, a bucket and a sum.
            seconds = perf_counter() - start
            series = latencies.get(response.status) if latencies is not None else None
            if series is None:  # first answer with this status, or no route matched
                label = route.template if latencies is not None else OTHER_ROUTE  # type: ignore[union-attr]
                series = metrics.requests.series(label, method, response.status, latencies)
            series[bisect_left(metrics.bounds, seconds)] += 1
            series[-1] += seconds
        return response

    async def _handle_with_cors(
        self,
        method: str,
        path: str,
        query_string: bytes,
        headers: dict[bytes, bytes],
        body: bytes | None,
        receive: Receive | None = None,
    ) -> Response:
        """`handle` with the CORS policy applied: preflights answered here, CORS headers on allowed origins."""
        cors = self.cors
        assert cors is not None
        origin = headers.get(b"origin")
        allowed = cors.allows(origin)
        if method == "OPTIONS" and b"access-control-request-method" in headers:
            if not allowed or origin is None:
                return Response(400, _encode_detail("Disallowed CORS origin: add it with --cors-origin"))
            extra = cors.preflight_headers(origin, headers.get(b"access-control-request-headers"))
            return Response(200, b"", b"text/plain", extra)
        response = await StoreApp.handle(self, method, path, query_string, headers, body, receive)
        if allowed and origin is not None:
            response.headers = [*(response.headers or ()), *cors.answer_headers(origin)]  # never mutate shared lists
        return response

    def _no_route(self, sub: str) -> HTTPError:
        parts = sub.strip("/").split("/")
        for route in [*self._static.values(), *(r for routes in self._dynamic.values() for r in routes)]:
            if route.match(parts) is not None:
                return HTTPError(405, "Method Not Allowed")
        return HTTPError(404, "Not Found")

    async def _dispatch_other(
        self, method: str, path: str, headers: dict[bytes, bytes], body: bytes | None, receive: Receive | None
    ) -> Response:
        if path in _METRICS_PATHS:
            return await self._metrics_answer(method, headers)
        if path in ("/v1/traces", "/v1/metrics", "/v1/logs", "/v1/development/profiles"):
            if method != "POST":
                raise HTTPError(405, "Method Not Allowed")
            self._check_auth(headers)
            if path != "/v1/traces":
                return Response(501, b"", b"text/plain")
            from agl.store.http.otlp import handle_otlp_traces

            if receive is None:
                whole = body if body is not None else b""

                async def receive() -> dict[str, Any]:
                    return {"type": "http.request", "body": whole, "more_body": False}

            return await handle_otlp_traces(self, headers, receive)
        if path == "/" or path.startswith(_DASHBOARD_PREFIX):
            return self._dashboard_asset(method, path, headers)
        raise HTTPError(404, "Not Found")

    async def _metrics_answer(self, method: str, headers: dict[bytes, bytes]) -> Response:
        """The Prometheus exposition of this app's registry (GET or HEAD)."""
        if method not in ("GET", "HEAD"):
            raise HTTPError(
                405, "Method Not Allowed: scrape the metrics with GET (or HEAD)", [(b"allow", b"GET, HEAD")]
            )
        if not self.metrics_public:
            self._check_auth(headers)
        if self.metrics is None:
            raise HTTPError(
                404, "Metrics are off on this server: start it with metrics on and prometheus_client installed"
            )
        body, content_type = await self.metrics.render(headers.get(b"accept", b"").decode("latin-1"))
        return Response(200, body, content_type.encode("latin-1"))

    def _dashboard_asset(self, method: str, path: str, headers: dict[bytes, bytes]) -> Response:
        """A file of the web dashboard (public: the files hold no data, every data call needs the token)."""
        if method not in ("GET", "HEAD"):
            raise HTTPError(405, "Method Not Allowed", [(b"allow", b"GET, HEAD")])
        from agl.dashboard import INDEX, find_asset

        # The raw path is matched as is against the shipped names: nothing is decoded, so no encoded `..` exists.
        asset = find_asset(INDEX if path == "/" else path[len(_DASHBOARD_PREFIX) :])
        if asset is None:
            raise HTTPError(404, "Not Found")
        extra = [(b"cache-control", asset.cache_control.encode()), (b"etag", asset.etag.encode())]
        content_type = asset.content_type.encode()
        if headers.get(b"if-none-match") == asset.etag.encode():
            return Response(304, b"", content_type, extra)
        return Response(200, asset.body, content_type, extra)

    # -- routes ------------------------------------------------------------------------------------------------

    def _add(
        self, method: str, pattern: str, handler: Handler, *, idempotent: bool = True, public: bool = False
    ) -> None:
        route = _Route(method, pattern, handler, idempotent, public)
        if all(name is None for name in route.names):
            self._static[(method, API_PREFIX + "/" + "/".join(route.segments))] = route
        else:
            self._dynamic.setdefault((method, len(route.segments)), []).append(route)
        if method == "GET":  # HEAD answers as GET does (the protocol drops the body): its own table entry, no cost
            self._add("HEAD", pattern, handler, idempotent=idempotent, public=public)

    def _register_routes(self) -> None:
        add = self._add
        add("GET", "/health", self._health, public=True)
        handlers = self._store_handlers()
        for route in STORE_ROUTES:  # the store's routes come from one table: agl.store.http.operations
            handler = self._bind(route, handlers[route.store_method])
            add(route.http_method, route.path, handler, idempotent=not route.writes)
        add("GET", "/openapi.json", self._openapi, public=True)
        from agl.store.http.dashboard import DashboardRoutes

        dashboard = DashboardRoutes(self.insight)
        add("GET", "/dashboard/overview", dashboard.overview)
        add("GET", "/dashboard/rollouts", dashboard.rollouts)
        add("GET", "/dashboard/rollouts/{rollout_id}", dashboard.rollout)
        add("GET", "/dashboard/workers", dashboard.workers)

    def _bind(self, route: StoreRoute, handle: StoreHandler) -> Handler:
        """The route's handler: reads the store method's arguments as the route carries them, then `handle`s them.

        Plain functions returning `handle`'s coroutine (a refused request raises when called): no extra coroutine
        per request.
        """
        if route.carries in ("raw", "path"):  # the raw body, if any, is the handler's to read

            def by_path(request: Request) -> Awaitable[Response]:
                return handle(request, request.params)

            return by_path
        model = request_model(route)
        optional = optional_parameters(route)
        if route.carries == "query":

            def by_query(request: Request) -> Awaitable[Response]:
                parsed = _parse_query(model, request, self.limits)
                return handle(request, _arguments(request.params, parsed, optional))

            return by_query
        body_optional = not route.body_required

        def by_body(request: Request) -> Awaitable[Response]:
            parsed = _parse_body(model, request.body, self.limits, optional=body_optional)
            return handle(request, _arguments(request.params, parsed, optional))

        return by_body

    def _store_handlers(self) -> dict[str, StoreHandler]:
        """The handler of each store method that has a route (see `STORE_ROUTES`)."""
        return {
            "enqueue_many_rollouts": self._enqueue,
            "dequeue_many_rollouts": self._dequeue,
            "start_rollout": self._start_rollout,
            "query_rollouts": self._query_rollouts,
            "get_rollout_by_id": self._get_rollout,
            "update_rollout": self._update_rollout,
            "start_attempt": self._start_attempt,
            "query_attempts": self._query_attempts,
            "get_latest_attempt": self._latest_attempt,
            "update_attempt": self._update_attempt,
            "query_resources": self._query_resources,
            "add_resources": self._add_resources,
            "get_latest_resources": self._latest_resources,
            "update_resources": self._update_resources,
            "get_resources_by_id": self._resources_by_id,
            "add_span": self._add_span,
            "add_many_spans": self._add_spans,
            "query_spans": self._query_spans,
            "get_next_span_sequence_id": self._next_sequence,
            "get_many_span_sequence_ids": self._next_sequences,
            "wait_for_rollouts": self._wait,
            "query_workers": self._query_workers,
            "get_worker_by_id": self._worker_by_id,
            "update_worker": self._update_worker,
            "statistics": self._statistics,
        }

    def route_table(self) -> list[tuple[str, str, bool]]:
        """Every route under `/v1/agl` as (method, path pattern such as `/rollouts/{rollout_id}`, public)."""
        routes = [*self._static.values(), *(r for routes in self._dynamic.values() for r in routes)]
        return [(r.method, r.template[_API_LEN:], r.public) for r in routes]

    async def _openapi(self, request: Request) -> Response:
        if self._openapi_json is None:  # built on first request: start-up does not pay for it
            from agl.store.http.openapi import build_document

            self._openapi_json = orjson.dumps(build_document(self))
        return Response(200, self._openapi_json)

    async def _health(self, request: Request) -> Response:
        draining = self.draining
        if b"watcher=" in request.query_string:
            watcher = request.query().get("watcher", [""])[-1]
            if watcher:
                self._watch(watcher, draining)
        return _ok({"status": "draining" if draining else "ok", "server": "agl", "features": FEATURES})

    def _watch(self, watcher: str, draining: bool) -> None:
        """Remember that `watcher` asked (bounded: id length, count, and age; anyone may ask, no token needed)."""
        limits = self.limits
        if len(watcher.encode()) > limits.max_watcher_id_bytes:
            raise HTTPError(
                400,
                f"watcher id is {len(watcher.encode())} bytes; at most {limits.max_watcher_id_bytes} are accepted "
                "(max_watcher_id_bytes): use a short id, e.g. a UUID",
            )
        now = time.monotonic()
        watchers = self.drain_watchers
        watchers.pop(watcher, None)  # re-inserted last: the dict stays ordered by when each last asked
        watchers[watcher] = (now, draining)
        expired = now - limits.watcher_ttl_seconds
        while watchers:
            oldest = next(iter(watchers))
            if len(watchers) <= limits.max_watchers and watchers[oldest][0] >= expired:
                break
            del watchers[oldest]

    def untold_drain_watchers(self, recent: float = 5.0) -> list[str]:
        """Drain watchers that asked within `recent` seconds but have not been answered "draining" yet."""
        now = time.monotonic()
        return [w for w, (seen, told) in self.drain_watchers.items() if not told and now - seen < recent]

    async def _enqueue(self, request: Request, args: dict[str, Any]) -> Response:
        rollouts: list[EnqueueRolloutRequest] = args["rollouts"]
        _check_items("rollouts", len(rollouts), self.limits)
        if not rollouts:
            return Response(201, b"[]")
        if len(rollouts) == 1:
            item = rollouts[0]
            call = self.store.enqueue_rollout(item.input, item.mode, item.resources_id, item.config, item.metadata)
            return await _write(call, _created_list)
        return await _write(self.store.enqueue_many_rollouts(rollouts), lambda many: _created(list(many)))

    async def _dequeue(self, request: Request, args: dict[str, Any]) -> Response:
        limit: int = args["limit"]
        if limit > self.limits.max_batch_items:
            raise HTTPError(
                422,
                [
                    {
                        "type": "less_than_equal",
                        "loc": ["body", "limit"],
                        "msg": f"limit must be at most {self.limits.max_batch_items} rollouts per dequeue "
                        "(max_batch_items)",
                        "input": limit,
                    }
                ],
            )
        if limit <= 0:
            return Response(200, b"[]")
        if limit == 1:
            call = self.store.dequeue_rollout(worker_id=args["worker_id"])
            return await _write(call, lambda claimed: Response(200, b"[]") if claimed is None else _ok_list(claimed))
        return await _write(self.store.dequeue_many_rollouts(**args), lambda claimed: _ok(list(claimed)))

    async def _start_rollout(self, request: Request, args: dict[str, Any]) -> Response:
        return await _write(self.store.start_rollout(**args), _created)

    async def _query_rollouts(self, request: Request, args: dict[str, Any]) -> Response:
        _check_page(args, Rollout)
        if args["rollout_id_in"] is not None:
            _check_items("rollout_id_in", len(args["rollout_id_in"]), self.limits)
        result = await self.store.query_rollouts(**args)
        items = getattr(result, "items", None)
        if isinstance(items, list) and len(items) > _LARGE_PAGE_ITEMS:
            # Encoding tens of thousands of rollouts takes a fraction of a second: off the loop, so other calls go on.
            del items  # the worker may release the page's rollouts once encoded
            return Response(200, await asyncio.to_thread(_large_page_json, result))
        return Response(200, _page_json(result))

    async def _get_rollout(self, request: Request, args: dict[str, Any]) -> Response:
        rollout = await self.store.get_rollout_by_id(**args)
        if rollout is None:
            raise NotFoundError("rollout", args["rollout_id"])
        return _ok(rollout)

    async def _update_rollout(self, request: Request, args: dict[str, Any]) -> Response:
        return await _write(self.store.update_rollout(**args), _ok)

    async def _start_attempt(self, request: Request, args: dict[str, Any]) -> Response:
        return await _write(self.store.start_attempt(**args), _created)

    async def _query_attempts(self, request: Request, args: dict[str, Any]) -> Response:
        _check_page(args, Attempt)
        return Response(200, _page_json(await self.store.query_attempts(**args)))

    async def _latest_attempt(self, request: Request, args: dict[str, Any]) -> Response:
        return _ok(await self.store.get_latest_attempt(**args))

    async def _update_attempt(self, request: Request, args: dict[str, Any]) -> Response:
        return await _write(self.store.update_attempt(**args), _ok)

    async def _query_resources(self, request: Request, args: dict[str, Any]) -> Response:
        _check_page(args, ResourcesUpdate)
        return Response(200, _page_json(await self.store.query_resources(**args)))

    def _parse_resources(self, body: bytes) -> NamedResources:
        # In two steps, so a body of many bad resources costs one error: the mapping first, then each resource.
        raw: dict[str, Any] = _parse_body(_RawResources, body, self.limits).root
        _check_items("resources", len(raw), self.limits)
        adapter = _resources_adapter()
        resources: NamedResources = {}
        for name, value in raw.items():
            try:
                resources[name] = adapter.validate_python({name: value})[name]
            except ValidationError as exc:
                raise HTTPError(422, _validation_detail(exc, "body", self.limits)) from None
        return resources

    async def _add_resources(self, request: Request, args: dict[str, Any]) -> Response:
        return await _write(self.store.add_resources(self._parse_resources(request.body)), _created)

    async def _update_resources(self, request: Request, args: dict[str, Any]) -> Response:
        resources = self._parse_resources(request.body)
        return await _write(self.store.update_resources(args["resources_id"], resources), _ok)

    async def _latest_resources(self, request: Request, args: dict[str, Any]) -> Response:
        return _ok(await self.store.get_latest_resources())

    async def _resources_by_id(self, request: Request, args: dict[str, Any]) -> Response:
        return _ok(await self.store.get_resources_by_id(**args))

    async def _add_span(self, request: Request, args: dict[str, Any]) -> Response:
        span = _parse_body(Span, request.body, self.limits)
        if not 0 <= span.sequence_id <= MAX_SEQUENCE_ID:
            _check_sequence_ids([span], "")
        stored = await self.store.add_span_json(span, request.body)
        if _wants_minimal(request):
            return Response(201, b"true" if stored is not None else b"null", JSON, _MINIMAL_HEADERS)
        return _ok(stored, 201)

    async def _add_spans(self, request: Request, args: dict[str, Any]) -> Response:
        spans: list[Span] = args["spans"]
        _check_items("spans", len(spans), self.limits)
        _check_sequence_ids(spans, "spans")
        minimal = _wants_minimal(request)
        if not spans:
            return Response(201, b"[]", JSON, _MINIMAL_HEADERS if minimal else None)
        stored = list(await self.store.add_many_spans(spans))
        if not minimal:
            return _ok(stored, 201)
        positions: dict[tuple[str, str, str], int] = {}
        for index, span in enumerate(spans):
            positions.setdefault((span.rollout_id, span.attempt_id, span.span_id), index)
        indices = [positions[(s.rollout_id, s.attempt_id, s.span_id)] for s in stored]
        return Response(201, orjson.dumps(indices), JSON, _MINIMAL_HEADERS)

    async def _query_spans(self, request: Request, args: dict[str, Any]) -> Response:
        _check_page(args, Span)
        return Response(200, _page_json(await self.store.query_spans(**args)))

    async def _next_sequence(self, request: Request, args: dict[str, Any]) -> Response:
        return _ok({"sequence_id": await self.store.get_next_span_sequence_id(**args)})

    async def _next_sequences(self, request: Request, args: dict[str, Any]) -> Response:
        items: list[Any] = args["rollout_attempt_ids"]
        _check_items("rollout_attempt_ids", len(items), self.limits)
        pairs = [(item.rollout_id, item.attempt_id) for item in items]
        ids = list(await self.store.get_many_span_sequence_ids(pairs)) if pairs else []
        return _ok({"sequence_ids": ids})

    async def _wait(self, request: Request, args: dict[str, Any]) -> Response:
        rollout_ids: list[str] = args["rollout_ids"]
        _check_items("rollout_ids", len(rollout_ids), self.limits)
        call = self.store.wait_for_rollouts(**args)
        finished, outcome = await self._until_answered(call, request.receive)
        if outcome == "disconnected":
            return Response(499, b'{"detail":"client disconnected"}')  # nobody reads it: the connection is gone
        if finished is None:  # the server is stopping: what has finished by now, as if the timeout had passed
            finished = await self.store.wait_for_rollouts(rollout_ids=rollout_ids, timeout=0)
        # Plain rollouts: drop an embedded attempt if the store attached one.
        return _ok(
            [r if type(r) is Rollout else Rollout.model_validate(r.model_dump(exclude={"attempt"})) for r in finished]
        )

    async def _query_workers(self, request: Request, args: dict[str, Any]) -> Response:
        _check_page(args, Worker)
        return Response(200, _page_json(await self.store.query_workers(**args)))

    async def _worker_by_id(self, request: Request, args: dict[str, Any]) -> Response:
        return _ok(await self.store.get_worker_by_id(**args))

    async def _update_worker(self, request: Request, args: dict[str, Any]) -> Response:
        return _ok(await self.store.update_worker(**args))

    async def _statistics(self, request: Request, args: dict[str, Any]) -> Response:
        return _ok(dict(await self.store.statistics()))


_METRICS_PATHS = frozenset({"/metrics", "/v1/prometheus/", "/v1/prometheus"})
"""Where the Prometheus metrics answer: `/metrics`, and Agent Lightning 0.3's `/v1/prometheus/`."""

_OTHER_PATHS = {
    "/metrics": "/metrics",
    "/v1/prometheus/": "/v1/prometheus/",
    "/v1/prometheus": "/v1/prometheus/",
    "/v1/traces": "/v1/traces",
    "/v1/metrics": "/v1/metrics",
    "/v1/logs": "/v1/logs",
    "/v1/development/profiles": "/v1/development/profiles",
}
"""The metrics' route label of each known path outside `/v1/agl`; every other path is `OTHER_ROUTE`."""


def _store_metrics(store: LightningStore, collectors: Sequence[Any]) -> StoreMetrics | None:
    try:
        from agl.store.http.metrics import StoreMetrics
    except ImportError:
        logger.warning("prometheus_client is not installed: /metrics is off (pip install 'agl[server]')")
        return None
    return StoreMetrics(store, collectors)


def _head_bytes(raw_headers: list[tuple[bytes, bytes]]) -> int:
    return sum([len(name) + len(value) for name, value in raw_headers])


async def _receive_body(receive: Receive, limit: int) -> bytes:
    """The raw body from ASGI `receive`; HTTPError 413 once more than `limit` bytes arrived."""
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HTTPError(400, "client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"Request body exceeds the limit of {limit} bytes (max_body_bytes)", _CLOSE)
        chunks.append(chunk)
    return b"".join(chunks)


async def _disconnected(receive: Receive) -> None:
    """Return once the ASGI server reports that the client disconnected (the body was read before)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def error_response(exc: Exception) -> Response:
    """Map an exception raised by the store to an HTTP answer by the error table of `agl.store.http.wire`.

    The body carries the message as `detail`, the table's `error_type` and the exception's fields; an exception
    not in the table is a fault: 500.
    """
    kind = kind_of_exception(exc)
    if kind is not None:
        if isinstance(exc, ValidationError):
            detail: Any = _validation_detail(exc, "store")
        else:
            detail = _message(exc) or kind.code
        fields = {name: getattr(exc, name, None) for name in kind.fields}
        if kind.retry:
            fields["retryable"] = True
        return Response(kind.status, _encode_detail(detail, error_type=kind.code, **fields))
    logger.error("store call failed: %s", "".join(traceback.format_exception(exc)))
    return Response(
        500,
        _encode_detail(f"Internal server error: {type(exc).__name__}: {_message(exc)}", error_type=type(exc).__name__),
    )


def _message(exc: BaseException, limit: int = 4096) -> str:
    """The exception's message, cut to `limit` characters (a message may quote the caller's input)."""
    text = str(exc)
    return text if len(text) <= limit else text[: limit - 3] + "..."
