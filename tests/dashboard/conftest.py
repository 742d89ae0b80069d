"""Fixtures for the dashboard's browser tests: Debian's Chromium driven by Playwright, and a filled store server.

The browser is the system's `/usr/bin/chromium` (never a Playwright download); without it, or without the
`playwright` package, the browser tests are skipped with a message saying what to install.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agl.store.client import LightningStoreClient
from agl.store.memory import InMemoryLightningStore
from agl.store.server import LightningStoreServer
from tests.dashboard.fill import Filled, fill

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def launch_chromium(playwright: Any) -> Any:
    """Headless Debian Chromium, as every dashboard test and script uses it."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the whole module; closed (and Playwright stopped) even when a test fails."""
    # CI sets AGL_REQUIRE_BROWSER=1: there a missing browser fails the tests instead of skipping them.
    missing = pytest.fail if os.environ.get("AGL_REQUIRE_BROWSER") == "1" else pytest.skip
    if not os.path.exists(CHROMIUM):
        missing(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` to run the browser tests")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the playwright package is missing: pip install -e '.[dev]'")
    manager = sync_playwright().start()
    try:
        chromium = launch_chromium(manager)
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        manager.stop()


OLD_VERSION = "prompt-v1"
OLD_SECONDS = 2 * 3600.0
"""The rollouts of OLD_VERSION are written as if two hours ago (the time filters must leave them out)."""


class ShiftedClock:
    """The wall clock moved by `offset` seconds (the store's clock while the fixture fills it)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


async def _fill_over_http(endpoint: str, clock: ShiftedClock) -> Filled:
    def before_version(resources_id: str) -> None:
        clock.offset = -OLD_SECONDS if resources_id == OLD_VERSION else 0.0

    client = LightningStoreClient(endpoint)
    try:
        return await fill(client, before_version)
    finally:
        await client.close()


@pytest.fixture(scope="module")
def filled_server() -> Iterator[tuple[LightningStoreServer, Filled]]:
    """A store server on a free loopback port, filled over HTTP by `tests.dashboard.fill`; stopped afterwards."""
    clock = ShiftedClock()
    server = LightningStoreServer(InMemoryLightningStore(thread_safe=True, clock=clock), host="127.0.0.1", port=0)
    server.start()
    try:
        # In a thread of its own: Playwright's sync API keeps an event loop running on the test thread.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            filled = pool.submit(asyncio.run, _fill_over_http(server.endpoint, clock)).result()
        yield server, filled
    finally:
        server.stop()
