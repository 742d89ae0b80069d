"""Cross-origin access to the store from browser pages served elsewhere (`cors_allow_origins`, `--cors-origin`).

The store's own dashboard is same-origin and needs none of this. The policy is small and lives here rather than in
Starlette's CORSMiddleware because the server's protocol calls `StoreApp.handle` directly, not through ASGI
middleware. Allowed origins get `access-control-allow-origin` (their own origin echoed, so credentials work) with
credentials allowed and every header exposed; a preflight (`OPTIONS` with `Access-Control-Request-Method`) is answered
without the token, as browsers send none on it. Other origins get no CORS headers at all.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["CorsPolicy"]

_ALLOWED_METHODS = b"DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"


class CorsPolicy:
    """The origins a browser may call the store from; `"*"` allows any."""

    __slots__ = ("any_origin", "origins")

    def __init__(self, origins: Sequence[str]) -> None:
        self.any_origin = "*" in origins
        self.origins = frozenset(o.encode("latin-1") for o in origins if o != "*")

    @classmethod
    def from_setting(cls, setting: str | Sequence[str] | None) -> CorsPolicy | None:
        """The policy for `cors_allow_origins` (None, one origin, or several); None when nothing is allowed.

        Blank entries are dropped and a `"*"` among them allows every origin.
        """
        if setting is None:
            return None
        items = [setting] if isinstance(setting, str) else list(setting)
        for item in items:
            if not isinstance(item, str):
                raise ValueError(f"cors_allow_origins entries must be strings like 'https://host:port', got {item!r}")
        origins = [item.strip().rstrip("/") for item in items if item.strip()]
        if not origins:
            return None
        return cls(["*"] if "*" in origins else origins)

    def allows(self, origin: bytes | None) -> bool:
        """Whether a request carrying this `Origin` header may read the answer."""
        return origin is not None and (self.any_origin or origin in self.origins)

    def answer_headers(self, origin: bytes) -> list[tuple[bytes, bytes]]:
        """The headers added to an answer for an allowed origin."""
        return [
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-credentials", b"true"),
            (b"access-control-expose-headers", b"*"),
            (b"vary", b"origin"),
        ]

    def preflight_headers(self, origin: bytes, requested_headers: bytes | None) -> list[tuple[bytes, bytes]]:
        """The headers of the answer to an allowed preflight request."""
        return [
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-methods", _ALLOWED_METHODS),
            (b"access-control-allow-headers", requested_headers or b"*"),
            (b"access-control-allow-credentials", b"true"),
            (b"access-control-max-age", b"600"),
            (b"vary", b"origin"),
        ]
