"""CORS (`cors_allow_origins`, `agl store --cors-origin`) on a real server: preflights, answers, other origins."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agl.cli.store import build_parser
from agl.store.http.cors import CorsPolicy
from agl.store.memory import InMemoryLightningStore
from agl.store.server import LightningStoreServer

ALLOWED = "https://lab.example:8443"


def _serve(**kwargs: Any) -> LightningStoreServer:
    server = LightningStoreServer(InMemoryLightningStore(thread_safe=True), host="127.0.0.1", port=0, **kwargs)
    server.start()
    return server


@pytest.fixture
def cors_server() -> Iterator[LightningStoreServer]:
    server = _serve(cors_allow_origins=[ALLOWED, " ", "http://other.example/"], token="t0k")
    try:
        yield server
    finally:
        server.stop()


def test_preflight_from_an_allowed_origin_needs_no_token(cors_server: LightningStoreServer) -> None:
    answer = httpx.options(
        f"{cors_server.endpoint}/v1/agl/rollouts/search",
        headers={"origin": ALLOWED, "access-control-request-method": "POST",
                 "access-control-request-headers": "authorization, content-type"},
    )  # fmt: skip
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in answer.headers["access-control-allow-methods"]
    assert answer.headers["access-control-allow-headers"] == "authorization, content-type"
    assert answer.headers["access-control-allow-credentials"] == "true"


def test_preflight_from_another_origin_is_refused(cors_server: LightningStoreServer) -> None:
    answer = httpx.options(
        f"{cors_server.endpoint}/v1/agl/rollouts",
        headers={"origin": "https://evil.example", "access-control-request-method": "GET"},
    )
    assert answer.status_code == 400 and "access-control-allow-origin" not in answer.headers
    assert "--cors-origin" in answer.json()["detail"]


def test_answers_carry_cors_headers_only_for_allowed_origins(cors_server: LightningStoreServer) -> None:
    url = f"{cors_server.endpoint}/v1/agl/rollouts"
    auth = {"authorization": "Bearer t0k"}
    allowed = httpx.get(url, headers={**auth, "origin": "http://other.example"})  # listed with a trailing slash
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "http://other.example"
    other = httpx.get(url, headers={**auth, "origin": "https://evil.example"})
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers
    plain = httpx.get(url, headers=auth)
    assert "access-control-allow-origin" not in plain.headers
    refused = httpx.get(url, headers={"origin": ALLOWED})  # the token is still required
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ALLOWED


def test_any_origin_and_no_cors() -> None:
    server = _serve(cors_allow_origins="*")
    try:
        answer = httpx.get(f"{server.endpoint}/v1/agl/health", headers={"origin": "https://anywhere.example"})
        assert answer.headers["access-control-allow-origin"] == "https://anywhere.example"
    finally:
        server.stop()
    server = _serve()
    try:
        answer = httpx.options(
            f"{server.endpoint}/v1/agl/rollouts",
            headers={"origin": ALLOWED, "access-control-request-method": "GET"},
        )
        assert answer.status_code == 405 and "access-control-allow-origin" not in answer.headers
    finally:
        server.stop()


def test_cors_setting_is_checked() -> None:
    assert CorsPolicy.from_setting(None) is None
    assert CorsPolicy.from_setting(["", "  "]) is None
    policy = CorsPolicy.from_setting(["https://a.example", "*"])
    assert policy is not None and policy.any_origin
    with pytest.raises(ValueError, match="cors_allow_origins"):
        LightningStoreServer(InMemoryLightningStore(thread_safe=True), port=0, cors_allow_origins=[42])  # type: ignore[list-item]


def test_agl_store_takes_agent_lightning_flags(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["--cors-origin", ALLOWED, "--cors-origin", "*", "--tracker", "prometheus",
                                      "--n-workers", "1"])  # fmt: skip
    assert args.cors_origin == [ALLOWED, "*"] and args.tracker == ["prometheus"] and args.n_workers == 1
    from agl.cli.store import main

    for argv, needle in [
        (["--backend", "mongo"], "MongoDB"),
        (["--n-workers", "4"], "one process"),
        (["--tracker", "console"], "--tracker console"),
    ]:
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
        assert needle in capsys.readouterr().err
