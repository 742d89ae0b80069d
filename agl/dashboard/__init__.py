"""The web dashboard's static files (HTML, JavaScript, CSS and vendored libraries) shipped inside the package.

The store's HTTP app answers `GET /` with `index.html` and `GET /dashboard/<name>` with the file `name` found
here. The files hold no data: the page reads everything from `/v1/agl/...` with the store's token.

Only files that exist under `static/` are served, looked up by their exact relative name in a table built once, so
no request path (`..`, percent-encoded or not) can reach anything else. This module imports nothing from the store.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.abc import Traversable

__all__ = ["INDEX", "Asset", "asset_names", "find_asset"]

INDEX = "index.html"
"""The name of the page served at `/`."""

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".json": "application/json",
}
_TEXT = "text/plain; charset=utf-8"  # LICENSE, VERSIONS, SHA256SUMS

# Vendored files carry their version in their name (see vendor.sh), so a browser may keep them for good; the
# dashboard's own files change with AGL under a fixed name, so the browser revalidates them (ETag, 304).
_IMMUTABLE = "public, max-age=31536000, immutable"
_REVALIDATE = "no-cache"


@dataclass(frozen=True)
class Asset:
    """One static file ready to send: its bytes, content type, Cache-Control value and (quoted) ETag."""

    body: bytes
    content_type: str
    cache_control: str
    etag: str


_assets: dict[str, Asset] | None = None
_lock = threading.Lock()


def _walk(folder: Traversable, prefix: str, out: dict[str, Asset]) -> None:
    for entry in folder.iterdir():
        name = prefix + entry.name
        if entry.is_dir():
            _walk(entry, name + "/", out)
            continue
        body = entry.read_bytes()
        dot = entry.name.rfind(".")
        content_type = _TYPES.get(entry.name[dot:], _TEXT) if dot > 0 else _TEXT
        cache = _IMMUTABLE if name.startswith("vendor/") else _REVALIDATE
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        out[name] = Asset(body, content_type, cache, etag)


def _table() -> dict[str, Asset]:
    global _assets
    if _assets is None:
        with _lock:
            if _assets is None:
                table: dict[str, Asset] = {}
                _walk(resources.files(__name__).joinpath("static"), "", table)
                _assets = table
    return _assets


def asset_names() -> list[str]:
    """The relative names of every shipped static file (e.g. `index.html`, `vendor/htm-3.1.1.mjs`), sorted."""
    return sorted(_table())


def find_asset(name: str) -> Asset | None:
    """The static file called exactly `name` (relative to the static folder), or None when there is none."""
    return _table().get(name)
