"""The store servers one client talks to: each server's request heads and connection pools, which server takes the
next call, and which are left out for a while after failing.

Several servers may serve one database (SQLite file, PostgreSQL); a client then spreads its calls over them in
turn. A server that cannot be reached (connection refused or reset, no answer in time) is marked down: calls skip
it and go to the others. After `probe_seconds` (doubled after each further failure, at most `MAX_PROBE_SECONDS`)
one call is sent to it again; if that call succeeds the server is back in turn.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from agl.store.http.transport import ConnectionPool, parse_server_address

__all__ = ["MAX_PROBE_SECONDS", "ServerSet", "StoreEndpoint", "split_server_addresses"]

logger = logging.getLogger("agl.store.client")

MAX_PROBE_SECONDS = 30.0
"""The longest a failed server is left out before a call tries it again."""


def split_server_addresses(value: str | Sequence[str]) -> tuple[str, ...]:
    """The server base URLs in `value`: one URL, URLs separated by commas, or a list of either (ValueError when
    empty, malformed or listing a server twice)."""
    if isinstance(value, str):
        parts = value.split(",")
    elif isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        parts = [p for v in value for p in v.split(",")]
    else:
        raise ValueError(f"server_address must be a URL, comma-separated URLs or a list of URLs, got {value!r}")
    addresses = tuple(p.strip().rstrip("/") for p in parts)
    if not addresses or any(not a for a in addresses):
        raise ValueError(
            f"server_address has an empty entry: {value!r}; give URLs like http://10.0.0.5:4747, separated by commas"
        )
    for address in addresses:
        parse_server_address(address)  # raises ValueError naming the bad one
    seen: set[str] = set()
    for address in addresses:
        if address in seen:
            raise ValueError(f"server_address lists {address} twice: {value!r}")
        seen.add(address)
    return addresses


class StoreEndpoint:
    """One store server: its address, the request heads sent to it, its pools (one per event loop), and whether it
    is down."""

    def __init__(self, address: str, extra_headers: bytes) -> None:
        _, host, port, tls, prefix = parse_server_address(address)
        self.address = address
        """The server's base URL as given, without a trailing slash."""
        self.host = host
        self.port = port
        self.tls = tls
        self.prefix = prefix
        default_port = 443 if tls else 80
        host_header = (f"[{host}]" if ":" in host else host) + (f":{port}" if port != default_port else "")
        self._static = f"host: {host_header}\r\n".encode("latin-1") + extra_headers
        self._heads: dict[tuple[str, str, bool], bytes] = {}
        self._lock = threading.Lock()
        self._pools: dict[int, tuple[asyncio.AbstractEventLoop, ConnectionPool]] = {}
        self._last_pool: ConnectionPool | None = None  # the pool of the loop that called last: no lookup per call
        self.down_until = 0.0
        """0 while the server is up; else when (monotonic clock) a call may try it again."""
        self.failures = 0
        """Failures in a row since the server last answered."""

    def head(self, method: str, target: str, minimal: bool) -> bytes:
        """The request line and the headers every request to `target` (a path under the server's prefix)
        carries; made once per target."""
        heads = self._heads
        head = heads.get((method, target, minimal))
        if head is None:
            line = f"{method} {self.prefix}{target} HTTP/1.1\r\n".encode("latin-1")
            head = line + self._static + (b"prefer: return=minimal\r\n" if minimal else b"")
            if len(heads) >= 256:  # paths with ids come and go; the hot static ones are re-added at once
                heads.clear()
            heads[(method, target, minimal)] = head
        return head

    def pool(self, connect_timeout: float, max_connections: int) -> ConnectionPool:
        """The connection pool of the running event loop (made on first use)."""
        pool = self._last_pool
        # The last pool's loop, running and made in this thread, is this thread's running loop: no need to ask for
        # it (`asyncio.get_running_loop()` costs a getpid(2) system call per call on Python 3.11).
        if pool is not None and pool.thread == threading.get_ident() and pool.loop.is_running() and not pool.closed:
            return pool
        loop = asyncio.get_running_loop()
        if pool is not None and pool.loop is loop and not pool.closed:
            return pool
        entry = self._pools.get(id(loop))
        if entry is not None and entry[0] is loop and not entry[1].closed:
            self._last_pool = entry[1]
            return entry[1]
        with self._lock:
            for key, (other, _) in list(self._pools.items()):
                if other.is_closed():
                    del self._pools[key]
            pool = ConnectionPool(
                self.host, self.port, tls=self.tls, connect_timeout=connect_timeout, max_connections=max_connections
            )
            self._pools[id(loop)] = (loop, pool)
            self._last_pool = pool
            return pool

    def take_pools(self) -> list[tuple[asyncio.AbstractEventLoop, ConnectionPool]]:
        """Forget every pool and return them (with their loops) for the caller to close."""
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
            self._last_pool = None
        return pools


class ServerSet:
    """The servers of one client, in the order given: which one takes the next call, and which are down."""

    def __init__(
        self,
        addresses: Sequence[str],
        extra_headers: bytes,
        probe_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not addresses:
            raise ValueError("at least one store server address is needed")
        self.endpoints = tuple(StoreEndpoint(a, extra_headers) for a in addresses)
        self.single = self.endpoints[0] if len(self.endpoints) == 1 else None
        """The only server, when there is one (then nothing is ever marked down)."""
        self.probe_seconds = probe_seconds
        self._clock = clock
        # Clients made at the same moment start at different servers (a counter per client, spread by its id).
        self._turn = itertools.count(id(self) // 64)

    def __iter__(self) -> Iterator[StoreEndpoint]:
        return iter(self.endpoints)

    def pick(self) -> StoreEndpoint:
        """The server for a new call: the next one up in turn; else one whose pause is over (this call then tests
        it, and other calls keep skipping it meanwhile); else, all being down, the one due first."""
        single = self.single
        if single is not None:
            return single
        endpoints = self.endpoints
        n = len(endpoints)
        start = next(self._turn)
        now = 0.0
        for i in range(n):
            endpoint = endpoints[(start + i) % n]
            if not endpoint.down_until:
                return endpoint
            now = now or self._clock()
            if endpoint.down_until <= now:
                endpoint.down_until = now + self._pause(endpoint)
                return endpoint
        return min(endpoints, key=lambda e: e.down_until)

    def next_untried(self, tried: Iterable[StoreEndpoint]) -> StoreEndpoint | None:
        """A server not in `tried` for the next try of a call: one that is up, else the down one due first; None
        when every server was tried."""
        done = set(tried)
        left = [e for e in self.endpoints if e not in done]
        if not left:
            return None
        for endpoint in left:
            if not endpoint.down_until:
                return endpoint
        return min(left, key=lambda e: e.down_until)

    def failed(self, endpoint: StoreEndpoint, error: BaseException) -> None:
        """Note that `endpoint` could not be reached: calls skip it for a while."""
        if self.single is not None:
            return
        endpoint.failures += 1
        pause = self._pause(endpoint)
        if not endpoint.down_until:
            logger.warning(
                "store server %s did not answer (%r); calls go to the other servers, and it is tried again in %gs",
                endpoint.address, error, pause,
            )  # fmt: skip
        endpoint.down_until = self._clock() + pause

    def answered(self, endpoint: StoreEndpoint) -> None:
        """Note that `endpoint` answered: it is up again (call only when `endpoint.down_until` is set)."""
        if endpoint.down_until:
            endpoint.down_until = 0.0
            endpoint.failures = 0
            logger.info("store server %s answers again; calls go to it in turn", endpoint.address)

    def _pause(self, endpoint: StoreEndpoint) -> float:
        return min(MAX_PROBE_SECONDS, self.probe_seconds * 2.0 ** max(0, endpoint.failures - 1))
