"""`agl.store.exposure`: the bind rule where the server binds (beyond loopback a token is needed unless insecure) and
the token sources."""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from agl.execution.client_server import ClientServerExecutionStrategy
from agl.store.exposure import InsecureBindError, TokenError, is_loopback, read_token_file, resolve_token
from agl.store.memory import InMemoryLightningStore
from agl.store.server import LightningStoreServer
from tests.execution import bundles


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGL_STORE_TOKEN", raising=False)
    monkeypatch.delenv("AGL_STORE_INSECURE", raising=False)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("::ffff:127.0.0.1", True), ("0.0.0.0", False), ("::", False), ("", False), ("10.1.2.3", False),
     ("192.168.0.1", False), ("no-such-host.invalid", False)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def _status(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_all_interfaces_without_a_token_is_refused_and_nothing_listens() -> None:
    server = LightningStoreServer(InMemoryLightningStore(thread_safe=True), host="0.0.0.0", port=0)
    with pytest.raises(InsecureBindError, match="AGL_STORE_TOKEN=<token> or pass --token-file FILE"):
        server.start()
    assert not server.is_running
    with pytest.raises(InsecureBindError):  # a refused start can be retried and is refused again
        server.start()


def test_all_interfaces_with_a_token_serves_and_requires_it() -> None:
    server = LightningStoreServer(InMemoryLightningStore(thread_safe=True), host="0.0.0.0", port=0, token="t0k")
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}/v1/agl"
        assert _status(base + "/statistics") == 401
        assert _status(base + "/statistics", "t0k") == 200
    finally:
        server.stop()


def test_insecure_from_the_environment_serves_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AGL_STORE_INSECURE", "1")
    server = LightningStoreServer(InMemoryLightningStore(thread_safe=True), host="0.0.0.0", port=0)
    with caplog.at_level(logging.WARNING, logger="agl.store.exposure"):
        server.start()
    try:
        assert _status(f"http://127.0.0.1:{server.port}/v1/agl/statistics") == 200
        assert any("WITHOUT a token" in r.getMessage() for r in caplog.records)
    finally:
        server.stop()


def test_loopback_needs_no_token() -> None:
    server = LightningStoreServer(InMemoryLightningStore(thread_safe=True), port=0)  # default host: loopback
    server.start()
    try:
        assert server.host == "127.0.0.1"
        assert _status(f"http://127.0.0.1:{server.port}/v1/agl/statistics") == 200
    finally:
        server.stop()


def test_the_client_server_strategy_follows_the_same_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    strategy = ClientServerExecutionStrategy(role="algorithm", server_host="0.0.0.0", server_port=0)
    with pytest.raises(InsecureBindError, match=r"refusing to serve the store on 0\.0\.0\.0"):
        strategy.execute(bundles.algorithm_returns, bundles.runner_claims, InMemoryLightningStore())
    monkeypatch.setenv("AGL_STORE_TOKEN", "strategy-token")  # the runners it starts read the same variable
    ClientServerExecutionStrategy(role="algorithm", server_host="0.0.0.0", server_port=0).execute(
        bundles.algorithm_returns, bundles.runner_claims, InMemoryLightningStore()
    )


# -- token sources ------------------------------------------------------------------------------------------------


def _token_file(tmp_path: Path, text: str, mode: int = 0o600) -> str:
    path = tmp_path / "token"
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def test_token_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _token_file(tmp_path, "  from-file \n")
    monkeypatch.setenv("AGL_STORE_TOKEN", "from-env")
    assert resolve_token("from-argv", None) == ("from-argv", "--token")
    assert resolve_token(None, path) == ("from-file", "--token-file")
    assert resolve_token(None, None) == ("from-env", "AGL_STORE_TOKEN")
    monkeypatch.delenv("AGL_STORE_TOKEN")
    assert resolve_token(None, None) == (None, None)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="file modes as a non-root POSIX user")
def test_an_unreadable_token_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TokenError, match="cannot read the token file"):
        read_token_file(_token_file(tmp_path, "x", 0o000))


@pytest.mark.parametrize(
    ("text", "mode", "message"),
    [("", 0o600, "is empty"), (" \n", 0o600, "is empty"), ("tok", 0o644, "chmod 600"), ("tok", 0o602, "chmod 600")],
)
def test_bad_token_files_are_refused(tmp_path: Path, text: str, mode: int, message: str) -> None:
    with pytest.raises(TokenError, match=message):
        read_token_file(_token_file(tmp_path, text, mode))


def test_missing_token_file_and_empty_token_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TokenError, match="cannot read the token file"):
        read_token_file(str(tmp_path / "missing"))
    with pytest.raises(TokenError, match="--token is empty"):
        resolve_token(" ", None)
    assert read_token_file(_token_file(tmp_path, "tok\n", 0o640)) == "tok"  # a group may read it
