"""The dashboard's files ship inside the package and the store's HTTP server serves them (no browser needed)."""

from __future__ import annotations

import hashlib
import http.client
import json
import re
from collections.abc import Iterator
from importlib import resources
from typing import Any

import pytest

from agl.dashboard import INDEX, asset_names, find_asset
from agl.store.http.app import StoreApp
from agl.store.memory import InMemoryLightningStore
from agl.store.server import LightningStoreServer


def _referenced(index: str) -> set[str]:
    """Every dashboard file index.html names (links, scripts, import map), relative to the static folder."""
    found = set(re.findall(r'(?:href|src)="(?:\./)?dashboard/([^"]+)"', index))
    found |= set(re.findall(r'"\./dashboard/([^"]+)"', index))
    return found


def test_files_are_package_data() -> None:
    static = resources.files("agl.dashboard").joinpath("static")
    index = static.joinpath(INDEX).read_text(encoding="utf-8")
    referenced = _referenced(index)
    assert {"app.js", "style.css"} <= referenced
    assert any(name.startswith("vendor/preact-") for name in referenced)
    for name in referenced:
        assert static.joinpath(name).is_file(), f"index.html names {name}, which is not shipped"
        assert name in asset_names()
    for package in ("preact", "htm", "uplot", "diff"):
        assert static.joinpath("vendor", f"LICENSE.{package}").is_file()


def test_vendored_files_match_their_checksums() -> None:
    vendor = resources.files("agl.dashboard").joinpath("static", "vendor")
    lines = vendor.joinpath("SHA256SUMS").read_text(encoding="utf-8").splitlines()
    listed = {}
    for line in lines:
        digest, name = line.split(maxsplit=1)
        listed[name] = digest
    shipped = {entry.name for entry in vendor.iterdir()} - {"SHA256SUMS"}
    assert set(listed) == shipped
    for name, digest in listed.items():
        assert hashlib.sha256(vendor.joinpath(name).read_bytes()).hexdigest() == digest, name


def test_find_asset_only_knows_shipped_names() -> None:
    app = find_asset("app.js")
    assert app is not None and app.content_type.startswith("text/javascript")
    assert b"render(" in app.body
    for bad in ("", "/app.js", "../__init__.py", "vendor/../app.js", "%2e%2e/__init__.py", "static/app.js", "nope.js"):
        assert find_asset(bad) is None, bad


@pytest.fixture
def served() -> Iterator[LightningStoreServer]:
    server = LightningStoreServer(InMemoryLightningStore(thread_safe=True), host="127.0.0.1", port=0, token="s3cret")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _get(server: LightningStoreServer, path: str, method: str = "GET", headers: dict[str, str] | None = None) -> Any:
    """Send `path` exactly as written (http.client does not normalise `..` or percent escapes)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def test_index_and_assets_are_served(served: LightningStoreServer) -> None:
    status, headers, body = _get(served, "/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    assert body == find_asset(INDEX).body  # type: ignore[union-attr]

    status, headers, body = _get(served, "/", method="HEAD")
    assert status == 200 and body == b""
    assert int(headers["content-length"]) == len(find_asset(INDEX).body)  # type: ignore[union-attr]

    expected_types = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css"}
    for name in asset_names():
        status, headers, body = _get(served, "/dashboard/" + name, headers={"accept-encoding": "identity"})
        assert status == 200, name
        assert body == find_asset(name).body  # type: ignore[union-attr]
        suffix = name[name.rfind(".") :]
        if suffix in expected_types:
            assert headers["content-type"].startswith(expected_types[suffix]), name
        if name.startswith("vendor/"):
            assert "immutable" in headers["cache-control"], name
        else:
            assert headers["cache-control"] == "no-cache", name

    status, headers, _ = _get(served, "/dashboard/app.js")
    etag = headers["etag"]
    status, _, body = _get(served, "/dashboard/app.js", headers={"if-none-match": etag})
    assert status == 304 and body == b""


def test_gzip_when_accepted(served: LightningStoreServer) -> None:
    import gzip

    status, headers, body = _get(served, "/dashboard/app.js", headers={"accept-encoding": "gzip"})
    assert status == 200 and headers.get("content-encoding") == "gzip"
    assert gzip.decompress(body) == find_asset("app.js").body  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard/",
        "/dashboard",
        "/dashboard/nope.js",
        "/dashboard/../pyproject.toml",
        "/dashboard/vendor/../app.js",
        "/dashboard/%2e%2e/__init__.py",
        "/dashboard/%2E%2E%2F__init__.py",
        "/dashboard/vendor/..%2f..%2f__init__.py",
        "/dashboard/..%5c__init__.py",
        "/dashboard//etc/passwd",
        "/dashboard/static/app.js",
        "/index.html",
        "/app.js",
    ],
)
def test_unknown_or_traversing_paths_are_404(served: LightningStoreServer, path: str) -> None:
    status, headers, body = _get(served, path)
    assert status == 404, path
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"detail": "Not Found", "error_type": "NotFound"}


def test_other_methods_are_refused(served: LightningStoreServer) -> None:
    status, headers, _ = _get(served, "/", method="POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    status, _, _ = _get(served, "/dashboard/app.js", method="DELETE")
    assert status == 405


def test_api_paths_are_unchanged(served: LightningStoreServer) -> None:
    # The page is public; the data is not.
    status, _, _ = _get(served, "/v1/agl/rollouts")
    assert status == 401
    status, _, body = _get(served, "/v1/agl/rollouts", headers={"authorization": "Bearer s3cret"})
    assert status == 200 and json.loads(body)["total"] == 0
    for path in ("/v1/agl/nope", "/v1/nope", "/v1/dashboard/app.js", "/v1/agl/dashboard/app.js"):
        status, headers, body = _get(served, path, headers={"authorization": "Bearer s3cret"})
        assert status == 404, path
        assert headers["content-type"] == "application/json" and "detail" in json.loads(body)


async def test_asgi_head_has_no_body() -> None:
    app = StoreApp(InMemoryLightningStore(thread_safe=True))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    for method in ("GET", "HEAD"):
        sent.clear()
        scope = {"type": "http", "method": method, "path": "/", "raw_path": b"/", "headers": [], "query_string": b""}
        await app(scope, receive, send)
        start, body = sent
        assert start["status"] == 200
        length = int(dict(start["headers"])[b"content-length"])
        assert length == len(find_asset(INDEX).body)  # type: ignore[union-attr]
        assert body["body"] == (b"" if method == "HEAD" else find_asset(INDEX).body)  # type: ignore[union-attr]
