"""Wire-level constants and error types shared by the store's HTTP server and client."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from agl.store.errors import NotFoundError, StaleAttemptError, StoreFullError

__all__ = [
    "API_PREFIX",
    "ERROR_TABLE",
    "FEATURES",
    "IDEMPOTENCY_HEADER",
    "REPLAYED_HEADER",
    "TOKEN_ENV",
    "ErrorKind",
    "NotFoundHTTPError",
    "StaleAttemptHTTPError",
    "StoreAuthError",
    "StoreFullHTTPError",
    "StoreHTTPError",
    "StoreNotImplementedError",
    "StoreRequestError",
    "StoreServerError",
    "StoreUnavailableError",
    "describe_detail",
    "kind_of_answer",
    "kind_of_exception",
]

API_PREFIX = "/v1/agl"
"""Every store route lives under this path."""

TOKEN_ENV = "AGL_STORE_TOKEN"
"""Environment variable holding the bearer token, used when no `token=` is given."""

IDEMPOTENCY_HEADER = "idempotency-key"
"""Request header carrying a client-chosen key; a repeated POST with the same key gets the first answer."""

REPLAYED_HEADER = "idempotent-replayed"
"""Response header set to `true` when the answer is a replay of an earlier request with the same key."""

FEATURES = ("spans_batch", "span_sequence_batch", "idempotency", "gzip", "otlp_json", "drain")
"""AGL extensions this server offers, listed by `GET /v1/agl/health` (an upstream server lists none)."""


def describe_detail(detail: Any) -> str:
    """A one-line message from an error body's `detail` (a string, or FastAPI-style validation errors)."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts: list[str] = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", ()))
                msg = str(item.get("msg", item))
                if "input" in item and item.get("type") != "missing":
                    shown = repr(item["input"])
                    msg += f", got {shown if len(shown) <= 80 else shown[:77] + '...'}"
                parts.append(f"{loc}: {msg}" if loc else msg)
            else:
                parts.append(str(item))
        return "; ".join(parts) if parts else "invalid request"
    return str(detail)


class StoreHTTPError(Exception):
    """An error answer from the store server: HTTP `status`, the server's `detail`, and the request it answered."""

    def __init__(
        self, status: int, detail: Any, method: str, url: str, fields: Mapping[str, Any] | None = None
    ) -> None:
        self.status = status
        self.detail = detail
        self.method = method
        self.url = url
        Exception.__init__(self, describe_detail(detail))


class StoreRequestError(StoreHTTPError, ValueError):
    """The server rejected the request (4xx but 401/403): bad input, unknown id, a conflict, a limit exceeded."""


class StoreAuthError(StoreHTTPError, PermissionError):
    """The server refused the credentials (401/403): set `token=` or the AGL_STORE_TOKEN environment variable."""


class StoreServerError(StoreHTTPError, RuntimeError):
    """The server failed (5xx) on every try."""


class StoreNotImplementedError(StoreServerError, NotImplementedError):
    """The server answered 501: the call exists in the API but the served store does not provide it."""


class StoreFullHTTPError(StoreServerError, StoreFullError):
    """The server answered 507: no room for more spans right now; retry later (see `retry_when_full`)."""


class NotFoundHTTPError(StoreRequestError, NotFoundError):
    """The server answered 404 NotFoundError: an unknown rollout, attempt, ... (see `NotFoundError`)."""

    def __init__(
        self, status: int, detail: Any, method: str, url: str, fields: Mapping[str, Any] | None = None
    ) -> None:
        StoreRequestError.__init__(self, status, detail, method, url)
        fields = fields or {}
        self.kind = str(fields.get("kind") or "item")
        self.id = str(fields.get("id") or "")
        rollout_id = fields.get("rollout_id")
        self.rollout_id = rollout_id if isinstance(rollout_id, str) else None


class StaleAttemptHTTPError(StoreRequestError, StaleAttemptError):
    """The server answered 409 StaleAttemptError: the attempt no longer holds its rollout (see `StaleAttemptError`)."""

    def __init__(
        self, status: int, detail: Any, method: str, url: str, fields: Mapping[str, Any] | None = None
    ) -> None:
        StoreRequestError.__init__(self, status, detail, method, url)
        fields = fields or {}
        self.rollout_id = str(fields.get("rollout_id", ""))
        self.attempt_id = str(fields.get("attempt_id", ""))
        self.rollout_status = str(fields.get("rollout_status", ""))
        current = fields.get("current_attempt_id")
        self.current_attempt_id = current if isinstance(current, str) else None


class StoreUnavailableError(ConnectionError):
    """The server could not be reached (connection refused/reset, timeout) on every try."""


# -- the error table ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorKind:
    """One row of the error table: a store error class, its HTTP status, and what the client raises for it.

    The server answers an exception of `store_class` (or a subclass) with `status` and a body
    `{"detail": <message>, "error_type": code, <field>: <value>...}`; the client raises `client_class`
    (a subclass of `store_class` where one exists) with the same `fields`.
    """

    code: str
    """The `error_type` written in the answer's body."""
    store_class: type[BaseException]
    status: int
    client_class: type[StoreHTTPError]
    fields: tuple[str, ...] = ()
    """Attributes of the exception sent along in the body and set again on the client's exception."""
    retry: bool = False
    """Whether the client retries a call answered this way (only while the server stays healthy)."""


ERROR_TABLE: tuple[ErrorKind, ...] = (
    ErrorKind(
        "StaleAttemptError",
        StaleAttemptError,
        409,
        StaleAttemptHTTPError,
        ("rollout_id", "attempt_id", "rollout_status", "current_attempt_id"),
    ),
    ErrorKind("NotFoundError", NotFoundError, 404, NotFoundHTTPError, ("kind", "id", "rollout_id")),
    ErrorKind("StoreFullError", StoreFullError, 507, StoreFullHTTPError, retry=True),
    ErrorKind("ValidationError", ValidationError, 422, StoreRequestError),  # pydantic's, raised by a store
    ErrorKind("ValueError", ValueError, 400, StoreRequestError),
    ErrorKind("NotImplementedError", NotImplementedError, 501, StoreNotImplementedError),
)
"""Store error classes and their answers, most specific first. Any other exception is a fault: 500, retried."""

_BY_CODE = {kind.code: kind for kind in ERROR_TABLE}

UPSTREAM_CODES: Mapping[str, ErrorKind] = {
    "ValueError": _BY_CODE["ValueError"],
    "ValidationError": _BY_CODE["ValidationError"],
    "KeyError": ErrorKind("KeyError", KeyError, 400, StoreRequestError),
    "TypeError": ErrorKind("TypeError", TypeError, 400, StoreRequestError),
    # 0.3's route promised an item and its store returned None (an unknown id): FastAPI's response check failed.
    "ResponseValidationError": ErrorKind("ResponseValidationError", LookupError, 404, NotFoundHTTPError),
}
"""The `error_type` of Agent Lightning 0.3's answer to a store exception (500 with a `traceback`) that is the
caller's mistake, so the client raises at once instead of retrying; any other `error_type` there is a fault."""


def kind_of_exception(exc: BaseException) -> ErrorKind | None:
    """The table row of a store exception (its most specific class in the table), None for a fault."""
    for kind in ERROR_TABLE:
        if isinstance(exc, kind.store_class):
            return kind
    return None


def kind_of_answer(status: int, body: Mapping[str, Any]) -> ErrorKind | None:
    """The table row an error answer stands for: by its `error_type` when it agrees with the status, else None.

    `body` is the answer's JSON object (empty when it was not one). An Agent Lightning 0.3 answer to a store
    exception (500 with a `traceback`) is matched by `UPSTREAM_CODES`.
    """
    code = body.get("error_type")
    if not isinstance(code, str):
        return None
    if status == 500 and "traceback" in body:
        return UPSTREAM_CODES.get(code)
    kind = _BY_CODE.get(code)
    return kind if kind is not None and kind.status == status else None
