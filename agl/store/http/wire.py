"""Wire-level constants and error types shared by the store's HTTP server and client."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agl.store.errors import StaleAttemptError, StoreFullError

__all__ = [
    "API_PREFIX",
    "FEATURES",
    "IDEMPOTENCY_HEADER",
    "REPLAYED_HEADER",
    "TOKEN_ENV",
    "StaleAttemptHTTPError",
    "StoreAuthError",
    "StoreHTTPError",
    "StoreRequestError",
    "StoreServerError",
    "StoreUnavailableError",
    "describe_detail",
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

    def __init__(self, status: int, detail: Any, method: str, url: str) -> None:
        self.status = status
        self.detail = detail
        self.method = method
        self.url = url
        super().__init__(describe_detail(detail))


class StoreRequestError(StoreHTTPError, ValueError):
    """The server rejected the request (400, 404, 409, 413, 422): bad input, unknown id or a conflict."""


class StoreAuthError(StoreHTTPError, PermissionError):
    """The server refused the credentials (401/403): set `token=` or the AGL_STORE_TOKEN environment variable."""


class StoreServerError(StoreHTTPError, RuntimeError):
    """The server failed (5xx) on every try."""


class StoreFullHTTPError(StoreServerError, StoreFullError):
    """The server answered 507: no room for more spans right now; retry later (see `retry_when_full`)."""


class StaleAttemptHTTPError(StoreRequestError, StaleAttemptError):
    """The server answered 409 StaleAttemptError: the attempt no longer holds its rollout (see `StaleAttemptError`)."""

    def __init__(self, status: int, detail: Any, method: str, url: str, fields: Mapping[str, Any]) -> None:
        StoreRequestError.__init__(self, status, detail, method, url)
        self.rollout_id = str(fields.get("rollout_id", ""))
        self.attempt_id = str(fields.get("attempt_id", ""))
        self.rollout_status = str(fields.get("rollout_status", ""))
        current = fields.get("current_attempt_id")
        self.current_attempt_id = current if isinstance(current, str) else None


class StoreUnavailableError(ConnectionError):
    """The server could not be reached (connection refused/reset, timeout) on every try."""
