"""HEAD works wherever GET does: same status and headers, no body (real server on 127.0.0.1, with a token)."""

from __future__ import annotations

import http.client
from collections.abc import AsyncIterator

import pytest

from agl.store.client import LightningStoreClient
from agl.store.memory import InMemoryLightningStore
from agl.store.server import LightningStoreServer
from tests.store.helpers import make_span, sample_resources

TOKEN = "head-token"


@pytest.fixture
async def filled() -> AsyncIterator[tuple[LightningStoreServer, dict[str, str]]]:
    server = LightningStoreServer(InMemoryLightningStore(thread_safe=True), host="127.0.0.1", port=0, token=TOKEN)
    server.start()  # its own thread: the test asks it with blocking http.client calls
    client = LightningStoreClient(server.endpoint, token=TOKEN)
    try:
        rollout = await client.start_rollout({"q": 1})
        await client.add_span(make_span(rollout.rollout_id, rollout.attempt.attempt_id))
        resources = await client.add_resources(sample_resources())
        await client.update_worker("w-1")
        ids = {"rid": rollout.rollout_id, "resid": resources.resources_id, "wid": "w-1"}
        yield server, ids
    finally:
        await client.close()
        server.stop()


_PATHS = [
    "/v1/agl/health",
    "/v1/agl/health?watcher=head-watcher",
    "/v1/agl/rollouts",
    "/v1/agl/rollouts?status_in=running",
    "/v1/agl/rollouts/{rid}",
    "/v1/agl/rollouts/{rid}/attempts",
    "/v1/agl/rollouts/{rid}/attempts/latest",
    "/v1/agl/resources",
    "/v1/agl/resources/latest",
    "/v1/agl/resources/{resid}",
    "/v1/agl/spans?rollout_id={rid}",
    "/v1/agl/workers",
    "/v1/agl/workers/{wid}",
    "/v1/agl/statistics",
    "/v1/agl/dashboard/rollouts",
    "/v1/agl/dashboard/rollouts/{rid}",
    "/v1/agl/dashboard/workers",
    "/v1/agl/dashboard/overview",
    "/v1/agl/openapi.json",
    "/metrics",
    "/v1/prometheus/",
    "/",
    "/dashboard/app.js",
    "/v1/agl/rollouts/ro-missing",  # errors too: the same 404 head
    "/v1/agl/no-such-route",
    "/dashboard/no-such-file.js",
]
# Answers that carry the time or counters that move between the two requests: same headers but the length.
_MOVING = {
    "/v1/agl/statistics",
    "/v1/agl/dashboard/overview",
    "/v1/agl/dashboard/workers",
    "/metrics",
    "/v1/prometheus/",
}


def _ask(port: int, method: str, path: str, token: str | None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Accept-Encoding": "gzip"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("token", [TOKEN, None], ids=["with-token", "without-token"])
async def test_head_answers_as_get_without_a_body(
    filled: tuple[LightningStoreServer, dict[str, str]], token: str | None
) -> None:
    server, ids = filled
    for template in _PATHS:
        path = template.format(**ids)
        get = _ask(server.port, "GET", path, token)
        head = _ask(server.port, "HEAD", path, token)
        assert head[0] == get[0], (path, head[0], get[0])
        assert head[2] == b"", path
        if template in _MOVING:
            assert {k: v for k, v in head[1].items() if k != "content-length"} == {
                k: v for k, v in get[1].items() if k != "content-length"
            }, path
        else:
            assert head[1] == get[1], path
            assert int(head[1]["content-length"]) == len(get[2]), path
    # Spot checks that the list covers what it means to: data behind the token, health and files public.
    assert _ask(server.port, "HEAD", "/v1/agl/statistics", None)[0] == 401
    assert _ask(server.port, "HEAD", "/v1/agl/health", None)[0] == 200
    assert _ask(server.port, "HEAD", f"/v1/agl/rollouts/{ids['rid']}", TOKEN)[0] == 200
    assert _ask(server.port, "HEAD", "/v1/agl/rollouts/ro-missing", TOKEN)[0] == 404


async def test_every_get_route_has_a_head_route(filled: tuple[LightningStoreServer, dict[str, str]]) -> None:
    server, _ = filled
    app = server._app  # the route table itself: a GET route added later gets its HEAD twin too
    assert app is not None
    routes = [*app._static.values(), *(r for rs in app._dynamic.values() for r in rs)]
    gets = {r.template for r in routes if r.method == "GET"}
    heads = {r.template for r in routes if r.method == "HEAD"}
    assert gets and gets == heads
    covered = {t.split("?")[0] for t in _PATHS}
    for template in gets:  # and each is exercised above
        shape = template.replace("{rollout_id}", "{rid}").replace("{resources_id}", "{resid}")
        shape = shape.replace("{worker_id}", "{wid}")
        assert shape in covered, template


async def test_post_routes_still_refuse_head(filled: tuple[LightningStoreServer, dict[str, str]]) -> None:
    server, _ = filled
    status, _, body = _ask(server.port, "HEAD", "/v1/agl/queues/rollouts/dequeue", TOKEN)
    assert status == 405 and body == b""
