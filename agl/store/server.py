"""`LightningStoreServer`: serve any `LightningStore` over HTTP (the 0.3 REST API under `/v1/agl`).

The server is itself a `LightningStore` that delegates to the wrapped store, so the process that owns it can keep
using it directly while runners talk to it over HTTP. It runs on stock uvicorn (uvloop + httptools when installed,
through `agl.asgi_serving`), either in a background thread with its own event loop (`start()` / `stop()`), as a
task on the caller's event loop (`start_async()` / `stop_async()`), or as the main job of a process (`serve()`,
`python -m agl.store.server`).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import gc
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from agl.asgi_serving import AsgiServer
from agl.sockets import PortInUseError, bind_listening_socket
from agl.store.base import LightningStore, LightningStoreCapabilities
from agl.store.delegation import forwards_protocol
from agl.store.events import StoreEvents
from agl.store.exposure import InsecureBindError, TokenError, allow_insecure_from_env, check_bind, resolve_token
from agl.store.http.cors import CorsPolicy
from agl.store.http.limits import RequestLimits
from agl.store.http.wire import TOKEN_ENV
from agl.store.launch import DEFAULT_HOST, LaunchMode, resolve_launch

if TYPE_CHECKING:
    from agl.store.client import LightningStoreClient
    from agl.store.http.app import StoreApp

__all__ = ["DEFAULT_PORT", "InsecureBindError", "LightningStoreServer", "PortInUseError", "main", "tune_gc_for_serving"]

logger = logging.getLogger(__name__)

DEFAULT_PORT = 4747
"""The port the store server listens on when none is given."""

T = TypeVar("T")


class _Done:
    """An already-completed awaitable, so `server.start()` works both plainly and as `await server.start()`."""

    def __await__(self) -> Generator[Any, None, None]:
        return None
        yield  # pragma: no cover - makes this a generator


def _outbound_ip() -> str:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.255.255.255", 1))
            return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"


@forwards_protocol
class LightningStoreServer(LightningStore):
    """Serve `store` over HTTP at `http://host:port/v1/agl` and act as a `LightningStore` delegating to it.

    The parameters up to `tracker` are Agent Lightning 0.3's, in its order; AGL's own are keyword-only.
    Listening on an address other machines can reach (anything but loopback) needs a token: without one, start
    raises `InsecureBindError` unless `insecure` is set (`AGL_STORE_INSECURE=1`; then a warning is logged).

    Args:
        store: the store to serve; it must be `async_safe`.
        host: the exact address to bind; None binds 127.0.0.1 (this machine only; upstream binds every interface):
            pass "0.0.0.0" to serve other machines (the machine's outbound address is then advertised in
            `endpoint`).
        port: the port to bind; None is 4747; 0 picks a free one (read it from `port` after start).
        cors_allow_origins: browser origins (e.g. "https://lab.example:8443") allowed to call the store from their
            pages, one or several; "*" allows any; None (default) sends no CORS headers.
        launch_mode: "thread" (default): `start()` serves from a background thread with its own event loop;
            "asyncio": `await start()` serves on the caller's running event loop. "mp" is refused (use `agl store`
            for a server process of its own).
        launcher_args: Agent Lightning's `PythonServerLauncherArgs` (or a mapping of its fields) instead of host,
            port and launch_mode: `host`, `port` (None: a free one), `launch_mode` (None: "asyncio"), `n_workers`,
            `access_host` (the host advertised in `endpoint`), `log_level`, `startup_timeout`,
            `thread_join_timeout`, `timeout_keep_alive` are honoured; `healthcheck_url`, `kill_unhealthy_server`,
            `process_join_timeout` are accepted and have nothing to act on.
        n_workers: must be 1: the store is served from one process.
        tracker: accepted and kept as `tracker` for code written for Agent Lightning; AGL's server reports its own
            Prometheus metrics at `/metrics` (see `metrics`) and does not call it.
        token: a bearer token every route but health requires; defaults to the AGL_STORE_TOKEN environment
            variable; None/empty means no authentication.
        max_body_bytes: larger request bodies (also after gzip decoding) are refused with 413.
        gzip_min_bytes: responses above this size are gzipped for clients that accept gzip.
        startup_timeout: seconds to wait for the server to accept connections.
        log_level: uvicorn's log level.
        health_check_interval: seconds between the store's timeout / unresponsive checks run by the server itself
            (so a stuck attempt is noticed even when nobody calls the store); 0 disables them.
        metrics: serve Prometheus metrics at `/metrics` and `/v1/prometheus/` (needs prometheus_client).
        metrics_public: let anyone scrape the metrics; by default they need the token like every other route.
        metrics_collectors: more prometheus_client collectors to expose from this server's metrics registry.
        limits: `agl.store.http.limits.RequestLimits` (JSON depth, items per list, URL length, error answers,
            drain watchers); None: the defaults.
        limit_concurrency: open connections or requests in flight beyond which new requests are answered 503
            (uvicorn's `limit_concurrency`); None (default): no limit.
    """

    def __init__(
        self,
        store: LightningStore,
        host: str | None = None,
        port: int | None = None,
        cors_allow_origins: str | Sequence[str] | None = None,
        launch_mode: LaunchMode = "thread",
        launcher_args: Any = None,
        n_workers: int = 1,
        tracker: Any = None,
        *,
        token: str | None = None,
        max_body_bytes: int = 64 * 1024 * 1024,
        gzip_min_bytes: int = 1024,
        startup_timeout: float = 60.0,
        log_level: str = "warning",
        backlog: int = 2048,
        health_check_interval: float = 1.0,
        metrics: bool = True,
        metrics_public: bool = False,
        metrics_collectors: Sequence[Any] = (),
        limits: RequestLimits | None = None,
        limit_concurrency: int | None = None,
    ) -> None:
        capabilities = store.capabilities
        if not capabilities.get("async_safe", False):
            raise ValueError(
                f"{type(store).__name__} is not async_safe; only async-safe stores can be served over HTTP"
            )
        launch = resolve_launch(host, port, launch_mode, launcher_args, n_workers, capabilities)
        host, port = launch.host if launch.host is not None else DEFAULT_HOST, launch.port
        if port is None:
            port = DEFAULT_PORT
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an integer in 0..65535, got {port!r}")
        if max_body_bytes <= 0:
            raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes!r}")
        self.store: LightningStore | None = store
        self.host = host
        self._requested_port = port
        self._port = port
        self.token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
        self.max_body_bytes = max_body_bytes
        self.gzip_min_bytes = gzip_min_bytes
        self.startup_timeout = launch.startup_timeout if launch.startup_timeout is not None else startup_timeout
        self.log_level = launch.log_level if launch.log_level is not None else log_level
        self.launch_mode: Literal["thread", "asyncio"] = launch.launch_mode
        self.launcher_args = launcher_args
        self.n_workers = n_workers
        self.tracker = tracker
        self.access_host = launch.access_host
        self._stop_timeout = launch.stop_timeout if launch.stop_timeout is not None else 10.0
        self._keep_alive: float | None = launch.timeout_keep_alive  # None: the limits' keep_alive_seconds
        self.backlog = backlog
        self._store_thread_safe = bool(capabilities.get("thread_safe", False))
        self._owner_pid = os.getpid()
        self._serving: AsgiServer | None = None
        self._in_thread = False
        self._client: LightningStoreClient | None = None
        self._app: StoreApp | None = None
        self.health_check_interval = float(health_check_interval)
        self._draining = False
        self.metrics = metrics
        self.metrics_public = metrics_public
        self.metrics_collectors = list(metrics_collectors)
        self.limits = limits if limits is not None else RequestLimits()
        self.limit_concurrency = limit_concurrency
        CorsPolicy.from_setting(cors_allow_origins)  # a bad setting fails here, not when the server starts
        self.cors_allow_origins = cors_allow_origins
        self.insecure = allow_insecure_from_env()
        """Serve beyond loopback without a token (default: `AGL_STORE_INSECURE`, else False)."""

    # -- addresses ---------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (the chosen one when constructed with port 0 and started)."""
        return self._port

    @property
    def endpoint(self) -> str:
        """The base URL clients use: `http://<host>:<port>` (the `access_host` of launcher_args if given)."""
        host = self.access_host or self.host
        if host in ("0.0.0.0", ""):
            host = _outbound_ip()
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._port}"

    @property
    def dashboard_url(self) -> str:
        """Where a browser finds the dashboard of this server."""
        return self.endpoint + "/"

    def announce(self) -> None:
        """Print where the dashboard and the store API are, for the person who started the run."""
        print(f"AGL store at {self.endpoint}/v1/agl; dashboard: {self.dashboard_url}", flush=True)

    @property
    def is_running(self) -> bool:
        """Whether the server is accepting connections."""
        return self._serving is not None and self._serving.is_running

    def otlp_traces_endpoint(self) -> str:
        """The OTLP/HTTP traces URL of this server."""
        return f"{self.endpoint}/v1/traces"

    @property
    def events(self) -> StoreEvents:
        """The served store's events (this process's store); a copy in another process has none to report."""
        if self.store is None:
            return super().events
        return self.store.events

    @property
    def capabilities(self) -> LightningStoreCapabilities:
        """Everything: the server serialises access to the wrapped store as needed and ingests OTLP."""
        return LightningStoreCapabilities(thread_safe=True, async_safe=True, zero_copy=True, otlp_traces=True)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def _make_serving(self, sock: socket.socket) -> AsgiServer:
        """The app over the wrapped store, served by stock uvicorn on `sock` (see agl.asgi_serving)."""
        from agl.store.http.app import StoreApp

        assert self.store is not None
        app = StoreApp(
            self.store,
            token=self.token,
            max_body_bytes=self.max_body_bytes,
            gzip_min_bytes=self.gzip_min_bytes,
            metrics=self.metrics,
            metrics_public=self.metrics_public,
            metrics_collectors=self.metrics_collectors,
            cors_allow_origins=self.cors_allow_origins,
            limits=self.limits,
            health_check_interval=self.health_check_interval,
        )
        app.draining = self._draining
        self._app = app
        return AsgiServer(
            app,
            sock=sock,
            host=self.host,
            name="store server",
            log_level=self.log_level,
            lifespan="on",  # the app's health-check timer and the dashboard reader start and stop with the server
            timeout_keep_alive=self._keep_alive if self._keep_alive is not None else self.limits.keep_alive_seconds,
            timeout_graceful_shutdown=5,
            limit_concurrency=self.limit_concurrency,
            startup_timeout=self.startup_timeout,
            on_stop=app.begin_stop,
            head_timeout=self.limits.head_timeout_seconds,
            max_head_bytes=self.limits.max_head_bytes,
        )

    def begin_drain(self) -> None:
        """Tell remote runners the run is ending: from now on the health route answers `"status": "draining"`.

        Safe from any thread and idempotent; the server keeps serving every route so runners can finish.
        """
        self._draining = True
        if self._app is not None:
            self._app.draining = True

    @property
    def draining(self) -> bool:
        """Whether `begin_drain()` was called."""
        return self._draining

    def untold_drain_watchers(self) -> list[str]:
        """Runner-side drain watchers seen in the last seconds that have not yet been told the server is draining.

        After `begin_drain()` the algorithm side keeps the server up until this is empty (bounded by its graceful
        timeout), so remote runners that are idle learn of the stop before the server goes away.
        """
        app = self._app
        return app.untold_drain_watchers() if app is not None else []

    def _check_startable(self) -> None:
        if self.store is None or os.getpid() != self._owner_pid:
            raise RuntimeError("this LightningStoreServer is a copy in another process; start the original instead")
        if self._serving is not None:
            raise RuntimeError(f"the store server on port {self._port} is already running")

    def _bind(self) -> socket.socket:
        sock = bind_listening_socket(
            self.host, self._port if self._port else self._requested_port, what="store server", backlog=self.backlog
        )
        try:
            check_bind(str(sock.getsockname()[0]), self.token, self.insecure)  # the address really bound
        except InsecureBindError:
            sock.close()
            raise
        self._port = int(sock.getsockname()[1])
        return sock

    def start(self) -> Awaitable[None]:
        """Start serving; with launch_mode "thread" in a background thread, returning once it accepts connections.

        Raises `PortInUseError` if the port is taken, `InsecureBindError` (a ValueError) on an address beyond
        loopback without a token (see the class), `RuntimeError` if start-up fails or times out. The return
        value may be awaited (`await server.start()`), as upstream's asynchronous `start()` is. With launch_mode
        "asyncio" the server runs on the running event loop and `await server.start()` returns once it accepts
        connections (outside a running loop that is a `RuntimeError`).
        """
        self._check_startable()
        if self.launch_mode == "asyncio":
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                raise RuntimeError(
                    "launch_mode='asyncio' serves on the running event loop: call `await server.start()` in a "
                    "coroutine, or use launch_mode='thread'"
                ) from None
            return loop.create_task(self.start_async())
        serving = self._make_serving(self._bind())
        self._serving = serving
        self._in_thread = True
        try:
            serving.start()
        except BaseException:
            self._reset()
            raise
        logger.info("store server listening on %s", self.endpoint)
        return _Done()

    def stop(self, timeout: float | None = None) -> Awaitable[None]:
        """Stop the server; no-op if not running. Awaitable (`await server.stop()`), as upstream's is.

        A server in a thread is stopped before this returns (waiting up to `timeout` seconds, default 10 or
        launcher_args' `thread_join_timeout`, then forcing it); one on the running event loop (launch_mode
        "asyncio") stops when the result is awaited.
        """
        serving = self._serving
        timeout = self._stop_timeout if timeout is None else timeout
        if serving is None:
            return _Done()
        if not self._in_thread:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not None and running is serving.loop:
                return running.create_task(self.stop_async(timeout))
            raise RuntimeError("this server runs on an event loop; use `await server.stop_async()` on that loop")
        serving.stop(timeout)
        self._reset()
        return _Done()

    def _reset(self) -> None:
        self._serving = None
        self._in_thread = False
        if self._app is not None:
            self._app.insight.close()  # stop listening to the store: a restart builds a new app
            if self._app.metrics is not None:
                self._app.metrics.close()
        self._app = None
        if self._requested_port == 0:
            # Keep the chosen port, so a restart comes back on the same address.
            self._requested_port = self._port

    @property
    def _loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop serving requests (None when not running)."""
        return self._serving.loop if self._serving is not None else None

    async def start_async(self) -> None:
        """Start serving on the running event loop; returns once the server accepts connections."""
        self._check_startable()
        serving = self._make_serving(self._bind())
        self._serving = serving
        try:
            await serving.start_async()
        except BaseException:
            self._reset()
            raise
        logger.info("store server listening on %s", self.endpoint)

    async def stop_async(self, timeout: float | None = None) -> None:
        """Stop a server started by `start_async()` (or `start()`, without blocking the loop)."""
        serving = self._serving
        timeout = self._stop_timeout if timeout is None else timeout
        if serving is None:
            return
        await serving.stop_async(timeout)
        self._reset()

    async def run_forever(self) -> None:
        """Serve on the running loop until cancelled (or stopped), then shut down cleanly."""
        if self._serving is None:
            await self.start_async()
        try:
            if self._serving is not None:
                await self._serving.wait_stopped()
        finally:
            await self.stop_async()

    def serve(self, *, tune_gc: bool = True, drain_timeout: float = 10.0) -> None:
        """Serve in the calling (main) thread until SIGINT/SIGTERM; for a process whose only job is the server.

        The first signal drains: the health route tells runners the run is ending, and the server stays up (at most
        `drain_timeout` seconds) until the rollouts in flight have finished and every runner process polling it has
        heard; a second signal stops at once. `tune_gc` applies `tune_gc_for_serving()` (the process is assumed to be
        the server's alone).
        """
        self._check_startable()
        if tune_gc:
            tune_gc_for_serving()
        serving = self._make_serving(self._bind())
        self._serving = serving
        try:
            serving.serve(on_started=self.announce, on_signal=lambda again: self._drain(again, drain_timeout))
        finally:
            self._reset()

    async def _drain(self, stop: asyncio.Event, timeout: float) -> None:
        """Tell runners the run is ending; return once nothing is in flight and every polling runner heard it, after
        `timeout` seconds, or when `stop` is set again."""
        store = self.store
        assert store is not None, "only the process that serves the store drains it"
        self.begin_drain()
        deadline = time.monotonic() + timeout
        logger.info("draining (a second Ctrl+C or SIGTERM stops at once; at most %gs)", timeout)
        while time.monotonic() < deadline and not stop.is_set():
            in_flight = await store.query_rollouts(status_in=["preparing", "running"], limit=1)
            untold = self.untold_drain_watchers()
            if not untold and not in_flight:
                return
            await asyncio.sleep(0.1)
        if not stop.is_set():
            logger.warning("stopping after the %gs drain timeout with work still in flight or runners untold", timeout)

    def __enter__(self) -> LightningStoreServer:
        if self.launch_mode == "asyncio":
            raise RuntimeError("launch_mode='asyncio': use `async with server:` (it serves on the running loop)")
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> LightningStoreServer:
        if self.launch_mode == "asyncio":
            await self.start_async()
        else:
            self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_async()

    # -- pickling: a copy in another process talks to the original over HTTP -----------------------------------

    def __getstate__(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self._port,
            "token": self.token,
            "endpoint": self.endpoint,
            "owner_pid": self._owner_pid,
            "access_host": self.access_host,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.store = None
        self.host = state["host"]
        self._port = self._requested_port = state["port"]
        self.token = state["token"]
        self._owner_pid = state["owner_pid"]
        self.access_host = state.get("access_host")
        self.launch_mode, self.launcher_args, self.n_workers, self.tracker = "thread", None, 1, None
        self._stop_timeout, self._keep_alive = 10.0, None
        self._store_thread_safe = True
        self._serving = None
        self._in_thread = False
        self._client = None
        self._app = None
        self.metrics, self.metrics_public, self.metrics_collectors = True, False, []
        self.limit_concurrency = None

    # -- delegation: every protocol method but close() is generated by `forwards_protocol` ----------------------

    def _remote(self) -> LightningStoreClient:
        if self._client is None:
            from agl.store.client import LightningStoreClient

            self._client = LightningStoreClient(self.endpoint, token=self.token)
        return self._client

    async def _forward(self, method_name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Make a protocol call on the wrapped store (on a copy in another process: over HTTP to the original)."""
        store = self.store
        if store is None or os.getpid() != self._owner_pid:
            return await getattr(self._remote(), method_name)(*args, **kwargs)
        method: Callable[..., Coroutine[Any, Any, Any]] = getattr(store, method_name)
        loop = self._loop
        if self._store_thread_safe or loop is None or loop.is_closed() or method_name == "wait_for_rollouts":
            return await method(*args, **kwargs)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            return await method(*args, **kwargs)
        # Not thread-safe: run the call on the server's loop, where every HTTP request touches the store too.
        future: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(method(*args, **kwargs), loop)
        return await asyncio.wrap_future(future)

    async def close(self) -> None:
        """Stop serving (if running) and close the HTTP client of a copy in another process.

        The wrapped store is left open: it belongs to whoever created it.
        """
        if self._serving is not None:
            await self.stop_async()
        if self._client is not None:
            await self._client.close()
            self._client = None


def tune_gc_for_serving() -> None:
    """Make the cyclic garbage collector's pauses short in a process dedicated to serving the store.

    Every pause stalls every client, so collections are made small rather than rare: the young generation is
    collected every 500 allocations and the middle one every 2 young collections. Pauses grow faster than the
    generation's size, so this costs no more in total than rarer, larger collections (bench/server_gc.py, runner
    cycle: longest pause ~0.6 ms here vs ~0.7 ms at 1 000 allocations, ~3.5 ms at 5 000, ~8–15 ms at 50 000 or with
    CPython's defaults; ~0.6 µs of collection per call). What exists at start-up is frozen, and full collections,
    which walk everything the store holds, wait for 20 000 middle ones (CPython also waits until a quarter more
    objects survived). Process-wide: call it only in a process that just serves.
    """
    gc.freeze()
    gc.set_threshold(500, 2, 20_000)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a fresh in-memory store: `python -m agl.store.server [--host H] [--port P] [--token T]`."""
    parser = argparse.ArgumentParser(prog="python -m agl.store.server", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to bind (default {DEFAULT_PORT})")
    token_flags = parser.add_mutually_exclusive_group()
    token_flags.add_argument(
        "--token-file", default=None, help=f"file holding the bearer token (default: ${TOKEN_ENV})"
    )
    token_flags.add_argument("--token", default=None, help="bearer token (visible in `ps`: prefer --token-file)")
    parser.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without a token")
    parser.add_argument("--log-level", default="warning", help="uvicorn log level (default warning)")
    args = parser.parse_args(argv)
    try:
        token, _ = resolve_token(args.token, args.token_file)
    except TokenError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from agl.store.memory import InMemoryLightningStore

    store = InMemoryLightningStore(thread_safe=True)
    server = LightningStoreServer(store, host=args.host, port=args.port, token=token, log_level=args.log_level)
    server.insecure = args.insecure or server.insecure
    try:
        server.serve()
    except InsecureBindError as exc:
        logger.error("%s", exc)
        return 2
    except (PortInUseError, RuntimeError) as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
