"""Request limits: JSON depth, numbers, items per list, URL length, bounded 422s, auth before the body, watchers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agl.store.http.app import MAX_SEQUENCE_ID, StoreApp
from agl.store.http.limits import RequestLimits
from agl.store.memory import InMemoryLightningStore
from agl.store.server import LightningStoreServer

SMALL = RequestLimits(max_batch_items=5, max_url_bytes=300, max_json_depth=8, max_watchers=3, watcher_ttl_seconds=0.2)


@pytest.fixture
def limited() -> Iterator[LightningStoreServer]:
    server = LightningStoreServer(InMemoryLightningStore(thread_safe=True), port=0, limits=SMALL)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _span(sequence_id: Any = 1, **extra: Any) -> dict[str, Any]:
    return {
        "rollout_id": "ro-1",
        "attempt_id": "at-1",
        "sequence_id": sequence_id,
        "trace_id": "t" * 32,
        "span_id": "s" * 16,
        "name": "n",
        **extra,
    }


def test_limits_are_checked_when_made() -> None:
    for bad in ({"max_json_depth": 0}, {"max_json_depth": 201}, {"max_batch_items": -1}, {"watcher_ttl_seconds": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            RequestLimits(**bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="RequestLimits"):
        StoreApp(InMemoryLightningStore(), limits={"max_json_depth": 3})  # type: ignore[arg-type]


async def test_json_nesting_deeper_than_the_limit_is_422(limited: LightningStoreServer) -> None:
    url = f"{limited.endpoint}/v1/agl/rollouts"
    async with httpx.AsyncClient() as http:
        deep = await http.post(url, content=b'{"input":' + b"[" * 8 + b"]" * 8 + b"}")
        assert deep.status_code == 422
        assert deep.json()["detail"][0]["type"] == "json_too_deep" and "max_json_depth" in deep.text
        # Brackets inside strings do not count, escaped quotes included.
        ok = await http.post(url, content=b'{"input": {"s": "[[[[[[[[[[\\"[[[[[[", "d": [[[[1]]]]}}')
        assert ok.status_code == 201, ok.text


@pytest.mark.parametrize(
    ("body", "loc", "kind"),
    [
        (b'{"input": {"n": 18446744073709551616}}', ["body", "input", "n"], "int_out_of_range"),
        (b'{"input": [1, -9223372036854775809]}', ["body", "input", 1], "int_out_of_range"),
        (b'{"input": {"x": NaN}}', ["body", "input", "x"], "finite_number"),
        (b'{"input": -Infinity}', ["body", "input"], "finite_number"),
        (b'{"input": [1e400]}', ["body", "input", 0], "finite_number"),
        (b'{"input": 1, "mode": "nope", "metadata": {"big": 99999999999999999999999}}', ["body", "metadata", "big"],
         "int_out_of_range"),
    ],
)  # fmt: skip
async def test_numbers_json_cannot_hold_are_422_naming_the_field(
    server: LightningStoreServer, body: bytes, loc: list[Any], kind: str
) -> None:
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"{server.endpoint}/v1/agl/rollouts", content=body)
    assert answer.status_code == 422, answer.text
    error = answer.json()["detail"][0]
    assert (error["loc"], error["type"]) == (loc, kind)
    assert (await InMemoryLightningStore.statistics(server.store))["total_rollouts"] == 0  # type: ignore[arg-type]


async def test_int64_edges_and_sequence_ids(server: LightningStoreServer) -> None:
    base = f"{server.endpoint}/v1/agl"
    async with httpx.AsyncClient() as http:
        fits = await http.post(f"{base}/rollouts", content=b'{"input": [9223372036854775807, -9223372036854775808]}')
        assert fits.status_code == 201
        assert fits.json()["input"] == [2**63 - 1, -(2**63)]
        rollout = fits.json()
        span = _span(2**63 - 1, rollout_id=rollout["rollout_id"], attempt_id=rollout["attempt"]["attempt_id"])
        too_far = await http.post(f"{base}/spans", json=span)
        assert too_far.status_code == 422
        assert too_far.json()["detail"][0]["loc"] == ["body", "sequence_id"]
        batch = await http.post(f"{base}/spans/batch", json={"spans": [{**span, "sequence_id": 1}, span]})
        assert batch.status_code == 422
        assert batch.json()["detail"][0]["loc"] == ["body", "spans", 1, "sequence_id"]
        edge = await http.post(f"{base}/spans", json={**span, "sequence_id": MAX_SEQUENCE_ID})
        assert edge.status_code == 201
        nxt = await http.post(f"{base}/spans/next", json={"rollout_id": span["rollout_id"], "attempt_id": "x"})
        assert nxt.json() == {"sequence_id": MAX_SEQUENCE_ID + 1}
        huge_limit = await http.get(f"{base}/rollouts", params={"limit": str(2**64)})
        assert huge_limit.status_code == 422 and huge_limit.json()["detail"][0]["loc"] == ["query", "limit"]


async def test_lists_longer_than_max_batch_items_are_422(limited: LightningStoreServer) -> None:
    base = f"{limited.endpoint}/v1/agl"
    async with httpx.AsyncClient() as http:
        six = [{"input": i} for i in range(6)]
        assert (await http.post(f"{base}/queues/rollouts/enqueue", json={"rollouts": six[:5]})).status_code == 201
        cases = [
            ("/queues/rollouts/enqueue", {"rollouts": six}, ["body", "rollouts"]),
            ("/spans/batch", {"spans": [_span(i, span_id=f"s{i}") for i in range(6)]}, ["body", "spans"]),
            (
                "/spans/next/batch",
                {"rollout_attempt_ids": [{"rollout_id": "r", "attempt_id": "a"}] * 6},
                ["body", "rollout_attempt_ids"],
            ),
            ("/waits/rollouts", {"rollout_ids": ["r"] * 6, "timeout": 0}, ["body", "rollout_ids"]),
            ("/rollouts/search", {"rollout_id_in": ["r"] * 6}, ["body", "rollout_id_in"]),
            ("/queues/rollouts/dequeue", {"limit": 6}, ["body", "limit"]),
            ("/resources", {f"p{i}": {"resource_type": "prompt_template", "template": "x"} for i in range(6)},
             ["body", "resources"]),
        ]  # fmt: skip
        for path, body, loc in cases:
            answer = await http.post(base + path, json=body)
            assert answer.status_code == 422, (path, answer.text)
            assert answer.json()["detail"][0]["loc"] == loc, path
            assert "max_batch_items" in answer.text


async def test_long_urls_are_414(limited: LightningStoreServer) -> None:
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"{limited.endpoint}/v1/agl/rollouts", params={"rollout_id_contains": "x" * 400})
        assert answer.status_code == 414
        assert "max_url_bytes" in answer.json()["detail"]
        assert (await http.get(f"{limited.endpoint}/v1/agl/rollouts?limit=1")).status_code == 200


async def test_validation_answers_are_bounded_and_do_not_echo_the_input(server: LightningStoreServer) -> None:
    bad_items = b",".join([b'{"rollout_id": 1, "attempt_id": ["' + b"x" * 500 + b'"]}'] * 4000)
    long_key = b'"' + b"k" * 5000 + b'"'
    bodies = {
        "/spans/batch": b'{"spans": [' + bad_items + b"]}",
        "/queues/rollouts/enqueue": b'{"rollouts": [' + b",".join([b'{"mode": "' + b"m" * 900 + b'"}'] * 4000) + b"]}",
        "/resources": b"{" + b",".join(b'"r%d": {"resource_type": "llm"}' % i for i in range(20000)) + b"}",
        "/rollouts": b'{"input": 1, "metadata": {' + long_key + b': 1}, "config": {"retry_condition": ['
        + b",".join([b'"' + b"z" * 300 + b'"'] * 3000) + b"]}}",
    }  # fmt: skip
    async with httpx.AsyncClient(timeout=30) as http:
        for path, body in bodies.items():
            answer = await http.post(f"{server.endpoint}/v1/agl{path}", content=body)
            assert answer.status_code == 422, (path, answer.text[:300])
            assert len(answer.content) <= 64 * 1024, path
            detail = answer.json()["detail"]
            assert 1 <= len(detail) <= RequestLimits().max_validation_errors + 1
            for error in detail:
                assert len(repr(error.get("input", ""))) < 200 and all(len(str(p)) <= 80 for p in error["loc"])


async def test_unauthenticated_requests_are_answered_before_the_body_is_read() -> None:
    app = StoreApp(InMemoryLightningStore(thread_safe=True), token="s3cret", metrics=False)
    reads = 0

    async def receive() -> dict[str, Any]:  # a client that declared 50 MB and never sends them
        nonlocal reads
        reads += 1
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/agl/queues/rollouts/enqueue",
        "raw_path": b"/v1/agl/queues/rollouts/enqueue",
        "query_string": b"",
        "headers": [(b"content-length", str(50 * 1024 * 1024).encode())],
    }
    start = time.perf_counter()
    await asyncio.wait_for(app(scope, receive, send), timeout=2)
    assert time.perf_counter() - start < 0.2
    assert reads == 0 and sent[0]["status"] == 401


async def test_refused_requests_do_not_take_an_idempotency_key(server: LightningStoreServer) -> None:
    url = f"{server.endpoint}/v1/agl/queues/rollouts/enqueue"
    headers = {"Idempotency-Key": "key-1"}
    async with httpx.AsyncClient() as http:
        assert (await http.post(url, json={"rollouts": [{"mode": "x"}]}, headers=headers)).status_code == 422
        fixed = await http.post(url, json={"rollouts": [{"input": 1}]}, headers=headers)
        assert fixed.status_code == 201  # not a 409: the refused body was not kept under the key


async def test_drain_watchers_are_capped_expire_and_have_short_ids(limited: LightningStoreServer) -> None:
    url = f"{limited.endpoint}/v1/agl/health"
    app = limited._app
    assert app is not None
    async with httpx.AsyncClient() as http:
        for name in ("w1", "w2", "w3", "w4", "w2"):
            assert (await http.get(url, params={"watcher": name})).status_code == 200
        assert list(app.drain_watchers) == ["w3", "w4", "w2"]  # at most 3, least recently seen forgotten
        long_id = await http.get(url, params={"watcher": "w" * 270})  # within max_url_bytes (300)
        assert long_id.status_code == 400 and "max_watcher_id_bytes" in long_id.text
        await asyncio.sleep(0.3)
        assert (await http.get(url, params={"watcher": "w5"})).status_code == 200
        assert list(app.drain_watchers) == ["w5"]  # the others were silent for longer than watcher_ttl_seconds


def test_agl_store_flags_set_the_limits() -> None:
    from agl.cli.store import build_parser
    from agl.cli.store_limits import limits_from_args

    parser = build_parser()
    args = parser.parse_args(["--max-json-depth", "9", "--max-batch-items", "7", "--max-body-size", "1MiB"])
    max_body, limits = limits_from_args(parser, args)
    assert (max_body, limits.max_json_depth, limits.max_batch_items) == (1024 * 1024, 9, 7)
    assert limits.max_url_bytes == RequestLimits().max_url_bytes
    with pytest.raises(SystemExit):
        limits_from_args(parser, parser.parse_args(["--max-json-depth", "300"]))


@pytest.mark.parametrize(
    ("body", "refused"),
    [
        (b"99999999999999999999", True),
        (b'  -99999999999999999999', True),
        (b'{"a": [1, 18446744073709551616]}', True),
        (b'{"a":' + b" " * 100 + b"-99999999999999999999}", True),
        (b'{"a":\n\t12345678901234567890}', True),
        (b'{"t": "' + b"0" * 40 + b'", "n": 99999999999999999999}', True),
        (b'{"trace_id": "' + b"0" * 31 + b'1", "span_id": "0000000000000007"}', False),
        (b'{"a": 9223372036854775807, "b": -9223372036854775808}', False),
        (b'{"n": 1.99999999999999999999}', False),
    ],
)  # fmt: skip
def test_long_digit_runs_are_numbers_only_where_a_number_can_start(body: bytes, refused: bool) -> None:
    """Hex ids full of digits skip the slow exact check; a real 64-bit overflow anywhere is still found."""
    from agl.store.http.limits import check_json

    assert (check_json(body, RequestLimits()) is not None) is refused


@pytest.mark.parametrize(
    ("body", "refused"),
    [
        (b"[1e400]", True),
        (b"[1E+400]", True),
        (b"[-2.5e0400]", True),
        (b'{"a": 0.5e99999999999999999999}', True),
        (b"[999999999999999999.9e99]", False),
        (b"[1.7e308, 1e-400, 1E99, 2e+99]", False),
        (b'{"span_id": "5e1f2e9a7e3c0d4b", "trace_id": "e123e4567e89e1000000000000000000"}', False),
    ],
)  # fmt: skip
def test_only_an_exponent_of_three_digits_can_overflow_a_double(body: bytes, refused: bool) -> None:
    """Without 19 integer digits, a number overflows a double only with a 3-digit exponent; hex ids never refuse."""
    from agl.store.http.limits import check_json

    assert (check_json(body, RequestLimits()) is not None) is refused
