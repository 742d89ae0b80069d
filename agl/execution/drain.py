"""The draining signal: how runners on other machines learn that training is over.

The algorithm side calls `request_drain(server)` when it is done; from then on the store server answers
`GET /v1/agl/health` with `{"status": "draining"}`. A `DrainWatcher` in each runner-only process polls that route
and sets the process's stop event when it sees the answer, so every runner finishes its rollout and exits cleanly,
exactly as local runners do when the shared stop event is set. With several servers of one database, a runner
stops when any server it reaches says draining (the run is ending); a server it cannot reach says nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

from agl.execution._loop import run_bundle
from agl.execution.events import ExecutionEvent

__all__ = ["DRAINING_STATUS", "DrainWatcher", "health_url", "probe_status", "request_drain"]

logger = logging.getLogger(__name__)

DRAINING_STATUS = "draining"
"""The `status` the health route reports once the algorithm side has begun draining."""


IN_FLIGHT_STATUSES: list[Any] = ["preparing", "running"]
"""Rollout statuses a drain waits on: claimed by a runner and not finished."""


def in_flight_rollouts(store: Any) -> list[str]:
    """The ids of `store`'s rollouts a runner holds (preparing or running); empty if the store cannot say in 5 s."""

    async def query() -> list[str]:
        result = await asyncio.wait_for(store.query_rollouts(status_in=IN_FLIGHT_STATUSES), 5.0)
        return [rollout.rollout_id for rollout in result]

    try:
        return run_bundle(query, name="in-flight query", cleanup_timeout=1.0) or []
    except Exception as exc:
        logger.debug("could not list in-flight rollouts: %r", exc)
        return []


def health_url(server_address: str) -> str:
    """The health route of the store server at `server_address` (`http://host:port`)."""
    return server_address.rstrip("/") + "/v1/agl/health"


def request_drain(store: Any) -> bool:
    """Tell the runners attached to `store` over HTTP to finish; True if the store supports draining.

    Calls `store.begin_drain()` when the store (a `LightningStoreServer`) has it; any other store has no remote
    runners to tell.
    """
    begin = getattr(store, "begin_drain", None)
    if not callable(begin):
        return False
    try:
        begin()
    except Exception:
        logger.warning("could not put the store server into draining mode", exc_info=True)
        return False
    return True


_opener: Any = None


def probe_status(url: str, timeout: float = 2.0) -> str | None:
    """GET the health route `url` once and return its `status`, or None if the server cannot be reached."""
    global _opener
    import urllib.error
    import urllib.request

    if _opener is None:
        _opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # straight to the store server
    try:
        try:
            with _opener.open(url, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:  # e.g. 503 {"status": "draining"}: the body still counts
            with error:
                raw = error.read()
        body = json.loads(raw or b"{}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        logger.debug("store server health %s: unreachable: %r", url, exc)
        return None
    if not isinstance(body, dict):
        return None
    status = body.get("status")
    return str(status) if status is not None else "ok"


class DrainWatcher:
    """A daemon thread that sets `event` once the store server at `server_address` (or any of several: a list, or
    URLs separated by commas) reports draining.

    It polls every `interval` seconds; failures to reach the server are logged at debug level and retried (the
    server may not be up yet, or may already be gone: that alone is not a stop). `stop()` ends the thread.
    """

    def __init__(
        self, server_address: str | Sequence[str], event: ExecutionEvent, interval: float = 0.5, timeout: float = 2.0
    ) -> None:
        from agl.store.http.servers import split_server_addresses

        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval!r}")
        # The id lets each server tell when every watcher has heard that it drains, before it stops.
        watcher = os.urandom(8).hex()
        self.urls = [f"{health_url(address)}?watcher={watcher}" for address in split_server_addresses(server_address)]
        """The health route of every server, with this watcher's id."""
        self.url = self.urls[0]
        """The (first) server's health route, with this watcher's id."""
        self.event = event
        self.interval = interval
        self.timeout = timeout
        self.drained = False
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> DrainWatcher:
        """Start polling in a daemon thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="agl-drain-watcher", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling and wait briefly for the thread."""
        self._halt.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.timeout + 1.0)

    def probe(self) -> str | None:
        """Ask the servers once for their status: `"draining"` if one says so, else the first answer (`"ok"`, …);
        None if none can be reached."""
        answer: str | None = None
        for url in self.urls:
            status = probe_status(url, self.timeout)
            if status == DRAINING_STATUS:
                return status
            answer = answer or status
        return answer

    def poll_once(self) -> bool:
        """Ask the server once; True if it reports draining."""
        return self.probe() == DRAINING_STATUS

    def _run(self) -> None:
        while not self._halt.is_set() and not self.event.is_set():
            if self.poll_once():
                self.drained = True
                logger.info("the store server is draining: stopping the runners")
                self.event.set()
                return
            self._halt.wait(self.interval)

    def __enter__(self) -> DrainWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
