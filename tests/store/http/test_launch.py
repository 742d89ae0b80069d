"""`LightningStoreServer` called as Agent Lightning 0.3's: its parameter order, launch modes and launcher args."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import pytest

from agl.store.client import LightningStoreClient
from agl.store.memory import InMemoryLightningStore
from agl.store.server import DEFAULT_PORT, LightningStoreServer


@dataclass
class LauncherArgs:
    """The fields of Agent Lightning 0.3's `PythonServerLauncherArgs`, with its defaults."""

    port: int | None = None
    host: str | None = None
    access_host: str | None = None
    launch_mode: str = "asyncio"
    n_workers: int = 1
    healthcheck_url: str | None = None
    log_level: int = logging.INFO
    access_log: bool = False
    startup_timeout: float = 60.0
    kill_unhealthy_server: bool = True
    thread_join_timeout: float = 10.0
    process_join_timeout: float = 10.0
    timeout_keep_alive: int = 30


def _store() -> InMemoryLightningStore:
    return InMemoryLightningStore(thread_safe=True)


async def _round_trip(endpoint: str) -> None:
    client = LightningStoreClient(endpoint, retry_delays=(0.05,), health_retry_delays=(0.05,))
    try:
        rollout = await client.enqueue_rollout(input={"q": 1})
        assert (await client.get_rollout_by_id(rollout.rollout_id)) is not None
    finally:
        await client.close()


async def test_upstream_positional_order() -> None:
    tracker = object()
    server = LightningStoreServer(_store(), "127.0.0.1", 0, ["https://lab.example"], "thread", None, 1, tracker)
    assert server.cors_allow_origins == ["https://lab.example"] and server.tracker is tracker
    assert server.launch_mode == "thread" and server.n_workers == 1 and server.token is None
    await server.start()  # awaitable, as upstream's start() is
    try:
        await _round_trip(server.endpoint)
    finally:
        await server.stop()
    assert not server.is_running


def test_defaults_bind_this_machine_on_4747() -> None:
    server = LightningStoreServer(_store())
    assert (server.host, server.port, server.launch_mode) == ("127.0.0.1", DEFAULT_PORT, "thread")
    assert server.endpoint == f"http://127.0.0.1:{DEFAULT_PORT}"


async def test_asyncio_mode_serves_on_the_running_loop() -> None:
    server = LightningStoreServer(_store(), "127.0.0.1", 0, launch_mode="asyncio")
    await server.start()
    try:
        assert server.is_running
        assert f"agl-store-server-{server.port}" not in {t.name for t in threading.enumerate()}
        await _round_trip(server.endpoint)
    finally:
        await server.stop()
    assert not server.is_running
    async with LightningStoreServer(_store(), "127.0.0.1", 0, launch_mode="asyncio") as served:
        await _round_trip(served.endpoint)
    assert not served.is_running


def test_asyncio_mode_needs_a_running_loop() -> None:
    server = LightningStoreServer(_store(), "127.0.0.1", 0, launch_mode="asyncio")
    with pytest.raises(RuntimeError, match=r"await server\.start\(\)"):
        server.start()
    with pytest.raises(RuntimeError, match="async with"):
        server.__enter__()


async def test_launcher_args_are_honoured() -> None:
    args = LauncherArgs(host="127.0.0.1", access_host="localhost", launch_mode="thread", timeout_keep_alive=5)
    server = LightningStoreServer(_store(), launcher_args=args)
    assert server.log_level == "info" and server.launcher_args is args
    await server.start()
    try:
        assert server.port not in (0, DEFAULT_PORT)  # no port given: a free one, as upstream's launcher picks
        assert server.endpoint == f"http://localhost:{server.port}"
        await _round_trip(server.endpoint)
    finally:
        await server.stop()
    # Without a mode, upstream's launcher args mean "asyncio".
    assert LightningStoreServer(_store(), launcher_args={"host": "127.0.0.1"}).launch_mode == "asyncio"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"launch_mode": "mp"}, "needs a zero-copy store"),
        ({"launch_mode": "process"}, "launch_mode must be 'thread', 'asyncio' or 'mp'"),
        ({"n_workers": 4}, "n_workers=4: AGL serves a store from one process"),
        ({"n_workers": 0}, "n_workers must be a positive integer"),
        ({"launcher_args": LauncherArgs(), "port": 1234}, "cannot be given together with launcher_args"),
        ({"launcher_args": {"port": 0, "workers": 2}}, "unknown field"),
        ({"launcher_args": LauncherArgs(access_log=True)}, "keeps no access log"),
        ({"launcher_args": LauncherArgs(n_workers=2)}, "n_workers=2"),
        ({"launcher_args": 42}, "launcher_args must be a mapping"),
    ],
)
def test_what_cannot_be_honoured_is_refused_naming_the_parameter(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LightningStoreServer(_store(), **kwargs)


def test_mp_mode_is_refused_for_a_zero_copy_store_too() -> None:
    client = LightningStoreClient("http://127.0.0.1:9")
    with pytest.raises(ValueError, match=r"launch_mode='mp' is not provided by AGL.*agl store"):
        LightningStoreServer(client, launch_mode="mp")
