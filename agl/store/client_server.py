"""The store's HTTP client and server under Agent Lightning's module path.

Implementations: `agl.store.client.LightningStoreClient` (needs the `server` or `cli` extra: httptools, orjson)
and `agl.store.server.LightningStoreServer` (needs the `server` extra: uvicorn). Both are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agl.optional import import_optional

__all__ = ["LightningStoreClient", "LightningStoreServer"]

_HOMES = {"LightningStoreClient": "agl.store.client", "LightningStoreServer": "agl.store.server"}


def __getattr__(name: str) -> Any:
    module = _HOMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_optional(module, "server", name), name)


if TYPE_CHECKING:
    from agl.store.client import LightningStoreClient
    from agl.store.server import LightningStoreServer
