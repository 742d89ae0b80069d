"""Fixtures for the execution tests: a clean AGL_* environment and a free port."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

AGL_VARS = ("AGL_CURRENT_ROLE", "AGL_SERVER_HOST", "AGL_SERVER_PORT", "AGL_MANAGED_STORE", "AGL_METRICS_PORT")


@pytest.fixture(autouse=True)
def clean_agl_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in AGL_VARS:
        monkeypatch.delenv(name, raising=False)
    yield


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
