"""Fixtures for the execution tests: a clean AGL_* environment, a free port, and a real local Ray cluster."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

AGL_VARS = ("AGL_CURRENT_ROLE", "AGL_SERVER_HOST", "AGL_SERVER_PORT", "AGL_MANAGED_STORE", "AGL_METRICS_PORT")

RAY_TEST_RESOURCE = "agl_test_slot"
"""A custom resource the test cluster has two of, so tests can ask runners to hold one."""


@pytest.fixture(autouse=True)
def clean_agl_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in AGL_VARS:
        monkeypatch.delenv(name, raising=False)
    yield


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_ray() -> Any:
    """The `ray` module; the test skips when it is not installed, and fails instead when AGL_REQUIRE_RAY=1 (CI)."""
    try:
        import ray
    except ImportError:
        if os.environ.get("AGL_REQUIRE_RAY") == "1":
            pytest.fail("ray is not installed but AGL_REQUIRE_RAY=1: install it with pip install '.[ray]'")
        pytest.skip("ray is not installed (pip install '.[ray]'); the Ray strategy tests need a real Ray cluster")
    return ray


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[dict[str, Any]]:
    """A real local Ray cluster with 2 CPUs shared by a module's tests (starting one takes seconds); shut down after.

    Module scope: the cluster's processes do not linger while the rest of the test session runs.

    Yields `ray.init`'s address info (`address` is the GCS address another driver can connect to).
    """
    ray = require_ray()
    if ray.is_initialized():  # pragma: no cover - a test left one running
        ray.shutdown()
    # The workers import the test modules: make sure they find this checkout however pytest was started.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.environ.get("PYTHONPATH", "")
    if root not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, path) if p)
    context = ray.init(
        address="local", num_cpus=2, resources={RAY_TEST_RESOURCE: 2}, include_dashboard=False,
        logging_level="WARNING",
    )  # fmt: skip
    try:
        yield dict(context.address_info)
    finally:
        ray.shutdown()
