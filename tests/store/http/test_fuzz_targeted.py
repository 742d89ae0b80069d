"""Hand-picked hostile requests against a real server on 127.0.0.1: each is answered below 500 and the server stays
healthy. Huge, deep and malformed bodies, wrong content types, integers beyond 64 bits, NaN/Infinity, overlong ids,
unknown query parameters, HEAD on every GET route of the OpenAPI document.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from typing import Any

import pytest

from agl.store.http.app import StoreApp
from agl.store.http.openapi import build_document
from agl.store.memory import InMemoryLightningStore
from tests.store.http.fuzzing import Seeded, ask, assert_healthy, seeded_server

MAX_BODY = 256 * 1024
_DOCUMENT = build_document(StoreApp(InMemoryLightningStore(), metrics=False))
_JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def seeded() -> Iterator[Seeded]:
    with seeded_server(max_body_bytes=MAX_BODY) as running:
        yield running


def _concrete(path: str, seeded: Seeded) -> str:
    for name, value in seeded.path_ids.items():
        path = path.replace(f"{{{name}}}", value)
    return path


def _operations(method: str) -> list[str]:
    return sorted(path for path, item in _DOCUMENT["paths"].items() if method.lower() in item)


_POSTS = _operations("POST")
_GETS = _operations("GET")


def _answered(seeded: Seeded, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> int:
    status, _, answer = ask(seeded.server.port, method, path, body, headers)
    assert status < 500, f"{method} {path} answered {status}: {answer[:300]!r}"
    assert_healthy(seeded.server.port)
    return status


_MALFORMED = {
    "truncated": b'{"rollouts": [{"input": 1}',
    "not utf-8": b'{"worker_id": "\xff\xfe"}',
    "array": b"[1, 2, 3]",
    "null": b"null",
    "string": b'"x"',
    "number": b"12",
    "nul bytes": b'{"a": "\x00"}\x00',
    "two documents": b"{}{}",
    "bare word": b"hello",
    "lone surrogate": b'{"worker_id": "\\ud800"}',
}


@pytest.mark.parametrize("name", sorted(_MALFORMED))
@pytest.mark.parametrize("path", _POSTS)
def test_malformed_bodies(path: str, name: str, seeded: Seeded) -> None:
    _answered(seeded, "POST", _concrete(path, seeded), _MALFORMED[name], _JSON)


@pytest.mark.parametrize("path", _POSTS)
def test_empty_body(path: str, seeded: Seeded) -> None:
    _answered(seeded, "POST", _concrete(path, seeded), b"", _JSON)


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml", ""],
)
@pytest.mark.parametrize("path", _POSTS)
def test_wrong_content_types(path: str, content_type: str, seeded: Seeded) -> None:
    _answered(seeded, "POST", _concrete(path, seeded), b"a=1&b=2", {"Content-Type": content_type})


@pytest.mark.parametrize("path", _POSTS)
def test_body_over_the_limit_is_413(path: str, seeded: Seeded) -> None:
    body = b'{"x": "' + b"a" * (MAX_BODY + 10) + b'"}'
    status = _answered(seeded, "POST", _concrete(path, seeded), body, _JSON)
    assert status == 413


def test_gzip_bomb_is_413(seeded: Seeded) -> None:
    body = gzip.compress(b'{"x": "' + b"a" * (MAX_BODY * 40) + b'"}')
    assert len(body) < MAX_BODY
    status = _answered(seeded, "POST", "/v1/agl/rollouts/search", body, {**_JSON, "Content-Encoding": "gzip"})
    assert status == 413


def test_huge_valid_size_invalid_body(seeded: Seeded) -> None:
    """A body just under the limit made of many invalid items is refused (4xx), not choked on."""
    item = b'{"input": 1, "mode": "nope"},'
    body = b'{"rollouts": [' + item * ((MAX_BODY - 100) // len(item)) + b'{"input": 1}]}'
    assert len(body) <= MAX_BODY
    status = _answered(seeded, "POST", "/v1/agl/queues/rollouts/enqueue", body, _JSON)
    assert 400 <= status < 500


def test_invalid_body_answer_is_bounded(seeded: Seeded) -> None:
    item = b'{"input": 1, "mode": "nope"},'
    body = b'{"rollouts": [' + item * ((MAX_BODY - 100) // len(item)) + b'{"input": 1}]}'
    status, _, answer = ask(seeded.server.port, "POST", "/v1/agl/queues/rollouts/enqueue", body, _JSON)
    assert 400 <= status < 500
    assert len(answer) <= 64 * 1024


@pytest.mark.parametrize("depth", [100, 1_000, 20_000])
@pytest.mark.parametrize(
    "path",
    ["/v1/agl/rollouts", "/v1/agl/queues/rollouts/enqueue", "/v1/agl/spans", "/v1/agl/resources"],
)
def test_deep_bodies(path: str, depth: int, seeded: Seeded) -> None:
    deep = b"[" * depth + b"]" * depth
    body = b'{"input": ' + deep + b', "rollouts": [{"input": ' + deep + b"}]}"
    _answered(seeded, "POST", path, body, _JSON)


_BIG = {"2**63": 2**63, "2**64": 2**64, "-2**64": -(2**64), "10**40": 10**40}


@pytest.mark.parametrize("name", sorted(_BIG))
@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/v1/agl/queues/rollouts/dequeue", '{{"limit": {n}}}'),
        ("/v1/agl/rollouts/search", '{{"limit": 5, "offset": {n}}}'),
        ("/v1/agl/rollouts", '{{"input": {n}, "metadata": {{"n": {n}}}}}'),
        ("/v1/agl/workers/fuzz-worker", '{{"heartbeat_stats": {{"n": {n}}}}}'),
        ("/v1/agl/waits/rollouts", '{{"rollout_ids": [], "timeout": {n}}}'),
    ],
)
def test_big_integers_in_valid_bodies(path: str, template: str, name: str, seeded: Seeded) -> None:
    _answered(seeded, "POST", path, template.format(n=_BIG[name]).encode(), _JSON)


@pytest.mark.parametrize("name", sorted(_BIG))
@pytest.mark.parametrize(
    "path", ["/v1/agl/rollouts?limit={n}", "/v1/agl/workers?offset={n}", "/v1/agl/resources?limit={n}"]
)
def test_big_integers_in_queries(path: str, name: str, seeded: Seeded) -> None:
    _answered(seeded, "GET", path.format(n=_BIG[name]), None, {})


@pytest.mark.parametrize("name", ["2**64", "10**40"])
def test_big_integer_in_an_invalid_body(name: str, seeded: Seeded) -> None:
    body = json.dumps({"input": 1, "mode": {"n": _BIG[name]}}).encode()
    assert _answered(seeded, "POST", "/v1/agl/rollouts", body, _JSON) == 422


_NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e400"]


@pytest.mark.parametrize("token", _NON_FINITE)
@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/v1/agl/rollouts/search", '{{"start_time_from": {v}}}'),
        ("/v1/agl/waits/rollouts", '{{"rollout_ids": [], "timeout": {v}}}'),
        ("/v1/agl/rollouts", '{{"input": {v}, "config": {{"timeout_seconds": {v}}}}}'),
        ("/v1/agl/workers/fuzz-worker", '{{"heartbeat_stats": {{"x": {v}}}}}'),
    ],
)
def test_non_finite_numbers_are_refused(path: str, template: str, token: str, seeded: Seeded) -> None:
    assert _answered(seeded, "POST", path, template.format(v=token).encode(), _JSON) == 422


def test_nan_is_refused(seeded: Seeded) -> None:
    body = b'{"input": 1, "config": {"timeout_seconds": NaN}}'
    assert _answered(seeded, "POST", "/v1/agl/rollouts", body, _JSON) == 422


@pytest.mark.parametrize("size", [1_000, 60_000])
@pytest.mark.parametrize("path", [p for p in _GETS if "{" in p])
def test_overlong_ids_in_paths(path: str, size: int, seeded: Seeded) -> None:
    long_id = "r" * size
    for name in seeded.path_ids:
        path = path.replace(f"{{{name}}}", long_id)
    _answered(seeded, "GET", path, None, {})


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/v1/agl/spans/next", '{{"rollout_id": "{i}", "attempt_id": "{i}"}}'),
        ("/v1/agl/waits/rollouts", '{{"rollout_ids": ["{i}"], "timeout": 0}}'),
        ("/v1/agl/queues/rollouts/dequeue", '{{"worker_id": "{i}"}}'),
        ("/v1/agl/rollouts/search", '{{"rollout_id_contains": "{i}"}}'),
    ],
)
def test_overlong_ids_in_bodies(path: str, template: str, seeded: Seeded) -> None:
    _answered(seeded, "POST", path, template.format(i="x" * (MAX_BODY // 2)).encode(), _JSON)


_FORBID_UNKNOWN = {"/v1/agl/dashboard/overview", "/v1/agl/dashboard/rollouts"}


@pytest.mark.parametrize("path", _GETS)
def test_unknown_query_parameters(path: str, seeded: Seeded) -> None:
    """Ignored by the store's routes (as Agent Lightning does); the dashboard's filters name them in a 422."""
    concrete = _concrete(path, seeded) + ("?rollout_id=" + seeded.rollout_id if path == "/v1/agl/spans" else "?")
    plain = _answered(seeded, "GET", concrete, None, {})
    status = _answered(seeded, "GET", concrete + "&no_such_parameter=1&also%00odd=%ff", None, {})
    assert status == (422 if path in _FORBID_UNKNOWN else plain)


@pytest.mark.parametrize("path", _GETS)
def test_head_on_every_get_route(path: str, seeded: Seeded) -> None:
    """HEAD answers what GET does, without a body."""
    concrete = _concrete(path, seeded)
    get_status, get_headers, _ = ask(seeded.server.port, "GET", concrete)
    head_status, head_headers, head_body = ask(seeded.server.port, "HEAD", concrete)
    assert head_status == get_status
    assert head_body == b""
    assert head_headers.get("content-type") == get_headers.get("content-type")
    assert "content-length" in head_headers
    assert_healthy(seeded.server.port)


def test_many_headers_and_a_long_one(seeded: Seeded) -> None:
    headers = {f"x-extra-{i}": "v" * 50 for i in range(90)}
    headers["x-long"] = "v" * 60_000
    _answered(seeded, "GET", "/v1/agl/statistics", None, headers)


@pytest.mark.parametrize(
    "header", ["Content-Length: abc", "Content-Length: -5", "Content-Length: 99999999999999999999"]
)
def test_bad_content_length(header: str, seeded: Seeded) -> None:
    """A malformed Content-Length is refused (by the HTTP parser or the app) and the server keeps serving."""
    import socket

    with socket.create_connection(("127.0.0.1", seeded.server.port), timeout=10) as sock:
        sock.sendall(f"POST /v1/agl/rollouts/search HTTP/1.1\r\nHost: x\r\n{header}\r\n\r\n{{}}".encode())
        answer = sock.recv(65536)
    if answer:  # an HTTP parser may also just close the connection on a request it cannot frame
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500, answer[:300]
    assert_healthy(seeded.server.port)


def _schema(ref_or_schema: dict[str, Any]) -> dict[str, Any]:
    ref = ref_or_schema.get("$ref")
    return _DOCUMENT["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else ref_or_schema


def _numeric_fields(schema: dict[str, Any], loc: tuple[Any, ...] = (), depth: int = 0) -> Iterator[tuple[Any, ...]]:
    """Locations of every field typed integer or number (or one of those or null) in a request body schema."""
    schema = _schema(schema)
    if depth > 4:
        return
    options = [_schema(s) for s in schema.get("anyOf", [schema])]
    types = {s.get("type") for s in options} - {"null"}
    if types and types <= {"integer", "number"}:
        yield loc
        return
    for option in options:
        for name, child in option.get("properties", {}).items():
            yield from _numeric_fields(child, (*loc, name), depth + 1)
        if option.get("type") == "array" and isinstance(option.get("items"), dict):
            yield from _numeric_fields(option["items"], (*loc, 0), depth + 1)


def _body_with(loc: tuple[Any, ...], value: Any) -> Any:
    for part in reversed(loc):
        value = [value] if isinstance(part, int) else {part: value}
    return value


_NUMERIC_FIELDS = sorted(
    (path, loc)
    for path, item in _DOCUMENT["paths"].items()
    if "post" in item and "requestBody" in item["post"]
    for loc in _numeric_fields(item["post"]["requestBody"]["content"]["application/json"]["schema"])
)


def test_the_document_has_numeric_fields_to_check() -> None:
    fields = {(path, loc[-1]) for path, loc in _NUMERIC_FIELDS}
    assert ("/v1/agl/workers/search", "limit") in fields
    assert ("/v1/agl/spans", "sequence_id") in fields  # a required integer
    assert ("/v1/agl/queues/rollouts/enqueue", "max_attempts") in fields  # nested: rollouts[0].config
    assert ("/v1/agl/waits/rollouts", "timeout") in fields  # a float or null


@pytest.mark.parametrize("value", [False, True])
@pytest.mark.parametrize(
    ("path", "loc"), _NUMERIC_FIELDS, ids=[f"{p}:{'.'.join(map(str, where))}" for p, where in _NUMERIC_FIELDS]
)
def test_a_boolean_is_not_a_number(path: str, loc: tuple[Any, ...], value: bool, seeded: Seeded) -> None:
    """Pydantic's lax mode would read false as 0 (and true as 1): every integer and number field refuses it."""
    body = json.dumps(_body_with(loc, value)).encode()
    status, _, answer = ask(seeded.server.port, "POST", _concrete(path, seeded), body, _JSON)
    assert status == 422, answer[:300]
    errors = json.loads(answer)["detail"]
    assert any(tuple(e["loc"][1:]) == loc and e["input"] is value for e in errors), errors
    assert_healthy(seeded.server.port)


def test_integers_still_fill_number_fields(seeded: Seeded) -> None:
    body = b'{"rollout_ids": [], "timeout": 0}'
    assert _answered(seeded, "POST", "/v1/agl/waits/rollouts", body, _JSON) == 200
    assert _answered(seeded, "POST", "/v1/agl/rollouts/search", b'{"start_time_from": 1}', _JSON) == 200
