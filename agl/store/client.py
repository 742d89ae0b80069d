"""`LightningStoreClient`: the whole `LightningStore` protocol over HTTP, against an AGL or Agent Lightning 0.3 server.

Requests go over pooled keep-alive connections (one pool per server and event loop). Failed calls are retried as the
0.3 client does (connection errors, timeouts, 408 and 5xx; with a health probe before each retry), and calls that are
not idempotent carry an `Idempotency-Key` header so an AGL server answers a retry with the first result instead of
running the call twice (`add_span` needs none: the store keeps one span per id). Given several servers of one
database, the client spreads its calls over them and, when one cannot be reached, retries the call on another at once
(`agl.store.http.servers`).

Errors come back as exceptions, by the error table of `agl.store.http.wire`: a store error is raised again as its own
class (`NotFoundError`, `StaleAttemptError`, `StoreFullError`, ...; each also a `StoreHTTPError`), other 4xx →
`StoreRequestError` (a ValueError), 401/403 → `StoreAuthError` (a PermissionError), 5xx after all tries →
`StoreServerError`, unreachable → `StoreUnavailableError` (a ConnectionError, naming every server tried). Getters
answer None only for an unknown id, never for a failure.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import warnings
import zlib
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

import orjson
import pydantic_core
from pydantic import Field, TypeAdapter

from agl.store.base import LightningStore, LightningStoreCapabilities, LightningStoreStatistics
from agl.store.errors import NotFoundError
from agl.store.http.servers import ServerSet, StoreEndpoint, split_server_addresses
from agl.store.http.transport import HTTPResponse, decode_body
from agl.store.http.wire import (
    API_PREFIX,
    TOKEN_ENV,
    StoreAuthError,
    StoreHTTPError,
    StoreRequestError,
    StoreServerError,
    StoreUnavailableError,
    kind_of_answer,
)
from agl.types.core import (
    UNSET,
    Attempt,
    AttemptedRollout,
    AttemptStatus,
    EnqueueRolloutRequest,
    PaginatedResult,
    Rollout,
    RolloutConfig,
    RolloutMode,
    RolloutStatus,
    TaskInput,
    Worker,
    WorkerStatus,
)
from agl.types.resources import NamedResources, ResourcesUpdate
from agl.types.tracer import Span, span_json

__all__ = [
    "LightningStoreClient",
    "StoreAuthError",
    "StoreHTTPError",
    "StoreRequestError",
    "StoreServerError",
    "StoreUnavailableError",
]

logger = logging.getLogger(__name__)

_AnyRollout = Annotated[AttemptedRollout | Rollout, Field(union_mode="left_to_right")]
_ROLLOUT = TypeAdapter(_AnyRollout)
_ROLLOUTS = TypeAdapter(list[Rollout])
_ATTEMPTED_ROLLOUTS = TypeAdapter(list[AttemptedRollout])
_ROLLOUT_PAGE = TypeAdapter(PaginatedResult[_AnyRollout])
_ATTEMPT_PAGE = TypeAdapter(PaginatedResult[Attempt])
_SPAN_PAGE = TypeAdapter(PaginatedResult[Span])
_RESOURCES_PAGE = TypeAdapter(PaginatedResult[ResourcesUpdate])
_WORKER_PAGE = TypeAdapter(PaginatedResult[Worker])
_OPTIONAL_ATTEMPT = TypeAdapter(Attempt | None)
_OPTIONAL_SPAN = TypeAdapter(Span | None)
_SPANS = TypeAdapter(list[Span])
_OPTIONAL_RESOURCES = TypeAdapter(ResourcesUpdate | None)
_OPTIONAL_WORKER = TypeAdapter(Worker | None)

_RETRY_STATUSES = frozenset({408})
_TRANSIENT_ERRORS = (ConnectionError, TimeoutError, OSError)

_DEFAULT = object()


def _q(value: str) -> str:
    return quote(value, safe="")


_key_prefix = os.urandom(12).hex().encode()
_key_counter = itertools.count()


def _reseed_keys() -> None:
    global _key_prefix, _key_counter
    _key_prefix = os.urandom(12).hex().encode()
    _key_counter = itertools.count()


os.register_at_fork(after_in_child=_reseed_keys)  # a forked child must never reuse its parent's keys


def _new_key() -> bytes:
    """A fresh idempotency key: a random per-process prefix and a counter (no system call per request)."""
    return b"%s-%x" % (_key_prefix, next(_key_counter))


def _decoded(response: HTTPResponse) -> HTTPResponse:
    """`response` with its body gunzipped if the server compressed it."""
    if b"content-encoding" in response.headers:
        response.body = decode_body(response)
    return response


def _error_body(response: HTTPResponse) -> tuple[Any, dict[str, Any]]:
    """The error answer's `detail` and its whole JSON object (empty when the body is not one)."""
    try:
        body = decode_body(response)
        data = orjson.loads(body) if body else None
    except (ValueError, zlib.error):
        return response.body[:500].decode("utf-8", "replace") or f"HTTP {response.status}", {}
    if isinstance(data, dict) and "detail" in data:
        return data["detail"], data
    return (data if data is not None else f"HTTP {response.status}"), {}


def _upstream_message(body: Mapping[str, Any]) -> str:
    """The exception message in an Agent Lightning 0.3 answer to a store exception (the traceback's last line)."""
    lines = [line for line in str(body.get("traceback", "")).strip().splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    _, sep, message = last.partition(": ")
    return message if sep and message else (last or str(body.get("detail", "")))


class LightningStoreClient(LightningStore):
    """A `LightningStore` that forwards every call to a store server over HTTP.

    Args:
        server_address: the server's base URL, e.g. `http://127.0.0.1:4747` (kept as `server_address_root`;
            `server_address` is the API base, `<root>/v1/agl`). Several servers of one database: a list of URLs, or
            one string with the URLs separated by commas; calls are then spread over them in turn, and a call
            that cannot reach one is sent to another at once (see `failover_probe_seconds`).
        token: bearer token; defaults to the AGL_STORE_TOKEN environment variable.
        retry_delays: seconds to sleep before the 2nd, 3rd, … round of tries of a failed call (empty = one round).
            A round tries each server at most once, those not left out first.
        health_retry_delays: delays between health probes run after a failure (empty = no probe).
        request_timeout: seconds a single request may take (`wait_for_rollouts` adds its own timeout to it).
        connection_timeout: seconds to establish a connection.
        max_connections: open connections per server and event loop.
        gzip_request_min_bytes: request bodies larger than this are sent gzipped (0 = never), to servers that list
            gzip among their features (AGL's do; Agent Lightning's reject compressed bodies, so they get plain ones).
        failover_probe_seconds: with several servers, how long one that could not be reached (refused, reset, no
            answer within `request_timeout`) is left out before a call tries it again; doubled after each further
            failure, at most 30 s. Answers, even errors (401, 4xx, 5xx), never leave a server out.
    """

    def __init__(
        self,
        server_address: str | Sequence[str],
        token: str | None = None,
        *,
        retry_delays: Sequence[float] = (1.0, 2.0, 5.0),
        health_retry_delays: Sequence[float] = (0.1, 0.2, 0.5),
        request_timeout: float = 30.0,
        connection_timeout: float = 5.0,
        max_connections: int = 64,
        gzip_request_min_bytes: int = 64 * 1024,
        failover_probe_seconds: float = 2.0,
    ) -> None:
        if request_timeout <= 0 or connection_timeout <= 0:
            raise ValueError(
                f"request_timeout and connection_timeout must be positive, got {request_timeout}, {connection_timeout}"
            )
        if not failover_probe_seconds > 0:
            raise ValueError(f"failover_probe_seconds must be positive, got {failover_probe_seconds!r}")
        addresses = split_server_addresses(server_address)
        self.server_addresses = addresses
        """Every server's base URL, in the order given (one for a single server)."""
        self.server_address_root = addresses[0]
        """The (first) address given, without a trailing slash (`http://host:port`)."""
        self.server_address = self.server_address_root + API_PREFIX
        """The base URL of the store API, `<server_address_root>/v1/agl` (as Agent Lightning's client has it)."""
        self.token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
        self.retry_delays = tuple(float(d) for d in retry_delays)
        self.health_retry_delays = tuple(float(d) for d in health_retry_delays)
        self.request_timeout = float(request_timeout)
        self.connection_timeout = float(connection_timeout)
        self.max_connections = max_connections
        self.gzip_request_min_bytes = gzip_request_min_bytes
        self.failover_probe_seconds = float(failover_probe_seconds)
        static = "accept-encoding: gzip\r\n"
        if self.token:
            static += f"authorization: Bearer {self.token}\r\n"
        self._servers = ServerSet(addresses, static.encode("latin-1"), self.failover_probe_seconds)
        self._features: frozenset[str] | None = None
        self._gzip_requests = False  # set once the server's features are known and include gzip
        self._dequeue_succeeded = False
        self._dequeue_warned = False

    # -- pickling ----------------------------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        addresses = self.server_addresses
        return {
            "server_address": addresses[0] if len(addresses) == 1 else list(addresses),
            "token": self.token,
            "retry_delays": self.retry_delays,
            "health_retry_delays": self.health_retry_delays,
            "request_timeout": self.request_timeout,
            "connection_timeout": self.connection_timeout,
            "max_connections": self.max_connections,
            "gzip_request_min_bytes": self.gzip_request_min_bytes,
            "failover_probe_seconds": self.failover_probe_seconds,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        address = state.pop("server_address")
        LightningStoreClient.__init__(self, address, **state)

    # -- protocol basics ---------------------------------------------------------------------------------------

    @property
    def capabilities(self) -> LightningStoreCapabilities:
        """Everything: the server behind the client serialises access and ingests OTLP."""
        return LightningStoreCapabilities(thread_safe=True, async_safe=True, zero_copy=True, otlp_traces=True)

    def otlp_traces_endpoint(self) -> str:
        """The server's OTLP/HTTP traces URL (with several servers: of one that is up, in turn)."""
        return f"{self._servers.pick().address}/v1/traces"

    # -- transport ---------------------------------------------------------------------------------------------

    def _with_body(self, head: bytes, body: bytes | None) -> bytes:
        """`head`, then the body's headers and the body (gzipped when large); with an empty `head`, the part of a
        request that is the same whichever server it goes to."""
        if body is None:
            return head + b"\r\n"
        if self._gzip_requests and len(body) > self.gzip_request_min_bytes:
            compressor = zlib.compressobj(5, zlib.DEFLATED, 31)
            body = compressor.compress(body) + compressor.flush()
            head += b"content-encoding: gzip\r\n"
        return b"%scontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (head, len(body), body)

    def _send_to(
        self, server: StoreEndpoint, method: str, target: str, tail: bytes, timeout: float | None, minimal: bool
    ) -> Any:
        """Send a request to `server` (a coroutine): its head for `target`, then `tail` (see `_with_body`)."""
        pool = server.pool(self.connection_timeout, self.max_connections)
        return pool.request(server.head(method, API_PREFIX + target, minimal) + tail, timeout)

    def _error(
        self, response: HTTPResponse, method: str, server: StoreEndpoint, target: str
    ) -> tuple[StoreHTTPError, bool]:
        """The exception for an error answer (by the error table, else by status) and whether to retry the call."""
        url = f"{server.address}{API_PREFIX}{target}"
        detail, fields = _error_body(response)
        status = response.status
        kind = kind_of_answer(status, fields)
        if kind is not None:
            if "traceback" in fields:  # Agent Lightning 0.3: the message is only in the traceback
                detail = _upstream_message(fields)
            return kind.client_class(status, detail, method, url, fields), kind.retry
        if status in (401, 403):
            return StoreAuthError(status, detail, method, url), False
        if status < 500:
            return StoreRequestError(status, detail, method, url), status in _RETRY_STATUSES
        return StoreServerError(status, detail, method, url), True

    async def _healthy(self, server: StoreEndpoint) -> bool:
        if not self.health_retry_delays:
            return True
        tail = self._with_body(b"", None)
        for delay in (*self.health_retry_delays, 0.0):
            try:
                response = await self._send_to(server, "GET", "/health", tail, self.connection_timeout, False)
                if response.status == 200:
                    return True
            except Exception as exc:
                logger.debug("health probe of %s failed: %r", server.address, exc)
            if delay:
                await asyncio.sleep(delay)
        return False

    async def _request(
        self,
        method: str,
        path: str,
        payload: Any = None,
        *,
        raw_body: bytes | None = None,
        query: Mapping[str, Any] | None = None,
        idempotent: bool = True,
        timeout: Any = _DEFAULT,
    ) -> bytes:
        """Send a request with the retry matrix of the 0.3 client and return the (decoded) response body."""
        response = await self._call(
            method, path, payload, raw_body=raw_body, query=query, idempotent=idempotent, timeout=timeout
        )
        return response.body

    async def _call(
        self,
        method: str,
        path: str,
        payload: Any = None,
        *,
        raw_body: bytes | None = None,
        query: Mapping[str, Any] | None = None,
        idempotent: bool = True,
        timeout: Any = _DEFAULT,
        minimal: bool = False,
    ) -> HTTPResponse:
        """Send a request with the retry matrix of the 0.3 client; the successful response, body decoded."""
        target = path
        if query:
            target += "?" + urlencode({k: v for k, v in query.items() if v is not None}, doseq=True)
        body = raw_body if raw_body is not None else (pydantic_core.to_json(payload) if payload is not None else None)
        if method == "POST" and body is None:
            body = b""
        key = b"" if idempotent else b"idempotency-key: %s\r\n" % _new_key()
        await self._learn_gzip(body)
        request_timeout: float | None = self.request_timeout if timeout is _DEFAULT else timeout
        return await self._exchange(method, target, self._with_body(key, body), request_timeout, minimal)

    async def _exchange(
        self, method: str, target: str, tail: bytes, timeout: float | None, minimal: bool = False
    ) -> HTTPResponse:
        """Send a request (`target` under the API base; `tail` as `_with_body` makes it) with the retry matrix; the
        successful response, body decoded."""
        servers = self._servers
        server = servers.single or servers.pick()
        try:  # the first try, kept short: nearly every call ends here
            response = await self._send_to(server, method, target, tail, timeout, minimal)
        except _TRANSIENT_ERRORS as exc:
            logger.debug("%s %s%s failed (try 1): %r", method, server.address, target, exc)
            servers.failed(server, exc)
            first: BaseException = exc
        else:
            if server.down_until:
                servers.answered(server)
            if response.status < 300:
                return _decoded(response)
            first = self._failure(response, method, server, target)
        return await self._retry(method, target, tail, timeout, minimal, server, first)

    def _failure(self, response: HTTPResponse, method: str, server: StoreEndpoint, target: str) -> StoreHTTPError:
        """The error for a non-2xx answer; raised at once unless it is worth another try (returned)."""
        error, retry = self._error(response, method, server, target)
        if not retry:
            raise error
        logger.debug("%s %s%s answered %d", method, server.address, target, response.status)
        return error

    async def _retry(
        self,
        method: str,
        target: str,
        tail: bytes,
        timeout: float | None,
        minimal: bool,
        server: StoreEndpoint,
        last: BaseException,
    ) -> HTTPResponse:
        """The retry matrix of the 0.3 client, after a first try on `server` failed with `last`: rounds of tries
        separated by `retry_delays`, each round trying every server at most once (failing over needs no sleep)."""
        servers = self._servers
        errors: dict[StoreEndpoint, BaseException] = {server: last}  # the last error of each server, for the message
        tried = [server]  # in this round
        delays = iter(self.retry_delays)
        attempt = 1
        while True:
            if isinstance(last, StoreHTTPError) and not await self._healthy(server):
                # The server answers but is unhealthy: give up on it. (Unreachable: keep trying; it may be
                # restarting.) With one server that ends the call, as the 0.3 client does.
                if servers.single is not None:
                    break
                servers.failed(server, last)
            following = servers.next_untried(tried)
            if following is None:
                delay = next(delays, None)
                if delay is None:
                    break
                await asyncio.sleep(delay)
                tried.clear()
                following = servers.next_untried(tried)
                assert following is not None
            server = following
            tried.append(server)
            attempt += 1
            try:
                response = await self._send_to(server, method, target, tail, timeout, minimal)
            except _TRANSIENT_ERRORS as exc:
                last = errors[server] = exc
                servers.failed(server, exc)
                logger.debug("%s %s%s failed (try %d): %r", method, server.address, target, attempt, exc)
                continue
            if server.down_until:
                servers.answered(server)
            if response.status < 300:
                response.retried = True
                return _decoded(response)
            last = errors[server] = self._failure(response, method, server, target)
        if isinstance(last, StoreHTTPError):
            raise last
        if servers.single is not None:
            raise StoreUnavailableError(
                f"store server {server.address} did not answer {method} {target}: {last!r}"
            ) from last
        tries = "; ".join(f"{s.address}: {e!r}" for s, e in errors.items())
        raise StoreUnavailableError(
            f"no store server answered {method} {target} ({attempt} tries over {len(servers.endpoints)} servers; "
            f"last error of each: {tries})"
        ) from last

    async def _features_of_server(self) -> frozenset[str]:
        if self._features is None:
            body = await self._request("GET", "/health")
            data = orjson.loads(body) if body else {}
            features = data.get("features") if isinstance(data, dict) else None
            self._features = frozenset(features) if isinstance(features, list) else frozenset()
            self._gzip_requests = bool(self.gzip_request_min_bytes) and "gzip" in self._features
        return self._features

    async def _learn_gzip(self, body: bytes | None) -> None:
        """Before the first large body: ask the server whether it takes gzipped bodies (0.3's rejects them)."""
        if self._features is None and body is not None and len(body) > self.gzip_request_min_bytes > 0:
            await self._features_of_server()

    # -- statistics --------------------------------------------------------------------------------------------

    async def statistics(self) -> LightningStoreStatistics:
        """The server store's statistics."""
        result: LightningStoreStatistics = orjson.loads(await self._request("GET", "/statistics"))
        return result

    async def dashboard(self, route: str, query: Mapping[str, Any] | None = None) -> Any:
        """The JSON answer of the server's dashboard route `GET /v1/agl/dashboard/<route>` (AGL servers only).

        `route` is e.g. "overview", "rollouts", "rollouts/<id>" or "workers"; `query` values may be lists (repeated
        parameters). Errors raise as for every other call (a server without these routes answers 404).
        """
        return orjson.loads(await self._request("GET", "/dashboard/" + route.lstrip("/"), query=query))

    # -- rollouts and the queue --------------------------------------------------------------------------------

    async def start_rollout(
        self,
        input: TaskInput,
        mode: RolloutMode | None = None,
        resources_id: str | None = None,
        config: RolloutConfig | None = None,
        metadata: dict[str, Any] | None = None,
        worker_id: str | None = None,
    ) -> AttemptedRollout:
        """Create a rollout and its first attempt, both `preparing`, without queueing it."""
        payload = {
            "input": input,
            "mode": mode,
            "resources_id": resources_id,
            "config": config,
            "metadata": metadata,
            "worker_id": worker_id,
        }
        body = await self._request("POST", "/rollouts", payload, idempotent=False)
        return AttemptedRollout.model_validate_json(body)

    async def enqueue_rollout(
        self,
        input: TaskInput,
        mode: RolloutMode | None = None,
        resources_id: str | None = None,
        config: RolloutConfig | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Rollout:
        """Create a `queuing` rollout at the tail of the queue."""
        item = {"input": input, "mode": mode, "resources_id": resources_id, "config": config, "metadata": metadata}
        body = await self._request("POST", "/queues/rollouts/enqueue", {"rollouts": [item]}, idempotent=False)
        rollouts = _ROLLOUTS.validate_json(body)
        if not rollouts:
            raise RuntimeError("enqueue_rollout returned no rollouts")
        return rollouts[0]

    async def enqueue_many_rollouts(self, rollouts: Sequence[EnqueueRolloutRequest]) -> Sequence[Rollout]:
        """Enqueue several rollouts in one request; results in input order."""
        if not rollouts:
            return []
        body = await self._request("POST", "/queues/rollouts/enqueue", {"rollouts": list(rollouts)}, idempotent=False)
        return _ROLLOUTS.validate_json(body)

    async def dequeue_rollout(self, worker_id: str | None = None) -> AttemptedRollout | None:
        """Claim the rollout at the head of the queue, or None (also when the server cannot be reached)."""
        claimed = await self.dequeue_many_rollouts(limit=1, worker_id=worker_id)
        return claimed[0] if claimed else None

    async def dequeue_many_rollouts(
        self, *, limit: int = 1, worker_id: str | None = None
    ) -> Sequence[AttemptedRollout]:
        """Claim up to `limit` rollouts; never raises: a failure is logged and yields `[]`."""
        if limit <= 0:
            return []
        payload: dict[str, Any] = {"limit": limit}
        if worker_id is not None:
            payload["worker_id"] = worker_id
        try:
            body = await self._request("POST", "/queues/rollouts/dequeue", payload, idempotent=False)
            claimed = _ATTEMPTED_ROLLOUTS.validate_json(body)
        except Exception as exc:
            if isinstance(exc, PermissionError) or (self._dequeue_succeeded and not self._dequeue_warned):
                self._dequeue_warned = True
                logger.warning("dequeue from %s failed: %s", self.server_address_root, exc)
            else:
                logger.debug("dequeue from %s failed: %r", self.server_address_root, exc)
            return []
        self._dequeue_succeeded = True
        return claimed

    async def start_attempt(self, rollout_id: str, worker_id: str | None = None) -> AttemptedRollout:
        """Create a new attempt for a rollout (a manual retry)."""
        payload = {"worker_id": worker_id} if worker_id is not None else None
        body = await self._request("POST", f"/rollouts/{_q(rollout_id)}/attempts", payload, idempotent=False)
        return AttemptedRollout.model_validate_json(body)

    async def query_rollouts(
        self,
        *,
        status_in: Sequence[RolloutStatus] | None = None,
        rollout_id_in: Sequence[str] | None = None,
        rollout_id_contains: str | None = None,
        mode_in: Sequence[RolloutMode] | None = None,
        start_time_from: float | None = None,
        start_time_to: float | None = None,
        filter_logic: Literal["and", "or"] = "and",
        sort_by: str | None = None,
        sort_order: Literal["asc", "desc"] = "asc",
        limit: int = -1,
        offset: int = 0,
        status: Sequence[RolloutStatus] | None = None,
        rollout_ids: Sequence[str] | None = None,
    ) -> PaginatedResult[Rollout]:
        """Rollouts matching the filters (with their latest attempt attached when they have one)."""
        if status_in is None and status is not None:
            warnings.warn("query_rollouts(status=...) is deprecated; use status_in", DeprecationWarning, stacklevel=2)
            status_in = status
        if rollout_id_in is None and rollout_ids is not None:
            warnings.warn(
                "query_rollouts(rollout_ids=...) is deprecated; use rollout_id_in", DeprecationWarning, stacklevel=2
            )
            rollout_id_in = rollout_ids
        payload = {
            "status_in": list(status_in) if status_in is not None else None,
            "rollout_id_in": list(rollout_id_in) if rollout_id_in is not None else None,
            "rollout_id_contains": rollout_id_contains,
            "mode_in": list(mode_in) if mode_in is not None else None,
            "start_time_from": start_time_from,
            "start_time_to": start_time_to,
            "filter_logic": filter_logic,
            "sort_by": sort_by,
            "sort_order": sort_order,
            "limit": limit,
            "offset": offset,
        }
        page: PaginatedResult[Rollout] = _ROLLOUT_PAGE.validate_json(
            await self._request("POST", "/rollouts/search", payload)
        )
        return page

    async def get_rollout_by_id(self, rollout_id: str) -> Rollout | None:
        """The rollout (with its latest attempt when it has one), or None if the store has no such rollout."""
        try:
            body = await self._request("GET", f"/rollouts/{_q(rollout_id)}")
        except NotFoundError:
            return None
        result: Rollout | None = _ROLLOUT.validate_json(body) if body != b"null" else None
        return result

    async def update_rollout(
        self,
        rollout_id: str,
        input: TaskInput = UNSET,
        mode: RolloutMode | None = UNSET,
        resources_id: str | None = UNSET,
        status: RolloutStatus = UNSET,
        config: RolloutConfig = UNSET,
        metadata: dict[str, Any] | None = UNSET,
    ) -> Rollout:
        """Replace the given (non-UNSET) fields of a rollout."""
        fields = {
            "input": input,
            "mode": mode,
            "resources_id": resources_id,
            "status": status,
            "config": config,
            "metadata": metadata,
        }
        payload = {k: v for k, v in fields.items() if v is not UNSET}
        body = await self._request("POST", f"/rollouts/{_q(rollout_id)}", payload, idempotent=False)
        result: Rollout = _ROLLOUT.validate_json(body)
        return result

    # -- attempts ----------------------------------------------------------------------------------------------

    async def query_attempts(
        self,
        rollout_id: str,
        *,
        sort_by: str | None = "sequence_id",
        sort_order: Literal["asc", "desc"] = "asc",
        limit: int = -1,
        offset: int = 0,
    ) -> PaginatedResult[Attempt]:
        """The attempts of a rollout (empty for an unknown rollout)."""
        payload = {"sort_by": sort_by, "sort_order": sort_order, "limit": limit, "offset": offset}
        body = await self._request("POST", f"/rollouts/{_q(rollout_id)}/attempts/search", payload)
        page: PaginatedResult[Attempt] = _ATTEMPT_PAGE.validate_json(body)
        return page

    async def get_latest_attempt(self, rollout_id: str) -> Attempt | None:
        """The attempt with the highest sequence id, or None when the rollout has none (or is unknown)."""
        try:
            body = await self._request("GET", f"/rollouts/{_q(rollout_id)}/attempts/latest")
        except NotFoundError:
            return None
        result: Attempt | None = _OPTIONAL_ATTEMPT.validate_json(body)
        return result

    async def update_attempt(
        self,
        rollout_id: str,
        attempt_id: str,
        status: AttemptStatus = UNSET,
        worker_id: str = UNSET,
        last_heartbeat_time: float = UNSET,
        metadata: dict[str, Any] = UNSET,
    ) -> Attempt:
        """Set the given (non-UNSET) fields of an attempt (`attempt_id` may be "latest")."""
        fields = {
            "status": status,
            "worker_id": worker_id,
            "last_heartbeat_time": last_heartbeat_time,
            "metadata": metadata,
        }
        payload = {k: v for k, v in fields.items() if v is not UNSET}
        body = await self._request(
            "POST", f"/rollouts/{_q(rollout_id)}/attempts/{_q(attempt_id)}", payload, idempotent=False
        )
        return Attempt.model_validate_json(body)

    # -- spans -------------------------------------------------------------------------------------------------

    async def add_span(self, span: Span) -> Span | None:
        """Store a span; None when the attempt already has a span with that id.

        The server is asked not to echo the span back (`Prefer: return=minimal`); then `span` itself is returned.
        Sent without an idempotency key: the store keeps one span per (rollout, attempt, span id), so a re-sent call
        cannot store it twice, and a re-sent call that finds the span already there returns it as stored (the try
        whose answer was lost stored it). This keeps the server's idempotency cache for the calls that need it.
        """
        body = span_json(span)
        if self._features is None and len(body) > self.gzip_request_min_bytes > 0:
            await self._features_of_server()
        tail = self._with_body(b"", body)  # what _call sends, minus its generic steps
        response = await self._exchange("POST", "/spans", tail, self.request_timeout, True)
        if response.headers.get(b"preference-applied") == b"return=minimal":
            stored = span if response.body == b"true" else None
        else:
            stored = _OPTIONAL_SPAN.validate_json(response.body)
        if stored is None and response.retried:
            return span
        return stored

    async def add_many_spans(self, spans: Sequence[Span]) -> Sequence[Span]:
        """Store several spans in one request (one by one against a server without the batch route)."""
        if not spans:
            return []
        if "spans_batch" in await self._features_of_server():
            spans = list(spans)
            parts = [span_json(s) if isinstance(s, Span) else pydantic_core.to_json(s) for s in spans]  # dicts too
            body = b'{"spans":[%s]}' % b",".join(parts)
            response = await self._call("POST", "/spans/batch", raw_body=body, idempotent=False, minimal=True)
            if response.retried:  # as add_span: a try whose answer was lost (maybe to another server) stored them
                return spans
            if response.headers.get(b"preference-applied") == b"return=minimal":
                return [spans[i] for i in orjson.loads(response.body)]
            return _SPANS.validate_json(response.body)
        stored: list[Span] = []
        for span in spans:
            result = await self.add_span(span)
            if result is not None:
                stored.append(result)
        return stored

    async def get_next_span_sequence_id(self, rollout_id: str, attempt_id: str) -> int:
        """Allocate the next span sequence id of a rollout."""
        payload = {"rollout_id": rollout_id, "attempt_id": attempt_id}
        body = await self._request("POST", "/spans/next", payload, idempotent=False)
        return int(orjson.loads(body)["sequence_id"])

    async def get_many_span_sequence_ids(self, rollout_attempt_ids: Sequence[tuple[str, str]]) -> Sequence[int]:
        """Allocate one sequence id per (rollout, attempt) pair, in one request when the server can."""
        if not rollout_attempt_ids:
            return []
        if "span_sequence_batch" in await self._features_of_server():
            payload = {"rollout_attempt_ids": [{"rollout_id": r, "attempt_id": a} for r, a in rollout_attempt_ids]}
            body = await self._request("POST", "/spans/next/batch", payload, idempotent=False)
            return [int(v) for v in orjson.loads(body)["sequence_ids"]]
        return [await self.get_next_span_sequence_id(r, a) for r, a in rollout_attempt_ids]

    async def query_spans(
        self,
        rollout_id: str,
        attempt_id: str | None = None,
        *,
        trace_id: str | None = None,
        trace_id_contains: str | None = None,
        span_id: str | None = None,
        span_id_contains: str | None = None,
        parent_id: str | None = None,
        parent_id_contains: str | None = None,
        name: str | None = None,
        name_contains: str | None = None,
        filter_logic: Literal["and", "or"] = "and",
        limit: int = -1,
        offset: int = 0,
        sort_by: str | None = "sequence_id",
        sort_order: Literal["asc", "desc"] = "asc",
    ) -> PaginatedResult[Span]:
        """Spans of a rollout: of one attempt, of the latest attempt ("latest"), or of all attempts (None)."""
        filters = {
            "attempt_id": attempt_id,
            "trace_id": trace_id,
            "trace_id_contains": trace_id_contains,
            "span_id": span_id,
            "span_id_contains": span_id_contains,
            "parent_id": parent_id,
            "parent_id_contains": parent_id_contains,
            "name": name,
            "name_contains": name_contains,
        }
        payload: dict[str, Any] = {"rollout_id": rollout_id}
        payload.update((k, v) for k, v in filters.items() if v is not None)
        payload.update(filter_logic=filter_logic, limit=limit, offset=offset, sort_by=sort_by, sort_order=sort_order)
        page: PaginatedResult[Span] = _SPAN_PAGE.validate_json(await self._request("POST", "/spans/search", payload))
        return page

    # -- resources ---------------------------------------------------------------------------------------------

    async def add_resources(self, resources: NamedResources) -> ResourcesUpdate:
        """Store a new resources snapshot (version 1); it becomes the latest."""
        body = await self._request("POST", "/resources", dict(resources), idempotent=False)
        return ResourcesUpdate.model_validate_json(body)

    async def update_resources(self, resources_id: str, resources: NamedResources) -> ResourcesUpdate:
        """Replace a snapshot's resources (version + 1), or create it; it becomes the latest."""
        body = await self._request("POST", f"/resources/{_q(resources_id)}", dict(resources), idempotent=False)
        return ResourcesUpdate.model_validate_json(body)

    async def get_resources_by_id(self, resources_id: str) -> ResourcesUpdate | None:
        """A resources snapshot by id, or None when the store has none with that id."""
        try:
            body = await self._request("GET", f"/resources/{_q(resources_id)}")
        except NotFoundError:
            return None
        result: ResourcesUpdate | None = _OPTIONAL_RESOURCES.validate_json(body)
        return result

    async def get_latest_resources(self) -> ResourcesUpdate | None:
        """The snapshot most recently added or updated, or None when there is none."""
        try:
            body = await self._request("GET", "/resources/latest")
        except NotFoundError:
            return None
        result: ResourcesUpdate | None = _OPTIONAL_RESOURCES.validate_json(body)
        return result

    async def query_resources(
        self,
        *,
        resources_id: str | None = None,
        resources_id_contains: str | None = None,
        sort_by: str | None = None,
        sort_order: Literal["asc", "desc"] = "asc",
        limit: int = -1,
        offset: int = 0,
    ) -> PaginatedResult[ResourcesUpdate]:
        """Resources snapshots matching the id filters."""
        query = {
            "resources_id": resources_id,
            "resources_id_contains": resources_id_contains,
            "sort_by": sort_by,
            "sort_order": sort_order,
            "limit": limit,
            "offset": offset,
        }
        page: PaginatedResult[ResourcesUpdate] = _RESOURCES_PAGE.validate_json(
            await self._request("GET", "/resources", query=query)
        )
        return page

    # -- workers -----------------------------------------------------------------------------------------------

    async def update_worker(self, worker_id: str, heartbeat_stats: dict[str, Any] = UNSET) -> Worker:
        """Record a worker heartbeat (creating the worker as `unknown` if new)."""
        payload = None if heartbeat_stats is UNSET else {"heartbeat_stats": heartbeat_stats}
        body = await self._request("POST", f"/workers/{_q(worker_id)}", payload, idempotent=False)
        return Worker.model_validate_json(body)

    async def get_worker_by_id(self, worker_id: str) -> Worker | None:
        """A worker by id, or None when the store has no such worker."""
        try:
            body = await self._request("GET", f"/workers/{_q(worker_id)}")
        except NotFoundError:
            return None
        result: Worker | None = _OPTIONAL_WORKER.validate_json(body)
        return result

    async def query_workers(
        self,
        *,
        status_in: Sequence[WorkerStatus] | None = None,
        worker_id_contains: str | None = None,
        filter_logic: Literal["and", "or"] = "and",
        sort_by: str | None = None,
        sort_order: Literal["asc", "desc"] = "asc",
        limit: int = -1,
        offset: int = 0,
    ) -> PaginatedResult[Worker]:
        """Workers matching the filters."""
        payload = {
            "status_in": list(status_in) if status_in is not None else None,
            "worker_id_contains": worker_id_contains,
            "filter_logic": filter_logic,
            "sort_by": sort_by,
            "sort_order": sort_order,
            "limit": limit,
            "offset": offset,
        }
        page: PaginatedResult[Worker] = _WORKER_PAGE.validate_json(
            await self._request("POST", "/workers/search", payload)
        )
        return page

    # -- waiting -----------------------------------------------------------------------------------------------

    async def wait_for_rollouts(self, *, rollout_ids: list[str], timeout: float | None = None) -> list[Rollout]:
        """The rollouts among `rollout_ids` that are finished by the deadline (the server waits; any timeout)."""
        if timeout is not None and timeout < 0:
            timeout = 0.0
        request_timeout = None if timeout is None else timeout + self.request_timeout
        payload = {"rollout_ids": list(rollout_ids), "timeout": timeout}
        body = await self._request("POST", "/waits/rollouts", payload, timeout=request_timeout)
        return _ROLLOUTS.validate_json(body)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Close every pooled connection, on every event loop that used this client."""
        pools = [entry for server in self._servers for entry in server.take_pools()]
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, pool in pools:
            try:
                if loop is current or loop.is_closed():
                    pool.close()
                else:
                    loop.call_soon_threadsafe(pool.close)
            except Exception as exc:  # a foreign loop may be closing concurrently
                logger.debug("closing a connection pool failed: %r", exc)
