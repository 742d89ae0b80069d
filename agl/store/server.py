"""`LightningStoreServer`: serve any `LightningStore` over HTTP (the 0.3 REST API under `/v1/agl`).

The server is itself a `LightningStore` that delegates to the wrapped store, so the process that owns it can keep
using it directly while runners talk to it over HTTP. It runs on uvicorn (uvloop + httptools when installed),
either in a background thread with its own event loop (`start()` / `stop()`), as a task on the caller's event
loop (`start_async()` / `stop_async()`), or as the main job of a process (`serve()`, `python -m agl.store.server`).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from agl.sockets import PortInUseError, bind_listening_socket
from agl.store.base import LightningStore, LightningStoreCapabilities, LightningStoreStatistics
from agl.store.events import StoreEvents
from agl.store.exposure import InsecureBindError, TokenError, allow_insecure_from_env, check_bind, resolve_token
from agl.store.http.cors import CorsPolicy
from agl.store.http.limits import RequestLimits
from agl.store.http.wire import TOKEN_ENV
from agl.store.launch import DEFAULT_HOST, LaunchMode, resolve_launch
from agl.types.core import (
    UNSET,
    Attempt,
    AttemptedRollout,
    AttemptStatus,
    EnqueueRolloutRequest,
    PaginatedResult,
    Rollout,
    RolloutConfig,
    RolloutMode,
    RolloutStatus,
    TaskInput,
    Worker,
    WorkerStatus,
)
from agl.types.resources import NamedResources, ResourcesUpdate
from agl.types.tracer import Span

if TYPE_CHECKING:
    import uvicorn

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


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


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
        self._keep_alive = launch.timeout_keep_alive if launch.timeout_keep_alive is not None else 75
        self.backlog = backlog
        self._store_thread_safe = bool(capabilities.get("thread_safe", False))
        self._owner_pid = os.getpid()
        self._uvicorn: uvicorn.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread_error: BaseException | None = None
        self._client: LightningStoreClient | None = None
        self._app: StoreApp | None = None
        self.health_check_interval = float(health_check_interval)
        self._draining = False
        self.metrics = metrics
        self.metrics_public = metrics_public
        self.metrics_collectors = list(metrics_collectors)
        self.limits = limits if limits is not None else RequestLimits()
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
        return self._uvicorn is not None and self._uvicorn.started and not self._uvicorn.should_exit

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

    def _make_server(self, sock: socket.socket, handle_signals: bool) -> uvicorn.Server:
        import uvicorn

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
        )
        self._app = app
        http: Any
        try:
            from agl.store.http.protocol import protocol_class

            http = protocol_class(app)
        except ImportError:  # no httptools: uvicorn's pure-Python protocol on the ASGI app
            http = "h11"
        config = uvicorn.Config(
            app,
            http=http,
            lifespan="off",
            interface="asgi3",
            log_config=None,
            log_level=self.log_level,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            date_header=False,
            timeout_keep_alive=self._keep_alive,
            timeout_graceful_shutdown=5,
            backlog=self.backlog,
        )

        server = _server_class()(config)
        server.handle_signals = handle_signals  # type: ignore[attr-defined]
        server.health_check = self.store.run_health_checks  # type: ignore[attr-defined]
        server.on_shutdown = app.insight.aclose  # type: ignore[attr-defined]
        server.health_check_interval = self.health_check_interval  # type: ignore[attr-defined]
        app.draining = self._draining
        return server

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
        if self._uvicorn is not None:
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
        sock = self._bind()
        server = self._make_server(sock, handle_signals=False)
        ready = threading.Event()
        server.on_started = ready.set  # type: ignore[attr-defined]
        self._thread_error = None

        def run() -> None:
            loop = _new_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                loop.run_until_complete(server.serve(sockets=[sock]))
            except BaseException as exc:  # includes SystemExit from a failed uvicorn start-up
                self._thread_error = exc
                logger.error("store server on port %s stopped with an error: %r", self._port, exc)
            finally:
                ready.set()
                with contextlib.suppress(Exception):
                    loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()
                sock.close()

        self._uvicorn = server
        thread = threading.Thread(target=run, name=f"agl-store-server-{self._port}", daemon=True)
        self._thread = thread
        thread.start()
        if not ready.wait(self.startup_timeout) or not server.started:
            server.should_exit = True
            thread.join(10)
            self._reset()
            error = self._thread_error
            raise RuntimeError(
                f"store server on {self.host}:{self._port} did not start within {self.startup_timeout}s"
                + (f": {error!r}" if error else "")
            )
        logger.info("store server listening on %s", self.endpoint)
        return _Done()

    def stop(self, timeout: float | None = None) -> Awaitable[None]:
        """Stop the server; no-op if not running. Awaitable (`await server.stop()`), as upstream's is.

        A server in a thread is stopped before this returns (waiting up to `timeout` seconds, default 10 or
        launcher_args' `thread_join_timeout`, then forcing it); one on the running event loop (launch_mode
        "asyncio") stops when the result is awaited.
        """
        server, thread = self._uvicorn, self._thread
        timeout = self._stop_timeout if timeout is None else timeout
        if server is None:
            return _Done()
        if thread is None:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not None and running is self._loop:
                return running.create_task(self.stop_async(timeout))
            raise RuntimeError("this server runs on an event loop; use `await server.stop_async()` on that loop")
        if thread is threading.current_thread():
            raise RuntimeError("stop() cannot be called from the server's own thread")
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout)
        self._reset()
        return _Done()

    def _reset(self) -> None:
        self._uvicorn = None
        self._thread = None
        self._task = None
        self._loop = None
        if self._app is not None:
            self._app.insight.close()  # stop listening to the store: a restart builds a new app
            if self._app.metrics is not None:
                self._app.metrics.close()
        self._app = None
        if self._requested_port == 0:
            # Keep the chosen port, so a restart comes back on the same address.
            self._requested_port = self._port

    async def start_async(self) -> None:
        """Start serving on the running event loop; returns once the server accepts connections."""
        self._check_startable()
        sock = self._bind()
        server = self._make_server(sock, handle_signals=False)
        self._uvicorn = server
        self._loop = asyncio.get_running_loop()
        started = asyncio.Event()
        server.on_started = started.set  # type: ignore[attr-defined]
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        self._task = task
        try:
            waiter = asyncio.ensure_future(started.wait())
            await asyncio.wait({task, waiter}, timeout=self.startup_timeout, return_when="FIRST_COMPLETED")
            waiter.cancel()
            if not server.started:
                error = task.exception() if task.done() and not task.cancelled() else None
                raise RuntimeError(f"store server on {self.host}:{self._port} did not start: {error!r}")
        except BaseException:
            server.should_exit = True
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 10)
            sock.close()
            self._reset()
            raise
        logger.info("store server listening on %s", self.endpoint)

    async def stop_async(self, timeout: float | None = None) -> None:
        """Stop a server started by `start_async()` (or `start()`, without blocking the loop)."""
        server, task, thread = self._uvicorn, self._task, self._thread
        timeout = self._stop_timeout if timeout is None else timeout
        if server is None:
            return
        if thread is not None:
            await asyncio.to_thread(self.stop, timeout)
            return
        server.should_exit = True
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except asyncio.TimeoutError:
                server.force_exit = True
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(task, timeout)
        self._reset()

    async def run_forever(self) -> None:
        """Serve on the running loop until cancelled (or stopped), then shut down cleanly."""
        if self._uvicorn is None:
            await self.start_async()
        task = self._task
        try:
            if task is not None:
                await asyncio.shield(task)
            elif self._thread is not None:
                await asyncio.to_thread(self._thread.join)
        finally:
            await self.stop_async()

    def serve(self, *, tune_gc: bool = True, drain_timeout: float = 10.0) -> None:
        """Serve in the calling (main) thread until SIGINT/SIGTERM; for a process whose only job is the server.

        The first signal drains: the health route tells runners the run is ending, and the server stays up (at most
        `drain_timeout` seconds) until the rollouts in flight have finished and every runner process polling it has
        heard; a second signal stops at once. `tune_gc` applies `tune_gc_for_serving()` (the process is assumed to be
        the server's alone).
        """
        if tune_gc:
            tune_gc_for_serving()
        loop = _new_loop()
        asyncio.set_event_loop(loop)

        async def main() -> None:
            await self.start_async()
            self.announce()
            stop = asyncio.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, stop.set)
            waiter = asyncio.ensure_future(stop.wait())
            assert self._task is not None
            await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if stop.is_set() and not self._task.done():
                stop.clear()
                await self._drain(stop, drain_timeout)
            await self.stop_async()

        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

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
        self._stop_timeout, self._keep_alive = 10.0, 75
        self._store_thread_safe = True
        self._uvicorn = None
        self._loop = None
        self._thread = None
        self._task = None
        self._thread_error = None
        self._client = None
        self._app = None
        self.metrics, self.metrics_public, self.metrics_collectors = True, False, []

    # -- delegation --------------------------------------------------------------------------------------------

    def _remote(self) -> LightningStoreClient:
        if self._client is None:
            from agl.store.client import LightningStoreClient

            self._client = LightningStoreClient(self.endpoint, token=self.token)
        return self._client

    async def _call(self, method_name: str, /, *args: Any, **kwargs: Any) -> Any:
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

    async def statistics(self) -> LightningStoreStatistics:
        """The wrapped store's statistics."""
        result: LightningStoreStatistics = await self._call("statistics")
        return result

    async def start_rollout(
        self,
        input: TaskInput,
        mode: RolloutMode | None = None,
        resources_id: str | None = None,
        config: RolloutConfig | None = None,
        metadata: dict[str, Any] | None = None,
        worker_id: str | None = None,
    ) -> AttemptedRollout:
        """Delegates to the wrapped store."""
        result: AttemptedRollout = await self._call(
            "start_rollout", input, mode, resources_id, config, metadata, worker_id
        )
        return result

    async def enqueue_rollout(
        self,
        input: TaskInput,
        mode: RolloutMode | None = None,
        resources_id: str | None = None,
        config: RolloutConfig | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Rollout:
        """Delegates to the wrapped store."""
        result: Rollout = await self._call("enqueue_rollout", input, mode, resources_id, config, metadata)
        return result

    async def enqueue_many_rollouts(self, rollouts: Sequence[EnqueueRolloutRequest]) -> Sequence[Rollout]:
        """Delegates to the wrapped store."""
        result: Sequence[Rollout] = await self._call("enqueue_many_rollouts", rollouts)
        return result

    async def dequeue_rollout(self, worker_id: str | None = None) -> AttemptedRollout | None:
        """Delegates to the wrapped store."""
        result: AttemptedRollout | None = await self._call("dequeue_rollout", worker_id=worker_id)
        return result

    async def dequeue_many_rollouts(
        self, *, limit: int = 1, worker_id: str | None = None
    ) -> Sequence[AttemptedRollout]:
        """Delegates to the wrapped store."""
        result: Sequence[AttemptedRollout] = await self._call("dequeue_many_rollouts", limit=limit, worker_id=worker_id)
        return result

    async def start_attempt(self, rollout_id: str, worker_id: str | None = None) -> AttemptedRollout:
        """Delegates to the wrapped store."""
        result: AttemptedRollout = await self._call("start_attempt", rollout_id, worker_id=worker_id)
        return result

    async def query_rollouts(
        self,
        *,
        status_in: Sequence[RolloutStatus] | None = None,
        rollout_id_in: Sequence[str] | None = None,
        rollout_id_contains: str | None = None,
        mode_in: Sequence[RolloutMode] | None = None,
        start_time_from: float | None = None,
        start_time_to: float | None = None,
        filter_logic: Literal["and", "or"] = "and",
        sort_by: str | None = None,
        sort_order: Literal["asc", "desc"] = "asc",
        limit: int = -1,
        offset: int = 0,
        status: Sequence[RolloutStatus] | None = None,
        rollout_ids: Sequence[str] | None = None,
    ) -> PaginatedResult[Rollout]:
        """Delegates to the wrapped store."""
        result: PaginatedResult[Rollout] = await self._call(
            "query_rollouts",
            status_in=status_in,
            rollout_id_in=rollout_id_in,
            rollout_id_contains=rollout_id_contains,
            mode_in=mode_in,
            start_time_from=start_time_from,
            start_time_to=start_time_to,
            filter_logic=filter_logic,
            sort_by=sort_by,
            sort_order=sort_order,
            limit=limit,
            offset=offset,
            status=status,
            rollout_ids=rollout_ids,
        )
        return result

    async def get_rollout_by_id(self, rollout_id: str) -> Rollout | None:
        """Delegates to the wrapped store."""
        result: Rollout | None = await self._call("get_rollout_by_id", rollout_id)
        return result

    async def update_rollout(
        self,
        rollout_id: str,
        input: TaskInput = UNSET,
        mode: RolloutMode | None = UNSET,
        resources_id: str | None = UNSET,
        status: RolloutStatus = UNSET,
        config: RolloutConfig = UNSET,
        metadata: dict[str, Any] | None = UNSET,
    ) -> Rollout:
        """Delegates to the wrapped store."""
        result: Rollout = await self._call(
            "update_rollout", rollout_id, input, mode, resources_id, status, config, metadata
        )
        return result

    async def query_attempts(
        self,
        rollout_id: str,
        *,
        sort_by: str | None = "sequence_id",
        sort_order: Literal["asc", "desc"] = "asc",
        limit: int = -1,
        offset: int = 0,
    ) -> PaginatedResult[Attempt]:
        """Delegates to the wrapped store."""
        result: PaginatedResult[Attempt] = await self._call(
            "query_attempts", rollout_id, sort_by=sort_by, sort_order=sort_order, limit=limit, offset=offset
        )
        return result

    async def get_latest_attempt(self, rollout_id: str) -> Attempt | None:
        """Delegates to the wrapped store."""
        result: Attempt | None = await self._call("get_latest_attempt", rollout_id)
        return result

    async def update_attempt(
        self,
        rollout_id: str,
        attempt_id: str,
        status: AttemptStatus = UNSET,
        worker_id: str = UNSET,
        last_heartbeat_time: float = UNSET,
        metadata: dict[str, Any] = UNSET,
    ) -> Attempt:
        """Delegates to the wrapped store."""
        result: Attempt = await self._call(
            "update_attempt", rollout_id, attempt_id, status, worker_id, last_heartbeat_time, metadata
        )
        return result

    async def add_span(self, span: Span) -> Span | None:
        """Delegates to the wrapped store."""
        result: Span | None = await self._call("add_span", span)
        return result

    async def add_many_spans(self, spans: Sequence[Span]) -> Sequence[Span]:
        """Delegates to the wrapped store."""
        result: Sequence[Span] = await self._call("add_many_spans", spans)
        return result

    async def add_otel_span(
        self, rollout_id: str, attempt_id: str, readable_span: Any, sequence_id: int | None = None
    ) -> Span | None:
        """Delegates to the wrapped store."""
        result: Span | None = await self._call("add_otel_span", rollout_id, attempt_id, readable_span, sequence_id)
        return result

    async def get_next_span_sequence_id(self, rollout_id: str, attempt_id: str) -> int:
        """Delegates to the wrapped store."""
        result: int = await self._call("get_next_span_sequence_id", rollout_id, attempt_id)
        return result

    async def get_many_span_sequence_ids(self, rollout_attempt_ids: Sequence[tuple[str, str]]) -> Sequence[int]:
        """Delegates to the wrapped store."""
        result: Sequence[int] = await self._call("get_many_span_sequence_ids", rollout_attempt_ids)
        return result

    async def query_spans(
        self,
        rollout_id: str,
        attempt_id: str | None = None,
        *,
        trace_id: str | None = None,
        trace_id_contains: str | None = None,
        span_id: str | None = None,
        span_id_contains: str | None = None,
        parent_id: str | None = None,
        parent_id_contains: str | None = None,
        name: str | None = None,
        name_contains: str | None = None,
        filter_logic: Literal["and", "or"] = "and",
        limit: int = -1,
        offset: int = 0,
        sort_by: str | None = "sequence_id",
        sort_order: Literal["asc", "desc"] = "asc",
    ) -> PaginatedResult[Span]:
        """Delegates to the wrapped store."""
        result: PaginatedResult[Span] = await self._call(
            "query_spans",
            rollout_id,
            attempt_id,
            trace_id=trace_id,
            trace_id_contains=trace_id_contains,
            span_id=span_id,
            span_id_contains=span_id_contains,
            parent_id=parent_id,
            parent_id_contains=parent_id_contains,
            name=name,
            name_contains=name_contains,
            filter_logic=filter_logic,
            limit=limit,
            offset=offset,
            sort_by=sort_by,
            sort_order=sort_order,
        )
        return result

    async def add_resources(self, resources: NamedResources) -> ResourcesUpdate:
        """Delegates to the wrapped store."""
        result: ResourcesUpdate = await self._call("add_resources", resources)
        return result

    async def update_resources(self, resources_id: str, resources: NamedResources) -> ResourcesUpdate:
        """Delegates to the wrapped store."""
        result: ResourcesUpdate = await self._call("update_resources", resources_id, resources)
        return result

    async def get_resources_by_id(self, resources_id: str) -> ResourcesUpdate | None:
        """Delegates to the wrapped store."""
        result: ResourcesUpdate | None = await self._call("get_resources_by_id", resources_id)
        return result

    async def get_latest_resources(self) -> ResourcesUpdate | None:
        """Delegates to the wrapped store."""
        result: ResourcesUpdate | None = await self._call("get_latest_resources")
        return result

    async def query_resources(
        self,
        *,
        resources_id: str | None = None,
        resources_id_contains: str | None = None,
        sort_by: str | None = None,
        sort_order: Literal["asc", "desc"] = "asc",
        limit: int = -1,
        offset: int = 0,
    ) -> PaginatedResult[ResourcesUpdate]:
        """Delegates to the wrapped store."""
        result: PaginatedResult[ResourcesUpdate] = await self._call(
            "query_resources",
            resources_id=resources_id,
            resources_id_contains=resources_id_contains,
            sort_by=sort_by,
            sort_order=sort_order,
            limit=limit,
            offset=offset,
        )
        return result

    async def update_worker(self, worker_id: str, heartbeat_stats: dict[str, Any] = UNSET) -> Worker:
        """Delegates to the wrapped store."""
        result: Worker = await self._call("update_worker", worker_id, heartbeat_stats)
        return result

    async def get_worker_by_id(self, worker_id: str) -> Worker | None:
        """Delegates to the wrapped store."""
        result: Worker | None = await self._call("get_worker_by_id", worker_id)
        return result

    async def query_workers(
        self,
        *,
        status_in: Sequence[WorkerStatus] | None = None,
        worker_id_contains: str | None = None,
        filter_logic: Literal["and", "or"] = "and",
        sort_by: str | None = None,
        sort_order: Literal["asc", "desc"] = "asc",
        limit: int = -1,
        offset: int = 0,
    ) -> PaginatedResult[Worker]:
        """Delegates to the wrapped store."""
        result: PaginatedResult[Worker] = await self._call(
            "query_workers",
            status_in=status_in,
            worker_id_contains=worker_id_contains,
            filter_logic=filter_logic,
            sort_by=sort_by,
            sort_order=sort_order,
            limit=limit,
            offset=offset,
        )
        return result

    async def wait_for_rollouts(self, *, rollout_ids: list[str], timeout: float | None = None) -> list[Rollout]:
        """Delegates to the wrapped store."""
        result: list[Rollout] = await self._call("wait_for_rollouts", rollout_ids=rollout_ids, timeout=timeout)
        return result

    async def run_health_checks(self) -> None:
        """Apply the wrapped store's timeout / unresponsive rules now (the server also does it on a timer)."""
        await self._call("run_health_checks")

    async def close(self) -> None:
        """Stop serving (if running) and close the HTTP client of a copy in another process.

        The wrapped store is left open: it belongs to whoever created it.
        """
        if self._uvicorn is not None:
            await self.stop_async()
        if self._client is not None:
            await self._client.close()
            self._client = None


_SERVER_CLASS: type[uvicorn.Server] | None = None


def _server_class() -> type[uvicorn.Server]:
    """uvicorn's Server, reporting start-up through `on_started` and leaving signals alone unless told."""
    global _SERVER_CLASS
    if _SERVER_CLASS is None:
        import uvicorn

        class _Server(uvicorn.Server):
            handle_signals = False
            on_started: Callable[[], None] | None = None
            health_check: Callable[[], Awaitable[None]] | None = None
            health_check_interval: float = 1.0
            on_shutdown: Callable[[], Awaitable[None]] | None = None
            _health_task: asyncio.Task[None] | None = None

            def capture_signals(self) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
                if self.handle_signals:
                    return super().capture_signals()
                return contextlib.nullcontext()

            async def startup(self, sockets: list[socket.socket] | None = None) -> None:
                await super().startup(sockets=sockets)
                if self.started and self.health_check is not None and self.health_check_interval > 0:
                    self._health_task = asyncio.ensure_future(self._check_health_forever())
                if self.started and self.on_started is not None:
                    self.on_started()

            async def _check_health_forever(self) -> None:
                assert self.health_check is not None
                while True:
                    await asyncio.sleep(self.health_check_interval)
                    try:
                        await self.health_check()
                    except Exception:
                        logger.exception("the store's periodic health check failed")

            # uvicorn polls `should_exit` every 0.1 s and sleeps 0.1 s more on shutdown; here setting it wakes the
            # main loop at once and shutdown waits only as long as connections and requests are still busy.
            _exit_flag = False
            _wake: asyncio.Event | None = None
            _wake_loop: asyncio.AbstractEventLoop | None = None

            @property
            def should_exit(self) -> bool:
                return self._exit_flag

            @should_exit.setter
            def should_exit(self, value: bool) -> None:
                self._exit_flag = value
                loop, wake = self._wake_loop, self._wake
                if value and loop is not None and wake is not None:
                    with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to wake
                        loop.call_soon_threadsafe(wake.set)

            async def main_loop(self) -> None:
                self._wake = asyncio.Event()
                self._wake_loop = asyncio.get_running_loop()
                counter = 0
                while not await self.on_tick(counter):
                    counter = (counter + 10) % 864000  # uvicorn counts 0.1 s ticks; each turn here is ~1 s
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), 1.0)

            async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
                if self._health_task is not None:
                    self._health_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._health_task
                if self.on_shutdown is not None:
                    await self.on_shutdown()
                loop = asyncio.get_running_loop()
                for listener in self.servers:
                    listener.close()
                for sock in sockets or []:
                    sock.close()
                state = self.server_state
                for connection in list(state.connections):
                    connection.shutdown()
                deadline = loop.time() + (self.config.timeout_graceful_shutdown or 0.0)
                while (state.connections or state.tasks) and not self.force_exit:
                    if loop.time() >= deadline:
                        logger.error("cancelling %d request(s) still running at shutdown", len(state.tasks))
                        for task in list(state.tasks):
                            task.cancel()
                        for connection in list(state.connections):
                            transport = getattr(connection, "transport", None)
                            if transport is not None:
                                transport.close()
                        break
                    await asyncio.sleep(0.005)
                for listener in self.servers:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(listener.wait_closed(), max(0.1, deadline - loop.time()))
                if not self.force_exit:
                    await self.lifespan.shutdown()

        _SERVER_CLASS = _Server
    return _SERVER_CLASS


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
